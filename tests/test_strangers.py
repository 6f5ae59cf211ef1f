"""Files from strangers cannot run code: crafted pickles, YAML tags and class paths are refused by name.

Every crafted file here would create a marker file if any of it were executed; each test asserts that the
marker never appears and that the error names the file and the problem.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from tiny_run import tiny_fit

from musiclit.__main__ import main


class _Payload:
    """Unpickling this runs ``touch <marker>`` (what an attacker's checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(path: Path, marker: Path, payload_at: str = "x", base: dict | None = None) -> Path:
    """A ``torch.save`` file shaped like the real thing, with a code-running object inside."""
    obj = dict(base or {})
    obj[payload_at] = _Payload(marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a crafted file ran code"


def test_the_payload_really_runs_when_unpickled(tmp_path, marker):
    """The oracle for every test below: loading the crafted file without protection creates the marker."""
    path = _evil(tmp_path / "x.ckpt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()


def _fails(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_generate_and_export_refuse_a_crafted_checkpoint(tmp_path, marker, capsys, tiny_model_dir):
    ckpt = _evil(tmp_path / "model.ckpt", marker, "hyper_parameters", {"state_dict": {}})
    err = _fails(["generate", "--model", str(tiny_model_dir), "--adapter", str(ckpt), "--prompt", "x",
                  "--seconds", "0.1", "--out", str(tmp_path / "out")], capsys)  # fmt: skip
    assert str(ckpt) in err and "refused" in err and "tensors and plain values" in err
    err = _fails(["export", str(ckpt), "--format", "peft", "--out", str(tmp_path / "exp")], capsys)
    assert str(ckpt) in err and "refused" in err
    assert not (tmp_path / "exp").exists()


def test_a_crafted_adapter_bin_is_refused(tmp_path, marker, tiny_model_dir):
    from musiclit.io import UnsafeFileError
    from musiclit.model.finetune import load_finetune

    folder = tmp_path / "adapter"
    _evil(folder / "adapter_model.bin", marker)
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"],
              "base_model_name_or_path": str(tiny_model_dir)}  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(UnsafeFileError, match=r"adapter_model\.bin: refused"):
        load_finetune(model=str(tiny_model_dir), adapter=str(folder))


def test_import_refuses_a_crafted_audiocraft_folder_unless_trusted(tmp_path, marker, capsys, tiny_model_dir):
    folder = tmp_path / "ac"
    _evil(folder / "state_dict.bin", marker, "xp.cfg", {"best_state": {}})
    err = _fails(["import", str(folder), "--base", str(tiny_model_dir), "--out", str(tmp_path / "imp")], capsys)
    assert "state_dict.bin: refused" in err and "--trust-pickle" in err


def test_resume_refuses_a_crafted_checkpoint(tmp_path, marker, tiny_model_dir, tiny_dataset):
    from musiclit.io import UnsafeFileError

    ckpt = _evil(tmp_path / "evil.ckpt", marker, "loops", {"state_dict": {}, "epoch": 0, "global_step": 0})
    with pytest.raises(UnsafeFileError, match=r"evil\.ckpt: refused"):
        tiny_fit(tiny_model_dir, tiny_dataset, tmp_path / "run", "--trainer.max_steps", "1",
                 "--trainer.logger", "false", "--ckpt_path", str(ckpt))  # fmt: skip


def test_checkpoints_are_written_by_the_atomic_checkpoint_io(tmp_path, tiny_model_dir, tiny_dataset):
    from musiclit.train.checkpointing import AtomicCheckpointIO

    cli = tiny_fit(tiny_model_dir, tiny_dataset, tmp_path / "run", "--trainer.max_steps", "1",
                   "--trainer.logger", "false")  # fmt: skip
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    files = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert "last.ckpt" in files and not [f for f in files if f.endswith(".tmp")]


def _tiny_demucs_package() -> dict:
    from demucs.htdemucs import HTDemucs

    kwargs = {"sources": ["drums", "bass", "other", "vocals"], "channels": 8, "depth": 4, "t_layers": 1,
              "segment": 2}  # fmt: skip
    torch.manual_seed(0)
    model = HTDemucs(**kwargs)
    return {"klass": HTDemucs, "args": (), "kwargs": kwargs, "state": model.state_dict()}, model


def test_demucs_files(tmp_path, marker, capsys):
    from musiclit.prep.vocals import VocalsError, load_demucs

    package, model = _tiny_demucs_package()
    good = tmp_path / "tiny.th"
    torch.save(package, good)
    good.chmod(0o644)
    os.chown(good, 12345, -1)  # someone else's file: a plain Demucs package still loads (weights_only)
    loaded = load_demucs(str(good))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert "warning" not in capsys.readouterr().err

    evil = _evil(tmp_path / "evil.th", marker, "state", package)
    os.chown(evil, 12345, -1)  # not the user's own file
    with pytest.raises(VocalsError, match=r"evil\.th: refused.*does not belong to you"):
        load_demucs(str(evil))
    os.chown(evil, os.geteuid(), -1)
    evil.chmod(0o666)  # the user's, but anyone may write it
    with pytest.raises(VocalsError, match=r"evil\.th: refused"):
        load_demucs(str(evil))


def _write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_yaml_tag_cannot_construct_objects(tmp_path, marker, tiny_model_dir, tiny_dataset, capsys):
    cfg = _write_config(tmp_path / "evil.yaml",
                        f"seed_everything: !!python/object/apply:os.system ['touch {marker}']\n")  # fmt: skip
    with pytest.raises(SystemExit):
        tiny_fit(tiny_model_dir, tiny_dataset, tmp_path / "run", "--config", str(cfg), "--trainer.max_steps", "1")
    err = capsys.readouterr().err
    assert "could not determine a constructor" in err and "python/object/apply" in err, err
    # every YAML musiclit parses itself goes through yaml.safe_load
    for path in Path("musiclit").rglob("*.py"):
        text = path.read_text()
        assert "yaml.load(" not in text and "yaml.unsafe_load" not in text and "yaml.full_load" not in text, path


def test_a_config_cannot_name_a_class_outside_the_allow_list(tmp_path, marker, tiny_model_dir, tiny_dataset, capsys):
    cfg = _write_config(
        tmp_path / "evil.yaml",
        f"""
trainer:
  callbacks:
    - class_path: subprocess.Popen
      init_args: {{args: ['touch', '{marker}']}}
""",
    )
    with pytest.raises(SystemExit):
        tiny_fit(tiny_model_dir, tiny_dataset, tmp_path / "run", "--config", str(cfg), "--trainer.max_steps", "1")
    assert "subprocess.Popen" in capsys.readouterr().err


def test_allow_import_lets_a_config_name_the_users_own_class(tmp_path, tiny_model_dir, tiny_dataset, capsys,
                                                               monkeypatch):  # fmt: skip
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from lightning.pytorch.callbacks import Callback\n"
        "class Hello(Callback):\n    def on_train_end(self, trainer, module):\n        print('HELLO-END')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = _write_config(tmp_path / "c.yaml", "trainer:\n  callbacks:\n    - class_path: mypkg.Hello\n")
    args = ["--config", str(cfg), "--trainer.max_steps", "1", "--trainer.logger", "false"]
    with pytest.raises(SystemExit):
        tiny_fit(tiny_model_dir, tiny_dataset, tmp_path / "run", *args)
    assert "mypkg.Hello" in capsys.readouterr().err
    from tiny_run import fit_args

    from musiclit.commands.fit import fit

    assert fit([*fit_args(tiny_model_dir, tiny_dataset, tmp_path / "run2", *args)[1:], "--allow-import", "mypkg"]) == 0
    assert "HELLO-END" in capsys.readouterr().out
    sys.modules.pop("mypkg", None)


SECRETS = {"WANDB_API_KEY": "wandbsecret0123456789abcdef0123456789abcdef", "HF_TOKEN": "hf_SECRETxyzTOKEN42",
           "AWS_SECRET_ACCESS_KEY": "awsSECRETkey99"}  # fmt: skip


@pytest.mark.slow
def test_secrets_in_the_environment_reach_no_file(tmp_path, monkeypatch, tiny_model_dir, tiny_dataset, capsys):
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "run"))
    run = tmp_path / "run"
    logger = ["--trainer.logger", "lightning.pytorch.loggers.WandbLogger",
              "--trainer.logger.init_args.save_dir", str(run), "--trainer.logger.init_args.offline", "true",
              "--trainer.logger.init_args.project", "p", "--trainer.logger.init_args.name", "runNAME7xq"]  # fmt: skip
    tiny_fit(tiny_model_dir, tiny_dataset, run, "--trainer.max_steps", "2", *logger)
    assert main(["generate", "--model", str(tiny_model_dir), "--adapter", str(run / "adapter"), "--prompt", "x",
                 "--seconds", "0.2", "--out", str(tmp_path / "gen")]) == 0  # fmt: skip
    ckpt = next((run / "checkpoints").glob("last.ckpt"))
    assert main(["export", str(ckpt), "--format", "merged", "--out", str(tmp_path / "exp")]) == 0
    import wandb

    wandb.finish()  # the run's files are complete once it ends (at exit in a `fit` process of its own)
    out = capsys.readouterr()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 10 and any("wandb" in str(p) for p in files)
    # the oracle: a value given in the config does reach the saved config and the W&B run files
    assert any(b"runNAME7xq" in p.read_bytes() for p in files if "wandb" in str(p))
    assert any(b"runNAME7xq" in p.read_bytes() for p in files if p.name == "config.yaml")
    for value in SECRETS.values():
        assert value not in out.out + out.err
        for path in files:
            assert value.encode() not in path.read_bytes(), f"{value[:6]}... leaked into {path}"
