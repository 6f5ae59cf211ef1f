"""The LightningModule: MusicGen (transformers) + LoRA (peft), masked per-codebook loss, CFG dropout."""

from __future__ import annotations

import hashlib
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from musiclit.errors import ConfigError
from musiclit.model.codec import encode_audio
from musiclit.model.delay import codebook_delays
from musiclit.model.finetune import base_fingerprint
from musiclit.model.lora import (
    LoraSettings,
    apply_lora,
    base_model,
    cast_frozen_weights,
    freeze_for_full_finetune,
    share_dropout_masks,
)
from musiclit.model.loss import musicgen_loss, pad_text_states
from musiclit.model.musicgen import ModelLoadError, load_musicgen
from musiclit.train.optim import WarmupCosine, parameter_groups

# checkpoints deliberately hold only trainable weights; on_load_checkpoint checks that they all match
warnings.filterwarnings("ignore", message="Found keys that are in the model state dict but not in the checkpoint")

FrozenDtype = Literal["auto", "float32", "bfloat16", "float16"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class MusicGenModule(L.LightningModule):
    """Fine-tunes MusicGen's decoder (LoRA or full) on codec tokens of audio clips with text captions.

    Args:
        pretrained: Hub id (``facebook/musicgen-small|medium|large``), a local model folder, or a
            MusicGen config ``.json`` (built at random init from ``init_seed``; tiny test/demo models).
        init_seed: Seed of the random init when ``pretrained`` is a config file.
        lora: LoRA settings; ``null`` fine-tunes the whole decoder (and the text projection).
        cfg_dropout: Probability of dropping each example's conditions (classifier-free guidance training): its
            text, and for MusicGen-melody its melody too. Default (null): MusicGen's recipe, 0.3, and 0.2 for
            melody models.
        melody_dropout: MusicGen-melody only: probability of dropping each example's melody when its conditions
            are kept (the recipe's 0.5), so that the model also follows text alone. Both rates are logged.
        gradient_checkpointing: Recompute decoder activations in the backward pass (less memory, slower).
        checkpoint_every_n_layers: With checkpointing, checkpoint only every n-th decoder layer.
        frozen_dtype: Dtype of the frozen matmul weights (linears, embeddings) of the text encoder, the
            decoder and the text projection. "auto": the autocast dtype (bfloat16 under ``bf16-mixed``,
            float16 under ``16-mixed``: saves the per-step weight casts and half the memory), else float32.
            Layer norms, trainable weights and the codec always stay float32.
        seed: Seed of the per-step randomness (CFG dropout, LoRA and decoder dropout); keyed by the batch
            index, so that a resumed run draws exactly what an uninterrupted run draws, and by the process
            rank, so that DDP ranks draw different masks (rank 0 draws what a single process draws).
        text_cache_bytes: Bytes of text-encoder states kept for captions already seen (0 disables the cache),
            in host memory (pinned when training on a GPU): a batch's states cross to the GPU in
            microseconds, and GPU memory stays for the step. Least recently used captions go first.
        text_cache_size: Also cap the number of cached captions (None: only the byte budget).
        share_lora_dropout: Draw one LoRA dropout mask per input tensor (q/k/v of self-attention, k/v of
            cross-attention, the K output heads) instead of one per adapted module: same dropout rate
            for every adapter, 8% less peak memory, no measurable speed change on CPU (docs/benchmarks.md),
            the same gradients with and without gradient checkpointing. False: peft's behaviour exactly.
        compile_layers: Compile every decoder layer with ``torch.compile`` (in place: checkpoint names do
            not change). The first steps are slow while it compiles; measured in docs/benchmarks.md.
        optimizer: Optimiser factory (the configs use AdamW). Its weight decay applies to matmul weights only:
            norms, biases and embeddings are not decayed, LoRA weights by ``lora.weight_decay``
            (:func:`musiclit.train.optim.parameter_groups`).
        scheduler: Learning-rate schedule factory (default: linear warm-up + cosine).
    """

    def __init__(
        self,
        pretrained: str = "facebook/musicgen-small",
        init_seed: int = 0,
        lora: LoraSettings | None = LoraSettings(),  # noqa: B008 - a dataclass default jsonargparse can show
        cfg_dropout: float | None = None,
        melody_dropout: float = 0.5,
        gradient_checkpointing: bool = False,
        checkpoint_every_n_layers: int = 1,
        frozen_dtype: FrozenDtype = "auto",
        seed: int = 0,
        text_cache_bytes: int = 256 * 2**20,
        text_cache_size: int | None = None,
        share_lora_dropout: bool = True,
        compile_layers: bool = False,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = WarmupCosine,
    ) -> None:
        super().__init__()
        for name, value in (("cfg_dropout", cfg_dropout), ("melody_dropout", melody_dropout)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1], got {value}")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.melody_dropout = melody_dropout
        self.seed = seed
        self.frozen_dtype = frozen_dtype
        if text_cache_bytes < 0 or (text_cache_size is not None and text_cache_size < 0):
            raise ConfigError("model.text_cache_bytes and model.text_cache_size must be >= 0")
        self.text_cache_bytes = text_cache_bytes
        self.text_cache_size = text_cache_size
        self.lora_weight_decay = float(getattr(lora, "weight_decay", 0.0) or 0.0)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._text_cache_used = 0
        # checkpoints hold trainable weights only; the frozen base is rebuilt from `pretrained`, which they
        # record by absolute path and hash (resolved now: the working folder may change before a save)
        self.strict_loading = False
        self._base_path = (
            str(Path(pretrained).expanduser().resolve()) if Path(pretrained).expanduser().exists() else None
        )
        self._base_record: dict[str, Any] | None = None

        loaded = load_musicgen(pretrained, init_seed=init_seed)
        self.tokenizer = loaded.tokenizer
        self.sample_rate = loaded.sample_rate
        self.frame_rate = loaded.frame_rate
        self.audio_channels = loaded.audio_channels
        self.num_codebooks = loaded.num_codebooks
        self.special_token = loaded.pad_token_id
        self.delays = codebook_delays(self.num_codebooks, self.audio_channels)
        self.melody = loaded.melody
        self.cfg_dropout = (0.2 if self.melody else 0.3) if cfg_dropout is None else cfg_dropout

        model = loaded.model
        model.config.use_cache = False
        model.decoder.config.use_cache = False
        if lora is None:
            freeze_for_full_finetune(model)
            self.model = model
        else:
            self.model = apply_lora(model, lora)
            if share_lora_dropout:
                share_dropout_masks(self.model)
        self.base.text_encoder.eval()
        self.base.audio_encoder.eval()
        if gradient_checkpointing:
            self.base.decoder.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=checkpoint_every_n_layers
            )
        if compile_layers:
            for layer in self.base.decoder.model.decoder.layers:
                layer.compile()
        # from_pretrained returns eval mode and Lightning keeps the modes it finds: set them here (and again
        # in on_fit_start), or the decoder trains without its dropout and without gradient checkpointing
        self.train()
        self._eval_warning_filter: Any = None

    # ------------------------------------------------------------------ structure
    @property
    def base(self) -> Any:
        """The underlying ``MusicgenForConditionalGeneration`` (adapters injected when LoRA is on)."""
        return base_model(self.model)

    def trainable_keys(self) -> set[str]:
        """State-dict keys of the trainable parameters (what a checkpoint holds)."""
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def train(self, mode: bool = True) -> MusicGenModule:
        """Frozen encoders always stay in eval mode (no dropout in T5, no updates in the codec)."""
        super().train(mode)
        self.base.text_encoder.eval()
        self.base.audio_encoder.eval()
        return self

    def frozen_module_names(self) -> set[str]:
        """Names (as in ``named_modules``) of every module of the frozen text encoder and codec."""
        frozen = {id(m) for part in (self.base.text_encoder, self.base.audio_encoder) for m in part.modules()}
        return {name for name, m in self.named_modules() if id(m) in frozen}

    def on_fit_start(self) -> None:
        """Training modes for fit: the decoder (and everything with trainable weights) in train mode, the
        frozen encoders in eval; Lightning's warning about modules in eval mode is hidden for exactly them."""
        self.train()
        self._hide_expected_eval_warning()

    def on_train_start(self) -> None:
        """Lightning has checked the modes (at the start of its training loop): drop the narrow filter."""
        self._restore_warning_filters()

    def on_fit_end(self) -> None:
        """Drop the narrow filter if training never started (nothing to train, or stopped in sanity check)."""
        self._restore_warning_filters()

    def _hide_expected_eval_warning(self) -> None:
        # Lightning warns "Found N module(s) in eval mode at the start of training." The frozen T5 and codec
        # are in eval by design. Hide the warning only for exactly that N, and only when the modules in eval
        # are exactly the frozen ones: anything else in eval mode (a bug) is still reported.
        in_eval = {name for name, m in self.named_modules() if not m.training}
        if not in_eval or in_eval != self.frozen_module_names():
            return
        self._restore_warning_filters()
        self._eval_warning_filter = warnings.catch_warnings()
        self._eval_warning_filter.__enter__()
        message = f"Found {len(in_eval)} module(s) in eval mode at the start of training."
        warnings.filterwarnings("ignore", message=re.escape(message))

    def _restore_warning_filters(self) -> None:
        # catch_warnings restores the filter list as it was in on_fit_start (filters added in between, by
        # setup or the sanity check, are dropped with it)
        if getattr(self, "_eval_warning_filter", None) is not None:
            self._eval_warning_filter.__exit__(None, None, None)
            self._eval_warning_filter = None

    def setup(self, stage: str) -> None:
        """Cast frozen weights to the compute dtype when the precision allows it."""
        dtype = self._resolve_frozen_dtype()
        if dtype == torch.float32:
            return
        if cast_frozen_weights(self.base, dtype):
            self._clear_text_cache()  # states of the old weights

    def _resolve_frozen_dtype(self) -> torch.dtype:
        if self.frozen_dtype != "auto":
            return _DTYPES[self.frozen_dtype]
        # the trainer's precision is what its autocast runs (Lightning turns 16-mixed into bf16-mixed on a CPU)
        precision = str(getattr(self.trainer, "precision", "32-true")) if self._trainer is not None else "32-true"
        if precision.startswith("bf16"):
            return torch.bfloat16
        if precision.startswith("16"):
            return torch.float16
        return torch.float32

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text-encoder states (B, Lt, D) and mask (B, Lt) for the captions (each encoded on its own, cached).

        Encoding captions one at a time makes the result independent of the batch it came in, so cached
        and fresh states are bit-identical.
        """
        states = [self._encode_one(c) for c in captions]
        return pad_text_states(states)

    def _encode_one(self, caption: str) -> torch.Tensor:
        cached = self._text_cache.get(caption)
        if cached is not None:
            self._text_cache.move_to_end(caption)
            # pinned host memory -> GPU without a sync (the allocator keeps the block until the copy is done)
            return cached.to(self.device, non_blocking=True)
        encoder = self.base.text_encoder
        tokens = self.tokenizer([caption], return_tensors="pt", truncation=True).to(self.device)
        state = encoder(**tokens).last_hidden_state[0]
        self._cache_text_state(caption, state)
        return state

    def _cache_text_state(self, caption: str, state: torch.Tensor) -> None:
        size = state.numel() * state.element_size()
        if size > self.text_cache_bytes or self.text_cache_size == 0:
            return
        host = state.detach().to("cpu", copy=True)
        if state.device.type == "cuda":
            host = host.pin_memory()
        self._text_cache[caption] = host
        self._text_cache_used += size
        while self._text_cache_used > self.text_cache_bytes or (
            self.text_cache_size is not None and len(self._text_cache) > self.text_cache_size
        ):
            _, old = self._text_cache.popitem(last=False)
            self._text_cache_used -= old.numel() * old.element_size()

    def _clear_text_cache(self) -> None:
        self._text_cache.clear()
        self._text_cache_used = 0

    def codec_tokenizer(self) -> Any:
        """The frozen codec as the token cache uses it (identity + encoder); computed once per module."""
        if getattr(self, "_codec_tokenizer", None) is None:
            from musiclit.model.codec import CodecTokenizer

            self._codec_tokenizer = CodecTokenizer.from_module(self)
        return self._codec_tokenizer

    def melody_tokenizer(self, separator: str | None) -> Any:
        """The melody model's chroma extractor for the cache (drums and bass removed by the Demucs ``separator``, a
        pretrained name or weights file; None: the audio as it is)."""
        from musiclit.data.audio import resample
        from musiclit.model.melody import MelodyChroma

        model = None
        if separator:
            from musiclit.prep.vocals import VocalsError, load_demucs

            try:
                model = load_demucs(separator)
            except VocalsError as err:
                raise ConfigError(
                    f"data.melody_separator {separator}: {err} (here: data.melody_separator with a local weights "
                    "file, or null to take the chroma of the audio as it is)"
                ) from None
        return MelodyChroma(model, resample)

    @torch.no_grad()
    def encode_audio(self, audio: torch.Tensor, audio_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codec codes (B, K, T) and frame mask (B, T) of audio (B, C, S) with sample mask (B, S).

        Stereo models encode left and right separately and interleave their codebooks.
        """
        codes = encode_audio(self.base.audio_encoder, audio, self.audio_channels)
        hop = self.sample_rate // self.frame_rate
        frame_mask = audio_mask[:, ::hop][:, : codes.shape[-1]]
        return codes, frame_mask

    # ------------------------------------------------------------------ forward / loss
    def forward(
        self,
        codes: torch.Tensor,
        frame_mask: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        melody: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss of a batch.

        Args:
            codes: (B, K, T) codec codes.
            frame_mask: (B, T) True on real frames.
            text: (B, Lt, D) text-encoder states.
            text_mask: (B, Lt) 1 on real tokens; an all-zero row is the unconditional (dropped) text.
            melody: Melody models: (B, Tc, 12) one-hot chroma (class 0 everywhere = no melody).

        Returns:
            ``(loss, per_codebook)``: mean over codebooks of the masked CE, and the (K,) codebook CEs.
        """
        return musicgen_loss(self.base, codes, frame_mask, text, text_mask, self.delays, self.special_token, melody)

    def _batch_loss(
        self, batch: dict[str, Any], cfg_dropout: float, melody_dropout: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if "codes" in batch:
            codes, frame_mask = batch["codes"], batch["frame_mask"]
        else:
            codes, frame_mask = self.encode_audio(batch["audio"], batch["audio_mask"])
        text, text_mask = self.encode_text(batch["captions"])
        bsz = len(batch["captions"])
        keep = torch.ones(bsz, dtype=torch.bool, device=text_mask.device)
        if cfg_dropout > 0:
            keep = torch.rand(bsz, device=text_mask.device) >= cfg_dropout
            text_mask = text_mask * keep[:, None].to(text_mask.dtype)
        self._dropped = {"text": 1.0 - keep.float().mean()}
        if self.melody:
            if "melody" not in batch:
                raise ConfigError("a MusicGen-melody model needs the melody of each clip (train from the token cache)")
            from musiclit.model.melody import onehot

            # dropping all conditions drops the melody too (the unconditional branch of guidance has neither)
            melody_keep = keep
            if melody_dropout > 0:
                melody_keep = keep & (torch.rand(bsz, device=keep.device) >= melody_dropout)
            classes = batch["melody"].to(keep.device) * melody_keep[:, None].long()  # class 0 = no melody
            melody = onehot(classes)
            self._dropped["melody"] = 1.0 - melody_keep.float().mean()
            return self(codes, frame_mask, text, text_mask, melody)
        return self(codes, frame_mask, text, text_mask)

    def _step_seed(self, batch_idx: int) -> int:
        index = self.trainer.fit_loop.epoch_loop.total_batch_idx if self._trainer is not None else batch_idx
        rank = int(self.trainer.global_rank) if self._trainer is not None else 0
        key = f"musiclit/{self.seed}/{index}" + (f"/rank{rank}" if rank else "")  # rank 0: as a single process
        digest = hashlib.sha256(key.encode()).digest()
        return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """One micro-batch: encode, drop text per example, masked loss; logs loss and per-codebook CE/ppl."""
        torch.manual_seed(self._step_seed(batch_idx))
        loss, per_cb = self._batch_loss(batch, self.cfg_dropout, self.melody_dropout)
        bsz = len(batch["captions"])
        self.log("train/loss", loss, prog_bar=True, batch_size=bsz)
        if self.melody:  # the fraction of examples trained without their text / melody
            for what, rate in self._dropped.items():
                self.log(f"train/{what}_dropped", rate, batch_size=bsz)
        for k, ce in enumerate(per_cb):
            self.log(f"train/ce_{k}", ce, batch_size=bsz)
            self.log(f"train/ppl_{k}", torch.exp(ce.detach()), batch_size=bsz)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Full captions, no dropout, deterministic crops."""
        loss, per_cb = self._batch_loss(batch, 0.0)
        bsz = len(batch["captions"])
        self.log("val/loss", loss, prog_bar=True, batch_size=bsz, sync_dist=True)
        for k, ce in enumerate(per_cb):
            self.log(f"val/ce_{k}", ce, batch_size=bsz, sync_dist=True)
        return loss

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        """The injected optimiser over the trainable parameters (weight decay by group, see
        :func:`~musiclit.train.optim.parameter_groups`), and the schedule stepped every optimiser step."""
        optimizer = self.optimizer_factory(parameter_groups(self, self.lora_weight_decay))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if isinstance(scheduler, WarmupCosine) and scheduler.total_steps is None:
            scheduler.total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trainable weights: a LoRA checkpoint of a 1.5B model is megabytes."""
        keep = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        if self._base_record is None:  # hashed once per run (a base is gigabytes)
            self._base_record = base_fingerprint(self._base_path or self.hparams.pretrained, self.hparams.init_seed)
            self._base_record["source"] = self.hparams.pretrained
        checkpoint["musiclit"] = {"trainable_keys": sorted(keep), "base": self._base_record}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that the checkpoint holds every trainable weight of this module (right base, right LoRA)."""
        have = set(checkpoint["state_dict"])
        want = self.trainable_keys()
        missing, unexpected = sorted(want - have), sorted(have - want)
        if missing or unexpected:
            raise ModelLoadError(
                "checkpoint does not match the model configuration: "
                f"{len(missing)} trainable weights missing (e.g. {missing[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); "
                "check `model.pretrained` and `model.lora` against the run that wrote it"
            )
