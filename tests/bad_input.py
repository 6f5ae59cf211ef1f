"""A corpus of bad input, generated (nothing is stored): each kind of problem a music collection or a dataset
folder can have, next to good files. Shared by tests/test_bad_input.py (built once per session).

``make_source_corpus`` builds a song folder for ``prepare``; it returns, for each kind, the file (relative
path) and the skip reason (or ``None``: the file must be used, e.g. an 8 kHz song is fine once resampled).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
from prep_audio import SongSpec, synth_song, write, write_mp3

# the dataset-level kinds that tests/test_bad_input.py builds around a prepared dataset (fit, cache, import)
DATASET_KINDS = (
    "data_dir that does not exist",
    "data_dir that holds no audio",
    "empty dataset (a manifest with no lines)",
    "a one-song dataset (no validation split possible)",
    "missing caption JSON beside a clip",
    "malformed caption JSON",
    "caption JSON with wrong types",
    "caption JSON with absurd values",
    "a manifest line pointing at a missing file",
    "duplicate manifest entries",
    "a manifest of another dataset (paths outside this folder)",
    "a zero-byte clip",
    "a clip with NaN samples",
    "a full disk while a checkpoint is written",
    "an audiocraft folder without state_dict.bin",
    "a zero-byte / truncated state_dict.bin",
)


def _silent_hour_wav(path: Path, rate: int = 8000) -> None:
    """An hour of 16-bit silence written as a sparse file: a valid WAV header, then a hole (no disk used)."""
    frames = rate * 3600
    data = frames * 2
    header = b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    header += b"data" + struct.pack("<I", data)
    with open(path, "wb") as fh:
        fh.write(header)
        fh.truncate(len(header) + data)


def make_source_corpus(root: str | Path) -> dict[str, tuple[str, str | None]]:
    """Write good songs and every kind of bad source file under ``root``; ``kind -> (rel path, reason)``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    kinds: dict[str, tuple[str, str | None]] = {}
    good = synth_song(SongSpec(100, 9, "minor", 24, seed=1), 44100, 2)
    write(root / "good one.wav", good, 44100, "WAV")
    kinds["spaces in the name (good song)"] = ("good one.wav", None)
    other = synth_song(SongSpec(128, 2, "major", 24, seed=2), 32000, 1)
    write(root / "música ünïcode 日本.flac", other, 32000, "FLAC")
    kinds["unicode in the name (good song)"] = ("música ünïcode 日本.flac", None)
    third = synth_song(SongSpec(90, 4, "minor", 24, seed=3), 44100, 2)
    write_mp3(root / "third.mp3", third, 44100)
    wav = (root / "good one.wav").read_bytes()
    flac = (root / "música ünïcode 日本.flac").read_bytes()
    mp3 = (root / "third.mp3").read_bytes()

    def put(kind: str, rel: str, data: bytes, reason: str | None) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        kinds[kind] = (rel, reason)

    put("zero-byte file", "zero.wav", b"", "empty")
    put("truncated WAV (header only)", "truncated.wav", wav[:40], "undecodable")
    put("truncated FLAC", "truncated.flac", flac[: len(flac) // 50], "undecodable")
    put("truncated MP3", "truncated.mp3", mp3[:300], "undecodable")
    put("a text file named .mp3", "notes.mp3", b"this is not audio, it is my shopping list\n" * 20, "undecodable")
    write(root / "flac_named.wav", synth_song(SongSpec(105, 8, "major", 24, seed=10), 44100, 1), 44100, "FLAC")
    kinds["wrong extension (FLAC bytes named .wav)"] = ("flac_named.wav", None)
    put("unsupported format (.m4a)", "phone.m4a", b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 100, "unsupported")
    sr = 44100
    nan = synth_song(SongSpec(150, 10, "major", 24, seed=11), 44100, 2).astype(np.float32)
    nan[:, 1000:5000] = np.nan
    nan[:, 9000:9100] = np.inf
    write(root / "nan_inf.wav", nan, sr, "WAV", subtype="FLOAT")
    kinds["WAV with NaN/Inf samples (prepare zeroes them)"] = ("nan_inf.wav", None)
    write(root / "one_sample.wav", np.zeros((1, 1), np.float32), sr, "WAV")
    kinds["1-sample file"] = ("one_sample.wav", "too_short")
    write(root / "rate8k.wav", synth_song(SongSpec(110, 0, "major", 24, seed=4), 8000, 1), 8000, "WAV")
    kinds["8 kHz file"] = ("rate8k.wav", None)
    write(root / "rate192k.wav", synth_song(SongSpec(95, 5, "minor", 12, seed=5), 192000, 1), 192000, "WAV")
    kinds["192 kHz file"] = ("rate192k.wav", None)
    six = np.repeat(synth_song(SongSpec(120, 7, "major", 24, seed=6), 44100, 1), 6, axis=0) * 0.5
    write(root / "surround.wav", six, 44100, "WAV")
    kinds["6-channel file"] = ("surround.wav", None)
    _silent_hour_wav(root / "silent_hour.wav")
    kinds["hour-long silent file"] = ("silent_hour.wav", "silent")
    write(root / "clipped.wav", np.clip(good * 6, -1, 1), sr, "WAV")
    kinds["clipped file"] = ("clipped.wav", "clipping")
    os.mkfifo(root / "fifo.wav")
    kinds["unreadable: a FIFO named .wav (opening it would block)"] = ("fifo.wav", "not_a_file")
    (root / "folder.flac").mkdir()
    kinds["a folder named .flac"] = ("folder.flac", "not_a_file")
    os.symlink(root / "gone.wav", root / "broken_link.wav")
    kinds["broken symlink"] = ("broken_link.wav", "not_a_file")
    os.symlink(root / "loop_b.wav", root / "loop_a.wav")
    os.symlink(root / "loop_a.wav", root / "loop_b.wav")
    kinds["symlink loop (files)"] = ("loop_a.wav", "not_a_file")
    (root / "sub").mkdir()
    os.symlink(root, root / "sub" / "back_to_root")
    kinds["symlink loop (folder linking to its parent)"] = ("sub/back_to_root", None)
    bad_name = os.fsdecode(b"caf\xe9_latin1.wav")  # not UTF-8: held as a surrogate escape
    (root / bad_name).write_bytes(wav)
    kinds["non-UTF-8 file name"] = ("caf\\xe9_latin1.wav", "bad_name")
    long_name = "x" * 240 + ".wav"
    write(root / long_name, synth_song(SongSpec(140, 11, "minor", 24, seed=7), 44100, 1), 44100, "WAV")
    kinds["very long file name (240 characters)"] = (long_name, None)
    (root / "third.json").write_text("{ this is not json", encoding="utf-8")
    kinds["malformed sidecar JSON (the song is still used)"] = ("third.mp3", None)
    write(root / "typed.wav", synth_song(SongSpec(80, 3, "major", 24, seed=8), 44100, 1), 44100, "WAV")
    (root / "typed.json").write_text('{"bpm": "fast", "genre": 7, "description": ["a", "list"]}', encoding="utf-8")
    kinds["sidecar JSON with wrong types"] = ("typed.wav", None)
    write(root / "absurd.wav", synth_song(SongSpec(70, 6, "minor", 24, seed=9), 44100, 1), 44100, "WAV")
    absurd = {"bpm": -5, "key": "H# lydian", "description": "la " * 350_000}
    (root / "absurd.json").write_text(__import__("json").dumps(absurd), encoding="utf-8")
    kinds["sidecar JSON with absurd values (bpm -5, key H# lydian, 1 MB description)"] = ("absurd.wav", None)
    return kinds
