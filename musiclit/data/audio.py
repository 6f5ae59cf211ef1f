"""Audio I/O: decode with soundfile, resample with soxr, fix channels, crop/pad with a mask."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from musiclit.errors import MusiclitError
from musiclit.io import atomic_path


class AudioError(MusiclitError, ValueError):
    """Audio that cannot be used; the message names the file and the problem."""


def read_audio(
    path: str | os.PathLike[str],
    sample_rate: int | None = None,
    channels: int | None = None,
    start: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Decode (part of) an audio file as float32, resampled and channel-converted.

    Args:
        path: Any file soundfile can read (wav, flac, ogg, mp3).
        sample_rate: Target rate in Hz; None keeps the file's rate.
        channels: Target channel count (1 = mono downmix, 2 = stereo); None keeps the file's channels.
        start: Offset in seconds (of the source file) where reading starts.
        duration: Seconds to read; None reads to the end.

    Returns:
        Array of shape (channels, samples), float32.

    Raises:
        AudioError: The file is missing, cannot be decoded, or is empty.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    try:
        with sf.SoundFile(str(path)) as fh:
            sr = fh.samplerate
            first = int(round(start * sr))
            if first:
                fh.seek(min(first, fh.frames))
            frames = -1 if duration is None else int(round(duration * sr))
            data = fh.read(frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{path}: cannot decode audio ({err})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: no audio samples (empty file or offset past the end)")
    if not np.isfinite(data).all():
        bad = int(data.size - np.isfinite(data).sum())
        raise AudioError(f"{path}: {bad} samples are NaN or infinite (a broken float file)")
    wav = np.ascontiguousarray(data.T)
    if sample_rate is not None and sr != sample_rate:
        wav = resample(wav, sr, sample_rate)
    if channels is not None:
        wav = convert_channels(wav, channels)
    return wav


def resample(wav: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Resample (channels, samples) float32 audio with soxr (high quality)."""
    import soxr

    if source_rate == target_rate:
        return wav
    out = soxr.resample(np.ascontiguousarray(wav.T), source_rate, target_rate, quality="HQ")
    return np.ascontiguousarray(out.T, dtype=np.float32)


def convert_channels(wav: np.ndarray, channels: int) -> np.ndarray:
    """Downmix to mono (mean of channels) or duplicate mono to N channels."""
    have = wav.shape[0]
    if have == channels:
        return wav
    if channels == 1:
        return wav.mean(axis=0, keepdims=True).astype(np.float32)
    if have == 1:
        return np.repeat(wav, channels, axis=0)
    raise AudioError(f"cannot convert {have} channels to {channels}")


def crop_or_pad(wav: np.ndarray, length: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``length`` samples starting at ``offset``, zero-padding at the end when the audio is shorter.

    Args:
        wav: (channels, samples) audio.
        length: Output length in samples.
        offset: First sample to keep.

    Returns:
        ``(audio, mask)``: audio of shape (channels, length) and a bool mask of shape (length,) that is
        True on real samples and False on padding.
    """
    piece = wav[:, offset : offset + length]
    mask = np.zeros(length, dtype=bool)
    mask[: piece.shape[1]] = True
    if piece.shape[1] < length:
        piece = np.pad(piece, ((0, 0), (0, length - piece.shape[1])))
    return np.ascontiguousarray(piece, dtype=np.float32), mask


def write_audio(path: str | os.PathLike[str], wav: np.ndarray, sample_rate: int) -> None:
    """Write (channels, samples) float audio as WAV/FLAC (by suffix), atomically."""
    import soundfile as sf

    path = Path(path)
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(f"{path}: unsupported output format (use .wav, .flac or .ogg)")
    subtype = "PCM_16" if fmt == "FLAC" else ("VORBIS" if fmt == "OGG" else "FLOAT")
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.asarray(wav, dtype=np.float32).T, sample_rate, format=fmt, subtype=subtype)
