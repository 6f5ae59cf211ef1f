"""``python -m musiclit fit`` and ``validate``: the LightningCLI (:mod:`musiclit.train.cli`) with the verb."""

from __future__ import annotations


def fit(argv: list[str]) -> int:
    """Run ``fit`` (``--ckpt_path last`` resumes the run in ``trainer.default_root_dir``).

    Returns 0 when training ended, 128 + the signal number (130 Ctrl-C, 143 SIGTERM) when a signal stopped
    it after writing a checkpoint at the current step.
    """
    import sys

    from musiclit.train.callbacks import StopOnSignal
    from musiclit.train.cli import build_cli

    cli = build_cli(["fit", *argv])
    stop = next((cb for cb in cli.trainer.callbacks if isinstance(cb, StopOnSignal)), None)
    if stop is None or stop.stopped_at_step is None:
        return 0
    last = getattr(cli.trainer.checkpoint_callback, "last_model_path", "") or "the run's checkpoints folder"
    print(f"musiclit fit: stopped by {stop.requested} after step {stop.stopped_at_step}; checkpoint {last} "
          "(resume: the same command with --ckpt_path last)", file=sys.stderr)  # fmt: skip
    return 128 + stop.signal if stop.signal else 0


def validate(argv: list[str]) -> int:
    """Run ``validate`` on a checkpoint."""
    from musiclit.train.cli import build_cli

    build_cli(["validate", *argv])
    return 0
