"""Exports: merge equivalence, peft round trip, a merged folder loaded without musiclit/peft, audiocraft layout."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tiny_run import tiny_fit

from musiclit.__main__ import main as cli_main
from musiclit.infer.export import ExportError, export, import_audiocraft
from musiclit.model.finetune import load_finetune


@pytest.fixture(scope="module")
def proj_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose text width (24) differs from the decoder's (32): it has ``enc_to_dec_proj``."""
    from musiclit.model.musicgen import create_tiny_model_folder

    return create_tiny_model_folder(tmp_path_factory.mktemp("tiny-proj"), seed=0, text_dim=24)


@pytest.fixture(scope="module")
def ckpt(proj_model_dir: Path, tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA checkpoint (non-zero init, attention targets + lm_heads) after two training steps."""
    root = tmp_path_factory.mktemp("export-run") / "run"
    tiny_fit(
        proj_model_dir, tiny_dataset, root, "--trainer.max_steps", "2", "--checkpoint.every_n_train_steps", "1",
        "--model.lora.init_lora_weights", "false", "--model.lora.target_modules", "attention",
        "--model.lora.lm_heads", "true", "--trainer.logger", "false",
    )  # fmt: skip
    return root / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def exports(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("exports")
    with pytest.MonkeyPatch.context() as mp:
        # the tiny text encoder is no model audiocraft can load (tests/test_audiocraft.py: export refuses
        # it); these tests check the LM's layout, so it is declared t5-base here
        mp.setattr("musiclit.model.audiocraft.audiocraft_text_encoder", lambda config: "t5-base")
        return {fmt: export(str(ckpt), fmt, out / fmt) for fmt in ("peft", "merged", "audiocraft")}


def _inputs(tokenizer: object) -> dict[str, torch.Tensor]:
    tokens = tokenizer(["bright funk guitar", "slow ambient pad"], padding=True, return_tensors="pt")  # type: ignore[operator]
    codes = torch.randint(0, 2048, (2 * 4, 9), generator=torch.Generator().manual_seed(0))
    return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"], "decoder_input_ids": codes}


def _logits(model: object, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits  # type: ignore[operator]


def test_merged_logits_equal_base_plus_adapter(ckpt: Path, exports: dict[str, Path], proj_model_dir: Path) -> None:
    from transformers import MusicgenForConditionalGeneration

    ft = load_finetune(None, str(ckpt))
    assert ft.kind == "lora"
    inputs = _inputs(ft.loaded.tokenizer)
    adapted = _logits(ft.model.eval(), inputs)
    merged = _logits(MusicgenForConditionalGeneration.from_pretrained(exports["merged"]).eval(), inputs)
    base = _logits(MusicgenForConditionalGeneration.from_pretrained(proj_model_dir).eval(), inputs)
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5)
    assert (adapted - base).abs().max() > 1e-3  # the adapter changes the output: the test can fail


def test_peft_adapter_round_trip(ckpt: Path, exports: dict[str, Path], proj_model_dir: Path) -> None:
    import json

    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import MusicgenForConditionalGeneration

    folder = exports["peft"]
    assert {p.name for p in folder.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(proj_model_dir)
    model = PeftModel.from_pretrained(MusicgenForConditionalGeneration.from_pretrained(proj_model_dir), str(folder))
    ckpt_state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    saved = load_file(str(folder / "adapter_model.safetensors"))
    assert len(saved) == len(ckpt_state) > 0
    for key, value in ckpt_state.items():
        peft_key = key[len("model.") :].replace(".default.weight", ".weight")
        assert torch.equal(saved[peft_key], value)
    ft = load_finetune(None, str(ckpt))
    inputs = _inputs(ft.loaded.tokenizer)
    torch.testing.assert_close(_logits(model.eval(), inputs), _logits(ft.model.eval(), inputs))


def test_merged_folder_loads_without_musiclit_or_peft(exports: dict[str, Path], tmp_path: Path) -> None:
    folder = exports["merged"]
    expected = _logits(
        __import__("transformers").MusicgenForConditionalGeneration.from_pretrained(folder).eval(),
        inputs := _inputs(__import__("transformers").AutoTokenizer.from_pretrained(folder)),
    )
    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import sys
        # as if neither package were installed (both are in this venv): None in sys.modules makes an import
        # fail and importlib.util.find_spec report the package missing
        sys.modules["peft"] = None
        sys.modules["musiclit"] = None
        for name in ("musiclit", "peft"):
            try:
                __import__(name)
            except ImportError:
                pass
            else:
                raise SystemExit(name + " could be imported")
        import torch
        from transformers import MusicgenForConditionalGeneration, pipeline
        folder = {str(folder)!r}
        model = MusicgenForConditionalGeneration.from_pretrained(folder).eval()
        with torch.no_grad():
            logits = model(**torch.load({str(tmp_path / "inputs.pt")!r})).logits
        torch.save(logits, {str(tmp_path / "logits.pt")!r})
        pipe = pipeline("text-to-audio", model=folder, device="cpu")
        out = pipe("bright funk guitar", forward_params={{"max_new_tokens": 20, "do_sample": True}})
        assert out["sampling_rate"] == 32000, out["sampling_rate"]
        assert out["audio"].shape[-1] > 0 and abs(out["audio"]).max() > 0
        print("ok", out["audio"].shape)
        """
    )
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ok" in proc.stdout
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected)


def _expected_audiocraft(
    hf: dict[str, torch.Tensor], layers: int, codebooks: int, hidden: int
) -> dict[str, torch.Tensor]:
    """The documented mapping (recipe.md), written out independently of musiclit's code."""
    dec = "decoder.model.decoder."
    out = {
        "out_norm.weight": hf[dec + "layer_norm.weight"],
        "out_norm.bias": hf[dec + "layer_norm.bias"],
        "condition_provider.conditioners.description.output_proj.weight": hf["enc_to_dec_proj.weight"],
        "condition_provider.conditioners.description.output_proj.bias": hf["enc_to_dec_proj.bias"],
    }
    for k in range(codebooks):
        out[f"emb.{k}.weight"] = hf[f"{dec}embed_tokens.{k}.weight"]
        out[f"linears.{k}.weight"] = hf[f"decoder.lm_heads.{k}.weight"]
    for i in range(layers):
        src, dst = f"{dec}layers.{i}.", f"transformer.layers.{i}."
        for hf_attn, ac_attn in (("self_attn", "self_attn"), ("encoder_attn", "cross_attention")):
            q, k_, v = (hf[f"{src}{hf_attn}.{n}_proj.weight"] for n in "qkv")
            fused = torch.zeros(3 * hidden, hidden)
            fused[:hidden], fused[hidden : 2 * hidden], fused[2 * hidden :] = q, k_, v
            out[f"{dst}{ac_attn}.in_proj_weight"] = fused
            out[f"{dst}{ac_attn}.out_proj.weight"] = hf[f"{src}{hf_attn}.out_proj.weight"]
        out[f"{dst}linear1.weight"] = hf[f"{src}fc1.weight"]
        out[f"{dst}linear2.weight"] = hf[f"{src}fc2.weight"]
        for ac_norm, hf_norm in (("norm1", "self_attn_layer_norm"), ("norm_cross", "encoder_attn_layer_norm"),
                                 ("norm2", "final_layer_norm")):  # fmt: skip
            for p in ("weight", "bias"):
                out[f"{dst}{ac_norm}.{p}"] = hf[f"{src}{hf_norm}.{p}"]
    return out


def test_audiocraft_layout_matches_documented_mapping(exports: dict[str, Path]) -> None:
    from transformers import MusicgenForConditionalGeneration

    folder = exports["audiocraft"]
    pkg = torch.load(folder / "state_dict.bin", map_location="cpu", weights_only=True)
    merged = MusicgenForConditionalGeneration.from_pretrained(exports["merged"]).state_dict()
    expected = _expected_audiocraft(merged, layers=2, codebooks=4, hidden=32)
    assert set(pkg["best_state"]) == set(expected)
    for key, value in expected.items():
        assert torch.equal(pkg["best_state"][key], value), key
    cfg = pkg["xp.cfg"]
    assert cfg["dataset"]["segment_duration"] == 30
    assert cfg["lm_model"] == "transformer_lm"
    assert cfg["codebooks_pattern"] == {"modeling": "delay", "delay": {"delays": [0, 1, 2, 3], "flatten_first": 0,
                                                                       "empty_initial": 0}}  # fmt: skip
    lm = cfg["transformer_lm"]
    assert (lm["dim"], lm["num_heads"], lm["num_layers"], lm["n_q"], lm["card"]) == (32, 4, 2, 4, 2048)
    assert lm["dim"] * lm["hidden_scale"] == 64
    assert not lm["bias_proj"]
    assert not lm["bias_ff"]
    assert not lm["bias_attn"]
    assert lm["norm_first"]
    assert cfg["conditioners"]["description"]["model"] == "t5"
    assert cfg["fuser"]["cross"] == ["description"]
    assert cfg["sample_rate"] == 32000
    assert cfg["channels"] == 1
    assert cfg["compression_model"] == "encodec"
    codec = torch.load(folder / "compression_state_dict.bin", map_location="cpu", weights_only=True)
    assert codec["pretrained"] == "facebook/encodec_32khz"


def test_audiocraft_export_then_import_is_identical(
    exports: dict[str, Path], proj_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import MusicgenForConditionalGeneration

    out = import_audiocraft(exports["audiocraft"], str(proj_model_dir), tmp_path / "imported")
    imported = MusicgenForConditionalGeneration.from_pretrained(out).state_dict()
    merged = MusicgenForConditionalGeneration.from_pretrained(exports["merged"]).state_dict()
    assert set(imported) == set(merged)
    for key, value in merged.items():
        assert torch.equal(imported[key], value), key
    # importing again onto the same folder is refused
    assert cli_main(["import", str(exports["audiocraft"]), "--base", str(proj_model_dir), "--out", str(out)]) == 2


def test_exports_never_overwrite_and_are_atomic(
    ckpt: Path, exports: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    target = exports["peft"]
    before = (target / "adapter_model.safetensors").stat().st_mtime_ns
    assert cli_main(["export", str(ckpt), "--format", "peft", "--out", str(target)]) == 2
    assert "already exists (use --force" in capsys.readouterr().err
    assert (target / "adapter_model.safetensors").stat().st_mtime_ns == before
    # a crash half way leaves nothing that looks like an export
    calls = {"n": 0}
    real_save = torch.save

    def crash_on_second(obj: object, f: object, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", crash_on_second)
    monkeypatch.setattr("musiclit.model.audiocraft.audiocraft_text_encoder", lambda config: "t5-base")
    with pytest.raises(OSError, match="disk full"):
        export(str(ckpt), "audiocraft", tmp_path / "ac")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert cli_main(["export", str(ckpt), "--format", "peft", "--out", str(target), "--force"]) == 0


def test_export_and_import_errors_name_the_file(tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match=r"empty: no state_dict\.bin"):
        import_audiocraft(tmp_path / "empty", "x.json", tmp_path / "out")
    assert cli_main(["export", str(tmp_path / "missing.ckpt"), "--format", "merged", "--out", str(tmp_path / "o")]) == 2
    assert "missing.ckpt: no such checkpoint" in capsys.readouterr().err
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert cli_main(["export", str(bad), "--format", "peft", "--out", str(tmp_path / "o")]) == 2
    assert "bad.ckpt: cannot read the checkpoint" in capsys.readouterr().err
