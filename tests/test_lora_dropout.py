"""Shared LoRA dropout masks: one mask per input tensor, and the same gradients with and without gradient
checkpointing (which recomputes every layer in the backward from the same input tensors)."""

from __future__ import annotations

import pytest
import torch

from musiclit.model.lora import LoraSettings
from musiclit.train.module import MusicGenModule


def _grads(model_dir, gradient_checkpointing, share, seed=0):
    torch.manual_seed(0)  # same random LoRA init in both models
    lora = LoraSettings(init_lora_weights=False, dropout=0.3, target_modules="all-linear", lm_heads=True)
    m = MusicGenModule(str(model_dir), lora=lora, gradient_checkpointing=gradient_checkpointing,
                       share_lora_dropout=share)  # fmt: skip
    m.train()
    torch.manual_seed(1)
    codes = torch.randint(0, 2048, (2, 4, 12))
    fm = torch.ones(2, 12, dtype=torch.bool)
    text, mask = m.encode_text(["a calm piece", "bb"])
    torch.manual_seed(seed)
    loss = m(codes, fm, text, mask)[0]
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in m.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("share", [True, False])
def test_lora_dropout_gradients_are_the_same_with_checkpointing(tiny_model_dir, share):
    """LoRA dropout 0.3 on every decoder linear and the heads, decoder dropout on (train mode), same seed:
    checkpointing (which recomputes each layer in the backward) gives the gradients of the plain step."""
    loss0, plain = _grads(tiny_model_dir, False, share)
    loss1, ckpt = _grads(tiny_model_dir, True, share)
    assert torch.equal(loss0, loss1)
    differ = [k for k, g in plain.items() if not torch.allclose(g, ckpt[k], atol=1e-6, rtol=1e-5)]
    assert not differ, f"{len(differ)} of {len(plain)} adapter gradients differ, e.g. {differ[:3]}"
    # the dropout is really on: another seed gives other gradients
    _, other = _grads(tiny_model_dir, False, share, seed=1)
    assert any(not torch.allclose(g, other[k]) for k, g in plain.items())


def test_shared_dropout_draws_one_mask_per_input(tiny_model_dir):
    """With shared masks, q/k/v of self-attention see one dropout output, cross-attention k/v another, the K
    heads a third; without, every adapted module draws its own."""
    lora = LoraSettings(dropout=0.3, target_modules="all-linear", lm_heads=True)
    for share, distinct in ((True, 1), (False, 3)):
        m = MusicGenModule(str(tiny_model_dir), lora=lora, share_lora_dropout=share).train()
        outputs = {}
        layer = m.base.decoder.model.decoder.layers[0]
        for name in ("q_proj", "k_proj", "v_proj"):  # what each adapter reads: its lora_A's input
            lora_a = getattr(layer.self_attn, name).lora_A["default"]
            lora_a.register_forward_pre_hook(lambda mod, args, n=name, d=outputs: d.__setitem__(n, args[0]))
        text, mask = m.encode_text(["a"])
        m(torch.randint(0, 2048, (1, 4, 6)), torch.ones(1, 6, dtype=torch.bool), text, mask)
        masks = [(outputs[n] == 0) for n in ("q_proj", "k_proj", "v_proj")]
        assert len({tuple(x.flatten().tolist()) for x in masks}) == distinct, share
