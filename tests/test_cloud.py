"""Running the same config anywhere: ${MUSICLIT_*} paths, global batch -> accumulation, --ckpt_path auto."""

from __future__ import annotations

import re

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from tiny_run import fit_args, tiny_fit

from musiclit.errors import ConfigError
from musiclit.train.cli import build_cli, device_count, resolve_accumulation
from musiclit.train.variables import expand_variables


class LossRecorder(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


class StopAfter(LossRecorder):
    """Records losses, then dies at the start of step ``n + 1`` (a machine that went away after a checkpoint)."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.n:
            raise RuntimeError("machine stopped")


# ------------------------------------------------------------------ paths from the environment


def test_variables_expand_with_defaults_and_only_musiclit_names():
    env = {"MUSICLIT_DATA": "/workspace/data", "WANDB_API_KEY": "secret-123"}
    assert expand_variables("${MUSICLIT_DATA}/mystyle", "data.data_dir", env) == "/workspace/data/mystyle"
    # the path variables have defaults relative to the working folder, so a pod's config runs on a laptop
    assert expand_variables("${MUSICLIT_RUNS}/a", "x", {}) == "runs/a"
    assert expand_variables("${MUSICLIT_DATA}/a", "x", {}) == "data/a"
    assert expand_variables("${MUSICLIT_BASE:-facebook/musicgen-small}", "x", {}) == "facebook/musicgen-small"
    assert expand_variables("${MUSICLIT_BASE:-x}", "x", {"MUSICLIT_BASE": "/m"}) == "/m"
    assert expand_variables("no variables, $HOME stays", "x", env) == "no variables, $HOME stays"
    with pytest.raises(ConfigError, match=r"model.pretrained: \$\{MUSICLIT_BASE\} is not set"):
        expand_variables("${MUSICLIT_BASE}", "model.pretrained", {})
    with pytest.raises(ConfigError, match="only MUSICLIT_"):
        expand_variables("${WANDB_API_KEY}", "trainer.logger", env)


def test_the_same_config_resolves_to_the_pods_volume_and_to_a_laptop_folder(
    tmp_path, tiny_model_dir, tiny_dataset, monkeypatch
):
    """One YAML with ${MUSICLIT_DATA}/${MUSICLIT_RUNS}: the paths follow the environment, the rest is equal."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"data_dir": "${MUSICLIT_DATA}/mystyle"},
        "trainer": {"default_root_dir": "${MUSICLIT_RUNS}/mystyle", "accelerator": "cpu"},
        "model": {"pretrained": str(tiny_model_dir)},
    }))  # fmt: skip
    resolved = {}
    for machine in ("laptop", "pod"):
        (tmp_path / machine / "data").mkdir(parents=True)
        (tmp_path / machine / "data" / "mystyle").symlink_to(tiny_dataset)  # a real dataset: fit checks it
        monkeypatch.setenv("MUSICLIT_DATA", str(tmp_path / machine / "data"))
        monkeypatch.setenv("MUSICLIT_RUNS", str(tmp_path / machine / "runs"))
        cli = build_cli(["--config", str(config)], run=False)
        assert cli.datamodule.data_dir == str(tmp_path / machine / "data" / "mystyle")
        assert cli.trainer.default_root_dir == str(tmp_path / machine / "runs" / "mystyle")
        assert cli.trainer.checkpoint_callback.dirpath == str(tmp_path / machine / "runs" / "mystyle" / "checkpoints")
        resolved[machine] = cli.config.as_dict()
    for section in ("model", "data", "trainer"):  # nothing else differs
        a, b = resolved["laptop"][section], resolved["pod"][section]
        expected = {"data": {"data_dir"}, "trainer": {"default_root_dir", "logger"}}.get(section, set())
        assert {k for k in a if a[k] != b[k]} == expected  # (the loggers write inside the run folder)


def test_a_secret_variable_in_a_config_is_refused(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "secret-123")
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["--model.pretrained", str(tiny_model_dir), "--data.data_dir", "${WANDB_API_KEY}"], run=False)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "only MUSICLIT_* variables" in err and "secret-123" not in err


# ------------------------------------------------------------------ global batch -> accumulation


def test_accumulation_keeps_the_global_batch():
    assert resolve_accumulation(8, 1, 1) == 8  # the RTX 3060 recipe
    assert resolve_accumulation(8, 4, 1) == 2  # an A40 overlay
    assert resolve_accumulation(8, 8, 1) == 1  # an A100 80GB overlay
    assert resolve_accumulation(16, 2, 4) == 2  # four GPUs
    with pytest.raises(ConfigError, match=r"global_batch_size 8 is not a multiple of .* 3 x 1 device\(s\) = 3: "
                                          r"choose data.batch_size in \[1, 2, 4, 8\]"):  # fmt: skip
        resolve_accumulation(8, 3, 1)
    with pytest.raises(ConfigError, match="4 x 4 device"):
        resolve_accumulation(8, 4, 4)


def test_device_count_reads_every_form_of_trainer_devices():
    assert device_count(4, "gpu") == 4
    assert device_count("2", "gpu", num_nodes=3) == 6
    assert device_count([0, 2], "gpu") == 2
    assert device_count("0,1,2", "gpu") == 3
    assert device_count("auto", "cpu") == 1
    assert device_count(-1, "auto") == (torch.cuda.device_count() if torch.cuda.is_available() else 1)


@pytest.mark.parametrize(("batch", "devices", "accumulate"), [(1, 1, 8), (4, 1, 2), (2, 2, 2)])
def test_global_batch_size_sets_the_trainers_accumulation(
    tmp_path, tiny_model_dir, tiny_dataset, batch, devices, accumulate
):
    args = fit_args(tiny_model_dir, tiny_dataset, tmp_path / "run", "--global_batch_size", "8",
                    "--data.batch_size", str(batch), "--trainer.devices", str(devices),
                    "--trainer.accumulate_grad_batches", "3")[1:]  # fmt: skip
    if devices > 1:
        args += ["--trainer.strategy", "ddp"]
    cli = build_cli(args, run=False)
    assert cli.trainer.accumulate_grad_batches == accumulate


def test_a_global_batch_that_does_not_divide_is_a_clear_error(tmp_path, tiny_model_dir, capsys):
    args = fit_args(tiny_model_dir, tmp_path, tmp_path / "run", "--global_batch_size", "8", "--data.batch_size", "3")
    with pytest.raises(SystemExit) as exit_info:
        build_cli(args[1:], run=False)
    assert exit_info.value.code == 2
    assert "global_batch_size 8 is not a multiple of data.batch_size 3" in capsys.readouterr().err


def test_cloud_overlay_keeps_the_local_runs_global_batch(tmp_path):
    """medium LoRA locally (1 x 8) and with each overlay: batch x accumulation is 8 every time."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "configs"
    local = yaml.safe_load((root / "musicgen-medium-lora.yaml").read_text())
    cards = [p for p in sorted((root / "cloud").glob("*.yaml")) if p.stem not in ("ddp", "fsdp")]
    assert len(cards) == 4
    for overlay in cards:
        cloud = yaml.safe_load(overlay.read_text())
        assert set(cloud) <= {"data", "trainer"}, overlay.name  # hardware knobs only
        assert set(cloud["data"]) <= {"batch_size", "num_workers"}, overlay.name
        assert set(cloud["trainer"]) <= {"precision", "accelerator", "devices", "num_nodes", "strategy"}
        batch = cloud["data"]["batch_size"]
        assert batch * resolve_accumulation(local["global_batch_size"], batch, 1) == local["data"]["batch_size"] * 8


# ------------------------------------------------------------------ --ckpt_path auto


@pytest.mark.slow
def test_ckpt_path_auto_starts_fresh_then_resumes_exactly(tmp_path, tiny_model_dir, tiny_dataset, capfd):
    """The same command twice: the first starts fresh, the second continues; losses equal a straight run."""
    exact = ("--data.batch_size", "2", "--trainer.precision", "32-true", "--trainer.num_sanity_val_steps", "0",
             "--seed_everything", "0", "--checkpoint.every_n_train_steps", "1")  # fmt: skip
    straight, first, second = LossRecorder(), StopAfter(3), LossRecorder()
    tiny_fit(tiny_model_dir, tiny_dataset, tmp_path / "a", *exact, "--trainer.max_steps", "5", callbacks=[straight])
    capfd.readouterr()
    with pytest.raises(RuntimeError, match="machine stopped"):
        tiny_fit(tiny_model_dir, tiny_dataset, tmp_path / "b", *exact, "--trainer.max_steps", "5", "--ckpt_path",
                 "auto", callbacks=[first])  # fmt: skip
    assert "starting fresh" in capfd.readouterr().err
    tiny_fit(tiny_model_dir, tiny_dataset, tmp_path / "b", *exact, "--trainer.max_steps", "5", "--ckpt_path", "auto",
             callbacks=[second])  # fmt: skip
    assert "resuming from " + str(tmp_path / "b" / "checkpoints" / "last.ckpt") in capfd.readouterr().err
    assert len(first.losses) == 3 and len(second.losses) == 2
    assert first.losses + second.losses == straight.losses


# ------------------------------------------------------------------ many GPUs


def test_multi_gpu_overlays_choose_the_strategy_in_yaml():
    """ddp.yaml: Lightning's DDP; fsdp.yaml: MusicGenFSDP built from the YAML, one unit per decoder layer.

    Not run: Lightning's FSDP refuses a CPU accelerator ("The strategy `fsdp` requires a GPU accelerator"),
    so on a machine without GPUs the test builds the strategy object from the YAML and checks its settings.
    """
    from pathlib import Path

    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import Strategy
    from transformers.models.musicgen.modeling_musicgen import MusicgenDecoderLayer

    from musiclit.train.strategies import MusicGenFSDP

    root = Path(__file__).resolve().parent.parent / "configs" / "cloud"
    assert yaml.safe_load((root / "ddp.yaml").read_text())["trainer"]["strategy"] == "ddp"
    spec = yaml.safe_load((root / "fsdp.yaml").read_text())["trainer"]["strategy"]
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    strategy = parser.instantiate_classes(parser.parse_object({"strategy": spec})).strategy
    assert isinstance(strategy, MusicGenFSDP)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {MusicgenDecoderLayer}
    assert strategy.kwargs["use_orig_params"] is True  # frozen and trained weights in one module
    assert strategy._state_dict_type == "full"
    assert str(strategy.sharding_strategy).endswith("FULL_SHARD")


def test_fsdp_replicates_exactly_the_frozen_encoders(tiny_model_dir):
    """The modules FSDP is told to ignore hold no trained weight, and every frozen weight outside the decoder."""
    from musiclit.train.module import MusicGenModule
    from musiclit.train.strategies import frozen_encoders

    module = MusicGenModule(str(tiny_model_dir), lora=None)
    ignored = frozen_encoders(module)
    assert [type(m).__name__ for m in ignored] == ["T5EncoderModel", "EncodecModel"]
    ignored_params = {id(p) for m in ignored for p in m.parameters()}
    assert ignored_params and not any(p.requires_grad for m in ignored for p in m.parameters())
    decoder_layers = module.base.decoder.model.decoder.layers
    assert all(id(p) not in ignored_params for p in decoder_layers.parameters())


def test_samples_are_skipped_on_a_sharded_model(capsys):
    """Under FSDP, rank 0 alone cannot run the model: the sample callback returns before touching it."""
    from types import SimpleNamespace

    from musiclit.train.callbacks import SampleLogger
    from musiclit.train.strategies import MusicGenFSDP

    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, strategy=MusicGenFSDP(), current_epoch=0)
    SampleLogger(prompts=["a"]).on_validation_epoch_end(trainer, pl_module=None)  # None: would fail if used
    assert "skipped under FSDP" in capsys.readouterr().out


def test_the_docs_layering_resolves_to_the_local_schedule(tmp_path, tiny_model_dir, tiny_dataset):
    """base + medium LoRA + the A40 overlay (docs/cloud.md) builds a trainer with batch 4 x accumulation 2 = 8."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    docs = (root / "docs" / "cloud.md").read_text() + (root / "README.md").read_text()
    for path in set(re.findall(r"configs/[\w./-]+\.yaml", docs)):
        assert (root / path).is_file(), f"{path} is named in the docs but does not exist"
    configs = [str(root / "configs" / name) for name in ("base.yaml", "musicgen-medium-lora.yaml", "cloud/a40.yaml")]
    args = [x for c in configs for x in ("--config", c)]
    args += ["--model.pretrained", str(tiny_model_dir), "--data.data_dir", str(tiny_dataset),
             "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path / "run")]  # fmt: skip
    cli = build_cli(args, run=False)
    assert cli.datamodule.batch_size == 4 and cli.trainer.accumulate_grad_batches == 2


# ------------------------------------------------------------------ preemption (SIGTERM)


@pytest.mark.slow
def test_sigterm_leaves_a_checkpoint_and_the_restart_continues_exactly(tmp_path, tiny_model_dir, tiny_dataset):
    """SIGTERM after step 3 of 6: a checkpoint at step 3, a clean exit, and the restarted run's per-step losses
    equal an uninterrupted run's."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")])}
    exact = ["--data.batch_size", "2", "--trainer.precision", "32-true", "--trainer.num_sanity_val_steps", "0",
             "--seed_everything", "0", "--trainer.max_steps", "6", "--ckpt_path", "auto"]  # fmt: skip

    def fit(run: str, log: Path, kill_after: int = 0) -> subprocess.CompletedProcess:
        config = tmp_path / f"{log.name}.{kill_after}.yaml"
        config.write_text("trainer:\n  callbacks:\n    - class_path: preempt.StepLog\n"
                          f"      init_args: {{path: '{log}', kill_after: {kill_after}}}\n")  # fmt: skip
        args = [*fit_args(tiny_model_dir, tiny_dataset, tmp_path / run, *exact, "--config", str(config)),
                "--allow-import", "preempt"]  # fmt: skip
        return subprocess.run([sys.executable, "-m", "musiclit", *args], capture_output=True, text=True,
                              timeout=600, cwd=root, env=env)  # fmt: skip

    def losses(log: Path) -> list[tuple[int, float]]:
        return [(int(s), float(v)) for s, v in (line.split() for line in log.read_text().splitlines())]

    straight = fit("straight", tmp_path / "straight.txt")
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert [s for s, _ in losses(tmp_path / "straight.txt")] == [1, 2, 3, 4, 5, 6]

    stopped = fit("b", tmp_path / "b.txt", kill_after=3)
    assert [s for s, _ in losses(tmp_path / "b.txt")] == [1, 2, 3]  # the signal arrived after step 3
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert last.is_file(), "no checkpoint after SIGTERM"
    assert torch.load(last, weights_only=False)["global_step"] == 3
    assert stopped.returncode == 143, stopped.stderr[-2000:]  # 128 + SIGTERM: stopped cleanly by the signal
    assert "stopped by SIGTERM after step 3" in stopped.stderr and "Traceback" not in stopped.stderr

    resumed = fit("b", tmp_path / "b.txt")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert losses(tmp_path / "b.txt") == losses(tmp_path / "straight.txt")
