"""Loading a fine-tune: a base model plus a peft adapter folder, a musiclit checkpoint, or a merged model.

Plain torch/transformers/peft code, no Lightning: a musiclit checkpoint (``.ckpt``) is read as a plain file.
Every mismatch between an adapter and a base (other target modules, another model size, more layers) is
explained before peft sees it.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from musiclit.errors import MusiclitError


class FineTuneError(MusiclitError, ValueError):
    """A fine-tune (checkpoint, adapter or model) that cannot be loaded; the message names the file and why."""


class AdapterMismatchError(FineTuneError):
    """An adapter or checkpoint that does not fit the base model (size, layers, target modules)."""


@dataclass
class FineTune:
    """A loaded model: the base with an adapter injected (LoRA), fine-tuned weights (full) or alone.

    Attributes:
        model: ``PeftModel`` for LoRA, else ``MusicgenForConditionalGeneration``.
        loaded: The base's :class:`~musiclit.model.musicgen.LoadedMusicGen` (rates, codebooks, tokenizer).
        kind: "lora", "full" or "plain" (a base or merged model without adapter).
        base_source: Where the base came from (hub id, folder or config file).
        adapter_source: The adapter folder or checkpoint file (None for "plain").
        init_seed: Seed of the random init when the base is a config file.
        lora: The LoRA settings of a musiclit checkpoint (None otherwise).
    """

    model: Any
    loaded: Any
    kind: str
    base_source: str
    adapter_source: str | None = None
    init_seed: int = 0
    lora: dict[str, Any] | None = None
    full_scale: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> Any:
        """The ``MusicgenForConditionalGeneration`` (adapters injected for LoRA)."""
        from musiclit.model.lora import base_model

        return base_model(self.model)

    def place(self, device: Any, dtype: Any) -> None:
        """Put the model on ``device`` with the decoder (adapters included) and text projection in ``dtype``.

        The cast happens on the host first, then the move: the decoder never exists on the device in float32
        (musicgen-large's float32 decoder alone is 13 GB, more than a 12 GB card holds). The text encoder and
        the codec stay float32.
        """
        base = self.base
        base.decoder.to(dtype=dtype)
        if getattr(base, "enc_to_dec_proj", None) is not None:
            base.enc_to_dec_proj.to(dtype=dtype)
        base.to(device)


def _resolve_source(source: str, search: Sequence[Path] = ()) -> str:
    """A local path made absolute when it exists (as given, else under one of ``search``); hub ids unchanged."""
    path = Path(source).expanduser()
    if path.exists():
        return str(path.resolve())
    if not path.is_absolute():
        for folder in search:
            if (folder / path).exists():
                return str((folder / path).resolve())
    return source


# files of a model folder that decide what it computes (weights, config, text tokenizer)
_BASE_FILES = ("config.json", "*.safetensors", "*.bin", "tokenizer.json", "spiece.model")


def _looks_like_hub_id(source: str) -> bool:
    """``org/name`` (one slash, no path prefix, no file suffix): what the hub accepts; anything else is a path."""
    return (
        source.count("/") == 1
        and not source.startswith((".", "/", "~"))
        and not source.endswith(".json")
        and "\\" not in source
    )


def base_fingerprint(source: str, init_seed: int = 0) -> dict[str, Any]:
    """Where a base model really is and what it holds, for a checkpoint to record.

    Returns ``{"source": as given, "kind": "hub" | "folder" | "config", "path": absolute path (local only),
    "init_seed", "files": {name: {"size", "mtime_ns", "sha256"}}}``: a config ``.json`` (random init from
    ``init_seed``) or a model folder's config, weights and tokenizer files, hashed.
    """
    from musiclit.io import file_sha256

    path = Path(source).expanduser()
    if not path.exists():
        return {"source": source, "kind": "hub", "init_seed": int(init_seed)}
    path = path.resolve()
    if path.is_file():
        files = [path]
    else:
        files = sorted({f for pattern in _BASE_FILES for f in path.glob(pattern) if f.is_file()})
    record: dict[str, Any] = {"source": source, "kind": "config" if path.is_file() else "folder", "path": str(path)}
    record["init_seed"] = int(init_seed)
    record["files"] = {
        f.name: {"size": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns, "sha256": file_sha256(f)} for f in files
    }
    return record


def base_differs(record: dict[str, Any], path: Path) -> str | None:
    """Why the base at ``path`` is not the one ``record`` describes (None when it is). A file whose size and
    modification time are as recorded is trusted without re-hashing (gigabytes of weights)."""
    from musiclit.io import file_sha256

    for name, want in (record.get("files") or {}).items():
        f = path if path.is_file() else path / name
        if not f.is_file():
            return f"{name} is missing"
        st = f.stat()
        if (st.st_size, st.st_mtime_ns) == (want["size"], want["mtime_ns"]):
            continue
        if st.st_size != want["size"] or file_sha256(f) != want["sha256"]:
            return f"{name} has changed"
    return None


def _find_base(ckpt_path: Path, given: str, record: dict[str, Any] | None) -> str:
    """The base a checkpoint was trained on: where it recorded it, else its ``pretrained`` resolved against
    the working folder and the checkpoint's folders; checked against the recorded hashes."""
    candidates: list[Path] = []
    if record and record.get("path"):
        candidates.append(Path(record["path"]))
    if given and (record or {}).get("kind") != "hub":
        rel = Path(given).expanduser()
        if rel.is_absolute():
            candidates.append(rel)
        else:
            candidates += [Path.cwd() / rel] + [folder / rel for folder in list(ckpt_path.resolve().parents)[:4]]
    tried: list[str] = []
    for candidate in candidates:
        if str(candidate) in tried:
            continue
        tried.append(str(candidate))
        if candidate.exists():
            reason = base_differs(record, candidate) if record else None
            if reason:
                raise FineTuneError(
                    f"{ckpt_path}: the base model at {candidate} is not the one it was trained on ({reason} since "
                    f"training); pass --model {candidate} to use it anyway"
                )
            return str(candidate.resolve())
    if (record or {}).get("kind") == "hub" or (record is None and _looks_like_hub_id(given)):
        return given
    raise FineTuneError(
        f"{ckpt_path}: its base model '{given}' is not found (tried {', '.join(tried) or 'nothing'}); "
        "pass --model with the base model it was trained on"
    )


def _load_base(source: str, init_seed: int, what: str) -> Any:
    from musiclit.model.musicgen import ModelLoadError, load_musicgen

    try:
        return load_musicgen(source, init_seed=init_seed)
    except ModelLoadError as err:
        raise FineTuneError(f"{what}: cannot load its base model: {err}") from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a musiclit checkpoint (``.ckpt``) on the CPU, with a clear error when it is not one."""
    from musiclit.io import UnsafeFileError, load_tensors

    path = Path(path)
    try:
        ckpt = load_tensors(path, "checkpoint")  # weights_only: a checkpoint from a stranger cannot run code
    except UnsafeFileError:
        raise
    except MusiclitError as err:
        raise FineTuneError(str(err)) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise FineTuneError(f"{path}: not a musiclit checkpoint (no state_dict / hyper_parameters)")
    return ckpt


def _lora_dict(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if is_dataclass(value):
        return asdict(value)  # type: ignore[arg-type]
    if isinstance(value, dict):
        return dict(value.get("init_args", value)) if "class_path" in value else dict(value)
    raise FineTuneError(f"unexpected LoRA settings in checkpoint: {value!r}")


def _check_state(path: Path, model: Any, state: dict[str, Any], base_source: str) -> None:
    """Compare weights from a file with the model they should load into; explain any mismatch."""
    have = model.state_dict()
    missing = sorted(k for k in have if k not in state and _trainable_like(k, state))
    unexpected = sorted(k for k in state if k not in have)
    if unexpected:
        raise AdapterMismatchError(
            f"{path}: {len(unexpected)} weights match no module of the base model '{base_source}' "
            f"(e.g. {unexpected[0]}); the adapter was made for other target modules or another architecture "
            "(use --model to give the base it was trained on)"
        )
    for key, value in state.items():
        if tuple(have[key].shape) != tuple(value.shape):
            raise AdapterMismatchError(
                f"{path}: weight {key} has shape {tuple(value.shape)} but the base model '{base_source}' needs "
                f"{tuple(have[key].shape)}: the adapter was trained on a different model size "
                "(use --model to give the base it was trained on)"
            )
    if missing:
        raise AdapterMismatchError(
            f"{path}: {len(missing)} weights the model needs are missing (e.g. {missing[0]}): the base model "
            f"'{base_source}' has more layers/modules than the one it was trained on, or the LoRA settings differ"
        )


def _trainable_like(key: str, state: dict[str, Any]) -> bool:
    """Keys of the same kind as the ones in ``state`` (LoRA weights if it holds LoRA weights)."""
    if any(".lora_" in k for k in state):
        return ".lora_A." in key or ".lora_B." in key or ".lora_magnitude_vector." in key
    return key.startswith(("decoder.", "enc_to_dec_proj.", "audio_enc_to_dec_proj."))


def checkpoint_model_state(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The model's weights in a musiclit checkpoint, named as in the model (the ``model.`` prefix removed)."""
    return {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


def apply_checkpoint_lora(
    path: Path, model: Any, state: dict[str, Any], lora: dict[str, Any], source: str
) -> tuple[Any, bool]:
    """``(peft model, is_dora)``: ``model`` with the LoRA of a checkpoint's settings (no dropout), its weights
    loaded from ``state``.

    Raises:
        AdapterMismatchError: The settings or weights do not fit the base ``source`` (the message names ``path``).
    """
    from musiclit.model.lora import LoraSettings, apply_lora

    settings = LoraSettings(**{k: v for k, v in lora.items() if k in {f.name for f in fields(LoraSettings)}})
    settings.init_lora_weights = True  # overwritten by the checkpoint's weights
    settings.dropout = 0.0
    try:
        peft_model = apply_lora(model, settings)
    except ValueError as err:
        raise AdapterMismatchError(f"{path}: its LoRA settings do not fit the base '{source}': {err}") from None
    _check_state(path, peft_model, state, source)
    peft_model.load_state_dict(state, strict=False)
    return peft_model, settings.use_dora


def _load_checkpoint(path: Path, model_override: str | None, init_seed: int | None, scale: float) -> FineTune:
    ckpt = read_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    seed = int(hp.get("init_seed", 0) if init_seed is None else init_seed)
    if model_override:
        source = _resolve_source(model_override, list(path.resolve().parents)[:4])
    else:
        record = (ckpt.get("musiclit") or {}).get("base")
        source = _find_base(path, str(hp.get("pretrained", "")), record if isinstance(record, dict) else None)
    loaded = _load_base(source, seed, str(path))
    state = checkpoint_model_state(ckpt)
    lora = _lora_dict(hp.get("lora"))
    model = loaded.model
    if lora is not None:
        model, _ = apply_checkpoint_lora(path, model, state, lora, source)
        kind = "lora"
    else:
        _check_state(path, model, state, source)
        if scale != 1.0:
            with _no_grad():
                current = model.state_dict()
                state = {k: current[k].float() + scale * (v.float() - current[k].float()) for k, v in state.items()}
        model.load_state_dict(state, strict=False)
        kind = "full"
    model.eval()
    return FineTune(model, loaded, kind, source, str(path), seed, lora, full_scale=scale)


@contextlib.contextmanager
def _no_grad() -> Iterator[None]:
    import torch

    with torch.no_grad():
        yield


def _adapter_weights(folder: Path) -> dict[str, Any]:
    st = folder / "adapter_model.safetensors"
    if st.exists():
        from safetensors.torch import load_file

        return load_file(str(st))
    binf = folder / "adapter_model.bin"
    if binf.exists():
        from musiclit.io import load_tensors

        return load_tensors(binf, "adapter weights file")
    raise FineTuneError(f"{folder}: no adapter_model.safetensors (or adapter_model.bin) in the adapter folder")


def _targets(config: dict[str, Any], names: list[str]) -> list[str]:
    """Module names a peft LoRA config selects (the same rule peft uses: full regex match or name suffix)."""
    target = config.get("target_modules")
    if isinstance(target, str):
        return [n for n in names if re.fullmatch(target, n)]
    target = list(target or [])
    return [n for n in names if any(n == t or n.endswith("." + t) for t in target)]


def check_adapter(folder: str | Path, base: Any, base_source: str = "the base model") -> None:
    """Check that a peft adapter folder fits ``base`` before peft loads it.

    Raises:
        AdapterMismatchError: The target modules select no module, other modules than the adapter has
            weights for, or the weight shapes differ (another model size).
    """
    import torch

    folder = Path(folder)
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterMismatchError(f"{folder}: a {config.get('peft_type')} adapter; musiclit generates with LoRA")
    modules = dict(base.named_modules())
    selected = {n for n in _targets(config, list(modules)) if isinstance(modules[n], torch.nn.Linear)}
    weights = _adapter_weights(folder)
    adapted: dict[str, dict[str, Any]] = {}
    for key, value in weights.items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[\w-]+)?\.weight", key)
        if m:
            adapted.setdefault(m.group(1), {})[m.group(2)] = value
            continue
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_magnitude_vector(?:\.[\w-]+)?(?:\.weight)?", key)
        if m:
            adapted.setdefault(m.group(1), {})["m"] = value
    if not selected:
        raise AdapterMismatchError(
            f"{folder}: its target modules {config.get('target_modules')!r} match no layer of {base_source}: "
            "the adapter was made for another model"
        )
    unknown = sorted(set(adapted) - set(modules))
    if unknown:
        raise AdapterMismatchError(
            f"{folder}: the adapter has weights for {len(unknown)} modules that {base_source} does not have "
            f"(e.g. {unknown[0]}): another architecture or more layers than this base"
        )
    not_targeted = sorted(set(adapted) - selected)
    if not_targeted:
        raise AdapterMismatchError(
            f"{folder}: the adapter has weights for {len(not_targeted)} modules that its target_modules do not "
            f"select (e.g. {not_targeted[0]}); adapter_config.json does not belong to these weights"
        )
    without = sorted(selected - set(adapted))
    if without:
        raise AdapterMismatchError(
            f"{folder}: its target modules select {len(selected)} layers of {base_source} but it has weights for "
            f"{len(adapted)} (e.g. none for {without[0]}): the base has more layers than the model it was "
            "trained on"
        )
    for name, ab in sorted(adapted.items()):
        linear = modules[name]
        a, b = ab.get("A"), ab.get("B")
        if a is None or b is None:
            raise AdapterMismatchError(f"{folder}: module {name} has only one of lora_A / lora_B")
        if a.shape[1] != linear.in_features or b.shape[0] != linear.out_features:
            raise AdapterMismatchError(
                f"{folder}: the adapter of {name} maps {a.shape[1]} -> {b.shape[0]} features but {base_source} "
                f"has {linear.in_features} -> {linear.out_features}: the adapter was trained on another model "
                "size (use --model to give the base it was trained on)"
            )
        magnitude = ab.get("m")
        if bool(config.get("use_dora")) != (magnitude is not None):
            raise AdapterMismatchError(
                f"{folder}: adapter_config.json says use_dora={bool(config.get('use_dora'))} but module {name} "
                f"{'has' if magnitude is not None else 'has no'} DoRA magnitude vector: the config does not belong "
                "to these weights"
            )
        if magnitude is not None and tuple(magnitude.shape) != (linear.out_features,):
            raise AdapterMismatchError(
                f"{folder}: the DoRA magnitude of {name} has shape {tuple(magnitude.shape)}, {base_source} needs "
                f"({linear.out_features},)"
            )


def _load_adapter_folder(folder: Path, model_override: str | None, init_seed: int | None) -> FineTune:
    from peft import PeftModel

    cfg_path = folder / "adapter_config.json"
    if not cfg_path.is_file():
        raise FineTuneError(f"{folder}: not a peft adapter folder (no adapter_config.json)")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise FineTuneError(f"{cfg_path}: invalid JSON ({err})") from None
    base_name = model_override or config.get("base_model_name_or_path")
    if not base_name:
        raise FineTuneError(f"{cfg_path}: names no base model; pass --model")
    source = _resolve_source(base_name, list(folder.resolve().parents)[:4])
    seed = 0 if init_seed is None else init_seed
    loaded = _load_base(source, seed, str(folder))
    check_adapter(folder, loaded.model, f"the base model '{source}'")
    model = PeftModel.from_pretrained(loaded.model, str(folder), is_trainable=False)
    model.eval()
    return FineTune(model, loaded, "lora", source, str(folder), seed)


def load_finetune(
    model: str | None = None, adapter: str | None = None, init_seed: int | None = None, full_scale: float = 1.0
) -> FineTune:
    """Load a base (or merged) model and optionally an adapter: a peft folder or a musiclit checkpoint.

    Args:
        model: Hub id, model folder or config ``.json``; optional with an adapter that names its base
            (a checkpoint's ``pretrained``, an adapter folder's ``base_model_name_or_path``).
        adapter: A peft adapter folder or a musiclit ``.ckpt``.
        init_seed: Random-init seed of a config-file base (default: the checkpoint's, else 0).
        full_scale: For a full fine-tune checkpoint: interpolate weights (0 = base, 1 = fine-tune).

    Raises:
        FineTuneError: A missing/unreadable file; AdapterMismatchError: an adapter that does not fit.
    """
    if adapter is None:
        if model is None:
            raise FineTuneError("give --model (a base or merged model) and/or --adapter")
        source = _resolve_source(model)
        seed = 0 if init_seed is None else init_seed
        loaded = _load_base(source, seed, source)
        loaded.model.eval()
        return FineTune(loaded.model, loaded, "plain", source, None, seed)
    path = Path(adapter).expanduser()
    if path.is_dir():
        return _load_adapter_folder(path, model, init_seed)
    if path.is_file():
        return _load_checkpoint(path, model, init_seed, full_scale)
    raise FineTuneError(f"{path}: no such adapter folder or checkpoint file")
