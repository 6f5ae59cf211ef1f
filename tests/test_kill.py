"""SIGKILL a `fit` anywhere, including inside checkpoint and adapter writes: resume always finds a complete
checkpoint, and the resumed run ends with exactly the adapter of an uninterrupted run (tiny model, fp32, CPU).

Kill points are deterministic where timing cannot hit them: ``MUSICLIT_CRASH_AT`` (musiclit/io.py
``crash_point``) kills the process from inside the write path, with the new file complete in its temporary
name but not yet renamed, or (adapter folder) between moving the old folder aside and renaming the new one.
The rest are SIGKILLs at random moments (seeded), taken relative to the run's own progress (a random time
after its k-th new ``last.ckpt``, or during start-up), never to the wall clock: a fast machine finishes the
tiny run in seconds, a loaded one takes minutes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tiny_run import fit_args

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 40  # room for 22 kills, each of which lets the run advance a step or three
KILLS = 22


def _wait_or_kill(proc: subprocess.Popen, kill: Callable[[], bool] | None) -> None:
    """Wait for ``proc``; SIGKILL it as soon as ``kill()`` (polled every 2 ms while it runs) says so."""
    if kill is not None:
        while proc.poll() is None:
            if kill():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    proc.wait(timeout=600)


def _after_new_files(folder: Path, pattern: str, count: int, delay: float) -> Callable[[], bool]:
    """True ``delay`` seconds after ``count`` new files (new inode or modification time) matching the glob
    ``pattern`` have appeared in ``folder``: ``last.ckpt`` is renamed into place at every checkpoint, so this is
    a random moment inside a step of a given number, whatever the machine's speed."""

    def ident(path: Path) -> tuple[int, int]:  # an inode number alone is reused by the next rename
        st = path.stat()
        return st.st_ino, st.st_mtime_ns

    seen: set[tuple[int, int]] = {ident(p) for p in folder.glob(pattern) if p.exists()}
    found: list[float] = []

    def check() -> bool:
        if len(found) < count:
            for p in folder.glob(pattern):
                try:
                    key = ident(p)
                except FileNotFoundError:
                    continue
                if key not in seen:
                    seen.add(key)
                    found.append(time.monotonic())
            return False
        return time.monotonic() - found[count - 1] >= delay

    return check


def _after(seconds: float) -> Callable[[], bool]:
    start = time.monotonic()
    return lambda: time.monotonic() - start >= seconds


def _fit(model_dir, data_dir, run: Path, resume: bool, crash_at: str | None = None,
         kill: Callable[[], bool] | None = None):  # fmt: skip
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
        _wait_or_kill(proc, kill)
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
    for i, spec in enumerate(plan):
        resume = (run / "checkpoints" / "last.ckpt").exists()
        kill = None
        if spec is None:  # a random moment: in start-up (the first one), or inside the 1st-3rd step it trains
            kill = (
                _after(rng.uniform(0.2, 1.0))
                if i == plan.index(None)
                else _after_new_files(run / "checkpoints", "last.ckpt", rng.randint(1, 3), rng.uniform(0.0, 0.1))
            )
        code = _fit(tiny_model_dir, tiny_dataset, run, resume, crash_at=spec, kill=kill)
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
    # the killed writes' temporaries were removed by the runs after them (their writers were gone)
    assert leftovers == [], leftovers


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
    cache = tmp_path / "c"
    codes = []
    # killed (deterministic) while codec.json is written, after the 2nd clip of an open shard, while the
    # shard's index is committed (codec.json exists by then); then at a random moment after a shard appears
    for crash_at, random_kill in (("written:codec.json:1", False), ("encoded:*:2", False), ("written:*:1", False),
                                  ("", True)):  # fmt: skip
        proc = subprocess.Popen([sys.executable, "-m", "musiclit", "cache", *args(cache)], cwd=ROOT,
                                env={**env, "MUSICLIT_CRASH_AT": crash_at}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        kill = _after_new_files(cache, "*/shard-*.bin", 1, random.Random(5).uniform(0, 0.01))
        try:
            _wait_or_kill(proc, kill if random_kill else None)
        finally:
            if proc.poll() is None:
                proc.kill()
        codes.append(proc.returncode)
    assert codes[:3] == [-signal.SIGKILL] * 3, codes  # the random one may finish first on a fast machine
    assert codes[3] in (0, -signal.SIGKILL), codes
    again = build_token_cache(args(tmp_path / "c"))
    assert set(again.entries) == set(ref.entries) and len(ref.entries) > 0
    # the codes files of the killed runs' open shards went with the next run that opened a shard
    assert [p.name for p in cache.rglob("shard-*.bin") if not p.with_suffix(".jsonl").exists()] == []
    assert not list(cache.rglob("*.tmp"))
    for key in ref.entries:
        np.testing.assert_array_equal(again.get(key), ref.get(key))
