"""A NaN/Inf loss or gradient skips the step's update (counted), and too many in a row stop the run with advice."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from tiny_run import tiny_fit


class InjectNaN(L.Callback):
    """Makes the loss NaN at the given optimiser steps (through its gradient: NaN * loss), records weights."""

    def __init__(self, steps: set[int], grad_only: bool = False) -> None:
        self.steps = steps
        self.grad_only = grad_only
        self.before: dict[int, dict[str, torch.Tensor]] = {}
        self.after: dict[int, dict[str, torch.Tensor]] = {}

    @staticmethod
    def _weights(module):
        return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before[trainer.global_step] = self._weights(module)
        if trainer.global_step in self.steps and not self.grad_only:
            original = module.forward

            def nan_forward(*args, **kwargs):
                module.forward = original
                loss, per_cb = original(*args, **kwargs)
                return loss * float("nan"), per_cb

            module.forward = nan_forward

    def on_after_backward(self, trainer, module):
        if trainer.global_step in self.steps and self.grad_only:
            p = next(p for p in module.parameters() if p.grad is not None)
            p.grad.view(-1)[0] = float("inf")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.after[trainer.global_step - 1] = self._weights(module)


@pytest.mark.parametrize("grad_only", [False, True])
def test_a_nan_step_is_skipped_and_counted(tmp_path, tiny_model_dir, tiny_dataset, capsys, grad_only):
    inject = InjectNaN({2, 3}, grad_only)
    cli = tiny_fit(tiny_model_dir, tiny_dataset, tmp_path / "run", "--trainer.max_steps", "6",
                   "--trainer.logger", "false", "--trainer.precision", "32-true", callbacks=[inject])  # fmt: skip
    guard = next(c for c in cli.trainer.callbacks if type(c).__name__ == "NonFiniteGuard")
    assert guard.skipped == 2 and guard.in_a_row == 0
    for step in range(6):
        same = all(torch.equal(inject.before[step][k], inject.after[step][k]) for k in inject.before[step])
        assert same == (step in (2, 3)), step  # skipped steps leave the weights; the others change them
        assert all(torch.isfinite(v).all() for v in inject.after[step].values())
    out = capsys.readouterr().out
    assert "step 2: non-finite loss or gradient, update skipped (1 in a row, 1 in this run)" in out
    assert "step 3: non-finite loss or gradient, update skipped (2 in a row, 2 in this run)" in out
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["callbacks"]["NonFiniteGuard"] == {"skipped": 2, "in_a_row": 0}


def test_too_many_nan_steps_in_a_row_stop_with_advice(tmp_path, tiny_model_dir, tiny_dataset):
    from musiclit.train.callbacks import NonFiniteError

    inject = InjectNaN(set(range(1, 100)))
    with pytest.raises(NonFiniteError, match=r"3 steps in a row.*lower learning rate") as err:
        tiny_fit(tiny_model_dir, tiny_dataset, tmp_path / "run", "--trainer.max_steps", "20",
                 "--trainer.logger", "false", "--trainer.precision", "32-true",
                 "--nonfinite.max_consecutive", "3", callbacks=[inject])  # fmt: skip
    assert "stopped at step 3" in str(err.value)


def test_fp16_advice_names_bf16():
    from types import SimpleNamespace

    from musiclit.train.callbacks import NonFiniteError, NonFiniteGuard

    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([float("nan"), 0.0])
    opt = torch.optim.SGD([p], lr=1.0)
    trainer = SimpleNamespace(global_step=7, is_global_zero=True, precision="16-mixed")
    guard = NonFiniteGuard(max_consecutive=1)
    with pytest.raises(NonFiniteError, match="bf16-mixed instead of 16-mixed"):
        guard.on_before_optimizer_step(trainer, None, opt)
    assert p.grad is None
