"""``python -m musiclit check-copying RUN_OR_FOLDER``: parsing and printing; the work is in
:mod:`musiclit.eval.memorization`."""

from __future__ import annotations

import argparse
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """The ``check-copying`` command's parser."""
    p = argparse.ArgumentParser(
        prog="python -m musiclit check-copying",
        description=(
            "Check generated audio for copies of the training clips: the longest run of identical codec frames "
            "(all codebooks) shared with any training clip, found through an index of hashed n-grams over the token "
            "cache, and the melodic similarity (chroma cross-correlation, any transposition) with the nearest "
            "training clips. A run folder checks its evaluation and in-training samples; any other folder is "
            "searched for audio files (a <stem>.codes.npy beside a file gives its exact tokens, else the audio is "
            "re-encoded). Exit code 1 when something is flagged."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("target", help="a run folder, or a folder of generated audio")
    p.add_argument("--data", help="the training dataset (default: data.data_dir of the run's config)")
    p.add_argument("--model", help="the model whose codec made the tokens (default: the run's or the samples' JSON)")
    p.add_argument("--init-seed", type=int, default=None, help="random-init seed of a config-file model")
    p.add_argument("--no-key-invariant", action="store_true", help="melodic check without transpositions")
    p.add_argument("--json", help="also write the full results to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    return p


def main(argv: list[str]) -> int:
    """Run ``check-copying``; 0 when nothing is flagged, 1 when a copy is flagged."""
    args = build_parser().parse_args(argv)
    from musiclit.eval.memorization import check_copying
    from musiclit.io import atomic_write_json, quiet_libraries

    quiet_libraries()

    def log(message: str) -> None:
        if not args.quiet:
            print(message, flush=True)

    result = check_copying(
        Path(args.target), Path(args.data) if args.data else None, args.model, args.init_seed,
        key_invariant=not args.no_key_invariant, progress=not args.quiet, log=log,
    )  # fmt: skip
    print(f"\n{result['checked']} clips checked against {result['training_clips']} training clips "
          f"(flag: token run >= {result['token_flag_seconds']:g} s or melodic similarity >= "
          f"{result['melody_threshold']:g})")  # fmt: skip
    from musiclit.eval.memorization import closest_material, control_verdict

    print(f"  {'clip':<56}{'token run':>10}  {'melody':>6}  closest training material")
    for group, rows in result["groups"].items():
        for row in rows:
            tok, mel = row.get("tokens") or {}, row.get("melody") or {}
            where = closest_material(row)
            exact = "" if row.get("codes_exact") else "~"
            name = f"[{group}] {row['name']}"[-56:]
            print(f"  {name:<56}{exact}{tok.get('seconds', 0.0):8.2f}s  {mel.get('similarity', 0.0):6.3f}  {where}"
                  + ("  COPY" if row["flagged"] else ""))  # fmt: skip

    for p in result["planted"]:
        print(f"  control: {control_verdict(p)}")
    print("  (~: tokens re-encoded from the audio, no saved codes: exact runs are a lower bound)")
    print(f"{result['flagged']} flagged")
    if args.json:
        atomic_write_json(args.json, result, default=float)
    return 1 if result["flagged"] else 0
