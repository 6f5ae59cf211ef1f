"""Likelihood at adapter scales: per-crop CE and KL against transformers' own forward pass (the oracle), and the
summary's arithmetic and intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musiclit.eval.likelihood import Likelihood, make_crops, score_crops, summarize
from musiclit.model.delay import build_delay_pattern


def _adapter(tiny_model_dir, folder, random_init: bool):
    from musiclit.model.lora import LoraSettings, apply_lora
    from musiclit.model.musicgen import load_musicgen

    torch.manual_seed(0)
    loaded = load_musicgen(str(tiny_model_dir))
    settings = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules="all-linear", lm_heads=True,
                            init_lora_weights=not random_init)  # fmt: skip
    model = apply_lora(loaded.model, settings)
    if random_init:  # peft's random init leaves B = 0 for some layers; make every update count
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.2)
    model.peft_config["default"].base_model_name_or_path = str(tiny_model_dir)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def crops():
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 2048, size=(4, n)) for n in (60, 45, 25)]
    return make_crops(clips, ["calm folk guitar", "fast techno", "calm folk guitar"], ["a", "b", "c"],
                      segment_frames=25, special_token=2048, min_frames=5)  # fmt: skip


def test_make_crops_covers_each_clip_and_masks_the_tail(crops):
    assert crops.codes.shape == (6, 4, 25)  # 60 -> 25 + 25 + 10, 45 -> 25 + 20, 25 -> 25
    assert crops.clip.tolist() == [0, 0, 0, 1, 1, 2]
    assert crops.frame_mask.sum(1).tolist() == [25, 25, 10, 25, 20, 25]
    assert (crops.codes[2, :, 10:] == 2048).all()


def _oracle(gen, crops, scale):
    """Per-crop summed CE (K,) and the (B, K, L, V) log-probs from transformers' full forward, crop by crop."""
    base = gen.base
    out_nll, out_logp = [], []
    for i in range(crops.codes.shape[0]):
        inputs, labels, valid = build_delay_pattern(
            crops.codes[i : i + 1], 2048, gen.delays, crops.frame_mask[i : i + 1]
        )
        tokens = gen.tokenizer([crops.captions[i]], return_tensors="pt")
        with torch.inference_mode(), gen.adapter_strength(scale):
            logits = base(**tokens, decoder_input_ids=inputs.reshape(-1, inputs.shape[-1])).logits  # (K, L, V)
        logp = torch.log_softmax(logits.float(), -1)
        picked = logp.gather(-1, labels[0].clamp(max=2047)[..., None])[..., 0]
        out_nll.append((-(picked * valid[0])).sum(-1).double().numpy())
        out_logp.append((logp, valid[0]))
    return np.stack(out_nll), out_logp


def test_scores_match_transformers_forward_at_every_scale(tiny_model_dir, tmp_path, crops):
    from musiclit.eval.evaluate import ScaledModels

    models = ScaledModels(_adapter(tiny_model_dir, tmp_path / "adapter", random_init=True), "cpu")
    gen = models.generator(1.0)
    lik = score_crops(models, crops, (0.0, 0.5, 1.0), batch_size=4)  # batches of 4 and 2: padding across batches
    oracles = {}
    for s in (0.0, 0.5, 1.0):
        nll, logps = _oracle(gen, crops, s)
        np.testing.assert_allclose(lik.nll[s], nll, rtol=2e-4)
        oracles[s] = logps
    assert not np.allclose(lik.nll[0.0], lik.nll[1.0], rtol=1e-3)  # the adapter changes the predictions
    # KL(P_tuned || P_base) summed over each crop's valid positions, per codebook
    kl = np.stack([
        ((t.exp() * (t - b)).sum(-1) * valid).sum(-1).double().numpy()
        for (t, valid), (b, _) in zip(oracles[1.0], oracles[0.0], strict=True)
    ])  # fmt: skip
    np.testing.assert_allclose(lik.kl, kl, rtol=2e-3, atol=1e-6)
    assert (lik.kl > 0).all()
    assert lik.tokens.sum() == crops.frame_mask.sum() * 4  # every real frame of every codebook, once


def test_a_zero_adapter_gains_nothing_and_moves_nothing(tiny_model_dir, tmp_path, crops):
    from musiclit.eval.evaluate import ScaledModels

    models = ScaledModels(_adapter(tiny_model_dir, tmp_path / "zero", random_init=False), "cpu")  # B = 0: the base
    summary = summarize(score_crops(models, crops, (0.0, 1.0)), n_resamples=200)
    assert summary["gain"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert summary["kl"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert summary["scales"]["0"]["ce"] == pytest.approx(summary["scales"]["1"]["ce"], abs=1e-6)


def test_summary_arithmetic_and_interval():
    rng = np.random.default_rng(3)
    tokens = rng.integers(50, 100, size=(8, 2)).astype(float)
    base = tokens * rng.uniform(7.0, 7.5, size=(8, 2))
    tuned = base - tokens * np.array([0.5, 0.1])  # exactly 0.5 and 0.1 nats per token better
    lik = Likelihood([0.0, 1.0], {0.0: base, 1.0: tuned}, tokens, tokens * 0.2, np.array([0, 0, 1, 1, 2, 2, 3, 3]))
    s = summarize(lik, n_resamples=500)
    assert s["scales"]["0"]["ce_per_codebook"] == pytest.approx(list(base.sum(0) / tokens.sum(0)))
    assert s["scales"]["1"]["ppl_per_codebook"] == pytest.approx(list(np.exp(tuned.sum(0) / tokens.sum(0))))
    assert s["gain"]["value"] == pytest.approx(0.3)
    assert s["gain"]["low"] == pytest.approx(0.3) and s["gain"]["high"] == pytest.approx(0.3)  # no variation
    assert [g["value"] for g in s["gain_per_codebook"]] == pytest.approx([0.5, 0.1])
    assert s["kl"]["value"] == pytest.approx(0.2)
    assert (s["clips"], s["crops"]) == (4, 8)
    noisy = Likelihood([0.0, 1.0], {0.0: base, 1.0: base - tokens * rng.normal(0.2, 0.3, size=(8, 2))}, tokens,
                       tokens * 0.0, lik.clip)  # fmt: skip
    n = summarize(noisy, n_resamples=500)["gain"]
    assert n["low"] < n["value"] < n["high"]


def test_a_full_finetune_is_scored_with_interpolated_weights(tiny_model_dir, tiny_dataset, tmp_path, crops):
    """A full fine-tune checkpoint: scale 0 is the base model itself (transformers' forward of the plain base
    as the oracle), scale 1 the checkpoint, 0.5 weights halfway."""
    from tiny_run import tiny_fit

    from musiclit.eval.evaluate import ScaledModels
    from musiclit.infer.sampler import Generator
    from musiclit.model.finetune import load_finetune

    tiny_fit(tiny_model_dir, tiny_dataset, tmp_path / "full", "--trainer.max_steps", "2", "--model.lora", "null",
             "--model.optimizer.lr", "0.01", "--trainer.logger", "false")  # fmt: skip
    models = ScaledModels(tmp_path / "full" / "checkpoints" / "last.ckpt", "cpu")
    assert models.kind == "full"
    lik = score_crops(models, crops, (0.0, 0.5, 1.0))
    base = Generator(load_finetune(str(tiny_model_dir)), "cpu")
    np.testing.assert_allclose(lik.nll[0.0], _oracle(base, crops, 1.0)[0], rtol=2e-4)
    tuned = Generator(load_finetune(None, str(tmp_path / "full" / "checkpoints" / "last.ckpt")), "cpu")
    np.testing.assert_allclose(lik.nll[1.0], _oracle(tuned, crops, 1.0)[0], rtol=2e-4)
    assert not np.allclose(lik.nll[0.0], lik.nll[1.0], rtol=1e-4)
    assert (lik.kl > 0).all()
