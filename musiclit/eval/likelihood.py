"""How much better does the fine-tune predict held-out music? Per-codebook cross-entropy at adapter scales.

On the validation crops (tokens from the token cache, full captions, no dropout, as the validation loop
sees them) the decoder is run at each adapter scale (0 = the base model, 0.5, 1 = the fine-tune); each
codebook's cross-entropy over its valid positions (the training loss's mask: delay pattern and padding) is
summed per crop. The same pass gives the mean KL divergence ``KL(P_tuned || P_base)`` of the next-token
distributions at every valid position: how far the adapter moves the model's predictions (0: it changes
nothing, whatever the loss says).

Uncertainty: crops of one clip are not independent, so the bootstrap resamples validation CLIPS (with
all their crops); the statistic is the token-weighted mean, as the loss itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from musiclit.eval.metrics import Interval, bootstrap_ci
from musiclit.model.delay import build_delay_pattern
from musiclit.model.loss import decoder_hidden, pad_text_states


@dataclass
class Crops:
    """Validation crops: codes, masks, captions, and the clip each came from.

    Attributes:
        codes: (N, K, T) long codes (the special token on padding frames).
        frame_mask: (N, T) bool, True on real frames.
        captions: One caption per crop.
        clip: (N,) index of the clip of each crop.
        clip_names: Name of each clip.
    """

    codes: torch.Tensor
    frame_mask: torch.Tensor
    captions: list[str]
    clip: np.ndarray
    clip_names: list[str]


def make_crops(
    clips: Sequence[np.ndarray],
    captions: Sequence[str],
    names: Sequence[str],
    segment_frames: int,
    special_token: int,
    min_frames: int = 1,
    max_crops_per_clip: int | None = None,
) -> Crops:
    """Cut each clip's (K, T) codes into consecutive crops of ``segment_frames`` from its start.

    The first crop of each clip is exactly the validation loop's crop; the following ones cover the rest of
    the clip (a shorter last crop is padded and masked; one under ``min_frames`` real frames is dropped).
    """
    codes, masks, caps, owner = [], [], [], []
    for i, (clip, caption) in enumerate(zip(clips, captions, strict=True)):
        total = clip.shape[1]
        starts = list(range(0, max(1, total), segment_frames))
        if max_crops_per_clip is not None:
            starts = starts[:max_crops_per_clip]
        for start in starts:
            piece = np.asarray(clip[:, start : start + segment_frames], dtype=np.int64)
            if piece.shape[1] < min(min_frames, total) or piece.shape[1] == 0:
                continue
            full = np.full((clip.shape[0], segment_frames), special_token, dtype=np.int64)
            full[:, : piece.shape[1]] = piece
            mask = np.zeros(segment_frames, dtype=bool)
            mask[: piece.shape[1]] = True
            codes.append(full)
            masks.append(mask)
            caps.append(caption)
            owner.append(i)
    if not codes:
        raise ValueError("no validation crops (empty clips)")
    return Crops(
        torch.from_numpy(np.stack(codes)), torch.from_numpy(np.stack(masks)), caps, np.array(owner), list(names)
    )


def text_states(base: Any, tokenizer: Any, captions: Sequence[str], device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Text-encoder states (B, Lt, Dt) and mask (B, Lt), each caption encoded on its own (as in training)."""
    states = []
    for caption in captions:
        tokens = tokenizer([caption], return_tensors="pt", truncation=True).to(device)
        with torch.inference_mode():
            states.append(base.text_encoder(**tokens).last_hidden_state[0])
    return pad_text_states(states)


@dataclass
class Likelihood:
    """Per-crop sums at each adapter scale.

    Attributes:
        scales: The adapter scales evaluated.
        nll: {scale: (N, K) summed negative log-likelihood in nats}.
        tokens: (N, K) valid positions per crop and codebook.
        kl: (N, K) summed KL(P_tuned || P_base) in nats (tuned = the largest scale, base = scale 0).
        clip: (N,) clip index of each crop.
    """

    scales: list[float]
    nll: dict[float, np.ndarray]
    tokens: np.ndarray
    kl: np.ndarray
    clip: np.ndarray


def score_crops(
    scaled: Any,
    crops: Crops,
    scales: Sequence[float] = (0.0, 0.5, 1.0),
    batch_size: int = 4,
    progress: Any = None,
) -> Likelihood:
    """Cross-entropy sums per crop and codebook at each scale, and the KL between scale 0 and the largest.

    Args:
        scaled: A :class:`~musiclit.eval.evaluate.ScaledModels` (``generator(scale)`` and ``strength(scale)``).
        crops: From :func:`make_crops`.
        scales: Adapter scales (0 must be among them for the KL).
        batch_size: Crops per forward pass.
        progress: Called with the number of crops done after each batch (a progress bar's ``update``).
    """
    scales = sorted({float(s) for s in scales})
    top = scales[-1]
    n, k = crops.codes.shape[0], crops.codes.shape[1]
    nll = {s: np.zeros((n, k)) for s in scales}
    tokens = np.zeros((n, k))
    kl = np.zeros((n, k))
    for first in range(0, n, batch_size):
        sl = slice(first, first + batch_size)
        hidden: dict[float, torch.Tensor] = {}
        for s in scales:
            gen = scaled.generator(s)
            codes = crops.codes[sl].to(gen.device)
            mask = crops.frame_mask[sl].to(gen.device)
            inputs, labels, valid = build_delay_pattern(codes, gen.special_token, gen.delays, mask)
            text, text_mask = text_states(gen.base, gen.tokenizer, crops.captions[sl], gen.device)
            with torch.inference_mode(), scaled.strength(s):
                hidden[s] = decoder_hidden(gen.base, inputs, text, text_mask)
        tokens[sl] = valid.sum(-1).cpu().numpy()
        for cb in range(k):
            logp: dict[float, torch.Tensor] = {}
            for s in scales:
                gen = scaled.generator(s)
                with torch.inference_mode(), scaled.strength(s):
                    logits = gen.base.decoder.lm_heads[cb](hidden[s]).float()
                logp[s] = torch.log_softmax(logits, dim=-1)  # (B, L, V)
                target = labels[:, cb].clamp(max=logits.shape[-1] - 1)
                picked = logp[s].gather(-1, target[..., None])[..., 0]
                nll[s][sl, cb] = (-(picked * valid[:, cb])).sum(-1).double().cpu().numpy()
            if 0.0 in logp:
                p_top = logp[top].exp()
                div = (p_top * (logp[top] - logp[0.0])).sum(-1)  # (B, L)
                kl[sl, cb] = (div * valid[:, cb]).sum(-1).double().cpu().numpy()
            del logp
        if progress is not None:
            progress(min(batch_size, n - first))
    return Likelihood(scales, nll, tokens, kl, crops.clip)


def _per_clip(values: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Sum crop rows into clip rows: (N, ...) -> (n_clips, ...)."""
    out = np.zeros((int(clip.max()) + 1, *values.shape[1:]))
    np.add.at(out, clip, values)
    return out


def summarize(lik: Likelihood, n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The numbers ``evaluate`` reports, JSON-ready.

    * per scale: each codebook's CE (nats per token) and perplexity, and their mean over codebooks (the
      training loss's equal weighting);
    * ``gain``: CE(base) - CE(tuned) in nats (mean over codebooks; positive = the fine-tune predicts the
      held-out music better), with a bootstrap interval over validation clips; also per codebook;
    * ``kl``: mean KL(P_tuned || P_base) per position (mean over codebooks), with its interval.
    """
    top = lik.scales[-1]
    tok = _per_clip(lik.tokens, lik.clip)  # (C, K)
    per_scale: dict[str, Any] = {}
    for s in lik.scales:
        per_cb = lik.nll[s].sum(0) / np.maximum(lik.tokens.sum(0), 1)
        per_scale[f"{s:g}"] = {
            "ce": float(per_cb.mean()),
            "ce_per_codebook": [float(v) for v in per_cb],
            "ppl_per_codebook": [float(np.exp(v)) for v in per_cb],
        }
    out: dict[str, Any] = {
        "scales": per_scale,
        "crops": int(lik.tokens.shape[0]),
        "clips": int(tok.shape[0]),
        "tokens": int(lik.tokens.sum()),
    }
    if 0.0 in lik.nll and top != 0.0:
        stacked = np.stack([_per_clip(lik.nll[0.0], lik.clip), _per_clip(lik.nll[top], lik.clip), tok], axis=1)

        def gain(sample: np.ndarray, cb: int | None = None) -> float:
            tokens = np.maximum(sample[:, 2].sum(0), 1)
            per_cb = (sample[:, 0].sum(0) - sample[:, 1].sum(0)) / tokens
            return float(per_cb.mean() if cb is None else per_cb[cb])

        interval: Interval = bootstrap_ci(stacked, gain, n_resamples=n_resamples, seed=seed)
        out["gain"] = interval.as_dict()
        out["gain_per_codebook"] = [
            bootstrap_ci(stacked, lambda x, cb=cb: gain(x, cb), n_resamples=n_resamples, seed=seed).as_dict()
            for cb in range(tok.shape[1])
        ]
        kl_stack = np.stack([_per_clip(lik.kl, lik.clip), tok], axis=1)

        def mean_kl(sample: np.ndarray) -> float:
            return float((sample[:, 0].sum(0) / np.maximum(sample[:, 1].sum(0), 1)).mean())

        out["kl"] = bootstrap_ci(kl_stack, mean_kl, n_resamples=n_resamples, seed=seed).as_dict()
        out["kl_direction"] = f"KL(P at scale {top:g} || P at scale 0), nats per position"
    return out
