"""GPU checks: run with ``make test-gpu`` (``pytest -m gpu -s tests/test_gpu.py``) on a machine with CUDA.

Asserted: dtypes on the GPU (frozen weights bf16 or fp16 by the precision ``fit`` picks, adapters and norms
fp32, the codec fp32, the generation decoder fp16 and never fp32 on the GPU), the text-state cache in pinned
host memory, windowed codec encoding on the GPU. Printed, not asserted: peak memory and step time of the
released architectures at random init (the 12 GB configs), next to the estimate. Skipped without CUDA.
``MUSICLIT_GPU_ARCHS`` (default ``small,medium,large``) picks the architectures.
"""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _native_bf16() -> bool:
    return torch.cuda.is_bf16_supported(including_emulation=False)


def test_the_precision_fit_picks_matches_the_card():
    from musiclit.train.cli import resolve_precision

    major, minor = torch.cuda.get_device_capability()
    precision, _ = resolve_precision("bf16-mixed", "auto")
    print(f"\n{torch.cuda.get_device_name()} (compute capability {major}.{minor}): fit trains in {precision}")
    assert precision == ("bf16-mixed" if major >= 8 else "16-mixed")


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_fit_on_the_gpu_keeps_the_dtypes(tiny_model_dir, tiny_dataset, tmp_path, precision):
    from lightning.pytorch.callbacks import Callback
    from tiny_run import tiny_fit

    if precision == "bf16-mixed" and not _native_bf16():
        pytest.skip("this GPU has no native bf16")

    class Record(Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))

    record = Record()
    cli = tiny_fit(tiny_model_dir, tiny_dataset, tmp_path, "--trainer.accelerator", "gpu", "--trainer.precision",
                   precision, "--trainer.max_steps", "3", "--trainer.logger", "false",
                   "--model.lora.lm_heads", "true", callbacks=[record])  # fmt: skip
    module = cli.model
    frozen = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    layer = module.base.decoder.model.decoder.layers[0]
    assert layer.fc1.weight.device.type == "cuda"
    assert layer.fc1.weight.dtype == frozen and layer.self_attn.q_proj.base_layer.weight.dtype == frozen
    assert module.base.text_encoder.shared.weight.dtype == frozen
    assert layer.final_layer_norm.weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 and p.is_cuda for p in module.parameters() if p.requires_grad)
    assert all(p.dtype == torch.float32 for p in module.base.audio_encoder.parameters())
    assert len(record.losses) == 3 and all(torch.isfinite(torch.tensor(record.losses)))
    cached = list(module._text_cache.values())
    assert cached and all(t.device.type == "cpu" and t.is_pinned() for t in cached)
    print(f"\n{precision}: losses {[round(x, 4) for x in record.losses]}")


def test_generation_never_holds_the_fp32_decoder_on_the_gpu(tmp_path):
    """The released small decoder at random init: the GPU's peak while loading stays below what the float32
    decoder alone would take; the decoder runs in float16, the text encoder and codec in float32."""
    import json
    import time

    from musiclit.infer.sampler import GenerationParams, Generator
    from musiclit.model.finetune import load_finetune
    from musiclit.model.musicgen import real_config_dict

    config = tmp_path / "small.json"
    config.write_text(json.dumps(real_config_dict("small")))
    ft = load_finetune(model=str(config))
    fp32_decoder = sum(p.numel() * 4 for p in ft.base.decoder.parameters())
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    gen = Generator(ft, device="cuda", dtype="float16")
    peak = torch.cuda.max_memory_allocated() - before
    assert all(p.is_cuda and p.dtype == torch.float16 for p in gen.base.decoder.parameters())
    assert all(p.dtype == torch.float32 for p in gen.base.text_encoder.parameters())
    assert all(p.dtype == torch.float32 for p in gen.base.audio_encoder.parameters())
    others = sum(p.numel() * 4 for part in (gen.base.text_encoder, gen.base.audio_encoder) for p in part.parameters())
    assert peak < fp32_decoder, (peak, fp32_decoder)
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = gen.generate(["warm folk with guitar"], GenerationParams(seconds=2.0, seed=0))
    torch.cuda.synchronize()
    assert result.audio.shape[-1] == 64000 and torch.isfinite(result.audio).all()
    print(
        f"\nsmall (random init), fp16 decoder: load peak {peak / 2**30:.2f} GiB (fp32 decoder alone: "
        f"{fp32_decoder / 2**30:.2f} GiB, fp32 text encoder + codec {others / 2**30:.2f} GiB); 2 s of audio in "
        f"{time.perf_counter() - start:.1f} s, generation peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    )


def test_windowed_codec_on_the_gpu():
    """EnCodec 32 kHz (real size, random init) on 3 minutes of audio: windows bound the GPU memory, and the
    embeddings match one call over the whole file to rounding."""
    from transformers import EncodecConfig, EncodecModel

    from musiclit.model.codec import encoder_windowed
    from musiclit.model.musicgen import REAL_CODEC

    torch.manual_seed(0)
    codec = EncodecModel(EncodecConfig(**REAL_CODEC)).cuda().eval()
    audio = 0.1 * torch.randn(1, 1, 180 * 32000, device="cuda")
    peaks = {}
    with torch.inference_mode():
        for name, window in (("whole", None), ("windowed", 30 * 32000)):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            out = encoder_windowed(codec, audio, window)
            torch.cuda.synchronize()
            peaks[name] = (torch.cuda.max_memory_allocated() - base, out)
    (whole_peak, whole), (win_peak, win) = peaks["whole"], peaks["windowed"]
    diff = float((win - whole).abs().max() / whole.abs().max())
    print(
        f"\ncodec on 180 s: peak {whole_peak / 2**30:.2f} GiB in one call, {win_peak / 2**30:.2f} GiB in 30 s "
        f"windows; max embedding difference {diff:.1e} of the scale"
    )
    assert win_peak < whole_peak / 3
    assert diff <= 1e-4


ARCHS = [a for a in os.environ.get("MUSICLIT_GPU_ARCHS", "small,medium,large").split(",") if a]


@pytest.mark.parametrize("arch", ARCHS)
def test_real_architectures_memory_and_step_time(arch):
    """The shipped LoRA configs on the released architectures at random init: measured peak memory and step
    time next to the estimate (printed, not asserted: figures for docs/benchmarks.md)."""
    from pathlib import Path

    from musiclit.train import estimate as est

    layers = ["configs/base.yaml"]
    own = Path(f"configs/musicgen-{arch}-lora.yaml")
    layers.append(str(own) if own.exists() else "configs/musicgen-small-lora.yaml")
    config = est.load_configs(layers)
    config.setdefault("model", {})["pretrained"] = f"facebook/musicgen-{arch}"
    spec = est.spec_from_config(config)
    predicted = sum(est.estimate(spec).values())
    torch.cuda.empty_cache()
    try:
        result = est.measure(config, steps=3)
    except torch.OutOfMemoryError:
        total = torch.cuda.get_device_properties(0).total_memory
        print(f"\n{arch} ({', '.join(layers)}): out of memory on this {total / 2**30:.0f} GiB GPU "
              f"(estimate {predicted / 2**30:.2f} GiB)")  # fmt: skip
        return
    finally:
        torch.cuda.empty_cache()
    print(f"\n{arch} ({', '.join(layers)}; batch {spec.batch} x {spec.seconds:g} s, checkpointing "
          f"{'on' if spec.checkpointing else 'off'}, {result['compute_dtype']}): peak {result['peak'] / 2**30:.2f} GiB "
          f"(estimate {predicted / 2**30:.2f} GiB), {result['step_seconds']:.3f} s/step on "
          f"{torch.cuda.get_device_name()}")  # fmt: skip
    assert result["peak"] > 0
