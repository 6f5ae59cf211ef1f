"""Callbacks: the peft adapter written at the end of training, audio samples logged while training, and the
loss report of the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from musiclit.errors import MusiclitError


def run_dir(trainer: L.Trainer) -> Path:
    """The run folder (``trainer.default_root_dir``)."""
    return Path(trainer.default_root_dir)


def save_adapter_atomic(model: Any, folder: str | Path) -> Path:
    """Write a peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) atomically.

    The adapter is written into a temporary sibling folder and renamed into place, so a crash never
    leaves a half-written adapter that looks complete.
    """
    from musiclit.io import atomic_folder

    with atomic_folder(folder, force=True) as tmp:
        model.save_pretrained(tmp)
    return Path(folder)


class AdapterExport(Callback):
    """Write the LoRA adapter in peft's standard layout when training ends (and after each checkpoint).

    Args:
        dirname: Folder name inside the run folder.
        every_checkpoint: Also refresh it whenever a checkpoint is saved.
    """

    def __init__(self, dirname: str = "adapter", every_checkpoint: bool = False) -> None:
        self.dirname = dirname
        self.every_checkpoint = every_checkpoint

    def _export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from peft import PeftModel

        model = getattr(pl_module, "model", None)
        if trainer.is_global_zero and isinstance(model, PeftModel):
            save_adapter_atomic(model, run_dir(trainer) / self.dirname)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write the final adapter."""
        self._export(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """Optionally refresh the adapter with each checkpoint."""
        if self.every_checkpoint:
            self._export(trainer, pl_module)


class NonFiniteError(MusiclitError, RuntimeError):
    """Too many optimiser steps in a row had a non-finite (NaN/Inf) loss or gradient."""


class NonFiniteGuard(Callback):
    """Skip the update of a step whose loss or gradients are not finite; stop after too many in a row.

    Checked just before the optimiser step (after backward, before gradient clipping): when any gradient of
    a trainable weight is NaN or Inf (which a NaN/Inf loss always causes), every gradient is dropped, so the
    optimiser leaves the weights and its moments as they were. The count of skipped steps is printed and
    kept in checkpoints. Under 16-mixed precision the loss scaler also skips overflowing steps while it
    calibrates its scale; those count here too, hence a default limit well above that calibration.

    Args:
        max_consecutive: Stop the run after this many skipped steps in a row (0: never stop).
    """

    def __init__(self, max_consecutive: int = 25) -> None:
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.in_a_row = 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        """Drop the gradients of a non-finite step (the optimiser then updates nothing) and count it."""
        import torch

        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads or all(bool(torch.isfinite(g).all()) for g in grads):
            self.in_a_row = 0
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self.skipped += 1
        self.in_a_row += 1
        if trainer.is_global_zero:
            print(
                f"musiclit: step {trainer.global_step}: non-finite loss or gradient, update skipped "
                f"({self.in_a_row} in a row, {self.skipped} in this run)",
                flush=True,
            )
        if self.max_consecutive and self.in_a_row >= self.max_consecutive:
            precision = str(trainer.precision)
            hints = ["a lower learning rate (--model.lr)", "gradient clipping (--trainer.gradient_clip_val 1.0)"]
            if precision.startswith("16"):
                hints.insert(0, "--trainer.precision bf16-mixed instead of 16-mixed (fp16 overflows), or 32-true")
            raise NonFiniteError(
                f"stopped at step {trainer.global_step}: {self.in_a_row} steps in a row had a non-finite (NaN/Inf) "
                f"loss or gradient (precision {precision}). Try {'; '.join(hints)}. The last checkpoint holds "
                "the weights before these steps (resume with --ckpt_path last); "
                "--nonfinite.max_consecutive sets this limit"
            )

    def state_dict(self) -> dict[str, int]:
        """The counts, kept in checkpoints."""
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the counts from a checkpoint."""
        self.skipped = int(state_dict.get("skipped", 0))
        self.in_a_row = int(state_dict.get("in_a_row", 0))


class SampleLogger(Callback):
    """Generate short samples after validation, write WAVs into ``<run>/samples/`` and send them to loggers.

    Args:
        prompts: Texts to generate from (empty: no samples).
        seconds: Length of each sample.
        every_n_epochs: Generate after every n-th validation epoch.
        guidance_scale: CFG scale used for the samples.
        seed: Sampling seed (fixed, so samples from different steps compare like for like).
    """

    def __init__(
        self,
        prompts: list[str] | None = None,
        seconds: float = 8.0,
        every_n_epochs: int = 1,
        guidance_scale: float = 3.0,
        seed: int = 0,
    ) -> None:
        self.prompts = list(prompts or [])
        self.seconds = seconds
        self.every_n_epochs = max(1, every_n_epochs)
        self.guidance_scale = guidance_scale
        self.seed = seed

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Generate and log the samples."""
        if not self.prompts or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        from musiclit.data.audio import write_audio
        from musiclit.train.sampling import sample_audio

        with trainer.precision_plugin.forward_context():  # frozen weights may be bf16 (autocast mixes dtypes)
            audio = sample_audio(
                pl_module.base,
                pl_module.tokenizer,
                self.prompts,
                self.seconds,
                pl_module.frame_rate,
                guidance_scale=self.guidance_scale,
                seed=self.seed,
            )
        folder = run_dir(trainer) / "samples" / f"step_{trainer.global_step:07d}"
        for i, (prompt, wav) in enumerate(zip(self.prompts, audio, strict=False)):
            write_audio(folder / f"{i:02d}.wav", wav.numpy(), pl_module.sample_rate)
            for logger in trainer.loggers:
                experiment = getattr(logger, "experiment", None)
                if hasattr(experiment, "add_audio"):  # TensorBoard
                    experiment.add_audio(f"samples/{i:02d}", wav[0], trainer.global_step, pl_module.sample_rate)
                elif type(logger).__name__ == "WandbLogger":
                    logger.log_audio(  # type: ignore[attr-defined]
                        key=f"samples/{i:02d}",
                        audios=[wav[0].numpy()],
                        sample_rate=[pl_module.sample_rate],
                        caption=[prompt],
                        step=trainer.global_step,
                    )
        (folder / "prompts.txt").write_text("\n".join(self.prompts) + "\n", encoding="utf-8")


class LossReport(Callback):
    """Collects the training loss of every step and prints its mean every ``every`` steps (the demo's output).

    Args:
        every: Steps per printed line.
    """

    def __init__(self, every: int = 10) -> None:
        self.every = every
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Record the step's loss; print the mean of the last ``every`` steps."""
        loss = float(outputs["loss"] if isinstance(outputs, dict) else outputs)
        self.losses.append(loss)
        if len(self.losses) % self.every == 0:
            recent = self.losses[-self.every :]
            print(f"  step {len(self.losses):4d}  train loss {sum(recent) / len(recent):.3f}", flush=True)
