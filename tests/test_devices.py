"""GPU behaviour checked on the CPU: the precision a GPU gets, frozen dtypes, the text-state cache, where a
generator's weights live. The CUDA queries are mocked; the dtype logic runs on real CPU tensors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch


def _fake_gpu(monkeypatch: pytest.MonkeyPatch, major: int, minor: int, name: str) -> None:
    """Make torch.cuda describe one GPU of compute capability ``major.minor``; torch's own
    ``is_bf16_supported`` then runs unchanged on top of these queries (a bf16 tensor can be created on
    every CUDA GPU: pre-Ampere cards emulate bf16, which is what ``including_emulation`` is about)."""
    props = SimpleNamespace(major=major, minor=minor, name=name, total_memory=16 * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    monkeypatch.setattr(torch.version, "hip", None)


@pytest.mark.parametrize(
    ("capability", "name", "expected"),
    [
        ((7, 5), "Tesla T4", "16-mixed"),
        ((7, 0), "Tesla V100-SXM2-16GB", "16-mixed"),
        ((7, 5), "NVIDIA GeForce RTX 2080 Ti", "16-mixed"),
        ((8, 6), "NVIDIA GeForce RTX 3060", "bf16-mixed"),
        ((9, 0), "NVIDIA H100", "bf16-mixed"),
    ],
)
@pytest.mark.parametrize("accelerator", ["auto", "gpu", "cuda"])
def test_pre_ampere_gpus_train_in_fp16(monkeypatch, capability, name, expected, accelerator):
    from musiclit.train.cli import resolve_precision

    _fake_gpu(monkeypatch, *capability, name)
    # the trap: torch counts emulated bf16 as supported (True on every card above)
    assert torch.cuda.is_bf16_supported() is True
    precision, why = resolve_precision("bf16-mixed", accelerator)
    assert precision == expected
    assert (why is None) == (expected == "bf16-mixed")
    if why:
        assert "16-mixed" in why
    assert resolve_precision("32-true", accelerator) == ("32-true", None)  # explicit choices are kept


@pytest.fixture(scope="module")
def proj_config(tmp_path_factory):
    """A tiny config whose text width (24) differs from the decoder's (32): it has ``enc_to_dec_proj``."""
    import json

    from musiclit.model.musicgen import tiny_config_dict

    path = tmp_path_factory.mktemp("proj") / "config.json"
    path.write_text(json.dumps(tiny_config_dict(text_dim=24)))
    return path


def _attach(module, precision: str):
    """Attach a stand-in trainer that reports ``precision`` (what Lightning's trainer.precision says)."""
    module.trainer = SimpleNamespace(precision=precision)
    module.setup("fit")
    return module


@pytest.mark.parametrize(
    ("precision", "frozen"),
    [("16-mixed", torch.float16), ("bf16-mixed", torch.bfloat16), ("32-true", torch.float32)],
)
def test_frozen_weights_follow_the_autocast_dtype(proj_config, precision, frozen):
    """Under 16-mixed (a pre-Ampere GPU) the frozen weights are float16, as under bf16-mixed they are bf16:
    the estimate counts them at 2 bytes, and autocast would cast them to float16 on every matmul anyway."""
    from musiclit.model.lora import LoraSettings
    from musiclit.train.module import MusicGenModule

    module = _attach(MusicGenModule(str(proj_config), lora=LoraSettings(lm_heads=True)), precision)
    base = module.base
    layer = base.decoder.model.decoder.layers[0]
    assert layer.fc1.weight.dtype == frozen and layer.self_attn.q_proj.base_layer.weight.dtype == frozen
    assert base.decoder.model.decoder.embed_tokens[0].weight.dtype == frozen
    assert base.decoder.lm_heads[0].base_layer.weight.dtype == frozen
    assert base.enc_to_dec_proj.weight.dtype == frozen
    assert base.text_encoder.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == frozen
    assert base.text_encoder.shared.weight.dtype == frozen
    # norms, trainable weights and the codec stay float32
    assert layer.final_layer_norm.weight.dtype == torch.float32
    assert base.text_encoder.encoder.final_layer_norm.weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in module.parameters() if p.requires_grad)
    assert all(p.dtype == torch.float32 for p in base.audio_encoder.parameters())
    # an explicit frozen_dtype wins over the precision
    explicit = _attach(MusicGenModule(str(proj_config), frozen_dtype="float32"), precision)
    assert explicit.base.decoder.model.decoder.layers[0].fc1.weight.dtype == torch.float32


def test_text_state_cache_is_bounded_in_bytes_and_kept_in_host_memory(proj_config):
    from musiclit.train.module import MusicGenModule

    captions = [f"caption number {i} " + "x" * (i % 7) for i in range(40)]
    probe = MusicGenModule(str(proj_config), text_cache_bytes=0)
    sizes = {c: probe._encode_one(c).numel() * 4 for c in captions}
    assert not probe._text_cache  # 0 bytes: nothing kept
    budget = sum(sizes[c] for c in captions[-10:])  # room for about ten captions
    module = MusicGenModule(str(proj_config), text_cache_bytes=budget)
    fresh = {c: module.encode_text([c])[0][0] for c in captions}
    kept = list(module._text_cache)
    held = sum(t.numel() * t.element_size() for t in module._text_cache.values())
    assert held <= budget and module._text_cache_used == held
    assert kept == captions[-len(kept) :] and len(kept) >= 9  # the most recently used ones
    assert all(t.device.type == "cpu" for t in module._text_cache.values())
    again = module.encode_text(kept[:3])[0]
    for i, c in enumerate(kept[:3]):
        assert torch.equal(again[i, : fresh[c].shape[0]], fresh[c])  # bit-identical to a fresh encode
    assert list(module._text_cache)[-3:] == kept[:3]  # used again: now the most recent
    capped = MusicGenModule(str(proj_config), text_cache_size=5)
    capped.encode_text(captions[:12])
    assert len(capped._text_cache) == 5


def test_the_decoder_never_reaches_the_device_in_float32(tiny_model_dir, monkeypatch):
    """``generate`` on a 12 GB card: musicgen-large's float32 decoder (13 GB) must not be moved there and
    cast afterwards. The meta device stands in for the GPU; every module conversion (``.to``, ``.half``,
    ``.cuda``: all go through ``Module._apply``) is checked for a float32 decoder weight on it."""
    from musiclit.infer.sampler import Generator
    from musiclit.model.finetune import load_finetune

    ft = load_finetune(model=str(tiny_model_dir))
    seen: list[str] = []
    real_apply = torch.nn.Module._apply
    depth = [0]

    def tracking_apply(self, fn, *args, **kwargs):
        depth[0] += 1
        try:
            return real_apply(self, fn, *args, **kwargs)
        finally:
            depth[0] -= 1
            if depth[0] == 0:  # a whole conversion is done: where is the decoder now?
                for name, p in ft.base.decoder.named_parameters():
                    if p.device.type == "meta" and p.dtype == torch.float32:
                        seen.append(name)

    monkeypatch.setattr(torch.nn.Module, "_apply", tracking_apply)
    gen = Generator(ft, device="meta", dtype="float16")
    assert not seen, f"float32 decoder weights on the device, e.g. {seen[:3]}"
    decoder = list(gen.base.decoder.parameters())
    assert all(p.device.type == "meta" and p.dtype == torch.float16 for p in decoder)
    # the text encoder and the codec stay float32 (on the device)
    assert all(p.device.type == "meta" and p.dtype == torch.float32 for p in gen.base.text_encoder.parameters())
    assert all(p.device.type == "meta" and p.dtype == torch.float32 for p in gen.base.audio_encoder.parameters())
