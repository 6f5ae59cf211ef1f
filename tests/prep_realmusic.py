"""Real music with ground truth for the ``prepare`` tests and ``tools/bench_prepare.py --accuracy``.

* The full development set (16 real compositions, see its README) lives outside the repository: it is
  found at ``$MUSICLIT_REALMUSIC`` or at ``../shared/realmusic-dev`` beside the repository; tests that
  need it skip when it is absent.
* Three of its files are vendored in ``tests/data/realmusic`` (unchanged, with their labels) so that
  CI always runs ``prepare`` on real music.

Accuracy is measured on what ``prepare`` itself writes: the folder is prepared with default settings
and the labels are read back from each song's resume state.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENDORED = REPO / "tests" / "data" / "realmusic"
TOLERANCE = 0.04  # a tempo counts as exact within 4 % of the labelled beat (the dev set's convention)
LEVELS = ((2.0, "x2"), (0.5, "x0.5"), (3.0, "x3"), (1 / 3, "x1/3"), (1.5, "x1.5"), (2 / 3, "x2/3"))


def realmusic_root() -> Path | None:
    """The full development set: ``$MUSICLIT_REALMUSIC`` or ``../shared/realmusic-dev``; None when absent."""
    env = os.environ.get("MUSICLIT_REALMUSIC")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared" / "realmusic-dev"]:
        if (candidate / "labels.json").is_file():
            return candidate
    return None


def load_labels(root: Path) -> list[dict]:
    """The ``files`` entries of a set's labels.json, each with ``abspath`` added."""
    files = json.loads((root / "labels.json").read_text(encoding="utf-8"))["files"]
    for f in files:
        f["abspath"] = root / f["path"]
    return files


def load_baseline(root: Path) -> dict[str, dict]:
    """Essentia's raw baseline of the set (``baseline_essentia.json``) by file id; {} when absent."""
    path = root / "baseline_essentia.json"
    if not path.is_file():
        return {}
    return {f["id"]: f for f in json.loads(path.read_text(encoding="utf-8"))["files"]}


def tempo_verdict(bpm: float | None, ref: float) -> str:
    """ "exact" within 4 % of the labelled beat, else the metrical level it is at ("x2", "x1/3"...), or "wrong"."""
    if not bpm:
        return "none"
    for factor, name in ((1.0, "exact"), *LEVELS):
        if abs(bpm / (ref * factor) - 1) <= TOLERANCE:
            return name
    return "wrong"


def prepare_and_read_labels(
    files: list[dict], workers: int = 2, output: Path | None = None, tempo_markings: bool = True
) -> tuple[list[dict], dict]:
    """Run ``prepare`` (default settings) on the folder of ``files`` and return one row per file.

    Args:
        files: Entries of :func:`load_labels` (all in one folder tree).
        workers: Worker processes.
        output: Dataset folder (default: a temporary folder, deleted afterwards).
        tempo_markings: False = ``--no-tempo-markings`` (the tempo level from the audio alone).

    Returns:
        ``(rows, report)``; a row holds the truth, prepare's labels and whether the song was kept.
    """
    import shutil

    from musiclit.prep.config import PrepareConfig
    from musiclit.prep.pipeline import StateStore, run_prepare

    base = Path(os.path.commonpath([str(Path(f["abspath"]).parent) for f in files]))
    tmp = None
    if output is None:
        tmp = Path(tempfile.mkdtemp(prefix="musiclit-realmusic-"))
        output = tmp / "dataset"
    try:
        config = PrepareConfig(
            input=base, output=output, workers=workers, progress=False, tempo_markings=tempo_markings
        )
        report = run_prepare(config, log=lambda _m: None)
        states = {st.get("source"): st for _, st in StateStore(output, read_only=True).all()}
        kept = {c["song"] for c in report["captions"]}
        clips = {c["song"]: 0 for c in report["captions"]}
        for st in states.values():
            if st.get("source") in clips:
                clips[st["source"]] = len(st.get("clips") or [])
        rows = []
        for f in files:
            rel = Path(f["abspath"]).relative_to(base).as_posix()
            st = states.get(rel, {})
            analysis = st.get("analysis") or {}
            lab = analysis.get("labels", {})
            meas = analysis.get("measurements", {})
            rows.append(
                {
                    "id": f["id"],
                    "rel": rel,
                    "ref_bpm": f["bpm"],
                    "ref_key": f["key"],
                    "raw_bpm": lab.get("bpm_raw"),
                    "bpm": lab.get("bpm"),
                    "octave": lab.get("bpm_octave"),
                    "marking": lab.get("bpm_marking"),
                    "level_from": lab.get("bpm_level_from"),
                    "alternation": lab.get("bpm_alternation"),
                    "offbeat": lab.get("bpm_offbeat"),
                    "confidence": lab.get("bpm_confidence"),
                    "key": lab.get("key"),
                    "kept": rel in kept,
                    "clips": clips.get(rel, 0),
                    "bandwidth": meas.get("bandwidth"),
                    "cutoff": meas.get("cutoff"),
                    "raw_verdict": tempo_verdict(lab.get("bpm_raw"), f["bpm"]),
                    "verdict": tempo_verdict(lab.get("bpm"), f["bpm"]),
                    "key_ok": lab.get("key") == f["key"],
                }
            )
        return rows, report
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def format_realmusic_table(rows: list[dict], baseline: dict[str, dict], audio_only: list[dict] | None = None) -> str:
    """The dev-set table of ``tools/bench_prepare.py --accuracy``: prepare's labels beside Essentia's raw baseline.

    ``level`` says what chose the metrical level: the accents, or a tempo marking in the file name (the word).
    ``audio_only`` (rows of a ``--no-tempo-markings`` run) adds that run's tempo and verdict.
    """
    alone = {r["id"]: r for r in audio_only or []}
    head = (
        f"{'file':<34} {'ref bpm':>7} | {'RE2013':>6} {'verdict':<7} | {'raw':>6} {'bpm':>6} {'octave':<7} "
        f"{'level':<8} {'conf':>4} {'verdict':<7} | "
        + (f"{'no-mark':>7} {'verdict':<7} | " if alone else "")
        + f"{'ref key':<9} {'bgate':<9} {'key':<9} | kept"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        b = baseline.get(r["id"], {})
        re_bpm = b.get("rhythmextractor2013_bpm")
        level = r.get("marking") if r.get("level_from") == "marking" else "accents"
        a = alone.get(r["id"])
        lines.append(
            f"{r['id'][:34]:<34} {r['ref_bpm']:>7.0f} | "
            f"{(f'{re_bpm:.1f}' if re_bpm else '-'):>6} {tempo_verdict(re_bpm, r['ref_bpm']) if re_bpm else '-':<7} | "
            f"{r['raw_bpm'] or 0:>6.1f} {r['bpm'] or 0:>6.1f} {r['octave'] or '-':<7} {level:<8} "
            f"{r['confidence'] or 0:>4.2f} {r['verdict']:<7} | "
            + (f"{a['bpm'] or 0:>7.1f} {a['verdict']:<7} | " if a else ("-" * 7 + " " * 9 + "| " if alone else ""))
            + f"{r['ref_key']:<9} {b.get('key_bgate', '-'):<9} "
            f"{(r['key'] or '-') + ('' if r['key_ok'] else '!'):<9} | {'yes' if r['kept'] else 'NO'}"
        )
    n = len(rows)
    exact = sum(r["verdict"] == "exact" for r in rows)
    raw_exact = sum(r["raw_verdict"] == "exact" for r in rows)
    broken = [r["id"] for r in rows if r["raw_verdict"] == "exact" and r["verdict"] != "exact"]
    lines.append("-" * len(head))
    lines.append(
        f"prepare: tempo within 4 %: {exact}/{n} (its raw beat-tracker estimate: {raw_exact}/{n}; right raw "
        f"estimates broken by the level choice: {len(broken)}{' ' + ', '.join(broken) if broken else ''}); "
        f"key exact: {sum(r['key_ok'] for r in rows)}/{n}; "
        f"kept with default settings: {sum(r['kept'] for r in rows)}/{n}"
    )
    if alone:
        marked = [r["id"] for r in rows if r.get("level_from") == "marking"]
        lines.append(
            f"the audio alone (--no-tempo-markings): tempo within 4 %: "
            f"{sum(a['verdict'] == 'exact' for a in alone.values())}/{len(alone)}; the level was set by a tempo "
            f"marking in the file name for {len(marked)}{': ' + ', '.join(marked) if marked else ''}"
        )
    if baseline:
        b_re = sum(tempo_verdict(b.get("rhythmextractor2013_bpm"), b["ref_bpm"]) == "exact" for b in baseline.values())
        b_pe = sum(tempo_verdict(b.get("percival_bpm"), b["ref_bpm"]) == "exact" for b in baseline.values())
        b_key = sum(b.get("key_bgate") == b.get("ref_key") for b in baseline.values())
        lines.append(
            "Essentia raw baseline (44.1 kHz, the set's baseline_essentia.json): "
            f"RhythmExtractor2013 {b_re}/{len(baseline)}, "
            f"PercivalBpmEstimator {b_pe}/{len(baseline)}; KeyExtractor bgate {b_key}/{len(baseline)}"
        )
    return "\n".join(lines)
