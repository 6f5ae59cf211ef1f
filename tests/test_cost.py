"""The cost of a run: FLOPs per token against torch's FLOP counter on a real model, tokens/hours/price by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musiclit.train.cost import GPUS, Arch, epoch_work, run_cost, sequence_flops

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
    """A 6-layer, 64-wide MusicGen config (random init): deep enough that the first layer is not everything."""
    from musiclit.model.musicgen import tiny_config_dict

    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(json.dumps(tiny_config_dict(hidden_size=64, num_layers=6, num_heads=4, ffn_dim=256)))
    return path


@pytest.mark.parametrize(
    "lora", ["qv", pytest.param("all-linear", marks=pytest.mark.slow), pytest.param(None, marks=pytest.mark.slow)]
)
def test_flops_per_sequence_match_torchs_flop_counter(small_config, lora):
    """The analytic count equals what torch.utils.flop_counter counts in the real forward + backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from musiclit.model.lora import LoraSettings
    from musiclit.train.module import MusicGenModule

    settings = None if lora is None else LoraSettings(r=4, dropout=0.0, target_modules=lora)
    module = MusicGenModule(str(small_config), lora=settings, frozen_dtype="float32").train()
    frames, text_tokens = 100, 12
    codes = torch.randint(0, 2048, (1, 4, frames))
    frame_mask = torch.ones(1, frames, dtype=torch.bool)
    text, text_mask = torch.randn(1, text_tokens, 32), torch.ones(1, text_tokens)
    # the math backend decomposes attention into matmuls the counter sees (the CPU flash kernel it does not)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as train:
        loss, _ = module(codes, frame_mask, text, text_mask)
        loss.backward()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as forward, torch.no_grad():
        module(codes, frame_mask, text, text_mask)
    arch = Arch(64, 6, 256, 4, None if settings is None else 4, () if settings is None else settings.leaves())
    predicted = sequence_flops(arch, frames + 3, text_tokens)
    # forward: exact but for the 32 -> 64 text projection (2 x 32 x 64 x 12 FLOPs, not counted by design)
    assert predicted["forward"] == pytest.approx(forward.get_total_flops(), rel=0.002)
    # training: within 2% (the first layer's frozen path needs no input gradient; not subtracted)
    assert predicted["train"] == pytest.approx(train.get_total_flops(), rel=0.02)
    # the rule of thumb the model encodes: LoRA ~ 2 x forward (4 x params), full ~ 3 x forward (6 x params)
    assert predicted["train"] / predicted["forward"] == pytest.approx(3.0 if lora is None else 2.1, abs=0.1)


def test_sequence_flops_by_hand():
    """d=4, one layer, FFN 8, one codebook, full fine-tune, 3 positions, 2 text tokens: counted on paper."""
    arch = Arch(hidden=4, layers=1, ffn=8, codebooks=1, lora_r=None, lora_targets=())
    # per position: self q,k,v,o 4*16 + cross q,o 2*16 + fc1,fc2 2*4*8 = 160, head 4*2048 = 8192 -> 8352
    # forward linear: 2 * (8352*3 + cross k,v on text 2*16*2) = 2 * 25120 = 50240
    # attention: self 4*L*L*d = 4*3*3*4 = 144, cross 4*L*Lt*d = 4*3*2*4 = 96 -> 240
    parts = sequence_flops(arch, 3, text_tokens=2)
    assert parts["forward"] == 50240 + 240
    # backward: weight + input grads of every linear (2 * 50240) minus the text side's input grads (2*64),
    # attention 2 x its forward
    assert parts["train"] == 50480 + (100480 - 128) + 480
    assert parts["recompute"] == 0
    assert sequence_flops(Arch(4, 1, 8, 1, None, (), checkpointing=True), 3, 2)["recompute"] == 50480


def _dataset(root: Path, clips: dict[str, tuple[float, str]]) -> Path:
    (root / "clips").mkdir(parents=True)
    lines = []
    for name, (seconds, split) in clips.items():
        # a short real WAV (the dataset check reads it); the durations come from the manifest
        sf.write(root / "clips" / f"{name}.wav", np.zeros(3200, dtype=np.float32), 32000)
        (root / "clips" / f"{name}.json").write_text(json.dumps({"description": f"song {name}"}))
        lines.append(json.dumps({"path": f"clips/{name}.wav", "duration": seconds, "sample_rate": 32000,
                                 "channels": 1, "song_id": name, "split": split}))  # fmt: skip
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_epoch_hours_and_price_by_hand(tmp_path):
    data = _dataset(tmp_path / "d", {"a": (30.0, "train"), "b": (45.0, "train"), "c": (12.0, "train"),
                                     "v": (20.0, "valid")})  # fmt: skip
    from musiclit.train.cost import dataset_durations

    train, valid = dataset_durations(data)
    arch = Arch(4, 1, 8, 1, None, ())
    work = epoch_work(arch, train, valid, segment=30.0, text_tokens=2)
    # 30 s crops at 50 Hz + the 3-position delay tail: 1503 + 1503 (45 s cropped) + 603; validation 1003
    assert (work.train_tokens, work.valid_tokens) == (3609, 1003)
    hand = sum(sequence_flops(arch, n, 2)["train"] for n in (1503, 1503, 603))
    hand += sequence_flops(arch, 1003, 2)["forward"]
    assert work.model_flops == work.hardware_flops == hand
    cost = run_cost(work, epochs=10, gpu="a40", utilization=0.5)
    hours = hand / (149.7e12 * 0.5) / 3600
    assert cost.hours_per_epoch == pytest.approx(hours)
    assert cost.hours == pytest.approx(10 * hours)
    assert cost.price == pytest.approx(10 * hours * 0.79)  # the seed's RunPod A40 rate
    assert cost.utilization_source.startswith("given")
    two = run_cost(work, epochs=10, gpu="a40", num_gpus=2, price_per_hour=1.0)
    assert two.utilization_source == "ASSUMED"
    assert two.hours == pytest.approx(10 * hand / (149.7e12 * two.utilization * 2) / 3600)
    assert two.price == pytest.approx(two.hours * 2 * 1.0)  # per GPU-hour
    assert run_cost(work, 1, "h100").price is None  # not in the seed's table: no invented price


def test_estimate_command_prints_the_cost(tmp_path):
    data = _dataset(tmp_path / "d", {f"s{i}": (30.0, "train") for i in range(9)} | {"v": (30.0, "valid")})
    args = [sys.executable, "-m", "musiclit", "estimate", "--config", "configs/base.yaml", "--config",
            "configs/musicgen-medium-lora.yaml", "--dataset", str(data), "--epochs", "20", "--gpu", "a40"]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "decoder tokens per epoch: 13,527 trained + 1,503 validated" in out.stdout  # 9 x 1503, 1 x 1503
    assert "ASSUMED" in out.stdout and "seed's table: RunPod A40 ~$0.79/h" in out.stdout
    assert "gradient checkpointing" in out.stdout
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("  a40 x 1:")]
    out2 = subprocess.run([*args, "--price-per-hour", "1.58", "--utilization", "0.35"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)  # fmt: skip
    (line2,) = [x for x in out2.stdout.splitlines() if x.startswith("  a40 x 1:")]
    price = float(line.split("$")[1].split()[0])
    assert float(line2.split("$")[1].split()[0]) == pytest.approx(2 * price, abs=0.011)  # twice the rate
    assert "ASSUMED" not in out2.stdout.split("a40 x 1:")[1]


def test_gpu_choices_of_the_command_are_the_cards_known():
    from musiclit.commands import estimate

    source = Path(estimate.__file__).read_text()
    for key in GPUS:
        assert f'"{key}"' in source
    assert source.count('"rtx3060", "a40", "a100-40gb", "a100-80gb", "h100"') == 1
    assert list(GPUS) == ["rtx3060", "a40", "a100-40gb", "a100-80gb", "h100"]
