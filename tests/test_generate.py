"""Generation: transformers' generate as the oracle, reproducibility, adapter strength, long audio, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_run import tiny_fit

from musiclit.__main__ import main as cli_main
from musiclit.infer.sampler import GenerationParams, Generator, load_generator
from musiclit.model.finetune import AdapterMismatchError, load_finetune


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir: Path, tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with a LoRA (non-zero init, q/v) checkpoint and adapter folder, after two training steps."""
    root = tmp_path_factory.mktemp("gen-run") / "run"
    tiny_fit(
        tiny_model_dir, tiny_dataset, root, "--trainer.max_steps", "2", "--checkpoint.every_n_train_steps", "1",
        "--model.lora.init_lora_weights", "false", "--trainer.logger", "false",
    )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def base_gen(tiny_model_dir: Path) -> Generator:
    return load_generator(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def lora_gen(tiny_model_dir: Path, run_dir: Path) -> Generator:
    return load_generator(str(tiny_model_dir), adapter=str(run_dir / "checkpoints" / "last.ckpt"), device="cpu")


def _hf_audio(
    gen: Generator, prompt: str, new_tokens: int, decoder_input_ids: torch.Tensor | None = None
) -> torch.Tensor:
    tokens = gen.tokenizer([prompt], return_tensors="pt")
    extra = {} if decoder_input_ids is None else {"decoder_input_ids": decoder_input_ids}
    with torch.no_grad():
        return gen.base.generate(
            **tokens, do_sample=False, guidance_scale=3.0, max_new_tokens=new_tokens, **extra
        ).float()


def test_greedy_equals_transformers_generate(base_gen: Generator) -> None:
    """Greedy decoding with CFG gives exactly what transformers' generate gives (KV cache, delay pattern, CFG)."""
    params = GenerationParams(seconds=1.0, temperature=0.0, guidance_scale=3.0)
    ours = base_gen.generate(["calm piano"], params)
    theirs = _hf_audio(base_gen, "calm piano", 50 + 3)  # transformers yields max_new_tokens - 3 frames
    assert ours.codes.shape == (1, 4, 50)
    assert torch.equal(ours.audio, theirs[..., : ours.audio.shape[-1]])


def test_continuation_equals_transformers_prompted_generate(base_gen: Generator) -> None:
    """A code prompt (what windowed continuation uses) is continued exactly like transformers continues it."""
    prompt = torch.randint(0, 2048, (1, 4, 20), generator=torch.Generator().manual_seed(0))
    enc, mask = base_gen.encode_text(["rock"])
    codes = base_gen.sample_window(enc, mask, 50, GenerationParams(temperature=0.0), [torch.Generator()], prompt)
    assert torch.equal(codes[..., :20], prompt)
    dec_in = torch.cat([torch.full((4, 1), 2048), prompt[0]], dim=1)
    theirs = _hf_audio(base_gen, "rock", 30 + 3, dec_in)
    assert torch.equal(base_gen.decode(codes), theirs[..., : 50 * 640])


def test_seed_reproducible_and_batch_independent(base_gen: Generator) -> None:
    params = GenerationParams(seconds=0.3, seed=7)
    a = base_gen.generate(["rock", "jazz", "rock"], params)
    b = base_gen.generate(["rock", "jazz", "rock"], params)
    assert torch.equal(a.audio, b.audio)
    assert a.seeds == [7, 8, 9]
    assert not torch.equal(a.codes[0], a.codes[2])  # same prompt, different seed
    alone = base_gen.generate(["jazz"], params, seeds=[8])
    assert torch.equal(alone.codes[0], a.codes[1])  # a sample does not depend on its batch mates


def test_top_p_and_top_k_restrict_choices() -> None:
    from musiclit.infer.sampler import _pick

    logits = torch.tensor([[0.0, 5.0, 4.9, -9.0]]).log_softmax(-1)
    u = torch.linspace(0, 0.999, 200)[:, None].expand(200, 1).reshape(200, 1)
    chosen = {int(_pick(logits.expand(200, 4), u[:, 0], top_k=0, top_p=0.5, temperature=1.0)[i]) for i in range(200)}
    assert chosen == {1}
    chosen = {int(_pick(logits.expand(200, 4), u[:, 0], top_k=2, top_p=0.0, temperature=1.0)[i]) for i in range(200)}
    assert chosen == {1, 2}


def _decoder_logits(gen: Generator) -> torch.Tensor:
    enc, mask = gen.encode_text(["warm analog synth"])
    ids = torch.randint(0, 2048, (4, 12), generator=torch.Generator().manual_seed(1))
    hidden, _ = gen._forward(ids, enc, mask, None)
    return torch.stack([head(hidden) for head in gen.base.decoder.lm_heads], 1)


def test_adapter_strength(base_gen: Generator, lora_gen: Generator, run_dir: Path, tiny_model_dir: Path) -> None:
    from peft import PeftModel
    from transformers import MusicgenForConditionalGeneration

    with torch.no_grad():
        base = _decoder_logits(base_gen)
        with lora_gen.adapter_strength(0.0):
            zero = _decoder_logits(lora_gen)
        with lora_gen.adapter_strength(1.0):
            one = _decoder_logits(lora_gen)
        with lora_gen.adapter_strength(0.5):
            half = _decoder_logits(lora_gen)
        # an oracle that knows nothing of musiclit: peft on plain transformers
        peft_model = PeftModel.from_pretrained(
            MusicgenForConditionalGeneration.from_pretrained(tiny_model_dir), str(run_dir / "adapter")
        ).eval()
        oracle = Generator.__new__(Generator)
        oracle.__dict__.update(lora_gen.__dict__)
        oracle._decoder = peft_model.get_base_model().decoder.model.decoder
        enc, mask = lora_gen.encode_text(["warm analog synth"])
        ids = torch.randint(0, 2048, (4, 12), generator=torch.Generator().manual_seed(1))
        hidden, _ = oracle._forward(ids, enc, mask, None)
        full = torch.stack([h(hidden) for h in peft_model.get_base_model().decoder.lm_heads], 1)
    assert torch.equal(zero, base)
    torch.testing.assert_close(one, full, rtol=1e-5, atol=1e-5)
    assert (one - base).abs().max() > 1e-3  # the adapter does something
    assert (half - base).abs().max() < (one - base).abs().max()
    # scaling is restored after the block
    with torch.no_grad():
        torch.testing.assert_close(_decoder_logits(lora_gen), one)
    # and sampling at strength 0 is the base model's sampling
    p0 = GenerationParams(seconds=0.4, seed=3, adapter_scale=0.0)
    assert torch.equal(
        lora_gen.generate(["x"], p0).codes, base_gen.generate(["x"], GenerationParams(seconds=0.4, seed=3)).codes
    )


def _frame_rms(x: np.ndarray, hop: int) -> np.ndarray:
    n = len(x) // hop
    return np.sqrt((x[: n * hop].reshape(n, hop) ** 2).mean(1) + 1e-12)


def _seam_ok(x: np.ndarray, seams: list[int], sr: int) -> bool:
    """No gap and no click at each seam: the energy and the sample-to-sample jump near a seam look like the
    rest of the signal (the 10 ms RMS stays within the range seen elsewhere; the largest jump stays below the
    99.9th percentile of jumps elsewhere times 1.5)."""
    hop = sr // 100
    rms = _frame_rms(x, hop)
    jumps = np.abs(np.diff(x))
    near = np.zeros(len(x), dtype=bool)
    for s in seams:
        near[max(0, s - sr // 20) : s + sr // 20] = True
    far_frames = ~near[: len(rms) * hop].reshape(len(rms), hop).any(1)
    lo, hi = np.quantile(rms[far_frames], [0.001, 0.999])
    jump_limit = 1.5 * np.quantile(jumps[~near[:-1]], 0.999)
    for s in seams:
        frames = rms[max(0, s // hop - 3) : s // hop + 3]
        if frames.min() < 0.5 * lo or frames.max() > 2 * hi:
            return False
        if jumps[max(0, s - sr // 100) : s + sr // 100].max() > jump_limit:
            return False
    return True


def test_long_generation_is_seamless(base_gen: Generator) -> None:
    """2.5 windows (window 2 s, context 0.5 s): the requested length, codes stitched, no gap/click at the seams."""
    sr, hop = base_gen.sample_rate, 640
    params = GenerationParams(seconds=4.25, window_seconds=2.0, context_seconds=0.5, seed=5, guidance_scale=1.0)
    result = base_gen.generate(["long drone"], params)
    assert result.codes.shape[-1] == 212
    assert result.audio.shape[-1] == 212 * hop
    # the first window is the single-window generation: the rest continues it
    first = base_gen.generate(
        ["long drone"], GenerationParams(seconds=2.0, window_seconds=2.0, seed=5, guidance_scale=1.0)
    )
    assert torch.equal(result.codes[..., :100], first.codes)
    x = result.audio[0, 0].numpy()
    seams = [2 * sr, int(3.5 * sr)]  # new windows start at 2 s and 3.5 s
    assert _seam_ok(x, seams, sr)
    # the check catches a gap left between windows
    w1 = base_gen.generate(["long drone"], GenerationParams(seconds=2.0, seed=5, guidance_scale=1.0)).audio[0, 0]
    w2 = base_gen.generate(["long drone"], GenerationParams(seconds=1.5, seed=6, guidance_scale=1.0)).audio[0, 0]
    gap = torch.zeros(sr // 20)
    assert not _seam_ok(torch.cat([w1, gap, w2]).numpy(), [2 * sr], sr)
    assert all(_seam_ok(x, [s], sr) for s in (sr // 2, sr, 3 * sr))  # elsewhere in the good signal
    # the stitched codes are decoded in one pass: the audio at a seam is the codec's continuation of what came
    # before, not the start of an independent decode (the tiny random codec's output is noise-like, so a
    # click from decoding windows apart cannot be heard in it; comparing with the windows decoded apart can)
    torch.testing.assert_close(result.audio, base_gen.decode(result.codes))
    apart = torch.cat([base_gen.decode(result.codes[..., :100]), base_gen.decode(result.codes[..., 100:])], -1)
    near = slice(2 * sr - sr // 50, 2 * sr + sr // 50)
    assert not torch.allclose(apart[..., near], result.audio[..., near], atol=1e-3)


def test_cli_writes_audio_and_json_and_regenerates(tiny_model_dir: Path, run_dir: Path, tmp_path: Path) -> None:
    import soundfile as sf

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# my prompts\nsoft piano\n\nloud drums\n", encoding="utf-8")
    out = tmp_path / "out"
    rc = cli_main(
        [
            "generate", "--adapter", str(run_dir / "checkpoints" / "last.ckpt"), "--model", str(tiny_model_dir),
            "--prompts-file", str(prompts), "--num-samples", "2", "--seconds", "0.5", "--seed", "11",
            "--out", str(out), "--format", "both", "--adapter-scale", "0.7", "--device", "cpu",
        ]
    )  # fmt: skip
    assert rc == 0
    jsons = sorted(out.glob("*.json"))
    assert len(jsons) == 4
    assert len(list(out.glob("*.wav"))) == 4
    assert len(list(out.glob("*.flac"))) == 4
    # the JSON beside a sample is an ordinary file, like its audio (not a private temporary file)
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o666 & ~_umask()}
    meta = json.loads(jsons[2].read_text())
    assert meta["prompt"] == "loud drums"
    assert meta["seed"] == 13
    assert meta["params"]["adapter_scale"] == 0.7
    assert meta["params"]["top_k"] == 250
    wav, sr = sf.read(out / meta["files"][0], dtype="float32")
    assert sr == 32000
    assert len(wav) == 25 * 640
    # regenerate that sample alone from its JSON: identical audio
    regen = tmp_path / "regen"
    assert cli_main(["generate", "--from-json", str(jsons[2]), "--out", str(regen), "--device", "cpu"]) == 0
    again, _ = sf.read(next(regen.glob("*.wav")), dtype="float32")
    np.testing.assert_array_equal(again, wav)
    # a different seed gives different audio
    other = tmp_path / "other"
    cli_main(["generate", "--model", str(tiny_model_dir), "--adapter", str(run_dir / "adapter"),
              "--prompt", "loud drums", "--seconds", "0.5", "--seed", "14", "--adapter-scale", "0.7",
              "--out", str(other)])  # fmt: skip
    diff, _ = sf.read(next(other.glob("*.wav")), dtype="float32")
    assert not np.array_equal(diff, wav)


def test_audio_prompt_continuation(base_gen: Generator, tmp_path: Path) -> None:
    from musiclit.data.audio import write_audio

    t = np.arange(32000) / 32000
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[None]
    path = tmp_path / "prompt.wav"
    write_audio(path, tone, 32000)
    out = tmp_path / "cont"
    assert cli_main(["generate", "--model", str(base_gen.finetune.base_source), "--prompt-audio", str(path),
                     "--seconds", "0.5", "--out", str(out)]) == 0  # fmt: skip
    meta = json.loads(next(out.glob("*.json")).read_text())
    assert meta["prompt"] == ""
    assert meta["prompt_frames"] == 50
    assert meta["frames"] == 75
    codes = base_gen.encode_audio(tone)
    result = base_gen.generate([""], GenerationParams(seconds=0.5), prompt_audio=tone)
    assert torch.equal(result.codes[0, :, :50], codes)


def test_mismatched_adapters_are_explained(tmp_path: Path, run_dir: Path) -> None:
    from musiclit.model.musicgen import create_tiny_model_folder

    wider = create_tiny_model_folder(tmp_path / "wider", seed=0, hidden_size=48, num_heads=4, ffn_dim=96)
    with pytest.raises(AdapterMismatchError, match=r"adapter.*(trained on another model size|different model size)"):
        load_finetune(str(wider), str(run_dir / "adapter"))
    with pytest.raises(AdapterMismatchError, match=r"last\.ckpt"):
        load_finetune(str(wider), str(run_dir / "checkpoints" / "last.ckpt"))
    deeper = create_tiny_model_folder(tmp_path / "deeper", seed=0, num_layers=3)
    with pytest.raises(AdapterMismatchError, match="more layers"):
        load_finetune(str(deeper), str(run_dir / "adapter"))
    # target modules that this model does not have
    bad = tmp_path / "bad-adapter"
    bad.mkdir()
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    config["target_modules"] = ["query", "value"]
    (bad / "adapter_config.json").write_text(json.dumps(config))
    (bad / "adapter_model.safetensors").write_bytes((run_dir / "adapter" / "adapter_model.safetensors").read_bytes())
    with pytest.raises(AdapterMismatchError, match=r"bad-adapter.*target modules"):
        load_finetune(None, str(bad))


def test_cli_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["generate", "--adapter", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "nope: no such adapter folder or checkpoint" in capsys.readouterr().err
    assert (
        cli_main(
            ["generate", "--model", "x.json", "--seconds", "5", "--window", "4", "--context", "4", "--prompt", "x"]
        )
        == 2
    )
    assert "--context" in capsys.readouterr().err


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
