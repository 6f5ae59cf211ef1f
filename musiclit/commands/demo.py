"""``python -m musiclit demo``: the whole workflow offline, on the CPU, in a few minutes.

1. synthesize a small dataset of music-like audio with captions (musiclit's dataset format);
2. build a tiny MusicGen-architecture model from a config and save it as a local model folder;
3. fine-tune it with LoRA through the same ``fit`` command users run (``configs/demo.yaml``),
   printing the training loss as it falls;
4. generate a WAV with the fine-tune.

``--melody`` does the same with a tiny MusicGen-melody model: it trains on the chroma of each clip (taken as it
is: Demucs' pretrained weights would need a download) and generates following the melody of a clip.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def build_parser() -> argparse.ArgumentParser:
    """Options of the demo."""
    p = argparse.ArgumentParser(prog="python -m musiclit demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="outputs/demo", help="folder for data, model, run and samples")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: configs/demo.yaml)")
    p.add_argument("--songs", type=int, default=16, help="synthesized songs (20 s each)")
    p.add_argument("--fresh", action="store_true", help="delete the output folder first (else resume)")
    p.add_argument("--melody", action="store_true", help="a tiny MusicGen-melody model, generating to a melody")
    return p


def main(argv: list[str]) -> int:
    """Run the demo; returns 0 when the training loss fell and a WAV was written."""
    args = build_parser().parse_args(argv)
    out = Path(args.output)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    if not CONFIG.is_file():
        print(f"musiclit demo: {CONFIG} not found (run from a source checkout)", file=sys.stderr)
        return 2

    from musiclit.io import quiet_libraries
    from musiclit.train.callbacks import LossReport
    from musiclit.train.cli import build_cli

    quiet_libraries()
    data, base, run = out / "data", out / "base-model", out / "run"
    if args.melody:
        base, run = out / "base-model-melody", out / "run-melody"
    if not (data / "manifest.jsonl").exists():
        from musiclit.data.synth import synthesize_dataset

        print(f"[1/4] synthesizing {args.songs} songs x 20 s into {data}", flush=True)
        synthesize_dataset(data, n_songs=args.songs, song_seconds=20.0, clip_seconds=10.0, valid_fraction=0.15)
    else:
        print(f"[1/4] dataset found at {data}")
    if not (base / "config.json").exists():
        from musiclit.model.musicgen import create_tiny_model_folder

        kind = "MusicGen-melody" if args.melody else "MusicGen"
        print(f"[2/4] building a tiny {kind}-architecture model in {base}", flush=True)
        create_tiny_model_folder(base, seed=0, hidden_size=64, num_layers=4, num_heads=4, ffn_dim=256,
                                 melody=args.melody)  # fmt: skip
    else:
        print(f"[2/4] model found at {base}")

    fit_args = [
        "fit",
        "--config", str(CONFIG),
        "--model.pretrained", str(base),
        "--data.data_dir", str(data),
        "--trainer.default_root_dir", str(run),
    ]  # fmt: skip
    if args.steps is not None:
        fit_args += ["--trainer.max_steps", str(args.steps)]
    if args.melody:  # the chroma of the clips as they are (Demucs' pretrained weights would need a download)
        fit_args += ["--data.melody_separator", "null"]
    if (run / "checkpoints" / "last.ckpt").exists():
        fit_args += ["--ckpt_path", "last"]
        print("[3/4] resuming the earlier demo run from its last checkpoint", flush=True)
    else:
        print("[3/4] fine-tuning with LoRA on the CPU (python -m musiclit fit --config configs/demo.yaml ...)")
    report = LossReport(every=10)
    build_cli(fit_args, trainer_defaults={"callbacks": [report], "enable_progress_bar": False})

    print("[4/4] generating a sample with the fine-tune (python -m musiclit generate --adapter ...)", flush=True)
    from musiclit.infer.sampler import GenerationParams, load_generator
    from musiclit.infer.samples import write_samples

    prompt = "calm ambient track with pad, bass and drums"
    generator = load_generator(adapter=str(run / "adapter"), device="cpu")
    params = GenerationParams(seconds=4.0, seed=0)
    melody_file = melody = None
    if args.melody:
        from musiclit.data.audio import read_audio

        melody_file = str(sorted(data.rglob("*.wav"))[0])
        melody = generator.encode_melody(read_audio(melody_file, generator.sample_rate, 1), generator.sample_rate)
        print(f"      following the melody of {melody_file}", flush=True)
    result = generator.generate([prompt], params, melody=melody)
    samples = out / ("samples-melody" if args.melody else "samples")
    wav = write_samples(generator, result, [prompt], params, samples, melody=melody_file)[0]
    ok = True
    if not report.losses:
        print("\nthe demo run had already finished its steps (use --fresh to train again from scratch)")
    elif len(report.losses) >= 20:
        k = max(5, len(report.losses) // 10)
        first, last = sum(report.losses[:k]) / k, sum(report.losses[-k:]) / k
        fell = last < first and math.isfinite(last)
        verdict = "fell" if fell else "DID NOT FALL"
        print(f"\ntraining loss: first {k} steps {first:.3f} -> last {k} steps {last:.3f} ({verdict})")
        ok = fell
    print(f"checkpoint: {run / 'checkpoints' / 'last.ckpt'}")
    print(f"adapter:    {run / 'adapter'} (peft layout)")
    print(f"config:     {run / 'logs'}/version_*/config.yaml")
    seconds = result.audio.shape[-1] / result.sample_rate
    print(f"sample:     {wav} ({seconds:.1f} s, prompt: {prompt!r}; its JSON beside it)")
    print(f"next:       python -m musiclit evaluate {run}   (did it work? then open {run / 'report' / 'index.html'})")
    return 0 if ok else 1
