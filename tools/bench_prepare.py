"""Benchmark ``prepare`` without vocal removal, and print the tempo/key accuracy table.

    python tools/bench_prepare.py                 # 12 synthesized 3-minute songs, workers = cores
    python tools/bench_prepare.py --songs 20 --seconds 240 --workers 2
    python tools/bench_prepare.py --accuracy      # tempo/key/kept on the real-music dev set and the synthesized set
    python tools/bench_prepare.py --accuracy --checkset ../checkset   # and on the check set (build_checkset.py)

Accuracy: the real-music development set (``$MUSICLIT_REALMUSIC``, ``--realmusic`` or
``../shared/realmusic-dev``) is prepared with default settings and prepare's labels are printed beside
Essentia's raw baseline (the set's ``baseline_essentia.json``); then the synthesized accuracy set; then
how the tempo score of both sets moves with the two constants of the metrical-level rule. With
``--checkset`` (or ``$MUSICLIT_CHECKSET``), the same table for the check set of ``tools/build_checkset.py``:
28 movements the rules were not designed on.

Speed is x-realtime: seconds of source audio per wall-clock second for the whole command (decode +
filter + label + chunk + write, process-pool start included), in total and per core (worker). The
songs are 44.1 kHz stereo WAV and FLAC files synthesized with known tempo and key.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def make_songs(folder: Path, n: int, seconds: float) -> float:
    """Write ``n`` synthesized songs (alternating WAV / FLAC, 44.1 kHz stereo); returns total seconds."""
    from prep_audio import SongSpec, synth_song, write

    total = 0.0
    for i in range(n):
        spec = SongSpec(
            bpm=70 + (i * 37) % 100,
            tonic=(i * 5) % 12,
            scale="minor" if i % 2 else "major",
            duration=seconds,
            seed=1000 + i,
        )
        audio = synth_song(spec, 44100, 2)
        fmt = "FLAC" if i % 2 else "WAV"
        write(folder / f"song_{i:03d}.{fmt.lower()}", audio, 44100, fmt, subtype="PCM_16")
        total += audio.shape[1] / 44100
    return total


def bench(songs: int, seconds: float, workers: int, keep: Path | None) -> None:
    """Run prepare on synthesized songs and print the throughput."""
    from musiclit.prep.config import PrepareConfig
    from musiclit.prep.pipeline import run_prepare

    tmp = Path(tempfile.mkdtemp(prefix="musiclit-bench-"))
    try:
        src, out = tmp / "songs", (keep or tmp / "dataset")
        src.mkdir()
        t = time.perf_counter()
        audio_s = make_songs(src, songs, seconds)
        print(f"synthesized {songs} songs, {audio_s / 60:.1f} min of audio in {time.perf_counter() - t:.1f} s")
        shutil.rmtree(out, ignore_errors=True)
        cfg = PrepareConfig(input=src, output=out, workers=workers, progress=False)
        t = time.perf_counter()
        report = run_prepare(cfg, log=lambda _m: None)
        wall = time.perf_counter() - t
        total_x = audio_s / wall
        cores = max(1, workers)
        ws = report["timing"]["worker_seconds"]
        print(f"prepare (no vocal removal), {workers} worker(s) on {os.cpu_count()} cores: {wall:.1f} s wall")
        print(f"  x-realtime total: {total_x:.0f}x   per core: {total_x / cores:.0f}x")
        print(f"  songs used {report['songs_used']}/{songs}, clips {report['clips_out']}")
        busy = ws["total"] or 1e-9
        print(
            "  worker time by step: "
            + ", ".join(f"{k} {v:.1f} s ({v / busy:.0%})" for k, v in ws.items() if k != "total")
        )
        t = time.perf_counter()
        run_prepare(cfg, log=lambda _m: None)
        print(f"  re-run (everything cached): {time.perf_counter() - t:.2f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def accuracy(duration: float, workers: int, realmusic: Path | None, checkset: Path | None = None) -> None:
    """Print the accuracy tables: real-music dev set (when found), check set (when given), synthesized set,
    rule sensitivity."""
    from prep_audio import accuracy_specs
    from prep_realmusic import format_realmusic_table, load_baseline, load_labels, prepare_and_read_labels
    from prep_realmusic import realmusic_root as find_root
    from test_prep_units import accuracy_rows, format_accuracy

    root = realmusic or find_root()
    real: list[dict] = []
    if root is None:
        print("real-music dev set not found: set MUSICLIT_REALMUSIC or pass --realmusic (skipped)\n")
    else:
        files = load_labels(root)
        t = time.perf_counter()
        real, _report = prepare_and_read_labels(files, workers)
        wall = time.perf_counter() - t
        alone, _ = prepare_and_read_labels(files, workers, tempo_markings=False)
        audio = sum(f["duration_s"] for f in files)
        print(f"real music: {root} ({len(files)} files, {audio / 60:.1f} min), prepare with default settings")
        print(format_realmusic_table(real, load_baseline(root), alone))
        print(f"(prepare took {wall:.1f} s with {workers} workers: {audio / wall:.0f}x realtime)\n")
    checkset = checkset or (Path(os.environ["MUSICLIT_CHECKSET"]) if os.environ.get("MUSICLIT_CHECKSET") else None)
    if checkset is not None:
        files = load_labels(checkset)
        rows, _ = prepare_and_read_labels(files, workers)
        alone, _ = prepare_and_read_labels(files, workers, tempo_markings=False)
        print(f"check set: {checkset} ({len(files)} movements the rules were not designed on), default settings")
        print(format_realmusic_table(rows, {}, alone) + "\n")
    synth = accuracy_rows(accuracy_specs(duration))
    print(f"synthesized songs ({duration:g} s each)")
    print(format_accuracy(synth) + "\n")
    print(sensitivity(real, synth))


def sensitivity(real: list[dict], synth: list[dict]) -> str:
    """Tempo score of both sets when the metrical-level rule's constants change (measured ratios reused)."""
    from pathlib import PurePosixPath

    from musiclit.prep.labels import (
        MARKING_WEIGHT,
        MAX_HALVING_RATIO,
        TYPICAL_BPM,
        apply_marking,
        metrical_decision,
        tempo_marking,
    )

    def score(rows: list[dict], key: str, typical: float, cap: float, weight: float = MARKING_WEIGHT) -> int:
        ok = 0
        for r in rows:
            raw = r["raw_bpm"]
            if not raw or r.get("alternation") is None:
                continue
            octave, margin = metrical_decision(raw, r["alternation"], r["offbeat"], 40, 220, typical, cap)
            marking = tempo_marking(PurePosixPath(r["rel"]).stem) if r.get("rel") else None
            if marking is not None:
                marked = apply_marking(raw, octave, margin, r["alternation"], r["offbeat"], marking, 40, 220, weight)
                octave = marked[0] if marked else octave
            bpm = {"halved": raw / 2, "doubled": raw * 2}.get(octave, raw)
            ok += abs(bpm / r[key] - 1) <= 0.04
        return ok

    lines = [
        "tempo within 4 % when the rule's constants change (dev set / synthesized set); "
        f"in use: TYPICAL_BPM {TYPICAL_BPM:g}, MAX_HALVING_RATIO {MAX_HALVING_RATIO:g}, "
        f"MARKING_WEIGHT {MARKING_WEIGHT:g}",
        f"{'TYPICAL_BPM':>11} | " + " | ".join(f"cap {c:g}".center(13) for c in (0.5, 0.6, 0.7)),
    ]
    for typical in (70.0, 77.0, 83.0, 90.0, 100.0, 110.0):
        cells = []
        for cap in (0.5, 0.6, 0.7):
            dev = f"{score(real, 'ref_bpm', typical, cap)}/{len(real)}" if real else "-"
            cells.append(f"{dev} / {score(synth, 'bpm', typical, cap)}/{len(synth)}".center(13))
        lines.append(f"{typical:>11g} | " + " | ".join(cells))
    if real:
        weights = (0.0, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 100.0)
        cells = [f"{w:g}: {score(real, 'ref_bpm', TYPICAL_BPM, MAX_HALVING_RATIO, w)}" for w in weights]
        lines.append(f"dev set when MARKING_WEIGHT changes (octaves; 100 = a marking always wins): {', '.join(cells)}")
    return "\n".join(lines)


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--songs", type=int, default=12, help="number of synthesized songs (default %(default)s)")
    p.add_argument("--seconds", type=float, default=180.0, help="length of each song in seconds (default %(default)s)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: cores)")
    p.add_argument("--keep", type=Path, default=None, help="write the dataset here instead of a temporary folder")
    p.add_argument("--accuracy", action="store_true", help="print the tempo/key/kept accuracy tables instead")
    p.add_argument("--accuracy-seconds", type=float, default=30.0, help="song length of the synthesized accuracy set")
    p.add_argument("--realmusic", type=Path, default=None, help="the real-music dev set folder (with labels.json)")
    p.add_argument(
        "--checkset", type=Path, default=None, help="the check set folder of tools/build_checkset.py (with labels.json)"
    )
    args = p.parse_args()
    if args.accuracy:
        accuracy(args.accuracy_seconds, args.workers, args.realmusic, args.checkset)
    else:
        bench(args.songs, args.seconds, args.workers, args.keep)


if __name__ == "__main__":
    main()
