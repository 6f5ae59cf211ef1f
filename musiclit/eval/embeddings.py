"""Audio embeddings for FAD/KAD that need no download: the model's own EnCodec encoder latents.

The codec's encoder turns audio into a continuous latent sequence (D channels at the frame rate, 50 Hz for
MusicGen; D = 128 for the released 32 kHz EnCodec) before it is quantized into tokens. Averaging the latents
over windows of frames (1 s by default) gives one D-dimensional vector per window; a set of clips becomes
the set of all their windows, the way FAD with VGGish uses one embedding per second of audio.

This embedding is what the model itself "hears": it measures whether the generated audio sits where the
validation audio sits in the codec's latent space. It is not a perceptual model trained on music labels
(such as VGGish or CLAP); an embedding the user already has can be plugged into the same FAD/KAD code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def encodec_latents(codec: Any, audio: torch.Tensor) -> torch.Tensor:
    """Continuous encoder latents (B, D, T) of (B, C, S) audio at the codec's rate (mixed to the codec's channels).

    Args:
        codec: A transformers ``EncodecModel`` (``musicgen.audio_encoder``).
        audio: (B, C, S) or (B, S) float audio at ``codec.config.sampling_rate``.
    """
    if audio.ndim == 2:
        audio = audio[:, None]
    channels = int(codec.config.audio_channels)
    if audio.shape[1] != channels:
        audio = audio.mean(1, keepdim=True) if channels == 1 else audio.expand(-1, channels, -1)
    param = next(codec.parameters())
    x = audio.to(device=param.device, dtype=param.dtype)
    if codec.config.normalize:  # what the codec does before encoding
        scale = x.mean(1, keepdim=True).pow(2).mean(-1, keepdim=True).sqrt() + 1e-8
        x = x / scale
    with torch.inference_mode():
        return codec.encoder(x).float()


def pool_windows(latents: torch.Tensor, window: int, frames: int | None = None) -> np.ndarray:
    """Mean of (D, T) latents over consecutive windows of ``window`` frames: (n_windows, D) float64.

    Only the first ``frames`` frames are used (default all; padding after them is ignored). A partial last
    window is kept when it holds at least half a window; a clip shorter than one window gives one vector
    (the mean of all its frames).
    """
    t = latents.shape[-1] if frames is None else min(int(frames), latents.shape[-1])
    lat = latents[:, :t].double()
    if t == 0:
        return np.zeros((0, latents.shape[0]))
    if t <= window:
        return lat.mean(-1)[None].cpu().numpy()
    full = t // window
    out = [lat[:, : full * window].reshape(lat.shape[0], full, window).mean(-1).T]
    rest = t - full * window
    if rest >= (window + 1) // 2:
        out.append(lat[:, full * window :].mean(-1)[None])
    return torch.cat(out).cpu().numpy()


def encodec_embeddings(
    codec: Any,
    clips: Sequence[np.ndarray | torch.Tensor],
    window_seconds: float = 1.0,
    frame_rate: float | None = None,
) -> list[np.ndarray]:
    """Window embeddings of each clip: a list of (n_windows_i, D) float64 arrays.

    Args:
        codec: A transformers ``EncodecModel``.
        clips: (C, S) or (S,) float audio at the codec's sample rate, one per clip (any lengths).
        window_seconds: Length of a pooling window.
        frame_rate: Codec frames per second (default: from the codec's config).

    Returns:
        One array per clip; stack them (``np.concatenate``) to get the set FAD/KAD compare.
    """
    hop = int(np.prod(codec.config.upsampling_ratios))
    rate = frame_rate or codec.config.sampling_rate / hop
    window = max(1, int(round(window_seconds * rate)))
    out = []
    for clip in clips:
        x = torch.as_tensor(np.asarray(clip, dtype=np.float32) if not torch.is_tensor(clip) else clip).float()
        if x.ndim == 1:
            x = x[None]
        latents = encodec_latents(codec, x[None])[0]
        out.append(pool_windows(latents, window, frames=-(-x.shape[-1] // hop)))
    return out
