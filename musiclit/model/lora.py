"""LoRA adapters (peft) on the MusicGen decoder, and freezing for full fine-tuning."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from musiclit.errors import ConfigError

# Decoder-layer leaves that can carry an adapter.
DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
PRESETS: dict[str, tuple[str, ...]] = {
    "qv": ("q_proj", "v_proj"),
    "attention": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "all-linear": DECODER_LINEARS,
}


@dataclass
class LoraSettings:
    """LoRA hyper-parameters.

    Attributes:
        r: Rank of the adapter matrices.
        alpha: Scaling numerator (the update is scaled by alpha / r).
        dropout: Dropout on the adapter input (0 makes the step measurably faster).
        target_modules: A preset ("qv", "attention", "all-linear") or a list of decoder-layer leaf names
            among q_proj, k_proj, v_proj, out_proj, fc1, fc2. Self- and cross-attention are both adapted.
        lm_heads: Also adapt the output heads.
        init_lora_weights: peft's init (True: B = 0 so training starts at the base model; False: random,
            used by tests to prove merge equivalence).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str | list[str] = "qv"
    lm_heads: bool = False
    init_lora_weights: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def leaves(self) -> tuple[str, ...]:
        """The decoder-layer leaf names this setting adapts."""
        if isinstance(self.target_modules, str):
            if self.target_modules not in PRESETS:
                raise ConfigError(
                    f"model.lora.target_modules: unknown preset '{self.target_modules}' "
                    f"(choose from {', '.join(PRESETS)} or a list)"
                )
            return PRESETS[self.target_modules]
        unknown = sorted(set(self.target_modules) - set(DECODER_LINEARS))
        if unknown or not self.target_modules:
            raise ConfigError(f"model.lora.target_modules: {unknown or '[]'} are not decoder linears {DECODER_LINEARS}")
        return tuple(self.target_modules)

    def target_regex(self) -> str:
        """A regex that peft full-matches against module names: decoder layers only (never T5 or EnCodec)."""
        pattern = rf"decoder\.model\.decoder\.layers\.\d+\.(self_attn|encoder_attn)\.({'|'.join(self._attn())})"
        mlp = [leaf for leaf in self.leaves() if leaf in ("fc1", "fc2")]
        parts = [pattern] if self._attn() else []
        if mlp:
            parts.append(rf"decoder\.model\.decoder\.layers\.\d+\.({'|'.join(mlp)})")
        if self.lm_heads:
            parts.append(r"decoder\.lm_heads\.\d+")
        return "|".join(f"(?:{p})" for p in parts)

    def _attn(self) -> list[str]:
        return [leaf for leaf in self.leaves() if leaf not in ("fc1", "fc2")]


def apply_lora(model: Any, settings: LoraSettings) -> Any:
    """Wrap a ``MusicgenForConditionalGeneration`` in a peft model with adapters on the decoder.

    Every base weight is frozen; only adapter weights train.
    """
    from peft import LoraConfig, get_peft_model

    regex = settings.target_regex()
    names = [n for n, _ in model.named_modules() if re.fullmatch(regex, n)]
    if not names:
        raise ConfigError(f"model.lora.target_modules: {settings.leaves()} match no module of this model")
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=regex,
        init_lora_weights=settings.init_lora_weights,
        **settings.extra,
    )
    return get_peft_model(model, config)


def freeze_for_full_finetune(model: Any) -> None:
    """Freeze T5 and EnCodec; train the decoder and the text projection."""
    for p in model.parameters():
        p.requires_grad_(False)
    for module in (model.decoder, getattr(model, "enc_to_dec_proj", None)):
        if module is not None:
            for p in module.parameters():
                p.requires_grad_(True)


def base_model(model: Any) -> Any:
    """The underlying ``MusicgenForConditionalGeneration`` of a peft model (or the model itself)."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model
