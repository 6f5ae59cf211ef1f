"""A checkpoint records where its base model really is (absolute path and hashes), so export and generate
work from any working folder, a replaced base is caught, and a missing one is reported with the paths tried."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from tiny_run import tiny_fit

from musiclit.__main__ import main as cli_main
from musiclit.model.finetune import FineTuneError, load_finetune

OLD = Path(__file__).parent / "data" / "ckpt-0.1.0-tiny-lora.ckpt"


def test_a_checkpoint_finds_its_base_from_any_working_folder(tiny_dataset, tmp_path, monkeypatch, capsys):
    from musiclit.model.musicgen import create_tiny_model_folder

    project = tmp_path / "project"
    base = create_tiny_model_folder(project / "outputs" / "demo" / "base-model", seed=0)
    monkeypatch.chdir(project)
    run = tmp_path / "elsewhere" / "a" / "b" / "run"  # the checkpoint's folders do not contain the project
    tiny_fit("outputs/demo/base-model", tiny_dataset, run, "--trainer.max_steps", "1", "--trainer.logger", "false")
    ckpt = run / "checkpoints" / "last.ckpt"
    record = torch.load(ckpt, map_location="cpu", weights_only=True)["musiclit"]["base"]
    assert record["source"] == "outputs/demo/base-model" and record["path"] == str(base.resolve())
    assert {"config.json", "model.safetensors"} <= set(record["files"])

    monkeypatch.chdir(tmp_path / "elsewhere")  # another working folder: the relative path means nothing here
    assert load_finetune(None, str(ckpt)).base_source == str(base.resolve())
    assert cli_main(["export", str(ckpt), "--format", "peft", "--out", "peft"]) == 0

    # another model at the same path: not the base it was trained on
    shutil.rmtree(base)
    create_tiny_model_folder(base, seed=1)
    with pytest.raises(FineTuneError, match=r"at .*base-model is not the one it was trained on \(.* has changed"):
        load_finetune(None, str(ckpt))
    assert load_finetune(str(base), str(ckpt)).kind == "lora"  # --model: the user's choice

    # gone: the message names every path tried
    shutil.rmtree(base)
    with pytest.raises(FineTuneError, match="base model 'outputs/demo/base-model' is not found") as err:
        load_finetune(None, str(ckpt))
    assert str(base.resolve()) in str(err.value) and str(tmp_path / "elsewhere" / "outputs") in str(err.value)
    assert cli_main(["export", str(ckpt), "--format", "peft", "--out", "peft2"]) == 2
    assert "tried" in capsys.readouterr().err


def test_an_old_checkpoint_names_the_paths_it_tried_and_loads_with_model(tiny_model_dir, tmp_path):
    """A 0.1.0 checkpoint (no base record) whose base folder is gone: the error names where it looked."""
    ckpt = torch.load(OLD, map_location="cpu", weights_only=True)
    assert "base" not in ckpt["musiclit"]
    gone = tmp_path / "gone" / "model"  # (the file's own /tmp/oldckpt/model may exist on the machine that made it)
    ckpt["hyper_parameters"]["pretrained"] = str(gone)
    torch.save(ckpt, tmp_path / "old.ckpt")
    with pytest.raises(FineTuneError, match=rf"'{gone}' is not found \(tried {gone}\)"):
        load_finetune(None, str(tmp_path / "old.ckpt"))
    assert load_finetune(str(tiny_model_dir), str(OLD)).kind == "lora"
