"""The ``prepare`` pipeline: scan -> decode + measure + label (parallel) -> filter + dedupe -> clips ->
captions -> split -> manifest + report.

Resume state lives in ``<output>/.musiclit-prepare/``: one JSON per song keyed by the SHA-256 of its
content, holding the analysis (with the settings key it was made with) and the clips written (with the
audio settings key). A re-run reuses whatever still matches the current settings.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from musiclit.data.audio import AudioError
from musiclit.data.caption import Caption, CaptionError
from musiclit.data.manifest import MANIFEST_NAME, ClipEntry, read_manifest, split_by_song, write_manifest
from musiclit.errors import MusiclitError
from musiclit.io import atomic_write_json, atomic_write_text
from musiclit.prep.captions import check_template, song_caption
from musiclit.prep.config import PrepareConfig, QualityThresholds
from musiclit.prep.scan import HashCache, Skip, SourceSong, scan_input, song_id_for

STATE_DIR = ".musiclit-prepare"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
LOSSLESS_FORMATS = ("WAV", "WAVEX", "FLAC", "AIFF", "W64", "RF64", "CAF")


class PrepareError(MusiclitError, RuntimeError):
    """``prepare`` cannot run at all (bad folders or settings); the message says why."""


@dataclass
class SongTask:
    """Work for one song, sent to a worker process.

    Attributes:
        path: Absolute path of the song.
        rel: Path relative to the input folder.
        sha: Content hash.
        song_id: Song id.
        analyze: Run the analysis (decode, measure, fingerprint, label).
        analysis: Cached analysis when ``analyze`` is False.
        write_clips: Write the clips when the song passes the per-song quality filter.
        output: Output folder.
        config: Settings.
    """

    path: str
    rel: str
    sha: str
    song_id: str
    analyze: bool
    analysis: dict | None
    write_clips: bool
    output: str
    config: PrepareConfig


# ---------------------------------------------------------------------- worker side
def process_song(task: SongTask) -> dict:
    """Analyse and/or chunk one song (runs in a worker process).

    Returns:
        ``{"sha", "analysis", "clips", "error", "timing"}``; ``error`` is a message when the file
        could not be decoded.
    """
    from musiclit.prep import chunk, labels, quality

    cfg = task.config
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    spill = None if cfg.dry_run else Path(task.output) / STATE_DIR / "tmp"
    try:
        meas, buf = quality.decode_and_measure(
            Path(task.path), cfg.sample_rate, cfg.channels, cfg.quality.silence_db, spill_dir=spill
        )
    except AudioError as err:
        return {"sha": task.sha, "analysis": None, "clips": None, "error": str(err), "timing": timing}
    except Exception as err:  # anything else a broken file can raise: report it, keep going
        return {"sha": task.sha, "analysis": None, "clips": None, "error": f"{task.path}: {err}", "timing": timing}
    timing["decode"] = time.perf_counter() - t0
    try:
        analysis = task.analysis
        if task.analyze:
            analysis = {"measurements": asdict(meas), "labels": {}, "fingerprint": ""}
            t = time.perf_counter()
            # one resampled excerpt serves the labels and, when it starts at 0, the fingerprint
            excerpt = quality.mono_excerpt(buf, cfg.sample_rate, cfg.analysis_rate, cfg.analysis_max_duration, "middle")
            if cfg.quality.check_duplicates:
                if excerpt[1] == 0.0:
                    head = excerpt[0][: int(quality.FP_SECONDS * cfg.analysis_rate)]
                else:
                    head, _ = quality.mono_excerpt(buf, cfg.sample_rate, cfg.analysis_rate, quality.FP_SECONDS, "start")
                analysis["fingerprint"] = quality.encode_fingerprint(quality.fingerprint(head, cfg.analysis_rate))
            timing["fingerprint"] = time.perf_counter() - t
            verdict = quality_verdict(analysis, cfg.quality, cfg.sample_rate) if cfg.filter else None
            if verdict is None or not cfg.filter:
                t = time.perf_counter()
                try:
                    analysis["labels"] = _label(task, buf, excerpt, labels, quality)
                except Exception as err:  # an analysis failure costs this song its labels, not the run
                    analysis["labels"] = {"label_error": f"{task.rel}: labels failed ({type(err).__name__}: {err})"}
                timing["labels"] = time.perf_counter() - t
        clips = None
        if (
            task.write_clips
            and analysis is not None
            and (not cfg.filter or quality_verdict(analysis, cfg.quality, cfg.sample_rate) is None)
        ):
            t = time.perf_counter()
            clips = _write_song_clips(buf, Path(task.output), task.song_id, analysis, cfg, chunk)
            timing["chunk"] = time.perf_counter() - t
    finally:
        buf.close()
    timing["total"] = time.perf_counter() - t0
    return {"sha": task.sha, "analysis": analysis, "clips": clips, "error": None, "timing": timing}


def _label(task: SongTask, buf: Any, excerpt: tuple, labels: Any, quality: Any) -> dict:
    cfg = task.config
    out: dict[str, Any] = {}
    tags: dict[str, str] = {}
    if cfg.read_tags:
        tags = labels.read_tags(Path(task.path))
        out.update({k: v for k, v in tags.items() if k in ("title", "artist", "album")})
        if tags.get("genre"):
            out["tag_genre"] = tags["genre"]
    if not cfg.labels:
        return out
    x, offset = excerpt
    if x.size < 4 * cfg.analysis_rate:
        return out
    marking = labels.tempo_marking(tags.get("title"), Path(task.path).stem) if cfg.tempo_markings else None
    tempo = labels.estimate_tempo(x, cfg.analysis_rate, cfg.min_bpm, cfg.max_bpm, marking)
    period = 60.0 / tempo.bpm if tempo.bpm > 0 else None
    out.update(
        bpm=tempo.bpm,
        bpm_confidence=tempo.confidence,
        bpm_raw=tempo.raw_bpm,
        bpm_second=tempo.second_bpm,
        bpm_octave=tempo.octave,
        bpm_alternation=tempo.alternation,
        bpm_offbeat=tempo.offbeat,
        bpm_marking=tempo.marking or None,
        bpm_level_from=tempo.level_from,
        beat_period=period,
        first_beat=((offset + tempo.first_beat) % period) if period else None,
    )
    out["key"], out["key_strength"] = labels.estimate_key(x, cfg.analysis_rate, cfg.key_profile)
    out["loudness"] = labels.estimate_loudness(x, cfg.analysis_rate)
    if cfg.tf_models:
        models, _message = labels.TFModels.find(cfg.tf_models)
        if models is not None:
            # one broken model or odd song must not stop the run: the error goes to the report
            try:
                x16, _ = quality.mono_excerpt(buf, cfg.sample_rate, 16000, cfg.analysis_max_duration, "middle")
                predicted, errors = models.predict(x16)
            except Exception as err:
                predicted, errors = {}, [f"embedding model {models.embedding.name}: {err}"]
            out["genres"] = predicted.get("genre", [])
            out["moods"] = predicted.get("mood", [])
            out["instruments"] = predicted.get("instrument", [])
            if errors:
                out["tf_errors"] = errors
    return out


def _write_song_clips(
    source: Any, output: Path, song_id: str, analysis: dict, cfg: PrepareConfig, chunk: Any
) -> list[dict]:
    lab = analysis.get("labels", {})
    plans = chunk.plan_chunks(
        len(source),
        cfg.sample_rate,
        cfg.segment,
        cfg.overlap,
        cfg.min_tail,
        cfg.short_tail,
        beat_period=lab.get("beat_period") if cfg.beat_align else None,
        first_beat=lab.get("first_beat") if cfg.beat_align else None,
    )
    folder = output / "clips" / song_id
    if folder.exists():
        shutil.rmtree(folder)  # stale clips of other settings
    return chunk.write_chunks(source, output, song_id, plans, cfg.sample_rate, cfg.audio_format, cfg.subtype)


# ---------------------------------------------------------------------- quality decisions
def quality_verdict(analysis: dict, q: QualityThresholds, sample_rate: int) -> Skip | None:
    """The first quality threshold a song's measurements cross, as a :class:`Skip` (path filled later).

    Bandwidth: only a brick-wall cut-off (see :func:`musiclit.prep.quality.find_cutoff`) below the
    band the model hears rejects a song; a natural roll-off, however low, does not.

    Args:
        analysis: The song's analysis (its ``measurements``).
        q: Thresholds.
        sample_rate: Sample rate of the clips (what the model hears ends at half of it).
    """
    m = analysis["measurements"]
    from musiclit.prep.quality import bandwidth_threshold

    if m["duration"] < q.min_duration:
        return Skip(
            "",
            "too_short",
            f"duration {m['duration']:.1f} s < minimum {q.min_duration:g} s",
            round(m["duration"], 2),
            q.min_duration,
        )
    if m["silent_fraction"] > q.max_silence:
        return Skip(
            "",
            "silent",
            f"{m['silent_fraction']:.0%} of the song is below {q.silence_db:g} dBFS (maximum {q.max_silence:.0%})",
            round(m["silent_fraction"], 4),
            q.max_silence,
        )
    if m["clipped_fraction"] > q.max_clipping:
        return Skip(
            "",
            "clipping",
            f"{m['clipped_fraction']:.2%} of the samples are clipped (maximum {q.max_clipping:.2%})",
            round(m["clipped_fraction"], 5),
            q.max_clipping,
        )
    cutoff = m.get("cutoff")
    threshold = bandwidth_threshold(q.min_bandwidth, q.min_bandwidth_ratio, m["native_rate"], sample_rate)
    if cutoff is not None and cutoff < threshold:
        return Skip(
            "",
            "low_bandwidth",
            f"brick-wall cut-off at {cutoff / 1000:.1f} kHz (a low-bitrate lossy encode or an upsampled file), "
            f"below {threshold / 1000:.1f} kHz = {q.min_bandwidth_ratio:g} x the "
            f"{min(m['native_rate'], sample_rate) / 2000:g} kHz the model hears at {sample_rate} Hz",
            round(cutoff, 1),
            round(threshold, 1),
        )
    return None


def _preference(song: SourceSong, analysis: dict) -> tuple:
    """Sort key of duplicate copies: the best copy first (lossless, wider band, higher rate, less clipping)."""
    m = analysis["measurements"]
    return (m["format"] not in LOSSLESS_FORMATS, -m["bandwidth"], -m["native_rate"], m["clipped_fraction"], song.rel)


def find_near_duplicates(
    songs: list[SourceSong], analyses: dict[str, dict], threshold: float
) -> dict[str, tuple[SourceSong, float]]:
    """Near duplicates among ``songs`` by fingerprint.

    Songs whose durations differ by less than max(1 s, 2 %) are compared; within a group of copies the
    best copy (:func:`_preference`) is kept.

    Returns:
        sha of each dropped copy -> (kept song, distance).
    """
    from musiclit.prep.quality import decode_fingerprint, fingerprint_distance

    items = sorted(
        ((analyses[s.sha]["measurements"]["duration"], s) for s in songs if analyses[s.sha].get("fingerprint")),
        key=lambda t: t[0],
    )
    fps = {s.sha: decode_fingerprint(analyses[s.sha]["fingerprint"]) for _, s in items}
    parent = {s.sha: s.sha for _, s in items}
    dist: dict[tuple[str, str], float] = {}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, (d1, s1) in enumerate(items):
        for d2, s2 in items[i + 1 :]:
            if d2 - d1 > max(1.0, 0.02 * d1):
                break
            distance = fingerprint_distance(fps[s1.sha], fps[s2.sha])
            if distance <= threshold:
                dist[(s1.sha, s2.sha)] = dist[(s2.sha, s1.sha)] = distance
                parent[find(s2.sha)] = find(s1.sha)
    groups: dict[str, list[SourceSong]] = {}
    for _, s in items:
        groups.setdefault(find(s.sha), []).append(s)
    dropped: dict[str, tuple[SourceSong, float]] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda s: _preference(s, analyses[s.sha]))
        best = members[0]
        for other in members[1:]:
            d = dist.get((best.sha, other.sha))
            if d is None:
                d = fingerprint_distance(fps[best.sha], fps[other.sha])
            dropped[other.sha] = (best, d)
    return dropped


# ---------------------------------------------------------------------- state
class StateStore:
    """Per-song resume state under ``<output>/.musiclit-prepare/songs/<sha>.json``."""

    def __init__(self, output: Path, read_only: bool) -> None:
        self.folder = output / STATE_DIR / "songs"
        self.read_only = read_only

    def load(self, sha: str) -> dict:
        path = self.folder / f"{sha}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def save(self, sha: str, state: dict) -> None:
        if not self.read_only:
            atomic_write_json(self.folder / f"{sha}.json", state)

    def all(self) -> Iterable[tuple[str, dict]]:
        if self.folder.is_dir():
            for path in sorted(self.folder.glob("*.json")):
                yield path.stem, self.load(path.stem)


def _run_tasks(
    tasks: list[SongTask], workers: int, progress: bool, desc: str, on_result: Callable[[dict], None]
) -> None:
    """Run ``process_song`` over tasks in a process pool (bounded in-flight work) with a progress bar."""
    from tqdm import tqdm

    if not tasks:
        return
    bar = tqdm(total=len(tasks), desc=desc, unit="song", disable=not progress, file=sys.stderr)
    try:
        if workers <= 1 or len(tasks) == 1:
            for task in tasks:
                on_result(process_song(task))
                bar.update()
            return
        # one thread per worker process: the pool is the parallelism (BLAS/OpenMP threads would oversubscribe)
        saved = {k: os.environ.get(k) for k in THREAD_VARS}
        os.environ.update(dict.fromkeys(THREAD_VARS, "1"))
        try:
            pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=get_context("spawn"))
            for fut in [pool.submit(os.getpid) for _ in range(min(workers, len(tasks)))]:
                fut.result()  # start the workers while the variables are set
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        with pool:
            pending = set()
            queue = iter(tasks)
            for task in queue:
                pending.add(pool.submit(process_song, task))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    on_result(fut.result())
                    bar.update()
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending.add(pool.submit(process_song, nxt))
    finally:
        bar.close()


# ---------------------------------------------------------------------- the whole run
def run_prepare(config: PrepareConfig, demucs_model: Any = None, log: Callable[[str], None] | None = None) -> dict:
    """Run ``prepare``.

    Args:
        config: Settings.
        demucs_model: A loaded Demucs model to use for vocal removal instead of loading
            ``config.demucs_model`` (tests inject a tiny one).
        log: Where progress messages go (default: stderr).

    Returns:
        The report (also written as ``report.json`` / ``report.txt`` unless dry-run).

    Raises:
        PrepareError: The input folder is missing, the output is inside the input, or a setting is bad.
    """
    from musiclit.prep.report import build_report, format_report

    say = log or (lambda msg: print(msg, file=sys.stderr))
    started = time.time()
    try:
        config.validate()
        check_template(config.caption_template)
    except ValueError as err:
        raise PrepareError(str(err)) from None
    inp, out = Path(config.input).resolve(), Path(config.output).resolve()
    if not inp.is_dir():
        raise PrepareError(f"{inp}: input folder not found")
    if out == inp or inp in out.parents:
        raise PrepareError(f"{out}: the output folder must not be inside the input folder {inp} (it is never modified)")
    dry = config.dry_run
    store = StateStore(out, read_only=dry)
    cache = HashCache(None if dry else out / STATE_DIR / "hashes.json")
    try:
        songs, skips, warnings = scan_input(inp, cache, config.descriptions_csv)
    except ValueError as err:
        raise PrepareError(str(err)) from None
    if not dry:
        cache.save()
    if config.tf_models:
        from musiclit.prep.labels import TFModels

        _, message = TFModels.find(config.tf_models)
        warnings.append(message)
        say(f"musiclit prepare: {message}")
    # exact duplicates: same bytes
    unique: list[SourceSong] = []
    first_by_sha: dict[str, SourceSong] = {}
    # the copy with the user's own description wins, then the shallowest path
    for song in sorted(songs, key=lambda s: (not s.user, s.rel.count("/"), s.rel)):
        if song.sha in first_by_sha:
            skips.append(Skip(song.rel, "duplicate", f"exact duplicate of {first_by_sha[song.sha].rel} (same content)"))
        else:
            first_by_sha[song.sha] = song
            unique.append(song)
    unique.sort(key=lambda s: s.rel)
    akey, aukey = config.analysis_key(), config.audio_key()
    states = {s.sha: store.load(s.sha) for s in unique}
    ids: dict[str, str] = {}
    rel_by_sha = {s.sha: s.rel for s in unique}

    def akey_of(sha: str) -> str:
        """The analysis key of one song: a tempo marking in its file name is part of it (a rename that adds one
        re-labels the song; any other rename keeps the results)."""
        if not config.tempo_markings:
            return akey
        from musiclit.prep.labels import tempo_marking

        return f"{akey}:{tempo_marking(Path(rel_by_sha[sha]).stem) or ''}"

    for s in unique:
        ids[s.sha] = states[s.sha].get("song_id") or song_id_for(s)
    stats = {"analysed": 0, "analysis_reused": 0, "songs_chunked": 0, "songs_reused": 0}
    chunked: set[str] = set()
    timings: list[dict] = []
    errors: dict[str, str] = {}

    def task_for(s: SourceSong, analyze: bool, write: bool) -> SongTask:
        st = states[s.sha]
        return SongTask(
            str(s.path),
            s.rel,
            s.sha,
            ids[s.sha],
            analyze,
            None if analyze else st.get("analysis"),
            write,
            str(out),
            config,
        )

    def on_result(res: dict) -> None:
        sha = res["sha"]
        st = states[sha]
        timings.append(res["timing"])
        if res["error"]:
            errors[sha] = res["error"]
            st.update(error=res["error"], analysis_key=akey_of(sha), analysis=None, source=rel_by_sha[sha])
            store.save(sha, st)
            return
        st.pop("error", None)
        if res["analysis"] is not None and st.get("analysis_key") != akey_of(sha):
            st.update(analysis=res["analysis"], analysis_key=akey_of(sha))
        if res["clips"] is not None:
            st.update(clips=res["clips"], audio_key=aukey)
            chunked.add(sha)
        st.update(song_id=ids[sha], source=rel_by_sha[sha])
        store.save(sha, st)

    # phase 1: analysis (and clips on the way when no vocal removal is asked)
    for s in unique:
        if states[s.sha].get("error") and states[s.sha].get("analysis_key") == akey_of(s.sha):
            errors[s.sha] = states[s.sha]["error"]  # failed before with these settings and the same bytes
    todo = [
        s
        for s in unique
        if s.sha not in errors
        and (states[s.sha].get("analysis_key") != akey_of(s.sha) or not states[s.sha].get("analysis"))
    ]
    stats["analysed"], stats["analysis_reused"] = len(todo), len(unique) - len(todo)
    write_now = not dry and not config.remove_vocals
    _run_tasks([task_for(s, True, write_now) for s in todo], config.workers, config.progress, "analyse", on_result)
    # phase 2: quality verdicts and duplicates
    analysed: list[SourceSong] = []
    for s in unique:
        if s.sha in errors:
            skips.append(Skip(s.rel, "undecodable", errors[s.sha]))
            continue
        analysis = states[s.sha].get("analysis")
        if not analysis:
            skips.append(Skip(s.rel, "undecodable", "no analysis result"))
            continue
        verdict = quality_verdict(analysis, config.quality, config.sample_rate) if config.filter else None
        if verdict is not None:
            verdict.path = s.rel
            skips.append(verdict)
            continue
        analysed.append(s)
    kept = analysed
    if config.quality.check_duplicates:
        analyses = {s.sha: states[s.sha]["analysis"] for s in analysed}
        dropped = find_near_duplicates(analysed, analyses, config.quality.duplicate_distance)
        for sha, (best, distance) in dropped.items():
            s = next(x for x in analysed if x.sha == sha)
            skips.append(
                Skip(
                    s.rel,
                    "near_duplicate",
                    f"near duplicate of {best.rel} (fingerprint distance "
                    f"{distance:.3f} <= {config.quality.duplicate_distance:g}; the better copy is kept)",
                    round(distance, 4),
                    config.quality.duplicate_distance,
                )
            )
        kept = [s for s in analysed if s.sha not in dropped]
    kept_shas = {s.sha for s in kept}
    # phase 3: clips for kept songs whose clips are missing or were made with other settings
    if not dry:
        for sha, st in store.all():
            if sha not in kept_shas and st.get("clips"):
                _delete_clips(out, st)
                st["clips"], st["audio_key"] = [], None
                store.save(sha, st)
                if sha in states:
                    states[sha] = st
        need = [s for s in kept if not _clips_ok(out, states[s.sha], aukey)]
        if config.remove_vocals:
            _vocal_clips(need, states, ids, out, config, demucs_model, store, say, chunked)
        else:
            _run_tasks([task_for(s, False, True) for s in need], config.workers, config.progress, "chunk", on_result)
        for s in need:
            if s.sha in errors and s in kept:
                skips.append(Skip(s.rel, "undecodable", errors[s.sha]))
        kept = [s for s in kept if _clips_ok(out, states[s.sha], aukey)]
        stats["songs_chunked"] = len(chunked & {s.sha for s in kept})
        stats["songs_reused"] = len(kept) - stats["songs_chunked"]
    # phase 4: captions, split, manifest
    entries, captions_preview = _captions_and_entries(kept, states, ids, out, config, store)
    if not dry:
        entries = _split(entries, out, config)
        if entries:
            write_manifest(out / MANIFEST_NAME, entries)
        elif (out / MANIFEST_NAME).exists():
            (out / MANIFEST_NAME).unlink()
    report = build_report(
        config,
        songs,
        unique,
        kept,
        states,
        skips,
        warnings,
        entries,
        stats,
        timings,
        time.time() - started,
        captions_preview,
    )
    if dry:
        say(format_report(report))
    else:
        atomic_write_json(out / "report.json", report)
        atomic_write_text(out / "report.txt", format_report(report))
        shutil.rmtree(out / STATE_DIR / "tmp", ignore_errors=True)
    return report


def _clips_ok(out: Path, state: dict, audio_key: str) -> bool:
    clips = state.get("clips")
    return bool(clips) and state.get("audio_key") == audio_key and all((out / c["path"]).is_file() for c in clips)


def _delete_clips(out: Path, state: dict) -> None:
    for clip in state.get("clips") or []:
        for path in (out / clip["path"], (out / clip["path"]).with_suffix(".json")):
            path.unlink(missing_ok=True)
    if state.get("song_id"):
        folder = out / "clips" / state["song_id"]
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _vocal_clips(need, states, ids, out, config, demucs_model, store, say, chunked) -> None:
    """Vocal removal runs in this process (Demucs uses every core, or the GPU), one song at a time."""
    from tqdm import tqdm

    from musiclit.prep import chunk, quality, vocals

    if not need:
        return
    model = demucs_model if demucs_model is not None else vocals.load_demucs(config.demucs_model)
    device = vocals.pick_device(config.demucs_device)
    say(f"musiclit prepare: removing vocals with Demucs on {device}")
    for s in tqdm(need, desc="vocals", unit="song", disable=not config.progress, file=sys.stderr):
        buf = quality.SpillBuffer(config.channels, int(900 * config.sample_rate), out / STATE_DIR / "tmp")
        try:
            for block in vocals.no_vocals_stream(
                s.path,
                model,
                config.sample_rate,
                config.channels,
                device,
                config.vocals_window,
                config.demucs_overlap,
                config.demucs_shifts,
            ):
                buf.append(block)
            buf.finish()
            st = states[s.sha]
            clips = _write_song_clips(buf, out, ids[s.sha], st["analysis"], config, chunk)
            st.update(clips=clips, audio_key=config.audio_key())
            store.save(s.sha, st)
            chunked.add(s.sha)
        except AudioError as err:
            say(f"musiclit prepare: {err}")
        finally:
            buf.close()


def _captions_and_entries(kept, states, ids, out, config, store) -> tuple[list[ClipEntry], list[dict]]:
    entries: list[ClipEntry] = []
    preview: list[dict] = []
    for s in kept:
        st = states[s.sha]
        caption, source = song_caption(st["analysis"].get("labels", {}), s.user, config.caption_template, ids[s.sha])
        preview.append({"song": s.rel, "song_id": ids[s.sha], "description": caption.description, "source": source})
        if config.dry_run:
            continue
        written = st.setdefault("captions", {})
        for clip in st.get("clips", []):
            json_path = (out / clip["path"]).with_suffix(".json")
            clip_caption = Caption.from_dict(
                {**caption.to_dict(), "chunk_index": clip["chunk_index"], "offset_s": clip["offset_s"]}
            )
            if json_path.exists() and clip["path"] in written:
                try:
                    existing = Caption.load(json_path)
                except CaptionError:
                    existing = None
                if existing is not None and existing.description and existing.description != written[clip["path"]]:
                    clip_caption.description = existing.description  # edited by hand: keep it
            if not json_path.exists() or Caption.load(json_path).to_dict() != clip_caption.to_dict():
                clip_caption.save(json_path)
            written[clip["path"]] = clip_caption.description
            entries.append(
                ClipEntry(
                    path=clip["path"],
                    duration=clip["duration"],
                    sample_rate=config.sample_rate,
                    channels=config.channels,
                    song_id=ids[s.sha],
                )
            )
        store.save(s.sha, st)
    return entries, preview


def _split(entries: list[ClipEntry], out: Path, config: PrepareConfig) -> list[ClipEntry]:
    """Train/valid split by song, deterministic from the seed; songs keep their side across re-runs."""
    if not entries:
        return entries
    split_file = out / STATE_DIR / "split.json"
    settings = {"seed": config.seed, "valid_fraction": config.valid_fraction}
    previous: dict[str, str] = {}
    try:
        saved = json.loads(split_file.read_text(encoding="utf-8"))
        if saved.get("settings") == settings:
            previous = saved.get("songs", {})
    except (OSError, ValueError):
        pass
    for e in entries:
        e.split = previous.get(e.song_id)  # songs of earlier runs keep their side; new songs are assigned
    result = split_by_song(entries, config.valid_fraction, config.seed)
    atomic_write_json(split_file, {"settings": settings, "songs": {e.song_id: e.split for e in result}})
    return result


def manifest_entries(output: Path) -> list[ClipEntry]:
    """The manifest ``prepare`` wrote (convenience for tests and tools)."""
    return read_manifest(Path(output) / MANIFEST_NAME)
