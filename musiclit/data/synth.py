"""Synthesized music-like audio with known labels: the offline demo dataset and test fixtures.

Each song has a tempo, a key (major or minor), a chord progression, a bass line on the chord roots, a
melody from the scale, drums on the beat, and an instrument timbre. The labels are ground truth.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musiclit.data.audio import write_audio
from musiclit.data.caption import Caption
from musiclit.data.manifest import ClipEntry, split_by_song, write_manifest

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
# (genre, mood, lead instrument, harmonic roll-off, tempo range)
STYLES = (
    ("ambient", "calm", "pad", 2.0, (60, 80)),
    ("electronic", "energetic", "synthesizer", 0.8, (118, 132)),
    ("folk", "warm", "plucked guitar", 1.4, (86, 104)),
    ("chiptune", "playful", "square lead", 0.5, (130, 150)),
)


@dataclass
class SongSpec:
    """Ground truth of a synthesized song."""

    song_id: str
    genre: str
    mood: str
    instrument: str
    bpm: float
    tonic: int
    minor: bool
    seconds: float

    @property
    def key(self) -> str:
        """Key name, e.g. "A minor"."""
        return f"{NOTE_NAMES[self.tonic]} {'minor' if self.minor else 'major'}"

    def caption(self) -> Caption:
        """The caption JSON of this song."""
        return Caption(
            description=f"{self.mood} {self.genre} track with {self.instrument}, bass and drums",
            genre=self.genre,
            mood=self.mood,
            bpm=self.bpm,
            key=self.key,
            instruments=[self.instrument, "bass", "drums"],
            song_id=self.song_id,
        )


def _tone(freq: float, n: int, sr: int, rolloff: float, decay: float) -> np.ndarray:
    t = np.arange(n) / sr
    wave = np.zeros(n)
    for h in range(1, 7):
        if freq * h >= sr / 2:
            break
        wave += np.sin(2 * np.pi * freq * h * t) / h**rolloff
    env = np.exp(-t * decay) * np.minimum(1.0, t * 200)
    return wave * env


def render_song(spec: SongSpec, sr: int = 32000, seed: int = 0) -> np.ndarray:
    """Render a song as (1, samples) float32 audio in [-1, 1]."""
    rng = np.random.default_rng(seed)
    style = next(s for s in STYLES if s[0] == spec.genre)
    rolloff = style[3]
    n = int(spec.seconds * sr)
    beat = 60.0 / spec.bpm
    out = np.zeros(n + int(5 * beat * sr) + sr)
    scale = MINOR if spec.minor else MAJOR
    degrees = (0, 5, 3, 4) if not spec.minor else (0, 5, 2, 4)  # I-vi-IV-V / i-VI-iv-v
    base = 48 + spec.tonic  # MIDI note of the tonic an octave below middle C

    def midi(m: float) -> float:
        return 440.0 * 2 ** ((m - 69) / 12)

    n_beats = int(spec.seconds / beat)
    for b in range(n_beats):
        start = int(b * beat * sr)
        bar, pos = divmod(b, 4)
        degree = degrees[bar % 4]
        root = base + scale[degree]
        # kick on every beat, hat on off-beats
        k = int(0.15 * sr)
        tk = np.arange(k) / sr
        out[start : start + k] += 0.5 * np.sin(2 * np.pi * (50 + 80 * np.exp(-tk * 30)) * tk) * np.exp(-tk * 18)
        h = int(0.05 * sr)
        hat_at = start + int(beat * sr / 2)
        out[hat_at : hat_at + h] += 0.08 * rng.standard_normal(h) * np.exp(-np.arange(h) / sr * 80)
        # bass on the chord root each beat
        bl = int(beat * sr * 0.9)
        out[start : start + bl] += 0.25 * _tone(midi(root - 12), bl, sr, 1.5, 3.0)
        # chord (triad of the scale) at the start of each bar
        if pos == 0:
            cl = int(4 * beat * sr)
            for step in (0, 2, 4):
                note = base + 12 + scale[(degree + step) % 7] + 12 * ((degree + step) // 7)
                out[start : start + cl] += 0.08 * _tone(midi(note), cl, sr, rolloff, 0.6)
        # melody: two notes per beat from the scale
        for half in range(2):
            ml = int(beat * sr / 2)
            ms = start + half * ml
            note = base + 24 + scale[int(rng.integers(0, 7))]
            out[ms : ms + ml] += 0.12 * _tone(midi(note), ml, sr, rolloff, 4.0)
    out = out[:n]
    out /= max(1e-6, np.abs(out).max()) / 0.8
    return out[None, :].astype(np.float32)


def random_specs(n_songs: int, seconds: float, seed: int = 0) -> list[SongSpec]:
    """Songs spread over the styles, keys and tempi."""
    rng = random.Random(seed)
    specs = []
    for i in range(n_songs):
        genre, mood, instrument, _, (lo, hi) = STYLES[i % len(STYLES)]
        specs.append(
            SongSpec(
                song_id=f"song-{i:03d}",
                genre=genre,
                mood=mood,
                instrument=instrument,
                bpm=float(rng.randint(lo, hi)),
                tonic=rng.randrange(12),
                minor=rng.random() < 0.5,
                seconds=seconds,
            )
        )
    return specs


def synthesize_dataset(
    root: str | Path,
    n_songs: int = 8,
    song_seconds: float = 20.0,
    clip_seconds: float = 10.0,
    sample_rate: int = 32000,
    valid_fraction: float = 0.25,
    seed: int = 0,
) -> list[SongSpec]:
    """Write a dataset in musiclit's format: clips + caption JSON + ``manifest.jsonl`` (split by song).

    Songs are cut into ``clip_seconds`` clips (the last one may be shorter), so the split by song and
    the handling of short clips are exercised.
    """
    root = Path(root)
    specs = random_specs(n_songs, song_seconds, seed)
    entries = []
    for i, spec in enumerate(specs):
        audio = render_song(spec, sample_rate, seed=seed * 1000 + i)
        clip = int(clip_seconds * sample_rate)
        for c, start in enumerate(range(0, audio.shape[1], clip)):
            piece = audio[:, start : start + clip]
            if piece.shape[1] < sample_rate:  # tails under a second are not worth a clip
                continue
            rel = f"clips/{spec.song_id}_{c:03d}.wav"
            write_audio(root / rel, piece, sample_rate)
            caption = spec.caption()
            caption.chunk_index, caption.offset_s = c, start / sample_rate
            caption.save((root / rel).with_suffix(".json"))
            entries.append(ClipEntry(rel, piece.shape[1] / sample_rate, sample_rate, 1, spec.song_id))
    write_manifest(root / "manifest.jsonl", split_by_song(entries, valid_fraction, seed))
    return specs
