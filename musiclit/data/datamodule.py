"""The LightningDataModule: chunked audio (or cached codec tokens) + captions, resumable mid-epoch.

The datasets, the keyed sampler and the resumable loader are in :mod:`musiclit.data.datasets`; the token
path in :mod:`musiclit.data.tokens` and :mod:`musiclit.data.cache`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from musiclit.data.caption import CaptionDropout
from musiclit.data.datasets import ClipDataset, EpochSampler, ResumableLoader, collate_clips
from musiclit.data.manifest import ManifestError, load_dataset_entries
from musiclit.errors import ConfigError


class MusicDataModule(L.LightningDataModule):
    """Serves chunked audio + captions from a dataset folder (audio + caption JSON, optional manifest).

    Args:
        data_dir: Dataset folder (written by ``musiclit prepare``, or any folder of audio + JSON).
        batch_size: Examples per batch.
        num_workers: Decoding worker processes.
        segment_duration: Seconds per example (MusicGen trains on 30).
        min_segment_ratio: Minimum real-audio fraction of a random crop (padding is masked).
        valid_fraction: Fraction of songs held out for validation when the manifest has no split.
        split_seed: Seed of that split.
        seed: Seed of crops, order and caption dropout.
        caption_dropout: Per-field caption dropout for training (None: always the full caption).
        sample_rate: Set from the model (linked by the CLI; do not configure).
        channels: Set from the model (linked by the CLI; do not configure).
        token_cache: Train on cached codec tokens (encode every clip once, then crop codes; the default).
            Missing entries are encoded with the model's codec before training, by one process per
            machine (``prepare_data``; under DDP the other processes wait, then read the cache). False
            runs the codec on the cropped audio every step.
        cache_dir: Root of the token cache (default ``<data_dir>/.musiclit-cache``, or the user cache
            folder when the dataset is read-only); one sub-folder per codec, shared by runs.
        cache_verify: Re-hash every audio file instead of trusting an unchanged (path, size, mtime).
        bucket_by_length: Put clips of similar length into the same training batch (with the token cache,
            batches are trimmed to their longest crop, so short clips then cost less padding).
        melody_separator: MusicGen-melody only: the Demucs model (a pretrained name such as "htdemucs", or a
            local weights file) that removes drums and bass from the conditioning audio before its chroma is
            taken, as MusicGen-melody's recipe does; null takes the chroma of the audio as it is. Run once per
            file: the chroma is cached beside the tokens (``<cache>/melody-<id>/``, keyed by file content).
    """

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 1,
        num_workers: int = 2,
        segment_duration: float = 30.0,
        min_segment_ratio: float = 0.8,
        valid_fraction: float = 0.1,
        split_seed: int = 0,
        seed: int = 0,
        caption_dropout: CaptionDropout | None = None,
        sample_rate: int = 32000,
        channels: int = 1,
        token_cache: bool = True,
        cache_dir: str | None = None,
        cache_verify: bool = False,
        bucket_by_length: bool = True,
        melody_separator: str | None = "htdemucs",
    ) -> None:
        super().__init__()
        if not 0.0 < min_segment_ratio <= 1.0:
            raise ConfigError(f"data.min_segment_ratio must be in (0, 1], got {min_segment_ratio}")
        if segment_duration <= 0:
            raise ConfigError(f"data.segment_duration must be > 0, got {segment_duration}")
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.segment_duration = segment_duration
        self.min_segment_ratio = min_segment_ratio
        self.valid_fraction = valid_fraction
        self.split_seed = split_seed
        self.seed = seed
        self.caption_dropout = CaptionDropout() if caption_dropout is None else caption_dropout
        self.sample_rate = sample_rate
        self.channels = channels
        self.token_cache = token_cache
        self.cache_dir = cache_dir
        self.cache_verify = cache_verify
        self.bucket_by_length = bucket_by_length
        self.melody_separator = melody_separator
        self.melody_chroma: Any = None
        self.melody_cache: Any = None
        self.tokenizer: Any = None
        self.cache: Any = None
        self.train_set: ClipDataset | None = None
        self.valid_set: ClipDataset | None = None

    def attach_tokenizer(self, tokenizer: Any) -> None:
        """Give the data module the codec (a :class:`musiclit.model.codec.CodecTokenizer`) for the token cache.

        Under the trainer this is not needed: ``setup()`` takes the codec of the LightningModule.
        """
        self.tokenizer = tokenizer

    def attach_melody(self, melody_chroma: Any) -> None:
        """Give the data module a melody model's chroma extractor (:class:`musiclit.model.melody.MelodyChroma`):
        items then carry the melody of their crop. Under the trainer ``setup()`` asks the LightningModule."""
        self.melody_chroma = melody_chroma

    def _find_melody(self) -> Any:
        if self.melody_chroma is None and getattr(self, "trainer", None) is not None:
            module = self.trainer.lightning_module
            if module is not None and getattr(module, "melody", False):
                self.melody_chroma = module.melody_tokenizer(self.melody_separator)
        return self.melody_chroma

    def _melody_sources(self, train: list[Any], valid: list[Any], root: Any, encode: bool) -> list[Any]:
        """The cached melody of every clip (``melody_path`` from its caption, else the clip itself), computed once
        per file; one :class:`~musiclit.data.tokens.MelodySource` for the training and one for the validation clips.

        ``encode``: compute the melodies missing from the cache (else they must be there: under DDP one process
        computes them in ``prepare_data`` while the others wait)."""
        from musiclit.data.audio import read_audio
        from musiclit.data.cache import TokenCache
        from musiclit.data.caption import Caption
        from musiclit.data.tokens import MelodySource
        from musiclit.model.melody import frames_for

        data_root = Path(self.data_dir)
        paths = []
        for entry in train + valid:
            caption_path = entry.caption_path(data_root)
            melody = Caption.load(caption_path).melody_path if caption_path.is_file() else None
            path = (caption_path.parent / melody) if melody else data_root / entry.path
            if not path.is_file():
                raise ManifestError(f"{caption_path}: melody_path {melody}: no such audio file ({path})")
            paths.append(path)
        chroma = self.melody_chroma
        self.melody_cache = TokenCache(root, chroma.id)

        def read(path: Path) -> Any:
            return read_audio(path, chroma.sample_rate, chroma.channels)

        if encode:
            keys = self.melody_cache.build(paths, chroma, read, verify=self.cache_verify)
        else:
            keys = [self.melody_cache.key_for(p, verify=self.cache_verify) for p in paths]
            _require_cached(self.melody_cache, keys, [str(p) for p in paths], self.data_dir)
        frames = frames_for(self.segment_duration)
        return [
            MelodySource(self.melody_cache, keys[: len(train)], chroma.frame_rate, frames),
            MelodySource(self.melody_cache, keys[len(train) :], chroma.frame_rate, frames),
        ]

    def _find_tokenizer(self) -> Any:
        if self.tokenizer is None and getattr(self, "trainer", None) is not None:
            module = self.trainer.lightning_module
            if module is not None and hasattr(module, "codec_tokenizer"):
                self.tokenizer = module.codec_tokenizer()
        return self.tokenizer

    def _entries(self) -> tuple[list[Any], list[Any]]:
        entries = load_dataset_entries(self.data_dir, self.valid_fraction, self.split_seed)
        train = [e for e in entries if e.split == "train"]
        valid = [e for e in entries if e.split == "valid"]
        if not train:
            raise ManifestError(f"{self.data_dir}: no training clips (every song is in the validation split)")
        return train, valid

    def _cache_keys(self, tokenizer: Any, paths: list[str], encode: bool) -> tuple[Any, list[str]]:
        from musiclit.data.cache import TokenCache, cached_keys, default_cache_root

        cache = TokenCache(self.cache_dir or default_cache_root(self.data_dir), tokenizer.id)
        if encode:
            return cache, cached_keys(Path(self.data_dir), paths, cache, tokenizer, verify=self.cache_verify)
        keys = [cache.key_for(Path(self.data_dir) / p, verify=self.cache_verify) for p in paths]
        _require_cached(cache, keys, paths, self.data_dir)
        return cache, keys

    def _distributed(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.world_size > 1

    def prepare_data(self) -> None:
        """Encode the clips missing from the token cache, and a melody model's melodies missing from theirs
        (Lightning calls this in one process per machine, while the other processes wait)."""
        tokenizer = self._find_tokenizer() if self.token_cache else None
        if tokenizer is None:
            return
        train, valid = self._entries()
        self._cache_keys(tokenizer, [e.path for e in train + valid], encode=True)
        if self._find_melody() is not None:
            from musiclit.data.cache import default_cache_root

            self._melody_sources(train, valid, self.cache_dir or default_cache_root(self.data_dir), encode=True)

    def setup(self, stage: str | None = None) -> None:
        """Read the manifest (or scan), split by song and build the datasets.

        A standalone data module encodes missing cache entries here; under DDP only ``prepare_data`` does
        (one process), and the others read what it wrote.
        """
        if self.train_set is not None:
            return
        train, valid = self._entries()
        self._say_if_mono_for_stereo(train + valid)
        common = {
            "root": self.data_dir,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "segment_duration": self.segment_duration,
            "min_segment_ratio": self.min_segment_ratio,
        }
        tokenizer = self._find_tokenizer() if self.token_cache else None
        melody = self._find_melody()
        if melody is not None and tokenizer is None:
            raise ConfigError(
                "a MusicGen-melody model trains from the token cache (its melodies are cached beside the tokens): "
                "set data.token_cache true"
            )
        if tokenizer is not None:
            # a standalone data module (no trainer, no codec attached) serves audio instead
            from musiclit.data.tokens import TokenClipDataset

            paths = [e.path for e in train + valid]
            self.cache, keys = self._cache_keys(tokenizer, paths, encode=not self._distributed())
            extra = {"cache": self.cache, "frame_rate": tokenizer.frame_rate,
                     "special_token": tokenizer.special_token}  # fmt: skip
            melodies: list[Any] = [None, None]
            if melody is not None:
                from musiclit.data.cache import default_cache_root

                root = self.cache_dir or default_cache_root(self.data_dir)
                melodies = self._melody_sources(train, valid, root, encode=not self._distributed())
            self.train_set = TokenClipDataset(
                keys=keys[: len(train)], entries=train, random_crop=True, caption_dropout=self.caption_dropout,
                seed=self.seed, melody=melodies[0], **extra, **common,
            )  # fmt: skip
            self.valid_set = TokenClipDataset(
                keys=keys[len(train) :], entries=valid, random_crop=False, caption_dropout=None, melody=melodies[1],
                **extra, **common,
            )  # fmt: skip
            return
        self.train_set = ClipDataset(
            entries=train, random_crop=True, caption_dropout=self.caption_dropout, seed=self.seed, **common
        )
        self.valid_set = ClipDataset(entries=valid, random_crop=False, caption_dropout=None, **common)

    def _say_if_mono_for_stereo(self, entries: list) -> None:
        """A stereo model trained on mono clips learns no stereo image: say so once per run."""
        mono = sum(1 for e in entries if e.channels == 1)
        if self.channels == 2 and mono:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"{self.data_dir}: {mono} of {len(entries)} clips are mono; the stereo model gets the same signal "
                "in both channels for them (no stereo image to learn). For stereo clips, run prepare with "
                "--channels 2 on stereo sources."
            )

    def _loader(self, dataset: ClipDataset, shuffle: bool) -> ResumableLoader:
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        collate = getattr(dataset, "collate", collate_clips)  # token datasets bring their own
        lengths = None
        if shuffle and self.bucket_by_length:
            lengths = [min(e.duration, self.segment_duration) for e in dataset.entries]
        sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=self.seed, rank=rank, world_size=world,
                               lengths=lengths, batch_size=self.batch_size)  # fmt: skip
        return ResumableLoader(
            dataset,
            sampler,
            checkpoint=lambda: getattr(getattr(self, "trainer", None), "ckpt_path", None),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> ResumableLoader:
        """Shuffled random crops with caption dropout."""
        assert self.train_set is not None
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> ResumableLoader | list:
        """Deterministic crops with full captions (empty when no song is held out)."""
        assert self.valid_set is not None
        if len(self.valid_set) == 0:
            return []
        return self._loader(self.valid_set, shuffle=False)


def _require_cached(cache: Any, keys: list[str], paths: list[str], data_dir: Any) -> None:
    """Raise when a key is missing from ``cache`` (a process that only reads what another one built)."""
    from musiclit.data.cache import CacheError

    missing = [p for p, k in zip(paths, keys, strict=True) if k not in cache]
    if missing:
        raise CacheError(
            f"{cache.folder}: {len(missing)} files of {data_dir} are not in the cache (e.g. {missing[0]}), though "
            "the process that builds it has finished; is the cache folder shared by every process (data.cache_dir)?"
        )
