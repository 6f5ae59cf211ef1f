"""Train/eval modes under ``fit`` and gradient checkpointing that really recomputes.

transformers' ``from_pretrained`` returns a model in eval mode and Lightning (2.2+) keeps the modes it
finds, so these are checked inside a real ``fit`` at its first training batch, not on a module built by hand.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from tiny_run import tiny_fit

from musiclit.train.module import MusicGenModule

FAST = ("--data.batch_size", "2", "--trainer.precision", "32-true", "--trainer.logger", "false")
FROZEN = ("text_encoder", "audio_encoder")


def frozen_part(name: str) -> bool:
    return any(f".{part}" in f".{name}" for part in FROZEN)


class ModesAtFirstBatch(Callback):
    def __init__(self):
        self.modes = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.modes is None:
            self.modes = {name: (m.training, any(p.requires_grad for p in m.parameters(recurse=False)))
                          for name, m in pl_module.named_modules()}  # fmt: skip
            layer = pl_module.base.decoder.model.decoder.layers[0]
            self.layer_checkpointing = layer.gradient_checkpointing


@pytest.mark.parametrize("lora", ["qv", "null"])
def test_fit_trains_the_decoder_in_train_mode_and_keeps_frozen_encoders_in_eval(
    tiny_model_dir, tiny_dataset, tmp_path, lora
):
    """At the first training batch of `fit`: every module outside T5/EnCodec (every one with trainable
    weights, the decoder stack, its layers) is in train mode; every module of T5 and EnCodec is in eval."""
    spy = ModesAtFirstBatch()
    lora_args = ("--model.lora", "null") if lora == "null" else ("--model.lora.target_modules", lora)
    tiny_fit(tiny_model_dir, tiny_dataset, tmp_path, *FAST, *lora_args, "--trainer.max_steps", "1",
             "--model.gradient_checkpointing", "true", callbacks=[spy])  # fmt: skip
    modes = spy.modes
    assert spy.layer_checkpointing
    trainable = [n for n, (_, has_grad) in modes.items() if has_grad]
    assert trainable and all(modes[n][0] for n in trainable), [n for n in trainable if not modes[n][0]]
    in_eval = sorted(n for n, (training, _) in modes.items() if not training)
    assert in_eval and all(frozen_part(n) for n in in_eval), [n for n in in_eval if not frozen_part(n)][:5]
    assert all(not training for n, (training, _) in modes.items() if frozen_part(n))
    for name in ("model.base_model.model.decoder.model.decoder", "model.decoder.model.decoder"):
        if name in modes:
            assert modes[name][0] and modes[name + ".layers.0"][0]


class EvalLayerAfterSanityCheck(Callback):
    """Puts a decoder layer into eval mode after the modes were set, as a bug elsewhere would."""

    def on_sanity_check_end(self, trainer, pl_module):
        pl_module.base.decoder.model.decoder.layers[0].eval()


def _eval_mode_warnings(records):
    return [str(r.message) for r in records if "module(s) in eval mode" in str(r.message)]


def test_lightning_eval_mode_warning_is_hidden_only_for_the_frozen_encoders(tiny_model_dir, tiny_dataset, tmp_path):
    """Lightning warns about every module in eval mode at the start of training. musiclit hides that warning
    only when the modules in eval are exactly the frozen T5 and EnCodec; any other module in eval is reported."""
    args = (*FAST, "--trainer.max_steps", "1", "--trainer.num_sanity_val_steps", "1")
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        tiny_fit(tiny_model_dir, tiny_dataset, tmp_path / "ok", *args)
    assert _eval_mode_warnings(records) == []
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        tiny_fit(tiny_model_dir, tiny_dataset, tmp_path / "bad", *args, callbacks=[EvalLayerAfterSanityCheck()])
    assert len(_eval_mode_warnings(records)) == 1


def test_quiet_libraries_does_not_hide_the_eval_mode_warning():
    from musiclit.io import quiet_libraries

    quiet_libraries()
    with warnings.catch_warnings(record=True) as records:
        from lightning.pytorch.utilities import rank_zero_warn
        from lightning.pytorch.utilities.warnings import PossibleUserWarning

        rank_zero_warn("Found 3 module(s) in eval mode at the start of training.", category=PossibleUserWarning)
    assert _eval_mode_warnings(records)


class StepMeter(Callback):
    """Per training step: forward calls of decoder layer 0's fc1 (2 when the layer is recomputed in the
    backward) and the bytes autograd holds for the backward (unique storages, parameters excluded), taken
    with saved_tensors_hooks between the start of the step and the backward."""

    def __init__(self):
        self.calls, self.saved_bytes, self._count = [], [], 0

    def on_train_start(self, trainer, pl_module):
        fc1 = pl_module.base.decoder.model.decoder.layers[0].fc1
        fc1.register_forward_hook(lambda *_: setattr(self, "_count", self._count + 1))
        self._params = {p.untyped_storage().data_ptr() for p in pl_module.parameters()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._count, self._storages = 0, {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in self._params:
                self._storages[storage.data_ptr()] = storage.nbytes()
            return t

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()

    def on_before_backward(self, trainer, pl_module, loss):
        self._hooks.__exit__(None, None, None)
        self.saved_bytes.append(sum(self._storages.values()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.calls.append(self._count)


@pytest.fixture(scope="module")
def wider_model_dir(tmp_path_factory):
    """A tiny MusicGen whose decoder layers, not its 2048-way heads, hold most activations (128 x 4 layers)."""
    from musiclit.model.musicgen import create_tiny_model_folder

    return create_tiny_model_folder(tmp_path_factory.mktemp("wider"), seed=0, hidden_size=128, num_layers=4,
                                    ffn_dim=512)  # fmt: skip


def test_fit_with_checkpointing_recomputes_layers_and_holds_less_for_backward(wider_model_dir, tiny_dataset, tmp_path):
    meters = {}
    for gc in (False, True):
        meters[gc] = StepMeter()
        tiny_fit(wider_model_dir, tiny_dataset, tmp_path / str(gc), *FAST, "--trainer.max_steps", "2",
                 "--model.gradient_checkpointing", str(gc).lower(), "--model.lora.target_modules", "all-linear",
                 callbacks=[meters[gc]])  # fmt: skip
    assert meters[False].calls == [1, 1]
    assert meters[True].calls == [2, 2]  # layer 0 runs again in the backward
    off, on = meters[False].saved_bytes, meters[True].saved_bytes
    print(f"bytes held for backward per step: checkpointing off {off}, on {on}")
    assert all(b < 0.6 * a for a, b in zip(off, on, strict=True)), (off, on)


def test_in_training_samples_leave_every_module_in_its_mode(tiny_model_dir):
    """The sample logger generates with the training model: afterwards the frozen encoders are still in eval
    mode and the decoder in train mode (a plain `model.train(was_training)` would put T5 into train mode)."""
    from musiclit.infer.sampler import GenerationParams
    from musiclit.train.callbacks import SampleLogger, eval_mode

    module = MusicGenModule(str(tiny_model_dir)).train()
    before = {name: m.training for name, m in module.named_modules()}
    gen = SampleLogger(prompts=["calm"])._generator(module)  # what the sample logger samples with
    with eval_mode(module):
        assert not any(m.training for m in module.modules())
        codes = gen.generate_codes(["calm"], GenerationParams(seconds=0.1, adapter_scale=0.0))
    assert codes.shape[0] == 1
    assert {name: m.training for name, m in module.named_modules()} == before
