"""The memory estimate: parameter counts against real modules, the 12 GB targets, a CPU measurement."""

from __future__ import annotations

import json

import pytest

from musiclit.estimate import GiB, Spec, estimate, load_configs, main, measure, spec_from_config, step_memory


def test_parameter_counts_match_the_real_module(tmp_path):
    from musiclit.model.lora import LoraSettings
    from musiclit.model.musicgen import tiny_config_dict
    from musiclit.module import MusicGenModule

    path = tmp_path / "config.json"
    path.write_text(json.dumps(tiny_config_dict(hidden_size=64, num_layers=3, ffn_dim=256)))
    config = {"model": {"pretrained": str(path), "lora": {"r": 4, "target_modules": "all-linear", "lm_heads": True}},
              "data": {"batch_size": 1, "segment_duration": 2.0}, "trainer": {"precision": "32-true"}}  # fmt: skip
    spec = spec_from_config(config)
    module = MusicGenModule(str(path), lora=LoraSettings(r=4, target_modules="all-linear", lm_heads=True))
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert spec.lora_params == trainable
    decoder = module.base.decoder
    weights = sum(p.numel() for n, p in decoder.named_parameters() if "lora_" not in n and "embed_positions" not in n)
    assert abs(spec.decoder_params - weights) / weights < 0.02


def test_12gb_targets_and_what_checkpointing_buys():
    medium = Spec(hidden=1536, layers=48, ffn=6144, batch=1, seconds=30, bf16=True, checkpointing=True)
    large = Spec(hidden=2048, layers=48, ffn=8192, batch=1, seconds=30, bf16=True, checkpointing=True)
    assert sum(estimate(medium).values()) <= 10 * GiB
    assert sum(estimate(large).values()) <= 12 * GiB
    no_ckpt = Spec(**{**medium.__dict__, "checkpointing": False})
    assert estimate(no_ckpt)["activations"] > 5 * estimate(medium)["activations"]
    no_cache = Spec(**{**medium.__dict__, "token_cache": False})
    assert "codec activations (no cache)" in estimate(no_cache)


def test_estimate_command_labels_estimates(capsys):
    assert main(["--config", "configs/base.yaml", "--config", "configs/musicgen-medium-lora.yaml"]) == 0
    out = capsys.readouterr().out
    assert "ESTIMATE" in out and "checkpointing on" in out and "fits" in out
    assert load_configs(["configs/base.yaml", "configs/musicgen-medium-lora.yaml"])["model"]["gradient_checkpointing"]


@pytest.mark.slow
def test_estimate_against_a_cpu_measurement(tmp_path):
    """Peak RSS increase over 3 real fp32 steps (after a warm-up) vs the estimate's step memory, within 1.5x."""
    from musiclit.model.musicgen import tiny_config_dict

    path = tmp_path / "config.json"
    path.write_text(json.dumps(tiny_config_dict(hidden_size=256, num_layers=4, num_heads=4, ffn_dim=1024)))
    config = {"model": {"pretrained": str(path), "lora": {"r": 16, "target_modules": "all-linear", "lm_heads": True,
                                                          "dropout": 0.05}},
              "data": {"batch_size": 2, "segment_duration": 8.0}, "trainer": {"precision": "32-true"}}  # fmt: skip
    parts = estimate(spec_from_config(config))
    predicted = step_memory(parts)
    measured = measure(config, steps=3)["peak_increase"]
    ratio = measured / predicted
    print(f"CPU check: predicted {predicted / 2**20:.0f} MiB, measured {measured / 2**20:.0f} MiB, ratio {ratio:.2f}")
    assert 1 / 1.5 < ratio < 1.5
