"""``python -m musiclit <verb>``: one entry point for every command.

Training verbs (fit, validate, test, predict) go to the LightningCLI in :mod:`musiclit.cli`; the other
verbs have their own small parsers. Heavy libraries are imported only by the verb that needs them, so
``--help`` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys

# verb -> (module, one-line help). Each module exposes ``main(argv: list[str]) -> int | None``.
VERBS: dict[str, tuple[str, str]] = {
    "prepare": ("musiclit.prep.cli", "turn a folder of songs into a labelled, chunked 32 kHz dataset"),
    "fit": ("musiclit.cli", "fine-tune MusicGen (LightningCLI; --config x.yaml, --ckpt_path last resumes)"),
    "validate": ("musiclit.cli", "run the validation loop on a checkpoint"),
    "generate": ("musiclit.generate", "generate music with a base model, an adapter or a merged model"),
    "export": ("musiclit.export", "export a checkpoint/adapter to peft, merged transformers or audiocraft format"),
    "import": ("musiclit.export", "import an audiocraft-format fine-tune into a transformers model folder"),
    "cache": ("musiclit.cache", "encode a dataset once into the codec token cache"),
    "estimate": ("musiclit.estimate", "predict (and on a GPU measure) peak GPU memory of a config"),
    "demo": ("musiclit.demo", "offline demo: synthesize data, fine-tune a tiny model, generate a WAV"),
}

# modules that serve several verbs get the verb as argv[0]
MULTI_VERB_MODULES = ("musiclit.cli", "musiclit.export")

USAGE = "usage: python -m musiclit <verb> [options]    (python -m musiclit <verb> --help for a verb's options)"


def _print_help() -> None:
    from musiclit import __version__

    print(f"musiclit {__version__}: fine-tune MusicGen on your own music.\n\n{USAGE}\n\nverbs:")
    for verb, (_, text) in VERBS.items():
        print(f"  {verb:<10} {text}")


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default: ``sys.argv[1:]``) to the verb's module and return its exit code."""
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

    module_name = VERBS[verb][0]
    try:
        module = importlib.import_module(module_name)
        result = module.main([verb, *rest] if module_name in MULTI_VERB_MODULES else rest)
    except MusiclitError as err:
        if os.environ.get("MUSICLIT_DEBUG"):
            raise
        print(f"musiclit {verb}: error: {err}", file=sys.stderr)
        print("(set MUSICLIT_DEBUG=1 for the full traceback)", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
