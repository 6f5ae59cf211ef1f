"""The memory estimate: parameter counts against real modules, the 12 GB targets, a CPU measurement."""

from __future__ import annotations

import json

import pytest
import torch

from musiclit.commands.estimate import main
from musiclit.train.estimate import (
    GiB,
    Spec,
    estimate,
    host_memory,
    load_configs,
    measure,
    spec_from_config,
    step_memory,
)


def _meta_model(arch: str, lora: dict | None):
    """A released architecture built by transformers on the meta device (shapes and dtypes, no memory)."""
    from transformers import MusicgenConfig, MusicgenForConditionalGeneration

    from musiclit.model.lora import LoraSettings, apply_lora, freeze_for_full_finetune
    from musiclit.model.musicgen import real_config_dict

    with torch.device("meta"):
        model = MusicgenForConditionalGeneration(MusicgenConfig.from_dict(real_config_dict(arch)))
    if lora is None:
        freeze_for_full_finetune(model)
        return model
    return apply_lora(model, LoraSettings(**lora))


def _torch_bytes(module) -> dict[str, int]:
    """Memory by role as torch accounts it (numel x element size of every tensor), in the estimate's names."""
    from musiclit.model.lora import base_model

    base = module.base if hasattr(module, "trainable_keys") else base_model(module)

    def size(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    frozen = [p for part in (base.decoder, base.enc_to_dec_proj) if part is not None for p in part.parameters()]
    return {
        "decoder weights (frozen)": size(p for p in frozen if not p.requires_grad),
        "decoder position table (fp32)": size(base.decoder.buffers()),
        "trainable weights + grads + AdamW": 4 * size(p for p in module.parameters() if p.requires_grad),
        "text encoder (frozen)": size(base.text_encoder.parameters()),
        "codec (fp32)": size(base.audio_encoder.parameters()) + size(base.audio_encoder.buffers()),
    }


@pytest.mark.parametrize("arch", ["small", "medium", "large"])
def test_parameter_counts_match_the_released_architectures(arch):
    """The analytic counts against transformers' own modules (built on the meta device: shapes only)."""
    from musiclit.model.lora import base_model

    lora = {"r": 8, "target_modules": "all-linear", "lm_heads": True}
    model = _meta_model(arch, lora)
    base = base_model(model)
    spec = spec_from_config({"model": {"pretrained": f"facebook/musicgen-{arch}", "lora": lora}})
    decoder = [p for n, p in base.decoder.named_parameters() if "lora_" not in n]
    assert spec.decoder_params == sum(p.numel() for p in decoder)
    assert spec.projection_params == sum(p.numel() for p in base.enc_to_dec_proj.parameters())
    assert spec.text_params == sum(p.numel() for p in base.text_encoder.parameters())
    codec = (*base.audio_encoder.parameters(), *base.audio_encoder.buffers())
    assert spec.codec_bytes == sum(t.numel() * (4 if t.is_floating_point() else 8) for t in codec)
    assert spec.lora_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    full = _meta_model(arch, None)
    full_spec = spec_from_config({"model": {"pretrained": f"facebook/musicgen-{arch}", "lora": None}})
    assert full_spec.lora_params == sum(p.numel() for p in full.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("precision", "frozen_dtype", "lora"),
    [
        ("16-mixed", "auto", {"r": 4, "target_modules": "all-linear", "lm_heads": True}),
        ("bf16-mixed", "float32", {"r": 4, "target_modules": "qv"}),
        ("16-mixed", "auto", None),
    ],
)
def test_weight_bytes_match_torch_accounting(tmp_path, precision, frozen_dtype, lora):
    """Every weight line of the estimate equals what torch holds after ``setup`` under that precision
    (the module casts frozen weights; a line counted at the wrong dtype is off by 2x)."""
    from types import SimpleNamespace

    from musiclit.model.lora import LoraSettings
    from musiclit.model.musicgen import tiny_config_dict
    from musiclit.train.module import MusicGenModule

    path = tmp_path / "config.json"
    path.write_text(json.dumps(tiny_config_dict(hidden_size=64, num_layers=3, ffn_dim=256, text_dim=48)))
    config = {"model": {"pretrained": str(path), "lora": lora, "frozen_dtype": frozen_dtype},
              "data": {"batch_size": 1, "segment_duration": 2.0}, "trainer": {"precision": precision}}  # fmt: skip
    module = MusicGenModule(str(path), lora=None if lora is None else LoraSettings(**lora), frozen_dtype=frozen_dtype)
    module.trainer = SimpleNamespace(precision=precision)  # what Lightning's trainer reports
    module.setup("fit")
    parts = estimate(spec_from_config(config))
    for name, value in _torch_bytes(module).items():
        assert parts[name] == value, name


@pytest.mark.parametrize(("arch", "budget"), [("medium", 10 * GiB), ("large", 12 * GiB)])
def test_12gb_targets_and_what_checkpointing_buys(arch, budget):
    """The shipped 12 GB configs: their weights as torch holds them (the real architecture on the meta
    device, frozen weights cast as ``setup`` casts them under bf16) equal the estimate's weight lines; the
    activation lines are checked against a measurement (test_estimate_against_a_cpu_measurement)."""
    from musiclit.model.lora import base_model, cast_frozen_weights

    config = load_configs(["configs/base.yaml", f"configs/musicgen-{arch}-lora.yaml"])
    spec = spec_from_config(config)
    model = _meta_model(arch, config["model"]["lora"])
    cast_frozen_weights(base_model(model), torch.bfloat16)
    parts = estimate(spec)
    for name, value in _torch_bytes(model).items():
        assert parts[name] == value, name
    assert sum(parts.values()) <= budget
    no_ckpt = Spec(**{**spec.__dict__, "checkpointing": False})
    assert estimate(no_ckpt)["activations"] > 5 * parts["activations"]
    no_cache = Spec(**{**spec.__dict__, "token_cache": False})
    assert "codec activations (no cache)" in estimate(no_cache)
    # the text-state cache lives in host memory: counted there, at its configured bound
    assert host_memory(spec) == {"text-state cache (pinned host memory, at most)": 256 * 2**20}
    assert "text-state cache" not in " ".join(parts)


def test_estimate_command_labels_estimates(capsys):
    assert main(["--config", "configs/base.yaml", "--config", "configs/musicgen-medium-lora.yaml"]) == 0
    out = capsys.readouterr().out
    assert "ESTIMATE" in out and "checkpointing on" in out and "fits" in out
    assert load_configs(["configs/base.yaml", "configs/musicgen-medium-lora.yaml"])["model"]["gradient_checkpointing"]


def test_estimate_expands_musiclit_variables_as_fit_does(tmp_path, monkeypatch, capsys):
    """A pod config names its base by ``${MUSICLIT_*}``: the estimate is that of the base the variable names
    (oracle: the same config with the name written out), and a non-MUSICLIT variable is refused."""
    from musiclit.errors import ConfigError

    pod = tmp_path / "pod.yaml"
    pod.write_text("model:\n  pretrained: ${MUSICLIT_BASE:-facebook/musicgen-small}\n")
    plain = tmp_path / "plain.yaml"
    base = ["--config", "configs/base.yaml", "--config", "configs/musicgen-medium-lora.yaml"]

    def printed(*configs: str) -> str:
        assert main([*base, *[a for c in configs for a in ("--config", c)]]) == 0
        return capsys.readouterr().out.split("\n", 1)[1]  # the first line names the config files

    for name in ("facebook/musicgen-small", "facebook/musicgen-large"):
        if name.endswith("large"):
            monkeypatch.setenv("MUSICLIT_BASE", name)
        plain.write_text(f"model:\n  pretrained: {name}\n")
        assert printed(str(pod)) == printed(str(plain))
    assert "2048 x 48 layers" in printed(str(pod))  # large, from the environment
    pod.write_text("model:\n  pretrained: ${HF_TOKEN}\n")
    with pytest.raises(ConfigError, match="HF_TOKEN"):
        load_configs([str(pod)])


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
