"""``python -m musiclit fit`` and ``validate``: the LightningCLI (:mod:`musiclit.train.cli`) with the verb.

``--allow-import MODULE_OR_CLASS`` (repeatable, musiclit's own option, taken out before the LightningCLI
parses): lets a config or argument name a class_path outside musiclit, torch.optim and Lightning's
callbacks/loggers/strategies/plugins/profilers/accelerators. Without it such a config is refused: a
config from someone else could otherwise construct any object (e.g. run a command).
"""

from __future__ import annotations


def _run(verb: str, argv: list[str]) -> int:
    from musiclit.train.cli import ALLOW, build_cli, split_allow_imports

    if any(a in ("-h", "--help") for a in argv):
        print(
            f"musiclit option: {ALLOW} MODULE_OR_CLASS  allow a config to name this class_path (repeatable; "
            "by default only musiclit, torch.optim and Lightning's own classes)\n"
        )
    rest, allow = split_allow_imports(argv)
    build_cli([verb, *rest], allow_imports=allow)
    return 0


def fit(argv: list[str]) -> int:
    """Run ``fit`` (``--ckpt_path last`` resumes the run in ``trainer.default_root_dir``)."""
    return _run("fit", argv)


def validate(argv: list[str]) -> int:
    """Run ``validate`` on a checkpoint."""
    return _run("validate", argv)
