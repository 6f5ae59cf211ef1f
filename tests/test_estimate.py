"""The memory estimate: parameter counts against real modules, the 12 GB targets, a CPU measurement."""

from __future__ import annotations

import json

import pytest

from musiclit.commands.estimate import main
from musiclit.train.estimate import GiB, Spec, estimate, load_configs, measure, spec_from_config, step_memory


def test_parameter_counts_match_the_real_module(tmp_path):
    from musiclit.model.lora import LoraSettings
    from musiclit.model.musicgen import tiny_config_dict
    from musiclit.train.module import MusicGenModule

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
@pytest.mark.parametrize(
    ("dims", "lora", "data", "checkpointing"),
    [
        # the configuration the overhead factors were measured on
        ((256, 4, 1024), {"r": 16, "target_modules": "all-linear", "lm_heads": True}, (2, 8.0), False),
        # held out: other widths, depths, lengths, batch, LoRA targets, checkpointing
        ((384, 3, 1536), {"r": 8, "target_modules": "qv"}, (1, 6.0), False),
        ((192, 6, 768), {"r": 8, "target_modules": "attention"}, (3, 5.0), True),
    ],
)
def test_estimate_against_a_cpu_measurement(tmp_path, dims, lora, data, checkpointing):
    """Peak RSS increase over 3 real fp32 steps (after a warm-up) vs the estimate's step memory.

    A memory planner must not under-predict (a run that was told it fits would crash): the measurement may
    exceed the estimate by at most 25%; over-predicting wastes memory, not a run: at most 2x.
    """
    from musiclit.model.musicgen import tiny_config_dict

    hidden, layers, ffn = dims
    path = tmp_path / "config.json"
    path.write_text(json.dumps(tiny_config_dict(hidden_size=hidden, num_layers=layers, num_heads=4, ffn_dim=ffn)))
    config = {
        "model": {"pretrained": str(path), "lora": {**lora, "dropout": 0.05}, "gradient_checkpointing": checkpointing},
        "data": {"batch_size": data[0], "segment_duration": data[1]},
        "trainer": {"precision": "32-true"},
    }
    parts = estimate(spec_from_config(config))
    predicted = step_memory(parts)
    measured = measure(config, steps=3)["peak_increase"]
    ratio = measured / predicted
    print(f"CPU check: predicted {predicted / 2**20:.0f} MiB, measured {measured / 2**20:.0f} MiB, ratio {ratio:.2f}")
    assert 0.5 < ratio < 1.25
