"""The audiocraft checkpoint format of a MusicGen LM, and its name mapping to transformers.

audiocraft's ``MusicGen.get_pretrained(folder)`` reads two files:

* ``state_dict.bin``: ``{"best_state": <LM state dict>, "xp.cfg": <experiment config>, ...}``; the LM is
  rebuilt from the config by audiocraft's builders, then loads ``best_state``.
* ``compression_state_dict.bin``: the codec; for MusicGen a pointer ``{"pretrained": "facebook/encodec_32khz"}``.

Both are ``torch.save`` pickles (the format requires it). Names map as follows (transformers' names are those
of ``MusicgenForConditionalGeneration.state_dict()``; ``L.`` = ``decoder.model.decoder.layers.``)::

    audiocraft                                              transformers
    emb.{k}.weight                                          decoder.model.decoder.embed_tokens.{k}.weight
    transformer.layers.{i}.self_attn.in_proj_weight         L.{i}.self_attn.{q,k,v}_proj.weight
    transformer.layers.{i}.self_attn.out_proj.weight        L.{i}.self_attn.out_proj.weight
    transformer.layers.{i}.cross_attention.in_proj_weight   L.{i}.encoder_attn.{q,k,v}_proj.weight
    transformer.layers.{i}.cross_attention.out_proj.weight  L.{i}.encoder_attn.out_proj.weight
    transformer.layers.{i}.linear1/linear2.weight           L.{i}.fc1/fc2.weight
    transformer.layers.{i}.norm1.*                          L.{i}.self_attn_layer_norm.*
    transformer.layers.{i}.norm_cross.*                     L.{i}.encoder_attn_layer_norm.*
    transformer.layers.{i}.norm2.*                          L.{i}.final_layer_norm.*
    out_norm.*                                              decoder.model.decoder.layer_norm.*
    linears.{k}.weight                                      decoder.lm_heads.{k}.weight
    condition_provider.conditioners.description.output_proj.*
                                                            enc_to_dec_proj.*

The fused ``in_proj_weight`` is q, k and v stacked along dim 0 (hidden_size rows each). The T5 text encoder
is not part of audiocraft's state dict (audiocraft loads it by name), nor is the codec.

MusicGen-melody (``MusicgenMelodyForConditionalGeneration``) has no cross-attention: its text and chroma
conditions are prepended (audiocraft's ``fuser.prepend: [self_wav, description]``). Its chroma projection maps::

    condition_provider.conditioners.self_wav.output_proj.*  audio_enc_to_dec_proj.*

and audiocraft's chroma conditioner also stores its STFT window (``...self_wav.chroma.spec.window``, a periodic
Hann window of 16384 samples), which is written on export and ignored on import.
"""

from __future__ import annotations

import re
from typing import Any

from musiclit.errors import MusiclitError

DEC = "decoder.model.decoder."
PROJ_AC = "condition_provider.conditioners.description.output_proj."
PROJ_HF = "enc_to_dec_proj."
CHROMA_AC = "condition_provider.conditioners.self_wav.output_proj."
CHROMA_HF = "audio_enc_to_dec_proj."
CHROMA_WINDOW_AC = "condition_provider.conditioners.self_wav.chroma.spec.window"

# layer-level leaves: transformers -> audiocraft
_LAYER_LEAVES = {
    "self_attn.out_proj": "self_attn.out_proj",
    "encoder_attn.out_proj": "cross_attention.out_proj",
    "fc1": "linear1",
    "fc2": "linear2",
    "self_attn_layer_norm": "norm1",
    "encoder_attn_layer_norm": "norm_cross",
    "final_layer_norm": "norm2",
}
_LAYER_LEAVES_BACK = {v: k for k, v in _LAYER_LEAVES.items()}
_ATTN = {"self_attn": "self_attn", "encoder_attn": "cross_attention"}
_ATTN_BACK = {v: k for k, v in _ATTN.items()}


class AudiocraftFormatError(MusiclitError, ValueError):
    """Weights or a config that do not fit the audiocraft MusicGen layout."""


def to_audiocraft(state: dict[str, Any], hidden_size: int) -> dict[str, Any]:
    """audiocraft ``best_state`` from a transformers ``MusicgenForConditionalGeneration`` state dict.

    Only the LM (decoder) and the text projection are taken; the text encoder and codec are ignored. A model
    without ``enc_to_dec_proj`` (text width = decoder width) gets an identity projection, which is what it
    computes.
    """
    import torch

    out: dict[str, Any] = {}
    qkv: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        if key.startswith(("text_encoder.", "audio_encoder.")):
            continue
        if key.startswith(PROJ_HF):
            out[PROJ_AC + key[len(PROJ_HF) :]] = value
            continue
        if key.startswith(CHROMA_HF):
            out[CHROMA_AC + key[len(CHROMA_HF) :]] = value
            continue
        m = re.fullmatch(rf"{re.escape(DEC)}embed_tokens\.(\d+)\.weight", key)
        if m:
            out[f"emb.{m.group(1)}.weight"] = value
            continue
        m = re.fullmatch(r"decoder\.lm_heads\.(\d+)\.(weight|bias)", key)
        if m:
            out[f"linears.{m.group(1)}.{m.group(2)}"] = value
            continue
        m = re.fullmatch(rf"{re.escape(DEC)}layer_norm\.(weight|bias)", key)
        if m:
            out[f"out_norm.{m.group(1)}"] = value
            continue
        m = re.fullmatch(rf"{re.escape(DEC)}layers\.(\d+)\.(self_attn|encoder_attn)\.([qkv])_proj\.weight", key)
        if m:
            qkv.setdefault(f"transformer.layers.{m.group(1)}.{_ATTN[m.group(2)]}", {})[m.group(3)] = value
            continue
        m = re.fullmatch(rf"{re.escape(DEC)}layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if m and m.group(2) in _LAYER_LEAVES:
            out[f"transformer.layers.{m.group(1)}.{_LAYER_LEAVES[m.group(2)]}.{m.group(3)}"] = value
            continue
        raise AudiocraftFormatError(f"no audiocraft name for the weight {key} (biases on attention/MLP are not used)")
    for prefix, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise AudiocraftFormatError(f"{prefix}: q, k and v projections are needed, got {sorted(parts)}")
        out[f"{prefix}.in_proj_weight"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0).contiguous()
    if PROJ_AC + "weight" not in out:
        eye = torch.eye(hidden_size, dtype=out["emb.0.weight"].dtype)
        out[PROJ_AC + "weight"] = eye
        out[PROJ_AC + "bias"] = torch.zeros(hidden_size, dtype=eye.dtype)
    if CHROMA_AC + "weight" in out:
        from musiclit.model.melody import N_FFT

        out[CHROMA_WINDOW_AC] = torch.hann_window(N_FFT, dtype=out[CHROMA_AC + "weight"].dtype)
    return out


def from_audiocraft(best_state: dict[str, Any], hidden_size: int) -> dict[str, Any]:
    """transformers state-dict entries (decoder + ``enc_to_dec_proj``) from an audiocraft ``best_state``.

    LMs trained with ``memory_efficient: false`` (and ``custom: false``) keep their attention in a
    ``torch.nn.MultiheadAttention`` under ``.mha.``: the same fused q/k/v layout, mapped the same way
    (audiocraft itself loads either layout into either kind of attention).
    """
    out: dict[str, Any] = {}
    for key, value in best_state.items():
        key = re.sub(r"\.(self_attn|cross_attention)\.mha\.", r".\1.", key)
        if key.startswith(PROJ_AC):
            out[PROJ_HF + key[len(PROJ_AC) :]] = value
            continue
        if key.startswith(CHROMA_AC):
            out[CHROMA_HF + key[len(CHROMA_AC) :]] = value
            continue
        if key == CHROMA_WINDOW_AC:
            continue  # the chroma conditioner's STFT window: musiclit computes the chroma itself
        m = re.fullmatch(r"emb\.(\d+)\.weight", key)
        if m:
            out[f"{DEC}embed_tokens.{m.group(1)}.weight"] = value
            continue
        m = re.fullmatch(r"linears\.(\d+)\.(weight|bias)", key)
        if m:
            out[f"decoder.lm_heads.{m.group(1)}.{m.group(2)}"] = value
            continue
        m = re.fullmatch(r"out_norm\.(weight|bias)", key)
        if m:
            out[f"{DEC}layer_norm.{m.group(1)}"] = value
            continue
        m = re.fullmatch(r"transformer\.layers\.(\d+)\.(self_attn|cross_attention)\.in_proj_weight", key)
        if m:
            if value.shape[0] != 3 * hidden_size:
                raise AudiocraftFormatError(
                    f"{key}: fused projection has {value.shape[0]} rows, expected 3 x {hidden_size}"
                )
            layer = f"{DEC}layers.{m.group(1)}.{_ATTN_BACK[m.group(2)]}"
            for j, name in enumerate("qkv"):
                out[f"{layer}.{name}_proj.weight"] = value[j * hidden_size : (j + 1) * hidden_size].clone()
            continue
        m = re.fullmatch(r"transformer\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if m and m.group(2) in _LAYER_LEAVES_BACK:
            out[f"{DEC}layers.{m.group(1)}.{_LAYER_LEAVES_BACK[m.group(2)]}.{m.group(3)}"] = value
            continue
        raise AudiocraftFormatError(f"the audiocraft weight {key} has no transformers counterpart")
    return out


def xp_config(model_config: Any, text_encoder_name: str, segment_duration: float = 30.0) -> dict[str, Any]:
    """The experiment config (``xp.cfg``) audiocraft's builders read to rebuild this MusicGen LM, as a plain dict."""
    from musiclit.model.delay import codebook_delays

    dec = model_config.decoder
    channels = int(getattr(dec, "audio_channels", 1))
    sample_rate = int(model_config.audio_encoder.sampling_rate)
    dim, ffn = int(dec.hidden_size), int(dec.ffn_dim)
    cfg: dict[str, Any] = {
        "lm_model": "transformer_lm",
        "compression_model": "encodec",
        "sample_rate": sample_rate,
        "channels": channels,
        "device": "cpu",
        "dtype": "float32",
        "dataset": {"segment_duration": segment_duration, "sample_rate": sample_rate, "channels": channels},
        "codebooks_pattern": {
            "modeling": "delay",
            "delay": {
                "delays": codebook_delays(int(dec.num_codebooks), channels),
                "flatten_first": 0,
                "empty_initial": 0,
            },
        },
        "transformer_lm": {
            "n_q": int(dec.num_codebooks),
            "card": int(dec.vocab_size),
            "dim": dim,
            "num_heads": int(dec.num_attention_heads),
            "num_layers": int(dec.num_hidden_layers),
            "hidden_scale": ffn // dim if ffn % dim == 0 else ffn / dim,
            "dropout": 0.0,
            "emb_lr": None,
            "activation": str(getattr(dec, "activation_function", "gelu")),
            "norm_first": True,
            "bias_ff": False,
            "bias_attn": False,
            "bias_proj": False,
            "past_context": None,
            "causal": True,
            "custom": False,
            "memory_efficient": True,
            "attention_as_float32": False,
            "layer_scale": None,
            "positional_embedding": "sin",
            "xpos": False,
            "checkpointing": "none",
            "weight_init": "gaussian",
            "depthwise_init": "current",
            "zero_bias_init": True,
            "norm": "layer_norm",
            "cross_attention": False,
            "qk_layer_norm": False,
            "qk_layer_norm_cross": False,
            "attention_dropout": None,
            "kv_repeat": 1,
            "two_step_cfg": False,
        },
        "classifier_free_guidance": {"training_dropout": 0.3, "inference_coef": 3.0},
        "attribute_dropout": {},
        "fuser": {
            "cross_attention_pos_emb": False,
            "cross_attention_pos_emb_scale": 1,
            "sum": [],
            "prepend": [],
            "cross": ["description"],
            "input_interpolate": [],
        },
        "conditioners": {
            "description": {
                "model": "t5",
                "t5": {"name": text_encoder_name, "finetune": False, "word_dropout": 0.3, "normalize_text": False},
            }
        },
    }
    if channels == 2:
        cfg["interleave_stereo_codebooks"] = {"use": True, "per_timestep": False}
    if getattr(model_config, "model_type", "") == "musicgen_melody":
        from musiclit.model.melody import N_FFT, NUM_CHROMA

        # audiocraft's chroma2music recipe: chroma and text prepended, melody dropped half the time, text 0.2
        cfg["fuser"].update({"prepend": ["self_wav", "description"], "cross": []})
        cfg["classifier_free_guidance"]["training_dropout"] = 0.2
        cfg["attribute_dropout"] = {"args": {"active_on_eval": False}, "text": {}, "wav": {"self_wav": 0.5}}
        cfg["conditioners"]["description"]["t5"]["word_dropout"] = 0.2
        cfg["conditioners"]["self_wav"] = {
            "model": "chroma_stem",
            "chroma_stem": {"sample_rate": sample_rate, "n_chroma": NUM_CHROMA, "radix2_exp": N_FFT.bit_length() - 1,
                            "argmax": True, "match_len_on_eval": True, "eval_wavs": None, "n_eval_wavs": 0,
                            "cache_path": None},
        }  # fmt: skip
    return cfg


# audiocraft's T5 conditioner builds the text encoder by name (T5Conditioner.MODELS) and sizes its output
# projection from its table of widths (MODELS_DIMS; its MODELS also lists google/flan-t5-xl and -xxl, which
# that table lacks, so audiocraft cannot build them). Each name's architecture as in its hub config:
# (d_model, num_layers, num_heads, gated feed-forward).
AUDIOCRAFT_T5: dict[str, tuple[int, int, int, bool]] = {
    "t5-small": (512, 6, 8, False),
    "t5-base": (768, 12, 12, False),
    "t5-large": (1024, 24, 16, False),
    "t5-3b": (1024, 24, 32, False),
    "t5-11b": (1024, 24, 128, False),
    "google/flan-t5-small": (512, 8, 6, True),
    "google/flan-t5-base": (768, 12, 12, True),
    "google/flan-t5-large": (1024, 24, 16, True),
}
# the hub moved the original T5 checkpoints under google-t5/; configs saved since name them so
_T5_ALIASES = {f"google-t5/{name}": name for name in AUDIOCRAFT_T5 if name.startswith("t5-")}


def audiocraft_text_encoder(text_config: Any) -> str:
    """The name audiocraft loads this text encoder by (its ``conditioners.description.t5.name``).

    Raises:
        AudiocraftFormatError: The text encoder is not one audiocraft can build (no name, another name, or
            an architecture that is not the named model's): audiocraft would load another encoder (or fail
            with a size mismatch in the text projection).
    """
    name = str(getattr(text_config, "_name_or_path", "") or "")
    name = _T5_ALIASES.get(name, name)
    width = int(getattr(text_config, "d_model", getattr(text_config, "hidden_size", 0)))
    layers = int(getattr(text_config, "num_layers", 0))
    heads = int(getattr(text_config, "num_heads", 0))
    gated = bool(getattr(text_config, "is_gated_act", False))
    known = ", ".join(AUDIOCRAFT_T5)
    what = f"'{name}'" if name else "unnamed"
    if name not in AUDIOCRAFT_T5:
        raise AudiocraftFormatError(
            f"its text encoder ({what}, width {width}) is not one audiocraft can load: audiocraft builds the "
            f"text encoder by name, from {known} (every released MusicGen uses t5-base); a model trained on "
            "another text encoder can be exported as --format merged or peft"
        )
    want = AUDIOCRAFT_T5[name]
    if (width, layers, heads, gated) != want:
        raise AudiocraftFormatError(
            f"its text encoder is named '{name}' but is not {name}'s architecture (width {width}, {layers} layers, "
            f"{heads} heads{', gated' if gated else ''}; {name}: width {want[0]}, {want[1]} layers, {want[2]} heads"
            f"{', gated' if want[3] else ''}): audiocraft would load the real {name} "
            f"({'another function' if width == want[0] else 'a size mismatch in the text projection'})"
        )
    return name


# audiocraft builds the LM from xp.cfg with its classes' defaults for absent keys (it merges nothing):
# LMModel(norm_first=False, bias_proj=True, hidden_scale=4, norm="layer_norm"), StreamingTransformer(causal=False,
# positional_embedding="sin", max_period=10000, positional_scale=1, bias_ff/bias_attn=True, ...), and
# nn.TransformerEncoderLayer's activation "relu"
_LM_DEFAULTS: dict[str, Any] = {
    "norm_first": False, "norm": "layer_norm", "bias_proj": True, "bias_ff": True, "bias_attn": True,
    "activation": "relu", "causal": False, "past_context": None, "layer_scale": None,
    "positional_embedding": "sin", "max_period": 10000, "positional_scale": 1.0, "xpos": False,
    "qk_layer_norm": False, "qk_layer_norm_cross": False, "kv_repeat": 1, "hidden_scale": 4,
}  # fmt: skip
# what transformers' MusicgenForCausalLM computes (pre-norm, no biases, causal, sinusoidal positions with
# period 10000 added unscaled), field by field; anything else is another function with the same weights
_LM_REQUIRED: dict[str, tuple[Any, str]] = {
    "norm_first": (True, "transformers' MusicGen decoder is pre-norm"),
    "norm": ("layer_norm", "transformers' MusicGen decoder uses LayerNorm"),
    "bias_proj": (False, "transformers' MusicGen output heads have no bias"),
    "bias_ff": (False, "transformers' MusicGen feed-forward layers have no bias"),
    "bias_attn": (False, "transformers' MusicGen attention has no bias"),
    "causal": (True, "transformers' MusicGen self-attention is causal"),
    "past_context": (None, "transformers' MusicGen attends to the whole past"),
    "layer_scale": (None, "transformers' MusicGen has no layer scale"),
    "positional_embedding": ("sin", "transformers' MusicGen uses sinusoidal positions only"),
    "max_period": (10000, "transformers' MusicGen sinusoids have period 10000"),
    "positional_scale": (1.0, "transformers' MusicGen adds its positions unscaled"),
    "xpos": (False, "transformers' MusicGen has no xpos"),
    "qk_layer_norm": (False, "transformers' MusicGen has no query/key norms"),
    "qk_layer_norm_cross": (False, "transformers' MusicGen has no query/key norms"),
    "kv_repeat": (1, "transformers' MusicGen has one key/value head per query head"),
}
# audiocraft activation -> transformers' activation_function (both exact: torch's F.gelu / F.relu)
_ACTIVATIONS = {"gelu": "gelu", "relu": "relu"}


def _field(cfg: dict[str, Any], path: str, default: Any) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def decoder_config(cfg: dict[str, Any], text_config: Any = None) -> dict[str, Any]:
    """transformers ``MusicgenDecoderConfig`` fields for the LM an ``xp.cfg`` describes, after checking that
    every field that changes its function (without changing its weights) is one transformers can express.

    Args:
        cfg: The experiment config (a plain dict).
        text_config: The text-encoder config of the base the LM is imported onto (checked against the
            conditioner the LM was trained with), or None.

    Raises:
        AudiocraftFormatError: Names the first field transformers cannot express, and why.
    """
    from musiclit.model.delay import codebook_delays

    def refuse(path: str, value: Any, why: str) -> AudiocraftFormatError:
        return AudiocraftFormatError(
            f"xp.cfg {path} is {value!r}: {why}; the imported model would compute something else"
        )

    if _field(cfg, "lm_model", "transformer_lm") != "transformer_lm":
        raise refuse("lm_model", cfg.get("lm_model"), "musiclit imports MusicGen's transformer_lm")
    lm = cfg.get("transformer_lm")
    if not isinstance(lm, dict):
        raise AudiocraftFormatError("xp.cfg lacks the transformer_lm section")
    try:
        dim = int(lm["dim"])
        n_q = int(lm["n_q"])
        out: dict[str, Any] = {
            "hidden_size": dim,
            "num_hidden_layers": int(lm["num_layers"]),
            "num_attention_heads": int(lm["num_heads"]),
            "ffn_dim": int(float(lm.get("hidden_scale", _LM_DEFAULTS["hidden_scale"])) * dim),
            "num_codebooks": n_q,
            "vocab_size": int(lm["card"]),
        }
    except (KeyError, TypeError, ValueError) as err:
        raise AudiocraftFormatError(f"xp.cfg lacks the transformer_lm sizes ({err})") from None
    for key, (want, why) in _LM_REQUIRED.items():
        value = lm.get(key, _LM_DEFAULTS[key])
        if value != want and not (isinstance(want, float) and isinstance(value, (int, float)) and float(value) == want):
            missing = "" if key in lm else " (absent: audiocraft's default)"
            raise refuse(f"transformer_lm.{key}", value, why + missing)
    activation = lm.get("activation", _LM_DEFAULTS["activation"])
    if activation not in _ACTIVATIONS:
        raise refuse(
            "transformer_lm.activation", activation, "transformers' MusicGen decoder supports gelu and relu here"
        )
    out["activation_function"] = _ACTIVATIONS[activation]
    channels = int(cfg.get("channels", 1) or 1)
    if channels not in (1, 2):
        raise refuse("channels", channels, "MusicGen is mono or stereo")
    if channels == 2 and (
        not _field(cfg, "interleave_stereo_codebooks.use", False)
        or _field(cfg, "interleave_stereo_codebooks.per_timestep", False)
    ):
        raise refuse(
            "interleave_stereo_codebooks", cfg.get("interleave_stereo_codebooks"),
            "transformers' stereo MusicGen interleaves left/right codebooks (use: true, per_timestep: false)",
        )  # fmt: skip
    out["audio_channels"] = channels
    pattern = cfg.get("codebooks_pattern") or {}
    modeling = pattern.get("modeling", "delay")
    if modeling != "delay":
        raise refuse("codebooks_pattern.modeling", modeling, "MusicGen uses the delay pattern")
    want_delays = codebook_delays(n_q, channels)
    delays = _field(pattern, "delay.delays", None)
    delays = list(range(n_q)) if delays is None else [int(d) for d in delays]
    if delays != want_delays:
        raise refuse(
            "codebooks_pattern.delay.delays", delays, f"transformers' MusicGen delays codebooks by {want_delays}"
        )
    for key in ("flatten_first", "empty_initial"):
        if int(_field(pattern, f"delay.{key}", 0) or 0) != 0:
            raise refuse(f"codebooks_pattern.delay.{key}", _field(pattern, f"delay.{key}", 0), "MusicGen uses 0")
    fuser = cfg.get("fuser") or {}
    if fuser.get("cross_attention_pos_emb", False):
        raise refuse(
            "fuser.cross_attention_pos_emb", True, "transformers' MusicGen adds no positions to the text states"
        )
    conditioners = cfg.get("conditioners") or {}
    # MusicGen-melody (transformers' MusicgenMelody) prepends the chroma, then the text; MusicGen cross-attends
    melody = "self_wav" in conditioners or "self_wav" in (fuser.get("prepend") or [])
    want = (
        {"prepend": ["self_wav", "description"], "cross": []} if melody else {"prepend": [], "cross": ["description"]}
    )
    how = "prepends the chroma, then the text" if melody else "conditions on the text by cross-attention only"
    for key in ("sum", "input_interpolate", "prepend", "cross"):
        if list(fuser.get(key) or []) != want.get(key, []):
            raise refuse(f"fuser.{key}", fuser.get(key), f"transformers' MusicGen{'-melody' if melody else ''} {how}")
    if set(conditioners) != ({"description", "self_wav"} if melody else {"description"}):
        what = "a text description and a chroma (self_wav)" if melody else "a text description only"
        raise refuse("conditioners", sorted(conditioners), f"musiclit imports MusicGen conditioned on {what}")
    if melody:
        from musiclit.model.melody import N_FFT, NUM_CHROMA

        stem = conditioners["self_wav"] or {}
        if stem.get("model") != "chroma_stem":
            raise refuse("conditioners.self_wav.model", stem.get("model"), "MusicGen-melody's condition is chroma_stem")
        # what musiclit's chroma computes (model/melody.py); ChromaExtractor's own default for argmax is False
        for key, value, default in (("n_chroma", NUM_CHROMA, None), ("radix2_exp", N_FFT.bit_length() - 1, None),
                                    ("argmax", True, False), ("sample_rate", 32000, None)):  # fmt: skip
            got = _field(stem, f"chroma_stem.{key}", default)
            if got != value:
                raise refuse(f"conditioners.self_wav.chroma_stem.{key}", got, f"musiclit's chroma uses {value}")
    description = conditioners["description"] or {}
    if description.get("model") != "t5":
        raise refuse("conditioners.description.model", description.get("model"), "MusicGen's text encoder is T5")
    t5 = description.get("t5") or {}
    if t5.get("normalize_text", False):
        raise refuse("conditioners.description.t5.normalize_text", True, "audiocraft normalises (lemmatises) the text")
    name = t5.get("name")
    if text_config is not None:
        # a base whose text encoder audiocraft knows must be the one the LM was trained with (same width,
        # other weights: t5-base and flan-t5-base); another base is the user's choice (its width is
        # checked by the text projection's shape)
        try:
            base_name = audiocraft_text_encoder(text_config)
        except AudiocraftFormatError:
            base_name = None
        if base_name is not None and name != base_name:
            why = f"the base's text encoder is {base_name}: import onto a base with {name}"
            raise refuse("conditioners.description.t5.name", name, why)
    return out


def decoder_sizes(cfg: dict[str, Any]) -> dict[str, int]:
    """transformers decoder sizes from an ``xp.cfg`` (hidden, layers, heads, ffn, codebooks, vocabulary)."""
    config = decoder_config(cfg)
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim", "num_codebooks", "vocab_size")
    return {k: config[k] for k in keys}
