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
