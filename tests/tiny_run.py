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
