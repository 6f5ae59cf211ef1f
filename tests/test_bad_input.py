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
