"""Every way a run can stop resumes to the same batches: the end of fit (max_steps), a mid-epoch checkpoint
after a crash, SIGTERM and Ctrl-C (SIGINT to the process group) sent to a real ``python -m musiclit fit``.

The data is a folder of mixed-length clips without a manifest (most 2.5-5.5 s, two of 42 s; segment 6 s,
batch 4; 18 training clips, so an epoch is 5 batches and the last one holds 2). Each step's loss, clips,
crop offsets and captions are compared with an uninterrupted run of the same length; the schedule's
``total_steps`` is fixed so that both runs follow the same learning rates.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_run import CrashAt, StepRecorder, fit_args, read_steps, tiny_fit, write_mixed_dataset

ROOT = Path(__file__).resolve().parent.parent
TOTAL = 8  # steps of every run: 1.6 epochs

# batch 4 x 6 s crops of mixed clips; the schedule's length is fixed (a stopped run and the uninterrupted
# run must follow the same learning rates); dropouts on so that the per-step seeds matter
MIXED = (
    "--data.segment_duration", "6",
    "--data.batch_size", "4",
    "--trainer.precision", "32-true",
    "--trainer.num_sanity_val_steps", "0",
    "--trainer.logger", "false",
    "--model.optimizer", "torch.optim.AdamW",
    "--model.optimizer.lr", "0.003",
    "--model.scheduler", "musiclit.train.optim.WarmupCosine",
    "--model.scheduler.warmup_steps", "2",
    "--model.scheduler.total_steps", str(TOTAL),
    "--model.lora.dropout", "0.1",
    "--seed_everything", "0",
)  # fmt: skip


def options(bucket: bool, workers: int, *extra: str) -> tuple[str, ...]:
    return (*MIXED, "--data.bucket_by_length", str(bucket).lower(), "--data.num_workers", str(workers), *extra)


@pytest.fixture(scope="module")
def mixed_dataset(tmp_path_factory):
    return write_mixed_dataset(tmp_path_factory.mktemp("mixed"))


@pytest.fixture(scope="module")
def straight(tiny_model_dir, mixed_dataset, tmp_path_factory):
    """The uninterrupted runs (bucketing on and off), computed once when a test asks for them."""
    runs = {}

    def get(bucket: bool) -> list[dict]:
        if bucket not in runs:
            recorder = StepRecorder()
            root = tmp_path_factory.mktemp(f"straight-{bucket}")
            tiny_fit(tiny_model_dir, mixed_dataset, root, *options(bucket, 0, "--trainer.max_steps", str(TOTAL)),
                     callbacks=[recorder])  # fmt: skip
            assert len(recorder.rows) == TOTAL
            runs[bucket] = recorder.rows
        return runs[bucket]

    return get


def assert_same_steps(got: list[dict], want: list[dict]) -> None:
    """Same clips, crops, captions and losses at every step (rows carry the global step after the step)."""
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want, strict=True):
        step = b["step"]
        assert a["index"] == b["index"], f"step {step}: trained on clips {a['index']}, uninterrupted {b['index']}"
        assert a["offset"] == b["offset"], f"step {step}: crops"
        assert a["captions"] == b["captions"], f"step {step}: captions"
        assert a["seed"] == b["seed"], f"step {step}: step seed"
        assert a["loss"] == b["loss"], f"step {step}: loss {a['loss']} vs {b['loss']}"


def resume(tiny_model_dir, data, root, bucket, workers, *extra):
    """The same command plus `--ckpt_path last` (and `max_steps` of the uninterrupted run)."""
    recorder = StepRecorder()
    tiny_fit(tiny_model_dir, data, root, *options(bucket, workers, "--trainer.max_steps", str(TOTAL), *extra),
             "--ckpt_path", "last", callbacks=[recorder])  # fmt: skip
    return recorder.rows


def test_mixed_dataset_has_ragged_epochs(tiny_model_dir, mixed_dataset, straight):
    """The fixture is what the tests claim: no manifest, 18 training clips of mixed length, 5 batches an epoch
    (one of 2 clips), and a long clip cropped at different places in different epochs."""
    from musiclit.data.manifest import load_dataset_entries

    entries = load_dataset_entries(mixed_dataset, 0.1, 0)
    assert not (mixed_dataset / "manifest.jsonl").exists()
    assert len([e for e in entries if e.split == "train"]) == 18
    assert sum(e.duration > 30 for e in entries) == 2 and sum(e.duration < 6 for e in entries) == 18
    for bucket in (True, False):
        rows = straight(bucket)
        epoch0 = rows[:5]
        assert sorted(len(r["index"]) for r in epoch0) == [2, 4, 4, 4, 4]
        assert len({i for r in epoch0 for i in r["index"]}) == 18
        crops: dict[int, set] = {}
        for r in rows:
            for i, o in zip(r["index"], r["offset"], strict=True):
                crops.setdefault(i, set()).add(o)
        assert any(len(v) > 1 for v in crops.values())


@pytest.mark.parametrize("stop", [3])
def test_resume_after_the_run_reached_max_steps(tiny_model_dir, mixed_dataset, straight, tmp_path, stop):
    """`max_steps=3`, then `--ckpt_path last` with `max_steps=8` == 8 steps in one go (a mid-epoch end)."""
    first = StepRecorder()
    tiny_fit(tiny_model_dir, mixed_dataset, tmp_path, *options(True, 0, "--trainer.max_steps", str(stop)),
             callbacks=[first])  # fmt: skip
    assert len(first.rows) == stop
    assert_same_steps(first.rows + resume(tiny_model_dir, mixed_dataset, tmp_path, True, 0), straight(True))


@pytest.mark.slow
@pytest.mark.parametrize(("bucket", "workers", "stop"), [(False, 1, 3), (True, 1, 5), (False, 0, 5)])
def test_resume_after_max_steps_matrix(tiny_model_dir, mixed_dataset, straight, tmp_path, bucket, workers, stop):
    """The end of fit mid-epoch (3) and exactly at the end of an epoch (5), bucketing on/off, 0 or 1 workers."""
    first = StepRecorder()
    tiny_fit(tiny_model_dir, mixed_dataset, tmp_path, *options(bucket, workers, "--trainer.max_steps", str(stop)),
             callbacks=[first])  # fmt: skip
    assert len(first.rows) == stop
    assert_same_steps(first.rows + resume(tiny_model_dir, mixed_dataset, tmp_path, bucket, workers), straight(bucket))


@pytest.mark.slow
@pytest.mark.parametrize(("bucket", "workers", "crash"), [(True, 1, 6), (False, 0, 2)])
def test_resume_from_a_mid_epoch_checkpoint_after_a_crash(
    tiny_model_dir, mixed_dataset, straight, tmp_path, bucket, workers, crash
):
    first, every = StepRecorder(), ("--checkpoint.every_n_train_steps", "1")
    with pytest.raises(RuntimeError, match="simulated crash"):
        tiny_fit(tiny_model_dir, mixed_dataset, tmp_path, *options(bucket, workers, "--trainer.max_steps", str(TOTAL),
                 *every), callbacks=[first, CrashAt(crash)])  # fmt: skip
    assert len(first.rows) == crash
    second = resume(tiny_model_dir, mixed_dataset, tmp_path, bucket, workers, *every)
    assert_same_steps(first.rows + second, straight(bucket))


def _subprocess_fit(model_dir, data, root, recorder_path, pause_at, *extra):
    config = Path(f"{recorder_path}.yaml")
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: tiny_run.StepRecorder\n"
        f"      init_args: {{path: '{recorder_path}', pause_at_step: {pause_at}}}\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    args = [sys.executable, "-m", "musiclit", *fit_args(model_dir, data, root, *extra, "--config", str(config)),
            "--allow-import", "tiny_run"]  # fmt: skip
    log = open(f"{recorder_path}.log", "w")  # noqa: SIM115 - closed by the caller after wait()
    # its own session: a signal to its process group reaches the loader workers too, like Ctrl-C in a terminal
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "to_group", "bucket", "workers"),
    [(signal.SIGTERM, False, True, 0), (signal.SIGINT, True, False, 1)],
    ids=["sigterm", "ctrl-c"],
)
def test_a_signal_writes_a_checkpoint_at_the_step_and_resumes_exactly(
    tiny_model_dir, mixed_dataset, straight, tmp_path, signum, to_group, bucket, workers
):
    """A real signal to `python -m musiclit fit` during step 4: it finishes the step, writes last.ckpt at
    step 4, exits with 128 + the signal number (no traceback), and `--ckpt_path last` continues exactly."""
    rec = tmp_path / "steps"
    proc, log = _subprocess_fit(tiny_model_dir, mixed_dataset, tmp_path / "run", rec, 3,
                                *options(bucket, workers, "--trainer.max_steps", str(TOTAL)))  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not Path(f"{rec}.paused").exists():
            assert proc.poll() is None, Path(f"{rec}.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never reached step 4"
            time.sleep(0.1)
        if to_group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        code = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    output = Path(f"{rec}.log").read_text()
    assert code == 128 + signum, output[-3000:]
    assert f"stopped by {signal.Signals(signum).name} after step 4" in output and "Traceback" not in output
    first = read_steps(rec)
    assert [r["step"] for r in first] == [1, 2, 3, 4]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4
    assert_same_steps(first + resume(tiny_model_dir, mixed_dataset, tmp_path / "run", bucket, workers),
                      straight(bucket))  # fmt: skip


def test_a_mid_epoch_resume_in_another_batch_layout_is_refused_with_the_way_out(
    tiny_model_dir, mixed_dataset, tmp_path
):
    """Stopped inside an epoch at batch 4, resumed at batch 3: refused, naming the layout that continues
    exactly; that layout then resumes (the step after the checkpoint's)."""
    from musiclit.errors import ConfigError

    every = ("--checkpoint.every_n_train_steps", "1")
    with pytest.raises(RuntimeError, match="simulated crash"):
        tiny_fit(tiny_model_dir, mixed_dataset, tmp_path, *options(False, 0, "--trainer.max_steps", "4", *every),
                 callbacks=[CrashAt(2)])  # fmt: skip
    with pytest.raises(ConfigError, match=r"last.ckpt: stopped inside epoch 0, after 2 of \d+ batches of "
                       r"data.batch_size 4 .*--data.batch_size 4"):  # fmt: skip
        tiny_fit(tiny_model_dir, mixed_dataset, tmp_path, *options(False, 0, "--trainer.max_steps", "4", *every),
                 "--data.batch_size", "3", "--ckpt_path", "last")  # fmt: skip
    recorder = StepRecorder()
    tiny_fit(tiny_model_dir, mixed_dataset, tmp_path, *options(False, 0, "--trainer.max_steps", "4", *every),
             "--ckpt_path", "last", callbacks=[recorder])  # fmt: skip
    assert [r["step"] for r in recorder.rows] == [3, 4]
