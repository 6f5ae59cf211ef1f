"""MusicGen's delay pattern, built explicitly, and the masked per-codebook loss.

Codebook ``k`` is shifted right by ``delay[k]`` steps (mono: ``[0, 1, 2, 3]``; stereo: left/right
interleaved, ``[0, 0, 1, 1, 2, 2, 3, 3]``). With a BOS step in front, a clip of ``T`` frames becomes a
sequence of ``T + max_delay + 1`` steps::

    step        0    1    2    3    4   ...
    codebook 0  B    c00  c01  c02  c03
    codebook 1  B    B    c10  c11  c12
    codebook 2  B    B    B    c20  c21

The decoder reads steps ``[0, L-1)`` and predicts steps ``[1, L)``. Positions the pattern leaves empty hold
the special token (= BOS = pad = codebook size) and carry no loss; so do frames that are padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def codebook_delays(num_codebooks: int, audio_channels: int = 1) -> list[int]:
    """Delay of each codebook: ``k`` for mono, ``k // 2`` for stereo (interleaved left/right)."""
    if audio_channels == 2:
        if num_codebooks % 2:
            raise ValueError(f"a stereo model needs an even number of codebooks, got {num_codebooks}")
        return [k // 2 for k in range(num_codebooks)]
    return list(range(num_codebooks))


def build_delay_pattern(
    codes: torch.Tensor, special_token: int, delays: list[int], frame_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay codec codes out in the delay pattern and return decoder inputs, labels and the loss mask.

    Args:
        codes: (B, K, T) integer codes.
        special_token: The BOS/pad id (codebook size).
        delays: Delay of each of the K codebooks.
        frame_mask: (B, T) bool, True on real (non-padding) frames; None means all real.

    Returns:
        ``(inputs, labels, mask)``, each (B, K, T + max(delays)): decoder input ids, target ids, and a bool
        mask that is True exactly where a target is a real code of a real frame.
    """
    bsz, num_cb, frames = codes.shape
    if len(delays) != num_cb:
        raise ValueError(f"got {len(delays)} delays for {num_cb} codebooks")
    length = frames + max(delays) + 1
    seq = torch.full((bsz, num_cb, length), special_token, dtype=torch.long, device=codes.device)
    valid = torch.zeros((bsz, num_cb, length), dtype=torch.bool, device=codes.device)
    real = torch.ones((bsz, frames), dtype=torch.bool, device=codes.device) if frame_mask is None else frame_mask
    for k, d in enumerate(delays):
        seq[:, k, 1 + d : 1 + d + frames] = codes[:, k]
        valid[:, k, 1 + d : 1 + d + frames] = real
    return seq[..., :-1], seq[..., 1:], valid[..., 1:]


def revert_delay_pattern(delayed: torch.Tensor, delays: list[int], frames: int) -> torch.Tensor:
    """Undo :func:`build_delay_pattern` on labels (or predictions aligned with labels).

    Args:
        delayed: (B, K, L) ids aligned with the labels of :func:`build_delay_pattern`.
        delays: Delay of each codebook.
        frames: Number of frames T to recover.

    Returns:
        (B, K, T) codes.
    """
    return torch.stack([delayed[:, k, d : d + frames] for k, d in enumerate(delays)], dim=1)


def masked_codebook_loss(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy per codebook over valid positions only, and its mean over codebooks.

    Args:
        logits: (B, K, L, V) scores.
        labels: (B, K, L) target ids.
        mask: (B, K, L) bool, True where the target counts.

    Returns:
        ``(loss, per_codebook)``: the scalar mean of the K codebook losses (equal weights) and the (K,)
        losses, each the mean CE over that codebook's valid positions in the whole batch.
    """
    vocab = logits.shape[-1]
    per_cb = torch.stack(
        [
            codebook_ce(logits[:, k].reshape(-1, vocab), labels[:, k].reshape(-1), mask[:, k].reshape(-1))
            for k in range(logits.shape[1])
        ]
    )
    return per_cb.mean(), per_cb


def codebook_ce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of one codebook over its valid positions.

    Args:
        logits: (N, V) scores (any float dtype; the loss is computed in float32).
        labels: (N,) target ids (the special token where ``mask`` is False).
        mask: (N,) bool, True where the target counts.

    Returns:
        Scalar: the sum of CE over valid positions divided by their number (0 when there are none).
    """
    target = labels.masked_fill(~mask, -100)  # the special token is not a class
    total = F.cross_entropy(logits.float(), target, ignore_index=-100, reduction="sum")
    return total / mask.sum().clamp(min=1)
