"""DoRA and rsLoRA (the LoRA tests again: checkpoint, exact resume, merge, peft round trip, strength) and several
adapters mixed at chosen strengths (= the base plus the weighted sum of their weight changes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tiny_run import tiny_fit

from musiclit.__main__ import main as cli_main
from musiclit.model.finetune import AdapterMismatchError, FineTuneError, load_finetune
from musiclit.model.lora import LoraSettings, apply_lora
from musiclit.model.mix import load_mix, pair_strengths
from musiclit.model.musicgen import build_char_tokenizer
from musiclit.train.module import MusicGenModule

DEC = "decoder.model.decoder.layers."


def _inputs(tokenizer, seed: int = 0) -> dict[str, torch.Tensor]:
    tokens = tokenizer(["bright funk guitar", "slow ambient pad"], padding=True, return_tensors="pt")
    codes = torch.randint(0, 2048, (2 * 4, 9), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"], "decoder_input_ids": codes}


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**inputs).logits


def _plain(model_dir: Path):
    from transformers import MusicgenForConditionalGeneration

    return MusicgenForConditionalGeneration.from_pretrained(model_dir).eval()


# ------------------------------------------------------------------ the effective change, computed independently


def _factors(weights: dict[str, torch.Tensor], module: str) -> dict[str, torch.Tensor]:
    """A, B (and DoRA's magnitude m) of one module from a peft adapter's saved weights."""
    out = {}
    for key, value in weights.items():
        stem = key.removeprefix("base_model.model.")
        if stem.startswith(module + ".lora_A"):
            out["A"] = value
        elif stem.startswith(module + ".lora_B"):
            out["B"] = value
        elif stem.startswith(module + ".lora_magnitude_vector"):
            out["m"] = value
    return out


def expected_change(weights: dict[str, torch.Tensor], config: dict, module: str, w: torch.Tensor) -> torch.Tensor:
    """The published definitions, written out here: LoRA adds s * B @ A with s = alpha / r (rsLoRA: alpha /
    sqrt(r)); DoRA's weight is m * (W + s B A) / ||W + s B A|| (norm of each output row)."""
    f = _factors(weights, module)
    r, alpha = config["r"], config["lora_alpha"]
    s = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    v = w.double() + s * f["B"].double() @ f["A"].double()
    if config.get("use_dora"):
        v = f["m"].double()[:, None] * v / v.norm(dim=1, keepdim=True)
    return v - w.double()


def _save_adapter(model_dir: Path, folder: Path, seed: int, **lora) -> Path:
    """A peft adapter with random (non-zero) weights: B random; DoRA magnitudes moved off ||W||."""
    from musiclit.model.musicgen import load_musicgen

    torch.manual_seed(seed)
    model = apply_lora(load_musicgen(str(model_dir)).model, LoraSettings(init_lora_weights=False, **lora))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.3 * torch.rand_like(p))
    model.peft_config["default"].base_model_name_or_path = str(model_dir)
    model.save_pretrained(str(folder))
    return folder


def _read_adapter(folder: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    return json.loads((folder / "adapter_config.json").read_text()), load_file(
        str(folder / "adapter_model.safetensors")
    )


# ------------------------------------------------------------------ DoRA / rsLoRA like LoRA


@pytest.mark.parametrize("variant", [{"use_dora": True}, {"use_rslora": True}, {"use_dora": True, "use_rslora": True}])
def test_merge_equals_adapter_and_the_published_formula(tiny_model_dir: Path, variant: dict) -> None:
    lora = LoraSettings(init_lora_weights=False, target_modules="all-linear", lm_heads=True, r=4, alpha=8, **variant)
    torch.manual_seed(0)
    module = MusicGenModule(str(tiny_model_dir), lora=lora).eval()
    if variant.get("use_dora"):
        with torch.no_grad():  # magnitudes off their init (||W||) so that the test sees them
            for name, p in module.model.named_parameters():
                if "lora_magnitude_vector" in name:
                    p.mul_(1 + 0.3 * torch.rand_like(p))
    inputs = _inputs(module.tokenizer)
    before = _logits(module.base, inputs)
    weights = {k: v.detach().clone() for k, v in module.model.state_dict().items() if "lora_" in k}
    config = {"r": 4, "lora_alpha": 8, **variant}
    base_state = _plain(tiny_model_dir).state_dict()
    merged = module.model.merge_and_unload(safe_merge=True)
    after = _logits(merged, inputs)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert (before - _logits(_plain(tiny_model_dir), inputs)).abs().max() > 1e-3
    for name in (f"{DEC}1.self_attn.q_proj", f"{DEC}0.fc2", "decoder.lm_heads.3"):
        want = expected_change(weights, config, name, base_state[name + ".weight"])
        got = merged.state_dict()[name + ".weight"].double() - base_state[name + ".weight"].double()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_rslora_scaling_is_alpha_over_sqrt_r(tiny_model_dir: Path) -> None:
    from peft.tuners.lora import LoraLayer

    for rs, want in ((False, 16 / 16), (True, 16 / 4)):
        module = MusicGenModule(str(tiny_model_dir), lora=LoraSettings(r=16, alpha=16, use_rslora=rs))
        scalings = {m.scaling["default"] for m in module.model.modules() if isinstance(m, LoraLayer)}
        assert scalings == {want}


def test_dora_trains_resumes_exactly_and_checkpoints_hold_only_its_weights(
    tiny_model_dir: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """DoRA + rsLoRA: 4 steps straight == 2 steps, crash, resume to 4; the checkpoint holds A, B and the
    magnitudes (one per output feature) and nothing frozen; the adapter round-trips through peft alone."""
    from lightning.pytorch.callbacks import Callback
    from peft import PeftModel

    class Losses(Callback):
        def __init__(self, crash_at: int | None = None) -> None:
            self.losses: list[float] = []
            self.crash_at = crash_at

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == self.crash_at:
                raise RuntimeError("simulated crash")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.losses.append(float(outputs["loss"]))

    args = ("--data.batch_size", "2", "--trainer.precision", "32-true", "--trainer.num_sanity_val_steps", "0",
            "--model.lora.use_dora", "true", "--model.lora.use_rslora", "true", "--model.lora.dropout", "0.1",
            "--model.lora.init_lora_weights", "false", "--model.optimizer.lr", "0.003", "--trainer.max_steps", "4",
            "--trainer.logger", "false", "--seed_everything", "0")  # fmt: skip
    straight = Losses()
    tiny_fit(tiny_model_dir, tiny_dataset, tmp_path / "a", *args, callbacks=[straight])
    first, second = Losses(crash_at=2), Losses()
    with pytest.raises(RuntimeError, match="simulated crash"):
        tiny_fit(tiny_model_dir, tiny_dataset, tmp_path / "b", *args, "--checkpoint.every_n_train_steps", "1",
                 callbacks=[first])  # fmt: skip
    cli = tiny_fit(tiny_model_dir, tiny_dataset, tmp_path / "b", *args, "--ckpt_path", "last", callbacks=[second])
    assert len(straight.losses) == 4 and first.losses + second.losses == straight.losses

    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)
    keys = set(ckpt["state_dict"])
    assert keys == cli.model.trainable_keys()
    magnitudes = [k for k in keys if "lora_magnitude_vector" in k]
    # q and v of self- and cross-attention in 2 layers: 8 adapted modules, each A, B and a magnitude
    assert len(magnitudes) == 8 and len(keys) == 24
    assert all(ckpt["state_dict"][k].shape == (32,) for k in magnitudes)
    assert not any("lora_" not in k for k in keys)

    # checkpoint -> load_finetune -> peft export -> peft alone on plain transformers: the same logits
    ft = load_finetune(None, str(tmp_path / "b" / "checkpoints" / "last.ckpt"))
    inputs = _inputs(ft.loaded.tokenizer)
    adapted = _logits(ft.model, inputs)
    from musiclit.infer.export import export

    folder = export(str(tmp_path / "b" / "checkpoints" / "last.ckpt"), "peft", tmp_path / "peft")
    config, weights = _read_adapter(folder)
    assert config["use_dora"] and config["use_rslora"]
    assert sum("lora_magnitude_vector" in k for k in weights) == 8
    alone = PeftModel.from_pretrained(_plain(tiny_model_dir), str(folder))
    torch.testing.assert_close(_logits(alone, inputs), adapted)
    torch.testing.assert_close(_logits(load_finetune(None, str(folder)).model, inputs), adapted)
    merged = export(str(folder), "merged", tmp_path / "merged")
    torch.testing.assert_close(_logits(_plain(merged), inputs), adapted, rtol=1e-5, atol=1e-5)
    assert (adapted - _logits(_plain(tiny_model_dir), inputs)).abs().max() > 1e-3


def test_dora_config_without_magnitudes_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = _save_adapter(tiny_model_dir, tmp_path / "plain", seed=0)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["use_dora"] = True
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterMismatchError, match=r"use_dora=True but module .* has no DoRA magnitude"):
        load_finetune(None, str(folder))


def test_dora_strength_scales_the_effective_change(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Strength s of a DoRA adapter = the base plus s times its effective change (not s inside the norm)."""
    from musiclit.infer.sampler import load_generator

    folder = _save_adapter(tiny_model_dir, tmp_path / "dora", seed=1, use_dora=True, target_modules="all-linear")
    config, weights = _read_adapter(folder)
    gen = load_generator(adapter=str(folder), device="cpu")
    enc, mask = gen.encode_text(["warm analog synth"])
    ids = torch.randint(0, 2048, (4, 12), generator=torch.Generator().manual_seed(1))
    oracle = _plain(tiny_model_dir)
    state = oracle.state_dict()
    with torch.no_grad():
        for key in list(state):
            module = key.removesuffix(".weight")
            if _factors(weights, module):
                state[key] += (0.5 * expected_change(weights, config, module, state[key])).float()
        oracle.load_state_dict(state)
        with gen.adapter_strength(0.5):
            hidden, _ = gen._forward(ids, enc, mask, None)
            got = torch.stack([h(hidden) for h in gen.base.decoder.lm_heads], 1)
        want_hidden = oracle.decoder.model.decoder(
            input_ids=ids, encoder_hidden_states=enc, encoder_attention_mask=mask
        ).last_hidden_state[:, -1]
        want = torch.stack([h(want_hidden) for h in oracle.decoder.lm_heads], 1)
        hidden1, _ = gen._forward(ids, enc, mask, None)
        full = torch.stack([h(hidden1) for h in gen.base.decoder.lm_heads], 1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (full - got).abs().max() > 1e-3  # the hooks are gone after the block: full strength again


# ------------------------------------------------------------------ several adapters at once


@pytest.fixture(scope="module")
def two_adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("mix")
    a = _save_adapter(tiny_model_dir, root / "a", seed=1, target_modules="attention", lm_heads=True)
    b = _save_adapter(tiny_model_dir, root / "b", seed=2, target_modules="all-linear", use_rslora=True, r=4)
    d = _save_adapter(tiny_model_dir, root / "d", seed=3, target_modules="qv", use_dora=True)
    return a, b, d


def _mixed_oracle(model_dir: Path, parts: list[tuple[Path, float]]):
    """The plain model with W + sum(s_i * change_i), each change from the published formula (not from peft)."""
    model = _plain(model_dir)
    state = model.state_dict()
    base = {k: v.clone() for k, v in state.items()}
    for folder, scale in parts:
        config, weights = _read_adapter(folder)
        for key in state:
            module = key.removesuffix(".weight")
            if _factors(weights, module):
                state[key] += (scale * expected_change(weights, config, module, base[key])).float()
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("pair", ["lora+rslora", "lora+dora"])
def test_two_adapters_mix_to_the_weighted_sum_of_their_changes(
    tiny_model_dir: Path, two_adapters: tuple[Path, Path, Path], pair: str
) -> None:
    a, b, d = two_adapters
    second = b if pair == "lora+rslora" else d
    ft = load_mix([str(a), str(second)], [0.7, 0.4])
    assert ft.kind == "mix" and ft.extra["scales"] == [0.7, 0.4]
    oracle = _mixed_oracle(tiny_model_dir, [(a, 0.7), (second, 0.4)])
    got, want, base = ft.model.state_dict(), oracle.state_dict(), _plain(tiny_model_dir).state_dict()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6)
    assert sum(not torch.equal(got[k], base[k]) for k in base if "lm_heads" in k) == 4  # adapter a's heads are in
    inputs = _inputs(ft.loaded.tokenizer)
    torch.testing.assert_close(_logits(ft.model, inputs), _logits(oracle, inputs), rtol=1e-5, atol=1e-5)
    # the strengths matter: another weighting is another model, and 1 + 0 is adapter a alone
    other = load_mix([str(a), str(second)], [0.4, 0.7])
    assert (_logits(other.model, inputs) - _logits(ft.model, inputs)).abs().max() > 1e-4
    only_a = load_mix([str(a), str(second)], [1.0, 0.0])
    torch.testing.assert_close(
        _logits(only_a.model, inputs), _logits(load_finetune(None, str(a)).model, inputs), rtol=1e-5, atol=1e-5
    )


def test_mix_exports_merged_and_as_one_peft_adapter(
    tiny_model_dir: Path, two_adapters: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from peft import PeftModel

    a, b, d = two_adapters
    oracle = _mixed_oracle(tiny_model_dir, [(a, 0.7), (b, 0.4)])
    inputs = _inputs(build_char_tokenizer())
    want = _logits(oracle, inputs)
    mix_args = ["--adapter", str(a), "--adapter", str(b), "--adapter-scale", "0.7", "--adapter-scale", "0.4"]
    assert cli_main(["export", *mix_args, "--format", "merged", "--out", str(tmp_path / "merged")]) == 0
    torch.testing.assert_close(_logits(_plain(tmp_path / "merged"), inputs), want, rtol=1e-5, atol=1e-5)
    marker = json.loads((tmp_path / "merged" / "musiclit_export.json").read_text())
    assert [s["scale"] for s in marker["source"]] == [0.7, 0.4]
    assert cli_main(["export", *mix_args, "--format", "peft", "--out", str(tmp_path / "peft")]) == 0
    config, _ = _read_adapter(tmp_path / "peft")
    assert config["r"] == 8 + 4 and not config["use_rslora"]
    stacked = PeftModel.from_pretrained(_plain(tiny_model_dir), str(tmp_path / "peft"))
    torch.testing.assert_close(_logits(stacked, inputs), want, rtol=1e-5, atol=1e-5)
    # a DoRA change is not a product of two matrices: no single peft adapter holds it
    rc = cli_main(
        ["export", "--adapter", str(a), "--adapter", str(d), "--format", "peft", "--out", str(tmp_path / "x")]
    )
    assert rc == 2 and "DoRA" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_mixing_checks_the_bases_and_the_strength_count(
    tiny_model_dir: Path, two_adapters: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    from musiclit.model.musicgen import create_tiny_model_folder

    a, _, _ = two_adapters
    other_base = create_tiny_model_folder(tmp_path / "other-base", seed=1)
    foreign = _save_adapter(other_base, tmp_path / "foreign", seed=4)
    with pytest.raises(AdapterMismatchError, match=r"foreign was trained on .*other-base.* adapters mix only on"):
        load_mix([str(a), str(foreign)], [0.5, 0.5])
    with pytest.raises(FineTuneError, match="2 --adapter-scale values for 3 --adapter"):
        pair_strengths(["x", "y", "z"], [0.1, 0.2])
    assert pair_strengths(["x", "y"], None) == (["x", "y"], [1.0, 1.0])
    assert pair_strengths(["x"], [0.3]) == (["x"], [0.3])


def test_generate_mixes_adapters_and_regenerates_from_json(
    tiny_model_dir: Path, two_adapters: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    import numpy as np
    import soundfile as sf

    a, b, _ = two_adapters
    out = tmp_path / "out"
    args = ["generate", "--adapter", str(a), "--adapter", str(b), "--adapter-scale", "0.7", "--adapter-scale",
            "0.4", "--prompt", "soft piano", "--seconds", "0.3", "--seed", "5", "--out", str(out)]  # fmt: skip
    assert cli_main(args) == 0
    meta = json.loads(next(out.glob("*.json")).read_text())
    assert meta["adapter_kind"] == "mix"
    assert [(Path(x["path"]).name, x["scale"]) for x in meta["adapters"]] == [("a", 0.7), ("b", 0.4)]
    wav, _ = sf.read(next(out.glob("*.wav")), dtype="float32")
    regen = tmp_path / "regen"
    assert cli_main(["generate", "--from-json", str(next(out.glob("*.json"))), "--out", str(regen)]) == 0
    np.testing.assert_array_equal(sf.read(next(regen.glob("*.wav")), dtype="float32")[0], wav)
