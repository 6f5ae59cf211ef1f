"""Checkpoint files that a crash cannot corrupt and that cannot run code when they are read back.

Lightning 2.6's ``TorchCheckpointIO`` writes through an fsspec transaction: the bytes go to a temporary
file made by ``tempfile.mkstemp`` (in ``/tmp``, often another file system) that is then *moved* onto the
checkpoint's name, which across file systems is a copy into the final path, and nothing is synced to
disk. A kill or power loss during that copy leaves a truncated ``last.ckpt``. :class:`AtomicCheckpointIO`
writes beside the destination, syncs, and renames (:func:`musiclit.io.atomic_path`), so ``last.ckpt`` is
always a complete checkpoint, old or new; reading uses ``weights_only=True`` (a ``--ckpt_path`` from
someone else cannot run code: musiclit checkpoints hold only containers and tensors).
"""

from __future__ import annotations

from typing import Any

from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from musiclit.io import atomic_path, load_tensors


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic, synced writes and ``weights_only`` reads (local paths)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` through a synced temporary file renamed into place."""
        if "://" in str(path):  # remote storage: Lightning's own transactional upload
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        import torch

        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path: _PATH, map_location: Any = None, weights_only: bool | None = None) -> dict:
        """Read a checkpoint with ``weights_only=True`` (a clear error names a file that is not plain data)."""
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_tensors(path, "checkpoint")
