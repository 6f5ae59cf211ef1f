"""Vocal removal against ground truth: a mixture of known accompaniment and known "vocals", separated by an
oracle separator (an exact frequency split that Demucs' own apply_model runs like any model), must come out
of musiclit as the accompaniment. This checks musiclit's plumbing (normalisation, stem choice, windowing,
cross-fades, resampling), not Demucs' quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musiclit.prep import vocals

RATE = 44100


class SplitSeparator(torch.nn.Module):
    """Drums/bass/other = everything below ``cutoff`` Hz (a third each), vocals = everything above."""

    def __init__(self, cutoff: float, channels: int = 2) -> None:
        super().__init__()
        self.sources = ["drums", "bass", "other", "vocals"]
        self.samplerate = RATE
        self.audio_channels = channels
        self.segment = 2.0
        self.cutoff = cutoff

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.rfft(x, dim=-1)
        freqs = torch.fft.rfftfreq(x.shape[-1], 1 / self.samplerate)
        low = torch.fft.irfft(spectrum * (freqs < self.cutoff), n=x.shape[-1])
        return torch.stack([low / 3, low / 3, low / 3, x - low], dim=1)


def _song(seconds: float) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(int(RATE * seconds)) / RATE
    acc = np.stack([0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 330 * t + 1),
                    0.25 * np.sin(2 * np.pi * 277 * t)]) + 0.05  # fmt: skip
    voice = 0.2 * np.sin(2 * np.pi * 4000 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return acc.astype(np.float32), np.stack([voice, voice]).astype(np.float32)


def test_no_vocals_is_the_accompaniment():
    acc, voice = _song(6.0)
    out = vocals.separate_no_vocals(SplitSeparator(2000.0), acc + voice, "cpu", overlap=0.25)
    err = out - acc
    # the vocals are 0.3 peak: keeping them, or dropping the wrong stem, fails by far
    assert np.abs(err).max() < 0.03
    assert np.sqrt((err**2).mean()) < 0.005


@pytest.mark.parametrize("window", [1.5, 100.0])
def test_streamed_no_vocals_in_windows_is_the_resampled_accompaniment(tmp_path, window):
    import soundfile as sf

    from musiclit.data.audio import convert_channels, resample

    acc, voice = _song(5.0)
    sf.write(tmp_path / "song.wav", (acc + voice).T, RATE, subtype="FLOAT")
    blocks = list(vocals.no_vocals_stream(tmp_path / "song.wav", SplitSeparator(2000.0), 32000, 1, "cpu",
                                          window=window))  # fmt: skip
    out = np.concatenate(blocks, axis=1)
    expect = convert_channels(resample(acc, RATE, 32000), 1)
    assert out.shape == expect.shape
    err = out - expect
    assert np.abs(err).max() < 0.03
    assert np.sqrt((err**2).mean()) < 0.005
