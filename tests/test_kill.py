"""SIGKILL a `fit` anywhere, including inside checkpoint and adapter writes: resume always finds a complete
checkpoint, and the resumed run ends with exactly the adapter of an uninterrupted run (tiny model, fp32, CPU).

Kill points are deterministic where timing cannot hit them: ``MUSICLIT_CRASH_AT`` (musiclit/io.py
``crash_point``) kills the process from inside the write path, with the new file complete in its temporary
name but not yet renamed, or (adapter folder) between moving the old folder aside and renaming the new one.
The rest are SIGKILLs at random moments (seeded).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_run import fit_args

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 20
KILLS = 22


def _fit(model_dir, data_dir, run: Path, resume: bool, crash_at: str | None = None, kill_after: float | None = None):
    """Run `fit` as a subprocess; returns its exit code (-9 when killed)."""
    args = fit_args(model_dir, data_dir, run, "--trainer.max_steps", str(MAX_STEPS), "--trainer.precision", "32-true",
                    "--trainer.logger", "false", "--checkpoint.every_n_train_steps", "1",
                    "--adapter.every_checkpoint", "true", "--seed_everything", "7", "--data.batch_size", "2",
                    "--trainer.limit_val_batches", "0")  # fmt: skip
    if resume:
        args += ["--ckpt_path", "last"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MUSICLIT_CRASH_AT": crash_at or ""}
    proc = subprocess.Popen([sys.executable, "-m", "musiclit", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        if kill_after is not None:
            try:
                proc.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"fit failed ({proc.returncode}):\n{err[-3000:]}")
    return proc.returncode


def _check_complete(run: Path) -> int | None:
    """Assert that last.ckpt (when there is one) and the adapter are complete; returns the checkpoint's step."""
    last = run / "checkpoints" / "last.ckpt"
    step = None
    if last.exists():
        ckpt = torch.load(last, map_location="cpu", weights_only=True)  # a truncated file raises here
        assert {"state_dict", "global_step", "optimizer_states", "loops"} <= set(ckpt), sorted(ckpt)
        step = int(ckpt["global_step"])
    adapter = run / "adapter"
    if adapter.exists():
        from safetensors.torch import load_file

        json.loads((adapter / "adapter_config.json").read_text())
        assert load_file(str(adapter / "adapter_model.safetensors"))
    return step


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def killed_runs(tiny_model_dir, tiny_dataset, tmp_path_factory):
    """An uninterrupted run, and the same run killed KILLS times and resumed with --ckpt_path last each time."""
    base = tmp_path_factory.mktemp("kill")
    ref = base / "reference"
    assert _fit(tiny_model_dir, tiny_dataset, ref, resume=False) == 0
    rng = random.Random(13)
    plan = ["written:last.ckpt:2", "swapping:adapter:2", "written:adapter:2", "written:last.ckpt:3"] * 4 + [
        None
    ] * 6  # fmt: skip  (None: a SIGKILL at a random moment)
    rng.shuffle(plan)
    run = base / "killed"
    log = []
    for spec in plan:
        resume = (run / "checkpoints" / "last.ckpt").exists()
        code = _fit(tiny_model_dir, tiny_dataset, run, resume, crash_at=spec,
                    kill_after=None if spec else rng.uniform(2.0, 20.0))  # fmt: skip
        step = _check_complete(run)
        log.append((spec or "random", code, step))
        if code == 0:
            break
    while True:  # finish the run
        code = _fit(tiny_model_dir, tiny_dataset, run, (run / "checkpoints" / "last.ckpt").exists())
        if code == 0:
            break
    return ref, run, log


@pytest.mark.slow
def test_a_killed_fit_always_resumes_from_a_complete_checkpoint(killed_runs):
    _, run, log = killed_runs
    kills = [entry for entry in log if entry[1] == -signal.SIGKILL]
    print("kill log (point, exit code, step of last.ckpt):", *log, sep="\n  ")
    assert len(kills) >= 20, log
    assert sum(1 for k in kills if k[0] != "random") >= 14  # inside checkpoint / adapter writes
    steps = [s for _, _, s in log if s is not None]
    assert steps == sorted(steps), "a resume went backwards"
    assert _check_complete(run) == MAX_STEPS
    leftovers = [p.name for p in run.rglob("*") if p.name.endswith(".tmp") or ".partial-" in p.name]
    # temporary files of killed writes may remain (hidden, never read): they must never carry a final name
    assert all(name.startswith(".") for name in leftovers), leftovers


@pytest.mark.slow
def test_a_killed_and_resumed_fit_ends_with_the_adapter_of_an_uninterrupted_run(killed_runs):
    ref, run, _ = killed_runs
    a, b = _adapter(ref), _adapter(run)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)


def _tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
            and p.name not in skip}  # fmt: skip


def _prepare(src: Path, out: Path, crash_at: str = "") -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MUSICLIT_CRASH_AT": crash_at}
    args = ["prepare", "--input", str(src), "--output", str(out), "--segment", "4", "--min-tail", "2",
            "--workers", "0", "--no-progress", "--no-labels"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "musiclit", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-3000:]
    return proc.returncode


@pytest.mark.slow
def test_a_killed_prepare_reruns_to_the_same_dataset_file_by_file(tmp_path):
    """Kill `prepare` at its 1st, 2nd, ... atomic write (every clip, caption, state, manifest and report
    write is one), re-running over the same output each time: the result equals an uninterrupted run's."""
    from prep_audio import SongSpec, synth_song, write

    src = tmp_path / "songs"
    for i in range(3):
        write(src / f"song{i}.wav", synth_song(SongSpec(90 + 20 * i, i, "major", 10, seed=i), 32000, 1), 32000)
    ref = tmp_path / "ref"
    assert _prepare(src, ref) == 0
    out = tmp_path / "out"
    kills = 0
    for n in (1, 2, 3, 5, 8, 13):
        kills += _prepare(src, out, f"written:*:{n}") == -signal.SIGKILL
        for clip in out.rglob("*.wav"):  # whatever is under a final name is complete
            assert clip.stat().st_size > 44
    assert kills >= 5
    assert _prepare(src, out) == 0
    skip = ("report.json", "report.txt")  # they hold timings and the resume counts
    assert _tree(out, skip) == _tree(ref, skip)
    assert json.loads((out / "report.json").read_text())["captions"] == json.loads(
        (ref / "report.json").read_text())["captions"]  # fmt: skip


@pytest.mark.slow
def test_a_killed_cache_reruns_to_the_same_codes(tiny_model_dir, tiny_dataset, tmp_path):
    """Kill `cache` while it commits its shard and at a random moment; a re-run serves the same codes."""
    import numpy as np

    from musiclit.train.cli import build_token_cache

    def args(cache_dir: Path) -> list[str]:
        return fit_args(tiny_model_dir, tiny_dataset, tmp_path / "run", "--data.cache_dir", str(cache_dir))[1:]

    ref = build_token_cache(args(tmp_path / "ref"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    kills = 0
    for crash_at, after in (("written:*:1", None), ("", 25.0), ("written:*:1", None)):
        proc = subprocess.Popen([sys.executable, "-m", "musiclit", "cache", *args(tmp_path / "c")], cwd=ROOT,
                                env={**env, "MUSICLIT_CRASH_AT": crash_at}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            proc.wait(timeout=after or 600)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        kills += proc.returncode == -signal.SIGKILL
    assert kills >= 2
    again = build_token_cache(args(tmp_path / "c"))
    assert set(again.entries) == set(ref.entries) and len(ref.entries) > 0
    for key in ref.entries:
        np.testing.assert_array_equal(again.get(key), ref.get(key))
