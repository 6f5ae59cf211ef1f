"""The optimiser's parameter groups: what weight decay applies to (checked by what AdamW really does)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from musiclit.model.lora import LoraSettings
from musiclit.train.module import MusicGenModule

LR, DECAY = 0.1, 0.1


def _step_with_zero_gradients(module):
    """One AdamW step with every gradient 0: Adam's update is then exactly 0, so a weight changes only by
    decoupled weight decay, by the factor (1 - lr x decay) of its group. Returns (before, after)."""
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    before = {k: p.detach().clone() for k, p in module.named_parameters() if p.requires_grad}
    for p in module.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    after = {k: p.detach().clone() for k, p in module.named_parameters() if p.requires_grad}
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in module.parameters() if p.requires_grad)  # each once
    return before, after


def _decayed(before, after, name):
    if torch.equal(before[name], after[name]):
        return False
    assert torch.allclose(after[name], before[name] * (1 - LR * DECAY), atol=1e-7), name
    return True


def test_full_finetune_does_not_decay_norms_biases_or_embeddings(tiny_model_dir):
    module = MusicGenModule(str(tiny_model_dir), lora=None, scheduler=None,
                            optimizer=partial(torch.optim.AdamW, lr=LR, weight_decay=DECAY))  # fmt: skip
    before, after = _step_with_zero_gradients(module)
    kinds = {"norm": [], "bias": [], "embed": [], "matmul": []}
    for name in before:
        if name.endswith("bias"):  # (MusicGen's linears have none: these are the norms' biases)
            kinds["bias"].append(name)
        elif "layer_norm" in name:
            kinds["norm"].append(name)
        elif "embed_tokens" in name:
            kinds["embed"].append(name)
        else:
            kinds["matmul"].append(name)
    assert all(kinds.values()), {k: len(v) for k, v in kinds.items()}
    for kind in ("norm", "bias", "embed"):
        assert not any(_decayed(before, after, n) for n in kinds[kind]), kind
    assert all(_decayed(before, after, n) for n in kinds["matmul"])  # q/k/v/out, fc1/fc2, lm_heads


@pytest.mark.parametrize(("lora_decay", "decays"), [(None, False), (0.1, True)])
def test_lora_weights_are_not_decayed_unless_asked(tiny_model_dir, lora_decay, decays):
    """LoRA A/B: weight decay pulls the fine-tune towards the base model; off by default, `lora.weight_decay`."""
    lora = (
        LoraSettings(init_lora_weights=False)
        if lora_decay is None
        else LoraSettings(init_lora_weights=False, weight_decay=lora_decay)
    )
    module = MusicGenModule(str(tiny_model_dir), lora=lora, scheduler=None,
                            optimizer=partial(torch.optim.AdamW, lr=LR, weight_decay=DECAY))  # fmt: skip
    before, after = _step_with_zero_gradients(module)
    assert before and all("lora_" in n for n in before)
    assert all(_decayed(before, after, n) == decays for n in before)
