"""Checkpoints written before the package moved into layers still load, and no checkpoint names a class path."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from tiny_run import tiny_fit

OLD = Path(__file__).parent / "data" / "ckpt-0.1.0-tiny-lora.ckpt"
# what a checkpoint may unpickle: containers and tensors, nothing of musiclit (whose modules move)
ALLOWED_GLOBALS = {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch.FloatStorage"}


def _globals(path: Path) -> set[str]:
    seen: set[str] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            seen.add(f"{module}.{name}")
            return super().find_class(module, name)

    class Module:
        Unpickler = Recorder
        load = pickle.load

    torch.load(path, map_location="cpu", weights_only=False, pickle_module=Module)
    return seen


def test_a_checkpoint_from_before_the_move_generates(tiny_model_dir):
    from musiclit.model.finetune import load_finetune

    ckpt = torch.load(OLD, map_location="cpu", weights_only=True)
    ft = load_finetune(model=str(tiny_model_dir), adapter=str(OLD))
    assert ft.kind == "lora"
    state = ft.model.state_dict()
    saved = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items()}
    assert saved and all(torch.equal(state[k], v) for k, v in saved.items())


def test_a_checkpoint_from_before_the_move_resumes(tiny_model_dir, tiny_dataset, tmp_path):
    cli = tiny_fit(tiny_model_dir, tiny_dataset, tmp_path / "run", "--config", "configs/base.yaml",
                   "--trainer.precision", "32-true", "--data.num_workers", "0", "--trainer.max_steps", "3",
                   "--ckpt_path", str(OLD))  # fmt: skip
    assert cli.trainer.global_step == 3


def test_checkpoints_hold_plain_data_only(tiny_model_dir, tiny_dataset, tmp_path):
    tiny_fit(tiny_model_dir, tiny_dataset, tmp_path / "run", "--trainer.max_steps", "1", "--trainer.logger", "false")
    for path in (OLD, tmp_path / "run" / "checkpoints" / "last.ckpt"):
        assert zipfile.is_zipfile(path)
        assert _globals(path) <= ALLOWED_GLOBALS, path
