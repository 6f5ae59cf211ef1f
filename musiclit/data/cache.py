"""The codec token cache (built by ``fit`` or ``python -m musiclit cache``).

EnCodec is frozen, so a clip's codes never change: each clip is encoded once, whole, and training crops
the cached codes (at the codec's 50 Hz frame rate) instead of running the codec every step. Files longer
than 30 s (full songs) are encoded in windows with bounded memory that compute the whole file's codes
(:func:`musiclit.model.codec.encoder_windowed`).

Layout (default root ``<data_dir>/.musiclit-cache``, shared by every run with the same codec)::

    <root>/<codec-id>/
      codec.json                 what the id was computed from (codec config, weights hash, channels)
      shard-<stamp>-<rand>.bin   int16 codes of many clips, each (K, T) row-major, back to back
      shard-<stamp>-<rand>.jsonl the shard's index: one line per clip (content key, offset, K, T, file stat)

* ``codec-id`` = sha256 of the codec config, its weights, the channel layout and the cache format: another
  codec (or another checkpoint of it) gets another folder; the same codec shares one.
* An entry's key is the sha256 of the audio file's bytes. A changed file has a new key, so exactly its
  entry stops matching and is re-encoded; other entries stay valid. The (path, size, mtime) of the file
  when it was hashed is stored beside the key and used as a fast path on later runs
  (``verify=True`` re-hashes every file instead).
* A shard becomes visible only when its index is renamed into place, after its codes were written and
  synced: a crash leaves at most an orphan ``.bin`` / ``.tmp`` file, never an entry that looks valid.
  Readers also check every entry lies inside its ``.bin`` file. The next process that opens a shard
  removes the orphans whose writer is gone (the shard's name carries its writer's host and pid).
* Codes are < 2048 and stored as int16 (2 bytes per code): 1,000 hours of 4-codebook audio are 1.4 GB,
  memory-mapped at train time (nothing is loaded up front; workers share the page cache).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from musiclit.errors import MusiclitError
from musiclit.io import atomic_write_json, atomic_write_text, crash_point, file_sha256, writer_gone, writer_tag
from musiclit.model.codec import CodecTokenizer

CACHE_DIRNAME = ".musiclit-cache"
SHARD_BYTES = 512 * 1024 * 1024  # a shard is closed (committed) when its codes reach this size
SHARD_ENTRIES = 512  # ... or after this many clips, so an interrupted build keeps most of its work


class CacheError(MusiclitError, RuntimeError):
    """A token cache that cannot be used; the message names the folder and the problem."""


@dataclass
class CacheEntry:
    """Where one clip's codes are: shard file, element offset, shape (K, T)."""

    key: str
    shard: Path
    offset: int
    codebooks: int
    frames: int


class TokenCache:
    """The cache folder of one codec: lookup by content key, memory-mapped reads, atomic shard writes.

    Args:
        root: Cache root (the codec's folder is created inside it).
        codec_id: The codec's identity (:attr:`CodecTokenizer.id`).
    """

    def __init__(self, root: str | os.PathLike[str], codec_id: str) -> None:
        self.root = Path(root)
        self.folder = self.root / codec_id
        self.codec_id = codec_id
        self.entries: dict[str, CacheEntry] = {}
        self.stats: dict[tuple[str, int, int], str] = {}  # (abs path, size, mtime_ns) -> content key
        self._maps: dict[Path, np.memmap] = {}
        self.reload()

    # -------------------------------------------------------------- reading
    def reload(self) -> None:
        """Read every committed shard index (skipping entries that fall outside their codes file)."""
        self.entries.clear()
        self.stats.clear()
        if not self.folder.is_dir():
            return
        for index in sorted(self.folder.glob("shard-*.jsonl")):
            shard = index.with_suffix(".bin")
            if not shard.is_file():
                continue
            size = shard.stat().st_size // 2
            for line in index.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                rec = json.loads(line)
                entry = CacheEntry(rec["key"], shard, int(rec["offset"]), int(rec["k"]), int(rec["t"]))
                if entry.offset + entry.codebooks * entry.frames > size:
                    continue  # truncated codes file: never serve it
                self.entries[entry.key] = entry
                if "stat" in rec:
                    self.stats[tuple(rec["stat"])] = entry.key  # type: ignore[index]

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> np.ndarray:
        """The (K, T) int16 codes of a clip, memory-mapped (read-only)."""
        entry = self.entries[key]
        data = self._maps.get(entry.shard)
        if data is None:
            data = np.memmap(entry.shard, dtype=np.int16, mode="r")
            self._maps[entry.shard] = data
        count = entry.codebooks * entry.frames
        return data[entry.offset : entry.offset + count].reshape(entry.codebooks, entry.frames)

    def __getstate__(self) -> dict[str, Any]:  # worker processes open their own maps
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    @staticmethod
    def _stat(path: Path) -> tuple[str, int, int]:
        st = path.stat()
        return (str(path.resolve()), int(st.st_size), int(st.st_mtime_ns))

    def key_for(self, path: str | os.PathLike[str], verify: bool = False) -> str:
        """Content key of an audio file: the stored one when (path, size, mtime) match, else its sha256."""
        path = Path(path)
        if not verify:
            known = self.stats.get(self._stat(path))
            if known is not None:
                return known
        return file_sha256(path)

    # -------------------------------------------------------------- writing
    def build(
        self,
        paths: Sequence[str | os.PathLike[str]],
        tokenizer: CodecTokenizer,
        read: Callable[[Path], np.ndarray],
        verify: bool = False,
        progress: bool = True,
    ) -> list[str]:
        """Encode the files that are not cached yet; return every file's content key (in order).

        Args:
            paths: Audio files.
            tokenizer: The codec (must be the one this cache folder belongs to).
            read: Reads a whole file as (C, S) float32 at the codec's rate and channels.
            verify: Re-hash every file instead of trusting (path, size, mtime).
            progress: Show a tqdm progress bar while encoding.
        """
        if tokenizer.id != self.codec_id:
            raise CacheError(f"{self.folder}: codec {tokenizer.id} cannot write into the cache of {self.codec_id}")
        paths = [Path(p) for p in paths]
        keys = [self.key_for(p, verify) for p in paths]
        todo: dict[str, Path] = {}
        for path, key in zip(paths, keys, strict=True):
            if key not in self.entries and key not in todo:
                todo[key] = path
        if todo:
            self._write_identity(tokenizer)
            self._encode_all(todo, tokenizer, read, progress)
        return keys

    def _write_identity(self, tokenizer: CodecTokenizer) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / "codec.json"
        if not meta.exists():
            atomic_write_json(meta, tokenizer.identity, indent=1, default=str)

    def _encode_all(
        self, todo: dict[str, Path], tokenizer: CodecTokenizer, read: Callable[[Path], np.ndarray], progress: bool
    ) -> None:
        import torch
        from tqdm import tqdm

        codec, moved = tokenizer.codec, False
        if codec is not None and torch.cuda.is_available() and next(codec.parameters()).device.type == "cpu":
            codec.to("cuda")
            moved = True
        writer = _ShardWriter(self.folder)
        try:
            desc = getattr(tokenizer, "label", None) or f"token cache ({tokenizer.id[:8]})"
            bar = tqdm(todo.items(), total=len(todo), desc=desc, unit="clip", disable=not progress, leave=False)
            for key, path in bar:
                stat = self._stat(path)
                codes = tokenizer.encode(read(path))
                writer.add(key, codes, {"stat": list(stat), "path": path.name})
                crash_point("encoded", path)  # the kill tests' hook (no-op unless $MUSICLIT_CRASH_AT names it)
            writer.commit()
        finally:
            writer.abort()
            if moved:
                codec.to("cpu")
        self.reload()


class _ShardWriter:
    """Appends codes to a new shard; commits (sync codes, then rename the index in) in batches."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.fh: Any = None
        self.records: list[dict[str, Any]] = []
        self.count = 0
        self.stem = ""

    def _open(self) -> None:
        remove_orphan_shards(self.folder)
        self.stem = f"shard-{time.strftime('%Y%m%d%H%M%S')}-{writer_tag()}-{secrets.token_hex(6)}"
        self.fh = open(self.folder / f"{self.stem}.bin", "wb")  # noqa: SIM115 - closed in commit/abort
        self.records, self.count = [], 0

    def add(self, key: str, codes: np.ndarray, extra: dict[str, Any]) -> None:
        if self.fh is None:
            self._open()
        codes = np.ascontiguousarray(codes, dtype=np.int16)
        self.fh.write(codes.tobytes())
        self.records.append({"key": key, "offset": self.count, "k": codes.shape[0], "t": codes.shape[1], **extra})
        self.count += codes.size
        if self.count * 2 >= SHARD_BYTES or len(self.records) >= SHARD_ENTRIES:
            self.commit()

    def commit(self) -> None:
        if self.fh is None:
            return
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        self.fh = None
        index = self.folder / f"{self.stem}.jsonl"
        # the commit point: the entries exist once the index is renamed into place
        atomic_write_text(index, "".join(json.dumps(r) + "\n" for r in self.records))
        self.records = []

    def abort(self) -> None:
        """Drop an uncommitted shard (after an error)."""
        if self.fh is not None:
            self.fh.close()
            self.fh = None
            (self.folder / f"{self.stem}.bin").unlink(missing_ok=True)


def remove_orphan_shards(folder: Path) -> list[Path]:
    """Remove the codes files of shards that were never committed (no index) and whose writer is gone
    (:func:`musiclit.io.writer_gone`: a process killed while it encoded); return them."""
    removed = []
    for shard in folder.glob("shard-*.bin"):
        try:
            mtime = shard.stat().st_mtime
        except FileNotFoundError:
            continue
        if not shard.with_suffix(".jsonl").exists() and writer_gone(shard.name, mtime):
            shard.unlink(missing_ok=True)
            removed.append(shard)
    return removed


def default_cache_root(data_dir: str | os.PathLike[str]) -> Path:
    """``<data_dir>/.musiclit-cache`` when the dataset folder is writable, else the user cache folder."""
    data_dir = Path(data_dir)
    if os.access(data_dir, os.W_OK):
        return data_dir / CACHE_DIRNAME
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "musiclit" / "tokens"


def cached_keys(
    data_root: Path, rel_paths: Iterable[str], cache: TokenCache, tokenizer: CodecTokenizer, verify: bool = False,
    progress: bool = True,
) -> list[str]:  # fmt: skip
    """Build missing entries for clips of a dataset folder and return their keys (reads with the codec's rate)."""
    from musiclit.data.audio import read_audio

    def read(path: Path) -> np.ndarray:
        return read_audio(path, tokenizer.sample_rate, tokenizer.channels)

    return cache.build([data_root / p for p in rel_paths], tokenizer, read, verify=verify, progress=progress)
