"""The command line: help, errors, and every shipped YAML parsed against the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from musiclit.train.cli import build_cli

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
CLOUD = sorted((ROOT / "configs" / "cloud").glob("*.yaml"))


def _run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "musiclit", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)  # fmt: skip


def test_help_lists_every_verb():
    out = _run("--help")
    assert out.returncode == 0
    for verb in ("prepare", "fit", "generate", "export", "demo"):
        assert verb in out.stdout


HEAVY = ("torch", "lightning", "transformers", "peft", "essentia", "demucs", "soundfile", "numpy")


def test_help_of_every_verb_imports_no_heavy_library():
    """`--help` stays fast: the verb table and every verb's parser import no ML or audio library."""
    from musiclit.__main__ import VERBS

    verbs = [v for v in VERBS if v not in ("fit", "validate")]  # LightningCLI builds its help from the classes
    code = (
        "import sys, io, contextlib\n"
        "from musiclit.__main__ import main\n"
        f"for verb in {verbs!r} + [None]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main([verb, '--help'] if verb else ['--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_unknown_verb_is_an_error():
    out = _run("frobnicate")
    assert out.returncode == 2 and "unknown verb 'frobnicate'" in out.stderr


def test_fit_help_documents_module_and_data_options():
    out = _run("fit", "--help")
    assert out.returncode == 0, out.stderr
    for option in ("--model.pretrained", "--model.lora", "--model.cfg_dropout", "--data.data_dir",
                   "--data.segment_duration", "--checkpoint.every_n_train_steps", "--ckpt_path"):  # fmt: skip
        assert option in out.stdout, option


def _layers(config: str) -> list[str]:
    """The README's layering: base.yaml under every model config; a cloud overlay over base + medium LoRA."""
    if config == "demo.yaml":
        return []
    if config.startswith("cloud/"):
        model = "musicgen-medium-full.yaml" if "fsdp" in config else "musicgen-medium-lora.yaml"
        return ["--config", str(ROOT / "configs" / "base.yaml"), "--config", str(ROOT / "configs" / model)]
    return ["--config", str(ROOT / "configs" / "base.yaml")]


@pytest.mark.parametrize(
    "config", [c.name for c in CONFIGS if c.name != "base.yaml"] + [f"cloud/{c.name}" for c in CLOUD]
)
def test_every_shipped_config_parses(config, capsys, tmp_path):
    """base.yaml + each model config (as the README layers them) parse against the code's signatures."""
    args = ["fit", *_layers(config), "--config", str(ROOT / "configs" / config), "--data.data_dir", str(tmp_path),
            "--print_config"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        build_cli(args)
    assert exit_info.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    source = yaml.safe_load((ROOT / "configs" / config).read_text())
    for key, value in source.items():
        if not isinstance(value, dict):
            assert resolved[key] == value, key
    for section in ("model", "data", "trainer"):
        for key, value in (source.get(section) or {}).items():
            if isinstance(value, dict) and "class_path" not in value:
                for sub, subval in value.items():
                    assert resolved[section][key][sub] == subval, f"{section}.{key}.{sub}"
            elif not isinstance(value, dict):
                assert resolved[section][key] == value, f"{section}.{key}"


def test_a_typo_in_a_config_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  lora:\n    rank: 8\n")
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "--config", str(bad), "--data.data_dir", str(tmp_path), "--print_config"])
    assert exit_info.value.code == 2


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, tiny_model_dir):
    out = _run("fit", "--model.pretrained", str(tiny_model_dir), "--data.data_dir", str(tmp_path),
               "--trainer.default_root_dir", str(tmp_path / "run"), "--ckpt_path", "last")  # fmt: skip
    assert out.returncode != 0
    assert "no checkpoint at" in out.stderr and "last.ckpt" in out.stderr


def test_user_errors_are_one_clear_line_not_a_traceback(tmp_path, tiny_model_dir):
    out = _run("fit", "--model.pretrained", str(tiny_model_dir), "--data.data_dir", str(tmp_path / "missing"),
               "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path / "run"))  # fmt: skip
    assert out.returncode == 2
    assert f"musiclit fit: error: {tmp_path / 'missing'}: dataset folder not found" in out.stderr
    assert "Traceback" not in out.stderr
    (tmp_path / "song.wav").write_bytes(b"")  # a data folder that passes the check made before any model load
    out = _run("fit", "--model.pretrained", str(tmp_path / "no-model"), "--data.data_dir", str(tmp_path))
    assert out.returncode == 2 and "no-model: no such model folder or config file" in out.stderr
