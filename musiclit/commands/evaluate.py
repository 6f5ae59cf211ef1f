"""``python -m musiclit evaluate RUN_OR_ADAPTER``: parsing and printing; the work is in :mod:`musiclit.eval`."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

DEFAULTS_NOTE = "evaluation options of `fit` live under `evaluation:` in the YAML (see docs/evaluate.md)"


def build_parser() -> argparse.ArgumentParser:
    """The ``evaluate`` command's parser."""
    from musiclit.eval.settings import EvalSettings

    d = EvalSettings()
    p = argparse.ArgumentParser(
        prog="python -m musiclit evaluate",
        description=(
            "Did the fine-tune work, and does it copy its training songs? On the run's validation songs: "
            "per-codebook cross-entropy of the base model (adapter scale 0), scale 0.5 and the fine-tune, the gain "
            "in nats with a bootstrap interval, the mean KL between base and tuned predictions; FAD and KAD of "
            "base and tuned samples against the validation audio (on the model's own EnCodec latents); and the "
            "memorisation check of every sample against the training clips. Writes RUN/eval/eval.json and the "
            "samples, then rebuilds RUN/report/index.html. Nothing is downloaded."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=DEFAULTS_NOTE,
    )
    p.add_argument("target", help="a run folder (trainer.default_root_dir of fit), a peft adapter folder or a .ckpt")
    p.add_argument("--data", help="the dataset folder (default: data.data_dir of the run's config)")
    p.add_argument(
        "--checkpoint",
        default="final",
        choices=["final", "best", "last"],
        help="for a run folder: the final adapter (else last.ckpt), the checkpoint of the best validation loss, or "
        "last.ckpt",
    )
    p.add_argument("--out", help="results folder (default RUN/eval; required for an adapter outside a run)")
    p.add_argument("--scales", type=float, nargs="+", default=list(d.scales), help="adapter scales scored")
    p.add_argument("--prompts", type=int, default=d.prompts, help="validation captions used as sample prompts")
    p.add_argument("--samples-per-prompt", type=int, default=d.samples_per_prompt, help="samples per prompt")
    p.add_argument("--seconds", type=float, default=d.seconds, help="length of each sample")
    p.add_argument("--guidance-scale", type=float, default=d.guidance_scale, help="CFG scale of the samples")
    p.add_argument("--seed", type=int, default=d.seed, help="first sampling seed (and the bootstrap's)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="crops/samples per forward pass")
    p.add_argument("--max-crops-per-clip", type=int, default=d.max_crops_per_clip,
                   help="validation crops per clip (default: cover each clip)")  # fmt: skip
    p.add_argument("--embedding-window", type=float, default=d.embedding_window,
                   help="seconds of codec latents per FAD/KAD embedding")  # fmt: skip
    p.add_argument("--embedding-model", action="append", default=[], metavar="FILE",
                   help="a TorchScript embedding model you have (e.g. a CLAP or VGGish audio tower; see "
                   "docs/evaluate.md): FAD/KAD on the decoded audio with it too (repeatable)")  # fmt: skip
    p.add_argument("--no-copying", action="store_true", help="skip the memorisation check")
    p.add_argument("--no-key-invariant", action="store_true", help="melodic check without transpositions")
    p.add_argument("--no-training-samples", action="store_true", help="do not check the in-training samples")
    p.add_argument("--bootstrap", type=int, default=d.bootstrap, help="bootstrap resamples")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--no-report", action="store_true", help="do not rebuild RUN/report/index.html")
    p.add_argument("--json", action="store_true", help="print eval.json instead of the summary")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    return p


def main(argv: list[str]) -> int:
    """Run ``evaluate``; exit code 0 (a problem the user can fix raises a MusiclitError: exit code 2)."""
    args = build_parser().parse_args(argv)
    from musiclit.eval.evaluate import format_summary, run_evaluation
    from musiclit.eval.run import resolve_run
    from musiclit.eval.settings import EvalSettings
    from musiclit.io import quiet_libraries

    quiet_libraries()
    known = {f.name for f in fields(EvalSettings)}
    values = {
        "scales": tuple(args.scales), "prompts": args.prompts, "samples_per_prompt": args.samples_per_prompt,
        "seconds": args.seconds, "guidance_scale": args.guidance_scale, "seed": args.seed,
        "batch_size": args.batch_size, "max_crops_per_clip": args.max_crops_per_clip,
        "embedding_window": args.embedding_window, "embedding_models": tuple(args.embedding_model),
        "copying": not args.no_copying,
        "key_invariant": not args.no_key_invariant, "training_samples": not args.no_training_samples,
        "bootstrap": args.bootstrap, "device": args.device, "threads": args.threads,
    }  # fmt: skip
    settings = EvalSettings(**{k: v for k, v in values.items() if k in known})
    info = resolve_run(args.target, args.data, args.checkpoint)
    from pathlib import Path

    def log(message: str) -> None:
        if not args.quiet:
            print(message, flush=True)

    report = run_evaluation(info, settings, progress=not args.quiet, log=log,
                            out_dir=Path(args.out) if args.out else None)  # fmt: skip
    out = Path(args.out) if args.out else info.run / "eval"  # type: ignore[operator]
    page = None
    if info.run is not None:
        from musiclit.eval.evaluate import log_to_tensorboard

        log_to_tensorboard(info.run, report)
    if info.run is not None and not args.no_report:
        from musiclit.eval.report import build_report

        page = build_report(info.run)
    if args.json:
        print(json.dumps(report, indent=1, default=float))
        return 0
    print()
    print(format_summary(report))
    print(f"\nresults: {out / 'eval.json'}" + (f"\nreport:  {page}" if page else ""))
    return 0
