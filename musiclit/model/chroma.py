"""Chroma features in plain torch: a power STFT projected onto the 12 pitch classes.

Used by the melodic copy detector (:mod:`musiclit.eval.copying`) and meant for MusicGen-melody conditioning,
which feeds the decoder one pitch class per frame (:func:`chroma_onehot`). No torchaudio and no librosa: the
spectrogram is ``torch.stft`` and the filter bank is built here from the published construction (D. Ellis's
chroma filters, as in librosa's ``filters.chroma`` and transformers' ``chroma_filter_bank``, which the
tests compare it with):

* every FFT bin's centre frequency is converted to a fractional pitch-class position
  ``12 * log2(f / (A440 / 16))`` (A0 = 27.5 Hz; ``tuning`` shifts A440 by a fraction of a semitone);
* each bin contributes to each pitch class through a Gaussian bump in circular pitch-class distance, as
  wide as the bin (at least one semitone);
* each bin's weights are L2-normalised over the 12 classes, then weighted by a Gaussian over octaves
  centred on ``center_octave`` (5.0: A5 = 880 Hz) with half-width ``octave_width`` (2 octaves), so very low
  and very high bins count less;
* the rows are rolled to start at C (index 0 = C, 1 = C#, ..., 11 = B).

The default STFT (``n_fft`` 16384, hop 4096 at 32 kHz, periodic Hann window, centred frames with reflect
padding, ``normalized`` power spectrogram) is what MusicGen-melody's feature extractor computes.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


@functools.lru_cache(maxsize=16)
def chroma_filter_bank(
    sample_rate: int,
    n_fft: int,
    n_chroma: int = 12,
    tuning: float = 0.0,
    center_octave: float | None = 5.0,
    octave_width: float = 2.0,
) -> np.ndarray:
    """The (n_chroma, n_fft // 2 + 1) float32 matrix that maps a power spectrum to chroma (row 0 = C).

    Args:
        sample_rate: Audio sample rate, Hz.
        n_fft: FFT size of the spectrogram it will be applied to.
        n_chroma: Bins per octave (12: semitones).
        tuning: Deviation of A from 440 Hz, in fractions of a chroma bin.
        center_octave: Centre of the Gaussian octave weighting, in octaves above A0 (None: no weighting).
        octave_width: Half-width of that weighting, in octaves.
    """
    freqs = np.linspace(0, sample_rate, n_fft, endpoint=False)[1:]
    a440 = 440.0 * 2.0 ** (tuning / n_chroma)
    pos = n_chroma * np.log2(freqs / (a440 / 16.0))  # pitch position in bins above A0
    pos = np.concatenate(([pos[0] - 1.5 * n_chroma], pos))  # the 0 Hz bin: 1.5 octaves below bin 1
    width = np.concatenate((np.maximum(pos[1:] - pos[:-1], 1.0), [1.0]))
    half = np.round(n_chroma / 2.0)
    dist = np.remainder(pos[None, :] - np.arange(n_chroma)[:, None] + half + 10 * n_chroma, n_chroma) - half
    weights = np.exp(-0.5 * (2.0 * dist / width[None, :]) ** 2)
    weights /= np.sqrt(np.sum(weights**2, axis=0, keepdims=True))
    if center_octave is not None:
        weights *= np.exp(-0.5 * ((pos / n_chroma - center_octave) / octave_width) ** 2)[None, :]
    weights = np.roll(weights, -3 * (n_chroma // 12), axis=0)  # row 0 was A: start at C
    return np.ascontiguousarray(weights[:, : n_fft // 2 + 1], dtype=np.float32)


def power_spectrogram(audio: torch.Tensor, n_fft: int, hop_length: int, normalized: bool = True) -> torch.Tensor:
    """|STFT|^2 of (B, S) audio: (B, n_fft // 2 + 1, frames), frames = 1 + max(S, n_fft) // hop_length.

    Periodic Hann window of ``n_fft`` samples, centred frames (the signal is reflect-padded by n_fft // 2;
    shorter signals are zero-padded to ``n_fft`` first, centred). ``normalized`` divides the magnitude by
    the window's L2 norm (as torchaudio's ``Spectrogram(normalized=True)`` does).
    """
    length = audio.shape[-1]
    if length < n_fft:  # reflect padding needs more samples than the pad
        pad = n_fft - length
        audio = torch.nn.functional.pad(audio, (pad // 2, pad - pad // 2))
    window = torch.hann_window(n_fft, device=audio.device, dtype=audio.dtype)
    spec = torch.stft(
        audio, n_fft, hop_length=hop_length, window=window, center=True, pad_mode="reflect", return_complex=True
    )
    power = spec.real**2 + spec.imag**2
    if normalized:
        power = power / window.pow(2).sum()
    return power


def chroma(
    audio: torch.Tensor,
    sample_rate: int,
    n_fft: int = 16384,
    hop_length: int = 4096,
    n_chroma: int = 12,
    norm: float | None = float("inf"),
    tuning: float = 0.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Chromagram of mono audio.

    Args:
        audio: (B, S) or (S,) float audio (mix stereo down first).
        sample_rate: Its sample rate, Hz.
        n_fft: FFT size (16384 at 32 kHz: 0.5 s windows, about 2 Hz per bin, enough to separate semitones
            down to about 35 Hz).
        hop_length: Samples between frames (frame rate = sample_rate / hop_length).
        n_chroma: Pitch classes (12).
        norm: Per-frame normalisation of the chroma vector: ``inf`` (the loudest class is 1; MusicGen-melody),
            ``2`` (unit L2 norm), or None (raw energy per class). A silent frame stays all zeros (``eps``
            guards the division).
        tuning: Deviation of A from 440 Hz, in fractions of a chroma bin.
        eps: Smallest norm divided by.

    Returns:
        (B, frames, n_chroma) float chroma (``(frames, n_chroma)`` for (S,) input), index 0 = C, on the
        input's device. ``frames = 1 + max(S, n_fft) // hop_length``: audio shorter than ``n_fft`` is
        zero-padded (centred) to ``n_fft`` first, as MusicGen-melody's feature extractor does.
    """
    if audio.ndim not in (1, 2):
        raise ValueError(f"chroma: expected (B, S) or (S,) audio, got shape {tuple(audio.shape)}")
    squeeze = audio.ndim == 1
    x = audio[None] if squeeze else audio
    x = x.float()
    power = power_spectrogram(x, n_fft, hop_length)
    filters = torch.from_numpy(chroma_filter_bank(int(sample_rate), int(n_fft), n_chroma, float(tuning)))
    out = torch.einsum("cf,bft->btc", filters.to(power.device), power)
    if norm is not None:
        out = torch.nn.functional.normalize(out, p=norm, dim=-1, eps=eps)
    return out[0] if squeeze else out


def chroma_onehot(chromagram: torch.Tensor) -> torch.Tensor:
    """One-hot of the strongest pitch class per frame: (..., n_chroma) -> same shape, 1.0 at the argmax.

    This is the melody condition MusicGen-melody was trained with.
    """
    idx = chromagram.argmax(-1, keepdim=True)
    return torch.zeros_like(chromagram).scatter_(-1, idx, 1.0)
