"""A callback for the preemption test, loaded by ``fit`` in a subprocess from a config (``--allow-import preempt``)."""

from __future__ import annotations

import os
import signal
from typing import Any

from lightning.pytorch.callbacks import Callback


class StepLog(Callback):
    """Appends ``<global step> <loss>`` per optimiser step to ``path``; sends SIGTERM to its own process after
    step ``kill_after`` (a real signal, delivered as a provider's stop delivers it; 0: never)."""

    def __init__(self, path: str, kill_after: int = 0) -> None:
        self.path = path
        self.kill_after = kill_after

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = float(outputs["loss"] if isinstance(outputs, dict) else outputs)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(f"{trainer.global_step} {loss!r}\n")
        if self.kill_after and trainer.global_step == self.kill_after:
            os.kill(os.getpid(), signal.SIGTERM)
