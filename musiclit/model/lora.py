"""LoRA adapters (peft) on the MusicGen decoder, shared LoRA dropout masks, and freezing for full fine-tuning."""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

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
        weight_decay: Weight decay of the adapter matrices A and B (the optimiser's own ``weight_decay``
            applies to the other trainable weights). Decoupled decay shrinks A and B, i.e. pulls the
            fine-tune towards the base model; 0 by default, as most LoRA recipes train.
        use_dora: DoRA (weight-decomposed LoRA): each adapted weight also learns a magnitude per output
            feature (one vector of out_features values per layer, saved with the adapter). The update is no
            longer linear in the adapter weights; merging and mixing use the effective weight.
        use_rslora: rank-stabilised LoRA: scale the update by alpha / sqrt(r) instead of alpha / r (keeps the
            update's size stable when r grows).
        extra: Other ``peft.LoraConfig`` arguments, passed as they are.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str | list[str] = "qv"
    lm_heads: bool = False
    init_lora_weights: bool = True
    weight_decay: float = 0.0
    use_dora: bool = False
    use_rslora: bool = False
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
        use_dora=settings.use_dora,
        use_rslora=settings.use_rslora,
        **settings.extra,
    )
    return get_peft_model(model, config)


def freeze_for_full_finetune(model: Any) -> None:
    """Freeze T5 and EnCodec; train the decoder and the text (and melody models' chroma) projections."""
    for p in model.parameters():
        p.requires_grad_(False)
    for module in (
        model.decoder,
        getattr(model, "enc_to_dec_proj", None),
        getattr(model, "audio_enc_to_dec_proj", None),
    ):
        if module is not None:
            for p in module.parameters():
                p.requires_grad_(True)


def cast_frozen_weights(model: Any, dtype: torch.dtype) -> int:
    """Cast the frozen matmul weights (linears, embeddings) of the text encoder, the decoder and the text
    projection of a ``MusicgenForConditionalGeneration`` to ``dtype``, in place; returns how many tensors.

    Layer norms stay float32 (autocast runs them in float32, and CPU kernels reject a float32 input with
    bfloat16 parameters), trainable weights stay float32 (the optimiser updates them), the codec stays
    float32 (its codes are cached and must not depend on the training precision).
    """
    cast = 0
    parts = (model.text_encoder, model.decoder, getattr(model, "enc_to_dec_proj", None))
    for part in parts:
        if part is None:
            continue
        for module in part.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                for p in module.parameters(recurse=False):
                    if not p.requires_grad and p.dtype != dtype:
                        p.data = p.data.to(dtype)
                        cast += 1
    return cast


def base_model(model: Any) -> Any:
    """The underlying ``MusicgenForConditionalGeneration`` of a peft model (or the model itself)."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


class SharedInputDropout(torch.nn.Dropout):
    """Dropout that gives the same output (the same mask) when called again on the very same tensor within
    one call of the module that owns it (an attention block).

    peft draws a separate dropout mask on the input of every adapted module; q/k/v read one tensor (and
    the K output heads another), so it draws and applies three (or K) masks on identical inputs. Sharing
    one module between them draws one: each adapter still sees dropout p on its input, the masks are just
    the same across projections of the same input. A new input tensor (or an in-place change) gets a new
    mask.

    The remembered mask is forgotten whenever the owning attention block starts (and ends) a call
    (:func:`share_dropout_masks` installs the hooks). That matters under gradient checkpointing: the
    backward recomputes a layer from the same ``encoder_hidden_states`` object with the random state of the
    forward restored; a mask remembered across that boundary would be reused instead of drawn, skip one
    random draw and shift every later mask of the layer, so the recomputed layer would differ from the
    forward and the gradients would be wrong. With the reset, the recompute draws exactly what the forward
    drew (tested: gradients with and without checkpointing are equal at dropout 0.3).
    """

    def __init__(self, p: float) -> None:
        super().__init__(p)
        self._last: tuple[Any, int, torch.Tensor] | None = None

    def reset(self) -> None:
        """Forget the remembered input and mask (the next call draws a new one)."""
        self._last = None

    def _forget(self, ref: Any) -> None:
        if self._last is not None and self._last[0] is ref:
            self._last = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        last = self._last
        if last is not None and last[0]() is x and last[1] == x._version:
            return last[2]
        out = torch.nn.functional.dropout(x, self.p, True)
        self._last = (weakref.ref(x, self._forget), x._version, out)  # freed with its input
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_last"] = None
        return state


class _ResetShared:
    """Forward (pre-)hook of an attention block: its shared dropouts forget their masks (picklable, unlike a
    closure, so a model with shared masks can still be deep-copied or pickled)."""

    def __init__(self, dropouts: list[SharedInputDropout]) -> None:
        self.dropouts = dropouts

    def __call__(self, module: torch.nn.Module, *args: Any) -> None:
        for dropout in self.dropouts:
            dropout.reset()


# adapted leaves that read the same tensor: one dropout mask per group (the group's first match is the
# block that owns it: its calls bound the life of a remembered mask)
_SHARED_INPUT_GROUPS = (
    r"(.*\.layers\.\d+\.self_attn)\.(q_proj|k_proj|v_proj)",
    r"(.*\.layers\.\d+\.encoder_attn)\.(k_proj|v_proj)",
    r"(.*\.lm_heads)\.\d+",
)


def share_dropout_masks(model: Any) -> int:
    """Give peft LoRA layers that read the same input one shared :class:`SharedInputDropout`; returns the
    number of dropout modules that were replaced by a shared one.

    The shared dropouts of an attention block forget their mask at the start and end of each of the block's
    calls (forward hooks on the block). The output heads have no block of their own (the training loss calls
    them one by one, outside any checkpointed layer): their mask lives as long as the hidden states they read.
    """
    groups: dict[tuple[str, str, float], SharedInputDropout] = {}
    owned: dict[str, list[SharedInputDropout]] = {}
    replaced = 0
    for name, module in model.named_modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for pattern in _SHARED_INPUT_GROUPS:
            match = re.fullmatch(pattern, name)
            if match is None:
                continue
            for adapter, drop in list(dropouts.items()):
                if not isinstance(drop, torch.nn.Dropout) or drop.p == 0.0:
                    continue
                key = (match.group(1), adapter, float(drop.p))
                if key not in groups:
                    groups[key] = SharedInputDropout(drop.p)
                    owned.setdefault(match.group(1), []).append(groups[key])
                else:
                    replaced += 1
                dropouts[adapter] = groups[key]
            break
    modules = dict(model.named_modules())
    for owner, dropouts in owned.items():
        block = modules[owner]
        if isinstance(block, (torch.nn.ModuleList, torch.nn.ModuleDict)):
            continue  # lm_heads: no forward of its own
        reset = _ResetShared(dropouts)
        block.register_forward_pre_hook(reset)
        block.register_forward_hook(reset)
    return replaced
