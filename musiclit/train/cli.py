"""The LightningCLI behind ``python -m musiclit fit|validate`` (and the ``cache`` verb, which takes its options).

Run folder layout (``trainer.default_root_dir``)::

    runs/<name>/
      checkpoints/last.ckpt, step-*.ckpt   trainable weights + optimiser/scheduler/loop state
      adapter/                             peft adapter (adapter_config.json + adapter_model.safetensors)
      logs/version_N/config.yaml           the resolved config of each start (and metrics.csv)
      tensorboard/version_N/               TensorBoard events
      samples/step_*/                      audio samples generated during training
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from musiclit.data.datamodule import MusicDataModule
from musiclit.io import quiet_libraries
from musiclit.train.callbacks import AdapterExport, SampleLogger
from musiclit.train.module import MusicGenModule

DEFAULT_ROOT = "runs/default"


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); without it bf16 matmuls are emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: Any, accelerator: Any) -> tuple[Any, str | None]:
    """``bf16-mixed`` where the hardware supports it, else the best alternative, and why.

    One config serves every machine: on a GPU without bf16 (pre-Ampere) it becomes ``16-mixed``; on a CPU
    without native bf16 (where bf16 matmuls run several times slower than fp32) it becomes ``32-true``.
    """
    if str(precision) != "bf16-mixed" or not isinstance(accelerator, str):
        return precision, None
    import torch

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return precision, None
        return "16-mixed", "this GPU has no bf16 support: training with precision 16-mixed"
    if accelerator in ("auto", "cpu") and not cpu_has_bf16():
        return "32-true", "this CPU has no native bf16 (bf16 would be several times slower): training in 32-true"
    return precision, None


class MusicLitCLI(LightningCLI):
    """LightningCLI with the sample rate/channels linked from the model, fixed run-folder layout, and
    ``--ckpt_path last`` resolved to ``<run>/checkpoints/last.ckpt``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link model facts into the data module and add the always-on callbacks."""
        parser.link_arguments("model.sample_rate", "data.sample_rate", apply_on="instantiate")
        parser.link_arguments("model.audio_channels", "data.channels", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.filename": "step-{step:07d}",
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.enable_version_counter": False,
                "trainer.default_root_dir": DEFAULT_ROOT,
                # the data module's sampler shards by rank itself (keyed, resumable); keep Lightning's out
                "trainer.use_distributed_sampler": False,
            }
        )
        parser.add_lightning_class_args(AdapterExport, "adapter")
        parser.add_lightning_class_args(SampleLogger, "samples")

    def before_instantiate_classes(self) -> None:
        """Default loggers and checkpoint folder inside the run folder; resolve ``--ckpt_path last``."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = Path(config.trainer.default_root_dir or DEFAULT_ROOT)
        if config.trainer.logger in (None, True):
            config.trainer.logger = [
                {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(root), "name": "logs"},
                },
                {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": str(root), "name": "tensorboard", "default_hp_metric": False},
                },
            ]
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(root / "checkpoints")
        precision, why = resolve_precision(config.trainer.precision, config.trainer.accelerator)
        if why:
            print(f"musiclit: {why} (set trainer.precision explicitly to another value to choose)", file=sys.stderr)
            config.trainer.precision = precision
        ckpt = config.get("ckpt_path")
        if ckpt == "last":
            last = Path(config.checkpoint.dirpath) / "last.ckpt"
            if not last.is_file():
                self.parser.error(f"--ckpt_path last: no checkpoint at {last} (nothing to resume in {root})")
            config.ckpt_path = str(last)
        elif ckpt and not Path(ckpt).is_file():
            self.parser.error(f"--ckpt_path {ckpt}: file not found")


def build_cli(args: list[str] | None = None, run: bool = True, **kwargs: Any) -> MusicLitCLI:
    """Build (and by default run) the CLI; ``args`` as on the command line, starting with the verb."""
    quiet_libraries()
    return MusicLitCLI(
        MusicGenModule,
        MusicDataModule,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "yaml"},
        **kwargs,
    )


def build_token_cache(args: list[str], with_melody: bool = False) -> Any:
    """Encode the dataset that the ``fit`` options ``args`` describe into its token cache; returns the cache
    (``with_melody``: ``(token cache, melody chroma cache or None)``)."""
    from musiclit.model.codec import CodecTokenizer

    cli = build_cli(args, run=False)  # run=False: no subcommand, the options of `fit`
    dm = cli.datamodule
    dm.attach_tokenizer(CodecTokenizer.from_module(cli.model))
    if cli.model.melody:  # melody models: the chroma of every conditioning file too (Demucs runs here, once)
        dm.attach_melody(cli.model.melody_tokenizer(dm.melody_separator))
    dm.token_cache = True
    dm.setup("fit")
    return (dm.cache, dm.melody_cache) if with_melody else dm.cache
