"""What a run folder holds, as the evaluation and the report read it: config, logs, checkpoints, samples.

A run folder is ``trainer.default_root_dir`` of ``fit`` (see :mod:`musiclit.train.cli`)::

    <run>/checkpoints/last.ckpt, step-*.ckpt, best-*.ckpt   (best-*: with early stopping)
    <run>/adapter/                                          the final peft adapter
    <run>/logs/version_N/config.yaml, metrics.csv           every start of fit (a resume is a new version)
    <run>/samples/base/..., samples/step_NNNNNNN/...        in-training samples
    <run>/eval/eval.json, eval/samples/...                  written by ``evaluate``
    <run>/report/index.html                                 written by ``report``
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from musiclit.errors import MusiclitError


class RunError(MusiclitError, ValueError):
    """A run folder, adapter or checkpoint that cannot be evaluated; the message names it and says why."""


def _versions(folder: Path) -> list[Path]:
    found = [p for p in folder.glob("version_*") if p.is_dir() and re.fullmatch(r"version_\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def find_run_dir(path: str | Path) -> Path | None:
    """The run folder of ``path``: itself when it is one, or the folder holding an adapter/checkpoint."""
    p = Path(path).expanduser().resolve()
    for candidate in (p, p.parent, p.parent.parent):
        if (candidate / "logs").is_dir() or (candidate / "checkpoints").is_dir():
            return candidate
    return None


def read_config(run: Path) -> dict[str, Any]:
    """The resolved config of the run's latest start (``logs/version_N/config.yaml``), or {} when there is none."""
    import yaml

    for version in reversed(_versions(run / "logs")):
        path = version / "config.yaml"
        if path.is_file():
            try:
                return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as err:
                raise RunError(f"{path}: cannot read the run's config ({err})") from None
    return {}


def config_path(run: Path) -> Path | None:
    """The latest ``config.yaml`` of the run."""
    for version in reversed(_versions(run / "logs")):
        if (version / "config.yaml").is_file():
            return version / "config.yaml"
    return None


@dataclass
class Metrics:
    """The run's logged scalars, merged over every start (a later start wins for a step it logged again).

    Steps are optimiser steps completed, as in checkpoint names (``step-0000040.ckpt`` holds the weights after
    40 steps, and the validation run right after them is logged at step 40). Lightning's CSV stores that
    number minus one (its 0-based index of the step); :func:`read_metrics` adds the one back.

    Attributes:
        rows: ``{metric name: {step: value}}``.
    """

    rows: dict[str, dict[int, float]] = field(default_factory=dict)

    def series(self, name: str) -> tuple[list[int], list[float]]:
        """Steps and values of one metric, in step order."""
        points = sorted(self.rows.get(name, {}).items())
        return [s for s, _ in points], [v for _, v in points]

    def names(self, prefix: str = "") -> list[str]:
        """Metric names starting with ``prefix``, sorted."""
        return sorted(n for n in self.rows if n.startswith(prefix))

    def best(self, name: str = "val/loss") -> tuple[int, float] | None:
        """(step, value) of the lowest value of ``name`` (the earliest on ties), or None."""
        points = [(v, s) for s, v in self.rows.get(name, {}).items() if math.isfinite(v)]
        if not points:
            return None
        value, step = min(points)
        return step, value


def read_metrics(run: Path) -> Metrics:
    """Read every ``logs/version_*/metrics.csv`` of the run (the CSV logger's output)."""
    metrics = Metrics()
    for version in _versions(run / "logs"):
        path = version / "metrics.csv"
        if not path.is_file():
            continue
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                try:
                    step = int(float(row.get("step") or "nan")) + 1
                except ValueError:
                    continue
                for name, text in row.items():
                    if name in ("step", "epoch") or not text:
                        continue
                    try:
                        metrics.rows.setdefault(name, {})[step] = float(text)
                    except ValueError:
                        continue
    return metrics


def checkpoint_step(path: Path) -> int | None:
    """The step number in a checkpoint file name (``step-0000160.ckpt``, ``best-0000080.ckpt``)."""
    m = re.search(r"(\d+)\.ckpt$", path.name)
    return int(m.group(1)) if m else None


@dataclass
class RunInfo:
    """A run folder, or an adapter/checkpoint outside one, resolved for evaluation.

    Attributes:
        run: The run folder (None for an adapter outside a run).
        target: The adapter folder or checkpoint file to evaluate.
        config: The resolved config of the run's latest start ({} when unknown).
        data_dir: The dataset folder (from ``--data`` or the config).
        best: ``(step, val loss, checkpoint path or None)`` of the lowest validation loss, or None.
    """

    run: Path | None
    target: Path
    config: dict[str, Any]
    data_dir: Path | None
    best: tuple[int, float, Path | None] | None = None

    def data_option(self, name: str, default: Any) -> Any:
        """A ``data.<name>`` value of the run's config (``default`` when absent or null)."""
        value = (self.config.get("data") or {}).get(name)
        return default if value is None else value


def _resolve_path(text: str, bases: list[Path]) -> Path | None:
    p = Path(text).expanduser()
    if p.is_absolute():
        return p if p.exists() else None
    for base in [Path.cwd(), *bases]:
        if (base / p).exists():
            return (base / p).resolve()
    return None


def best_checkpoint(run: Path, metrics: Metrics | None = None) -> tuple[int, float, Path | None] | None:
    """The step with the lowest validation loss and its checkpoint file, if one was kept.

    With early stopping the run keeps ``best-NNNNNNN.ckpt`` (the best so far, saved right after each
    validation); else a ``step-NNNNNNN.ckpt`` of that step may happen to exist.
    """
    metrics = metrics or read_metrics(run)
    best = metrics.best("val/loss")
    if best is None:
        return None
    step, value = best
    folder = run / "checkpoints"
    kept = sorted(folder.glob("best-*.ckpt"), key=lambda p: checkpoint_step(p) or -1)
    if kept:  # what early stopping kept is the truth (on a tie it keeps the later step)
        kept_step = checkpoint_step(kept[-1])
        if kept_step is not None:
            return kept_step, metrics.rows["val/loss"].get(kept_step, value), kept[-1]
    if (folder / f"step-{step:07d}.ckpt").is_file():
        return step, value, folder / f"step-{step:07d}.ckpt"
    return step, value, None


def resolve_run(path: str | Path, data_dir: str | Path | None = None, which: str = "final") -> RunInfo:
    """Resolve RUN_OR_ADAPTER for ``evaluate``.

    Args:
        path: A run folder, an adapter folder (``adapter_config.json``) or a musiclit ``.ckpt``.
        data_dir: The dataset folder (default: the run config's ``data.data_dir``).
        which: For a run folder: "final" (the adapter written at the end, else ``last.ckpt``), "best" (the
            checkpoint of the lowest validation loss; needs early stopping or a kept step checkpoint), or
            "last" (``checkpoints/last.ckpt``).

    Raises:
        RunError: Nothing to evaluate at ``path``, or no dataset.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise RunError(f"{p}: no such run folder, adapter folder or checkpoint")
    run = find_run_dir(p)
    if p.is_dir() and not (p / "adapter_config.json").is_file():
        if run is None or run != p.resolve():
            raise RunError(f"{p}: not a run folder (no logs/ or checkpoints/), adapter folder or checkpoint")
        metrics = read_metrics(run)
        best = best_checkpoint(run, metrics)
        if which == "best":
            if best is None or best[2] is None:
                raise RunError(f"{run}: no checkpoint of the best validation loss was kept (enable early stopping)")
            target = best[2]
        elif which == "last" or not (run / "adapter" / "adapter_config.json").is_file():
            target = run / "checkpoints" / "last.ckpt"
            if not target.is_file():
                raise RunError(f"{run}: no adapter/ and no checkpoints/last.ckpt to evaluate")
        else:
            target = run / "adapter"
    else:
        target = p.resolve()
        best = best_checkpoint(run) if run is not None else None
    config = read_config(run) if run is not None else {}
    data = None
    bases = [run, *run.parents][:4] if run is not None else []
    if data_dir is not None:
        data = Path(data_dir).expanduser().resolve()
        if not data.is_dir():
            raise RunError(f"--data {data_dir}: no such folder")
    elif (config.get("data") or {}).get("data_dir"):
        data = _resolve_path(str(config["data"]["data_dir"]), bases)
        if data is None:
            raise RunError(
                f"the run's dataset {config['data']['data_dir']} was not found (relative to the current folder or "
                f"the run folder); give --data DIR"
            )
    return RunInfo(run.resolve() if run is not None else None, target, config, data, best)


def sample_steps(run: Path) -> list[tuple[str, Path]]:
    """In-training sample folders in order: ``("base", samples/base)`` first, then ``("step N", samples/step_N)``."""
    folder = run / "samples"
    out: list[tuple[str, Path]] = []
    if (folder / "base").is_dir():
        out.append(("base", folder / "base"))
    steps = sorted((p for p in folder.glob("step_*") if p.is_dir()), key=lambda p: p.name)
    out += [(f"step {int(p.name.split('_')[1])}", p) for p in steps if p.name.split("_")[1].isdigit()]
    return out
