"""Manifest and split by song."""

from __future__ import annotations

import json

import numpy as np
import pytest

from musiclit.data.audio import write_audio
from musiclit.data.caption import Caption
from musiclit.data.manifest import (
    ClipEntry,
    ManifestError,
    load_dataset_entries,
    read_manifest,
    scan_dataset,
    split_by_song,
    write_manifest,
)


def _entries(n_songs, clips_per_song=3):
    return [
        ClipEntry(f"s{s}_{c}.wav", 30.0, 32000, 1, f"song{s}") for s in range(n_songs) for c in range(clips_per_song)
    ]


def test_split_never_puts_one_song_on_both_sides():
    out = split_by_song(_entries(20), valid_fraction=0.2, seed=3)
    sides: dict[str, set[str]] = {}
    for e in out:
        sides.setdefault(e.song_id, set()).add(e.split)
    assert all(len(s) == 1 for s in sides.values())
    assert sum(s == {"valid"} for s in sides.values()) == 4


def test_split_is_deterministic_and_seeded():
    a = [e.split for e in split_by_song(_entries(30), 0.2, seed=1)]
    b = [e.split for e in split_by_song(_entries(30), 0.2, seed=1)]
    c = [e.split for e in split_by_song(_entries(30), 0.2, seed=2)]
    assert a == b and a != c


def test_existing_split_is_kept_and_extended_to_the_song():
    entries = _entries(4)
    entries[0].split = "valid"  # one clip of song0 already marked
    out = split_by_song(entries, 0.0, seed=0)
    assert {e.split for e in out if e.song_id == "song0"} == {"valid"}
    entries[1].split = "train"
    with pytest.raises(ManifestError, match=r"song0.*both splits"):
        split_by_song(entries, 0.0, seed=0)


def test_small_dataset_still_gets_a_validation_song():
    out = split_by_song(_entries(3), valid_fraction=0.1, seed=0)
    assert sum(e.split == "valid" for e in out) == 3  # one song (3 clips)


def test_manifest_round_trip_and_errors(tmp_path):
    entries = split_by_song(_entries(3), 0.34, seed=0)
    path = tmp_path / "manifest.jsonl"
    write_manifest(path, entries)
    assert read_manifest(path) == entries
    path.write_text(path.read_text() + '{"path": "x.wav", "duration": "long"}\n')
    with pytest.raises(ManifestError, match=r"manifest\.jsonl:10: field 'duration' has the wrong type"):
        read_manifest(path)


def test_scan_without_manifest_uses_song_id_from_captions(tmp_path):
    tone = np.sin(np.arange(16000) / 10)[None].astype(np.float32)
    for song, clip in (("a", 0), ("a", 1), ("b", 0)):
        write_audio(tmp_path / f"{song}{clip}.wav", tone, 16000)
        Caption(description="x", song_id=f"song-{song}").save(tmp_path / f"{song}{clip}.json")
    write_audio(tmp_path / "sub" / "lonely.flac", tone, 16000)  # no caption: its own song
    entries = scan_dataset(tmp_path)
    assert [e.song_id for e in entries] == ["song-a", "song-a", "song-b", "sub/lonely"]
    assert entries[3].sample_rate == 16000 and entries[3].duration == pytest.approx(1.0)
    split = load_dataset_entries(tmp_path, valid_fraction=0.34, seed=0)
    assert {e.split for e in split if e.song_id == "song-a"} in ({"train"}, {"valid"})


def test_missing_clip_and_missing_folder_are_clear_errors(tmp_path):
    with pytest.raises(ManifestError, match="dataset folder not found"):
        load_dataset_entries(tmp_path / "nope")
    write_manifest(tmp_path / "manifest.jsonl", _entries(1, 1))
    with pytest.raises(ManifestError, match=r"s0_0\.wav"):
        load_dataset_entries(tmp_path)
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"a": 1}) + "\n")
    with pytest.raises(ManifestError, match="missing field 'path'"):
        load_dataset_entries(tmp_path)
