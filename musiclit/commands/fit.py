"""``python -m musiclit fit`` and ``validate``: the LightningCLI (:mod:`musiclit.train.cli`) with the verb.

``--allow-import MODULE_OR_CLASS`` (repeatable, musiclit's own option, taken out before the LightningCLI
parses): lets a config or argument name a class_path outside musiclit, torch.optim and Lightning's
callbacks/loggers/strategies/plugins/profilers/accelerators. Without it such a config is refused: a
config from someone else could otherwise construct any object (e.g. run a command).
"""

from __future__ import annotations

from typing import Any


def _run(verb: str, argv: list[str]) -> Any:
    """Run the LightningCLI for ``verb``; returns it (None when only ``--help`` ran)."""
    from musiclit.train.cli import ALLOW, build_cli, split_allow_imports

    if any(a in ("-h", "--help") for a in argv):
        print(
            f"musiclit option: {ALLOW} MODULE_OR_CLASS  allow a config to name this class_path (repeatable; "
            "by default only musiclit, torch.optim and Lightning's own classes)\n"
        )
    rest, allow = split_allow_imports(argv)
    return build_cli([verb, *rest], allow_imports=allow)


def fit(argv: list[str]) -> int:
    """Run ``fit`` (``--ckpt_path last`` resumes the run in ``trainer.default_root_dir``).

    Returns 0 when training ended, 128 + the signal number (130 Ctrl-C, 143 SIGTERM) when a signal stopped
    it after writing a checkpoint at the current step.
    """
    import sys

    from musiclit.train.callbacks import StopOnSignal

    cli = _run("fit", argv)
    if cli is None:
        return 0
    stop = next((cb for cb in cli.trainer.callbacks if isinstance(cb, StopOnSignal)), None)
    if stop is None or stop.stopped_at_step is None:
        return 0
    last = getattr(cli.trainer.checkpoint_callback, "last_model_path", "") or "the run's checkpoints folder"
    print(f"musiclit fit: stopped by {stop.requested} after step {stop.stopped_at_step}; checkpoint {last} "
          "(resume: the same command with --ckpt_path last)", file=sys.stderr)  # fmt: skip
    return 128 + stop.signal if stop.signal else 0


def validate(argv: list[str]) -> int:
    """Run ``validate`` on a checkpoint."""
    _run("validate", argv)
    return 0
