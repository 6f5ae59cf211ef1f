"""Datasets, sampler and loader behind the data module: chunked audio + captions, resumable mid-epoch.

Randomness is keyed, not drawn from a global stream: the order of an epoch comes from ``(seed, epoch)``,
and the crop and caption dropout of a clip from ``(seed, epoch, index)``. Together with a loader that
records how many batches it handed out, a run interrupted mid-epoch resumes with exactly the batches the
uninterrupted run would have seen.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from musiclit.data.audio import AudioError, crop_or_pad, read_audio
from musiclit.data.caption import Caption, CaptionDropout, compose_caption
from musiclit.data.manifest import ClipEntry, ManifestError


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
        self.skipped: set[int] = set()  # clips that failed to decode in this process
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
            audio, mask = crop_or_pad(wav, self.segment_samples)
        except AudioError as err:
            # a clip whose content is broken (the header was fine up front): all frames masked out, so it adds
            # nothing to the loss; said once per clip and process, never a traceback from inside a worker
            if index not in self.skipped:
                self.skipped.add(index)
                print(f"musiclit: skipping clip {err} ({len(self.skipped)} skipped so far)", file=sys.stderr)
            audio = np.zeros((self.channels, self.segment_samples), np.float32)
            mask = np.zeros(self.segment_samples, bool)
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

    def __init__(
        self, dataset: ClipDataset, sampler: EpochSampler, checkpoint: Callable[[], Any] | None = None, **kwargs: Any
    ) -> None:
        """``checkpoint``: tells which checkpoint a restored state comes from (for error messages)."""
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.epoch_sampler = sampler
        self.batches_done = 0
        self.checkpoint = checkpoint

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        skip = self.epoch_sampler.start // (self.batch_size or 1)
        self.batches_done = skip
        for batch in super().__iter__():
            self.batches_done += 1
            yield batch

    def _layout(self) -> dict[str, int]:
        return {"batch_size": int(self.batch_size or 1), "world_size": self.epoch_sampler.world_size,
                "batches": len(self)}  # fmt: skip

    def state_dict(self) -> dict[str, int]:
        """Position in the epoch, and the layout it counts in (Lightning stores it in the checkpoint)."""
        return {"epoch": self.epoch_sampler.epoch, "batches_done": self.batches_done, **self._layout()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue after the saved position (the next epoch when the saved one had finished).

        Raises:
            ConfigError: The position is inside an epoch and counts batches of another size or number of
                processes (the checkpoint does not say which examples of the epoch remain in the new layout).
        """
        from musiclit.errors import ConfigError

        epoch, done = int(state["epoch"]), int(state["batches_done"])
        saved = {key: int(state.get(key, value)) for key, value in self._layout().items()}  # 0.1.0: no layout
        if done >= saved["batches"]:
            epoch, done = epoch + 1, 0
        now = self._layout()
        if done and (saved["batch_size"], saved["world_size"]) != (now["batch_size"], now["world_size"]):
            source = (self.checkpoint() if self.checkpoint else None) or "the checkpoint"
            raise ConfigError(
                f"{source}: stopped inside epoch {epoch}, after {done} of {saved['batches']} batches of "
                f"data.batch_size {saved['batch_size']} in {saved['world_size']} process(es); this run has "
                f"data.batch_size {now['batch_size']} in {now['world_size']}, where that position does not exist. "
                f"Resume with --data.batch_size {saved['batch_size']} and {saved['world_size']} device(s) "
                "(global_batch_size keeps the optimiser's batch), or from a checkpoint at an epoch's end"
            )
        self.epoch_sampler.set_epoch(epoch)
        self.epoch_sampler.start = done * (self.batch_size or 1)
