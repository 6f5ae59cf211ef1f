"""Loading MusicGen (transformers) from the hub, a local folder, or a config file (tiny test/demo models).

Plain torch/transformers code, no Lightning.
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from musiclit.errors import MusiclitError

HUB_MODELS = (
    "facebook/musicgen-small",
    "facebook/musicgen-medium",
    "facebook/musicgen-large",
    "facebook/musicgen-melody",
)


class ModelLoadError(MusiclitError, RuntimeError):
    """A model that cannot be loaded; the message names the source and the problem."""


@dataclass
class LoadedMusicGen:
    """A MusicGen model with its tokenizer and the facts training needs.

    Attributes:
        model: ``MusicgenForConditionalGeneration``.
        tokenizer: The text tokenizer (T5's for released models, a character tokenizer for tiny ones).
        sample_rate: Audio sample rate of the codec, Hz.
        frame_rate: Codec frames per second.
        num_codebooks: Codebooks per frame (4 mono, 8 stereo).
        audio_channels: 1 (mono) or 2 (stereo models).
        pad_token_id: The special token id (= codebook size, 2048 for released models).
        melody: A MusicGen-melody model (``MusicgenMelodyForConditionalGeneration``): text and a chroma melody
            are prepended to the decoder input (see :mod:`musiclit.model.melody`).
        chroma_length: Melody frames the model reads (235 = 30 s; melody models only).
    """

    model: Any
    tokenizer: Any
    sample_rate: int
    frame_rate: int
    num_codebooks: int
    audio_channels: int
    pad_token_id: int
    melody: bool = False
    chroma_length: int = 0


def tiny_config_dict(
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    ffn_dim: int = 64,
    num_codebooks: int = 4,
    text_dim: int = 32,
    audio_channels: int = 1,
    melody: bool = False,
) -> dict[str, Any]:
    """The tiny MusicGen-architecture config (50 Hz, 32 kHz, 2048-entry codebooks), as a JSON-able dict.

    ``melody=True``: MusicGen-melody's architecture (no cross-attention; text and a 235-frame chroma melody
    prepended to the decoder input).
    """
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenMelodyConfig,
        MusicgenMelodyDecoderConfig,
        T5Config,
    )

    config_class = MusicgenMelodyConfig if melody else MusicgenConfig
    decoder_class = MusicgenMelodyDecoderConfig if melody else MusicgenDecoderConfig
    config = config_class(
        text_encoder=T5Config(
            vocab_size=len(_CHARS) + 3,
            d_model=text_dim,
            d_kv=8,
            d_ff=text_dim * 2,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
        ).to_dict(),
        audio_encoder=EncodecConfig(
            sampling_rate=32000,
            audio_channels=1,
            hidden_size=16,
            num_filters=4,
            num_residual_layers=1,
            num_lstm_layers=1,
            upsampling_ratios=[8, 5, 4, 4],
            codebook_size=2048,
            target_bandwidths=[2.2],
            use_causal_conv=False,
            normalize=False,
            chunk_length_s=None,
            overlap=None,
        ).to_dict(),
        decoder=decoder_class(
            vocab_size=2048,
            num_codebooks=num_codebooks * audio_channels,
            audio_channels=audio_channels,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            ffn_dim=ffn_dim,
            max_position_embeddings=2048,
            pad_token_id=2048,
            bos_token_id=2048,
            decoder_start_token_id=2048,
        ).to_dict(),
    )
    config.decoder_start_token_id = 2048
    config.pad_token_id = 2048
    return config.to_dict()


# The character vocabulary of the offline tokenizer: enough for English captions.
_CHARS = string.ascii_lowercase + string.digits + " .,:;!?'-#/&()+"


def build_char_tokenizer() -> Any:
    """A deterministic character-level tokenizer (no download, no training) for tiny models.

    Lower-cases its input; ids: 0 = <pad>, 1 = </s>, 2 = <unk>, then one id per character.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for ch in _CHARS:
        vocab[ch] = len(vocab)
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=256
    )


def build_from_config(config: dict[str, Any] | str | os.PathLike[str], seed: int = 0) -> tuple[Any, Any]:
    """Build a MusicGen model at a seeded random init from a config dict or JSON file, plus a tokenizer.

    The same seed and config give the same weights, so a checkpoint that holds only trainable weights can
    rebuild its frozen base. A config whose ``model_type`` is ``musicgen_melody`` builds MusicGen-melody.
    """
    if not isinstance(config, dict):
        path = Path(config)
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ModelLoadError(f"{path}: cannot read MusicGen config ({err})") from None
    config_class, model_class = model_classes(str(config.get("model_type", "musicgen")))
    cfg = config_class.from_dict(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(cfg)
        init_random_codec(model.audio_encoder)
    return model, build_char_tokenizer()


def model_classes(model_type: str) -> tuple[Any, Any]:
    """transformers' (config class, model class) of a MusicGen ``model_type`` ("musicgen" or "musicgen_melody")."""
    from transformers import (
        MusicgenConfig,
        MusicgenForConditionalGeneration,
        MusicgenMelodyConfig,
        MusicgenMelodyForConditionalGeneration,
    )

    if model_type == "musicgen_melody":
        return MusicgenMelodyConfig, MusicgenMelodyForConditionalGeneration
    if model_type == "musicgen":
        return MusicgenConfig, MusicgenForConditionalGeneration
    raise ModelLoadError(f"model_type '{model_type}' is not MusicGen (musicgen or musicgen_melody)")


CODEC_OUTPUT_STD = 0.1  # RMS of a random-init codec's decoded audio for random codes


@torch.no_grad()
def init_random_codec(codec: Any) -> None:
    """Make a random-init EnCodec a codec whose codes carry the audio: input-dependent, with usable codebooks.

    At transformers' random init the convolution and LSTM biases outweigh what passes through the weights:
    every input encodes to nearly the same few codes and every code sequence decodes to nearly the same
    audio (measured on the tiny config: 6 distinct codes for white noise and for a sine, decoded random
    code sequences correlated at 0.99999). With the biases at zero the stacks pass their input on, then
    :func:`init_codebooks` fills the codebooks from latents of a broadband signal, and the last layer is
    scaled so that random codes decode to audio of RMS ``CODEC_OUTPUT_STD``. Only for random init: a
    pretrained codec is never touched. Uses the global RNG (callers seed it).
    """
    from torch import nn
    from torch.nn.utils import parametrize

    for module in codec.modules():
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) and module.bias is not None:
            module.bias.zero_()
        elif isinstance(module, nn.LSTM):
            for name, param in module.named_parameters():
                if "bias" in name:
                    param.zero_()
    init_codebooks(codec)
    cfg = codec.config
    codes = torch.randint(0, cfg.codebook_size, (1, 1, codec.quantizer.num_quantizers, 64))
    rms = float(codec.decode(codes, [None])[0].float().pow(2).mean().sqrt())
    last = codec.decoder.layers[-1].conv
    if parametrize.is_parametrized(last, "weight"):
        last.parametrizations.weight.original0.mul_(CODEC_OUTPUT_STD / max(rms, 1e-12))
    else:
        last.weight.mul_(CODEC_OUTPUT_STD / max(rms, 1e-12))


@torch.no_grad()
def init_codebooks(codec: Any, seconds: float = 8.0) -> None:
    """Give a random-init codec usable codebooks (its are all zeros, so every frame would get code 0).

    Like EnCodec's k-means initialisation, in one pass: each residual stage's codebook is filled with
    latent frames of a broadband signal (noise plus tones), drawn at random, and the residual passed on.
    Uses the global RNG (callers seed it).
    """
    cfg = codec.config
    n = int(seconds * cfg.sampling_rate)
    t = torch.arange(n) / cfg.sampling_rate
    tones = sum(torch.sin(2 * torch.pi * f * t * (1 + 0.3 * torch.sin(t))) for f in (110.0, 440.0, 1760.0))
    signal = 0.1 * torch.randn(cfg.audio_channels, n) + 0.1 * tones
    latents = codec.encoder(signal[None])  # (1, D, T)
    residual = latents[0].t()  # (T, D)
    for layer in codec.quantizer.layers:
        book = layer.codebook
        rows = residual[torch.randint(0, residual.shape[0], (book.codebook_size,))]
        book.embed.copy_(rows + 1e-3 * residual.std() * torch.randn_like(rows))
        book.embed_avg.copy_(book.embed)
        book.cluster_size.fill_(1.0)
        residual = residual - book.decode(book.encode(residual))


def save_model_folder(model: Any, tokenizer: Any, folder: str | os.PathLike[str]) -> Path:
    """Save a model + tokenizer + processor folder that ``from_pretrained`` (and ``load_musicgen``) loads."""
    from transformers import EncodecFeatureExtractor, MusicgenProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if model.config.model_type == "musicgen_melody":
        # its processor's feature extractor needs torchaudio (deliberately not a dependency): the tokenizer
        # alone; musiclit computes the chroma itself
        tokenizer.save_pretrained(folder)
        return folder
    audio_cfg = model.config.audio_encoder
    extractor = EncodecFeatureExtractor(feature_size=audio_cfg.audio_channels, sampling_rate=audio_cfg.sampling_rate)
    MusicgenProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def create_tiny_model_folder(folder: str | os.PathLike[str], seed: int = 0, **config_kwargs: Any) -> Path:
    """Write a tiny random-init MusicGen folder (weights, config, tokenizer, processor) for tests/the demo."""
    model, tokenizer = build_from_config(tiny_config_dict(**config_kwargs), seed=seed)
    return save_model_folder(model, tokenizer, folder)


def load_musicgen(pretrained: str, init_seed: int = 0, dtype: torch.dtype | None = None) -> LoadedMusicGen:
    """Load MusicGen from a hub id, a local folder, or a config JSON file (random init from ``init_seed``).

    Args:
        pretrained: ``facebook/musicgen-small`` (or medium/large/melody/stereo), a folder written by
            ``save_pretrained``, or a ``.json`` MusicGen config. MusicGen-melody checkpoints load as
            ``MusicgenMelodyForConditionalGeneration``.
        init_seed: Seed of the random init when ``pretrained`` is a config file.
        dtype: Load weights in this dtype (None: as stored).

    Raises:
        ModelLoadError: The source does not exist or does not hold a MusicGen model.
    """
    from transformers import AutoConfig, AutoTokenizer

    path = Path(pretrained).expanduser()
    if path.suffix == ".json" and path.is_file():
        model, tokenizer = build_from_config(path, seed=init_seed)
        if dtype is not None:
            model = model.to(dtype)
    else:
        if not path.exists() and ("/" not in pretrained or pretrained.startswith((".", "/", "~"))):
            raise ModelLoadError(
                f"{pretrained}: no such model folder or config file (hub ids look like 'facebook/musicgen-small')"
            )
        source = str(path) if path.exists() else pretrained
        try:
            config = AutoConfig.from_pretrained(source)
            _, model_class = model_classes(str(config.model_type))
            model = model_class.from_pretrained(source, config=config, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(source)
        except OSError as err:
            raise ModelLoadError(f"{pretrained}: cannot load a MusicGen model ({err})") from None
    return describe(model, tokenizer)


def describe(model: Any, tokenizer: Any) -> LoadedMusicGen:
    """Wrap a model and tokenizer with the facts training needs (rates, codebooks, special token)."""
    audio_cfg = model.config.audio_encoder
    dec_cfg = model.config.decoder
    hop = int(torch.tensor(audio_cfg.upsampling_ratios).prod())
    sample_rate = int(audio_cfg.sampling_rate)
    if sample_rate % hop:
        raise ModelLoadError(f"codec hop {hop} does not divide the sample rate {sample_rate}")
    return LoadedMusicGen(
        model=model,
        tokenizer=tokenizer,
        sample_rate=sample_rate,
        frame_rate=sample_rate // hop,
        num_codebooks=int(dec_cfg.num_codebooks),
        audio_channels=int(getattr(dec_cfg, "audio_channels", 1)),
        pad_token_id=int(dec_cfg.pad_token_id),
        melody=model.config.model_type == "musicgen_melody",
        chroma_length=int(getattr(model.config, "chroma_length", 0)),
    )


def real_decoder_config(name: str) -> dict[str, int]:
    """Decoder sizes of the released architectures (for throughput/memory work at random init)."""
    sizes = {
        "small": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
        "medium": {"hidden_size": 1536, "num_hidden_layers": 48, "num_attention_heads": 24},
        "large": {"hidden_size": 2048, "num_hidden_layers": 48, "num_attention_heads": 32},
        "melody": {"hidden_size": 1536, "num_hidden_layers": 48, "num_attention_heads": 24},  # musicgen-melody
    }
    if name not in sizes:
        raise ValueError(f"unknown architecture '{name}' (choose from {', '.join(sizes)})")
    out = dict(sizes[name])
    out["ffn_dim"] = 4 * out["hidden_size"]
    return out


# EnCodec 32 kHz (MusicGen's codec) and T5-base: the released models' frozen encoders, for random-init builds
REAL_CODEC: dict[str, Any] = {
    "sampling_rate": 32000, "audio_channels": 1, "hidden_size": 128, "num_filters": 64,
    "num_residual_layers": 1, "num_lstm_layers": 2, "upsampling_ratios": [8, 5, 4, 4],
    "codebook_size": 2048, "target_bandwidths": [2.2], "use_causal_conv": False, "normalize": False,
    "chunk_length_s": None, "overlap": None,
}  # fmt: skip
T5_BASE: dict[str, Any] = {"d_model": 768, "d_kv": 64, "d_ff": 3072, "num_layers": 12, "num_heads": 12,
                           "vocab_size": 32128}  # fmt: skip


def real_config_dict(decoder: str | dict[str, int], melody: bool | None = None) -> dict[str, Any]:
    """A full MusicGen config with real-sized T5-base and EnCodec and a released (or given) decoder size.

    Args:
        decoder: "small", "medium", "large", "melody", or ``tiny_config_dict`` decoder kwargs (hidden_size,
            num_layers, num_heads, ffn_dim).
        melody: MusicGen-melody's architecture (default: when ``decoder`` is "melody").
    """
    from transformers import EncodecConfig, T5Config

    melody = decoder == "melody" if melody is None else melody
    if isinstance(decoder, str):
        real = real_decoder_config(decoder)
        decoder = {"hidden_size": real["hidden_size"], "num_layers": real["num_hidden_layers"],
                   "num_heads": real["num_attention_heads"], "ffn_dim": real["ffn_dim"]}  # fmt: skip
    dec = tiny_config_dict(**decoder, num_codebooks=4, melody=melody)["decoder"]
    config_class, _ = model_classes("musicgen_melody" if melody else "musicgen")
    config = config_class(
        text_encoder=T5Config(**T5_BASE).to_dict(), audio_encoder=EncodecConfig(**REAL_CODEC).to_dict(), decoder=dec
    ).to_dict()
    config["decoder_start_token_id"] = config["pad_token_id"] = 2048
    return config
