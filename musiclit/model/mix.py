"""Several fine-tunes at once, each at its own strength: base + sum of strength x (its weight change).

``load_mix(adapters=[a, b], scales=[0.7, 0.4])`` loads the base once, then for every adapter (a peft LoRA/DoRA
folder or a musiclit checkpoint, LoRA or full) computes the EFFECTIVE weight change of every module it adapts,
exactly as peft merges it (for LoRA ``scaling * B @ A``; for DoRA ``m / ||W + scaling * B @ A|| * (W + scaling *
B @ A) - W``, which is not linear in the adapter's weights), and adds ``strength * change`` to the base weights.
The result is a plain transformers model: generating with it costs nothing extra, and every export format works.

Why not peft's multi-adapter forward or ``add_weighted_adapter``: scaling a LoRA's ``scaling`` scales its change,
but for DoRA the scaling sits inside a norm, and peft computes a second active DoRA adapter against the output of
the first; ``add_weighted_adapter(combination_type="cat")`` is exact only for plain LoRA without rsLoRA. The
weighted sum of effective changes is exact for every kind. For plain LoRA mixes, :func:`cat_adapter` also writes
the mix as one peft adapter (rank = sum of ranks) whose change is that same weighted sum.

Adapters can only be mixed on the base they were trained on: each names its base (a checkpoint's
``pretrained`` and ``init_seed``, an adapter folder's ``base_model_name_or_path``), and they must agree.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from musiclit.model.finetune import (
    AdapterMismatchError,
    FineTune,
    FineTuneError,
    _check_state,
    _load_base,
    _lora_dict,
    _resolve_source,
    apply_checkpoint_lora,
    check_adapter,
    checkpoint_model_state,
    read_checkpoint,
)

PEFT_PREFIX = "base_model.model."


def pair_strengths(adapters: Sequence[str] | None, scales: Sequence[float] | None) -> tuple[list[str], list[float]]:
    """``--adapter`` and ``--adapter-scale`` paired: one strength per adapter (1.0 each when none is given).

    Raises:
        FineTuneError: The counts differ (several strengths for one adapter, or not one per adapter).
    """
    adapters, scales = list(adapters or []), [float(s) for s in scales or []]
    if len(adapters) <= 1:
        if len(scales) > 1:
            raise FineTuneError(f"{len(scales)} --adapter-scale values for {len(adapters)} --adapter")
        return adapters, scales or [1.0]
    if not scales:
        return adapters, [1.0] * len(adapters)
    if len(scales) != len(adapters):
        raise FineTuneError(
            f"{len(scales)} --adapter-scale values for {len(adapters)} --adapter: give one strength per adapter, "
            "in the same order"
        )
    return adapters, scales


def adapter_base(adapter: str | Path) -> tuple[str, int | None]:
    """The base model an adapter folder or checkpoint names (a local path made absolute) and its init seed.

    Returns:
        ``(base, init_seed)``; the seed is None when the adapter does not record one (peft folders).

    Raises:
        FineTuneError: The adapter does not exist or names no base.
    """
    path = Path(adapter).expanduser()
    if path.is_dir():
        cfg_path = path / "adapter_config.json"
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise FineTuneError(f"{path}: not a readable peft adapter folder ({err})") from None
        base = config.get("base_model_name_or_path")
        if not base:
            raise FineTuneError(f"{cfg_path}: names no base model; pass --model")
        seed = None
        marker = path / "musiclit_export.json"  # an adapter musiclit exported records the seed of a config base
        if marker.is_file():
            seed = json.loads(marker.read_text(encoding="utf-8")).get("init_seed")
        return _resolve_source(base, list(path.resolve().parents)[:4]), seed
    if path.is_file():
        hp = read_checkpoint(path)["hyper_parameters"]
        base = str(hp.get("pretrained", ""))
        return _resolve_source(base, list(path.resolve().parents)[:4]), int(hp.get("init_seed", 0))
    raise FineTuneError(f"{path}: no such adapter folder or checkpoint file")


def check_same_base(adapters: Sequence[str]) -> tuple[str, int | None]:
    """The base all ``adapters`` were trained on; raises :class:`AdapterMismatchError` when they disagree."""
    bases = [adapter_base(a) for a in adapters]
    first, (base0, seed0) = adapters[0], bases[0]
    seed = seed0
    for adapter, (base, s) in zip(adapters[1:], bases[1:], strict=True):
        if base != base0:
            raise AdapterMismatchError(
                f"{adapter} was trained on '{base}' but {first} on '{base0}': adapters mix only on the base they "
                "were trained on"
            )
        if s is not None and seed is not None and s != seed:
            raise AdapterMismatchError(
                f"{adapter} was trained on '{base}' built with init seed {s} but {first} with seed {seed}: these "
                "are different random models"
            )
        seed = seed if seed is not None else s
    return base0, seed


def _lora_layers(model: Any) -> list[tuple[str, Any]]:
    from peft.tuners.lora import LoraLayer

    out = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            out.append((name[len(PEFT_PREFIX) :] if name.startswith(PEFT_PREFIX) else name, module))
    return out


def adapter_deltas(peft_model: Any, adapter_name: str = "default") -> dict[str, Any]:
    """Effective weight change (float32) of every module ``adapter_name`` adapts, keyed by the plain model's
    state-dict key (``<module>.weight``), as peft's safe merge computes it; the base weights are left as they were.
    """
    import torch

    out = {}
    with torch.no_grad():
        for name, module in _lora_layers(peft_model):
            if adapter_name not in module.lora_A and adapter_name not in getattr(module, "lora_embedding_A", {}):
                continue
            weight = module.get_base_layer().weight
            before = weight.detach().clone()
            module.merge(safe_merge=True, adapter_names=[adapter_name])
            out[f"{name}.weight"] = weight.detach().float() - before.float()
            weight.data.copy_(before)
            module.merged_adapters.clear()
    return out


def _cat_factors(peft_model: Any, strength: float, adapter_name: str = "default") -> dict[str, tuple[Any, Any]]:
    """``{module: (strength * scaling * A, B)}`` of a plain LoRA adapter: ``B @ A`` is its change at ``strength``."""
    out = {}
    for name, module in _lora_layers(peft_model):
        if adapter_name in module.lora_A:
            a = module.lora_A[adapter_name].weight.detach().float()
            b = module.lora_B[adapter_name].weight.detach().float()
            out[name] = (a * (strength * float(module.scaling[adapter_name])), b.clone())
    return out


def _attach(adapter: Path, model: Any, source: str) -> tuple[Any, str, bool]:
    """``(model with the adapter injected as "default", kind, is_dora)``; kind "lora" or "full" (weights loaded)."""
    from peft import PeftModel

    if adapter.is_dir():
        check_adapter(adapter, model, f"the base model '{source}'")
        config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=False), "lora", bool(config.get("use_dora"))
    ckpt = read_checkpoint(adapter)
    state = checkpoint_model_state(ckpt)
    lora = _lora_dict(ckpt["hyper_parameters"].get("lora"))
    if lora is None:
        _check_state(adapter, model, state, source)
        return state, "full", False
    peft_model, is_dora = apply_checkpoint_lora(adapter, model, state, lora, source)
    return peft_model, "lora", is_dora


def load_mix(
    adapters: Sequence[str], scales: Sequence[float], model: str | None = None, init_seed: int | None = None
) -> FineTune:
    """Load a base and add ``sum(scale_i * change_i)`` of several adapters/checkpoints to its weights.

    Args:
        adapters: peft adapter folders and/or musiclit checkpoints, all trained on the same base.
        scales: One strength per adapter (1 = as trained, 0 = left out; negative values subtract).
        model: The base to load instead of the one the adapters name (they must still agree with each other).
        init_seed: Random-init seed of a config-file base (default: the adapters', else 0).

    Returns:
        A :class:`FineTune` of kind "mix": a plain model, ``sources``/``scales`` set. For plain LoRA mixes
        ``extra["lora_cat"]`` holds the factors :func:`cat_adapter` writes as one peft adapter.

    Raises:
        AdapterMismatchError: The adapters were trained on different bases, or one does not fit the base.
    """
    import torch

    if len(adapters) < 1:
        raise FineTuneError("give at least one adapter to mix")
    if len(scales) != len(adapters):
        raise FineTuneError(f"got {len(scales)} strengths for {len(adapters)} adapters (give one --adapter-scale each)")
    named, named_seed = check_same_base(adapters)
    source = _resolve_source(model) if model else named
    seed = int(init_seed if init_seed is not None else (named_seed or 0))
    loaded = _load_base(source, seed, str(adapters[0]))
    base = loaded.model
    total: dict[str, Any] = {}
    cat: dict[str, list[tuple[Any, Any]]] | None = {}
    why_no_cat = None
    for adapter, scale in zip(adapters, scales, strict=True):
        path = Path(adapter).expanduser()
        attached, kind, dora = _attach(path, base, source)
        if kind == "full":
            current = base.state_dict()
            with torch.no_grad():
                deltas = {k: v.float() - current[k].float() for k, v in attached.items()}
            why_no_cat = why_no_cat or f"{path} is a full fine-tune"
        else:
            deltas = adapter_deltas(attached)
            if dora:
                why_no_cat = why_no_cat or f"{path} is a DoRA adapter (its change is not a product of two matrices)"
            elif cat is not None:
                for name, factors in _cat_factors(attached, float(scale)).items():
                    cat.setdefault(name, []).append(factors)
            base = attached.unload()  # the plain modules back, weights untouched
        for key, delta in deltas.items():
            total[key] = total[key] + float(scale) * delta if key in total else float(scale) * delta
    state = base.state_dict()
    with torch.no_grad():
        for key, delta in total.items():
            state[key].copy_((state[key].float() + delta).to(state[key].dtype))
    base.eval()
    ft = FineTune(base, loaded, "mix", source, None, seed)
    ft.extra["sources"] = [str(Path(a).expanduser().resolve()) for a in adapters]
    ft.extra["scales"] = [float(s) for s in scales]
    ft.extra["lora_cat"] = None if why_no_cat else cat
    ft.extra["why_no_cat"] = why_no_cat
    return ft


def cat_adapter(ft: FineTune) -> tuple[Any, dict[str, Any]]:
    """One peft LoRA adapter whose change equals a plain-LoRA mix's: ``(LoraConfig, safetensors weights)``.

    The factors of every adapter are stacked (rank = the sum of the ranks, ``lora_alpha`` = rank so that peft's
    scaling is 1); a module that some adapters leave alone gets zero rows for them.

    Raises:
        FineTuneError: The mix holds a DoRA adapter or a full fine-tune.
    """
    import torch
    from peft import LoraConfig

    cat = ft.extra.get("lora_cat")
    if cat is None:
        raise FineTuneError(
            f"this mix cannot be written as one peft adapter: {ft.extra.get('why_no_cat')}; export it merged instead"
        )
    modules = dict(ft.model.named_modules())
    rank = max(sum(a.shape[0] for a, _ in parts) for parts in cat.values())
    weights = {}
    for name, parts in sorted(cat.items()):
        linear = modules[name]
        a = torch.zeros(rank, linear.in_features)
        b = torch.zeros(linear.out_features, rank)
        row = 0
        for pa, pb in parts:
            a[row : row + pa.shape[0]] = pa
            b[:, row : row + pa.shape[0]] = pb
            row += pa.shape[0]
        weights[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a.contiguous()
        weights[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b.contiguous()
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=sorted(cat), bias="none")
    config.base_model_name_or_path = ft.base_source
    config.inference_mode = True
    return config, weights
