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
    """transformers state-dict entries (decoder + ``enc_to_dec_proj``) from an audiocraft ``best_state``."""
    out: dict[str, Any] = {}
    for key, value in best_state.items():
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


def decoder_sizes(cfg: dict[str, Any]) -> dict[str, int]:
    """transformers decoder sizes from an ``xp.cfg`` (hidden, layers, heads, ffn, codebooks, vocabulary)."""
    try:
        lm = cfg["transformer_lm"]
        dim = int(lm["dim"])
        sizes = {
            "hidden_size": dim,
            "num_hidden_layers": int(lm["num_layers"]),
            "num_attention_heads": int(lm["num_heads"]),
            "ffn_dim": int(float(lm.get("hidden_scale", 4)) * dim),
            "num_codebooks": int(lm["n_q"]),
            "vocab_size": int(lm["card"]),
        }
    except (KeyError, TypeError, ValueError) as err:
        raise AudiocraftFormatError(f"xp.cfg lacks the transformer_lm sizes ({err})") from None
    pattern = cfg.get("codebooks_pattern") or {}
    if pattern.get("modeling", "delay") != "delay":
        raise AudiocraftFormatError(f"codebooks_pattern.modeling is {pattern.get('modeling')!r}; MusicGen uses 'delay'")
    for flag in ("bias_ff", "bias_attn"):
        if lm.get(flag):
            raise AudiocraftFormatError(f"transformer_lm.{flag} is true; transformers' MusicGen has no such biases")
    return sizes
