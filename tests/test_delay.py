"""Delay pattern and masked loss, checked against transformers' own pattern and a loop-based oracle."""

from __future__ import annotations

import math

import pytest
import torch

from musiclit.model.delay import build_delay_pattern, codebook_delays, masked_codebook_loss, revert_delay_pattern

SPECIAL = 2048


def test_pattern_matches_transformers(tiny_model_dir):
    """Positions of the special token agree with MusicgenForCausalLM.build_delay_pattern_mask."""
    from transformers import MusicgenForConditionalGeneration

    model = MusicgenForConditionalGeneration.from_pretrained(tiny_model_dir)
    bsz, k, frames = 2, 4, 7
    codes = torch.randint(0, 2048, (bsz, k, frames))
    inputs, labels, mask = build_delay_pattern(codes, SPECIAL, codebook_delays(k))
    full = torch.cat([inputs, labels[..., -1:]], dim=-1)  # BOS + whole delayed sequence
    # transformers: feed BOS only and ask for the pattern of the whole length; -1 marks "to predict"
    bos = torch.full((bsz * k, 1), SPECIAL)
    _, pattern = model.decoder.build_delay_pattern_mask(bos, SPECIAL, max_length=full.shape[-1])
    pattern = pattern.reshape(bsz, k, -1)
    assert torch.equal(pattern == -1, full != SPECIAL)
    assert torch.equal(full[..., 1:] != SPECIAL, mask)


def test_every_frame_of_every_codebook_is_a_target():
    """No codebook loses its last frames to the pattern (a known bug when the pattern is cut to T)."""
    codes = torch.randint(0, 2048, (3, 4, 11))
    _, labels, mask = build_delay_pattern(codes, SPECIAL, codebook_delays(4))
    assert mask.sum(dim=-1).eq(11).all()
    assert torch.equal(revert_delay_pattern(labels, codebook_delays(4), 11), codes)
    # labels hold the special token exactly where the mask is off
    assert torch.equal(labels == SPECIAL, ~mask)


def test_inputs_are_labels_shifted_by_one():
    codes = torch.randint(0, 2048, (1, 4, 5))
    inputs, labels, _ = build_delay_pattern(codes, SPECIAL, codebook_delays(4))
    assert inputs.shape == labels.shape == (1, 4, 5 + 3)
    assert torch.equal(inputs[..., 1:], labels[..., :-1])
    assert inputs[..., 0].eq(SPECIAL).all()


def test_stereo_delays_interleave():
    assert codebook_delays(8, audio_channels=2) == [0, 0, 1, 1, 2, 2, 3, 3]
    codes = torch.randint(0, 2048, (1, 8, 6))
    _, labels, mask = build_delay_pattern(codes, SPECIAL, codebook_delays(8, 2))
    assert labels.shape[-1] == 6 + 3
    assert torch.equal(revert_delay_pattern(labels, codebook_delays(8, 2), 6), codes)
    assert mask.sum(-1).eq(6).all()
    with pytest.raises(ValueError, match="even number"):
        codebook_delays(7, audio_channels=2)


def test_padding_frames_carry_no_loss():
    codes = torch.randint(0, 2048, (2, 4, 6))
    frame_mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    _, _, mask = build_delay_pattern(codes, SPECIAL, codebook_delays(4), frame_mask)
    assert mask[0].sum() == 24 and mask[1].sum() == 16
    for k in range(4):  # the padded frames 4 and 5 of item 1 sit at positions 4+k, 5+k
        assert not mask[1, k, 4 + k] and not mask[1, k, 5 + k] and mask[1, k, 3 + k]


def _loop_loss(logits, labels, mask):
    """Oracle: per codebook, average -log softmax over valid positions, one position at a time."""
    per_cb = []
    bsz, k, length, _ = logits.shape
    for c in range(k):
        total, count = 0.0, 0
        for b in range(bsz):
            for t in range(length):
                if mask[b, c, t]:
                    row = logits[b, c, t].double()
                    total += float(torch.logsumexp(row, 0) - row[labels[b, c, t]])
                    count += 1
        per_cb.append(total / count)
    return sum(per_cb) / k, per_cb


def test_masked_loss_matches_loop_oracle():
    torch.manual_seed(0)
    bsz, k, frames, vocab = 3, 4, 5, 2048
    codes = torch.randint(0, vocab, (bsz, k, frames))
    frame_mask = torch.ones(bsz, frames, dtype=torch.bool)
    frame_mask[2, 3:] = False
    _, labels, mask = build_delay_pattern(codes, SPECIAL, codebook_delays(k), frame_mask)
    logits = torch.randn(bsz, k, labels.shape[-1], vocab)
    loss, per_cb = masked_codebook_loss(logits, labels, mask)
    want, want_cb = _loop_loss(logits, labels, mask)
    assert math.isclose(float(loss), want, rel_tol=1e-5)
    assert torch.allclose(per_cb.double(), torch.tensor(want_cb, dtype=torch.float64), rtol=1e-5)


def test_loss_depends_on_every_batch_item_and_ignores_masked_logits():
    torch.manual_seed(1)
    codes = torch.randint(0, 2048, (2, 4, 4))
    _, labels, mask = build_delay_pattern(codes, SPECIAL, codebook_delays(4))
    logits = torch.randn(2, 4, labels.shape[-1], 2048)
    base, _ = masked_codebook_loss(logits, labels, mask)
    changed = logits.clone()
    changed[1, :, 2] += 5 * torch.randn(4, 2048)  # item 1 (not item 0) at a valid step
    assert not torch.isclose(masked_codebook_loss(changed, labels, mask)[0], base)
    ignored = logits.clone()
    ignored[~mask] = 1e4 * torch.randn(int((~mask).sum()), 2048)  # scores where only padding is expected
    assert torch.equal(masked_codebook_loss(ignored, labels, mask)[0], base)
