"""The dataset manifest: one JSON line per clip (``manifest.jsonl`` at the dataset root).

Each line holds the clip's path relative to the dataset root, its duration, sample rate, channel count,
the id of the song it was cut from and its split ("train" or "valid")::

    {"path": "clips/song-a_0000.wav", "duration": 30.0, "sample_rate": 32000, "channels": 1,
     "song_id": "song-a", "split": "train"}

A folder of audio + caption JSON without a manifest also works: :func:`scan_dataset` builds the entries.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from musiclit.data.caption import Caption, CaptionError
from musiclit.errors import MusiclitError
from musiclit.io import atomic_write_text

MANIFEST_NAME = "manifest.jsonl"
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")
SPLITS = ("train", "valid")


class ManifestError(MusiclitError, ValueError):
    """A manifest or dataset folder that cannot be used; the message names the file and the problem."""


@dataclass
class ClipEntry:
    """One clip of a dataset.

    Attributes:
        path: Audio path relative to the dataset root (POSIX separators).
        duration: Duration in seconds.
        sample_rate: Sample rate of the stored file, in Hz.
        channels: Channel count of the stored file.
        song_id: Song the clip was cut from; clips of one song are never split across train/valid.
        split: "train", "valid", or None (not assigned yet).
    """

    path: str
    duration: float
    sample_rate: int
    channels: int
    song_id: str
    split: str | None = None

    def caption_path(self, root: str | os.PathLike[str]) -> Path:
        """Path of the caption JSON beside the audio file."""
        return (Path(root) / self.path).with_suffix(".json")


def read_manifest(path: str | os.PathLike[str]) -> list[ClipEntry]:
    """Read and validate a JSONL manifest.

    Raises:
        ManifestError: A line is not JSON, misses a field, or has a value of the wrong type.
    """
    path = Path(path)
    entries: list[ClipEntry] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(f"{where}: malformed JSON ({err.msg})") from None
            if not isinstance(data, dict):
                raise ManifestError(f"{where}: each line must be a JSON object")
            entries.append(_entry_from_dict(data, where))
    return entries


def _entry_from_dict(data: dict, where: str) -> ClipEntry:
    spec: dict[str, tuple[type, ...]] = {
        "path": (str,),
        "duration": (int, float),
        "sample_rate": (int,),
        "channels": (int,),
        "song_id": (str,),
    }
    for name, types in spec.items():
        if name not in data:
            raise ManifestError(f"{where}: missing field '{name}'")
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ManifestError(f"{where}: field '{name}' has the wrong type ({value!r})")
    split = data.get("split")
    if split is not None and split not in SPLITS:
        raise ManifestError(f"{where}: field 'split' must be one of {SPLITS} or null, got {split!r}")
    if data["duration"] <= 0 or data["sample_rate"] <= 0 or data["channels"] <= 0:
        raise ManifestError(f"{where}: duration, sample_rate and channels must be positive")
    return ClipEntry(
        path=data["path"],
        duration=float(data["duration"]),
        sample_rate=data["sample_rate"],
        channels=data["channels"],
        song_id=data["song_id"],
        split=split,
    )


def write_manifest(path: str | os.PathLike[str], entries: Iterable[ClipEntry]) -> None:
    """Write a JSONL manifest atomically."""
    atomic_write_text(path, "".join(json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in entries))


def scan_dataset(root: str | os.PathLike[str]) -> list[ClipEntry]:
    """Build manifest entries by scanning a folder of audio clips with caption JSON beside them.

    The song id comes from the caption's ``song_id`` when present, else from the file stem (each file is
    its own song). Splits are left unassigned.

    Raises:
        ManifestError: No audio found (an unreadable file or caption is reported by :func:`check_entries`).
    """
    import soundfile as sf

    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise ManifestError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found")
    entries = []
    for audio in files:
        rel = audio.relative_to(root).as_posix()
        try:
            info = sf.info(str(audio))
            caption_file = audio.with_suffix(".json")
            song_id = Caption.load(caption_file).song_id if caption_file.exists() else None
        except Exception:  # reported with the file and the problem by check_entries
            entries.append(ClipEntry(path=rel, duration=0.0, sample_rate=1, channels=1, song_id=rel))
            continue
        entries.append(
            ClipEntry(
                path=rel,
                duration=info.frames / info.samplerate,
                sample_rate=info.samplerate,
                channels=info.channels,
                song_id=song_id or str(Path(rel).with_suffix("")),
            )
        )
    return entries


def split_by_song(entries: Sequence[ClipEntry], valid_fraction: float, seed: int) -> list[ClipEntry]:
    """Assign train/valid splits by song, deterministically from ``seed``.

    Entries that already have a split keep it, and a song whose clips already carry a split puts its
    remaining clips on the same side. The other songs are shuffled with ``seed`` and the first
    ``round(valid_fraction * n_songs)`` go to validation (at least one when ``valid_fraction > 0`` and
    there are two or more songs).

    Raises:
        ManifestError: A song already has clips on both sides.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ManifestError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    fixed: dict[str, str] = {}
    for entry in entries:
        if entry.split is None:
            continue
        previous = fixed.setdefault(entry.song_id, entry.split)
        if previous != entry.split:
            raise ManifestError(f"song '{entry.song_id}' has clips in both splits ('{previous}' and '{entry.split}')")
    free = sorted({e.song_id for e in entries} - set(fixed))
    random.Random(seed).shuffle(free)
    n_valid = round(valid_fraction * len(free))
    if valid_fraction > 0 and n_valid == 0 and len(free) >= 2:
        n_valid = 1
    assign = dict(fixed)
    assign.update(dict.fromkeys(free[:n_valid], "valid"))
    assign.update(dict.fromkeys(free[n_valid:], "train"))
    return [ClipEntry(**{**asdict(e), "split": assign[e.song_id]}) for e in entries]


def load_dataset_entries(root: str | os.PathLike[str], valid_fraction: float = 0.1, seed: int = 0) -> list[ClipEntry]:
    """Entries of a dataset folder: from its manifest when there is one, else by scanning; splits assigned.

    Raises:
        ManifestError: The folder does not exist, has no clips, or lists a clip that is missing.
    """
    root = Path(root)
    check_data_dir(root)
    manifest = root / MANIFEST_NAME
    entries = read_manifest(manifest) if manifest.exists() else scan_dataset(root)
    if not entries:
        raise ManifestError(f"{manifest}: the manifest lists no clips")
    good, problems = check_entries(root, entries)
    if problems:
        shown = "\n".join(f"  {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        print(f"musiclit: skipping {len(problems)} of {len(entries)} clips in {root}:\n{shown}{more}", file=sys.stderr)
    if not good:
        more = f" (and {len(problems) - 1} more problems above)" if len(problems) > 1 else ""
        raise ManifestError(f"{root}: none of its {len(entries)} clips can be used: {problems[0]}{more}")
    if valid_fraction > 0 and len({e.song_id for e in good}) < 2 and not any(e.split == "valid" for e in good):
        print(f"musiclit: {root} has one song: no validation split is possible (training only)", file=sys.stderr)
    return split_by_song(good, valid_fraction, seed)


def check_data_dir(root: str | os.PathLike[str]) -> None:
    """Fail fast (before any model is loaded) when ``root`` cannot be a dataset: missing, or no clips.

    Raises:
        ManifestError: The folder does not exist, its manifest is malformed or empty, or it has neither a
            manifest nor any audio file.
    """
    root = Path(root)
    if not root.is_dir():
        hint = " (it is a file)" if root.exists() else ""
        raise ManifestError(f"{root}: dataset folder not found{hint}: check --data.data_dir")
    if (root / MANIFEST_NAME).is_file():
        if not read_manifest(root / MANIFEST_NAME):
            raise ManifestError(f"{root / MANIFEST_NAME}: the manifest lists no clips")
        return
    if not any(p.suffix.lower() in AUDIO_EXTENSIONS for p in root.rglob("*")):
        raise ManifestError(
            f"{root}: no {MANIFEST_NAME} and no audio files ({', '.join(AUDIO_EXTENSIONS)}): make a dataset with "
            "`python -m musiclit prepare --input <songs> --output <dataset>` and point --data.data_dir at it"
        )


def check_entries(root: Path, entries: Sequence[ClipEntry]) -> tuple[list[ClipEntry], list[str]]:
    """Split entries into usable ones and one-line problems (file + problem), checking what is cheap to check.

    A clip is unusable when its path leaves the dataset folder (a manifest of another dataset), it is missing,
    not a regular file, empty or has no readable audio header, or its caption JSON is missing or invalid.
    A path listed twice is used once. Audio content (e.g. NaN samples) is checked when the clip is read.
    """
    import soundfile as sf

    good: list[ClipEntry] = []
    problems: list[str] = []
    seen: set[str] = set()
    base = root.resolve()
    for entry in entries:
        path = root / entry.path
        if entry.path in seen:
            problems.append(f"{entry.path}: listed more than once in the manifest (used once)")
            continue
        seen.add(entry.path)
        try:
            inside = path.resolve().is_relative_to(base)
        except OSError:
            inside = False
        if Path(entry.path).is_absolute() or not inside:
            problems.append(f"{entry.path}: outside the dataset folder {root} (a manifest of another dataset?)")
            continue
        if not path.is_file():
            problems.append(f"{path}: listed in the manifest but " + ("not a file" if path.exists() else "missing"))
            continue
        if path.stat().st_size == 0:
            problems.append(f"{path}: empty file (0 bytes)")
            continue
        try:
            sf.info(str(path))
        except Exception as err:  # soundfile raises several types for unreadable files
            problems.append(f"{path}: cannot read audio ({str(err).splitlines()[0][:160]})")
            continue
        caption = entry.caption_path(root)
        if not caption.is_file():
            problems.append(f"{caption}: caption JSON missing")
            continue
        try:
            Caption.load(caption)
        except CaptionError as err:
            problems.append(str(err))
            continue
        good.append(entry)
    return good, problems


__all__ = [
    "AUDIO_EXTENSIONS",
    "MANIFEST_NAME",
    "CaptionError",
    "ClipEntry",
    "ManifestError",
    "load_dataset_entries",
    "read_manifest",
    "scan_dataset",
    "split_by_song",
    "write_manifest",
]
