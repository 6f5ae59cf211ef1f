"""Clips served from the codec token cache: a fresh random crop of cached codes per (epoch, index).

The crop comes from the same keyed random source as :class:`~musiclit.data.datasets.ClipDataset`
(same start in seconds, same caption dropout), converted to a frame index with
``round(start * frame_rate)``. What the cached path trains on, precisely:

* the codes of the WHOLE clip, encoded once, then cropped. The audio path instead encodes the cropped
  audio; with a non-causal codec (EnCodec's convolutions and LSTM see neighbouring frames) the codes of a
  crop can differ from the crop of the codes near the crop's edges, so the two are not bit-identical.
  The cached path is the defined behaviour (its codes are what the codec gives in context).
* a crop start rounded to the 20 ms frame grid (the audio path starts at the exact sample).
* padding frames (a crop running past the clip's end) hold the special token (2048, MusicGen's
  pad/BOS id) with ``frame_mask`` False; the audio path holds the codes of encoded silence there.
  Either way they carry no loss. Batches are trimmed to their longest real crop: the frames cut are
  padding in every example, and with the special token as padding the loss is the same with or without
  them (the decoder is causal and the delay pattern fills the tail with the special token anyway).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from musiclit.data.cache import TokenCache
from musiclit.data.caption import compose_caption
from musiclit.data.datasets import ClipDataset


def collate_tokens(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack codes (B, K, T) and frame_mask (B, T), trimmed to the longest real crop of the batch (and the melody
    pitch classes (B, Tc) of melody datasets, never trimmed: the model reads a fixed number of melody frames)."""
    mask = torch.stack([it["frame_mask"] for it in items])
    real = mask.any(0).nonzero()
    length = int(real[-1]) + 1 if len(real) else 1
    batch = {
        "codes": torch.stack([it["codes"] for it in items])[..., :length],
        "frame_mask": mask[:, :length],
        "captions": [it["caption"] for it in items],
        "index": torch.tensor([it["index"] for it in items]),
        "offset": torch.tensor([it["offset"] for it in items], dtype=torch.float64),
    }
    if "melody" in items[0]:
        batch["melody"] = torch.stack([it["melody"] for it in items])
    return batch


class MelodySource:
    """The cached melody (pitch class per chroma frame) of each clip, cut to the training crop.

    Args:
        cache: The chroma cache (a :class:`TokenCache` of a :class:`~musiclit.model.melody.MelodyChroma`).
        keys: Each clip's melody key in it (of the clip itself, or of its caption's ``melody_path``).
        frame_rate: Chroma frames per second (7.8125).
        frames: Frames per example (the chroma of one segment: 235 for 30 s).
    """

    def __init__(self, cache: TokenCache, keys: list[str], frame_rate: float, frames: int) -> None:
        missing = [k for k in keys if k not in cache]
        if missing:
            raise ValueError(f"{len(missing)} melodies are not in the chroma cache {cache.folder}")
        self.cache, self.keys, self.frame_rate, self.frames = cache, list(keys), frame_rate, frames

    def crop(self, index: int, start: float) -> torch.Tensor:
        """(frames,) pitch classes from ``start`` seconds: the melody repeated end to end when it runs out."""
        from musiclit.model.melody import window

        classes = np.asarray(self.cache.get(self.keys[index])[0], dtype=np.int64)
        return torch.from_numpy(window(classes, int(round(start * self.frame_rate)), self.frames))


class TokenClipDataset(ClipDataset):
    """Cached codes + captions, addressed by ``(epoch, index)`` exactly like :class:`ClipDataset`.

    Args:
        cache: The token cache holding every clip.
        keys: Each entry's content key in the cache.
        frame_rate: Codec frames per second.
        special_token: The id used for padding frames.
        melody: Melody models: each clip's cached melody (items then hold ``melody``, (Tc,) pitch classes of the
            crop's time span).
        **kwargs: :class:`ClipDataset` arguments (root, entries, segment_duration, ...).
    """

    def __init__(
        self,
        cache: TokenCache,
        keys: list[str],
        frame_rate: int,
        special_token: int,
        melody: MelodySource | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.melody = melody
        if len(keys) != len(self.entries):
            raise ValueError(f"{len(keys)} cache keys for {len(self.entries)} clips")
        missing = [e.path for e, k in zip(self.entries, keys, strict=True) if k not in cache]
        if missing:
            raise ValueError(f"{len(missing)} clips are not in the token cache {cache.folder} (e.g. {missing[0]})")
        self.cache = cache
        self.keys = list(keys)
        self.frame_rate = frame_rate
        self.special_token = special_token
        self.segment_frames = int(round(self.segment_duration * frame_rate))

    collate = staticmethod(collate_tokens)

    def crop_frames(self, epoch: int, index: int) -> tuple[int, float]:
        """First frame of the crop and the crop start in seconds (the same draw as the audio path)."""
        rng = self.item_rng(epoch, index) if self.random_crop else None
        start = self.crop_start(index, rng)
        return int(round(start * self.frame_rate)), start

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = self.item_rng(epoch, index) if self.random_crop else None
        start = self.crop_start(index, rng)
        first = int(round(start * self.frame_rate))
        full = self.cache.get(self.keys[index])
        piece = np.asarray(full[:, first : first + self.segment_frames], dtype=np.int64)
        real = piece.shape[1]
        codes = np.full((full.shape[0], self.segment_frames), self.special_token, dtype=np.int64)
        codes[:, :real] = piece
        mask = np.zeros(self.segment_frames, dtype=bool)
        mask[:real] = True
        text = compose_caption(self.captions[index], rng if self.caption_dropout else None, self.caption_dropout)
        item = {
            "codes": torch.from_numpy(codes),
            "frame_mask": torch.from_numpy(mask),
            "caption": text,
            "index": index,
            "offset": start,
        }
        if self.melody is not None:
            item["melody"] = self.melody.crop(index, start)
        return item
