"""Training-step benchmark: musiclit's step against the plain transformers + peft step, side by side.

    python tools/bench_train.py                       # tiny + mid on this machine (CPU: ~3 min)
    python tools/bench_train.py --configs small --steps 4 --variants plain musiclit
    python tools/bench_train.py --configs mid --ablate  # every speed change on its own (before/after table)

Each (configuration, variant) runs in its own process (clean peak memory), on the GPU when there is one.
Printed per row: seconds per optimiser step (median after warm-up), audio-seconds trained per second,
codec frames per second, model FLOP/s and its ratio to the matmul ceiling measured at the start of the run
(in the row's compute dtype), and peak memory (process RSS high-water mark on CPU, reset before the
timed steps; ``torch.cuda.max_memory_allocated`` on GPU).

Variants:
  plain         what most fine-tuning scripts do: ``model(input_ids, attention_mask, labels=...)`` on
                ``MusicgenForConditionalGeneration`` + peft, the codec run on the audio every step, T5 run
                every step, fp32, default config (KV cache on), peft dropout (one mask per module)
  plain-bf16    the same over precomputed codes under bf16 autocast (the recipe's reference loop)
  musiclit      MusicGenModule: cached codes, cached T5 states, bf16 frozen weights under bf16 autocast
                (fp32 on CPUs/GPUs without bf16 if --dtype fp32), use_cache off, shared LoRA dropout masks
  ablations (--ablate): musiclit minus one change each: -sharedrop, -bf16frozen (fp32 frozen weights under
                autocast), -fp32 (no autocast), +codec (codec every step), +ckpt (gradient checkpointing)

Model FLOPs per LoRA step = 2 x forward matmul FLOPs (forward + input gradients; frozen weights have no
weight gradients), with forward = 2 x linear params x tokens + 4 x layers x L^2 x hidden x batch
(self-attention scores and values). Codec and T5 FLOPs are not counted (they are the waste being removed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"decoder": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "ffn_dim": 64}, "real_encoders": False},
    "mid": {"decoder": {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "ffn_dim": 2048}, "real_encoders": True},
    "small": {"decoder": "small", "real_encoders": True},
    "medium": {"decoder": "medium", "real_encoders": True},
    "large": {"decoder": "large", "real_encoders": True},
}
VARIANTS = ("plain", "plain-bf16", "musiclit")
ABLATIONS = (
    "musiclit-sharedrop",
    "musiclit-bf16frozen",
    "musiclit-fp32",
    "musiclit+codec",
    "musiclit+ckpt",
    "musiclit+compile",
)
LORA = {"r": 16, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear", "lm_heads": True}


def model_config(name: str) -> dict[str, Any]:
    """A MusicGen config dict for a named benchmark configuration."""
    from musiclit.model.musicgen import real_config_dict, tiny_config_dict

    spec = CONFIGS[name]
    if spec["real_encoders"]:
        return real_config_dict(spec["decoder"])
    config = tiny_config_dict(**spec["decoder"], num_codebooks=4)
    config["decoder"]["max_position_embeddings"] = 2048
    return config


# ---------------------------------------------------------------------------------------------- measuring
def rss_peak_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def proc_status(field: str) -> int:
    """A /proc/self/status field in bytes (VmHWM: peak RSS, VmRSS: current RSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def native_bf16() -> bool:
    """Whether bf16 matmuls run on native hardware (else they are emulated and slower than fp32)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(choice: str) -> str:
    return ("bf16" if native_bf16() else "fp32") if choice == "auto" else choice


def matmul_ceiling(device: str, dtype_name: str, n: int = 2048, seconds: float = 1.5) -> float:
    """Best sustained FLOP/s of an n x n ``F.linear`` (the op the model's layers run)."""
    import torch
    import torch.nn.functional as F

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(2):
        F.linear(a, b)
    end, runs = time.perf_counter() + seconds, 0
    while time.perf_counter() < end or runs < 3:
        runs += 1
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        reps = 8 if device == "cuda" else 1
        for _ in range(reps):
            F.linear(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, reps * 2 * n**3 / (time.perf_counter() - t))
    return best


def model_flops(config: dict[str, Any], batch: int, frames: int) -> float:
    dec = config["decoder"]
    hidden, layers, ffn, k = dec["hidden_size"], dec["num_hidden_layers"], dec["ffn_dim"], dec["num_codebooks"]
    length = frames + k  # delay pattern: T + max_delay + 1 steps, minus the shifted one
    per_layer = 4 * hidden * hidden + 2 * hidden * ffn + 2 * hidden * hidden  # self q/k/v/out, fc1/fc2, cross q/out
    text_len = 16
    linear = layers * per_layer + k * hidden * 2048
    fwd = 2 * linear * batch * length + 4 * layers * length * length * hidden * batch
    fwd += layers * (4 * hidden * hidden * text_len + 4 * length * text_len * hidden) * batch  # cross k/v + attn
    return 2.0 * fwd


# ---------------------------------------------------------------------------------------------- one run
def run_worker(name: str, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from musiclit.io import quiet_libraries
    from musiclit.model.delay import build_delay_pattern

    quiet_libraries()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = model_config(name)
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    cfg_path = tmp / "config.json"
    cfg_path.write_text(json.dumps(config))
    batch, seconds = args.batch, args.seconds
    frames = int(seconds * 50)
    samples = int(seconds * 32000)
    t = torch.arange(samples) / 32000
    audio = (0.1 * torch.sin(2 * torch.pi * 220 * t) + 0.05 * torch.randn(batch, 1, samples)).to(device)
    audio_mask = torch.ones(batch, samples, dtype=torch.bool, device=device)
    captions = [f"a calm folk piece number {i} with guitar" for i in range(batch)]
    bf16 = variant not in ("plain", "musiclit-fp32") and resolve_dtype(args.dtype) == "bf16"
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)

    if variant.startswith("plain"):
        from peft import LoraConfig, get_peft_model

        from musiclit.model.lora import LoraSettings
        from musiclit.model.musicgen import load_musicgen

        loaded = load_musicgen(str(cfg_path))
        settings = LoraSettings(**LORA)
        model = get_peft_model(loaded.model, LoraConfig(r=settings.r, lora_alpha=settings.alpha,
                                                        lora_dropout=settings.dropout,
                                                        target_modules=settings.target_regex()))  # fmt: skip
        model.to(device).train()
        tokenizer = loaded.tokenizer
        codec = model.get_base_model().audio_encoder
        with torch.no_grad():
            pre_codes = codec.encode(audio, bandwidth=2.2).audio_codes[0]

        def step_loss() -> torch.Tensor:
            if variant == "plain":
                with torch.no_grad():
                    codes = codec.encode(audio, bandwidth=2.2).audio_codes[0]
            else:
                codes = pre_codes
            _, labels, mask = build_delay_pattern(codes, 2048, [0, 1, 2, 3])
            labels = labels.masked_fill(~mask, -100).transpose(1, 2)  # (B, L, K)
            tokens = tokenizer(captions, return_tensors="pt", padding=True).to(device)
            with autocast:
                return model(**tokens, labels=labels).loss

        params = [p for p in model.parameters() if p.requires_grad]
        attn = model.get_base_model().decoder.config._attn_implementation
    else:
        from musiclit.model.lora import LoraSettings
        from musiclit.train.module import MusicGenModule

        frozen = "bfloat16" if bf16 and variant != "musiclit-bf16frozen" else "float32"
        module = MusicGenModule(str(cfg_path), lora=LoraSettings(**LORA), cfg_dropout=0.3, frozen_dtype=frozen,
                                share_lora_dropout=variant != "musiclit-sharedrop",
                                gradient_checkpointing=variant == "musiclit+ckpt",
                                compile_layers=variant == "musiclit+compile")  # fmt: skip
        module.setup("fit")
        module.to(device).train()
        pre_codes, pre_mask = module.encode_audio(audio, audio_mask)
        step_batch: dict[str, Any] = {"captions": captions}
        if variant == "musiclit+codec":
            step_batch.update(audio=audio, audio_mask=audio_mask)
        else:
            step_batch.update(codes=pre_codes, frame_mask=pre_mask)

        def step_loss() -> torch.Tensor:
            with autocast:
                return module._batch_loss(step_batch, 0.3)[0]

        params = [p for p in module.parameters() if p.requires_grad]
        attn = module.base.decoder.config._attn_implementation
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    times = []
    rss_before = proc_status("VmRSS")
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            rss_before = proc_status("VmRSS")
            reset = rss_peak_reset()
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
        sync()
        start = time.perf_counter()
        torch.manual_seed(i)
        loss = step_loss()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    flops = model_flops(config, batch, frames)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else proc_status("VmHWM")
    return {
        "config": name, "variant": variant, "device": device, "attn": attn, "dtype": "bf16" if bf16 else "fp32",
        "batch": batch, "seconds": seconds, "step_s": step, "steps_s": times, "audio_s_per_s": batch * seconds / step,
        "frames_per_s": batch * frames / step, "model_flops": flops, "flop_s": flops / step,
        "peak_bytes": peak, "rss_before_steps": rss_before if device == "cpu" else None,
        "peak_reset": reset if device == "cpu" else True, "trainable": sum(p.numel() for p in params),
        "loss": float(loss.detach()), "threads": torch.get_num_threads(),
        "np": np.__version__,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------- driver
def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{model}, {os.cpu_count()} cores (CPU)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=None, choices=list(CONFIGS),
                        help="default: tiny mid on CPU, tiny mid small medium large on GPU")  # fmt: skip
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=[*VARIANTS, *ABLATIONS])
    parser.add_argument("--ablate", action="store_true", help="add every ablation variant")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="run each row this many times (median reported)")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                        help="compute dtype of the bf16 variants; auto: bf16 where the hardware has native bf16 "
                        "matmuls (CUDA compute >= 8.0; CPUs with AVX512-BF16/AMX), else fp32")  # fmt: skip
    parser.add_argument("--json", help="append the rows to this JSONL file")
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(run_worker(args.worker[0], args.worker[1], args)), flush=True)
        return 0

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    configs = args.configs or (list(CONFIGS) if device == "cuda" else ["tiny", "mid"])
    variants = list(dict.fromkeys(args.variants + (list(ABLATIONS) if args.ablate else [])))
    ceiling = {d: matmul_ceiling(device, d, n=2048 if device == "cuda" or d == "fp32" else 1024)
               for d in ("fp32", "bf16")}  # fmt: skip
    print(f"machine: {machine()}; torch {torch.__version__}; {torch.get_num_threads()} threads")
    print(f"matmul ceiling: fp32 {ceiling['fp32'] / 1e9:.0f} GFLOP/s, bf16 {ceiling['bf16'] / 1e9:.0f} GFLOP/s")
    print(f"native bf16: {native_bf16()}; bf16 variants run in {resolve_dtype(args.dtype)}")
    print(
        f"batch {args.batch} x {args.seconds:g} s, LoRA r{LORA['r']} all-linear + lm_heads, dropout {LORA['dropout']}"
    )
    header = f"{'config':<7}{'variant':<21}{'dtype':<6}{'s/step':>8}{'x plain':>8}{'audio s/s':>10}{'frames/s':>10}"
    header += f"{'GFLOP/s':>9}{'MFU':>7}{'peak GiB':>9}"
    print(header)
    rows = []
    for name in configs:
        plain = None
        for variant in variants:
            results = []
            for _ in range(args.repeats):
                cmd = [sys.executable, __file__, "--worker", name, variant, "--batch", str(args.batch), "--seconds",
                       str(args.seconds), "--steps", str(args.steps), "--warmup", str(args.warmup), "--dtype",
                       args.dtype]  # fmt: skip
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
                if out.returncode or not lines:
                    print(f"{name:<7}{variant:<21} failed: {out.stderr.strip().splitlines()[-1:]}")
                    break
                results.append(json.loads(lines[-1][7:]))
            if not results:
                continue
            row = sorted(results, key=lambda r: r["step_s"])[len(results) // 2]
            row["step_s_runs"] = [r["step_s"] for r in results]
            row["ceiling"] = ceiling[row["dtype"]]
            row["mfu"] = row["flop_s"] / row["ceiling"]
            row["machine"] = machine()
            if variant == "plain":
                plain = row["step_s"]
            row["speedup_vs_plain"] = plain / row["step_s"] if plain else None
            rows.append(row)
            speed = f"{row['speedup_vs_plain']:.2f}x" if plain else "-"
            print(f"{name:<7}{variant:<21}{row['dtype']:<6}{row['step_s']:>8.3f}{speed:>8}{row['audio_s_per_s']:>10.1f}"
                  f"{row['frames_per_s']:>10.0f}{row['flop_s'] / 1e9:>9.1f}{row['mfu']:>7.1%}"
                  f"{row['peak_bytes'] / 2**30:>9.2f}", flush=True)  # fmt: skip
    if args.json:
        with open(args.json, "a", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
