"""Short samples from the model being trained (the SampleLogger callback).

This goes through transformers' own ``generate`` on the training model as it is (its device, dtypes and
adapters untouched), under the trainer's autocast. Generation for users (long audio, adapter strength,
exact regeneration, fast KV-cached sampling) is :mod:`musiclit.infer.sampler`, which owns its model.
"""

from __future__ import annotations

from typing import Any

import torch


@torch.no_grad()
def sample_audio(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    seconds: float,
    frame_rate: int,
    guidance_scale: float = 3.0,
    top_k: int = 250,
    temperature: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """Generate ``seconds`` of audio for each prompt with classifier-free guidance.

    Args:
        model: ``MusicgenForConditionalGeneration`` (adapters may be injected).
        tokenizer: Its text tokenizer.
        prompts: One text per sample.
        seconds: Length of each sample.
        frame_rate: Codec frames per second.
        guidance_scale: CFG scale (1 disables guidance).
        top_k: Sample from the k most likely tokens.
        temperature: Softmax temperature.
        seed: Seed of the sampling (same seed, same audio).

    Returns:
        (B, C, S) float audio at the codec's sample rate.
    """
    from musiclit.model.delay import codebook_delays

    dec = model.config.decoder
    delays = codebook_delays(dec.num_codebooks, getattr(dec, "audio_channels", 1))
    device = next(model.parameters()).device
    tokens = tokenizer(prompts, padding=True, return_tensors="pt").to(device)
    modes = [(m, m.training) for m in model.modules()]  # restored one by one: the frozen encoders stay in eval
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            audio = model.generate(
                **tokens,
                do_sample=True,
                guidance_scale=guidance_scale if guidance_scale != 1.0 else None,
                top_k=top_k,
                temperature=temperature,
                # the delay pattern spends `max_delay` extra steps before the last frame is complete
                max_new_tokens=max(1, int(round(seconds * frame_rate))) + max(delays),
                use_cache=True,
            )
    finally:
        for module, training in modes:
            module.training = training
    return audio.float().cpu()
