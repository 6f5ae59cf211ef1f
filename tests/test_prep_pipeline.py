"""End-to-end tests of ``prepare`` on a synthesized messy collection (read-only source folder)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from prep_audio import SongSpec, make_messy_folder, synth_song, write
from tiny_run import tiny_fit

from musiclit.data.caption import Caption
from musiclit.data.manifest import MANIFEST_NAME, load_dataset_entries, read_manifest
from musiclit.prep.config import PrepareConfig
from musiclit.prep.pipeline import run_prepare


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _set_readonly(root: Path, readonly: bool) -> None:
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        if readonly:
            p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        else:
            p.chmod(mode | stat.S_IWUSR)


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """The messy folder (read-only), prepared once with 2 workers."""
    src = tmp_path_factory.mktemp("songs")
    expect = make_messy_folder(src, long_seconds=95.0)
    before = _tree_digest(src)
    _set_readonly(src, True)
    out = tmp_path_factory.mktemp("dataset")
    report = run_prepare(PrepareConfig(input=src, output=out, workers=2, progress=False))
    yield src, out, expect, before, report
    _set_readonly(src, False)


def test_source_folder_untouched(messy):
    src, _, _, before, _ = messy
    assert _tree_digest(src) == before
    if os.geteuid() != 0:  # root ignores permission bits
        with pytest.raises(PermissionError):
            (src / "probe.txt").write_text("x")


def test_every_skip_is_explained(messy):
    _, _, expect, _, report = messy
    skipped = {s["path"]: s for s in report["skipped"]}
    for rel, reason in expect.items():
        if reason is None:
            assert rel not in skipped, f"{rel} was skipped: {skipped.get(rel)}"
        else:
            assert rel in skipped, f"{rel} should be skipped as {reason}"
            assert skipped[rel]["reason"] == reason, skipped[rel]
            assert skipped[rel]["message"]
    for s in skipped.values():
        if s["reason"] in ("silent", "clipping", "low_bandwidth", "too_short", "near_duplicate"):
            assert s["value"] is not None, s
            assert s["threshold"] is not None, s
    assert report["songs_used"] == sum(1 for r in expect.values() if r is None)


def test_output_is_a_dataset_fit_reads(messy):
    _, out, _, _, report = messy
    entries = load_dataset_entries(out)
    assert len(entries) == report["clips_out"] > 0
    assert {e.split for e in entries} <= {"train", "valid"}
    manifest = read_manifest(out / MANIFEST_NAME)
    assert all(e.split in ("train", "valid") for e in manifest)
    songs: dict[str, set[str]] = {}
    for e in manifest:
        songs.setdefault(e.song_id, set()).add(e.split)
        info = sf.info(str(out / e.path))
        assert info.samplerate == 32000
        assert info.channels == 1
        assert e.sample_rate == 32000
        assert e.channels == 1
        assert abs(info.frames / info.samplerate - e.duration) < 1e-3
        assert 10.0 <= e.duration <= 30.0
        cap = Caption.load(out / Path(e.path).with_suffix(".json"))
        assert cap.song_id == e.song_id
        assert cap.chunk_index is not None
        assert cap.offset_s is not None
        assert cap.description
    assert all(len(s) == 1 for s in songs.values()), "a song is split across train and valid"
    assert len(songs) == report["songs_used"]


def test_clip_content_matches_source(messy):
    """Clip k of a song is the song's audio from offset_s on, resampled to 32 kHz mono."""
    src, out, _, _, _ = messy
    from musiclit.data.audio import read_audio

    song = read_audio(src / "albums" / "b" / "mono48k.flac", 32000, 1)[0]
    clips = sorted((out / "clips").glob("mono48k-*/*.wav"))
    assert len(clips) == 1  # 35 s: one 30 s clip, the 5 s tail is dropped
    cap = Caption.load(clips[0].with_suffix(".json"))
    assert cap.chunk_index == 0
    assert cap.offset_s == 0.0
    clip, _ = sf.read(str(clips[0]), dtype="float32")
    n = min(clip.size, song.size)
    corr = np.corrcoef(clip[1000 : n - 1000], song[1000 : n - 1000])[0, 1]
    assert corr > 0.999


def test_labels_and_captions(messy):
    _, out, _, _, report = messy
    by_song = {c["song"]: c for c in report["captions"]}
    # the user's description (good_a.txt) wins; the exact copy elsewhere is the one dropped
    assert by_song["good_a.wav"]["description"] == "dreamy synthwave with a pulsing bass"
    assert by_song["good_a.wav"]["source"] == "user"
    cap = Caption.load(next((out / "clips").glob("good-a-*/*_0000.json")))
    assert cap.title == "Night Drive"
    assert cap.artist == "The Synths"
    assert cap.genre == "Synthwave"
    assert cap.key == "A minor"
    assert abs(cap.bpm - 100) / 100 < 0.04
    long_cap = Caption.load(next((out / "clips").glob("long-*/*_0000.json")))
    assert abs(long_cap.bpm - 60) / 60 < 0.04, long_cap  # slow song: no double-tempo error
    assert long_cap.key == "E minor"
    assert "60 bpm" in long_cap.description
    assert "E minor" in long_cap.description
    assert 0 <= long_cap.extra["bpm_confidence"] <= 1
    labels = report["labels"]
    assert sum(labels["keys"].values()) == report["songs_used"]
    assert labels["genres"] == {"Synthwave": 1}
    assert (out / "report.txt").read_text().count("skipped") >= 1
    assert json.loads((out / "report.json").read_text())["clips_out"] == report["clips_out"]


def test_rerun_resumes_and_settings_redo_only_what_they_affect(messy, tmp_path):
    src, out0, _, _, first = messy
    out = tmp_path / "ds"
    shutil.copytree(out0, out)
    base = PrepareConfig(input=src, output=out, workers=1, progress=False)
    clip_mtimes = {p: p.stat().st_mtime_ns for p in (out / "clips").rglob("*.wav")}
    again = run_prepare(base)
    assert again["resume"]["analysed"] == 0
    assert again["resume"]["songs_chunked"] == 0
    assert again["clips_out"] == first["clips_out"]
    assert {p: p.stat().st_mtime_ns for p in (out / "clips").rglob("*.wav")} == clip_mtimes
    # a hand-edited description survives re-runs
    edited = next((out / "clips").glob("long-*/*_0001.json"))
    cap = Caption.load(edited)
    cap.description = "my own words"
    cap.save(edited)
    # a new template: captions change, no audio is touched and nothing is re-analysed
    tmpl = PrepareConfig(input=src, output=out, workers=1, progress=False, caption_template="[{key} ]tune")
    rep = run_prepare(tmpl)
    assert rep["resume"]["analysed"] == 0
    assert rep["resume"]["songs_chunked"] == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "clips").rglob("*.wav")} == clip_mtimes
    assert Caption.load(next((out / "clips").glob("long-*/*_0000.json"))).description == "E minor tune"
    assert Caption.load(edited).description == "my own words"
    # a new segment length: clips are redone from the cached analysis
    seg = PrepareConfig(input=src, output=out, workers=1, progress=False, segment=20.0, min_tail=5.0)
    rep = run_prepare(seg)
    assert rep["resume"]["analysed"] == 0
    assert rep["resume"]["songs_chunked"] == rep["songs_used"]
    durations = [e.duration for e in read_manifest(out / MANIFEST_NAME)]
    assert max(durations) == pytest.approx(20.0)
    assert min(durations) >= 5.0
    assert load_dataset_entries(out)


def test_dry_run_writes_nothing(messy, tmp_path, capsys):
    src, _, _, _, _ = messy
    out = tmp_path / "dry"
    rep = run_prepare(PrepareConfig(input=src, output=out, workers=1, progress=False, dry_run=True), log=print)
    assert not out.exists()
    printed = capsys.readouterr().out
    assert "dreamy synthwave with a pulsing bass" in printed
    assert rep["clips_out"] == 0
    assert rep["songs_used"] > 0


def test_nothing_usable_exits_nonzero(tmp_path):
    from musiclit.__main__ import main

    src = tmp_path / "src"
    src.mkdir()
    (src / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    write(src / "silence.flac", np.zeros((1, 32000 * 20), dtype=np.float32), 32000, "FLAC")
    assert main(["prepare", "--input", str(src), "--output", str(tmp_path / "out"), "--workers", "1"]) == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {s["reason"] for s in report["skipped"]} == {"undecodable", "silent"}
    # partial success is a success
    write(src / "ok.wav", synth_song(SongSpec(120, 0, "major", 12)), 44100, "WAV")
    assert main(["prepare", "--input", str(src), "--output", str(tmp_path / "out"), "--workers", "1"]) == 0


def test_output_inside_input_is_refused(tmp_path):
    from musiclit.__main__ import main

    (tmp_path / "a.wav").write_bytes(b"")
    assert main(["prepare", "--input", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_fit_trains_on_the_prepared_dataset(messy, tiny_model_dir, tmp_path):
    """The output of prepare is a dataset fit trains on, with no further step."""
    _, out, _, _, _ = messy
    run = tmp_path / "run"
    tiny_fit(tiny_model_dir, out, run, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1")
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_a_tempo_marking_in_the_file_name_sets_the_level_and_the_flag_turns_it_off(tmp_path, capsys):
    """A 120 BPM song named "adagio": the audio alone says 120; the marking (40-80 BPM) asks for the level
    inside its range, 60, and nothing in even beats forbids it. ``--no-tempo-markings`` gives the audio's answer."""
    from musiclit.__main__ import main

    src = tmp_path / "in"
    src.mkdir()
    write(src / "second_movement_adagio.wav", synth_song(SongSpec(120, 7, "major", 20.0, seed=3), 44100, 2), 44100)
    runs = {}
    for name, extra in (("marked", []), ("audio", ["--no-tempo-markings"])):
        out = tmp_path / name
        args = ["prepare", "--input", str(src), "--output", str(out), "--workers", "1", "--segment", "10"]
        assert main([*args, "--min-tail", "5", "--no-progress", *extra]) == 0
        runs[name] = (json.loads((out / "report.json").read_text())["labels"]["tempo"][0], out)
    audio, _ = runs["audio"]
    marked, out = runs["marked"]
    assert abs(audio["bpm"] - 120) / 120 < 0.04 and audio["marking"] is None and audio["level_from"] == "accents"
    assert marked["bpm_raw"] == audio["bpm_raw"]
    assert abs(marked["bpm"] - audio["bpm"] / 2) < 0.1 and 40 <= marked["bpm"] <= 80
    assert (marked["marking"], marked["level_from"], marked["octave"]) == ("adagio", "marking", "halved")
    assert "by the marking 'adagio'" in (out / "report.txt").read_text()
    cap = Caption.load(next((out / "clips").glob("*/*_0000.json")))
    assert cap.bpm == marked["bpm"]
    # a rename that keeps the marking keeps the analysis; one that drops it labels the song again
    (src / "second_movement_adagio.wav").rename(src / "II_adagio.wav")
    again = run_prepare(PrepareConfig(input=src, output=out, workers=1, progress=False))
    assert again["resume"]["analysed"] == 0 and again["labels"]["tempo"][0]["bpm"] == marked["bpm"]
    (src / "II_adagio.wav").rename(src / "II.wav")
    again = run_prepare(PrepareConfig(input=src, output=out, workers=1, progress=False))
    assert again["resume"]["analysed"] == 1 and again["labels"]["tempo"][0]["bpm"] == audio["bpm"]
