"""The LightningCLI behind ``python -m musiclit fit|validate`` (and the ``cache`` verb, which takes its options).

Run folder layout (``trainer.default_root_dir``)::

    runs/<name>/
      checkpoints/last.ckpt, step-*.ckpt   trainable weights + optimiser/scheduler/loop state
      adapter/                             peft adapter (adapter_config.json + adapter_model.safetensors)
      logs/version_N/config.yaml           the resolved config of each start (and metrics.csv)
      tensorboard/version_N/               TensorBoard events
      samples/base, samples/step_*/        samples generated during training (WAV, JSON, codes, spectrogram PNG)
      eval/eval.json, eval/samples/        written by `evaluate` (and at the end of fit with evaluation.enabled)
      report/index.html                    the run report (`python -m musiclit report RUN`)

Machine-independent configs (docs/cloud.md): any string option may contain ``${MUSICLIT_DATA}``,
``${MUSICLIT_RUNS}`` or any other ``${MUSICLIT_*}`` variable (``${NAME:-default}`` gives a default), expanded
from the environment before the classes are built; ``global_batch_size`` derives
``trainer.accumulate_grad_batches`` from the per-device batch and the device count; ``--ckpt_path auto``
resumes from ``<run>/checkpoints/last.ckpt`` when it exists and starts fresh otherwise.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from musiclit.data.datamodule import MusicDataModule
from musiclit.errors import ConfigError
from musiclit.io import quiet_libraries
from musiclit.train.callbacks import (
    AdapterExport,
    EarlyStop,
    Evaluation,
    NonFiniteGuard,
    ResumableCheckpoint,
    SampleLogger,
    StopOnSignal,
)
from musiclit.train.module import MusicGenModule
from musiclit.train.variables import expand_config

DEFAULT_ROOT = "runs/default"
# what a config or command line may name as a class_path (the module and everything under it); anything else
# needs `fit --allow-import <module or class>` (a config that names e.g. subprocess.Popen would run a command)
ALLOWED_IMPORTS = (
    "musiclit",
    "torch.optim",
    "lightning.pytorch.callbacks",
    "lightning.pytorch.loggers",
    "lightning.pytorch.strategies",
    "lightning.pytorch.plugins",
    "lightning.pytorch.profilers",
    "lightning.pytorch.accelerators",
)


def device_count(devices: Any, accelerator: Any, num_nodes: Any = 1) -> int:
    """How many processes share a global batch: ``trainer.devices`` (int, list, "0,1", "auto", -1) x nodes."""
    if isinstance(devices, str) and devices not in ("auto", "-1"):
        devices = [d for d in devices.split(",") if d.strip()] if "," in devices else int(devices)
    if isinstance(devices, (list, tuple)):
        local = len(devices)
    elif devices in ("auto", -1, "-1", None):
        import torch

        gpu = accelerator in ("auto", "gpu", "cuda", None) and torch.cuda.is_available()
        local = torch.cuda.device_count() if gpu else 1
    else:
        local = int(devices)
    return max(1, local) * max(1, int(num_nodes or 1))


def resolve_accumulation(global_batch: int, batch_size: int, devices: int) -> int:
    """``trainer.accumulate_grad_batches`` that makes ``batch_size x devices x accumulation == global_batch``.

    Raises:
        ConfigError: The global batch is not a multiple of ``batch_size x devices``.
    """
    per_step = batch_size * devices
    if global_batch < 1 or global_batch % per_step:
        fits = [b for b in range(1, global_batch + 1) if global_batch % (b * devices) == 0]
        hint = f"data.batch_size in {fits}" if fits else f"fewer than {devices} devices"
        raise ConfigError(
            f"global_batch_size {global_batch} is not a multiple of data.batch_size {batch_size} x {devices} "
            f"device(s) = {per_step}: choose {hint}, or another global_batch_size"
        )
    return global_batch // per_step


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
        # native bf16 only: torch's default also counts emulation, which every CUDA card "supports" (a
        # T4/V100/2080 Ti then runs bf16 several times slower than fp16 instead of switching)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return precision, None
        return "16-mixed", "this GPU has no bf16 support: training with precision 16-mixed"
    if accelerator in ("auto", "cpu") and not cpu_has_bf16():
        return "32-true", "this CPU has no native bf16 (bf16 would be several times slower): training in 32-true"
    return precision, None


class MusicLitCLI(LightningCLI):
    """LightningCLI with the sample rate/channels linked from the model, fixed run-folder layout,
    ``--ckpt_path last|auto`` resolved to ``<run>/checkpoints/last.ckpt``, ``${MUSICLIT_*}`` expanded in
    config strings, and ``global_batch_size`` resolved into ``trainer.accumulate_grad_batches``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link model facts into the data module and add the always-on callbacks."""
        parser.link_arguments("model.sample_rate", "data.sample_rate", apply_on="instantiate")
        parser.link_arguments("model.audio_channels", "data.channels", apply_on="instantiate")
        # Lightning's ModelCheckpoint options; it also saves at the step where training stops (exact resume)
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
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
        parser.add_argument(
            "--global_batch_size",
            type=int | None,
            default=None,
            help="Examples per optimiser step over all devices; when set, trainer.accumulate_grad_batches is "
            "derived from it (global / (data.batch_size x devices x nodes)), so a bigger GPU or more GPUs keep "
            "the same schedule",
        )
        parser.add_lightning_class_args(AdapterExport, "adapter")
        parser.add_lightning_class_args(SampleLogger, "samples")
        parser.add_lightning_class_args(StopOnSignal, "stop_on_signal")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.add_lightning_class_args(EarlyStop, "early_stopping")
        parser.add_lightning_class_args(Evaluation, "evaluation")

    def before_instantiate_classes(self) -> None:
        """Expand variables, derive accumulation, default loggers and checkpoint folder inside the run folder,
        resolve ``--ckpt_path last|auto``."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        try:
            expand_config(config)
        except ConfigError as err:
            self.parser.error(str(err))
        if config.get("global_batch_size"):
            devices = device_count(config.trainer.devices, config.trainer.accelerator, config.trainer.num_nodes)
            try:
                accumulate = resolve_accumulation(config.global_batch_size, config.data.batch_size, devices)
            except ConfigError as err:
                self.parser.error(str(err))
            if accumulate != config.trainer.accumulate_grad_batches:
                print(f"musiclit: global batch {config.global_batch_size} = batch {config.data.batch_size} x "
                      f"{devices} device(s) x accumulate_grad_batches {accumulate}", file=sys.stderr)  # fmt: skip
            config.trainer.accumulate_grad_batches = accumulate
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
        if config.early_stopping.enabled:
            # keep the checkpoint of the best validation loss (saved right after each validation)
            best = {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"dirpath": config.checkpoint.dirpath, "filename": "best-{step:07d}",
                              "monitor": "val/loss", "mode": "min", "save_top_k": 1,
                              "auto_insert_metric_name": False, "enable_version_counter": False},
            }  # fmt: skip
            callbacks = config.trainer.callbacks or []
            config.trainer.callbacks = [*callbacks, best] if isinstance(callbacks, list) else [callbacks, best]
        precision, why = resolve_precision(config.trainer.precision, config.trainer.accelerator)
        if why:
            print(f"musiclit: {why} (set trainer.precision explicitly to another value to choose)", file=sys.stderr)
            config.trainer.precision = precision
        ckpt = config.get("ckpt_path")
        if ckpt == "auto":  # one restart command for a pod's start script
            last = Path(config.checkpoint.dirpath) / "last.ckpt"
            config.ckpt_path = str(last) if last.is_file() else None
            what = f"resuming from {last}" if last.is_file() else f"no {last}, starting fresh"
            print(f"musiclit: --ckpt_path auto: {what}", file=sys.stderr)
        elif ckpt == "last":
            last = Path(config.checkpoint.dirpath) / "last.ckpt"
            if not last.is_file():
                self.parser.error(f"--ckpt_path last: no checkpoint at {last} (nothing to resume in {root})")
            config.ckpt_path = str(last)
        elif ckpt and not Path(ckpt).is_file():
            self.parser.error(f"--ckpt_path {ckpt}: file not found")
        from musiclit.data.manifest import check_data_dir

        check_data_dir(config.data.data_dir)  # a typo costs no model load

    def _parse_ckpt_path(self) -> None:
        """Lightning's reading of the hyper-parameters of ``--ckpt_path``, with a clear error for a bad file.

        Lightning 2.6 reads the file here with ``weights_only=True`` too, but a refused or broken file ends
        in a traceback; this reads it through :func:`musiclit.io.load_tensors` (the file and the problem).
        """
        from musiclit.io import load_tensors

        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if not path or not Path(path).is_file():
            return
        ckpt = load_tensors(path, "checkpoint")
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("hyper_parameters", {}), dict):
            raise ConfigError(f"--ckpt_path {path}: not a musiclit checkpoint (no hyper_parameters dict)")
        hparams = dict(ckpt.get("hyper_parameters", {}))
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write(f"musiclit: {path}: the checkpoint's hyper-parameters do not parse\n")
            raise

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """The Trainer, with checkpoints written atomically and read back without unpickling code."""
        from lightning.fabric.plugins.io import CheckpointIO

        from musiclit.train.checkpointing import AtomicCheckpointIO

        plugins = self._get(self.config_init, "trainer", default={}).get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)


ALLOW = "--allow-import"


def split_allow_imports(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(other arguments, allowed import paths)`` of ``--allow-import X`` / ``--allow-import=X``."""
    rest: list[str] = []
    allow: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == ALLOW:
            value = next(it, None)
            if value is None:
                raise ConfigError(f"{ALLOW} needs a module or class path (e.g. {ALLOW} mypackage.MyCallback)")
            allow.append(value)
        elif arg.startswith(ALLOW + "="):
            allow.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return rest, allow


@contextlib.contextmanager
def import_policy(allow: Sequence[str] = ()) -> Iterator[None]:
    """Only :data:`ALLOWED_IMPORTS` (and ``allow``) may be named by a class_path in a config or argument.

    The policy is jsonargparse's import-path allow-list (everything else denied), set while the CLI parses
    and instantiates and restored afterwards.
    """
    from jsonargparse import _common

    saved = (_common.parsing_settings["import_path_verdicts"], _common.parsing_settings["import_paths_enforced"])
    from jsonargparse import set_parsing_settings

    set_parsing_settings(import_path_denylist=["*"], import_path_allowlist=[*ALLOWED_IMPORTS, *allow])
    try:
        yield
    finally:
        _common.parsing_settings["import_path_verdicts"], _common.parsing_settings["import_paths_enforced"] = saved


def build_cli(
    args: list[str] | None = None, run: bool = True, allow_imports: Sequence[str] = (), **kwargs: Any
) -> MusicLitCLI:
    """Build (and by default run) the CLI; ``args`` as on the command line, starting with the verb.

    ``allow_imports``: modules or classes a class_path may name beyond :data:`ALLOWED_IMPORTS`.
    """
    quiet_libraries()
    with import_policy(allow_imports):
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

    args, allow = split_allow_imports(args)
    cli = build_cli(args, run=False, allow_imports=allow)  # run=False: no subcommand, the options of `fit`
    dm = cli.datamodule
    dm.attach_tokenizer(CodecTokenizer.from_module(cli.model))
    if cli.model.melody:  # melody models: the chroma of every conditioning file too (Demucs runs here, once)
        dm.attach_melody(cli.model.melody_tokenizer(dm.melody_separator))
    dm.token_cache = True
    dm.setup("fit")
    return (dm.cache, dm.melody_cache) if with_melody else dm.cache
