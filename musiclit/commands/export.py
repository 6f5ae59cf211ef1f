"""``python -m musiclit export`` and ``python -m musiclit import``: parsing and printing; the work is in
:mod:`musiclit.infer.export`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from musiclit.infer.export import FORMATS, MARKER


def build_export_parser() -> argparse.ArgumentParser:
    """The ``export`` command's parser."""
    p = argparse.ArgumentParser(
        prog="python -m musiclit export",
        description=(
            "Export a fine-tune (musiclit checkpoint .ckpt or peft adapter folder) to a peft adapter folder, a merged "
            "transformers model folder, or audiocraft's format (state_dict.bin + compression_state_dict.bin). "
            "Writes are atomic; an existing output folder is replaced only with --force."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "source", nargs="?", help="checkpoint (.ckpt), peft adapter folder, or (merged/audiocraft) a model folder"
    )
    p.add_argument(
        "--adapter",
        action="append",
        help="instead of SOURCE: an adapter or checkpoint to mix; repeat for several fine-tunes of the same base",
    )
    p.add_argument(
        "--adapter-scale",
        type=float,
        action="append",
        help="strength of each --adapter (same order; default 1 each): the export holds the base plus each "
        "adapter's weight change times its strength. peft format: plain LoRA only (a stacked adapter whose rank is "
        "the sum of the ranks)",
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --force)")
    p.add_argument("--model", help="base model (default: the one the checkpoint/adapter names)")
    p.add_argument("--init-seed", type=int, default=None, help="random-init seed of a config-file base")
    p.add_argument(
        "--segment-duration",
        type=float,
        default=30.0,
        help="audiocraft: dataset.segment_duration, the longest audio it generates in one go",
    )
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    return p


def build_import_parser() -> argparse.ArgumentParser:
    """The ``import`` command's parser."""
    p = argparse.ArgumentParser(
        prog="python -m musiclit import",
        description=(
            "Import an audiocraft-format MusicGen fine-tune (a folder with state_dict.bin) into a transformers model "
            "folder that musiclit can train or generate from. The text encoder and codec come from --base."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("source", help="audiocraft folder holding state_dict.bin")
    p.add_argument(
        "--base",
        required=True,
        help="transformers MusicGen (hub id or folder) giving the text encoder and codec, e.g. facebook/musicgen-small",
    )
    p.add_argument("--out", required=True, help="output folder (must not exist unless --force)")
    p.add_argument("--init-seed", type=int, default=0, help="random-init seed of a config-file base")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow arbitrary pickled objects in state_dict.bin (only for files you trust)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    return p


def _print_folder(out: Path) -> None:
    files = sorted(p.name for p in Path(out).iterdir())
    print(f"wrote {out}: {', '.join(files)}")


def export(argv: list[str]) -> int:
    """Run ``export``."""
    from musiclit.infer.export import ExportError
    from musiclit.infer.export import export as run_export
    from musiclit.io import quiet_libraries
    from musiclit.model.mix import pair_strengths

    args = build_export_parser().parse_args(argv)
    quiet_libraries()
    if args.source and args.adapter:
        raise ExportError("give SOURCE or --adapter, not both")
    sources = args.adapter if args.adapter else [args.source] if args.source else []
    if not sources:
        raise ExportError("give the checkpoint or adapter to export (SOURCE), or --adapter to mix several")
    adapters, scales = pair_strengths(sources, args.adapter_scale)
    # one fine-tune at full strength is exported as it is; anything else is a mix of weight changes
    mix = None if len(adapters) == 1 and scales == [1.0] else list(zip(adapters, scales, strict=True))
    out = run_export(
        None if mix else adapters[0], args.format, args.out, args.model, args.force, args.init_seed,
        args.segment_duration, mix,
    )  # fmt: skip
    _print_folder(out)
    if args.format == "audiocraft":
        info = json.loads((Path(out) / MARKER).read_text(encoding="utf-8"))
        print(f"  load it with audiocraft: MusicGen.get_pretrained('{out}')  (base: {info.get('base')})")
    return 0


def import_(argv: list[str]) -> int:
    """Run ``import``."""
    from musiclit.infer.export import import_audiocraft
    from musiclit.io import quiet_libraries

    args = build_import_parser().parse_args(argv)
    quiet_libraries()
    _print_folder(import_audiocraft(args.source, args.base, args.out, args.force, args.trust_pickle, args.init_seed))
    return 0
