"""Chroma: the filter bank against transformers' port of librosa's, the STFT against numpy, tones and chords of
known pitch classes, and real music against its MIDI score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from musiclit.model.chroma import chroma, chroma_filter_bank, chroma_onehot, power_spectrogram

SR = 32000
REALMUSIC = Path("/work/shared/realmusic-dev")


def midi_hz(m: float) -> float:
    return 440.0 * 2 ** ((m - 69) / 12)


def tones(midis: list[int], seconds: float = 2.0, harmonics: int = 1) -> torch.Tensor:
    t = np.arange(int(seconds * SR)) / SR
    out = sum(np.sin(2 * np.pi * midi_hz(m) * h * t) / h for m in midis for h in range(1, harmonics + 1))
    return torch.from_numpy((0.3 * out / len(midis)).astype(np.float32))


@pytest.mark.parametrize(("sr", "n_fft"), [(32000, 16384), (32000, 4096), (44100, 2048)])
def test_filter_bank_matches_transformers(sr, n_fft):
    from transformers.audio_utils import chroma_filter_bank as reference

    ours = chroma_filter_bank(sr, n_fft)
    ref = reference(num_frequency_bins=n_fft, num_chroma=12, sampling_rate=sr, tuning=0.0)
    assert ours.shape == ref.shape == (12, n_fft // 2 + 1)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_power_spectrogram_matches_numpy_framing():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(5000).astype(np.float32)
    n_fft, hop = 512, 128
    padded = np.pad(x.astype(np.float64), n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = np.stack([padded[i * hop : i * hop + n_fft] for i in range(1 + len(x) // hop)])
    ref = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2 / np.sum(window**2)
    ours = power_spectrogram(torch.from_numpy(x)[None], n_fft, hop)[0].numpy().T
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-3 * ref.max())


@pytest.mark.parametrize("octave", [3, 4, 5, 6])
def test_pure_tones_land_on_their_pitch_class(octave):
    for pc in range(12):
        c = chroma(tones([12 * (octave + 1) + pc], seconds=1.0), SR)
        assert c.shape == (1 + SR // 4096, 12)
        middle = c[2:-2]  # frames whose window lies inside the tone
        assert (middle.argmax(-1) == pc).all(), (octave, pc)
        assert torch.allclose(middle.max(-1).values, torch.ones(len(middle)))  # inf norm: loudest class is 1


@pytest.mark.parametrize(
    ("root", "intervals"),
    [(60, (0, 4, 7)), (57, (0, 3, 7)), (62, (0, 4, 7)), (65, (0, 3, 7)), (55, (0, 4, 7, 10))],
)
def test_chords_light_up_their_pitch_classes(root, intervals):
    notes = [root + i for i in intervals]
    expected = {n % 12 for n in notes}
    for harmonics in (1, 3):
        c = chroma(tones(notes, harmonics=harmonics), SR, n_fft=8192, hop_length=2048)
        profile = c[3:-3].mean(0)
        top = set(profile.argsort(descending=True)[: len(expected)].tolist())
        if harmonics == 1:
            assert top == expected, (root, intervals, profile)
        else:  # overtones add the fifth above each note: the chord tones still hold the most energy
            assert len(top & expected) >= len(expected) - 1, (root, intervals, profile)
            assert profile[sorted(expected)].sum() > 0.5 * profile.sum()


def test_batch_rows_are_independent_and_silence_is_zero():
    a, b = tones([60], 1.5), tones([69], 1.5)
    batch = chroma(torch.stack([a, b, torch.zeros_like(a)]), SR, n_fft=4096, hop_length=1024)
    assert batch.shape == (3, 1 + len(a) // 1024, 12)
    torch.testing.assert_close(batch[0], chroma(a, SR, n_fft=4096, hop_length=1024))
    torch.testing.assert_close(batch[1], chroma(b, SR, n_fft=4096, hop_length=1024))
    assert batch[2].abs().max() == 0
    l2 = chroma(a, SR, n_fft=4096, hop_length=1024, norm=2)
    torch.testing.assert_close(l2.norm(dim=-1)[2:-2], torch.ones(len(l2) - 4))


def test_short_audio_and_onehot():
    c = chroma(tones([64], seconds=0.1), SR)  # shorter than n_fft: padded to n_fft (as MusicGen-melody does)
    assert c.shape == (1 + 16384 // 4096, 12)
    one = chroma_onehot(c)
    assert (one.sum(-1) == 1).all() and (one.argmax(-1) == c.argmax(-1)).all()
    assert int(c[2].argmax()) == 4  # E, in the frame centred on the tone
    with pytest.raises(ValueError, match="expected"):
        chroma(torch.zeros(2, 2, 100), SR)


@pytest.mark.slow
@pytest.mark.skipif(not (REALMUSIC / "labels.json").is_file(), reason="realmusic-dev is not on this machine")
def test_real_music_chroma_follows_the_score():
    """On the 16 real pieces: the strongest pitch class of a frame is a note the MIDI score plays there
    (drums excluded) far more often than chance (chance = sounding classes / 12)."""
    from midi_notes import read_notes

    from musiclit.data.audio import read_audio

    labels = json.loads((REALMUSIC / "labels.json").read_text())
    n_fft, hop = 4096, 1024
    half = n_fft / SR / 2
    hits = chance = count = 0
    for entry in labels["files"]:
        notes = [n for n in read_notes(REALMUSIC / entry["midi"]) if n.channel != 9]
        starts = np.array([n.start for n in notes])
        ends = np.array([n.end for n in notes])
        classes = np.array([n.pitch % 12 for n in notes])
        wav = read_audio(REALMUSIC / entry["path"], SR, 1)
        c = chroma(torch.from_numpy(wav[0]), SR, n_fft=n_fft, hop_length=hop).numpy()
        file_hits = file_chance = file_count = 0
        for i, frame in enumerate(c):
            t = i * hop / SR
            active = set(classes[(starts <= t - half) & (ends >= t + half)].tolist())  # sounding the whole window
            if not active or frame.max() < 1e-3:
                continue
            file_count += 1
            file_hits += int(frame.argmax()) in active
            file_chance += len(active) / 12
        assert file_hits / file_count > 1.4 * file_chance / file_count, entry["path"]
        hits, chance, count = hits + file_hits, chance + file_chance, count + file_count
    # measured: 0.74 of frames vs 0.22 by chance
    assert hits / count > 0.65
    assert hits / count > 3 * chance / count
