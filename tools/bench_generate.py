"""Generation speed: musiclit's sampler vs transformers' own ``generate`` on the same model and settings.

    python tools/bench_generate.py                       # tiny + small architecture, CPU (and CUDA if present)
    python tools/bench_generate.py --arch tiny --seconds 4 --batch 1 4

Models are built at random init (no download): "tiny" is the test model; "small" is the released small
decoder (hidden 1024 x 24 layers, 4 x 2048 codebooks) with the tiny text encoder and codec, which is fine
for throughput because generation time is the decoder's. Both paths sample (top-k 250, temperature 1) with
CFG 3.0 and the KV cache; the codec decode is included in both. Prints audio seconds per second and
generated tokens (codebook entries) per second; the best of ``--repeats`` runs, the two paths alternated.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(arch: str, device: str, dtype: str):
    from musiclit.infer.sampler import Generator
    from musiclit.model.finetune import FineTune
    from musiclit.model.musicgen import build_from_config, describe, real_decoder_config, tiny_config_dict

    config = tiny_config_dict()
    if arch != "tiny":
        config["decoder"].update(real_decoder_config(arch))
    model, tokenizer = build_from_config(config, seed=0)
    loaded = describe(model, tokenizer)
    return Generator(FineTune(model, loaded, "plain", f"random-init {arch}"), device=device, dtype=dtype)


def bench(gen, batch: int, seconds: float, repeats: int) -> dict[str, float]:
    import torch

    from musiclit.infer.sampler import GenerationParams

    prompts = [f"prompt number {i}" for i in range(batch)]
    params = GenerationParams(seconds=seconds, window_seconds=30.0)
    frames = round(seconds * gen.frame_rate)
    tokens = gen.tokenizer(prompts, padding=True, return_tensors="pt").to(gen.device)
    sync = torch.cuda.synchronize if gen.device.type == "cuda" else (lambda: None)
    best = {"musiclit": float("inf"), "transformers": float("inf")}
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        gen.generate(prompts, params, batch_size=batch)
        sync()
        best["musiclit"] = min(best["musiclit"], time.perf_counter() - t)
        torch.manual_seed(0)
        t = time.perf_counter()
        with torch.inference_mode():
            gen.base.generate(**tokens, do_sample=True, top_k=250, temperature=1.0, guidance_scale=3.0,
                              max_new_tokens=frames + 3, use_cache=True)  # fmt: skip
        sync()
        best["transformers"] = min(best["transformers"], time.perf_counter() - t)
    out = {}
    for name, elapsed in best.items():
        out[f"{name}_s"] = elapsed
        out[f"{name}_audio_s_per_s"] = batch * seconds / elapsed
        out[f"{name}_tok_per_s"] = batch * frames * gen.num_codebooks / elapsed
    return out


def main() -> int:
    import torch

    from musiclit.io import quiet_libraries

    quiet_libraries()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["tiny", "small"], choices=["tiny", "small", "medium", "large"])
    p.add_argument("--device", nargs="+", default=None, help="default: cpu, plus cuda when available")
    p.add_argument("--batch", nargs="+", type=int, default=[1, 4])
    p.add_argument("--seconds", type=float, default=None, help="audio per sample (default: tiny 4 s, others 1 s)")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    header = (
        f"{'arch':<6} {'device':<6} {'dtype':<8} {'batch':>5} {'sec':>4} | {'musiclit audio-s/s':>18} {'tok/s':>8} | "
        f"{'transformers audio-s/s':>22} {'tok/s':>8} | speed-up"
    )
    print(header)
    for arch in args.arch:
        for device in devices:
            gen = build(arch, device, "auto")
            seconds = args.seconds or (4.0 if arch == "tiny" else 1.0)
            for batch in args.batch:
                r = bench(gen, batch, seconds, args.repeats)
                print(
                    f"{arch:<6} {device:<6} {str(gen.dtype).replace('torch.', ''):<8} {batch:>5} {seconds:>4g} | "
                    f"{r['musiclit_audio_s_per_s']:>18.3f} {r['musiclit_tok_per_s']:>8.0f} | "
                    f"{r['transformers_audio_s_per_s']:>22.3f} {r['transformers_tok_per_s']:>8.0f} | "
                    f"{r['transformers_s'] / r['musiclit_s']:.2f}x",
                    flush=True,
                )
            del gen
    return 0


if __name__ == "__main__":
    sys.exit(main())
