"""Several processes (DDP, gloo on the CPU): the same training as one process with the same global batch,
a token cache built once, and per-rank randomness (each rank draws its own dropout masks)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_run import fit_args, read_steps

from musiclit.model.lora import LoraSettings
from musiclit.train.module import MusicGenModule

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def no_dropout_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with the decoder's own dropout at 0 (so that 1 and 2 processes can compute the same)."""
    folder = tmp_path_factory.mktemp("nodrop") / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["decoder"].update(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _run(model_dir, data, root, recorder, *extra):
    config = root.parent / f"{root.name}-callbacks.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f"trainer:\n  callbacks:\n    - class_path: tiny_run.StepRecorder\n      init_args: {{path: '{recorder}'}}\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    args = fit_args(model_dir, data, root, "--allow-import", "tiny_run", "--config", str(config),
                    "--trainer.max_steps", "3",
                    "--trainer.precision", "32-true", "--trainer.logger", "false",
                    "--trainer.num_sanity_val_steps", "0", "--data.bucket_by_length", "false",
                    "--data.cache_dir", str(root.parent / "cache"),
                    "--model.optimizer", "torch.optim.AdamW", "--model.optimizer.lr", "0.003",
                    "--model.lora.init_lora_weights", "false", *extra)  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "musiclit", *args], capture_output=True, text=True, timeout=900,
                         cwd=ROOT, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_processes_train_like_one_process_with_the_same_global_batch(no_dropout_model_dir, tiny_dataset, tmp_path):
    """2 processes x batch 2 == 1 process x batch 4: the same clips per step, the mean of the ranks' losses
    equals the one-process loss, the final adapters match; the cache is encoded once (one shard, no key twice),
    and each rank's step seed differs (rank 0 keeps the one-process seed)."""
    from safetensors.torch import load_file

    # equal only when every rank has as many loss tokens as the others: each rank's loss is its own mean
    # and DDP averages the ranks' gradients, so crops must not run past a clip's end (min_segment_ratio 1)
    no_drop = ("--model.cfg_dropout", "0", "--model.lora.dropout", "0", "--data.min_segment_ratio", "1.0")
    _run(no_dropout_model_dir, tiny_dataset, tmp_path / "two", tmp_path / "two-steps", "--data.batch_size", "2",
         "--trainer.devices", "2", "--trainer.strategy", "ddp", *no_drop)  # fmt: skip
    # the two-process run found an empty cache: one process encoded it (one shard, every clip once)
    indexes = list((tmp_path / "cache").rglob("shard-*.jsonl"))
    keys = [json.loads(line)["key"] for index in indexes for line in index.read_text().splitlines()]
    assert len(indexes) == 1 and len(keys) == len(set(keys)) == 12
    # the one-process run reads the same codes (encoding is not bit-stable across thread counts, which DDP on
    # a CPU lowers to one per process: the codec's float sums change and some nearest-codeword choices flip)
    _run(no_dropout_model_dir, tiny_dataset, tmp_path / "one", tmp_path / "one-steps", "--data.batch_size", "4",
         *no_drop)  # fmt: skip
    assert list((tmp_path / "cache").rglob("shard-*.jsonl")) == indexes
    one = read_steps(tmp_path / "one-steps")
    r0, r1 = read_steps(tmp_path / "two-steps", 0), read_steps(tmp_path / "two-steps", 1)
    assert len(one) == len(r0) == len(r1) == 3
    for a, b, c in zip(one, r0, r1, strict=True):
        # the global batch: rank r takes every second clip of the one-process batch
        assert a["index"] == [b["index"][0], c["index"][0], b["index"][1], c["index"][1]]
        assert abs(a["loss"] - (b["loss"] + c["loss"]) / 2) < 1e-5, (a["loss"], b["loss"], c["loss"])
        assert a["seed"] == b["seed"] != c["seed"]
    want = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    got = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    assert want.keys() == got.keys()
    worst = max(float((want[k] - got[k]).abs().max()) for k in want)
    assert worst < 1e-4, worst


def _masks_as_rank(module, rank, batch):
    """CFG keep mask and one LoRA dropout mask of a training step as rank ``rank`` draws them."""
    module._trainer = SimpleNamespace(global_rank=rank, fit_loop=SimpleNamespace(
        epoch_loop=SimpleNamespace(total_batch_idx=7)))  # fmt: skip
    seen = {}
    drop = module.base.decoder.model.decoder.layers[0].self_attn.q_proj.lora_dropout["default"]

    def record(mod, args, out):
        seen.setdefault("lora", out == 0)

    handle = drop.register_forward_hook(record)
    original = module.forward

    def capture(codes, frame_mask, text, text_mask):
        seen["cfg"] = text_mask.sum(-1) == 0
        return original(codes, frame_mask, text, text_mask)

    module.forward = capture
    try:
        torch.manual_seed(module._step_seed(7))
        module._batch_loss(batch, 0.5)
    finally:
        handle.remove()
        del module.forward
        module._trainer = None
    return seen["cfg"], seen["lora"]


def test_each_rank_draws_its_own_dropout_masks(tiny_model_dir):
    module = MusicGenModule(str(tiny_model_dir), lora=LoraSettings(dropout=0.5)).train()
    batch = {"codes": torch.randint(0, 2048, (16, 4, 6)), "frame_mask": torch.ones(16, 6, dtype=torch.bool),
             "captions": ["a b"] * 16}  # fmt: skip
    cfg0, lora0 = _masks_as_rank(module, 0, batch)
    cfg0b, lora0b = _masks_as_rank(module, 0, batch)
    cfg1, lora1 = _masks_as_rank(module, 1, batch)
    assert torch.equal(cfg0, cfg0b) and torch.equal(lora0, lora0b)  # keyed: the same rank draws the same
    assert not torch.equal(cfg0, cfg1) and not torch.equal(lora0, lora1)
