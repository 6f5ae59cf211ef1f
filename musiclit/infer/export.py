"""``python -m musiclit export`` and ``python -m musiclit import``: a fine-tune outside musiclit.

Export formats (from a musiclit checkpoint ``.ckpt`` or a peft adapter folder, plus its base model):

* ``peft``: ``adapter_config.json`` + ``adapter_model.safetensors``, for
  ``PeftModel.from_pretrained(MusicgenForConditionalGeneration.from_pretrained(base), folder)``.
* ``merged``: a transformers model folder with the adapter merged into the weights (safetensors) and the
  processor/tokenizer saved: ``MusicgenForConditionalGeneration.from_pretrained(folder)`` and
  ``pipeline("text-to-audio", model=folder)`` load it with neither peft nor musiclit installed.
* ``audiocraft``: ``state_dict.bin`` + ``compression_state_dict.bin`` that audiocraft's
  ``MusicGen.get_pretrained(folder)`` loads (``torch.save`` files: that format requires pickles).

``import`` turns an audiocraft-format fine-tune back into a transformers model folder, taking the text
encoder and the codec from a base model.

Every export is written into a temporary sibling folder and renamed into place when complete, so a crash
never leaves a half-written export that looks complete; an existing folder is replaced only with --force.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from musiclit.errors import MusiclitError
from musiclit.io import OutputExistsError, atomic_folder

FORMATS = ("peft", "merged", "audiocraft")
MARKER = "musiclit_export.json"


class ExportError(MusiclitError, ValueError):
    """An export/import a user can fix; the message names the file and the problem."""


def _marker(folder: Path, **info: Any) -> None:
    from musiclit import __version__
    from musiclit.io import atomic_write_json

    atomic_write_json(folder / MARKER, {"musiclit_version": __version__, **info})


def _merged_model(ft: Any) -> Any:
    """The plain transformers model with LoRA merged in (full/plain models and mixes as they are)."""
    if ft.kind == "lora":
        return ft.model.merge_and_unload(safe_merge=True)
    return ft.model


def _sources(ft: Any) -> Any:
    """What the export came from: the adapter/checkpoint, or each mixed one with its strength."""
    if ft.kind == "mix":
        return [{"path": p, "scale": s} for p, s in zip(ft.extra["sources"], ft.extra["scales"], strict=True)]
    return ft.adapter_source


def export_peft(ft: Any, out: str | Path, force: bool = False) -> Path:
    """Write ``ft``'s LoRA adapter in peft's layout (safetensors); a plain-LoRA mix as one stacked adapter."""
    if ft.kind == "mix":
        from safetensors.torch import save_file

        from musiclit.model.finetune import FineTuneError
        from musiclit.model.mix import cat_adapter

        try:
            config, weights = cat_adapter(ft)
        except FineTuneError as err:
            raise ExportError(str(err)) from None
        with atomic_folder(out, force) as tmp:
            config.save_pretrained(str(tmp))
            save_file(weights, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
            _marker(tmp, format="peft", source=_sources(ft), base=ft.base_source, init_seed=ft.init_seed)
        return Path(out)
    if ft.kind != "lora":
        raise ExportError(
            f"{ft.adapter_source or ft.base_source}: a {'full fine-tune' if ft.kind == 'full' else 'model'} "
            "has no LoRA adapter to export; use --format merged or audiocraft"
        )
    config = ft.model.peft_config["default"]
    config.base_model_name_or_path = ft.base_source
    config.inference_mode = True
    with atomic_folder(out, force) as tmp:
        ft.model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "README.md").unlink(missing_ok=True)
        _marker(tmp, format="peft", source=ft.adapter_source, base=ft.base_source, init_seed=ft.init_seed)
    return Path(out)


def export_merged(ft: Any, out: str | Path, force: bool = False) -> Path:
    """Write a transformers model folder with the fine-tune merged in, plus processor and tokenizer."""
    from musiclit.model.musicgen import save_model_folder

    model = _merged_model(ft).float()
    with atomic_folder(out, force) as tmp:
        save_model_folder(model, ft.loaded.tokenizer, tmp)
        _marker(tmp, format="merged", source=_sources(ft), base=ft.base_source, init_seed=ft.init_seed)
    return Path(out)


def export_audiocraft(ft: Any, out: str | Path, force: bool = False, segment_duration: float = 30.0) -> Path:
    """Write ``state_dict.bin`` + ``compression_state_dict.bin`` in audiocraft's MusicGen layout."""
    import torch

    from musiclit import __version__
    from musiclit.model.audiocraft import AudiocraftFormatError, audiocraft_text_encoder, to_audiocraft, xp_config

    config = ft.base.config
    if int(config.audio_encoder.sampling_rate) != 32000 or int(config.decoder.vocab_size) != 2048:
        raise ExportError(
            f"{ft.base_source}: audiocraft MusicGen uses the 32 kHz EnCodec with 2048-entry codebooks; this model's "
            f"codec is {config.audio_encoder.sampling_rate} Hz / {config.decoder.vocab_size} entries"
        )
    activation = str(getattr(config.decoder, "activation_function", "gelu"))
    if activation not in ("gelu", "relu"):
        raise ExportError(
            f"{ft.base_source}: its decoder's activation '{activation}' has no audiocraft counterpart (gelu, relu)"
        )
    try:  # refuse before writing anything: audiocraft loads the text encoder by name
        text_encoder = audiocraft_text_encoder(config.text_encoder)
    except AudiocraftFormatError as err:
        raise ExportError(f"{ft.adapter_source or ft.base_source}: cannot export for audiocraft: {err}") from None
    model = _merged_model(ft).float()
    best_state = to_audiocraft(model.state_dict(), int(config.decoder.hidden_size))
    best_state = {k: v.detach().cpu().contiguous().clone() for k, v in best_state.items()}
    pkg = {
        "best_state": best_state,
        "xp.cfg": xp_config(config, text_encoder, segment_duration),
        "version": f"musiclit-{__version__}",
        "exported": True,
    }
    codec = {"pretrained": "facebook/encodec_32khz", "exported": True, "version": f"musiclit-{__version__}"}
    with atomic_folder(out, force) as tmp:
        torch.save(pkg, tmp / "state_dict.bin")
        torch.save(codec, tmp / "compression_state_dict.bin")
        _marker(tmp, format="audiocraft", source=_sources(ft), base=ft.base_source, init_seed=ft.init_seed)
    return Path(out)


def read_audiocraft(folder: str | Path, trust_pickle: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(best_state, xp_cfg)`` of an audiocraft-format folder (``state_dict.bin``)."""
    import torch

    from musiclit.io import load_tensors

    path = Path(folder) / "state_dict.bin"
    if not path.is_file():
        raise ExportError(f"{folder}: no state_dict.bin (not an audiocraft MusicGen folder)")
    if not trust_pickle:
        pkg = load_tensors(path, "audiocraft state_dict.bin", hint="; if you trust the file, pass --trust-pickle")
    else:
        try:
            pkg = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as err:
            raise ExportError(f"{path}: cannot read it ({type(err).__name__}: {err})") from None
    if not isinstance(pkg, dict) or "best_state" not in pkg or "xp.cfg" not in pkg:
        raise ExportError(f"{path}: no 'best_state' / 'xp.cfg' (not an exported audiocraft LM)")
    cfg = pkg["xp.cfg"]
    if isinstance(cfg, str):
        import yaml

        cfg = yaml.safe_load(cfg)
    elif not isinstance(cfg, dict):
        try:  # an omegaconf DictConfig (only with --trust-pickle)
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_container(cfg, resolve=True)
        except ImportError:
            raise ExportError(f"{path}: xp.cfg is a {type(cfg).__name__}; install omegaconf to read it") from None
    best = pkg["best_state"]
    if isinstance(best, dict) and "model" in best and isinstance(best["model"], dict):
        best = best["model"]  # an unexported training checkpoint
    return best, cfg


def _check_codec_pointer(folder: Path) -> None:
    """``compression_state_dict.bin`` must point at the 32 kHz EnCodec the base's codec is (when present)."""
    import pickle

    import torch

    path = folder / "compression_state_dict.bin"
    if not path.is_file():
        return
    try:
        codec = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError) as err:
        raise ExportError(f"{path}: cannot read it ({str(err).splitlines()[0]})") from None
    pointer = codec.get("pretrained") if isinstance(codec, dict) else None
    if pointer != "facebook/encodec_32khz":
        raise ExportError(
            f"{path}: the LM's codec is {pointer or 'a codec trained with it (weights in the file)'}, not "
            "facebook/encodec_32khz: its codes mean something else to the base's codec"
        )


def import_audiocraft(
    folder: str | Path, base: str, out: str | Path, force: bool = False, trust_pickle: bool = False, init_seed: int = 0
) -> Path:
    """Build a transformers MusicGen folder from an audiocraft-format LM plus a base's text encoder and codec."""
    import torch

    from musiclit.model.audiocraft import CHROMA_AC, AudiocraftFormatError, decoder_config, from_audiocraft
    from musiclit.model.musicgen import ModelLoadError, describe, load_musicgen, model_classes, save_model_folder

    folder = Path(folder)
    best, cfg = read_audiocraft(folder, trust_pickle)
    _check_codec_pointer(folder)
    try:
        decoder_config(cfg)  # before loading the base: the LM's own fields
    except AudiocraftFormatError as err:
        raise ExportError(f"{folder / 'state_dict.bin'}: {err}") from None
    try:
        loaded = load_musicgen(base, init_seed=init_seed)
    except ModelLoadError as err:
        raise ExportError(f"{base}: cannot load the base model for its text encoder and codec: {err}") from None
    base_model = loaded.model
    melody = any(k.startswith(CHROMA_AC) for k in best)
    if melody != loaded.melody:
        raise ExportError(
            f"{folder}: a {'melody' if melody else 'text-only'} MusicGen, but the base '{base}' is "
            f"{'a melody model' if loaded.melody else 'not a melody model'}: give a base of the same kind "
            "(e.g. facebook/musicgen-melody for a melody fine-tune)"
        )
    try:
        sizes = decoder_config(cfg, base_model.config.text_encoder)
    except AudiocraftFormatError as err:
        raise ExportError(f"{folder / 'state_dict.bin'} onto the base '{base}': {err}") from None
    if int(cfg.get("sample_rate", 32000)) != int(base_model.config.audio_encoder.sampling_rate):
        raise ExportError(
            f"{folder / 'state_dict.bin'}: xp.cfg sample_rate is {cfg.get('sample_rate')}, the base's codec runs at "
            f"{base_model.config.audio_encoder.sampling_rate} Hz"
        )
    config_dict = base_model.config.to_dict()
    config_dict["decoder"].update(sizes)
    config_class, model_class = model_classes(base_model.config.model_type)
    config = config_class.from_dict(config_dict)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_class(config)
    try:
        mapped = from_audiocraft(best, sizes["hidden_size"])
    except AudiocraftFormatError as err:
        raise ExportError(f"{folder / 'state_dict.bin'}: {err}") from None
    target = model.state_dict()
    proj_w = mapped.get("enc_to_dec_proj.weight")
    if proj_w is not None and "enc_to_dec_proj.weight" not in target:
        eye = torch.eye(sizes["hidden_size"], dtype=proj_w.dtype)
        bias = mapped.get("enc_to_dec_proj.bias")
        if proj_w.shape != eye.shape or not torch.equal(proj_w, eye) or (bias is not None and bias.abs().max() > 0):
            raise ExportError(
                f"{folder}: its text projection is not the identity but the base '{base}' has no projection "
                "(its text encoder width equals the decoder width); use the base model it was trained from"
            )
        mapped.pop("enc_to_dec_proj.weight")
        mapped.pop("enc_to_dec_proj.bias", None)
    for key, value in mapped.items():
        if key not in target:
            raise ExportError(f"{folder}: weight {key} has no place in the imported model")
        if tuple(target[key].shape) != tuple(value.shape):
            raise ExportError(
                f"{folder}: weight {key} has shape {tuple(value.shape)}, the model needs {tuple(target[key].shape)} "
                f"(does the base '{base}' text encoder match the one it was trained with?)"
            )
    want = {k for k in target if k.startswith(("decoder.", "enc_to_dec_proj.", "audio_enc_to_dec_proj."))}
    missing = sorted(want - set(mapped))
    if missing:
        raise ExportError(f"{folder}: {len(missing)} decoder weights are missing (e.g. {missing[0]})")
    state = {k: v for k, v in base_model.state_dict().items() if k.startswith(("text_encoder.", "audio_encoder."))}
    state.update({k: v.float() for k, v in mapped.items()})
    model.load_state_dict(state, strict=False)
    model.generation_config = base_model.generation_config
    describe(model, loaded.tokenizer)  # rates and codebooks are consistent
    with atomic_folder(out, force) as tmp:
        save_model_folder(model, loaded.tokenizer, tmp)
        _marker(tmp, format="transformers", imported_from=str(folder.resolve()), base=base)
    return Path(out)


def export(
    source: str | None,
    fmt: str,
    out: str | Path,
    model: str | None = None,
    force: bool = False,
    init_seed: int | None = None,
    segment_duration: float = 30.0,
    mix: list[tuple[str, float]] | None = None,
) -> Path:
    """Export a checkpoint/adapter (or a model folder, for merged/audiocraft) to ``fmt``; see the module doc.

    ``mix`` (``[(adapter, strength), ...]``, with ``source`` None) exports several fine-tunes of one base mixed
    at their strengths (:func:`musiclit.model.mix.load_mix`).
    """
    from musiclit.model.finetune import load_finetune

    if fmt not in FORMATS:
        raise ExportError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
    out = Path(out)
    if out.exists() and not force:  # fail before loading anything
        raise OutputExistsError(f"{out}: already exists (use --force to replace it)")
    if mix:
        from musiclit.model.mix import load_mix

        ft = load_mix([m[0] for m in mix], [m[1] for m in mix], model, init_seed)
        return _write(ft, fmt, out, force, segment_duration)
    if source is None:
        raise ExportError("give the checkpoint or adapter to export (or several --adapter to mix)")
    path = Path(source).expanduser()
    is_model_folder = path.is_dir() and (path / "config.json").is_file() and not (path / "adapter_config.json").exists()
    if is_model_folder:
        ft = load_finetune(model=str(path), adapter=None, init_seed=init_seed)
    else:
        if not path.exists():
            raise ExportError(f"{path}: no such checkpoint file or adapter folder")
        ft = load_finetune(model=model, adapter=str(path), init_seed=init_seed)
    return _write(ft, fmt, out, force, segment_duration)


def _write(ft: Any, fmt: str, out: Path, force: bool, segment_duration: float) -> Path:
    if fmt == "peft":
        return export_peft(ft, out, force)
    if fmt == "merged":
        return export_merged(ft, out, force)
    return export_audiocraft(ft, out, force, segment_duration)
