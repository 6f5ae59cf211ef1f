"""``python -m musiclit <verb>``: one entry point for every command.

Each verb is a function in :mod:`musiclit.commands` (argument parsing, printing, exit codes); the work is
done by the layers below it (see docs/architecture.md). A verb's module is imported only when that verb
runs, and command modules import heavy libraries (torch, Lightning, transformers) only inside the code
that needs them, so ``--help`` stays fast.

Every error a user can fix is a :class:`~musiclit.errors.MusiclitError`: it is printed here as one line
that names the file or option and the problem, with exit code 2 (``MUSICLIT_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import importlib
import os
import sys

# verb -> ("module:function", one-line help). The function takes the verb's arguments and returns an exit code.
VERBS: dict[str, tuple[str, str]] = {
    "prepare": ("musiclit.commands.prepare:main", "turn a folder of songs into a labelled, chunked 32 kHz dataset"),
    "fit": ("musiclit.commands.fit:fit", "fine-tune MusicGen (--config x.yaml; --ckpt_path last resumes)"),
    "validate": ("musiclit.commands.fit:validate", "run the validation loop on a checkpoint"),
    "generate": ("musiclit.commands.generate:main", "generate music with a base model, an adapter or a merged model"),
    "export": ("musiclit.commands.export:export", "export a checkpoint/adapter to peft, merged or audiocraft format"),
    "import": ("musiclit.commands.export:import_", "import an audiocraft-format fine-tune as a transformers model"),
    "cache": ("musiclit.commands.cache:main", "encode a dataset once into the codec token cache"),
    "estimate": ("musiclit.commands.estimate:main", "predict (and on a GPU measure) peak GPU memory of a config"),
    "evaluate": ("musiclit.commands.evaluate:main", "did the fine-tune work? likelihood gain, FAD/KAD, memorisation"),
    "check-copying": ("musiclit.commands.check_copying:main", "check generated audio for copies of the training clips"),
    "report": ("musiclit.commands.report:main", "(re)build the run's self-contained HTML report"),
    "demo": ("musiclit.commands.demo:main", "offline demo: synthesize data, fine-tune a tiny model, generate a WAV"),
}

USAGE = "usage: python -m musiclit <verb> [options]    (python -m musiclit <verb> --help for a verb's options)"


def _print_help() -> None:
    from musiclit import __version__

    print(f"musiclit {__version__}: fine-tune MusicGen on your own music.\n\n{USAGE}\n\nverbs:")
    for verb, (_, text) in VERBS.items():
        print(f"  {verb:<10} {text}")


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default: ``sys.argv[1:]``) to the verb's function and return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        _print_help()
        return 0
    if argv[0] in ("-V", "--version"):
        from musiclit import __version__

        print(__version__)
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"musiclit: unknown verb '{verb}'.\n{USAGE}\nverbs: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    from musiclit.errors import MusiclitError

    module_name, function = VERBS[verb][0].split(":")
    try:
        result = getattr(importlib.import_module(module_name), function)(rest)
    except MusiclitError as err:
        if os.environ.get("MUSICLIT_DEBUG"):
            raise
        print(f"musiclit {verb}: error: {err}", file=sys.stderr)
        print("(set MUSICLIT_DEBUG=1 for the full traceback)", file=sys.stderr)
        return 2
    except OSError as err:
        import errno

        if err.errno not in (errno.ENOSPC, errno.EDQUOT) or os.environ.get("MUSICLIT_DEBUG"):
            raise
        where = f" while writing {err.filename}" if err.filename else ""
        hint = "free some space and run the same command again (finished work is kept; fit: --ckpt_path last)"
        print(f"musiclit {verb}: error: the disk is full{where} ({err.strerror}); {hint}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
