"""Step 6: cut a song (already at the clip rate) into segments and write them.

Clips of song ``<song_id>`` go to ``clips/<song_id>/<song_id>_<index:04d>.<ext>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from musiclit.io import atomic_path


class AudioSource(Protocol):
    """Anything with a length (samples) and ``read(start, stop) -> (channels, n)``."""

    def __len__(self) -> int: ...

    def read(self, start: int, stop: int) -> np.ndarray: ...


@dataclass
class ClipPlan:
    """One clip to cut.

    Attributes:
        index: Chunk index within the song.
        start: First sample.
        length: Samples taken from the song.
        padded_length: Samples written. Equal to ``length``: a kept short tail is written as it is, and
            training pads it and masks the padding out of the loss (silence baked into the file would be
            trained on as music).
    """

    index: int
    start: int
    length: int
    padded_length: int


def plan_chunks(
    n_samples: int,
    rate: int,
    segment: float,
    overlap: float = 0.0,
    min_tail: float = 10.0,
    short_tail: str = "drop",
    beat_period: float | None = None,
    first_beat: float | None = None,
) -> list[ClipPlan]:
    """Where to cut a song.

    Args:
        n_samples: Song length in samples.
        rate: Sample rate.
        segment: Clip length in seconds.
        overlap: Overlap between consecutive clips in seconds.
        min_tail: A last clip shorter than this is dropped (``short_tail="drop"``) or kept (``"pad"``: the
            training pads it to the segment with masked padding); a last clip at least this long is kept.
        short_tail: "drop" or "pad".
        beat_period: Beat period in seconds; with ``first_beat``, clip starts snap to the beat grid.
        first_beat: Time of the first beat in seconds.

    Returns:
        The clips, in order.
    """
    seg = round(segment * rate)
    hop = round((segment - overlap) * rate)
    tail_min = round(min_tail * rate)
    starts: list[int] = []
    if beat_period and first_beat is not None and beat_period > 0:
        grid = beat_period * rate
        pos = first_beat * rate
        while pos < n_samples:
            starts.append(round(pos))
            # next start: the beat nearest to one hop later (at least one beat later)
            pos = first_beat * rate + max(1, round((pos + hop - first_beat * rate) / grid)) * grid
    else:
        starts = list(range(0, max(1, n_samples), hop))
    plans: list[ClipPlan] = []
    for start in starts:
        length = min(seg, n_samples - start)
        if length <= 0:
            break
        if length < seg:
            if plans and start + length <= plans[-1].start + plans[-1].length:
                break  # fully covered by the previous clip (overlap)
            if length < tail_min:
                if short_tail == "pad":
                    plans.append(ClipPlan(len(plans), start, length, length))
                break
            plans.append(ClipPlan(len(plans), start, length, length))
            break
        plans.append(ClipPlan(len(plans), start, length, length))
    return plans


def clip_relpath(song_id: str, index: int, ext: str) -> str:
    """Path of a clip relative to the dataset root."""
    return f"clips/{song_id}/{song_id}_{index:04d}.{ext}"


def write_clip(path: Path, audio: np.ndarray, rate: int, subtype: str) -> None:
    """Write (channels, n) audio atomically (WAV or FLAC by suffix)."""
    import soundfile as sf

    fmt = "FLAC" if path.suffix.lower() == ".flac" else "WAV"
    data = np.clip(audio, -1.0, 1.0) if subtype != "FLOAT" else audio
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.ascontiguousarray(data.T), rate, format=fmt, subtype=subtype)


def write_chunks(
    source: AudioSource,
    out_root: Path,
    song_id: str,
    plans: list[ClipPlan],
    rate: int,
    ext: str = "wav",
    subtype: str = "PCM_16",
) -> list[dict]:
    """Write the planned clips.

    Returns:
        One record per clip: ``path`` (relative), ``chunk_index``, ``offset_s``, ``duration``
        (seconds written), ``padded`` (seconds of padding).
    """
    records = []
    for plan in plans:
        audio = source.read(plan.start, plan.start + plan.length)
        if plan.padded_length > audio.shape[1]:
            audio = np.pad(audio, ((0, 0), (0, plan.padded_length - audio.shape[1])))
        rel = clip_relpath(song_id, plan.index, ext)
        write_clip(out_root / rel, audio, rate, subtype)
        records.append(
            {
                "path": rel,
                "chunk_index": plan.index,
                "offset_s": round(plan.start / rate, 4),
                "duration": plan.padded_length / rate,
                "padded": round((plan.padded_length - plan.length) / rate, 4),
            }
        )
    return records
