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
