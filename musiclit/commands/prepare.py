"""``python -m musiclit prepare``: turn a folder of songs into a labelled, chunked 32 kHz dataset."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from musiclit.prep.config import DEFAULT_TEMPLATE, PrepareConfig, QualityThresholds

EPILOG = """\
output: <output>/clips/<song_id>/<song_id>_NNNN.wav with a caption JSON beside each clip,
<output>/manifest.jsonl (train/valid split by song), report.json and report.txt.
Re-running resumes: songs already prepared with the same settings are skipped.
Exit code 0 when at least one clip is in the dataset, 1 when nothing usable came out, 2 on bad options.
See docs/prepare.md for details."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``prepare`` (every option documented)."""
    d = PrepareConfig(input=Path("."), output=Path("."))
    q = QualityThresholds()
    p = argparse.ArgumentParser(
        prog="python -m musiclit prepare",
        description="Turn a folder of songs (wav, flac, mp3, ogg; any rate and channel count) into a labelled, "
        "chunked dataset that `fit` reads directly. The source folder is never modified.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = p.add_argument_group("input and output")
    io.add_argument("--input", "-i", type=Path, required=True, help="folder of songs, scanned recursively (read only)")
    io.add_argument("--output", "-o", type=Path, required=True, help="dataset folder to write (created if needed)")
    io.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        help="worker processes (default: number of CPU cores = %(default)s; 1 = no pool)",
    )
    io.add_argument(
        "--dry-run", action="store_true", help="analyse and print the captions that would be written; write nothing"
    )
    io.add_argument("--no-progress", action="store_true", help="no progress bar")

    ch = p.add_argument_group("chunking (step 6)")
    ch.add_argument(
        "--sample-rate", type=int, default=d.sample_rate, help="clip sample rate in Hz (default %(default)s)"
    )
    ch.add_argument(
        "--channels", type=int, choices=(1, 2), default=d.channels, help="clip channels (default %(default)s = mono)"
    )
    ch.add_argument("--segment", type=float, default=d.segment, help="clip length in seconds (default %(default)s)")
    ch.add_argument(
        "--overlap", type=float, default=d.overlap, help="overlap of consecutive clips in seconds (default %(default)s)"
    )
    ch.add_argument(
        "--min-tail",
        type=float,
        default=d.min_tail,
        help="a song's last clip shorter than this many seconds is dropped or padded (default %(default)s)",
    )
    ch.add_argument(
        "--short-tail",
        choices=("drop", "pad"),
        default=d.short_tail,
        help="what to do with a last clip shorter than --min-tail: drop it, or keep it (pad: training pads it "
        "to the segment and masks the padding out of the loss; no silence is written) (default %(default)s)",
    )
    ch.add_argument("--beat-align", action="store_true", help="start clips on a beat (needs the tempo labels)")
    ch.add_argument(
        "--format",
        dest="audio_format",
        choices=("wav", "flac"),
        default=d.audio_format,
        help="clip file format (default %(default)s)",
    )
    ch.add_argument(
        "--subtype",
        choices=("PCM_16", "PCM_24", "FLOAT"),
        default=d.subtype,
        help="clip sample format (default %(default)s)",
    )

    qf = p.add_argument_group("quality filter (step 2)")
    qf.add_argument(
        "--no-filter", action="store_true", help="keep every decodable song (measurements are still reported)"
    )
    qf.add_argument(
        "--min-duration",
        type=float,
        default=q.min_duration,
        help="reject songs shorter than this, seconds (default %(default)s)",
    )
    qf.add_argument(
        "--max-silence",
        type=float,
        default=q.max_silence,
        help="reject songs whose fraction of silent 50 ms frames exceeds this (default %(default)s)",
    )
    qf.add_argument(
        "--silence-db", type=float, default=q.silence_db, help="silence level in dBFS RMS (default %(default)s)"
    )
    qf.add_argument(
        "--max-clipping",
        type=float,
        default=q.max_clipping,
        help="reject songs whose fraction of clipped samples exceeds this (default %(default)s)",
    )
    qf.add_argument(
        "--min-bandwidth",
        type=float,
        default=q.min_bandwidth,
        help="reject songs with a brick-wall cut-off (a low-bitrate lossy encode, an upsampled file) below "
        "min(this, --min-bandwidth-ratio x the band the model hears = half of the lower of --sample-rate and "
        "the file's rate), in Hz; a natural roll-off never rejects a song; 0 keeps every song "
        "(default %(default)s)",
    )
    qf.add_argument(
        "--min-bandwidth-ratio",
        type=float,
        default=q.min_bandwidth_ratio,
        help="a cut-off must reach this fraction of the band the model hears (at 32 kHz: 16 kHz x 0.85 = 13.6 kHz; "
        "a 128 kbps MP3 is cut near 16 kHz and kept) (default %(default)s)",
    )
    qf.add_argument(
        "--duplicate-distance",
        type=float,
        default=q.duplicate_distance,
        help="fingerprint distance (0..1) at or below which two songs are near duplicates (default %(default)s)",
    )
    qf.add_argument("--keep-duplicates", action="store_true", help="do not look for exact or near duplicates")

    vo = p.add_argument_group("vocal removal (step 3, off by default)")
    vo.add_argument("--remove-vocals", action="store_true", help="replace every song by its Demucs no_vocals mix")
    vo.add_argument(
        "--demucs-model", default=d.demucs_model, help="Demucs model name or a local weights file (default %(default)s)"
    )
    vo.add_argument(
        "--demucs-overlap",
        type=float,
        default=d.demucs_overlap,
        help="overlap of Demucs segments (default %(default)s)",
    )
    vo.add_argument(
        "--demucs-shifts",
        type=int,
        default=d.demucs_shifts,
        help="Demucs random time shifts averaged, more = better and slower; 0 = deterministic (default %(default)s)",
    )
    vo.add_argument(
        "--demucs-device", default=None, help="torch device for Demucs (default: cuda when available, else cpu)"
    )
    vo.add_argument(
        "--vocals-window",
        type=float,
        default=d.vocals_window,
        help="long songs go through Demucs in windows of this many seconds (default %(default)s)",
    )

    lb = p.add_argument_group("labels and captions (steps 4-5)")
    lb.add_argument("--no-labels", action="store_true", help="skip tempo/key/loudness analysis")
    lb.add_argument(
        "--key-profile",
        default=d.key_profile,
        help="key profile of Essentia's KeyExtractor, e.g. bgate, edma, temperley, krumhansl (default %(default)s)",
    )
    lb.add_argument(
        "--analysis-rate",
        type=int,
        default=d.analysis_rate,
        help="sample rate of the label analysis (default %(default)s)",
    )
    lb.add_argument(
        "--analysis-max-duration",
        type=float,
        default=d.analysis_max_duration,
        help="seconds from the middle of each song used for tempo and key (default %(default)s)",
    )
    lb.add_argument("--min-bpm", type=float, default=d.min_bpm, help="lowest tempo reported (default %(default)s)")
    lb.add_argument("--max-bpm", type=float, default=d.max_bpm, help="highest tempo reported (default %(default)s)")
    lb.add_argument(
        "--tf-models",
        type=Path,
        default=None,
        help="folder of Essentia TensorFlow models for genre/mood/instrument labels (needs essentia-tensorflow)",
    )
    lb.add_argument("--no-tags", action="store_true", help="do not read title/artist/genre tags from the audio files")
    lb.add_argument(
        "--no-tempo-markings",
        action="store_true",
        help="ignore tempo markings (Adagio, Allegro, Presto...) in titles and file names: the tempo's metrical "
        "level then comes from the audio alone",
    )
    lb.add_argument(
        "--descriptions",
        type=Path,
        default=None,
        help="CSV of 'path,description' rows (paths relative to --input); a <song>.txt or <song>.json beside "
        "a song is read too. A user's description always wins over the template",
    )
    lb.add_argument(
        "--caption-template",
        default=DEFAULT_TEMPLATE,
        help="template of generated descriptions: {field} is replaced, [...] is dropped when a field in it is "
        "missing; fields: genre, mood, instruments, bpm, tempo_word, key, title, artist, album, loudness "
        "(default %(default)r)",
    )

    sp = p.add_argument_group("split (step 7)")
    sp.add_argument(
        "--valid-fraction",
        type=float,
        default=d.valid_fraction,
        help="fraction of songs for validation (default %(default)s)",
    )
    sp.add_argument("--seed", type=int, default=d.seed, help="seed of the split (default %(default)s)")
    return p


def config_from_args(args: argparse.Namespace) -> PrepareConfig:
    """Build the config from parsed arguments."""
    quality = QualityThresholds(
        min_duration=args.min_duration,
        max_silence=args.max_silence,
        silence_db=args.silence_db,
        max_clipping=args.max_clipping,
        min_bandwidth=args.min_bandwidth,
        min_bandwidth_ratio=args.min_bandwidth_ratio,
        duplicate_distance=args.duplicate_distance,
        check_duplicates=not args.keep_duplicates,
    )
    return PrepareConfig(
        input=args.input.expanduser(),
        output=args.output.expanduser(),
        sample_rate=args.sample_rate,
        channels=args.channels,
        segment=args.segment,
        overlap=args.overlap,
        min_tail=args.min_tail,
        short_tail=args.short_tail,
        beat_align=args.beat_align,
        audio_format=args.audio_format,
        subtype=args.subtype,
        filter=not args.no_filter,
        quality=quality,
        remove_vocals=args.remove_vocals,
        demucs_model=args.demucs_model,
        demucs_overlap=args.demucs_overlap,
        demucs_shifts=args.demucs_shifts,
        demucs_device=args.demucs_device,
        vocals_window=args.vocals_window,
        labels=not args.no_labels,
        key_profile=args.key_profile,
        analysis_rate=args.analysis_rate,
        analysis_max_duration=args.analysis_max_duration,
        min_bpm=args.min_bpm,
        max_bpm=args.max_bpm,
        tf_models=args.tf_models,
        read_tags=not args.no_tags,
        tempo_markings=not args.no_tempo_markings,
        descriptions_csv=args.descriptions,
        caption_template=args.caption_template,
        valid_fraction=args.valid_fraction,
        seed=args.seed,
        workers=args.workers,
        dry_run=args.dry_run,
        progress=not args.no_progress and sys.stderr.isatty(),
    )


def main(argv: list[str]) -> int:
    """Run ``prepare``; returns 0 when the dataset has clips, 1 when nothing usable came out, 2 on bad options."""
    args = build_parser().parse_args(argv)
    config = config_from_args(args)

    from musiclit.prep.pipeline import run_prepare
    from musiclit.prep.report import format_report

    try:
        report = run_prepare(config)
    except KeyboardInterrupt:
        print("musiclit prepare: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    if config.dry_run:
        print("dry run: nothing was written")
        return 0 if report["songs_used"] else 1
    print(format_report(report), end="")
    print(f"dataset: {os.fspath(config.output)} ({report['clips_out']} clips)")
    if report.get("skip_notice"):
        print(report["skip_notice"], file=sys.stderr)  # last, where it is seen
    return 0 if report["clips_out"] else 1
