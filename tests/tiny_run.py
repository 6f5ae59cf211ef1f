"""The `fit` of a tiny model on a tiny dataset, shared by the test files (one home for its argument list)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def fit_args(model_dir: str | Path, data_dir: str | Path, root: str | Path, *extra: str) -> list[str]:
    """Arguments of ``python -m musiclit fit`` for a fast CPU run (2 s crops, no workers, no progress bar)."""
    return [
        "fit",
        "--model.pretrained", str(model_dir),
        "--data.data_dir", str(data_dir),
        "--data.segment_duration", "2",
        "--data.num_workers", "0",
        "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        *extra,
    ]  # fmt: skip


def tiny_fit(
    model_dir: str | Path, data_dir: str | Path, root: str | Path, *extra: str, callbacks: list[Any] | None = None
) -> Any:
    """Run ``fit`` in this process (extra arguments override the defaults); returns the LightningCLI."""
    from musiclit.train.cli import build_cli

    return build_cli(fit_args(model_dir, data_dir, root, *extra), trainer_defaults={"callbacks": callbacks or []})


def write_mixed_dataset(root: str | Path, n_short: int = 20, long_every: int = 9, seed: int = 0) -> Path:
    """A folder of clips WITHOUT a manifest, as a user drops it: most clips 2.5-5.5 s, every ``long_every``-th
    one 42 s; each with a caption JSON of its own (the description names the clip, so a batch's captions say
    which clips it trained on)."""
    import numpy as np

    from musiclit.data.audio import write_audio
    from musiclit.data.caption import Caption

    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(n_short):
        seconds = 42.0 if i % long_every == long_every - 1 else float(rng.uniform(2.5, 5.5))
        n = int(seconds * 32000)
        t = np.arange(n) / 32000
        audio = 0.3 * np.sin(2 * np.pi * (110 + 15 * i) * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.5 * t))
        audio = (audio + 0.05 * rng.standard_normal(n)).astype(np.float32)[None]
        write_audio(root / f"clip{i:02d}.wav", audio, 32000)
        Caption(description=f"clip number {i}", genre=["folk", "techno"][i % 2], bpm=90 + i, key="A minor",
                instruments=["guitar", "drums"]).save(root / f"clip{i:02d}.json")  # fmt: skip
    return root


try:
    from lightning.pytorch.callbacks import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object  # type: ignore[assignment,misc]


class StepRecorder(_Callback):
    """Records what every training step trained on: loss, clip indices, crop offsets, captions, step seed.

    Usable from a config (``trainer.callbacks``) in a subprocess: with ``path`` each step is appended to
    ``<path>.rank<r>.jsonl`` as it ends (a test can watch the file). With ``pause_at_step`` it waits at the
    start of that step (global step) until a stop has been requested (a signal arrived), so a test can send
    a real signal at a known point.
    """

    def __init__(self, path: str | None = None, pause_at_step: int = -1, pause_timeout: float = 120.0) -> None:
        self.path = path
        self.pause_at_step = pause_at_step
        self.pause_timeout = pause_timeout
        self.rows: list[dict[str, Any]] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        import time

        if trainer.global_step != self.pause_at_step:
            return
        if self.path:
            Path(f"{self.path}.paused").write_text(str(trainer.global_step))
        deadline = time.monotonic() + self.pause_timeout
        while time.monotonic() < deadline and not any(getattr(cb, "requested", None) for cb in trainer.callbacks):
            time.sleep(0.02)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        import json

        import torch

        row = {
            "step": trainer.global_step,
            "rank": trainer.global_rank,
            "loss": float(outputs["loss"] if isinstance(outputs, dict) else outputs),
            "index": [int(i) for i in batch["index"]],
            "offset": [round(float(o), 6) for o in batch["offset"]],
            "captions": list(batch["captions"]),
            "seed": torch.initial_seed(),
        }
        self.rows.append(row)
        if self.path:
            with open(f"{self.path}.rank{trainer.global_rank}.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")


def read_steps(path: str | Path, rank: int = 0) -> list[dict[str, Any]]:
    """The rows a :class:`StepRecorder` with ``path`` wrote for ``rank``."""
    import json

    file = Path(f"{path}.rank{rank}.jsonl")
    return [json.loads(line) for line in file.read_text().splitlines()] if file.exists() else []


class CrashAt(_Callback):
    """Raises "simulated crash" at the start of global step ``n`` (after step n's checkpoint was written)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.n:
            raise RuntimeError("simulated crash")
