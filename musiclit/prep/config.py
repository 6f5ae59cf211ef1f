"""Settings of ``prepare`` and the cache keys derived from them.

Each processing step is keyed by the settings that affect its result, so that a re-run with changed
settings redoes only what they affect:

* ``analysis_key``: decoding, quality measurements, fingerprint and labels (tempo, key, loudness, tags);
* ``audio_key``: the clips' audio (rate, channels, segment length, overlap, tails, beat alignment, vocal
  removal);
* quality thresholds, caption template, descriptions and the split are cheap and re-applied every run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Bump when the analysis code changes in a way that changes its results.
ANALYSIS_VERSION = 3  # 2: brick-wall cut-off measured; tempo from the beat tracker + metrical-level rule
# 3: tempo markings in titles and file names
AUDIO_VERSION = 2  # 2: a kept short tail is written without baked-in silence

DEFAULT_TEMPLATE = "[{genre} ]music[, {mood}][, with {instruments}][, {tempo_word} tempo at {bpm} bpm][, in {key}]"


@dataclass
class QualityThresholds:
    """Thresholds of the quality filter; a song is rejected when a measurement crosses one.

    Attributes:
        min_duration: Minimum song duration in seconds.
        max_silence: Maximum fraction of 50 ms frames quieter than ``silence_db``.
        silence_db: Level (dBFS, RMS) below which a frame counts as silent.
        max_clipping: Maximum fraction of samples that are clipped (at full scale or on a flat top).
        min_bandwidth: Upper limit (Hz) of the lowest acceptable brick-wall cut-off. Only a cut-off
            (a lossy encoder's low-pass, the empty top of an upsampled file) rejects a song; a natural
            roll-off never does. 0 keeps every song.
        min_bandwidth_ratio: A cut-off must reach this fraction of the band the model hears (half
            of the lower of the clip rate and the file's rate): at 32 kHz, 0.85 x 16 kHz = 13.6 kHz, so
            a 128 kbps MP3 (cut near 16 kHz) is kept and a 56 kbps one (11 kHz) is not.
        duplicate_distance: Maximum fingerprint distance (bit error rate, 0..1) for two songs to count
            as near duplicates.
        check_duplicates: Detect exact and near duplicates.
    """

    min_duration: float = 10.0
    max_silence: float = 0.5
    silence_db: float = -50.0
    max_clipping: float = 0.01
    min_bandwidth: float = 17500.0
    min_bandwidth_ratio: float = 0.85
    duplicate_distance: float = 0.15
    check_duplicates: bool = True


@dataclass
class PrepareConfig:
    """Everything ``prepare`` needs; the CLI fills it from its options.

    Attributes:
        input: Folder of songs (read only, never modified).
        output: Dataset folder to write.
        sample_rate: Sample rate of the clips in Hz.
        channels: Channels of the clips (1 = mono).
        segment: Clip length in seconds.
        overlap: Overlap between consecutive clips in seconds.
        min_tail: A song's last clip shorter than this (seconds) is dropped or padded (``short_tail``).
        short_tail: "drop" or "pad" (keep it; training pads it and masks the padding, no silence is written).
        beat_align: Start clips on a beat.
        audio_format: "wav" or "flac".
        subtype: soundfile subtype of the clips ("PCM_16", "PCM_24" or "FLOAT").
        filter: Apply the quality filter (measurements are still reported when off).
        quality: Quality thresholds.
        remove_vocals: Run Demucs and keep the non-vocal stems.
        demucs_model: Demucs model name (e.g. htdemucs) or a local weights file.
        demucs_overlap: Overlap of Demucs' internal segments (0..1).
        demucs_shifts: Random time shifts averaged by Demucs (0 = none, deterministic).
        demucs_device: "cuda", "cpu" or None (GPU when there is one).
        vocals_window: Long songs go through Demucs in windows of this many seconds.
        labels: Run the Essentia auto-labelling.
        key_profile: Key profile of Essentia's KeyExtractor.
        analysis_rate: Sample rate of the label analysis in Hz.
        analysis_max_duration: Seconds of audio (the middle of the song) used for tempo and key.
        min_bpm: Lowest tempo reported.
        max_bpm: Highest tempo reported.
        tf_models: Folder of Essentia TensorFlow models (genre/mood/instruments); None = off.
        read_tags: Read title/artist/genre tags from the audio files.
        tempo_markings: Let a tempo marking (Adagio, Allegro, Presto...) in the title tag or file name
            choose the tempo's metrical level where the accents leave it open.
        descriptions_csv: CSV of ``path,description`` rows (path relative to the input folder).
        caption_template: Template of the generated description (see docs/prepare.md).
        valid_fraction: Fraction of songs in the validation split.
        seed: Seed of the split.
        workers: Worker processes (0 or 1 = in process).
        dry_run: Analyse and print captions without writing anything.
        progress: Show a progress bar.
    """

    input: Path
    output: Path
    sample_rate: int = 32000
    channels: int = 1
    segment: float = 30.0
    overlap: float = 0.0
    min_tail: float = 10.0
    short_tail: str = "drop"
    beat_align: bool = False
    audio_format: str = "wav"
    subtype: str = "PCM_16"
    filter: bool = True
    quality: QualityThresholds = field(default_factory=QualityThresholds)
    remove_vocals: bool = False
    demucs_model: str = "htdemucs"
    demucs_overlap: float = 0.25
    demucs_shifts: int = 0
    demucs_device: str | None = None
    vocals_window: float = 60.0
    labels: bool = True
    key_profile: str = "bgate"
    analysis_rate: int = 11025
    analysis_max_duration: float = 120.0
    min_bpm: float = 40.0
    max_bpm: float = 220.0
    tf_models: Path | None = None
    read_tags: bool = True
    tempo_markings: bool = True
    descriptions_csv: Path | None = None
    caption_template: str = DEFAULT_TEMPLATE
    valid_fraction: float = 0.1
    seed: int = 0
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    dry_run: bool = False
    progress: bool = True

    def validate(self) -> None:
        """Check value ranges.

        Raises:
            ValueError: A setting is out of range; the message names it.
        """
        checks = [
            (self.sample_rate > 0, f"--sample-rate must be positive, got {self.sample_rate}"),
            (self.channels in (1, 2), f"--channels must be 1 or 2, got {self.channels}"),
            (self.segment > 0, f"--segment must be positive, got {self.segment}"),
            (0 <= self.overlap < self.segment, f"--overlap must be in [0, segment), got {self.overlap}"),
            (0 <= self.min_tail <= self.segment, f"--min-tail must be in [0, segment], got {self.min_tail}"),
            (self.short_tail in ("drop", "pad"), f"--short-tail must be drop or pad, got {self.short_tail}"),
            (self.audio_format in ("wav", "flac"), f"--format must be wav or flac, got {self.audio_format}"),
            (
                self.subtype in ("PCM_16", "PCM_24", "FLOAT"),
                f"--subtype must be PCM_16, PCM_24 or FLOAT, got {self.subtype}",
            ),
            (not (self.audio_format == "flac" and self.subtype == "FLOAT"), "FLAC cannot store FLOAT samples"),
            (0 <= self.valid_fraction < 1, f"--valid-fraction must be in [0, 1), got {self.valid_fraction}"),
            (0 <= self.demucs_overlap < 1, f"--demucs-overlap must be in [0, 1), got {self.demucs_overlap}"),
            (self.vocals_window >= 10, f"--vocals-window must be at least 10 s, got {self.vocals_window}"),
            (self.analysis_rate >= 8000, f"--analysis-rate must be at least 8000 Hz, got {self.analysis_rate}"),
            (0 < self.min_bpm < self.max_bpm, f"need 0 < --min-bpm < --max-bpm, got {self.min_bpm}, {self.max_bpm}"),
            (self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    # ------------------------------------------------------------------ cache keys
    def analysis_settings(self) -> dict:
        """Settings that change the analysis result (measurements, fingerprint, labels)."""
        return {
            "version": ANALYSIS_VERSION,
            "labels": self.labels,
            "key_profile": self.key_profile,
            "analysis_rate": self.analysis_rate,
            "analysis_max_duration": self.analysis_max_duration,
            "bpm_range": [self.min_bpm, self.max_bpm],
            "tf_models": str(self.tf_models) if self.tf_models else None,
            "read_tags": self.read_tags,
            "tempo_markings": self.tempo_markings,
            "silence_db": self.quality.silence_db,
        }

    def audio_settings(self) -> dict:
        """Settings that change the clips' audio."""
        out = {
            "version": AUDIO_VERSION,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "segment": self.segment,
            "overlap": self.overlap,
            "min_tail": self.min_tail,
            "short_tail": self.short_tail,
            "beat_align": self.beat_align,
            "format": self.audio_format,
            "subtype": self.subtype,
            "remove_vocals": self.remove_vocals,
        }
        if self.remove_vocals:
            out.update(
                demucs_model=self.demucs_model,
                demucs_overlap=self.demucs_overlap,
                demucs_shifts=self.demucs_shifts,
                vocals_window=self.vocals_window,
            )
        return out

    def analysis_key(self) -> str:
        """Hash of :meth:`analysis_settings`."""
        return settings_hash(self.analysis_settings())

    def audio_key(self) -> str:
        """Hash of :meth:`audio_settings`."""
        return settings_hash(self.audio_settings())

    def to_dict(self) -> dict:
        """JSON-friendly view of all settings (for the report)."""
        data = asdict(self)
        for name in ("input", "output", "tf_models", "descriptions_csv"):
            data[name] = str(data[name]) if data[name] is not None else None
        return data


def settings_hash(settings: dict) -> str:
    """Short stable hash of a JSON-serialisable dict."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
