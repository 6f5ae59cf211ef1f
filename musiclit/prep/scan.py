"""Step 1: find the songs of a folder, hash their content, and read the user's own descriptions.

The input folder is only ever opened for reading.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from musiclit.data.caption import Caption, CaptionError
from musiclit.io import atomic_write_json, file_sha256

# Audio that soundfile (libsndfile 1.2) decodes; other audio-looking files are reported as unsupported.
DECODABLE_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".aiff", ".aif", ".aifc", ".w64", ".rf64", ".caf")
UNSUPPORTED_AUDIO_EXTENSIONS = (".m4a", ".aac", ".mp4", ".wma", ".opus", ".ape", ".alac", ".ac3", ".mka", ".webm")
SIDECAR_EXTENSIONS = (".txt", ".json")


@dataclass
class Skip:
    """A file or song that produced no clips, with the reason.

    Attributes:
        path: Path relative to the input folder.
        reason: Short reason code, e.g. "undecodable", "silent", "duplicate".
        message: Readable explanation.
        value: Measured value, when the reason is a threshold.
        threshold: The threshold it crossed.
    """

    path: str
    reason: str
    message: str
    value: float | None = None
    threshold: float | None = None


@dataclass
class SourceSong:
    """One audio file of the input folder.

    Attributes:
        path: Absolute path.
        rel: Path relative to the input folder (POSIX).
        sha: SHA-256 of the file's bytes.
        size: Size in bytes.
        user: The user's own labels/description for it (sidecar .txt/.json or CSV), possibly empty.
        user_source: Where ``user`` came from.
    """

    path: Path
    rel: str
    sha: str
    size: int
    user: dict = field(default_factory=dict)
    user_source: str | None = None


class HashCache:
    """Content hashes remembered by (path, size, mtime), so that a re-run does not re-read every file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, list] = {}
        if path is not None and path.exists():
            try:
                self.data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.data = {}

    def sha(self, file: Path) -> str:
        """Hash of ``file``, from the cache when its size and mtime are unchanged."""
        st = file.stat()
        key = str(file.resolve())
        hit = self.data.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        sha = file_sha256(file)
        self.data[key] = [st.st_size, st.st_mtime_ns, sha]
        return sha

    def save(self) -> None:
        """Write the cache (no-op without a path)."""
        if self.path is not None:
            atomic_write_json(self.path, self.data)


def read_descriptions_csv(path: Path) -> dict[str, str]:
    """Read a CSV of ``path,description`` rows (a header row is optional).

    Returns:
        Mapping of the path as written (POSIX separators) to the description.

    Raises:
        ValueError: The file cannot be read or a row has fewer than two columns.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the descriptions CSV ({err})") from None
    out: dict[str, str] = {}
    for lineno, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) < 2:
            raise ValueError(f"{path}:{lineno}: expected 'path,description', got {row!r}")
        key, desc = row[0].strip(), ",".join(row[1:]).strip()
        if lineno == 1 and key.lower() in ("path", "file", "filename") and desc.lower().startswith("description"):
            continue
        out[key.replace("\\", "/")] = desc
    return out


def _sidecar(audio: Path) -> tuple[dict, str | None, str | None]:
    """The user's description from ``<stem>.json`` or ``<stem>.txt`` beside a song; (data, source, error)."""
    js = audio.with_suffix(".json")
    if js.is_file():
        try:
            caption = Caption.load(js)
        except CaptionError as err:
            return {}, None, str(err)
        return caption.to_dict(), str(js), None
    txt = audio.with_suffix(".txt")
    if txt.is_file():
        try:
            text = txt.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            return {}, None, f"{txt}: cannot read the description ({err})"
        if text:
            return {"description": " ".join(text.split())}, str(txt), None
    return {}, None, None


def _not_a_file(path: Path) -> str:
    """Why ``path`` (named like audio) is not a file musiclit can read."""
    if path.is_symlink():
        try:
            path.stat()
        except OSError as err:
            return f"a symbolic link that leads nowhere ({err.strerror or err})"
    if path.is_dir():
        return "a folder, not an audio file"
    return "not a regular file (a pipe, socket or device: reading it could block)"


def scan_input(
    root: Path, hash_cache: HashCache | None = None, descriptions_csv: Path | None = None
) -> tuple[list[SourceSong], list[Skip], list[str]]:
    """Find the audio files under ``root`` (recursively).

    Args:
        root: Input folder.
        hash_cache: Cache of content hashes (optional).
        descriptions_csv: CSV of path -> description; its paths are relative to ``root`` (or bare
            file names, matched when unique).

    Returns:
        ``(songs, skips, warnings)``: decodable-looking files sorted by path, files skipped up front
        (unsupported formats, empty files), and warnings (unreadable sidecars, unmatched CSV rows).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: input folder not found")
    cache = hash_cache or HashCache(None)
    csv_rows = read_descriptions_csv(descriptions_csv) if descriptions_csv else {}
    songs: list[SourceSong] = []
    skips: list[Skip] = []
    warnings: list[str] = []
    files = sorted(p for p in root.rglob("*") if not p.name.startswith("."))
    for path in files:
        rel = path.relative_to(root).as_posix()
        ext = path.suffix.lower()
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:  # held as surrogate escapes; the audio libraries cannot open it by name
            if ext in DECODABLE_EXTENSIONS + UNSUPPORTED_AUDIO_EXTENSIONS:
                shown = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                skips.append(Skip(shown, "bad_name", "the file name is not valid UTF-8: rename the file"))
            continue
        if not path.is_file():  # a broken link or link loop, a folder, a pipe or device named like audio
            if ext in DECODABLE_EXTENSIONS + UNSUPPORTED_AUDIO_EXTENSIONS:
                skips.append(Skip(rel, "not_a_file", _not_a_file(path)))
            continue
        if ext in UNSUPPORTED_AUDIO_EXTENSIONS:
            skips.append(Skip(rel, "unsupported", f"{ext} files cannot be decoded (convert to flac, wav or mp3)"))
            continue
        if ext not in DECODABLE_EXTENSIONS:
            continue  # sidecars, images, playlists...
        size = path.stat().st_size
        if size == 0:
            skips.append(Skip(rel, "empty", "empty file (0 bytes)"))
            continue
        try:
            sha = cache.sha(path)
        except OSError as err:
            skips.append(Skip(rel, "unreadable", f"cannot read the file ({err.strerror or err})"))
            continue
        user, source, error = _sidecar(path)
        if error:
            warnings.append(error)
        song = SourceSong(path=path, rel=rel, sha=sha, size=size, user=user, user_source=source)
        songs.append(song)
    if csv_rows:
        by_rel = {s.rel: s for s in songs}
        by_name: dict[str, list[SourceSong]] = {}
        for s in songs:
            by_name.setdefault(Path(s.rel).name, []).append(s)
        for key, desc in csv_rows.items():
            target = by_rel.get(key.lstrip("./"))
            if target is None:
                try:
                    target = by_rel.get(Path(key).resolve().relative_to(root.resolve()).as_posix())
                except ValueError:
                    target = None
            if target is None and len(by_name.get(Path(key).name, [])) == 1:
                target = by_name[Path(key).name][0]
            if target is None:
                warnings.append(f"{descriptions_csv}: no song matches '{key}'")
                continue
            if "description" not in target.user:  # a sidecar beside the song is more specific
                target.user = {**target.user, "description": desc}
                target.user_source = str(descriptions_csv)
    return songs, skips, warnings


def slugify(text: str, limit: int = 40) -> str:
    """A file-name-safe lower-case slug (ASCII letters, digits and dashes)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "song"


def song_id_for(song: SourceSong) -> str:
    """Readable, content-keyed song id: ``<slug of the file name>-<first 8 hex of the hash>``."""
    return f"{slugify(Path(song.rel).stem)}-{song.sha[:8]}"


__all__ = [
    "DECODABLE_EXTENSIONS",
    "HashCache",
    "Skip",
    "SourceSong",
    "read_descriptions_csv",
    "scan_input",
    "slugify",
    "song_id_for",
]
