"""Atomic writes (ordinary permissions, nothing half-written under the final name) and file hashes."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from musiclit.io import (
    OutputExistsError,
    atomic_folder,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_get_the_permissions_of_an_ordinary_write(tmp_path):
    old = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        atomic_write_json(tmp_path / "a.json", {"k": 1})
        atomic_write_text(tmp_path / "b.txt", "y")
        assert _mode(tmp_path / "a.json") == _mode(tmp_path / "b.txt") == _mode(plain) == 0o644
    finally:
        os.umask(old)


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "data.json"
    atomic_write_json(target, {"v": 1})

    def crash() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        crash()
    assert target.read_text(encoding="utf-8") == '{\n  "v": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]


def test_atomic_folder_replaces_only_with_force_and_never_leaves_a_partial_folder(tmp_path):
    out = tmp_path / "export"
    with atomic_folder(out) as tmp:
        (tmp / "weights.bin").write_bytes(b"1")
    assert _mode(out) == 0o777 & ~_umask()
    with pytest.raises(OutputExistsError, match="already exists"), atomic_folder(out):
        pass

    def crash() -> None:
        with atomic_folder(out, force=True) as tmp:
            (tmp / "weights.bin").write_bytes(b"2")
            raise RuntimeError("crash while exporting")

    with pytest.raises(RuntimeError):
        crash()
    assert (out / "weights.bin").read_bytes() == b"1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    with atomic_folder(out, force=True) as tmp:
        (tmp / "weights.bin").write_bytes(b"2")
    assert (out / "weights.bin").read_bytes() == b"2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_file_sha256_matches_hashlib_across_block_boundaries(tmp_path):
    data = os.urandom((1 << 20) * 2 + 123)
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    """Two real writers stop inside an atomic file and an atomic folder write: the one that was SIGKILLed
    leaves temporaries, the next write into that folder removes them; the running writer's stay, as do a
    recent one from another host, other hidden files, and the old format; another host's stale one goes."""
    import signal
    import subprocess
    import sys
    import time

    from musiclit.io import ORPHAN_AGE_S

    child = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from musiclit.io import atomic_folder, atomic_path\n"
        "folder = Path(sys.argv[1])\n"
        "with atomic_path(folder / 'last.ckpt') as tmp, atomic_folder(folder / 'adapter', force=True) as d:\n"
        "    tmp.write_bytes(b'x' * 1000)\n"
        "    (d / 'w.bin').write_bytes(b'y')\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(120)\n"
    )
    writers = [subprocess.Popen([sys.executable, "-c", child, str(tmp_path)], stdout=subprocess.PIPE, text=True)
               for _ in range(2)]  # fmt: skip
    try:
        for proc in writers:
            assert proc.stdout.readline().strip() == "ready"
        killed, running = writers
        temporaries = {p.name for p in tmp_path.iterdir()}
        assert len(temporaries) == 4, temporaries  # a .tmp and a .partial- folder each
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        foreign_new = tmp_path / ".last.ckpt.abcdef-123-0a1b2c3d.tmp"
        foreign_old = tmp_path / ".last.ckpt.abcdef-124-0a1b2c3d.tmp"
        old_format = tmp_path / ".last.ckpt.0a1b2c3d.tmp"
        other = tmp_path / ".hidden-notes.txt"
        for path in (foreign_new, foreign_old, old_format, other):
            path.write_text("z")
        stale = time.time() - ORPHAN_AGE_S - 60
        os.utime(foreign_old, (stale, stale))

        atomic_write_text(tmp_path / "report.txt", "done")

        left = {p.name for p in tmp_path.iterdir()}
        tag = f"-{running.pid}-"
        assert {n for n in temporaries if tag in n} <= left  # the running writer's
        assert not {n for n in temporaries if f"-{killed.pid}-" in n} & left  # the killed writer's
        assert {foreign_new.name, old_format.name, other.name, "report.txt"} <= left
        assert foreign_old.name not in left
        assert len(left) == 6, left
    finally:
        for proc in writers:
            proc.kill()
            proc.wait(timeout=30)
