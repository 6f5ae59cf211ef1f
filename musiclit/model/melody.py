"""MusicGen-melody's condition: one pitch class per chroma frame, prepended to the decoder input.

transformers' ``MusicgenMelodyForConditionalGeneration`` (like audiocraft's chroma-stem conditioner it was
converted from) conditions on:

* the melody: the chromagram of the conditioning audio (``n_fft`` 16384 = 2^14, hop 4096 at 32 kHz: 7.8125
  frames per second, 235 frames for 30 s), each frame reduced to a one-hot of its strongest pitch class, projected
  by ``audio_enc_to_dec_proj`` (12 -> hidden) and repeated / cut to ``config.chroma_length`` (235) frames;
* the text: T5 states (projected), zeroed where the caption is padding or dropped;

both PREPENDED to the decoder's input embeddings, ``[melody, text, codes]``, not cross-attended. "No melody" is
the one-hot of class 0 (C) on every frame: what the chroma of silence gives (an all-zero frame's argmax is 0)
and what transformers' generate feeds the unconditional branch of classifier-free guidance.

The conditioning audio is by default the clip itself with drums and bass removed by Demucs (their energy
dominates the chroma otherwise), as audiocraft's recipe does: the stems other than "drums" and "bass" are summed.

Plain torch/transformers code, no Lightning.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from musiclit.errors import MusiclitError

SAMPLE_RATE = 32000  # the rate MusicGen-melody's chroma is computed at
N_FFT = 16384  # audiocraft's radix2_exp 14; MusicgenMelodyFeatureExtractor's n_fft
HOP = 4096  # n_fft // 4; the feature extractor's hop_length
NUM_CHROMA = 12
REMOVED_STEMS = ("drums", "bass")
CHROMA_FORMAT = 1  # part of the chroma cache identity: a change of layout gets a new cache folder


class MelodyError(MusiclitError, ValueError):
    """A melody condition that cannot be used; the message names the file or option and the problem."""


def is_melody_model(model: Any) -> bool:
    """Whether ``model`` (a ``MusicgenMelodyForConditionalGeneration``, maybe inside a peft model) takes a melody."""
    return getattr(getattr(model, "config", None), "model_type", None) == "musicgen_melody"


def frame_rate(sample_rate: int = SAMPLE_RATE) -> float:
    """Chroma frames per second (7.8125 at 32 kHz)."""
    return sample_rate / HOP


def frames_for(seconds: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Frames of the chroma of ``seconds`` of audio (235 for 30 s): ``1 + samples // hop`` (centred frames)."""
    return 1 + max(int(round(seconds * sample_rate)), N_FFT) // HOP


def pitch_classes(audio: Any, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The strongest pitch class of each chroma frame of mono audio: (S,) float -> (frames,) int16 in 0..11.

    The one-hot MusicGen-melody reads is ``onehot(pitch_classes(audio))``; storing the index is lossless.
    """
    import torch

    from musiclit.model.chroma import chroma

    x = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    if x.ndim == 2:
        x = x.mean(0)
    if x.ndim != 1:
        raise MelodyError(f"melody audio must be (S,) or (C, S), got shape {tuple(x.shape)}")
    with torch.inference_mode():
        c = chroma(x, sample_rate, n_fft=N_FFT, hop_length=HOP, n_chroma=NUM_CHROMA)
    return c.argmax(-1).numpy().astype(np.int16)


def onehot(classes: Any, dtype: Any = None) -> Any:
    """(B, T) pitch classes -> (B, T, 12) one-hot float (the melody condition)."""
    import torch

    classes = torch.as_tensor(classes).long()
    return torch.nn.functional.one_hot(classes, NUM_CHROMA).to(dtype or torch.float32)


def null_classes(batch: int, frames: int) -> Any:
    """(B, T) "no melody": class 0 everywhere (what silence gives and what generation's unconditional branch uses)."""
    import torch

    return torch.zeros((batch, frames), dtype=torch.long)


def window(classes: np.ndarray, start: int, length: int) -> np.ndarray:
    """``length`` frames of a melody from frame ``start``, the melody repeated end to end when it runs out (how a
    melody shorter than the music is extended, as audiocraft extends its conditioning audio)."""
    classes = np.asarray(classes)
    if classes.size == 0:
        raise MelodyError("the melody has no frames")
    return classes[(start + np.arange(length)) % classes.shape[0]]


def melody_states(model: Any, melody: Any) -> Any:
    """Decoder-ready melody states (B, chroma_length, D) from a one-hot melody (B, T, 12), exactly as transformers'
    forward and generate compute them: projected, repeated end to end when shorter than ``chroma_length``, cut."""
    states = melody
    proj = getattr(model, "audio_enc_to_dec_proj", None)
    if proj is not None:
        states = proj(states.to(proj.weight.dtype))
    length = int(model.config.chroma_length)
    if states.shape[1] < length:
        states = states.repeat(1, int(math.ceil(length / states.shape[1])), 1)
    return states[:, :length]


# ---------------------------------------------------------------------------------------- drums and bass removal


def weights_sha256(module: Any) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes, bytes): the identity of a separator's weights."""
    import torch

    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def melody_stems(separator: Any, wav: np.ndarray, device: str | None = None) -> np.ndarray:
    """The sum of the Demucs stems other than drums and bass: (C, S) at the separator's rate -> (C, S) float32.

    The audio goes through ``demucs.apply.apply_model`` unnormalised, as audiocraft's chroma-stem conditioner
    feeds it (the recipe MusicGen-melody was trained with), but without its random time shift (``shifts=0``;
    ``apply_model``'s default of 1 shift draws a random offset): the same file always gives the same melody.
    """
    import torch
    from demucs.apply import apply_model

    sources = list(separator.sources)
    keep = [i for i, name in enumerate(sources) if name not in REMOVED_STEMS]
    if len(keep) == len(sources) or not keep:
        raise MelodyError(f"the Demucs model has sources {sources}: it must separate drums and/or bass from the rest")
    if device is None:
        device = str(next(separator.parameters()).device)
    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None]
    with torch.no_grad():
        stems = apply_model(separator, x, shifts=0, split=True, overlap=0.25, device=device, progress=False)[0]
    return stems[keep].sum(0).cpu().numpy().astype(np.float32)


@dataclass
class MelodyChroma:
    """Conditioning audio -> pitch classes, as the token cache sees it (an identity and ``encode``).

    Attributes:
        separator: A Demucs model (drums and bass removed first) or None (the audio as it is).
        resample: ``(wav (C, S), from_rate, to_rate) -> wav`` (musiclit.data.audio.resample).
        sample_rate: Rate the cache reads files at (the separator's, else 32 kHz).
        channels: Channels the cache reads (the separator's, else 1).
    """

    separator: Any = None
    resample: Callable[[np.ndarray, int, int], np.ndarray] | None = None
    identity: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.identity:
            sep = None
            if self.separator is not None:
                sep = {"sources": list(self.separator.sources), "samplerate": int(self.separator.samplerate),
                       "weights_sha256": weights_sha256(self.separator)}  # fmt: skip
            ident: dict[str, Any] = {"kind": "melody-chroma", "format": CHROMA_FORMAT, "sample_rate": SAMPLE_RATE,
                                     "n_fft": N_FFT, "hop": HOP, "separator": sep}  # fmt: skip
            ident["id"] = "melody-" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]
            self.identity = ident

    @property
    def id(self) -> str:
        """The folder name of this chroma's cache."""
        return str(self.identity["id"])

    @property
    def label(self) -> str:
        """What the cache's progress bar calls this."""
        return f"melody chroma ({self.id.removeprefix('melody-')[:8]}{', Demucs' if self.separator else ''})"

    @property
    def codec(self) -> Any:
        """The module the cache moves to the GPU while it builds (the separator)."""
        return self.separator

    @property
    def sample_rate(self) -> int:
        """The rate audio is read at for :meth:`encode`."""
        return int(self.separator.samplerate) if self.separator is not None else SAMPLE_RATE

    @property
    def channels(self) -> int:
        """The channels audio is read with for :meth:`encode`."""
        return int(self.separator.audio_channels) if self.separator is not None else 1

    @property
    def frame_rate(self) -> float:
        """Chroma frames per second."""
        return frame_rate(SAMPLE_RATE)

    def conditioning_audio(self, wav: np.ndarray) -> np.ndarray:
        """(C, S) at :attr:`sample_rate` -> the mono (S,) 32 kHz audio the chroma is computed from."""
        wav = np.asarray(wav, dtype=np.float32)
        if self.separator is not None:
            wav = melody_stems(self.separator, wav)
        mono = wav.mean(0, keepdims=True)
        if self.sample_rate != SAMPLE_RATE:
            if self.resample is None:
                raise MelodyError("MelodyChroma needs a resample function for a separator that is not at 32 kHz")
            mono = self.resample(mono, self.sample_rate, SAMPLE_RATE)
        return mono[0]

    def encode(self, wav: np.ndarray) -> np.ndarray:
        """(1, frames) int16 pitch classes of a whole file (C, S) read at :attr:`sample_rate` / :attr:`channels`."""
        return pitch_classes(self.conditioning_audio(wav), SAMPLE_RATE)[None]
