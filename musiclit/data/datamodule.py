"""The LightningDataModule: chunked audio + captions from a dataset folder, resumable mid-epoch.

Randomness is keyed, not drawn from a global stream: the order of an epoch comes from ``(seed, epoch)``,
and the crop and caption dropout of a clip from ``(seed, epoch, index)``. Together with a loader that
records how many batches it handed out, a run interrupted mid-epoch resumes with exactly the batches the
uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from musiclit.data.audio import AudioError, crop_or_pad, read_audio
from musiclit.data.caption import Caption, CaptionDropout, compose_caption
from musiclit.data.manifest import ClipEntry, ManifestError, load_dataset_entries
from musiclit.errors import ConfigError


class ClipDataset(Dataset):
    """Audio clips with captions. Items are addressed by ``(epoch, index)`` so crops are reproducible.

    Args:
        root: Dataset folder (paths in ``entries`` are relative to it).
        entries: The clips.
        sample_rate: Model sample rate (audio is resampled to it).
        channels: Model channels (1: downmix to mono; 2: stereo).
        segment_duration: Length of each example in seconds.
        min_segment_ratio: A random crop keeps at least this fraction of the segment as real audio when
            the clip is long enough (crops may run past the end by the rest, padded and masked).
        random_crop: Random crops (training) or crops from the start (validation).
        caption_dropout: Field dropout for training captions; None gives the full caption.
        seed: Base seed of the keyed randomness.
    """

    def __init__(
        self,
        root: str | Path,
        entries: Sequence[ClipEntry],
        sample_rate: int,
        channels: int,
        segment_duration: float,
        min_segment_ratio: float = 0.8,
        random_crop: bool = True,
        caption_dropout: CaptionDropout | None = None,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.entries = list(entries)
        self.sample_rate = sample_rate
        self.channels = channels
        self.segment_duration = segment_duration
        self.segment_samples = int(round(segment_duration * sample_rate))
        self.min_segment_ratio = min_segment_ratio
        self.random_crop = random_crop
        self.caption_dropout = caption_dropout
        self.seed = seed
        # captions are small and read often: load and validate them once, up front
        self.captions = [self._load_caption(e) for e in self.entries]

    def _load_caption(self, entry: ClipEntry) -> Caption:
        path = entry.caption_path(self.root)
        if not path.exists():
            raise ManifestError(f"{path}: caption JSON missing for clip {entry.path}")
        return Caption.load(path)

    def __len__(self) -> int:
        return len(self.entries)

    def crop_start(self, index: int, rng: random.Random | None) -> float:
        """Start of the crop, in seconds of the clip."""
        if rng is None or not self.random_crop:
            return 0.0
        duration = self.entries[index].duration
        max_start = max(0.0, duration - self.segment_duration * self.min_segment_ratio)
        return rng.uniform(0.0, max_start)

    def item_rng(self, epoch: int, index: int) -> random.Random:
        """The random source of one example of one epoch."""
        return random.Random(f"{self.seed}/{epoch}/{index}")

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        entry = self.entries[index]
        rng = self.item_rng(epoch, index) if self.random_crop else None
        start = self.crop_start(index, rng)
        path = self.root / entry.path
        try:
            wav = read_audio(path, self.sample_rate, self.channels, start=start, duration=self.segment_duration)
        except AudioError as err:
            raise AudioError(f"{err} (clip listed in the dataset at {self.root})") from None
        audio, mask = crop_or_pad(wav, self.segment_samples)
        text = compose_caption(self.captions[index], rng if self.caption_dropout else None, self.caption_dropout)
        return {
            "audio": torch.from_numpy(audio),
            "audio_mask": torch.from_numpy(mask),
            "caption": text,
            "index": index,
            "offset": start,
        }


def collate_clips(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack examples into a batch: audio (B, C, S), audio_mask (B, S), captions list[str]."""
    return {
        "audio": torch.stack([it["audio"] for it in items]),
        "audio_mask": torch.stack([it["audio_mask"] for it in items]),
        "captions": [it["caption"] for it in items],
        "index": torch.tensor([it["index"] for it in items]),
        "offset": torch.tensor([it["offset"] for it in items], dtype=torch.float64),
    }


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)``: a permutation keyed by ``(seed, epoch)`` (or in order), from ``start`` on.

    With several processes (DDP), each rank takes every ``world_size``-th index of the same permutation
    (the permutation padded with its first indices to a multiple of ``world_size``), so ranks see disjoint
    shares of equal length and resume at the same position.

    With ``lengths`` (seconds of real audio per example) and a batch size, a shuffled order is bucketed:
    each run of ``batch_size x bucket_batches`` indices is sorted by length, cut into batches, and the
    batches shuffled (keyed too), so short clips share batches and batches are trimmed to less padding.
    """

    def __init__(
        self,
        size: int,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        lengths: Sequence[float] | None = None,
        batch_size: int = 1,
        bucket_batches: int = 32,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if lengths is not None and len(lengths) != size:
            raise ValueError(f"{len(lengths)} lengths for {size} examples")
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.lengths = None if lengths is None else list(lengths)
        self.batch_size = batch_size
        self.bucket_batches = bucket_batches
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of every epoch."""
        self.epoch = epoch

    def order(self, epoch: int) -> list[int]:
        """The order of this rank's indices in ``epoch``."""
        if self.shuffle:
            full = np.random.default_rng([self.seed, epoch]).permutation(self.size).tolist()
        else:
            full = list(range(self.size))
        share = full
        if self.world_size > 1:
            padded = full + full[: len(self) * self.world_size - self.size]
            share = padded[self.rank :: self.world_size]
        if self.lengths is None or not self.shuffle or self.batch_size <= 1:
            return share
        return self._bucket(share, epoch)

    def _bucket(self, share: list[int], epoch: int) -> list[int]:
        lengths, bs = self.lengths, self.batch_size
        assert lengths is not None
        rng = np.random.default_rng([self.seed, epoch, 1 + self.rank])
        span = bs * max(1, self.bucket_batches)
        out: list[int] = []
        for first in range(0, len(share), span):
            chunk = sorted(share[first : first + span], key=lambda i: lengths[i])
            batches = [chunk[j : j + bs] for j in range(0, len(chunk), bs)]
            for b in rng.permutation(len(batches)):
                out.extend(batches[b])
        return out

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, start = self.epoch, self.start
        self.start = 0
        return iter([(epoch, i) for i in self.order(epoch)[start:]])

    def __len__(self) -> int:
        return -(-self.size // self.world_size)


class ResumableLoader(DataLoader):
    """A DataLoader whose position in the epoch is saved in checkpoints and restored on resume."""

    def __init__(self, dataset: ClipDataset, sampler: EpochSampler, **kwargs: Any) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.epoch_sampler = sampler
        self.batches_done = 0

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        skip = self.epoch_sampler.start // (self.batch_size or 1)
        self.batches_done = skip
        for batch in super().__iter__():
            self.batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Position in the epoch (Lightning stores it in the checkpoint)."""
        return {"epoch": self.epoch_sampler.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue after the saved position (the next epoch when the saved one had finished)."""
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if done >= len(self):
            epoch, done = epoch + 1, 0
        self.epoch_sampler.set_epoch(epoch)
        self.epoch_sampler.start = done * (self.batch_size or 1)


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
            Missing entries are encoded in ``setup()`` with the model's codec (on the GPU when there is
            one). False runs the codec on the cropped audio every step.
        cache_dir: Root of the token cache (default ``<data_dir>/.musiclit-cache``, or the user cache
            folder when the dataset is read-only); one sub-folder per codec, shared by runs.
        cache_verify: Re-hash every audio file instead of trusting an unchanged (path, size, mtime).
        bucket_by_length: Put clips of similar length into the same training batch (with the token cache,
            batches are trimmed to their longest crop, so short clips then cost less padding).
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
        self.tokenizer: Any = None
        self.cache: Any = None
        self.train_set: ClipDataset | None = None
        self.valid_set: ClipDataset | None = None

    def attach_tokenizer(self, tokenizer: Any) -> None:
        """Give the data module the codec (a :class:`musiclit.cache.CodecTokenizer`) for the token cache.

        Under the trainer this is not needed: ``setup()`` takes the codec of the LightningModule.
        """
        self.tokenizer = tokenizer

    def _find_tokenizer(self) -> Any:
        if self.tokenizer is None and getattr(self, "trainer", None) is not None:
            module = self.trainer.lightning_module
            if module is not None and hasattr(module, "codec_tokenizer"):
                self.tokenizer = module.codec_tokenizer()
        return self.tokenizer

    def setup(self, stage: str | None = None) -> None:
        """Read the manifest (or scan), split by song and build the datasets."""
        if self.train_set is not None:
            return
        entries = load_dataset_entries(self.data_dir, self.valid_fraction, self.split_seed)
        train = [e for e in entries if e.split == "train"]
        valid = [e for e in entries if e.split == "valid"]
        if not train:
            raise ManifestError(f"{self.data_dir}: no training clips (every song is in the validation split)")
        common = {
            "root": self.data_dir,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "segment_duration": self.segment_duration,
            "min_segment_ratio": self.min_segment_ratio,
        }
        tokenizer = self._find_tokenizer() if self.token_cache else None
        if tokenizer is not None:
            # a standalone data module (no trainer, no codec attached) serves audio instead
            from musiclit.cache import TokenCache, cached_keys, default_cache_root
            from musiclit.data.tokens import TokenClipDataset

            root = self.cache_dir or default_cache_root(self.data_dir)
            self.cache = TokenCache(root, tokenizer.id)
            keys = cached_keys(Path(self.data_dir), [e.path for e in train + valid], self.cache, tokenizer,
                               verify=self.cache_verify)  # fmt: skip
            extra = {"cache": self.cache, "frame_rate": tokenizer.frame_rate,
                     "special_token": tokenizer.special_token}  # fmt: skip
            self.train_set = TokenClipDataset(
                keys=keys[: len(train)], entries=train, random_crop=True, caption_dropout=self.caption_dropout,
                seed=self.seed, **extra, **common,
            )  # fmt: skip
            self.valid_set = TokenClipDataset(
                keys=keys[len(train) :], entries=valid, random_crop=False, caption_dropout=None, **extra, **common
            )
            return
        self.train_set = ClipDataset(
            entries=train, random_crop=True, caption_dropout=self.caption_dropout, seed=self.seed, **common
        )
        self.valid_set = ClipDataset(entries=valid, random_crop=False, caption_dropout=None, **common)

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
