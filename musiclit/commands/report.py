"""``python -m musiclit report RUN``: rebuild the run's HTML report; the work is in :mod:`musiclit.eval.report`."""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    """The ``report`` command's parser."""
    p = argparse.ArgumentParser(
        prog="python -m musiclit report",
        description=(
            "Rebuild RUN/report/index.html: one self-contained page (no network) with the loss curves, the "
            "evaluation table, base-vs-tuned players with spectrograms, the in-training samples, the memorisation "
            "table and the resolved config. `evaluate` rebuilds it by itself."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", help="the run folder (trainer.default_root_dir of fit)")
    p.add_argument(
        "--embed-mb",
        type=float,
        default=64.0,
        help="most megabytes of audio embedded in the page (the rest is linked by relative path)",
    )
    return p


def main(argv: list[str]) -> int:
    """Build the report and print its path."""
    args = build_parser().parse_args(argv)
    from musiclit.eval.report import build_report
    from musiclit.eval.run import RunError, find_run_dir

    run = find_run_dir(args.run)
    if run is None:
        raise RunError(f"{args.run}: not a run folder (no logs/ or checkpoints/)")
    print(build_report(run, embed_mb=args.embed_mb))
    return 0
