"""Step 8: the run's summary, as JSON (``report.json``) and readable text (``report.txt``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

TEMPO_BIN = 10
NOTICE_FRACTION = 0.2  # a skip reason that takes more than this share of the songs gets a notice
LOW_TEMPO_CONFIDENCE = 0.5

# the option that keeps the songs skipped for each reason (None: nothing to keep, or nothing an option can do)
KEEP_FLAGS = {
    "too_short": "--min-duration 0",
    "silent": "--max-silence 1",
    "clipping": "--max-clipping 1",
    "low_bandwidth": "--min-bandwidth 0",
    "near_duplicate": "--keep-duplicates",
    "duplicate": None,
    "undecodable": None,
    "unsupported": None,
    "empty": None,
    "unreadable": None,
}


def build_report(
    config: Any,
    songs: list,
    unique: list,
    kept: list,
    states: dict,
    skips: list,
    warnings: list[str],
    entries: list,
    stats: dict,
    timings: list[dict],
    elapsed: float,
    captions: list[dict],
) -> dict:
    """Assemble the report dict (all arguments come from :func:`musiclit.prep.pipeline.run_prepare`)."""
    labels = [states[s.sha]["analysis"].get("labels", {}) for s in kept]
    tempo_rows = [
        {
            "song": s.rel,
            "bpm": lab.get("bpm"),
            "bpm_raw": lab.get("bpm_raw"),
            "octave": lab.get("bpm_octave"),
            "confidence": lab.get("bpm_confidence"),
            "marking": lab.get("bpm_marking"),
            "level_from": lab.get("bpm_level_from"),
        }
        for s, lab in zip(kept, labels, strict=True)
        if lab.get("bpm")
    ]
    label_errors = [
        msg
        for s, lab in zip(kept, labels, strict=True)
        for msg in ([lab["label_error"]] if lab.get("label_error") else [])
        + [f"{s.rel}: genre/mood/instrument model {e}" for e in lab.get("tf_errors", [])]
    ]
    durations_in = [
        states[s.sha]["analysis"]["measurements"]["duration"] for s in unique if states[s.sha].get("analysis")
    ]
    tempo_hist = Counter(
        f"{int(lab['bpm'] // TEMPO_BIN * TEMPO_BIN)}-{int(lab['bpm'] // TEMPO_BIN * TEMPO_BIN + TEMPO_BIN - 1)}"
        for lab in labels
        if lab.get("bpm")
    )
    keys = Counter(lab["key"] for lab in labels if lab.get("key"))
    genres = Counter(
        g for lab in labels for g in (lab.get("genres") or ([lab["tag_genre"]] if lab.get("tag_genre") else []))
    )
    moods = Counter(m for lab in labels for m in lab.get("moods") or [])
    confidences = [lab["bpm_confidence"] for lab in labels if lab.get("bpm_confidence") is not None]
    loud = [lab["loudness"] for lab in labels if lab.get("loudness") is not None]
    seconds_out = sum(e.duration for e in entries)
    audio_in = sum(durations_in)
    songs_found = len(songs) + sum(1 for s in skips if s.reason in ("unsupported", "empty", "unreadable"))
    by_reason = Counter(s.reason for s in skips)
    return {
        "songs_found": songs_found,
        "songs_in": len(unique),
        "songs_used": len(kept),
        "clips_out": len(entries),
        "hours_in": round(audio_in / 3600, 4),
        "hours_out": round(seconds_out / 3600, 4),
        "splits": dict(Counter(e.split for e in entries)),
        "skipped": [asdict(s) for s in sorted(skips, key=lambda s: s.path)],
        "skipped_by_reason": dict(by_reason),
        "skip_notice": skip_notice(by_reason, songs_found),
        "labels": {
            "tempo_histogram": dict(sorted(tempo_hist.items(), key=lambda kv: int(kv[0].split("-")[0]))),
            "bpm_confidence_mean": round(sum(confidences) / len(confidences), 3) if confidences else None,
            "tempo_octave_corrections": dict(Counter(lab.get("bpm_octave") for lab in labels if lab.get("bpm_octave"))),
            "tempo": tempo_rows,
            "keys": dict(keys.most_common()),
            "genres": dict(genres.most_common()),
            "moods": dict(moods.most_common()),
            "loudness_lufs": {"min": min(loud), "max": max(loud), "mean": round(sum(loud) / len(loud), 1)}
            if loud
            else None,
        },
        "captions": captions,
        "resume": stats,
        "warnings": warnings + label_errors,
        "timing": {
            "elapsed_s": round(elapsed, 2),
            "audio_analysed_s": round(sum(durations_in), 1),
            "x_realtime": round(audio_in / elapsed, 1) if elapsed > 0 and stats.get("analysed") else None,
            "worker_seconds": {
                k: round(sum(t.get(k, 0.0) for t in timings), 2)
                for k in ("decode", "fingerprint", "labels", "chunk", "total")
            },
        },
        "settings": config.to_dict(),
    }


def skip_notice(by_reason: Counter | dict, songs_found: int) -> str | None:
    """One line naming each skip reason that took more than a fifth of the songs, and the option that keeps them.

    A default run must not silently drop a large part of someone's music; this line is printed last.
    """
    parts = []
    for reason, count in sorted(by_reason.items(), key=lambda kv: -kv[1]):
        if songs_found and count > NOTICE_FRACTION * songs_found:
            flag = KEEP_FLAGS.get(reason, "--no-filter")
            how = f"{flag} keeps them" if flag else "no option keeps them"
            parts.append(f"{count} of {songs_found} songs ({count / songs_found:.0%}) skipped as {reason} ({how})")
    if not parts:
        return None
    return "musiclit prepare: NOTE: " + "; ".join(parts) + "; see report.txt for each song"


def format_report(report: dict) -> str:
    """Readable text version of a report."""
    lines = [
        "musiclit prepare report",
        "=======================",
        f"songs found: {report['songs_found']}   distinct songs: {report['songs_in']}   used: {report['songs_used']}",
        f"clips out: {report['clips_out']}   hours in: {report['hours_in']:.3f}   hours out: {report['hours_out']:.3f}",
        f"splits: {', '.join(f'{k}={v}' for k, v in report['splits'].items()) or '-'}",
        f"time: {report['timing']['elapsed_s']:.1f} s"
        + (f" ({report['timing']['x_realtime']}x realtime)" if report["timing"]["x_realtime"] else ""),
        f"resume: {report['resume']}",
        "",
        f"skipped ({len(report['skipped'])}):",
    ]
    for s in report["skipped"]:
        measured = "" if s["value"] is None else f" [measured {s['value']}, threshold {s['threshold']}]"
        lines.append(f"  {s['path']}: {s['reason']}: {s['message']}{measured}")
    lab = report["labels"]
    lines += ["", "tempo histogram (BPM):"]
    lines += [f"  {k:>9}: {'#' * v} {v}" for k, v in lab["tempo_histogram"].items()] or ["  -"]
    lines.append(f"tempo confidence (mean): {lab['bpm_confidence_mean']}   octave: {lab['tempo_octave_corrections']}")
    if lab.get("tempo"):
        lines.append("tempo per song (Essentia's raw estimate -> label, confidence; ? = below 0.5: check it):")
        for t in lab["tempo"]:
            flag = " ?" if t["confidence"] is not None and t["confidence"] < LOW_TEMPO_CONFIDENCE else ""
            how = f" by the marking '{t['marking']}'" if t.get("level_from") == "marking" else ""
            lines.append(
                f"  {t['song']}: {t['bpm_raw']} -> {t['bpm']} bpm ({t['octave']}{how}, {t['confidence']}){flag}"
            )
    lines.append("keys: " + (", ".join(f"{k} ({v})" for k, v in lab["keys"].items()) or "-"))
    lines.append("genres: " + (", ".join(f"{k} ({v})" for k, v in lab["genres"].items()) or "-"))
    if lab["moods"]:
        lines.append("moods: " + ", ".join(f"{k} ({v})" for k, v in lab["moods"].items()))
    if lab["loudness_lufs"]:
        lines.append(f"loudness (LUFS): {lab['loudness_lufs']}")
    lines += ["", "captions:"]
    lines += [f'  {c["song"]}: "{c["description"]}" ({c["source"]})' for c in report["captions"]] or ["  -"]
    if report["warnings"]:
        lines += ["", "warnings:"] + [f"  {w}" for w in report["warnings"]]
    if report.get("skip_notice"):
        lines += ["", report["skip_notice"]]
    return "\n".join(lines) + "\n"
