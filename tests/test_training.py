"""The LightningModule and the fit loop on the tiny model: CFG dropout, LoRA scope, checkpoints, resume."""

from __future__ import annotations

import json
import os

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from tiny_run import CrashAt, fit_args, tiny_fit

from musiclit.model.lora import LoraSettings
from musiclit.model.musicgen import ModelLoadError
from musiclit.train.cli import build_cli
from musiclit.train.module import MusicGenModule


class LossRecorder(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


# exact-resume runs: fixed batch size, precision, optimiser, schedule and seed
EXACT = (
    "--data.batch_size", "2",
    "--trainer.precision", "32-true",
    "--trainer.num_sanity_val_steps", "0",
    "--trainer.log_every_n_steps", "1",
    "--model.optimizer", "torch.optim.AdamW",
    "--model.optimizer.lr", "0.003",
    "--model.scheduler", "musiclit.train.optim.WarmupCosine",
    "--model.scheduler.warmup_steps", "2",
    "--model.lora.dropout", "0.1",
    "--seed_everything", "0",
)  # fmt: skip


def fit(model_dir, data_dir, root, *extra, recorder=None, crash_at=None):
    """The tiny fit with EXACT; ``crash_at``: raise at the start of that global step (tiny_run.CrashAt)."""
    callbacks = ([recorder] if recorder else []) + ([CrashAt(crash_at)] if crash_at is not None else [])
    return tiny_fit(model_dir, data_dir, root, *EXACT, *extra, callbacks=callbacks)


@pytest.fixture(scope="module")
def module(tiny_model_dir):
    return MusicGenModule(str(tiny_model_dir), lora=LoraSettings())


def test_lora_adapts_only_decoder_attention(module):
    trainable = module.trainable_keys()
    assert trainable and all("lora_" in k for k in trainable)
    assert all(".decoder.model.decoder.layers." in k for k in trainable)
    assert any("encoder_attn.q_proj" in k for k in trainable) and any("self_attn.v_proj" in k for k in trainable)
    assert not any("k_proj" in k or "fc1" in k for k in trainable)
    assert not module.base.text_encoder.training and not module.base.audio_encoder.training
    module.train()
    assert not module.base.text_encoder.training and not module.base.audio_encoder.training
    assert module.base.decoder.training


def test_all_linear_preset_and_full_finetune(tiny_model_dir):
    all_linear = MusicGenModule(str(tiny_model_dir), lora=LoraSettings(target_modules="all-linear", lm_heads=True))
    keys = all_linear.trainable_keys()
    for leaf in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "lm_heads"):
        assert any(leaf in k for k in keys), leaf
    assert not any("text_encoder" in k or "audio_encoder" in k for k in keys)
    full = MusicGenModule(str(tiny_model_dir), lora=None)
    keys = full.trainable_keys()
    assert any(k.startswith("model.decoder.") for k in keys)
    assert not any("text_encoder" in k or "audio_encoder" in k or "lora" in k for k in keys)
    with pytest.raises(ValueError, match="unknown preset"):
        MusicGenModule(str(tiny_model_dir), lora=LoraSettings(target_modules="everything"))


def test_cfg_dropout_rate_is_per_sample(module, monkeypatch):
    """Count the examples whose text mask is zeroed: about 30% of them, and mixed within batches."""
    seen = []

    def capture(codes, frame_mask, text, text_mask):
        seen.append(text_mask.sum(-1) == 0)
        return torch.zeros(()), torch.zeros(4)

    monkeypatch.setattr(module, "forward", capture)
    codes = torch.zeros(8, 4, 5, dtype=torch.long)
    batch = {"codes": codes, "frame_mask": torch.ones(8, 5, dtype=torch.bool), "captions": ["a b"] * 8}
    torch.manual_seed(0)
    for _ in range(250):
        module._batch_loss(batch, 0.3)
    dropped = torch.stack(seen).float()
    assert abs(dropped.mean().item() - 0.3) < 0.03
    per_batch = dropped.mean(1)
    assert ((per_batch > 0) & (per_batch < 1)).float().mean() > 0.8  # not whole batches at once
    seen.clear()
    module._batch_loss(batch, 0.0)
    assert not seen[0].any()


def test_dropped_text_equals_unconditional_generation_input(module):
    """A dropped caption gives the same loss whatever its text was (the model sees no text at all)."""
    module.eval()
    codes = torch.randint(0, 2048, (1, 4, 6))
    fm = torch.ones(1, 6, dtype=torch.bool)
    a, am = module.encode_text(["warm folk with guitar"])
    b, bm = module.encode_text(["fast techno"])
    with torch.no_grad():
        la = module(codes, fm, a, am * 0)[0]
        lb = module(codes, fm, b, bm * 0)[0]
        lc = module(codes, fm, a, am)[0]
    assert torch.equal(la, lb) and not torch.equal(la, lc)


def test_module_loss_equals_masked_loss_on_transformers_logits(module):
    """The training step's loss (its own decoder call, one head at a time) equals the oracle-tested masked
    loss applied to the logits of transformers' standard forward on the same delayed inputs."""
    from musiclit.model.delay import build_delay_pattern, masked_codebook_loss

    module.eval()
    torch.manual_seed(3)
    codes = torch.randint(0, 2048, (2, 4, 9))
    frame_mask = torch.ones(2, 9, dtype=torch.bool)
    frame_mask[1, 6:] = False
    text, text_mask = module.encode_text(["warm folk", "a longer caption with drums"])
    text_mask[1] = 0  # one dropped caption
    inputs, labels, mask = build_delay_pattern(codes, module.special_token, module.delays, frame_mask)
    with torch.no_grad():
        loss, per_cb = module(codes, frame_mask, text, text_mask)
        logits = module.base(encoder_outputs=(text,), attention_mask=text_mask,
                             decoder_input_ids=inputs.reshape(8, -1)).logits  # fmt: skip
    want, want_cb = masked_codebook_loss(logits.reshape(2, 4, *logits.shape[1:]), labels, mask)
    assert torch.allclose(loss, want, atol=1e-5) and torch.allclose(per_cb, want_cb, atol=1e-5)


def test_text_cache_gives_identical_states(module):
    module._text_cache.clear()
    fresh, _ = module.encode_text(["slow piano", "a much longer caption about drums"])
    cached, _ = module.encode_text(["a much longer caption about drums", "slow piano"])
    assert torch.equal(fresh[0], cached[1]) and torch.equal(fresh[1], cached[0])


def test_gradient_checkpointing_gives_same_loss_and_grads(tiny_model_dir):
    torch.manual_seed(0)
    codes = torch.randint(0, 2048, (2, 4, 8))
    fm = torch.ones(2, 8, dtype=torch.bool)
    results = []
    for gc in (False, True):
        torch.manual_seed(0)  # same random LoRA init in both models
        m = MusicGenModule(str(tiny_model_dir), lora=LoraSettings(init_lora_weights=False, dropout=0.0),
                           gradient_checkpointing=gc)  # fmt: skip
        assert m.base.decoder.is_activation_checkpointing == gc
        m.train()  # checkpointing is only active in training mode; switch dropout off to compare exactly
        for mod in m.base.decoder.modules():
            if isinstance(getattr(mod, "dropout", None), float):
                mod.dropout = 0.0
        text, mask = m.encode_text(["a", "bb"])
        loss = m(codes, fm, text, mask)[0]
        loss.backward()
        grads = {k: p.grad.clone() for k, p in m.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads))
    assert torch.allclose(results[0][0], results[1][0])
    for k, g in results[0][1].items():
        assert torch.allclose(g, results[1][1][k], atol=1e-6), k


def test_fit_resume_is_exact_and_checkpoints_hold_no_frozen_weights(tiny_model_dir, tiny_dataset, tmp_path):
    """6 steps straight == 3 steps, stop, resume to 6 (mid-epoch) == 4 steps (epoch end), resume to 6."""
    straight = LossRecorder()
    fit(tiny_model_dir, tiny_dataset, tmp_path / "a", "--trainer.max_steps", "6", recorder=straight)
    # the tiny dataset has 8 training clips: 4 batches of 2 per epoch
    assert len(straight.losses) == 6
    for stop in (3, 4):
        root = tmp_path / f"b{stop}"
        first, second = LossRecorder(), LossRecorder()
        with pytest.raises(RuntimeError, match="simulated crash"):
            fit(tiny_model_dir, tiny_dataset, root, "--trainer.max_steps", "6",
                "--checkpoint.every_n_train_steps", "1", recorder=first, crash_at=stop)  # fmt: skip
        assert len(first.losses) == stop
        fit(tiny_model_dir, tiny_dataset, root, "--trainer.max_steps", "6", "--ckpt_path", "last", recorder=second)
        assert first.losses + second.losses == straight.losses, f"crashed after {stop}"

    ckpt = torch.load(tmp_path / "b3" / "checkpoints" / "last.ckpt", weights_only=False)
    keys = set(ckpt["state_dict"])
    assert keys and all("lora_" in k for k in keys)
    n_weights = sum(v.numel() for v in ckpt["state_dict"].values())
    module = MusicGenModule(str(tiny_model_dir))
    n_frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    assert n_weights == sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert os.path.getsize(tmp_path / "b3" / "checkpoints" / "last.ckpt") < 4 * n_frozen  # less than fp32 base
    # the resolved config is in every start's run folder
    configs = sorted((tmp_path / "b3" / "logs").glob("version_*/config.yaml"))
    assert len(configs) == 2 and "pretrained: " + str(tiny_model_dir) in configs[0].read_text()


def test_resume_is_exact_with_gradient_accumulation(tiny_model_dir, tiny_dataset, tmp_path):
    """batch 1 x accumulation 2: a crash after 3 optimiser steps (6 micro-batches) resumes exactly."""
    extra = ("--data.batch_size", "1", "--trainer.accumulate_grad_batches", "2", "--trainer.max_steps", "5")
    straight, first, second = LossRecorder(), LossRecorder(), LossRecorder()
    fit(tiny_model_dir, tiny_dataset, tmp_path / "a", *extra, recorder=straight)
    assert len(straight.losses) == 10
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tiny_model_dir, tiny_dataset, tmp_path / "b", *extra, "--checkpoint.every_n_train_steps", "1",
            recorder=first, crash_at=3)  # fmt: skip
    assert len(first.losses) == 6
    fit(tiny_model_dir, tiny_dataset, tmp_path / "b", *extra, "--ckpt_path", "last", recorder=second)
    assert first.losses + second.losses == straight.losses


def test_loading_a_checkpoint_restores_trainable_weights(tiny_model_dir, tiny_dataset, tmp_path):
    cli = fit(tiny_model_dir, tiny_dataset, tmp_path, "--trainer.max_steps", "2")
    trained = {k: v.detach().clone() for k, v in cli.model.named_parameters() if v.requires_grad}
    loaded = MusicGenModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    for k, v in loaded.named_parameters():
        if v.requires_grad:
            assert torch.equal(v, trained[k]), k
    with pytest.raises(ModelLoadError, match="does not match the model configuration"):
        MusicGenModule.load_from_checkpoint(
            tmp_path / "checkpoints" / "last.ckpt", lora=LoraSettings(target_modules="all-linear")
        )


def test_adapter_round_trip_through_peft_alone(tiny_model_dir, tiny_dataset, tmp_path):
    from peft import PeftModel
    from transformers import MusicgenForConditionalGeneration

    cli = fit(tiny_model_dir, tiny_dataset, tmp_path, "--trainer.max_steps", "2", "--model.lora.init_lora_weights",
              "false")  # fmt: skip
    adapter = tmp_path / "adapter"
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    base = MusicgenForConditionalGeneration.from_pretrained(tiny_model_dir)
    peft_model = PeftModel.from_pretrained(base, adapter).eval()
    ours = cli.model.eval()
    ids = ours.tokenizer(["folk"], return_tensors="pt")
    dec = torch.randint(0, 2048, (4, 5))
    with torch.no_grad():
        want = ours.base(**ids, decoder_input_ids=dec).logits
        got = peft_model(**ids, decoder_input_ids=dec).logits
        plain = MusicgenForConditionalGeneration.from_pretrained(tiny_model_dir)(**ids, decoder_input_ids=dec).logits
    assert torch.allclose(want, got, atol=1e-6)
    assert not torch.allclose(want, plain, atol=1e-4)  # the adapter changes the output


def test_lora_merge_equivalence(tiny_model_dir):
    lora = LoraSettings(init_lora_weights=False, target_modules="all-linear")
    module = MusicGenModule(str(tiny_model_dir), lora=lora)
    module.eval()
    ids = module.tokenizer(["a calm piece"], return_tensors="pt")
    dec = torch.randint(0, 2048, (4, 7))
    with torch.no_grad():
        before = module.base(**ids, decoder_input_ids=dec).logits
        merged = module.model.merge_and_unload(safe_merge=True)
        after = merged(**ids, decoder_input_ids=dec).logits
        base = MusicGenModule(str(tiny_model_dir), lora=None).base.eval()(**ids, decoder_input_ids=dec).logits
    assert torch.allclose(before, after, atol=1e-5)
    assert not torch.allclose(before, base, atol=1e-3)


def test_full_finetune_checkpoint_has_only_decoder(tiny_model_dir, tiny_dataset, tmp_path):
    fit(tiny_model_dir, tiny_dataset, tmp_path, "--trainer.max_steps", "1", "--model.lora", "null")
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    keys = list(ckpt["state_dict"])
    assert keys and all(k.startswith(("model.decoder.", "model.enc_to_dec_proj.")) for k in keys)
    assert json.dumps(ckpt["hyper_parameters"]["lora"]) == "null"


def test_samples_are_logged_during_training(tiny_model_dir, tiny_dataset, tmp_path):
    prompts = '["calm folk", "fast"]'
    fit(tiny_model_dir, tiny_dataset, tmp_path, "--trainer.max_steps", "1", "--samples.prompts", prompts,
        "--samples.seconds", "0.5", "--samples.guidance_scales", "[3.0]", "--samples.unconditional", "false",
        "--trainer.val_check_interval", "1")  # fmt: skip
    import soundfile as sf

    for folder in ("base", "step_0000001"):  # the base model at the start, the fine-tune after validation
        wavs = sorted((tmp_path / "samples" / folder).glob("*/*.wav"))
        assert [w.relative_to(wavs[0].parent.parent).as_posix() for w in wavs] == [
            "cfg3/000-calm-folk-seed0.wav", "cfg3/001-fast-seed1.wav"]  # fmt: skip
        info = sf.info(str(wavs[0]))
        assert info.samplerate == 32000 and abs(info.duration - 0.5) < 0.05
        for wav in wavs:  # JSON, exact codes and spectrogram beside each
            assert wav.with_suffix(".json").is_file() and wav.with_suffix(".png").is_file()
            assert wav.with_name(wav.stem + ".codes.npy").is_file()
    events = list((tmp_path / "tensorboard").rglob("events.out.tfevents*"))
    assert events and any(e.stat().st_size > 1000 for e in events)


def test_in_training_samples_leave_the_model_as_it_was(tiny_model_dir, tiny_dataset, tmp_path):
    """Sampling runs on the model being trained: its mode, dtypes, devices and weights are untouched, and a run
    with samples trains exactly like one without."""
    plain, sampled = LossRecorder(), LossRecorder()
    fit(tiny_model_dir, tiny_dataset, tmp_path / "plain", "--trainer.max_steps", "4", recorder=plain)
    fit(tiny_model_dir, tiny_dataset, tmp_path / "sampled", "--trainer.max_steps", "4", "--samples.prompts",
        '["calm"]', "--samples.seconds", "0.2", "--samples.every_n_steps", "2", recorder=sampled)  # fmt: skip
    assert sampled.losses == plain.losses
    assert (tmp_path / "sampled" / "samples" / "step_0000002").is_dir()


def test_wandb_logger_from_config_works_offline(tiny_model_dir, tiny_dataset, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = tmp_path / "wandb.yaml"
    config.write_text(
        "trainer:\n  logger:\n    - class_path: lightning.pytorch.loggers.WandbLogger\n"
        f"      init_args: {{project: musiclit-test, save_dir: {tmp_path / 'wandb'}, offline: true}}\n"
    )
    fit(tiny_model_dir, tiny_dataset, tmp_path / "run", "--config", str(config), "--trainer.max_steps", "2")
    runs = list((tmp_path / "wandb").rglob("*.wandb"))
    assert runs and runs[0].stat().st_size > 0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()  # checkpoints stay in the run folder


@pytest.mark.parametrize(("arch", "limit_mb"), [("medium", 60), ("large", 80)])
def test_lora_checkpoint_of_real_architectures_is_megabytes(arch, limit_mb):
    """The seed's LoRA recipe on the real decoders (built on the meta device: no memory, no download).

    A checkpoint holds the trainable weights plus two AdamW moments per weight (float32).
    """
    from transformers import MusicgenConfig, MusicgenForConditionalGeneration

    from musiclit.model.lora import apply_lora
    from musiclit.model.musicgen import real_decoder_config, tiny_config_dict

    cfg = tiny_config_dict()
    cfg["decoder"].update(real_decoder_config(arch))
    with torch.device("meta"):
        model = apply_lora(MusicgenForConditionalGeneration(MusicgenConfig.from_dict(cfg)), LoraSettings())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.get_base_model().decoder.parameters() if not p.requires_grad)
    layers, hidden = real_decoder_config(arch)["num_hidden_layers"], real_decoder_config(arch)["hidden_size"]
    assert trainable == layers * 4 * 2 * 8 * hidden  # q and v of self- and cross-attention, A and B, r=8
    assert trainable * 12 / 2**20 < limit_mb
    assert frozen > 1e9  # the base it leaves out is gigabytes


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precisions_train(tiny_model_dir, tiny_dataset, tmp_path, precision, monkeypatch):
    """Both precision flags train on the CPU. NOTE: on a CPU Lightning runs `16-mixed` as `bf16-mixed` (it has
    no fp16 autocast + GradScaler path for CPUs), so the `16-mixed` case here checks the flag is accepted, not
    fp16: the fp16 + GradScaler path is tested by the next test, with Lightning's fp16 plugin built by hand."""
    monkeypatch.setattr("musiclit.train.cli.cpu_has_bf16", lambda: True)  # exercise bf16 even on an AVX2-only CPU
    recorder = LossRecorder()
    cli = fit(tiny_model_dir, tiny_dataset, tmp_path, "--trainer.max_steps", "2", "--trainer.precision", precision,
              recorder=recorder)  # fmt: skip
    assert str(cli.trainer.precision) == "bf16-mixed"  # what ran, for both flags (see the docstring)
    assert len(recorder.losses) == 2 and all(torch.isfinite(torch.tensor(recorder.losses)))
    frozen = cli.model.base.decoder.model.decoder.layers[0].fc1.weight
    norm = cli.model.base.decoder.model.decoder.layers[0].final_layer_norm.weight
    # frozen matmul weights in bf16 under bf16 autocast (Lightning runs 16-mixed as bf16-mixed on a CPU)
    want = torch.bfloat16 if str(cli.trainer.precision).startswith("bf16") else torch.float32
    assert frozen.dtype == want and norm.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in cli.model.parameters() if p.requires_grad)


@pytest.mark.slow
def test_compiled_layers_give_the_same_loss_and_checkpoint_names(tiny_model_dir):
    torch.manual_seed(0)
    codes = torch.randint(0, 2048, (2, 4, 8))
    fm = torch.ones(2, 8, dtype=torch.bool)
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        m = MusicGenModule(str(tiny_model_dir), lora=LoraSettings(init_lora_weights=False, dropout=0.0),
                           compile_layers=compiled).eval()  # fmt: skip
        text, mask = m.encode_text(["a", "bb"])
        loss = m(codes, fm, text, mask)[0]
        loss.backward()
        results.append(
            (loss.detach(), m.trainable_keys(), {k: p.grad for k, p in m.named_parameters() if p.grad is not None})
        )
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
    assert results[0][1] == results[1][1]
    for k, g in results[0][2].items():
        assert torch.allclose(g, results[1][2][k], atol=1e-5), k


def test_stereo_models_train_on_interleaved_left_right_codes(tiny_dataset, tmp_path):
    """A stereo MusicGen (8 codebooks, left/right interleaved, delays 0,0,1,1,...) trains on 2-channel audio."""
    from musiclit.model.musicgen import create_tiny_model_folder

    model_dir = create_tiny_model_folder(tmp_path / "stereo", audio_channels=2)
    recorder = LossRecorder()
    cli = fit(model_dir, tiny_dataset, tmp_path / "run", "--trainer.max_steps", "2", recorder=recorder)
    module = cli.model
    assert module.num_codebooks == 8 and module.delays == [0, 0, 1, 1, 2, 2, 3, 3]
    assert cli.datamodule.channels == 2
    assert len(recorder.losses) == 2 and all(torch.isfinite(torch.tensor(recorder.losses)))
    left, right = torch.randn(1, 1, 32000), torch.randn(1, 1, 32000)
    mask = torch.ones(1, 32000, dtype=torch.bool)
    codes, _ = module.encode_audio(torch.cat([left, right], dim=1), mask)
    mono_l, _ = module.encode_audio(torch.cat([left, left], dim=1), mask)
    mono_r, _ = module.encode_audio(torch.cat([right, right], dim=1), mask)
    assert torch.equal(codes[:, 0::2], mono_l[:, 0::2]) and torch.equal(codes[:, 1::2], mono_r[:, 1::2])


def test_bf16_falls_back_where_the_hardware_lacks_it(tiny_model_dir, tiny_dataset, tmp_path, monkeypatch, capsys):
    from musiclit.train.cli import resolve_precision

    monkeypatch.setattr("musiclit.train.cli.cpu_has_bf16", lambda: False)
    cli = fit(tiny_model_dir, tiny_dataset, tmp_path, "--trainer.max_steps", "1", "--trainer.precision", "bf16-mixed")
    assert str(cli.trainer.precision) == "32-true"
    assert "no native bf16" in capsys.readouterr().err
    saved = next((tmp_path / "logs").glob("version_*/config.yaml")).read_text()
    assert "precision: 32-true" in saved  # the run folder records what really ran
    assert resolve_precision("16-mixed", "cpu") == ("16-mixed", None)  # explicit choices are kept
    monkeypatch.setattr("musiclit.train.cli.cpu_has_bf16", lambda: True)
    assert resolve_precision("bf16-mixed", "cpu") == ("bf16-mixed", None)


class ScalerSpy(Callback):
    """At the given step, sets one trainable gradient element to inf after the backward (an fp16 overflow);
    records the unscaled gradient norm the optimiser step sees, the loss scale and the weights after each step."""

    def __init__(self, overflow_step=-1):
        self.overflow_step = overflow_step
        self.norms, self.scales, self.weights = [], [], []

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step == self.overflow_step:
            next(p for p in pl_module.parameters() if p.requires_grad).grad.view(-1)[0] = float("inf")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad.float().norm() for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.stack(grads).norm()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.scales.append(scaler.get_scale() if scaler is not None else None)
        self.weights.append({k: p.detach().clone() for k, p in pl_module.named_parameters() if p.requires_grad})


def test_fp16_with_a_grad_scaler_skips_overflowing_steps_and_unscales_before_the_step(
    tiny_model_dir, tiny_dataset, tmp_path
):
    """The fp16 + GradScaler path of `16-mixed` (a pre-Ampere GPU's), run on the CPU with Lightning's own
    MixedPrecision plugin and torch's CPU GradScaler (`--trainer.precision 16-mixed` alone becomes bf16 on a
    CPU). The scaler must skip a step whose gradients overflow (weights unchanged, scale halved), and hooks
    and clipping must see unscaled gradients (the same norm as an fp32 run, not 65,536 times it)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    args = ("--trainer.max_steps", "3", "--data.batch_size", "2", "--trainer.logger", "false",
            "--trainer.num_sanity_val_steps", "0", "--trainer.gradient_clip_val", "1.0",
            "--model.lora.init_lora_weights", "false", "--seed_everything", "0")  # fmt: skip
    fp16 = ScalerSpy(overflow_step=1)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    cli = build_cli(fit_args(tiny_model_dir, tiny_dataset, tmp_path / "fp16", *args),
                    trainer_defaults={"callbacks": [fp16], "plugins": [plugin]})  # fmt: skip
    assert cli.trainer.precision == "16-mixed" and cli.trainer.precision_plugin.scaler is not None
    fp32 = ScalerSpy()
    tiny_fit(tiny_model_dir, tiny_dataset, tmp_path / "fp32", *args, "--trainer.precision", "32-true",
             callbacks=[fp32])  # fmt: skip
    init = 2.0**16
    assert fp16.scales == [init, init / 2, init / 2]  # the overflow halved the scale
    w0, w1, w2 = fp16.weights
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # the overflowing step changed nothing
    assert all(torch.isfinite(v).all() for v in w2.values()) and any(not torch.equal(w1[k], w2[k]) for k in w1)
    assert abs(fp16.norms[0] / fp32.norms[0] - 1) < 0.05, (fp16.norms[0], fp32.norms[0])


def test_early_stopping_is_one_switch_and_keeps_the_best_checkpoint(tiny_model_dir, tiny_dataset, tmp_path):
    """With lr 0 the validation loss never improves after the first validation: patience 2 stops at step 3."""
    args = ("--trainer.max_steps", "12", "--trainer.val_check_interval", "1", "--model.optimizer.lr", "0",
            "--early_stopping.patience", "2")  # fmt: skip
    cli = fit(tiny_model_dir, tiny_dataset, tmp_path / "on", *args, "--early_stopping.enabled", "true")
    assert cli.trainer.global_step == 3
    # the three validation losses are equal: the checkpoint kept is one of the three steps (Lightning keeps the later)
    kept = [p.name for p in (tmp_path / "on" / "checkpoints").glob("best-*.ckpt")]
    assert len(kept) == 1 and kept[0] in ("best-0000001.ckpt", "best-0000002.ckpt", "best-0000003.ckpt")
    cli = fit(tiny_model_dir, tiny_dataset, tmp_path / "off", *args)
    assert cli.trainer.global_step == 12 and not list((tmp_path / "off" / "checkpoints").glob("best-*"))
