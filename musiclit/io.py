"""File helpers every layer uses: atomic writes, content hashes, quiet library logs.

Atomic writes go through a temporary file in the destination folder that is flushed to disk (``fsync``)
and renamed over the destination, then the folder entry itself is synced: a crash leaves either the old
file or the new one, never a half-written file under the final name. Files get the ordinary permissions
(``0666`` minus the umask, like ``open(..., "w")``), not the private ``0600`` of ``mkstemp``.

A temporary name carries its writer (``.<name>.<host>-<pid>-<random>.tmp``, ``.<name>.partial-<host>-<pid>-*``),
so the temporaries of a killed process do not pile up: the first atomic write of a process into a folder
removes those whose writer is gone (same host, process no longer running) or that nobody has touched for
:data:`ORPHAN_AGE_S` (any host: a pod restarted in a new container has another host name).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from musiclit.errors import MusiclitError

HASH_BLOCK = 1 << 20
CRASH_ENV = "MUSICLIT_CRASH_AT"
_crash_counts: dict[str, int] = {}
ORPHAN_AGE_S = 6 * 3600  # a temporary nobody has written to for this long is an orphan, whoever made it
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_TEMP = re.compile(r"^\..+\.(?:partial-)?([0-9a-f]{6})-(\d+)-[^/]*$")
_swept: set[tuple[int, str]] = set()


class OutputExistsError(MusiclitError, FileExistsError):
    """An output that exists and may only be replaced when the user says so (``--force``)."""


def crash_point(stage: str, path: str | os.PathLike[str]) -> None:
    """Kill this process (SIGKILL) here when ``$MUSICLIT_CRASH_AT`` names this point: the kill tests' hook.

    ``MUSICLIT_CRASH_AT=<stage>:<file name>:<n>`` kills the process the ``n``-th time (1-based) that the
    stage is reached for a file of that name (``*``: any file), e.g. ``written:last.ckpt:3`` while the third
    ``last.ckpt`` is complete in its temporary file but not yet renamed. Without the variable this does nothing.
    """
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    want_stage, _, rest = spec.partition(":")
    name, _, count = rest.rpartition(":")
    if want_stage != stage or name not in ("*", Path(path).name):
        return
    key = f"{stage}:{name}"
    _crash_counts[key] = _crash_counts.get(key, 0) + 1
    if str(_crash_counts[key]) == count:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a written file's content to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def writer_tag() -> str:
    """``<host>-<pid>`` of this process, for names of files that are complete only when it finishes them
    (:func:`writer_gone` tells later whether that writer still runs)."""
    return f"{_HOST}-{os.getpid()}"


_TAG = re.compile(r"(?:^|[.-])([0-9a-f]{6})-(\d+)-")


def writer_gone(name: str, mtime: float) -> bool:
    """Whether the writer named in ``name`` (by :func:`writer_tag`) is gone: it ran on this host and runs no
    more, or (any host) the file was last written :data:`ORPHAN_AGE_S` ago. False for a name without a tag."""
    match = _TAG.search(name)
    if match is None or os.name == "nt":  # Windows: no cheap test whether a process runs
        return False
    host, pid = match.group(1), int(match.group(2))
    if time.time() - mtime > ORPHAN_AGE_S:
        return True
    return host == _HOST and pid != os.getpid() and not _running(pid)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def remove_orphan_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the atomic writes' temporary files and folders in ``folder`` whose writer is gone; return them.

    Gone: see :func:`writer_gone`. Temporaries of running processes, other files and names of other formats
    are left.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if _TEMP.match(entry.name) is None or not (entry.name.endswith(".tmp") or ".partial-" in entry.name):
            continue
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if writer_gone(entry.name, mtime):
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _sweep_once(folder: Path) -> None:
    """:func:`remove_orphan_temporaries` on the first atomic write of this process into ``folder``."""
    key = (os.getpid(), str(folder.resolve()))
    if key not in _swept:
        _swept.add(key)
        remove_orphan_temporaries(folder)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it is synced and renamed to ``path``.

    Anything that writes a file by name (``soundfile.write``, ``torch.save``, ``Path.write_text``) writes
    atomically through it. On an error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(path.parent)
    tmp = path.with_name(f".{path.name}.{writer_tag()}-{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        fsync_file(tmp)
        tmp.chmod(0o666 & ~_umask())
        crash_point("written", path)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (a non-UTF-8 file name in it is shown as ``\\xe9``)."""
    atomic_write_bytes(path, text.encode("utf-8", "backslashreplace"))


def atomic_write_json(
    path: str | os.PathLike[str], data: Any, indent: int | None = 2, default: Callable[[Any], Any] | None = None
) -> None:
    """Write ``data`` as JSON (UTF-8, a trailing newline) to ``path`` atomically.

    A string that is not valid Unicode (a file name that is not UTF-8, held by Python as surrogate escapes)
    is written as a JSON ``\\udcXX`` escape, which reads back as the same string (and so the same file).
    """
    text = json.dumps(data, indent=indent, ensure_ascii=False, default=default)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(data, indent=indent, ensure_ascii=True, default=default)
    atomic_write_text(path, text + "\n")


@contextlib.contextmanager
def atomic_folder(out: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``out`` only when the block succeeds.

    The folder is built beside ``out`` (same file system), its files synced, then renamed into place; an
    existing ``out`` is replaced only with ``force``. A crash leaves a hidden ``.<name>.partial-*`` folder,
    never a half-written folder under the final name; a crash between moving the old folder aside
    (``.<name>.old``) and renaming the new one leaves the old one, put back by the next call.

    Raises:
        OutputExistsError: ``out`` exists and ``force`` is False.
    """
    out = Path(out)
    old = out.with_name(f".{out.name}.old")
    if not out.exists() and old.is_dir():  # a crash between the two renames below: the old folder comes back
        old.rename(out)
    if out.exists() and not force:
        raise OutputExistsError(f"{out}: already exists (use --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{writer_tag()}-", dir=out.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; an output folder is an ordinary folder
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                fsync_file(file)
        crash_point("written", out)
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            crash_point("swapping", out)
        tmp.rename(out)
        fsync_dir(out.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class UnsafeFileError(MusiclitError, ValueError):
    """A pickle-based file (``.ckpt``, ``.bin``, ``.th``) that holds more than tensors and plain values.

    Opening such a file would run code that its author chose, so musiclit refuses it.
    """


def load_tensors(path: str | os.PathLike[str], what: str = "file", hint: str = "") -> Any:
    """``torch.load`` a pickle-based file with ``weights_only=True``: tensors and plain containers only.

    A file made by someone else cannot run code when it is opened: a pickle that names any other object
    (a class to construct, a function to call) is refused before any of it runs.

    Args:
        path: The file.
        what: What the file should be, for the message ("checkpoint", "adapter weights", ...).
        hint: Appended to the message of a refused file (e.g. how to open it anyway).

    Raises:
        UnsafeFileError: The file holds objects other than tensors and plain values.
        MusiclitError: The file is missing or is not a readable torch file.
    """
    import pickle

    import torch

    path = Path(path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MusiclitError(f"{path}: no such {what}") from None
    except pickle.UnpicklingError as err:
        lines = str(err).strip().splitlines() or [""]
        detail = next((line.strip() for line in lines if "GLOBAL" in line.upper()), None)
        if detail is None:  # not a forbidden object: the bytes are simply not a torch file
            raise MusiclitError(f"{path}: cannot read the {what} (not a torch file, or a damaged one)") from None
        raise UnsafeFileError(
            f"{path}: refused to open this {what}: it holds objects other than tensors and plain values, and "
            f"opening it could run code its author chose ({detail[:200]}){hint}"
        ) from None
    except Exception as err:
        raise MusiclitError(f"{path}: cannot read the {what} ({type(err).__name__}: {str(err)[:300]})") from None


def quiet_libraries() -> None:
    """Silence library chatter that says nothing to a musiclit user.

    Each filter names a message that is expected here: the pad-token-2048 notice of MusicGen's config,
    weight-loading progress bars, Lightning's note that few loader workers are used and that a reused run
    folder is not empty (resume reuses it by design).
    """
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*pad_token_id.*")
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.INFO)
