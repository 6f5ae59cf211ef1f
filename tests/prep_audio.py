"""Synthesized test audio for the ``prepare`` tests: songs with a known tempo and key, and messy files.

Everything is built with numpy from a seed, so the ground truth (tempo, key, duration) is part of the
signal by construction:

* drums: a kick / snare / hi-hat pattern at the given tempo (slow songs get a busy hi-hat on eighth or
  sixteenth notes, the pattern that makes beat trackers report double tempo);
* harmony: a bass line on the chord roots and a chord progression that establishes the key (I-IV-V-I /
  vi-IV-V-I in major, i-iv-V-i / VI-iv-V-i with the harmonic-minor dominant in minor) plus a melody on
  the scale degrees;
* optional "vocals": a harmonic pulse train with vibrato shaped by vowel formants.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 11)  # harmonic minor: the raised 7th makes the dominant a major chord
MAJOR_PROGRESSION = ((0, 4, 7), (5, 9, 12), (7, 11, 14), (0, 4, 7), (9, 12, 16), (5, 9, 12), (7, 11, 14), (0, 4, 7))
MINOR_PROGRESSION = ((0, 3, 7), (5, 8, 12), (7, 11, 14), (0, 3, 7), (8, 12, 15), (5, 8, 12), (7, 11, 14), (0, 3, 7))


@dataclass(frozen=True)
class SongSpec:
    """Ground truth of one synthesized song.

    Attributes:
        bpm: Tempo in beats per minute.
        tonic: Tonic pitch class, 0 = C ... 11 = B.
        scale: "major" or "minor".
        duration: Seconds.
        seed: Random seed (drum noise, melody).
        vocals: Add a formant-shaped "singing" voice.
        hats: Hi-hat subdivision per beat (1, 2 or 4); None picks 4 for slow songs, 2 otherwise.
    """

    bpm: float
    tonic: int
    scale: str
    duration: float = 30.0
    seed: int = 0
    vocals: bool = False
    hats: int | None = None

    @property
    def key(self) -> str:
        """Key name as ``prepare`` writes it, e.g. "A minor"."""
        return f"{NOTE_NAMES[self.tonic]} {self.scale}"


def _midi_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12.0)


def _add(out: np.ndarray, start: int, sound: np.ndarray) -> None:
    end = min(out.shape[-1], start + sound.shape[-1])
    if end > start:
        out[..., start:end] += sound[..., : end - start]


@lru_cache(maxsize=512)
def _tone(freq: float, length: int, sr: int, harmonics: int, decay: float) -> np.ndarray:
    """Decaying harmonic tone (cached: songs repeat their notes)."""
    t = np.arange(length) / sr
    wave = np.zeros(length)
    for h in range(1, harmonics + 1):
        if freq * h >= sr / 2:
            break
        wave += np.sin(2 * np.pi * freq * h * t + 0.7 * h) / h
    attack = np.minimum(1.0, t / 0.01)
    out = wave * attack * np.exp(-t / decay)
    out.flags.writeable = False
    return out


def synth_song(spec: SongSpec, sample_rate: int = 44100, channels: int = 2) -> np.ndarray:
    """Render a song with a known tempo and key.

    Args:
        spec: What to render.
        sample_rate: Output rate in Hz.
        channels: 1 or 2 (stereo gets slightly different gains per part).

    Returns:
        float32 array of shape (channels, samples), peak about 0.7.
    """
    sr = sample_rate
    rng = np.random.default_rng(spec.seed)
    n = int(spec.duration * sr)
    beat = 60.0 / spec.bpm
    drums = np.zeros(n)
    music = np.zeros(n)
    # drum sounds
    kt = np.arange(int(0.3 * sr)) / sr
    kick = np.sin(2 * np.pi * np.cumsum(45 + 90 * np.exp(-kt / 0.04)) / sr) * np.exp(-kt / 0.12)
    st = np.arange(int(0.2 * sr)) / sr
    snare = (rng.standard_normal(st.size) * 0.7 + np.sin(2 * np.pi * 185 * st)) * np.exp(-st / 0.05)
    ht = np.arange(int(0.05 * sr)) / sr
    hat_noise = np.diff(rng.standard_normal(ht.size + 1))
    hat = hat_noise * np.exp(-ht / 0.012) * 0.25
    hats = spec.hats or (4 if spec.bpm < 75 else 2)
    n_beats = int(spec.duration / beat) + 1
    for b in range(n_beats):
        pos = int(b * beat * sr)
        if b % 2 == 0:
            _add(drums, pos, kick)
        else:
            _add(drums, pos, snare * 0.6)
        for s in range(hats):
            accent = 1.0 if s == 0 else 0.6
            _add(drums, int((b + s / hats) * beat * sr), hat * accent)
    # harmony: one chord per bar (4 beats), bass on every beat, melody on eighth notes
    progression = MAJOR_PROGRESSION if spec.scale == "major" else MINOR_PROGRESSION
    scale = MAJOR_SCALE if spec.scale == "major" else MINOR_SCALE
    base = 48 + spec.tonic  # chords around C3..B3
    bar = 4 * beat
    n_bars = int(spec.duration / bar) + 1
    chord_len = int(bar * sr)
    for i in range(n_bars):
        chord = progression[i % len(progression)]
        pos = int(i * bar * sr)
        for interval in chord:
            _add(music, pos, 0.12 * _tone(_midi_hz(base + interval), chord_len, sr, 6, bar * 0.8))
        for b in range(4):
            root = base - 12 + chord[0]
            bass = _tone(_midi_hz(root), int(beat * sr), sr, 4, beat * 0.5)
            _add(music, int((i * 4 + b) * beat * sr), 0.25 * bass)
        for e in range(8):
            degree = chord[rng.integers(0, 3)] if e % 2 == 0 else scale[rng.integers(0, 7)]
            note = base + 12 + degree % 12
            start = int((i * 4 + e / 2) * beat * sr)
            _add(music, start, 0.08 * _tone(_midi_hz(note), int(beat * sr / 2), sr, 3, beat * 0.3))
    voice = _voice(spec, sr, rng, n) if spec.vocals else np.zeros(n)
    mix_l = 0.55 * drums + 0.6 * music + voice
    mix_r = 0.55 * drums + 0.5 * music + voice
    out = np.stack([mix_l, mix_r]) if channels == 2 else ((mix_l + mix_r) / 2)[None]
    peak = np.abs(out).max()
    return (out * (0.7 / peak)).astype(np.float32)


def _voice(spec: SongSpec, sr: int, rng: np.random.Generator, n: int) -> np.ndarray:
    """A sung line: harmonic pulse train with vibrato, amplitudes shaped by "ah" formants."""
    scale = MAJOR_SCALE if spec.scale == "major" else MINOR_SCALE
    beat = 60.0 / spec.bpm
    note_len = int(beat * sr)
    f0 = np.zeros(n)
    for i in range(0, n, note_len):
        f0[i : i + note_len] = _midi_hz(60 + spec.tonic + scale[rng.integers(0, 7)])
    t = np.arange(n) / sr
    f0 = f0 * (1 + 0.03 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    formants = ((700, 110, 1.0), (1220, 120, 0.5), (2600, 160, 0.25))
    voice = np.zeros(n)
    for h in range(1, 30):
        freq = f0 * h
        gain = sum(a * np.exp(-0.5 * ((freq - fc) / bw) ** 2) for fc, bw, a in formants) + 0.02 / h
        gain = np.where(freq < sr / 2, gain, 0.0)
        voice += gain * np.sin(h * phase)
    gate = (np.arange(n) % note_len) < 0.85 * note_len
    return 0.25 * voice * gate / max(np.abs(voice).max(), 1e-9)


def write(path: str | Path, audio: np.ndarray, sample_rate: int, fmt: str | None = None, **kwargs) -> Path:
    """Write (channels, samples) audio with soundfile; ``fmt`` e.g. "WAV", "FLAC", "OGG", "MP3"."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(audio).T, sample_rate, format=fmt, **kwargs)
    return path


def write_mp3(path: str | Path, audio: np.ndarray, sample_rate: int, compression: float = 0.0) -> Path:
    """Write an MP3 (libsndfile's LAME, CBR). ``compression`` 0 = highest bitrate, 1 = lowest.

    Measured on a 44.1 kHz stereo synthesized song (bitrate; LAME's low-pass, where the spectrum
    falls to nothing): 0.0 -> 322 kbps, 20.2 kHz; 0.5 -> 161 kbps, 19.1 kHz; 0.62 -> 129 kbps, 16.9 kHz;
    0.8 -> 97 kbps, 15.5 kHz; 0.9 -> 56 kbps, 11.4 kHz (1.0 is refused by libsndfile).
    """
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(
        str(path),
        np.asarray(audio).T,
        sample_rate,
        format="MP3",
        subtype="MPEG_LAYER_III",
        compression_level=compression,
        bitrate_mode="CONSTANT",
    )
    return path


def natural_rolloff(audio: np.ndarray, sample_rate: int, corner_hz: float = 1500.0, order: int = 3) -> np.ndarray:
    """Low-pass ``audio`` with a gentle roll-off: -6 dB per octave per ``order`` above ``corner_hz``.

    The spectrum of acoustic instruments and soft recordings: the level falls steadily with frequency
    down to the noise floor, with no edge (the gain is that of an ``order``-pole low-pass, applied in
    the frequency domain). The output is renormalised to a peak of 0.7.
    """
    x = np.asarray(audio, dtype=np.float64)
    spec = np.fft.rfft(x, axis=-1)
    freqs = np.fft.rfftfreq(x.shape[-1], 1.0 / sample_rate)
    gain = (1.0 + (freqs / corner_hz) ** 2) ** (-order / 2)
    out = np.fft.irfft(spec * gain, n=x.shape[-1], axis=-1)
    return (out * (0.7 / np.abs(out).max())).astype(np.float32)


def accuracy_specs(duration: float = 30.0) -> list[SongSpec]:
    """The accuracy set: tempi from 55 to 175 BPM (six below 70) over all 24 major and minor keys."""
    tempos = (
        55,
        58,
        62,
        65,
        68,
        69,
        72,
        80,
        88,
        95,
        100,
        106,
        112,
        118,
        124,
        128,
        134,
        140,
        146,
        152,
        160,
        166,
        170,
        175,
    )
    specs = []
    for i, bpm in enumerate(tempos):
        scale = "minor" if i % 2 else "major"
        tonic = (i // 2 * 7) % 12
        specs.append(SongSpec(bpm=float(bpm), tonic=tonic, scale=scale, duration=duration, seed=100 + i))
    return specs


def make_messy_folder(root: str | Path, long_seconds: float = 150.0) -> dict[str, str | None]:
    """A messy collection: good songs, broken files, a silent file, duplicates, bad-quality files.

    Returns:
        Map of relative path -> expected skip reason (None for songs that must be used).
    """
    import soundfile as sf

    root = Path(root)
    expect: dict[str, str | None] = {}
    a = synth_song(SongSpec(100, 9, "minor", 40, seed=1), 44100, 2)
    with sf.SoundFile(str(root / "good_a.wav"), "w", 44100, 2, format="WAV", subtype="PCM_16") as fh:
        fh.title, fh.artist, fh.genre = "Night Drive", "The Synths", "Synthwave"
        fh.write(a.T)
    (root / "good_a.txt").write_text("dreamy synthwave with a pulsing bass\n", encoding="utf-8")
    expect["good_a.wav"] = None
    b = synth_song(SongSpec(128, 2, "major", 35, seed=2), 48000, 1)
    write(root / "albums" / "b" / "mono48k.flac", b, 48000, "FLAC")
    expect["albums/b/mono48k.flac"] = None
    c = synth_song(SongSpec(60, 4, "minor", long_seconds, seed=3), 44100, 2)
    write_mp3(root / "albums" / "long.mp3", c, 44100, 0.0)
    expect["albums/long.mp3"] = None
    v = synth_song(SongSpec(90, 7, "major", 32, seed=4, vocals=True), 44100, 2)
    write(root / "vocal_song.ogg", v, 44100, "OGG")
    expect["vocal_song.ogg"] = None
    # duplicates: the same bytes twice, and good_a re-encoded as MP3 with a gain change
    (root / "albums" / "copy").mkdir(parents=True, exist_ok=True)
    (root / "albums" / "copy" / "good_a_again.wav").write_bytes((root / "good_a.wav").read_bytes())
    expect["albums/copy/good_a_again.wav"] = "duplicate"
    write_mp3(root / "albums" / "copy" / "good_a_reencoded.mp3", a * 0.9, 44100, 0.0)
    expect["albums/copy/good_a_reencoded.mp3"] = "near_duplicate"
    # broken and unsupported files
    (root / "corrupt.mp3").write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 40)
    expect["corrupt.mp3"] = "undecodable"
    (root / "empty.wav").write_bytes(b"")
    expect["empty.wav"] = "empty"
    (root / "phone.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 100)
    expect["phone.m4a"] = "unsupported"
    wav_bytes = (root / "good_a.wav").read_bytes()
    (root / "truncated.wav").write_bytes(wav_bytes[:30])
    expect["truncated.wav"] = "undecodable"
    # quality problems
    rng = np.random.default_rng(5)
    write(root / "silent.wav", (rng.standard_normal((2, 44100 * 30)) * 1e-5).astype(np.float32), 44100, "WAV")
    expect["silent.wav"] = "silent"
    d = synth_song(SongSpec(140, 5, "major", 30, seed=6), 44100, 2)
    write(root / "clipped.wav", np.clip(d * 4, -1, 1), 44100, "WAV", subtype="PCM_16")
    expect["clipped.wav"] = "clipping"
    e = synth_song(SongSpec(110, 0, "minor", 30, seed=7), 44100, 2)
    write_mp3(root / "lowbitrate.mp3", e, 44100, 0.9)  # 56 kbps: cut at 11.4 kHz, below the 16 kHz the model hears
    expect["lowbitrate.mp3"] = "low_bandwidth"
    write_mp3(root / "albums" / "mp3_128k.mp3", synth_song(SongSpec(118, 10, "major", 31, seed=10)), 44100, 0.62)
    expect["albums/mp3_128k.mp3"] = None  # cut at 16.9 kHz: nothing the model hears at 32 kHz is lost
    soft = natural_rolloff(synth_song(SongSpec(84, 5, "minor", 33, seed=11), 48000, 2), 48000)
    write(root / "soft_piano_like.flac", soft, 48000, "FLAC")
    expect["soft_piano_like.flac"] = None  # little treble, but no edge: a natural roll-off is kept
    f = synth_song(SongSpec(95, 3, "major", 30, seed=8), 16000, 1)
    import soxr

    write(root / "upsampled.wav", soxr.resample(f[0], 16000, 44100)[None], 44100, "WAV")
    expect["upsampled.wav"] = "low_bandwidth"
    g = synth_song(SongSpec(120, 1, "major", 4, seed=9), 44100, 2)
    write(root / "tiny.wav", g, 44100, "WAV")
    expect["tiny.wav"] = "too_short"
    return expect
