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
# Audio longer than this is encoded in windows (bounded memory); shorter audio in one call, as before.
ENCODE_WINDOW_SECONDS = 30.0
# Frames of 50 Hz features encoded per LSTM / output-convolution chunk (bounded memory as well).
ENCODE_CHUNK_FRAMES = 1500


class CodecError(MusiclitError, RuntimeError):
    """Codes that cannot be stored or decoded; the message says why."""


def _bandwidth(codec: Any) -> float | None:
    bandwidths = codec.config.target_bandwidths
    return bandwidths[0] if bandwidths else None


def encode_audio(
    codec: Any, audio: Any, audio_channels: int, window_seconds: float | None = ENCODE_WINDOW_SECONDS
) -> Any:
    """Codes (B, K, T) of audio (B, C, S) at the codec's rate.

    Args:
        codec: transformers ``EncodecModel``.
        audio: (B, C, S) float audio; mono input is duplicated for a stereo model, stereo input is
            averaged for a mono model.
        audio_channels: The model's channels (1 mono, 2 stereo: left/right codebooks interleaved).
        window_seconds: Audio longer than this is encoded in windows of this length
            (:func:`encode_windowed`: the same codes as one call, in bounded memory); None: always one call.
    """
    import torch

    dtype = next(codec.parameters()).dtype
    bandwidth = _bandwidth(codec)
    window = None if window_seconds is None else round(window_seconds * codec.config.sampling_rate)

    def encode(x: torch.Tensor) -> torch.Tensor:
        return encode_windowed(codec, x.to(dtype), bandwidth, window)

    if audio_channels == 2:
        audio = audio if audio.shape[1] == 2 else audio[:, :1].expand(-1, 2, -1)
        left, right = encode(audio[:, :1]), encode(audio[:, 1:2])
        return torch.stack([left, right], dim=2).flatten(1, 2)
    return encode(audio[:, :1] if audio.shape[1] == 1 else audio.mean(1, keepdim=True))


def _split_encoder(codec: Any) -> tuple[list[Any], Any, list[Any]] | None:
    """EnCodec's encoder as (convolutions before the LSTM, the LSTM, the layers after it), or None when
    its layout is not the one :func:`encode_windowed` knows (then it encodes in one call)."""
    from torch import nn
    from transformers.models.encodec.modeling_encodec import EncodecConv1d, EncodecLSTM, EncodecResnetBlock

    layers = list(codec.encoder.layers)
    lstms = [i for i, layer in enumerate(layers) if isinstance(layer, EncodecLSTM)]
    stateless = (EncodecConv1d, EncodecResnetBlock, nn.ELU)
    if len(lstms) != 1 or not all(isinstance(layer, stateless) for i, layer in enumerate(layers) if i != lstms[0]):
        return None
    if any(isinstance(layer, EncodecConv1d) and layer.conv.stride[0] != 1 for layer in layers[lstms[0] :]):
        return None
    return layers[: lstms[0]], layers[lstms[0]], layers[lstms[0] + 1 :]


def receptive_field(layers: list[Any]) -> int:
    """Input samples that one output step of a stack of EnCodec convolution layers depends on."""
    from transformers.models.encodec.modeling_encodec import EncodecConv1d, EncodecResnetBlock

    def convs(layer: Any) -> list[Any]:
        if isinstance(layer, EncodecConv1d):
            return [layer.conv]
        if isinstance(layer, EncodecResnetBlock):
            return [c for inner in layer.block for c in convs(inner)]
        return []

    field = 1
    for layer in reversed(layers):
        for conv in reversed(convs(layer)):
            field = (field - 1) * conv.stride[0] + (conv.kernel_size[0] - 1) * conv.dilation[0] + 1
    return field


def _windowing(codec: Any, length: int, window: int | None) -> tuple[int, int] | None:
    """(window, context) in samples when audio of ``length`` samples is encoded in windows, else None."""
    import torch

    parts = _split_encoder(codec)
    if window is None or parts is None or codec.config.normalize or codec.config.chunk_length is not None:
        return None
    hop = int(torch.tensor(codec.config.upsampling_ratios).prod())
    context = (receptive_field(parts[0]) // hop + 2) * hop  # samples of context on each side of a window
    window = max(hop, window // hop * hop)
    if length <= window + 2 * context:
        return None
    count = -(-length // window)  # windows of (nearly) equal length: no short remainder at the end
    return -(-length // (count * hop)) * hop, context


def encoder_windowed(codec: Any, audio: Any, window: int | None, chunk_frames: int = ENCODE_CHUNK_FRAMES) -> Any:
    """``codec.encoder(audio)``, the (B, D, T) embeddings the quantizer reads, computed in bounded memory.

    EnCodec's encoder is a stack of non-causal convolutions (receptive field 1,588 samples, 2.5 frames at
    32 kHz), a unidirectional LSTM, and an output convolution. The LSTM carries its state from the first
    frame on, so overlapping windows through the whole encoder never compute the whole file's function (its
    state at a window start is not the whole file's). The windows are cut where there is no state instead:
    the convolutions run on ``window`` samples at a time with enough context on both sides for their
    receptive field, the LSTM runs over their 50 Hz features ``chunk_frames`` at a time with its state
    carried from chunk to chunk, and the output convolution runs chunk by chunk with its own context. Every
    frame is then the whole file's function; the results differ from one call only by floating-point
    rounding (kernels sum in another order for inputs of another length), as one call differs from itself
    on another thread count (measured in docs/benchmarks.md).

    Memory: one window of the convolution stack (a 30 s window of EnCodec 32 kHz is about 1 GB in float32)
    and the 50 Hz features of the whole file (EnCodec 32 kHz: 4 KB per frame, 200 KB per second of audio,
    1.6 times the mono float32 audio itself), instead of the convolution stack over the whole file (about
    33 MB per second of audio: 20 GB for a 10-minute song).

    Args:
        codec: transformers ``EncodecModel``.
        audio: (B, C, S) audio in the codec's dtype.
        window: Samples per window (whole frames); None, or audio not longer than one window and its
            context, or a codec layout this function does not know: one ``codec.encoder`` call.
        chunk_frames: Frames per LSTM / output-convolution chunk.

    Returns:
        (B, D, T) embeddings, ``T = ceil(S / hop)``.
    """
    import torch

    plan = _windowing(codec, audio.shape[-1], window)
    if plan is None:
        return codec.encoder(audio)
    window, context = plan
    hop = int(torch.tensor(codec.config.upsampling_ratios).prod())
    head, lstm, tail = _split_encoder(codec)  # type: ignore[misc]
    length = audio.shape[-1]
    # 1. the convolutions, window by window, into the 50 Hz features of the whole file
    pieces = []
    for start in range(0, length, window):
        lo, hi = max(0, start - context), min(length, start + window + context)
        h = audio[..., lo:hi]
        for layer in head:
            h = layer(h)
        first = (start - lo) // hop
        last = first + window // hop if start + window < length else h.shape[-1]  # the file's last frames
        pieces.append(h[..., first:last])
    feats = torch.cat(pieces, dim=-1)  # (B, D, T)
    del pieces
    frames = feats.shape[-1]
    # 2. the LSTM (with its residual), chunk by chunk with its state carried, in place
    state = None
    for f0 in range(0, frames, chunk_frames):
        seq = feats[..., f0 : f0 + chunk_frames].permute(2, 0, 1)  # (t, B, D)
        out, state = lstm.lstm(seq, state)
        feats[..., f0 : f0 + chunk_frames] = (out + seq).permute(1, 2, 0)
    # 3. the output convolution, chunk by chunk with its context
    tail_context = receptive_field(tail)
    embeddings = []
    for f0 in range(0, frames, chunk_frames):
        lo, hi = max(0, f0 - tail_context), min(frames, f0 + chunk_frames + tail_context)
        h = feats[..., lo:hi]
        for layer in tail:
            h = layer(h)
        embeddings.append(h[..., f0 - lo : f0 - lo + min(chunk_frames, frames - f0)])
    return torch.cat(embeddings, dim=-1)


def encode_windowed(
    codec: Any, audio: Any, bandwidth: float | None, window: int | None, chunk_frames: int = ENCODE_CHUNK_FRAMES
) -> Any:
    """Codes (B, K, T) of (B, C, S) audio: ``codec.encode`` of the whole signal, computed by
    :func:`encoder_windowed` (bounded memory) and quantized chunk by chunk (frame by frame anyway).

    Short audio (up to one window and its context) takes ``codec.encode`` itself, so clips of up to 30 s
    get exactly the codes they always got.
    """
    import torch

    if _windowing(codec, audio.shape[-1], window) is None:
        return codec.encode(audio, bandwidth=bandwidth).audio_codes[0]
    embeddings = encoder_windowed(codec, audio, window, chunk_frames)
    codes = [
        codec.quantizer.encode(embeddings[..., f0 : f0 + chunk_frames], bandwidth).transpose(0, 1)
        for f0 in range(0, embeddings.shape[-1], chunk_frames)
    ]
    return torch.cat(codes, dim=-1)


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

    @classmethod
    def from_codec(
        cls, codec: Any, audio_channels: int, frame_rate: int, num_codebooks: int, special_token: int = 2048
    ) -> CodecTokenizer:
        """A codec on its own (no training module): encodes with :func:`encode_audio`, as training does."""
        sample_rate = int(codec.config.sampling_rate)
        hop = sample_rate // frame_rate

        def encode_fn(audio: Any, mask: Any) -> tuple[Any, Any]:
            codes = encode_audio(codec, audio, audio_channels)
            return codes, mask[:, ::hop][:, : codes.shape[-1]]

        return cls(
            identity=codec_identity(codec, audio_channels),
            encode_fn=encode_fn,
            sample_rate=sample_rate,
            channels=audio_channels,
            frame_rate=frame_rate,
            num_codebooks=num_codebooks,
            special_token=special_token,
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
