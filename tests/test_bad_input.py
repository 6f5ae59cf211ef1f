"""A generated corpus of bad input (tests/bad_input.py) through prepare, cache, fit, generate and import.

Each kind gets one clear message naming the file and the problem; prepare goes on; fit skips or refuses up
front; nothing hangs (every command runs under a timeout) and no traceback reaches the user.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from bad_input import make_source_corpus

from musiclit.__main__ import main

TIMEOUT = 600
ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "musiclit", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)  # fmt: skip


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The bad-input song folder, prepared once by the command line (a subprocess, under a timeout)."""
    src = tmp_path_factory.mktemp("bad-songs")
    kinds = make_source_corpus(src)
    out = tmp_path_factory.mktemp("bad-dataset") / "ds"
    proc = _run("prepare", "--input", str(src), "--output", str(out), "--segment", "10", "--min-tail", "5",
                "--workers", "2", "--no-progress")  # fmt: skip
    return src, out, kinds, proc


def test_prepare_goes_on_and_names_every_bad_file(corpus):
    _, out, kinds, proc = corpus
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    report = json.loads((out / "report.json").read_text())
    skipped = {s["path"]: s for s in report["skipped"]}
    used = {c["song"] for c in report["captions"]}
    for kind, (rel, reason) in kinds.items():
        if reason is None:
            if rel.startswith("sub/"):
                continue  # a folder link: nothing to use, nothing to report, and no endless walk
            assert rel in used, f"{kind}: {rel} should have been used ({skipped.get(rel)})"
        else:
            assert rel in skipped, f"{kind}: {rel} not reported"
            assert skipped[rel]["reason"] == reason, (kind, skipped[rel])
            assert skipped[rel]["message"], kind
    text = (out / "report.txt").read_text(encoding="utf-8")
    assert "caf\\xe9_latin1.wav" in text and "fifo.wav" in text
    # sidecar problems are warnings naming the file; the song is still used
    warnings = "\n".join(report["warnings"])
    for name, problem in (("third.json", "malformed JSON"), ("typed.json", "must be int or float"),
                          ("absurd.json", "finite number >= 0")):  # fmt: skip
        assert name in warnings and problem in warnings, warnings
    # NaN/Inf samples never reach a clip
    for clip in out.rglob("*.wav"):
        assert np.isfinite(sf.read(str(clip), dtype="float32")[0]).all(), clip


def test_the_corpus_has_at_least_30_kinds(corpus):
    from bad_input import DATASET_KINDS

    _, _, kinds, _ = corpus
    assert len(kinds) + len(DATASET_KINDS) >= 30, len(kinds) + len(DATASET_KINDS)


def test_prepare_refuses_an_output_inside_the_input(corpus, capsys):
    src, _, _, _ = corpus
    assert main(["prepare", "--input", str(src), "--output", str(src / "dataset")]) == 2
    err = capsys.readouterr().err
    assert "must not be inside the input folder" in err and str(src) in err


def test_prepare_reports_an_unreadable_file_and_goes_on(tmp_path, monkeypatch):
    """A file that cannot be opened (root ignores permission bits here, so the open itself fails)."""
    import builtins

    from prep_audio import SongSpec, synth_song, write

    from musiclit.prep.config import PrepareConfig
    from musiclit.prep.pipeline import run_prepare

    src = tmp_path / "songs"
    write(src / "ok.wav", synth_song(SongSpec(100, 0, "major", 12, seed=1), 32000, 1), 32000, "WAV")
    write(src / "locked.wav", synth_song(SongSpec(120, 3, "minor", 12, seed=2), 32000, 1), 32000, "WAV")
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if str(file).endswith("locked.wav"):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    report = run_prepare(PrepareConfig(input=src, output=tmp_path / "out", segment=5, min_tail=2, workers=0,
                                       progress=False, labels=False))  # fmt: skip
    skipped = {s["path"]: s for s in report["skipped"]}
    assert skipped["locked.wav"]["reason"] == "unreadable" and "Permission denied" in skipped["locked.wav"]["message"]
    assert report["songs_used"] == 1


def test_prepare_on_a_full_disk_stops_with_the_file_and_leaves_no_half_clip(tmp_path, monkeypatch):
    """ENOSPC from the OS while a clip is written: a clear error naming the clip; no partial file left."""
    from prep_audio import SongSpec, synth_song, write

    from musiclit.errors import MusiclitError
    from musiclit.prep.config import PrepareConfig
    from musiclit.prep.pipeline import run_prepare

    src = tmp_path / "songs"
    write(src / "ok.wav", synth_song(SongSpec(100, 0, "major", 12, seed=1), 32000, 1), 32000, "WAV")
    import musiclit.io as mio

    real = mio.fsync_file

    def full(path):
        if str(path).endswith(".wav.tmp") or ".wav." in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path)

    monkeypatch.setattr(mio, "fsync_file", full)
    with pytest.raises((MusiclitError, OSError)) as err:
        run_prepare(PrepareConfig(input=src, output=tmp_path / "out", segment=5, min_tail=2, workers=0,
                                  progress=False, labels=False))  # fmt: skip
    assert "No space left on device" in str(err.value)
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    assert not leftovers and not list((tmp_path / "out").rglob("*.wav"))


def _mutated_dataset(src: Path, dst: Path) -> dict[str, str]:
    """A copy of a good dataset with broken clips, captions and manifest lines; ``clip -> expected message``."""
    import shutil

    from musiclit.data.manifest import MANIFEST_NAME

    shutil.copytree(src, dst)
    lines = (dst / MANIFEST_NAME).read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    train = [r for r in rows if r["split"] == "train"]
    expect = {}
    (dst / train[0]["path"]).with_suffix(".json").unlink()
    expect[train[0]["path"][:-4] + ".json"] = "caption JSON missing"
    (dst / train[1]["path"]).with_suffix(".json").write_text("{not json")
    expect[train[1]["path"][:-4] + ".json"] = "malformed JSON"
    (dst / train[2]["path"]).with_suffix(".json").write_text('{"bpm": "fast", "description": 5}')
    expect[train[2]["path"][:-4] + ".json"] = "must be"
    absurd = json.loads((dst / train[3]["path"]).with_suffix(".json").read_text())
    absurd.update({"bpm": -5, "key": "H# lydian", "description": "la " * 350_000})
    (dst / train[3]["path"]).with_suffix(".json").write_text(json.dumps(absurd))
    expect[train[3]["path"][:-4] + ".json"] = "bpm"
    (dst / train[4]["path"]).write_bytes(b"")
    expect[train[4]["path"]] = "empty file"
    rows.append({**train[5], "path": "clips/not-there.wav"})
    expect["clips/not-there.wav"] = "missing"
    rows.append(dict(train[6]))
    expect[train[6]["path"] + ": listed more than once"] = "listed more than once"
    rows.append({**train[6], "path": "/elsewhere/other-dataset/clip.wav"})
    expect["/elsewhere/other-dataset/clip.wav"] = "outside the dataset folder"
    (dst / MANIFEST_NAME).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return expect


def test_fit_skips_bad_clips_and_says_so(tiny_model_dir, tiny_dataset, tmp_path, capsys):
    from tiny_run import tiny_fit

    data = tmp_path / "data"
    expect = _mutated_dataset(tiny_dataset, data)
    # a clip whose header is fine but whose samples are NaN: found only when read, then skipped
    nan_clip = next(p for p in sorted((data / "clips").rglob("*.wav")) if p.with_suffix(".json").is_file()
                    and "lydian" not in p.with_suffix(".json").read_text()
                    and p.stat().st_size > 0)  # fmt: skip
    wav, sr = sf.read(str(nan_clip), dtype="float32", always_2d=True)
    wav[:] = np.nan
    sf.write(str(nan_clip), wav, sr, subtype="FLOAT")
    cli = tiny_fit(tiny_model_dir, data, tmp_path / "run", "--trainer.max_steps", "3", "--trainer.logger", "false",
                   "--trainer.precision", "32-true", "--data.batch_size", "1")  # fmt: skip
    assert cli.trainer.global_step == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"skipping {len(expect)} of" in err, err[-2000:]
    for needle, problem in expect.items():
        line = next((x for x in err.splitlines() if needle in x), None)
        assert line is not None and problem in line, (needle, problem, err[-3000:])


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if a model is loaded (errors about input must come first)."""
    import musiclit.model.musicgen as mg
    import musiclit.train.module  # noqa: F401 - imported before the patch, so that it binds the real function

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(mg, "load_musicgen", boom)
    monkeypatch.setattr("musiclit.train.module.load_musicgen", boom)


@pytest.mark.parametrize("kind", ["missing", "no audio", "a file", "empty manifest"])
def test_fit_and_cache_refuse_a_bad_data_dir_before_loading_a_model(kind, tmp_path, capsys, no_model_load):
    from tiny_run import fit_args

    data = tmp_path / "data"
    if kind == "no audio":
        data.mkdir()
        (data / "notes.txt").write_text("no songs here")
    elif kind == "a file":
        data.write_text("x")
    elif kind == "empty manifest":
        data.mkdir()
        (data / "manifest.jsonl").write_text("")
        (data / "x.wav").write_bytes(b"")
    args = fit_args("no-such-model", data, tmp_path / "run", "--trainer.max_steps", "1")
    for verb in ("fit", "cache"):
        assert main([verb, *args[1:]]) == 2
        err = capsys.readouterr().err
        line = next(x for x in err.splitlines() if x.startswith(f"musiclit {verb}: error:"))  # one line
        assert str(data) in line, err
        assert ("no manifest.jsonl and no audio" if kind == "no audio" else
                "lists no clips" if kind == "empty manifest" else "dataset folder not found") in line  # fmt: skip


def test_a_one_song_dataset_trains_without_validation(tiny_model_dir, tiny_dataset, tmp_path, capsys):
    import shutil

    from tiny_run import tiny_fit

    from musiclit.data.manifest import MANIFEST_NAME

    data = tmp_path / "one"
    shutil.copytree(tiny_dataset, data)
    rows = [json.loads(x) for x in (data / MANIFEST_NAME).read_text().splitlines()]
    song = rows[0]["song_id"]
    keep = [{**r, "split": None} for r in rows if r["song_id"] == song]
    (data / MANIFEST_NAME).write_text("".join(json.dumps(r) + "\n" for r in keep))
    cli = tiny_fit(tiny_model_dir, data, tmp_path / "run", "--trainer.max_steps", "2", "--trainer.logger", "false")
    assert cli.trainer.global_step == 2
    assert "one song: no validation split is possible" in capsys.readouterr().err


def test_generate_prompt_audio_names_each_bad_file_before_loading_a_model(corpus, tmp_path, capsys, no_model_load):
    src, _, kinds, _ = corpus
    bad = ["zero-byte file", "truncated WAV (header only)", "truncated FLAC", "truncated MP3", "a text file named .mp3",
           "WAV with NaN/Inf samples (prepare zeroes them)", "unreadable: a FIFO named .wav (opening it would block)",
           "a folder named .flac", "broken symlink", "symlink loop (files)"]  # fmt: skip
    for kind in bad:
        path = src / kinds[kind][0]
        assert main(["generate", "--model", "no-such-model", "--prompt", "x", "--prompt-audio", str(path),
                     "--out", str(tmp_path / "out")]) == 2, kind  # fmt: skip
        err = capsys.readouterr().err
        assert str(path) in err and "Traceback" not in err, (kind, err)
    assert not (tmp_path / "out").exists()


def test_import_names_the_problem_of_a_bad_audiocraft_folder(tmp_path, capsys):
    cases = {"no state_dict.bin": None, "zero-byte": b"", "truncated": b"PK\x03\x04" + b"\x00" * 20,
             "text": b"hello, not a checkpoint"}  # fmt: skip
    for name, data in cases.items():
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        if data is not None:
            (folder / "state_dict.bin").write_bytes(data)
        assert main(["import", str(folder), "--base", "no-such-model", "--out", str(tmp_path / "o")]) == 2, name
        err = capsys.readouterr().err
        assert str(folder) in err and "Traceback" not in err, (name, err)


def _enospc_on(monkeypatch, suffix: str) -> None:
    """Fail the sync of any file whose name contains ``suffix`` with ENOSPC (a full disk at the OS call)."""
    import musiclit.io as mio

    real = mio.fsync_file

    def full(path):
        if suffix in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path)

    monkeypatch.setattr(mio, "fsync_file", full)


def test_a_full_disk_while_a_checkpoint_is_written_keeps_the_previous_one(tmp_path, monkeypatch):
    from musiclit.train.checkpointing import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch_ones()}, "global_step": 1}, path)
    _enospc_on(monkeypatch, "last.ckpt")
    with pytest.raises(OSError, match="No space left") as err:
        io.save_checkpoint({"state_dict": {"w": torch_ones() * 2}, "global_step": 2}, path)
    assert "last.ckpt" in err.value.filename
    assert io.load_checkpoint(path)["global_step"] == 1  # the previous checkpoint, complete
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def torch_ones():
    import torch

    return torch.ones(3)


def test_a_full_disk_is_one_line_on_the_command_line(tmp_path, monkeypatch, capsys):
    from prep_audio import SongSpec, synth_song, write

    src = tmp_path / "songs"
    write(src / "ok.wav", synth_song(SongSpec(100, 0, "major", 12, seed=1), 32000, 1), 32000, "WAV")
    _enospc_on(monkeypatch, ".wav.")
    code = main(["prepare", "--input", str(src), "--output", str(tmp_path / "out"), "--segment", "5",
                 "--min-tail", "2", "--workers", "0", "--no-progress", "--no-labels"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "error: the disk is full while writing" in err and "Traceback" not in err, err


def test_a_clip_with_nan_samples_is_masked_out_and_said_once(tiny_dataset, tmp_path, capsys):
    import shutil

    from musiclit.data.datasets import ClipDataset
    from musiclit.data.manifest import load_dataset_entries

    data = tmp_path / "d"
    shutil.copytree(tiny_dataset, data)
    entries = load_dataset_entries(data)
    bad = data / entries[0].path
    wav, sr = sf.read(str(bad), dtype="float32", always_2d=True)
    wav[100:200] = np.inf
    sf.write(str(bad), wav, sr, subtype="FLOAT")
    ds = ClipDataset(data, entries, 32000, 1, 2.0, random_crop=False)
    for _ in range(2):
        item = ds[0]
        assert not item["audio_mask"].any() and not item["audio"].any()
    assert ds[1]["audio_mask"].any()  # the other clips are read as usual
    err = capsys.readouterr().err
    assert err.count("musiclit: skipping clip") == 1 and str(bad) in err and "NaN or infinite" in err
