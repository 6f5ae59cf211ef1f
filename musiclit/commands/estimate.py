"""``python -m musiclit estimate``: print the peak-memory estimate of a config (:mod:`musiclit.train.estimate`)."""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    """Print the estimate (and suggestions) for a config; ``--measure`` adds a measurement."""
    from musiclit.train import estimate as est

    parser = argparse.ArgumentParser(prog="python -m musiclit estimate", description=est.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--config", action="append", required=True, help="YAML config (repeat to layer)")
    parser.add_argument("--gpu-memory", type=float, default=12.0, help="GPU memory budget in GiB")
    parser.add_argument("--measure", action="store_true", help="run real steps at random init and measure")
    parser.add_argument("--steps", type=int, default=3)
    cost = parser.add_argument_group("cost of a run (musiclit.train.cost; needs --dataset)")
    cost.add_argument("--dataset", help="prepared dataset folder: prints hours and price of training on it")
    cost.add_argument("--epochs", type=float, help="epochs of the run (default: the config's trainer.max_epochs)")
    cost.add_argument(
        "--gpu",
        default="rtx3060",
        choices=["rtx3060", "a40", "a100-40gb", "a100-80gb", "h100"],
        help="card to price (every card is listed too)",
    )
    cost.add_argument("--num-gpus", type=int, default=1, help="cards sharing the run (data parallel)")
    cost.add_argument("--price-per-hour", type=float, help="USD per GPU-hour (default: the seed's cost table)")
    cost.add_argument("--utilization", type=float, help="measured FLOP/s / bf16 peak (default: ASSUMED 0.35)")
    args = parser.parse_args(argv)
    config = est.load_configs(args.config)
    spec = est.spec_from_config(config)
    parts = est.estimate(spec)
    total = sum(parts.values())
    label = "ESTIMATE (analytic, not measured)"
    print(f"{label}: peak GPU memory for {', '.join(args.config)}")
    print(f"  decoder {spec.hidden} x {spec.layers} layers ({spec.decoder_params / 1e6:.0f}M params), "
          f"{'LoRA r' + str(spec.lora_r) if spec.lora_r else 'full fine-tune'} ({spec.lora_params / 1e6:.1f}M "
          f"trainable), batch {spec.batch} x {spec.seconds:g} s, {'16-bit mixed' if spec.bf16 else 'fp32'}, "
          f"checkpointing {'on' if spec.checkpointing else 'off'}")  # fmt: skip
    for name, value in parts.items():
        print(f"  {name:<36}{value / est.GiB:8.2f} GiB")
    print(f"  {'total':<36}{total / est.GiB:8.2f} GiB   (+ ~0.5 GiB CUDA context, not counted by PyTorch)")
    for name, value in est.host_memory(spec).items():
        print(f"  host: {name} {value / est.GiB:.2f} GiB (model.text_cache_bytes; not GPU memory)")
    other = est.Spec(**{**spec.__dict__, "checkpointing": not spec.checkpointing})
    flipped = sum(est.estimate(other).values()) / est.GiB
    print(f"  with checkpointing {'off' if spec.checkpointing else 'on'}: {flipped:.2f} GiB")
    verdict = "fits" if total <= args.gpu_memory * est.GiB else "does NOT fit"
    print(f"budget {args.gpu_memory:g} GiB: this config {verdict}. Suggestions (estimates):")
    for line in est.suggest(spec, args.gpu_memory * est.GiB):
        print("  " + line)
    if args.dataset:
        from musiclit.train.cost import cost_report

        print("\n".join(cost_report(config, spec, args.dataset, args.epochs, args.gpu, args.num_gpus,
                                     args.price_per_hour, args.utilization)))  # fmt: skip
    if args.measure:
        result = est.measure(config, args.steps)
        if result["device"] == "cuda":
            peak = result["peak"] / est.GiB
            print(f"MEASURED on the GPU: peak allocated {peak:.2f} GiB (estimate {total / est.GiB:.2f})")
        else:
            print(f"MEASURED on the CPU: peak RSS increase over {args.steps} steps "
                  f"{result['peak_increase'] / est.GiB:.2f} GiB (weights excluded; no GPU here)")  # fmt: skip
    return 0
