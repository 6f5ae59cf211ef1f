"""The frozen codec (EnCodec) as musiclit uses it: audio <-> codes, mono and stereo, and its identity.

Stereo MusicGen models encode left and right separately and interleave their codebooks
(k0 left, k0 right, k1 left, ...), so a stereo frame has ``2 x K`` codes with delays 0,0,1,1,2,2,...
Plain torch/transformers code, no Lightning.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from musiclit.errors import MusiclitError

# Version of the token layout (int16 codes, interleaving): part of the codec identity, so a change of
# layout gives every token cache a new folder instead of serving stale codes.
TOKEN_FORMAT = 1


class CodecError(MusiclitError, RuntimeError):
    """Codes that cannot be stored or decoded; the message says why."""


def _bandwidth(codec: Any) -> float | None:
    bandwidths = codec.config.target_bandwidths
    return bandwidths[0] if bandwidths else None


def encode_audio(codec: Any, audio: Any, audio_channels: int) -> Any:
    """Codes (B, K, T) of audio (B, C, S) at the codec's rate.

    Args:
        codec: transformers ``EncodecModel``.
        audio: (B, C, S) float audio; mono input is duplicated for a stereo model, stereo input is
            averaged for a mono model.
        audio_channels: The model's channels (1 mono, 2 stereo: left/right codebooks interleaved).
    """
    import torch

    dtype = next(codec.parameters()).dtype
    bandwidth = _bandwidth(codec)

    def encode(x: torch.Tensor) -> torch.Tensor:
        return codec.encode(x.to(dtype), bandwidth=bandwidth).audio_codes[0]

    if audio_channels == 2:
        audio = audio if audio.shape[1] == 2 else audio[:, :1].expand(-1, 2, -1)
        left, right = encode(audio[:, :1]), encode(audio[:, 1:2])
        return torch.stack([left, right], dim=2).flatten(1, 2)
    return encode(audio[:, :1] if audio.shape[1] == 1 else audio.mean(1, keepdim=True))


def decode_audio(codec: Any, codes: Any, audio_channels: int, hop: int) -> Any:
    """(B, C, S) float32 CPU audio of (B, K, T) codes, decoded in one pass (``S = T x hop``)."""
    import torch

    if audio_channels == 2:
        left = codec.decode(codes[None, :, ::2], [None]).audio_values
        right = codec.decode(codes[None, :, 1::2], [None]).audio_values
        audio = torch.cat([left, right], dim=1)
    else:
        audio = codec.decode(codes[None], [None]).audio_values
    return audio[..., : codes.shape[-1] * hop].float().cpu()


def codec_identity(codec: Any, channels: int) -> dict[str, Any]:
    """What identifies a codec's tokens: config, weights hash, channel layout, cache format."""
    import torch

    weights = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(codec.state_dict().items()):
            t = tensor.detach().to("cpu").contiguous()
            weights.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            weights.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    config = codec.config.to_dict()
    for volatile in ("transformers_version", "_name_or_path", "dtype", "torch_dtype"):
        config.pop(volatile, None)
    ident = {"format": TOKEN_FORMAT, "channels": channels, "config": config, "weights_sha256": weights.hexdigest()}
    ident["id"] = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return ident


@dataclass
class CodecTokenizer:
    """A frozen codec as the cache sees it: an identity and ``encode(wav) -> codes``.

    Attributes:
        identity: :func:`codec_identity` of the codec.
        encode_fn: ``(audio (1, C, S) float tensor, mask (1, S) bool) -> (codes (1, K, T), frame_mask)``.
        sample_rate, channels, frame_rate, num_codebooks: The codec's facts.
        codec: The codec module (moved to the GPU while the cache is built, when there is one).
    """

    identity: dict[str, Any]
    encode_fn: Callable[[Any, Any], tuple[Any, Any]]
    sample_rate: int
    channels: int
    frame_rate: int
    num_codebooks: int
    special_token: int = 2048
    codec: Any = None

    @property
    def id(self) -> str:
        """The folder name of this codec's cache."""
        return str(self.identity["id"])

    @classmethod
    def from_module(cls, module: Any) -> CodecTokenizer:
        """The codec of a training module (anything with ``base``, ``encode_audio`` and the model facts)."""
        codec = module.base.audio_encoder
        return cls(
            identity=codec_identity(codec, module.audio_channels),
            encode_fn=module.encode_audio,
            sample_rate=module.sample_rate,
            channels=module.audio_channels,
            frame_rate=module.frame_rate,
            num_codebooks=module.num_codebooks,
            special_token=module.special_token,
            codec=codec,
        )

    def encode(self, wav: np.ndarray) -> np.ndarray:
        """Codes (K, T) int16 of a whole clip (C, S) at the codec's rate and channels."""
        import torch

        device = next(self.codec.parameters()).device if self.codec is not None else torch.device("cpu")
        audio = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None].to(device)
        mask = torch.ones((1, audio.shape[-1]), dtype=torch.bool, device=device)
        with torch.inference_mode():
            codes, _ = self.encode_fn(audio, mask)
        codes = codes[0].to("cpu").numpy()
        if codes.size and (codes.min() < 0 or codes.max() > np.iinfo(np.int16).max):
            raise CodecError(f"codes out of int16 range ({codes.min()}..{codes.max()})")
        return codes.astype(np.int16)
