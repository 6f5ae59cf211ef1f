"""Multi-GPU strategies chosen in YAML (``trainer.strategy``): DDP for LoRA, FSDP for full fine-tuning.

LoRA runs use Lightning's ``ddp`` (every GPU holds the frozen base; the gradients are the adapters'
megabytes). A full fine-tune of musicgen-medium/large holds fp32 weights, gradients and AdamW moments
(16 bytes per decoder parameter: 29 GB for medium, 50 GB for large before activations), so it shards them
with :class:`MusicGenFSDP` (``configs/cloud/fsdp.yaml``).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import FSDPStrategy
from torch import nn


def frozen_encoders(module: nn.Module) -> list[nn.Module]:
    """The frozen text encoder and codec of a :class:`~musiclit.train.module.MusicGenModule` (empty if absent).

    FSDP flattens the parameters of each unit into one tensor of one dtype. T5 and EnCodec are frozen (bf16
    under ``bf16-mixed``, while trained weights stay fp32), small (110M + 57M parameters) and run outside
    the decoder's forward, so every rank keeps its own copy: they are passed to FSDP as ``ignored_modules``.
    """
    base = getattr(module, "base", None)
    return [m for m in (getattr(base, "text_encoder", None), getattr(base, "audio_encoder", None)) if m is not None]


class MusicGenFSDP(FSDPStrategy):
    """FSDP for MusicGen: each decoder layer is one shard unit; the frozen text encoder and codec are replicated.

    Use for full fine-tuning (``model.lora: null``) of medium or large on several GPUs. In-training samples
    are skipped under this strategy (generate from the checkpoint); checkpoints are gathered into one file
    (``state_dict_type: full``) so that ``generate``, ``export`` and a resume on any number of GPUs read them.

    Args:
        sharding_strategy: ``FULL_SHARD`` (weights, gradients and optimiser state sharded), ``SHARD_GRAD_OP``
            (weights kept whole between forward and backward: faster, more memory) or ``HYBRID_SHARD``
            (full sharding inside a node, replicas across nodes).
        cpu_offload: Keep sharded parameters in CPU memory (slow; for the largest models on small cards).
        state_dict_type: ``full`` (one checkpoint file, written by rank 0) or ``sharded`` (a folder).
        **kwargs: Passed on to Lightning's ``FSDPStrategy`` (and from there to torch's FSDP).
    """

    def __init__(
        self,
        sharding_strategy: str = "FULL_SHARD",
        cpu_offload: bool = False,
        state_dict_type: str = "full",
        **kwargs: Any,
    ) -> None:
        from transformers.models.musicgen.modeling_musicgen import MusicgenDecoderLayer

        if kwargs.get("auto_wrap_policy") is None:  # (a YAML parser may pass the parent's None explicitly)
            kwargs["auto_wrap_policy"] = {MusicgenDecoderLayer}
        super().__init__(
            sharding_strategy=sharding_strategy,  # type: ignore[arg-type]
            cpu_offload=cpu_offload,
            state_dict_type=state_dict_type,  # type: ignore[arg-type]
            **kwargs,
        )

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if "ignored_modules" not in self.kwargs and "ignored_states" not in self.kwargs:
            self.kwargs["ignored_modules"] = frozen_encoders(model)
        return super()._setup_model(model)


def is_sharded(trainer: Any) -> bool:
    """Whether the trainer's weights are sharded across ranks (FSDP): a rank alone cannot run the model."""
    return isinstance(getattr(trainer, "strategy", None), FSDPStrategy)
