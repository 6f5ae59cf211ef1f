"""Audio embeddings for FAD/KAD that need no download: the model's own EnCodec latents, pooled per window.

The codec represents audio as a continuous latent sequence (D channels at the frame rate, 50 Hz for
MusicGen; D = 128 for the released 32 kHz EnCodec) that its residual quantizer turns into tokens. Averaging
latents over windows of frames (1 s by default) gives one D-dimensional vector per window; a set of clips
becomes the set of all their windows, the way FAD with VGGish uses one embedding per second of audio.

Two ways in, one space:

* :func:`code_embeddings` -- the QUANTIZED latents of codes (the sum of the codebook vectors the tokens
  select: exactly what the codec's decoder receives). ``evaluate`` uses these for everything: generated
  samples by their codes, validation audio by its cached codes. The codec's decoder is not involved, so a
  decoder that sounds bad (the offline demo's codec has random weights) cannot hide a difference between
  token streams, and nothing is decoded or re-encoded.
* :func:`encodec_embeddings` -- the encoder's latents of audio, before quantization (for audio that has no
  codes; the quantized latents of its codes differ from these only by the quantization error).

This embedding is what the model itself "hears": it measures whether generated token streams sit where
the validation music sits in the codec's latent space. It is not a perceptual model trained on music
labels (such as VGGish or CLAP): decoder artefacts and perceptual quality are not measured.
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


def code_latents(codec: Any, codes: torch.Tensor, audio_channels: int = 1) -> torch.Tensor:
    """Quantized latents (B, D, T) of (B, K, T) codes (stereo: (B, 2K, T) interleaved -> (B, 2D, T), left then right).

    Args:
        codec: A transformers ``EncodecModel``.
        codes: Integer codes, as the model generates them (no special tokens).
        audio_channels: 2 for stereo models (left/right codebooks interleaved).
    """
    param = next(codec.parameters())
    codes = codes.to(device=param.device, dtype=torch.long)
    if codes.ndim == 2:
        codes = codes[None]
    with torch.inference_mode():
        if audio_channels == 2:
            left = codec.quantizer.decode(codes[:, ::2].transpose(0, 1))
            right = codec.quantizer.decode(codes[:, 1::2].transpose(0, 1))
            return torch.cat([left, right], dim=1).float()
        return codec.quantizer.decode(codes.transpose(0, 1)).float()


def code_embeddings(
    codec: Any,
    clips: Sequence[np.ndarray | torch.Tensor],
    frame_rate: float,
    window_seconds: float = 1.0,
    audio_channels: int = 1,
    special_token: int = 2048,
) -> list[np.ndarray]:
    """Window embeddings of each clip's (K, T) codes: a list of (n_windows_i, D) float64 arrays.

    Frames holding the special token (padding) end the clip: only the frames before the first one count.
    """
    window = max(1, int(round(window_seconds * frame_rate)))
    out = []
    for clip in clips:
        c = torch.from_numpy(np.array(clip, dtype=np.int64)) if not torch.is_tensor(clip) else clip.long()
        special = (c >= special_token).any(0).nonzero()
        frames = int(special[0]) if len(special) else c.shape[-1]
        latents = code_latents(codec, c[:, :frames].clamp(max=special_token - 1), audio_channels)[0]
        out.append(pool_windows(latents, window))
    return out


def load_embedding_model(path: str) -> tuple[Any, int, str]:
    """An embedding model the user already has, as a TorchScript file: ``(module, sample_rate, name)``.

    The contract (any model can be wrapped into it, e.g. a CLAP or VGGish audio tower): ``forward`` takes
    (B, S) float mono audio at the module's ``sample_rate`` attribute (an int; 16000 when absent) and returns
    (B, D) or (B, N, D) embeddings (N embeddings per clip, e.g. one per second). Nothing is downloaded.

    Raises:
        MusiclitError: The file cannot be loaded as TorchScript.
    """
    from pathlib import Path

    from musiclit.errors import MusiclitError

    try:
        module = torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError, OSError) as err:
        raise MusiclitError(f"--embedding-model {path}: not a TorchScript file ({str(err).splitlines()[0]})") from None
    return module, int(getattr(module, "sample_rate", 16000)), Path(path).stem


def model_embeddings(
    module: Any, model_rate: int, clips: Sequence[np.ndarray | torch.Tensor], sample_rate: int
) -> list[np.ndarray]:
    """Embeddings (N_i, D) of each (C, S) or (S,) clip at ``sample_rate`` from a :func:`load_embedding_model` module."""
    from musiclit.data.audio import resample

    out = []
    for clip in clips:
        x = np.asarray(clip.numpy() if torch.is_tensor(clip) else clip, dtype=np.float32)
        x = x.mean(0) if x.ndim == 2 else x
        x = resample(x[None], sample_rate, model_rate)[0]
        with torch.inference_mode():
            emb = module(torch.from_numpy(np.ascontiguousarray(x))[None])
        emb = emb.detach().double().cpu()
        out.append(emb.reshape(-1, emb.shape[-1]).numpy())
    return out
