"""Callbacks: checkpoints that resume exactly however a run stopped, a clean stop on SIGTERM/Ctrl-C, the peft
adapter written at the end of training, samples during training, early stopping on the validation loss, the
evaluation at the end of fit, and the demo's loss report."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from musiclit.errors import MusiclitError


@contextlib.contextmanager
def eval_mode(module: Any) -> Iterator[None]:
    """Every submodule in eval mode inside the block, and back to ITS OWN mode after it.

    Not ``module.train(was_training)``: that would switch on submodules that training keeps in eval mode
    (and so change what training computes).
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """torch's CPU thread count set to ``count`` inside the block (None: unchanged)."""
    import torch

    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
        # under 16-mixed the loss scaler skips this step itself (and lowers its scale): its unscale and step need
        # the gradients, so they are left to it; otherwise dropping them makes the optimiser update nothing
        if getattr(getattr(trainer, "precision_plugin", None), "scaler", None) is None:
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
    """Samples during training: fixed prompts and seeds, the base model once at the start, the fine-tune as it
    trains. Files go to ``<run>/samples/base/`` and ``<run>/samples/step_NNNNNNN/``, one sub-folder per guidance
    scale (``cfg1``, ``cfg3``) plus ``unconditional/``: per sample a WAV, the JSON that describes it (prompt, seed,
    parameters), its codes (``.codes.npy``, for the memorisation check) and a spectrogram PNG. Audio and
    spectrograms also go to TensorBoard and W&B when they are active.

    Sampling is musiclit's sampler (:class:`~musiclit.infer.sampler.Generator`) run on the model being trained
    as it is (its device, dtypes and adapters untouched; eval mode and the trainer's autocast while sampling,
    the codec outside autocast). The base model is the same model with the adapter at strength 0 (LoRA); a full
    fine-tune has base samples only when training starts from step 0.

    Args:
        prompts: Texts to generate from (empty: no samples).
        seconds: Length of each sample.
        every_n_steps: Sample every n optimiser steps; 0 samples after validation instead (every
            ``every_n_epochs``-th validation epoch).
        every_n_epochs: With ``every_n_steps`` 0: sample after every n-th validation epoch.
        guidance_scales: Classifier-free guidance scales; every prompt is sampled at each (1 = no guidance).
        unconditional: Also one sample without text.
        base: Sample the base model once, when training starts (into ``samples/base``).
        seed: Prompt i uses seed ``seed + i`` at every step, so steps compare like for like.
        top_k: Top-k sampling.
        spectrograms: Write (and log) a spectrogram PNG of every sample.
    """

    def __init__(
        self,
        prompts: list[str] | None = None,
        seconds: float = 8.0,
        every_n_steps: int = 0,
        every_n_epochs: int = 1,
        guidance_scales: list[float] | None = None,
        unconditional: bool = True,
        base: bool = True,
        seed: int = 0,
        top_k: int = 250,
        spectrograms: bool = True,
    ) -> None:
        self.prompts = list(prompts or [])
        self.seconds = seconds
        self.every_n_steps = max(0, every_n_steps)
        self.every_n_epochs = max(1, every_n_epochs)
        self.guidance_scales = [1.0, 3.0] if guidance_scales is None else [float(g) for g in guidance_scales]
        self.unconditional = unconditional
        self.base = base
        self.seed = seed
        self.top_k = top_k
        self.spectrograms = spectrograms
        self._last_step = -1

    # ------------------------------------------------------------------ when
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The base model's samples, once per run."""
        if not self.base or self._skip(trainer):
            return
        folder = run_dir(trainer) / "samples" / "base"
        if folder.is_dir() and any(folder.rglob("*.wav")):
            return  # a resumed run: the base samples exist
        from peft import PeftModel

        if isinstance(getattr(pl_module, "model", None), PeftModel):
            self._sample(trainer, pl_module, folder, scale=0.0)
        elif trainer.global_step == 0:  # a full fine-tune is the base model only before its first step
            self._sample(trainer, pl_module, folder, scale=1.0)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """Every ``every_n_steps`` optimiser steps."""
        step = trainer.global_step
        due = self.every_n_steps and step > 0 and step % self.every_n_steps == 0
        if due and self.prompts and step != self._last_step:
            self._sample(trainer, pl_module, run_dir(trainer) / "samples" / f"step_{step:07d}")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After validation (when ``every_n_steps`` is 0)."""
        if self.every_n_steps or trainer.sanity_checking or self._skip(trainer):
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        step = trainer.global_step
        if step != self._last_step:
            self._sample(trainer, pl_module, run_dir(trainer) / "samples" / f"step_{step:07d}")

    # ------------------------------------------------------------------ how
    def _generator(self, pl_module: Any) -> Any:
        from peft import PeftModel

        from musiclit.infer.sampler import Generator
        from musiclit.model.finetune import FineTune
        from musiclit.model.musicgen import LoadedMusicGen

        loaded = LoadedMusicGen(
            model=pl_module.base, tokenizer=pl_module.tokenizer, sample_rate=pl_module.sample_rate,
            frame_rate=pl_module.frame_rate, num_codebooks=pl_module.num_codebooks,
            audio_channels=pl_module.audio_channels, pad_token_id=pl_module.special_token,
        )  # fmt: skip
        hp = getattr(pl_module, "hparams", {})
        kind = "lora" if isinstance(pl_module.model, PeftModel) else "full"
        finetune = FineTune(pl_module.model, loaded, kind, str(hp.get("pretrained", "")), None,
                            int(hp.get("init_seed", 0)))  # fmt: skip
        return Generator(finetune, prepare=False)

    def _skip(self, trainer: L.Trainer) -> bool:
        """No prompts, not rank 0, or a sharded model (rank 0 alone cannot run it: the others would not
        all-gather; said once)."""
        if not self.prompts or not trainer.is_global_zero:
            return True
        from musiclit.train.strategies import is_sharded

        if is_sharded(trainer):
            if not getattr(self, "_warned", False):
                print("musiclit: in-training samples are skipped under FSDP; generate from a checkpoint instead")
                self._warned = True
            return True
        return False

    def _sample(self, trainer: L.Trainer, pl_module: L.LightningModule, folder: Path, scale: float = 1.0) -> None:
        if self._skip(trainer):
            return
        import torch

        from musiclit.eval.plots import png_bytes, spectrogram_db, spectrogram_image
        from musiclit.infer.sampler import GenerationParams, GenerationResult
        from musiclit.infer.samples import write_samples
        from musiclit.io import atomic_folder, atomic_write_bytes

        self._last_step = trainer.global_step
        gen = self._generator(pl_module)
        jobs = [(f"cfg{g:g}", list(self.prompts), g) for g in self.guidance_scales]
        if self.unconditional:
            jobs.append(("unconditional", [""], 1.0))
        from musiclit.eval.settings import auto_threads

        small = auto_threads(0, pl_module.device.type, int(pl_module.base.config.decoder.hidden_size))
        with eval_mode(pl_module), atomic_folder(folder, force=True) as tmp, _threads(small):
            for sub, prompts, guidance in jobs:
                params = GenerationParams(seconds=self.seconds, guidance_scale=guidance, top_k=self.top_k,
                                          seed=self.seed, adapter_scale=scale)  # fmt: skip
                seeds = [self.seed + i for i in range(len(prompts))]
                # the decoder under the trainer's autocast (frozen weights may be bf16); the codec in float32
                with trainer.precision_plugin.forward_context():
                    codes = gen.generate_codes(prompts, params, seeds)
                audio = torch.cat([gen.decode(codes[i : i + 1]) for i in range(codes.shape[0])])
                result = GenerationResult(audio, codes.cpu(), gen.sample_rate, seeds)
                paths = write_samples(gen, result, prompts, params, tmp / sub, save_codes=True)
                for i, (path, wav) in enumerate(zip(paths, audio, strict=True)):
                    image = (
                        spectrogram_image(spectrogram_db(wav.numpy(), gen.sample_rate)) if self.spectrograms else None
                    )
                    if image is not None:
                        atomic_write_bytes(path.with_suffix(".png"), png_bytes(image))
                    tag = f"samples/{'base/' if scale == 0.0 else ''}{sub}/{i:02d}"
                    self._log(trainer, tag, prompts[i] or "(unconditional)", wav, gen.sample_rate, image)

    def _log(self, trainer: L.Trainer, tag: str, caption: str, wav: Any, sample_rate: int, image: Any) -> None:
        step = trainer.global_step
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_audio"):  # TensorBoard
                experiment.add_audio(tag, wav[0], step, sample_rate)
                if image is not None:
                    experiment.add_image(tag + "/spectrogram", image, step, dataformats="HWC")
            elif type(logger).__name__ == "WandbLogger":
                logger.log_audio(  # type: ignore[attr-defined]
                    key=tag, audios=[wav[0].numpy()], sample_rate=[sample_rate], caption=[caption], step=step
                )
                if image is not None:
                    logger.log_image(key=tag + "/spectrogram", images=[image], caption=[caption], step=step)  # type: ignore[attr-defined]


class Evaluation(Callback):
    """``evaluate`` at the end of ``fit`` (results to ``<run>/eval``, every active logger and the report).

    Off by default: it generates samples and scores the validation set again (cost in docs/evaluate.md). The
    fine-tune it evaluates is the checkpoint of the best validation loss when early stopping kept one,
    else the final adapter (or ``last.ckpt`` for a full fine-tune).

    Args:
        enabled: Run the evaluation when fit ends.
        prompts: Validation captions used as sample prompts.
        samples_per_prompt: Samples per prompt (base and tuned alike).
        seconds: Length of each sample.
        guidance_scale: CFG scale of the samples.
        copying: Run the memorisation check.
        threads: CPU threads for torch during the evaluation (0: auto).
    """

    def __init__(
        self,
        enabled: bool = False,
        prompts: int = 4,
        samples_per_prompt: int = 2,
        seconds: float = 8.0,
        guidance_scale: float = 3.0,
        copying: bool = True,
        threads: int = 0,
    ) -> None:
        self.enabled = enabled
        self.settings = {"prompts": prompts, "samples_per_prompt": samples_per_prompt, "seconds": seconds,
                         "guidance_scale": guidance_scale, "copying": copying, "threads": threads}  # fmt: skip
        self.report: dict[str, Any] | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Evaluate, log, rebuild the report."""
        if not self.enabled or not trainer.is_global_zero or trainer.sanity_checking:
            return
        from musiclit.eval.evaluate import format_summary, run_evaluation, scalars
        from musiclit.eval.report import build_report
        from musiclit.eval.run import resolve_run
        from musiclit.eval.settings import EvalSettings

        run = run_dir(trainer)
        for logger in trainer.loggers:
            logger.save()  # the CSV the evaluation reads
        # the checkpoint of the best validation loss, when one is kept (early stopping)
        best = next((cb.best_model_path for cb in trainer.checkpoint_callbacks
                     if getattr(cb, "monitor", None) == "val/loss" and cb.best_model_path), None)  # fmt: skip
        info = resolve_run(best or run, None, "final")
        device = "cuda" if pl_module.device.type == "cuda" else "cpu"
        with _threads(None):  # the evaluation may change the thread count: restore it afterwards
            self.report = run_evaluation(info, EvalSettings(**self.settings, device=device), progress=False)
        values = scalars(self.report)
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)
            logger.save()
        build_report(run)
        print(format_summary(self.report), flush=True)


class EarlyStop(EarlyStopping):
    """Early stopping on the validation loss, as one switch: ``early_stopping.enabled: true``.

    Stops when ``val/loss`` has not improved by ``min_delta`` for ``patience`` validations. When enabled, ``fit``
    also keeps the checkpoint of the best validation loss (``checkpoints/best-NNNNNNN.ckpt``), which the report
    marks and ``evaluate --checkpoint best`` (and the evaluation at the end of fit) uses.

    Args:
        enabled: Turn early stopping on.
        patience: Validations without improvement before stopping.
        min_delta: Smallest decrease of the validation loss that counts as an improvement (nats).
    """

    def __init__(self, enabled: bool = False, patience: int = 3, min_delta: float = 0.0) -> None:
        super().__init__(monitor="val/loss", mode="min", patience=patience, min_delta=min_delta,
                         check_on_train_epoch_end=False, strict=True)  # fmt: skip
        self.enabled = enabled

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Only when enabled."""
        if self.enabled:
            super().setup(trainer, pl_module, stage)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Only when enabled."""
        if self.enabled:
            super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Only when enabled."""
        if self.enabled:
            super().on_train_epoch_end(trainer, pl_module)


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


class _StepWatcher(Callback):
    """Knows whether the batch that just ended made an optimiser step (not a micro-batch of an accumulation)."""

    _step_at_start: int | None = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Remember the optimiser step count at the batch's start."""
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self._step_at_start = trainer.global_step

    def stepped(self, trainer: L.Trainer) -> bool:
        """Whether the batch that just ended made an optimiser step."""
        return self._step_at_start is not None and trainer.global_step != self._step_at_start


class ResumableCheckpoint(_StepWatcher, ModelCheckpoint):
    """Lightning's ModelCheckpoint (same options), plus a checkpoint at the step where training stops.

    When ``max_steps`` is reached mid-epoch (or a callback sets ``trainer.should_stop``: a signal, a time
    limit), Lightning still ends the epoch: it counts the epoch as processed and then saves in
    ``on_train_epoch_end``. That checkpoint says "epoch finished" while the data loader stopped mid-epoch,
    so ``--ckpt_path last`` would start the next epoch and train on other batches than an uninterrupted run.
    Saving right after the last training step records the true position (the epoch-end save is then
    skipped: Lightning saves once per step), and resuming continues with exactly the batches that come next.
    """

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Lightning's step-interval checkpoints; then, if training stops after this step, save it now."""
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.stepped(trainer):
            return
        max_steps = trainer.max_steps
        stops = trainer.should_stop or (max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps)
        if not stops or self._should_skip_saving_checkpoint(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        if self.monitor is None and self.save_top_k != 0:
            self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    @property
    def state_key(self) -> str:
        """The key of ModelCheckpoint's state in checkpoints (unchanged, so older checkpoints restore it)."""
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)


class StopOnSignal(_StepWatcher):
    """Stop training cleanly on SIGTERM or Ctrl-C (SIGINT): finish the current step, write a checkpoint at it,
    skip the end-of-training validation, and end ``fit`` normally.

    The checkpoint is written by :class:`ResumableCheckpoint` (``last.ckpt``), and ``--ckpt_path last`` then
    continues with exactly the batches an uninterrupted run would have trained on. A second Ctrl-C stops at
    once, without a checkpoint. ``python -m musiclit fit`` exits with 128 + the signal number (130 for
    SIGINT, 143 for SIGTERM) after such a stop, so scripts can tell it from a finished run. Under DDP the
    ranks agree after every optimiser step (a signal to any process stops all of them at the same step).

    Other code can ask for the same stop with :meth:`request_stop` (e.g. a watcher of a cloud preemption
    notice). A signal that arrives during validation is acted on after the next training step; before
    training starts (setup, sanity check) the usual handling applies.

    Args:
        signals: Names of the signals handled (an empty list leaves signal handling to Lightning/Python).
    """

    def __init__(self, signals: list[str] | None = None) -> None:
        self.signals = ["SIGINT", "SIGTERM"] if signals is None else list(signals)
        self.requested: str | None = None
        self.signal: int | None = None
        self.stopped_at_step: int | None = None
        self._previous: dict[int, Any] = {}

    def request_stop(self, reason: str, signum: int | None = None) -> None:
        """Ask training to stop after the current optimiser step (with a checkpoint at that step)."""
        if self.requested is None:
            self.requested, self.signal = reason, signum

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            self._restore()  # a second Ctrl-C: stop at once, as Python does by default
            raise KeyboardInterrupt
        if self.requested is None:
            name = signal.Signals(signum).name
            print(f"musiclit: {name} received: stopping after this step and writing a checkpoint"
                  + (" (Ctrl-C again to stop at once, without one)" if signum == signal.SIGINT else ""),
                  file=sys.stderr, flush=True)  # fmt: skip
            self.request_stop(name, signum)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only
        for name in self.signals:
            signum = getattr(signal, name, None)
            if signum is not None and signum not in self._previous:
                self._previous[signum] = signal.signal(signum, self._handle)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Install the handlers (after Lightning's own: this callback owns SIGTERM/SIGINT while training)."""
        self.requested, self.signal, self.stopped_at_step = None, None, None
        self._install()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """After an optimiser step: if any process was asked to stop, stop every process here."""
        if not self.stepped(trainer):  # a stop happens only after a step, never mid-accumulation
            return
        requested = self.requested is not None
        if trainer.world_size > 1:
            requested = bool(trainer.strategy.reduce_boolean_decision(requested, all=False))
        if not requested:
            return
        if self.requested is None:
            self.requested = "a signal to another process"
        self.stopped_at_step = trainer.global_step
        trainer.should_stop = True
        trainer.limit_val_batches = 0  # Lightning validates when asked to stop: not now, a stop should be quick

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Give the signals back."""
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Give the signals back."""
        self._restore()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Give the signals back."""
        self._restore()
