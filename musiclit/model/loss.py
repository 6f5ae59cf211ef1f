"""The training objective: MusicGen's decoder over delay-patterned codes, masked cross-entropy per codebook.

Plain torch/transformers code, no Lightning: the training module and the evaluation both call
:func:`musicgen_loss`, so what is trained and what is evaluated is one computation.
"""

from __future__ import annotations

from typing import Any

import torch

from musiclit.model.delay import build_delay_pattern, codebook_ce


def project_text(model: Any, text: torch.Tensor) -> torch.Tensor:
    """Text-encoder states (B, Lt, Dt) projected to the decoder width (B, Lt, D) when the model needs it."""
    if (
        model.text_encoder.config.hidden_size != model.decoder.config.hidden_size
        and getattr(model.decoder.config, "cross_attention_hidden_size", None) is None
    ):
        return model.enc_to_dec_proj(text.to(model.enc_to_dec_proj.weight.dtype))
    return text


def pad_text_states(states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack captions encoded one at a time, (Lt_i, D) each, into states (B, Lt, D) and a mask (B, Lt),
    zero-padded at the end to the longest."""
    length = max(s.shape[0] for s in states)
    out = states[0].new_zeros((len(states), length, states[0].shape[-1]))
    mask = torch.zeros((len(states), length), dtype=torch.long, device=out.device)
    for i, s in enumerate(states):
        out[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1
    return out, mask


def decoder_hidden(
    model: Any, inputs: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, melody: torch.Tensor | None = None
) -> torch.Tensor:
    """Last hidden states (B, L, D) of the decoder stack for delay-patterned ``inputs`` (B, K, L).

    Args:
        model: ``MusicgenForConditionalGeneration`` or ``MusicgenMelodyForConditionalGeneration`` (adapters may be
            injected).
        inputs: (B, K, L) delay-pattern input ids (BOS first).
        text: (B, Lt, Dt) text-encoder states.
        text_mask: (B, Lt) 1 on real tokens; an all-zero row is the unconditional (dropped) text.
        melody: Melody models only: (B, Tc, 12) one-hot chroma (:mod:`musiclit.model.melody`; "no melody" is
            class 0 on every frame). The melody states and the masked text states are prepended to the codes
            (``[melody, text, codes]``, no attention mask: padding and dropped text are zero vectors, as in
            transformers' generate); the hidden states of the codes are returned.
    """
    bsz, num_cb, length = inputs.shape
    enc = project_text(model, text)
    enc = enc * text_mask[..., None].to(enc.dtype)  # what generation does for dropped text
    if melody is not None:
        from musiclit.model.melody import melody_states

        prefix = torch.cat([melody_states(model, melody).to(enc.dtype), enc], dim=1)
        hidden = model.decoder.model.decoder(
            input_ids=inputs.reshape(bsz * num_cb, length), encoder_hidden_states=prefix, use_cache=False
        ).last_hidden_state
        return hidden[:, prefix.shape[1] :]
    return model.decoder.model.decoder(
        input_ids=inputs.reshape(bsz * num_cb, length),
        encoder_hidden_states=enc,
        encoder_attention_mask=text_mask,
        use_cache=False,
    ).last_hidden_state


def musicgen_loss(
    model: Any,
    codes: torch.Tensor,
    frame_mask: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    delays: list[int],
    special_token: int,
    melody: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of a batch.

    Args:
        model: ``MusicgenForConditionalGeneration`` (adapters may be injected).
        codes: (B, K, T) codec codes.
        frame_mask: (B, T) True on real frames.
        text: (B, Lt, Dt) text-encoder states.
        text_mask: (B, Lt) 1 on real tokens; an all-zero row is the unconditional (dropped) text.
        delays: Delay of each codebook (0..K-1; stereo 0,0,1,1,...).
        special_token: The pad/BOS id (the codebook size).
        melody: Melody models: (B, Tc, 12) one-hot chroma (see :func:`decoder_hidden`); required for them.

    Returns:
        ``(loss, per_codebook)``: mean over codebooks of the masked CE, and the (K,) codebook CEs.
    """
    inputs, labels, mask = build_delay_pattern(codes, special_token, delays, frame_mask)
    hidden = decoder_hidden(model, inputs, text, text_mask, melody)
    # one codebook at a time: no stacked (B, K, L, V) copy of the logits in the forward or the backward
    per_cb = torch.stack(
        [
            codebook_ce(head(hidden).flatten(0, 1), labels[:, k].flatten(), mask[:, k].flatten())
            for k, head in enumerate(model.decoder.lm_heads)
        ]
    )
    return per_cb.mean(), per_cb
