"""``python -m musiclit fit`` and ``validate``: the LightningCLI (:mod:`musiclit.train.cli`) with the verb."""

from __future__ import annotations


def fit(argv: list[str]) -> int:
    """Run ``fit`` (``--ckpt_path last`` resumes the run in ``trainer.default_root_dir``)."""
    from musiclit.train.cli import build_cli

    build_cli(["fit", *argv])
    return 0


def validate(argv: list[str]) -> int:
    """Run ``validate`` on a checkpoint."""
    from musiclit.train.cli import build_cli

    build_cli(["validate", *argv])
    return 0
