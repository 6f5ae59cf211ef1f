"""MusicGen-melody: its chroma (against synthesized pitch classes and the feature extractor's documented steps),
the training loss (against transformers' forward), melody dropout, the chroma cache, generation with a melody
(against transformers' generate), windows past 30 s, and the whole path: train -> resume -> generate -> export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from tiny_run import tiny_fit

from musiclit.__main__ import main as cli_main
from musiclit.model import melody as M

SR = 32000


def midi_hz(m: float) -> float:
    return 440.0 * 2 ** ((m - 69) / 12)


def notes(midis: list[int], seconds: float, harmonics: int = 3, sr: int = SR) -> np.ndarray:
    """One note after another (each ``seconds`` long, with overtones): a melody whose pitch classes are known."""
    t = np.arange(int(seconds * sr)) / sr
    parts = [sum(np.sin(2 * np.pi * midi_hz(m) * h * t) / h for h in range(1, harmonics + 1)) for m in midis]
    return (0.3 * np.concatenate(parts)).astype(np.float32)


# ------------------------------------------------------------------ the chroma


def test_a_melody_of_known_notes_gives_its_pitch_classes() -> None:
    """C4 E4 G4 B4 F#3 A#5 D5 (1 s each): every frame whose 0.5 s window lies inside one note has its class."""
    melody = [60, 64, 67, 71, 54, 82, 74]
    classes = M.pitch_classes(notes(melody, 1.0))
    assert classes.dtype == np.int16 and classes.shape == (1 + 7 * SR // M.HOP,)
    checked = 0
    for i, c in enumerate(classes):
        t = i * M.HOP / SR
        lo, hi = t - M.N_FFT / SR / 2, t + M.N_FFT / SR / 2
        if int(lo) == int(hi - 1e-9) and lo >= 0 and hi <= 7:
            assert c == melody[int(lo)] % 12, (i, t)
            checked += 1
    assert checked >= 25  # about 3.8 frames per 1 s note lie wholly inside it
    # silence: class 0 (what "no melody" is), and a chord's loudest note wins
    assert (M.pitch_classes(np.zeros(SR, dtype=np.float32)) == 0).all()
    chord = notes([62], 2.0) + 0.4 * notes([66], 2.0) + 0.4 * notes([69], 2.0)  # D major, D loudest
    assert (M.pitch_classes(chord)[3:-3] == 2).all()


def _extractor_steps(audio: np.ndarray) -> np.ndarray:
    """MusicgenMelodyFeatureExtractor's documented computation, written with transformers' numpy audio utilities
    (not musiclit's torch code): |STFT|^2 with a periodic Hann window of 16384, hop 4096, centred reflect-padded
    frames, divided by the window's energy (torchaudio's normalized=True); transformers' chroma filter bank;
    inf-norm per frame; argmax."""
    from transformers.audio_utils import chroma_filter_bank, spectrogram, window_function

    n_fft, hop = 16384, 4096
    if len(audio) < n_fft:
        pad = n_fft - len(audio)
        audio = np.pad(audio, (pad // 2, pad // 2 + pad % 2))
    window = window_function(n_fft, "hann", periodic=True)
    power = spectrogram(audio.astype(np.float64), window, n_fft, hop, power=2.0, center=True, pad_mode="reflect",
                        dtype=np.float64) / np.sum(window**2)  # fmt: skip
    filters = chroma_filter_bank(num_frequency_bins=n_fft, num_chroma=12, sampling_rate=SR, tuning=0)
    raw = filters @ power  # (12, frames)
    norm = raw / np.maximum(np.abs(raw).max(0, keepdims=True), 1e-6)
    return norm.argmax(0)


def test_pitch_classes_match_the_feature_extractor() -> None:
    """On noise-laden music-like audio (random notes, chords, noise, a short clip): every frame agrees with the
    extractor's steps. Where torchaudio is installed, against MusicgenMelodyFeatureExtractor itself too."""
    rng = np.random.default_rng(0)
    noisy = 0.05 * rng.standard_normal(SR * 2).astype(np.float32) + notes([50, 55], 1.0)
    chord = notes([57], 3.0) + notes([61], 3.0) + notes([64], 3.0)
    pieces = [notes(list(rng.integers(40, 90, 6)), 0.7), chord, noisy, notes([72], 0.2)]
    for audio in pieces:
        ours = M.pitch_classes(audio)
        ref = _extractor_steps(audio)
        assert ours.shape == ref.shape
        assert (ours == ref).mean() == 1.0
    try:
        from transformers import MusicgenMelodyFeatureExtractor

        extractor = MusicgenMelodyFeatureExtractor()
    except (ImportError, OSError):
        return  # torchaudio is deliberately not installed here: the extractor cannot be built
    for audio in pieces:
        feats = extractor(audio, sampling_rate=SR, return_tensors="pt", padding=False)["input_features"][0]
        np.testing.assert_array_equal(M.pitch_classes(audio)[: feats.shape[0]], feats.argmax(-1).numpy())


def test_the_feature_extractor_needs_torchaudio_here() -> None:
    """Why the comparison above uses the extractor's steps: the extractor itself cannot run in this stack."""
    pytest.importorskip("transformers")
    try:
        import torchaudio  # noqa: F401
    except ImportError:
        from transformers import MusicgenMelodyFeatureExtractor

        with pytest.raises((ImportError, OSError, NameError, AttributeError)):
            MusicgenMelodyFeatureExtractor()
    else:
        pytest.skip("torchaudio is installed: the extractor is compared directly")


def test_melody_windows_repeat_and_null_is_class_zero() -> None:
    classes = np.array([3, 5, 7], dtype=np.int16)
    np.testing.assert_array_equal(M.window(classes, 2, 7), [7, 3, 5, 7, 3, 5, 7])
    assert M.frames_for(30.0) == 235 and M.frames_for(2.0) == 1 + 64000 // 4096
    one = M.onehot(torch.tensor([[0, 11]]))
    assert one.shape == (1, 2, 12) and one[0, 1, 11] == 1 and one.sum() == 2
    assert (M.null_classes(2, 5) == 0).all()


def test_melody_stems_sum_everything_but_drums_and_bass(tmp_path: Path) -> None:
    from demucs.apply import apply_model

    model = tiny_demucs()
    wav = np.random.default_rng(1).standard_normal((2, 44100 * 2)).astype(np.float32) * 0.1
    got = M.melody_stems(model, wav)
    np.testing.assert_array_equal(got, M.melody_stems(model, wav))  # no random shift: the same every time
    with torch.no_grad():
        stems = apply_model(model, torch.from_numpy(wav)[None], shifts=0, split=True, overlap=0.25)[0]
    keep = [model.sources.index("other"), model.sources.index("vocals")]
    np.testing.assert_allclose(got, stems[keep].sum(0).numpy(), atol=1e-5)
    chroma = M.MelodyChroma(model, resample=__import__("musiclit.data.audio", fromlist=["x"]).resample)
    assert chroma.sample_rate == 44100 and chroma.channels == 2 and chroma.id.startswith("melody-")
    assert chroma.id != M.MelodyChroma(None).id  # the separator is part of the cache identity
    assert chroma.encode(wav).shape == (1, 1 + 64000 // 4096)


def tiny_demucs():
    """A tiny random HTDemucs (as tests/test_prep_units.py builds it): 4 sources at 44.1 kHz, stereo."""
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(0)
    model = HTDemucs(sources=["drums", "bass", "other", "vocals"], channels=8, depth=4, t_layers=1, segment=2)
    return model.eval()


# ------------------------------------------------------------------ the model and its loss


@pytest.fixture(scope="module")
def melody_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MusicGen-melody (text width 24 != decoder width 32: both projections exist)."""
    from musiclit.model.musicgen import create_tiny_model_folder

    return create_tiny_model_folder(tmp_path_factory.mktemp("tiny-melody"), seed=0, melody=True, text_dim=24)


@pytest.fixture(scope="module")
def module(melody_dir: Path):
    from musiclit.model.lora import LoraSettings
    from musiclit.train.module import MusicGenModule

    return MusicGenModule(str(melody_dir), lora=LoraSettings(init_lora_weights=False, target_modules="all-linear"))


def test_melody_model_loads_and_lora_adapts_its_self_attention(module) -> None:
    from transformers import MusicgenMelodyForConditionalGeneration

    assert isinstance(module.base, MusicgenMelodyForConditionalGeneration) and module.melody
    assert module.cfg_dropout == 0.2 and module.melody_dropout == 0.5  # the recipe's defaults for melody
    keys = module.trainable_keys()
    assert keys and all("lora_" in k for k in keys) and not any("encoder_attn" in k for k in keys)
    assert any("self_attn.q_proj" in k for k in keys) and any(".fc1." in k for k in keys)


def test_loss_equals_masked_loss_on_transformers_melody_logits(module) -> None:
    """The training loss (its own prefix: melody states, masked text, codes) equals the oracle-tested masked loss
    on the logits of transformers' MusicgenMelodyForConditionalGeneration forward (input_features = the melody)."""
    from musiclit.model.delay import build_delay_pattern, masked_codebook_loss

    module.eval()
    torch.manual_seed(3)
    codes = torch.randint(0, 2048, (2, 4, 9))
    frame_mask = torch.ones(2, 9, dtype=torch.bool)
    frame_mask[1, 6:] = False
    captions = ["warm folk", "a longer caption with drums"]
    text, text_mask = module.encode_text(captions)
    melody = M.onehot(torch.randint(0, 12, (2, 40)))
    inputs, labels, mask = build_delay_pattern(codes, module.special_token, module.delays, frame_mask)
    tokens = module.tokenizer(captions, padding=True, return_tensors="pt")
    assert torch.equal(tokens["attention_mask"], text_mask)
    with torch.no_grad():
        loss, per_cb = module(codes, frame_mask, text, text_mask, melody)
        logits = module.base(**tokens, input_features=melody, decoder_input_ids=inputs.reshape(8, -1)).logits
    logits = logits[:, -inputs.shape[-1] :]  # the prefix (235 melody + text frames) comes first
    want, want_cb = masked_codebook_loss(logits.reshape(2, 4, *logits.shape[1:]), labels, mask)
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(per_cb, want_cb, atol=1e-5, rtol=1e-5)
    # the melody matters, and "no melody" is what transformers feeds when there is none
    from musiclit.model.loss import decoder_hidden

    with torch.no_grad():
        hidden = decoder_hidden(module.base, inputs, text, text_mask, melody)
        other = decoder_hidden(module.base, inputs, text, text_mask, M.onehot((melody.argmax(-1) + 5) % 12))
        null = module(codes, frame_mask, text, text_mask, M.onehot(M.null_classes(2, 1)))[0]
        no_features = module.base(**tokens, decoder_input_ids=inputs.reshape(8, -1)).logits[:, -inputs.shape[-1] :]
    assert (other - hidden).abs().max() > 1e-3
    torch.testing.assert_close(null, masked_codebook_loss(no_features.reshape(2, 4, *no_features.shape[1:]),
                                                          labels, mask)[0], atol=1e-5, rtol=1e-5)  # fmt: skip


def test_text_and_melody_dropout_per_example(module, monkeypatch: pytest.MonkeyPatch) -> None:
    """cfg_dropout drops all conditions (text and melody) per example; melody_dropout then drops the melody of
    half of the rest: dropped text = 0.2, dropped melody = 0.2 + 0.8 x 0.5 = 0.6, mixed within batches."""
    seen = []

    def capture(codes, frame_mask, text, text_mask, melody):
        seen.append((text_mask.sum(-1) == 0, (melody.argmax(-1) == 0).all(-1)))
        return torch.zeros(()), torch.zeros(4)

    monkeypatch.setattr(module, "forward", capture)
    batch = {"codes": torch.zeros(8, 4, 5, dtype=torch.long), "frame_mask": torch.ones(8, 5, dtype=torch.bool),
             "captions": ["a b"] * 8, "melody": torch.randint(1, 12, (8, 16))}  # fmt: skip
    torch.manual_seed(0)
    for _ in range(250):
        module._batch_loss(batch, 0.2, 0.5)
    text = torch.stack([s[0] for s in seen]).float()
    mel = torch.stack([s[1] for s in seen]).float()
    assert abs(text.mean().item() - 0.2) < 0.03 and abs(mel.mean().item() - 0.6) < 0.03
    assert (mel >= text).all()  # dropping the text drops the melody (guidance's unconditional branch)
    assert ((mel.mean(1) > 0) & (mel.mean(1) < 1)).float().mean() > 0.8
    assert abs(module._dropped["melody"] - mel[-1].mean()) < 1e-6


# ------------------------------------------------------------------ training, the chroma cache, generation, export


@pytest.fixture(scope="module")
def melody_data(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset, one clip conditioned on another file (a melody of known notes) via ``melody_path``."""
    import shutil

    from musiclit.data.audio import write_audio

    root = tmp_path_factory.mktemp("melody-data") / "data"
    shutil.copytree(tiny_dataset, root, ignore=shutil.ignore_patterns(".musiclit-cache"))
    caption = sorted(root.rglob("*.json"))
    caption = next(p for p in caption if p.name != "manifest.jsonl" and p.with_suffix(".wav").exists())
    write_audio(root / "hummed.wav", notes([60, 62, 64, 65], 1.0)[None], SR)
    data = json.loads(caption.read_text())
    data["melody_path"] = str(Path("..") / "hummed.wav") if caption.parent != root else "hummed.wav"
    caption.write_text(json.dumps(data))
    return root


EXACT = ("--data.batch_size", "2", "--trainer.precision", "32-true", "--trainer.num_sanity_val_steps", "0",
         "--model.optimizer", "torch.optim.AdamW", "--model.optimizer.lr", "0.003", "--model.lora.dropout", "0.1",
         "--model.lora.init_lora_weights", "false", "--trainer.logger", "false", "--seed_everything", "0",
         "--trainer.max_steps", "4")  # fmt: skip


class Losses(Callback):
    """Records losses and logged values; can crash before a given step."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.losses: list[float] = []
        self.logged: list[dict[str, float]] = []
        self.crash_at = crash_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.crash_at:
            raise RuntimeError("simulated crash")
        assert batch["melody"].shape == (2, M.frames_for(2.0))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})


@pytest.fixture(scope="module")
def separator_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demucs") / "tiny-demucs.th"
    torch.save(tiny_demucs(), path)
    return path


@pytest.fixture(scope="module")
def melody_run(melody_dir: Path, melody_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train 4 steps straight, and 2 steps + crash + resume to 4 (the chroma of the clips as they are: Demucs is
    tested on its own below, it costs seconds per clip on this CPU)."""
    root = tmp_path_factory.mktemp("melody-run")
    args = (*EXACT, "--data.melody_separator", "null")
    straight = Losses()
    tiny_fit(melody_dir, melody_data, root / "a", *args, callbacks=[straight])
    first, second = Losses(crash_at=2), Losses()
    with pytest.raises(RuntimeError, match="simulated crash"):
        tiny_fit(melody_dir, melody_data, root / "b", *args, "--checkpoint.every_n_train_steps", "1",
                 callbacks=[first])  # fmt: skip
    cli = tiny_fit(melody_dir, melody_data, root / "b", *args, "--ckpt_path", "last", callbacks=[second])
    return {"root": root, "straight": straight, "first": first, "second": second, "cli": cli}


def test_melody_model_trains_and_resumes_exactly(melody_run: dict) -> None:
    straight, first, second = melody_run["straight"], melody_run["first"], melody_run["second"]
    assert len(straight.losses) == 4 and first.losses + second.losses == straight.losses
    assert all(np.isfinite(straight.losses))
    logged = straight.logged[-1]
    assert "train/text_dropped" in logged and "train/melody_dropped" in logged
    ckpt = torch.load(melody_run["root"] / "b" / "checkpoints" / "last.ckpt", weights_only=False)
    assert set(ckpt["state_dict"]) == melody_run["cli"].model.trainable_keys()


def test_chroma_cache_holds_each_melody_once_keyed_like_the_tokens(melody_run: dict, melody_data: Path) -> None:
    """Every clip's melody is cached beside its tokens, keyed like them (the file's content hash); the clip with
    ``melody_path`` reads the other file's chroma; a second build computes nothing."""
    from musiclit.data.audio import read_audio
    from musiclit.data.cache import TokenCache
    from musiclit.io import file_sha256

    dm = melody_run["cli"].datamodule
    cache = dm.melody_cache
    assert cache.folder.parent == dm.cache.folder.parent and cache.folder.name == M.MelodyChroma(None).id
    hummed = melody_data / "hummed.wav"
    key = file_sha256(hummed)
    np.testing.assert_array_equal(cache.get(key)[0], M.pitch_classes(read_audio(hummed, SR, 1)[0]))
    train, valid = dm.train_set, dm.valid_set
    named = [(s, i) for s in (train, valid) for i, c in enumerate(s.captions) if c.melody_path]
    assert len(named) == 1 and named[0][0].melody.keys[named[0][1]] == key
    for part in (train, valid):
        for i in range(len(part)):
            if not part.captions[i].melody_path:
                assert part.melody.keys[i] == part.keys[i]  # the clip itself: the key of its tokens
    # an item's melody is the cached melody at the crop's start, repeated past its end
    item = train[(1, 0)]
    first = int(round(item["offset"] * M.frame_rate()))
    want = M.window(np.asarray(cache.get(train.melody.keys[0])[0]), first, M.frames_for(2.0))
    np.testing.assert_array_equal(item["melody"].numpy(), want)
    before = sorted(p.name for p in cache.folder.iterdir())
    again = TokenCache(cache.root, cache.codec_id)
    again.build([hummed], M.MelodyChroma(None), lambda p: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert sorted(p.name for p in cache.folder.iterdir()) == before


def test_under_ddp_one_process_computes_the_melodies_and_the_others_read_them(
    module, melody_data: Path, tmp_path: Path
) -> None:
    """``prepare_data`` (one process) computes the tokens and melodies; ``setup`` in the other processes reads
    them and computes nothing (its chroma extractor raises if asked), and says so when they are missing."""
    from types import SimpleNamespace

    from musiclit.data.cache import CacheError
    from musiclit.data.datamodule import MusicDataModule

    def process(rank: int) -> MusicDataModule:
        dm = MusicDataModule(data_dir=str(melody_data), segment_duration=2.0, num_workers=0,
                             cache_dir=str(tmp_path / "cache"), melody_separator=None)  # fmt: skip
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank, lightning_module=module)
        return dm

    builder = process(0)
    builder.prepare_data()
    reader = process(1)
    chroma = module.melody_tokenizer(None)
    chroma.encode = lambda wav: (_ for _ in ()).throw(AssertionError("a reading process computed a melody"))
    reader.attach_melody(chroma)
    reader.setup("fit")
    standalone = MusicDataModule(data_dir=str(melody_data), segment_duration=2.0, num_workers=0,
                                 cache_dir=str(tmp_path / "other-cache"), melody_separator=None)  # fmt: skip
    standalone.attach_tokenizer(module.codec_tokenizer())
    standalone.attach_melody(module.melody_tokenizer(None))
    standalone.setup("fit")  # one process: computes everything itself, into another folder
    keys = reader.train_set.melody.keys + reader.valid_set.melody.keys
    assert keys == standalone.train_set.melody.keys + standalone.valid_set.melody.keys and keys
    for key in keys:
        np.testing.assert_array_equal(reader.melody_cache.get(key), standalone.melody_cache.get(key))
    for shard in reader.melody_cache.folder.glob("shard-*"):
        shard.unlink()
    late = process(1)
    late.attach_melody(chroma)
    with pytest.raises(CacheError, match="not in the cache"):
        late.setup("fit")


@pytest.mark.slow  # Demucs, even tiny, takes seconds per clip on a busy 2-core CPU
def test_cache_verb_removes_drums_and_bass_once(
    melody_dir: Path, tiny_dataset: Path, separator_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cache`` with a Demucs separator: the melody cache of that separator (its weights in the identity) holds the
    chroma of the clips with drums and bass removed."""
    import shutil

    from musiclit.data.audio import read_audio, resample
    from musiclit.data.cache import TokenCache
    from musiclit.io import file_sha256

    data = tmp_path / "data"
    (data / "clips").mkdir(parents=True)
    clips = sorted((tiny_dataset / "clips").glob("*.wav"))[:2]
    for clip in clips:
        for suffix in (".wav", ".json"):
            shutil.copy(clip.with_suffix(suffix), data / "clips")
    args = ["--model.pretrained", str(melody_dir), "--data.data_dir", str(data), "--data.valid_fraction", "0",
            "--data.melody_separator", str(separator_file), "--trainer.accelerator", "cpu"]  # fmt: skip
    assert cli_main(["cache", *args]) == 0
    assert "melody chroma cache" in capsys.readouterr().out
    chroma = M.MelodyChroma(torch.load(separator_file, weights_only=False), resample)
    assert chroma.id != M.MelodyChroma(None).id
    cache = TokenCache(data / ".musiclit-cache", chroma.id)
    assert len(cache) == 2
    separator = chroma.separator
    for clip in clips:
        stems = M.melody_stems(separator, read_audio(clip, 44100, 2))
        want = M.pitch_classes(resample(stems.mean(0, keepdims=True), 44100, SR)[0])
        np.testing.assert_array_equal(cache.get(file_sha256(clip))[0], want)
        assert not np.array_equal(want, M.pitch_classes(read_audio(clip, SR, 1)[0]))  # the separator did something


@pytest.fixture(scope="module")
def melody_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from musiclit.data.audio import write_audio

    path = tmp_path_factory.mktemp("melody-file") / "tune.wav"
    write_audio(path, notes([67, 69, 71, 72, 74], 0.5)[None], SR)  # 2.5 s
    return path


def test_greedy_generation_with_a_melody_equals_transformers_generate(melody_dir: Path, melody_file: Path) -> None:
    from musiclit.data.audio import read_audio
    from musiclit.infer.sampler import GenerationParams, load_generator

    gen = load_generator(str(melody_dir), device="cpu")
    classes = gen.encode_melody(read_audio(melody_file, SR, 1), SR)
    np.testing.assert_array_equal(classes, M.pitch_classes(read_audio(melody_file, SR, 1)[0]))
    params = GenerationParams(seconds=0.6, temperature=0.0, guidance_scale=3.0)
    ours = gen.generate(["calm piano"], params, melody=classes)
    tokens = gen.tokenizer(["calm piano"], return_tensors="pt")
    with torch.no_grad():
        theirs = gen.base.generate(**tokens, input_features=M.onehot(torch.from_numpy(classes)[None]),
                                   do_sample=False, guidance_scale=3.0, max_new_tokens=30 + 3).float()  # fmt: skip
    assert ours.codes.shape == (1, 4, 30)
    assert torch.equal(ours.audio, theirs[..., : ours.audio.shape[-1]])
    # without a melody: transformers' "no melody"
    plain = gen.generate(["calm piano"], params)
    with torch.no_grad():
        theirs = gen.base.generate(**tokens, do_sample=False, guidance_scale=3.0, max_new_tokens=33).float()
    assert torch.equal(plain.audio, theirs[..., : plain.audio.shape[-1]])
    assert not torch.equal(plain.codes, ours.codes)


def test_windows_past_the_first_follow_the_melody_on(melody_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each window reads the melody from its own start time: window 2 (starting at 1.5 s of the output)
    gets the melody's frames from round(1.5 x 7.8125) = 12 on, wrapped around the melody's end."""
    from musiclit.infer.sampler import GenerationParams, load_generator

    gen = load_generator(str(melody_dir), device="cpu")
    classes = np.arange(20, dtype=np.int64) % 12
    seen = []
    real = gen.sample_window

    def spy(enc, enc_mask, frames, params, generators, prompt=None, melody=None):
        seen.append(melody.argmax(-1)[0].numpy())
        return real(enc, enc_mask, frames, params, generators, prompt, melody)

    monkeypatch.setattr(gen, "sample_window", spy)
    params = GenerationParams(seconds=3.0, window_seconds=2.0, context_seconds=0.5, seed=1)
    result = gen.generate(["x"], params, melody=classes)
    assert result.codes.shape[-1] == 150 and len(seen) == 2
    np.testing.assert_array_equal(seen[0], M.window(classes, 0, 235))
    np.testing.assert_array_equal(seen[1], M.window(classes, 12, 235))


def test_melody_batches_do_not_depend_on_their_batch_mates(melody_dir: Path, melody_file: Path) -> None:
    from musiclit.infer.sampler import GenerationParams, load_generator

    gen = load_generator(str(melody_dir), device="cpu")
    classes = np.array([0, 4, 7, 4], dtype=np.int64)
    params = GenerationParams(seconds=0.3, seed=4)
    both = gen.generate(["rock", "a much longer prompt about jazz"], params, melody=classes)
    alone = gen.generate(["a much longer prompt about jazz"], params, seeds=[5], melody=classes)
    assert torch.equal(both.codes[1], alone.codes[0])


def test_melody_run_generates_with_a_melody_file_and_exports(
    melody_run: dict, melody_dir: Path, melody_file: Path, separator_file: Path, tmp_path: Path
) -> None:
    import soundfile as sf
    from peft import PeftModel
    from transformers import MusicgenMelodyForConditionalGeneration

    from musiclit.infer.export import export
    from musiclit.model.finetune import load_finetune

    ckpt = melody_run["root"] / "b" / "checkpoints" / "last.ckpt"
    out = tmp_path / "gen"
    args = ["generate", "--adapter", str(ckpt), "--prompt", "a tune", "--melody", str(melody_file),
            "--melody-separator", str(separator_file), "--seconds", "0.5", "--window", "0.4",
            "--context", "0.2", "--seed", "3", "--out", str(out)]  # fmt: skip
    assert cli_main(args) == 0
    meta = json.loads(next(out.glob("*.json")).read_text())
    assert meta["melody"]["path"] == str(melody_file.resolve()) and meta["melody"]["separator"]
    wav, sr = sf.read(next(out.glob("*.wav")), dtype="float32")
    assert sr == SR and len(wav) == 25 * 640
    regen = tmp_path / "regen"
    assert cli_main(["generate", "--from-json", str(next(out.glob("*.json"))), "--out", str(regen)]) == 0
    np.testing.assert_array_equal(sf.read(next(regen.glob("*.wav")), dtype="float32")[0], wav)

    ft = load_finetune(None, str(ckpt))
    tokens = ft.loaded.tokenizer(["a tune"], return_tensors="pt")
    inputs = {**tokens, "input_features": M.onehot(torch.randint(0, 12, (1, 50))),
              "decoder_input_ids": torch.randint(0, 2048, (4, 7))}  # fmt: skip
    with torch.no_grad():
        want = ft.model.eval()(**inputs).logits
        base = MusicgenMelodyForConditionalGeneration.from_pretrained(melody_dir).eval()(**inputs).logits
    assert (want - base).abs().max() > 1e-3
    peft_dir = export(str(ckpt), "peft", tmp_path / "peft")
    merged_dir = export(str(ckpt), "merged", tmp_path / "merged")
    alone = PeftModel.from_pretrained(MusicgenMelodyForConditionalGeneration.from_pretrained(melody_dir), str(peft_dir))
    merged = MusicgenMelodyForConditionalGeneration.from_pretrained(merged_dir)
    with torch.no_grad():
        torch.testing.assert_close(alone.eval()(**inputs).logits, want)
        torch.testing.assert_close(merged.eval()(**inputs).logits, want, rtol=1e-5, atol=1e-5)
    assert (merged_dir / "tokenizer.json").exists() or (merged_dir / "tokenizer_config.json").exists()


def test_melody_audiocraft_export_follows_the_layout_and_imports_back(
    melody_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """audiocraft's melody LM: prepended conditions (no cross-attention weights), the chroma projection under
    ``self_wav``, the chroma STFT window it keeps as a buffer; importing it back gives the merged model exactly."""
    from transformers import MusicgenMelodyForConditionalGeneration

    from musiclit.infer.export import ExportError, export, import_audiocraft

    # the tiny text encoder is no model audiocraft can load (export refuses it: tests/test_audiocraft.py);
    # this test checks the LM's layout, so it is declared t5-base here
    monkeypatch.setattr("musiclit.model.audiocraft.audiocraft_text_encoder", lambda config: "t5-base")

    ckpt = melody_run["root"] / "b" / "checkpoints" / "last.ckpt"
    folder = export(str(ckpt), "audiocraft", tmp_path / "ac")
    merged = MusicgenMelodyForConditionalGeneration.from_pretrained(export(str(ckpt), "merged", tmp_path / "m"))
    hf = merged.state_dict()
    pkg = torch.load(folder / "state_dict.bin", map_location="cpu", weights_only=True)
    best, cfg = pkg["best_state"], pkg["xp.cfg"]
    assert not any("cross_attention" in k or "norm_cross" in k for k in best)
    chroma = "condition_provider.conditioners.self_wav."
    assert torch.equal(best[chroma + "output_proj.weight"], hf["audio_enc_to_dec_proj.weight"])
    assert torch.equal(best[chroma + "output_proj.bias"], hf["audio_enc_to_dec_proj.bias"])
    assert torch.equal(best[chroma + "chroma.spec.window"], torch.hann_window(16384))
    q, k, v = (hf[f"decoder.model.decoder.layers.1.self_attn.{n}_proj.weight"] for n in "qkv")
    assert torch.equal(best["transformer.layers.1.self_attn.in_proj_weight"], torch.cat([q, k, v]))
    assert cfg["fuser"]["prepend"] == ["self_wav", "description"] and cfg["fuser"]["cross"] == []
    stem = cfg["conditioners"]["self_wav"]
    assert stem["model"] == "chroma_stem" and stem["chroma_stem"]["radix2_exp"] == 14 and stem["chroma_stem"]["argmax"]
    assert cfg["classifier_free_guidance"]["training_dropout"] == 0.2
    assert cfg["attribute_dropout"]["wav"]["self_wav"] == 0.5
    melody_base = str(json.loads((folder / "musiclit_export.json").read_text())["base"])
    imported = MusicgenMelodyForConditionalGeneration.from_pretrained(
        import_audiocraft(folder, melody_base, tmp_path / "back")
    ).state_dict()
    assert set(imported) == set(hf)
    for key, value in hf.items():
        assert torch.equal(imported[key], value), key
    # a melody fine-tune needs a melody base
    from musiclit.model.musicgen import create_tiny_model_folder

    text_only = create_tiny_model_folder(tmp_path / "text-only", seed=0, text_dim=24)
    with pytest.raises(ExportError, match=r"a melody MusicGen, but the base .* is not a melody model"):
        import_audiocraft(folder, str(text_only), tmp_path / "wrong")


def test_estimate_knows_the_melody_architecture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Parameter counts against a real melody module (no cross-attention), and the shipped config fits 12 GB."""
    from musiclit.commands.estimate import main as estimate_main
    from musiclit.model.lora import LoraSettings
    from musiclit.model.musicgen import tiny_config_dict
    from musiclit.train.estimate import GiB, Spec, estimate, load_configs, spec_from_config
    from musiclit.train.module import MusicGenModule

    path = tmp_path / "config.json"
    path.write_text(json.dumps(tiny_config_dict(hidden_size=64, num_layers=3, ffn_dim=256, melody=True)))
    config = {"model": {"pretrained": str(path), "lora": {"r": 4, "target_modules": "all-linear", "lm_heads": True}},
              "data": {"batch_size": 1, "segment_duration": 2.0}, "trainer": {"precision": "32-true"}}  # fmt: skip
    spec = spec_from_config(config)
    assert spec.melody and spec.prefix_tokens == 235 + 32
    module = MusicGenModule(str(path), lora=LoraSettings(r=4, target_modules="all-linear", lm_heads=True))
    assert spec.lora_params == sum(p.numel() for p in module.parameters() if p.requires_grad)
    weights = sum(p.numel() for n, p in module.base.decoder.named_parameters() if "lora_" not in n)
    assert abs(spec.decoder_params - weights) / weights < 0.02
    hub = spec_from_config(load_configs(["configs/base.yaml", "configs/musicgen-melody-lora.yaml"]))
    assert hub.melody and (hub.hidden, hub.layers) == (1536, 48) and hub.checkpointing
    assert sum(estimate(hub).values()) <= 12 * GiB
    text_only = Spec(**{**hub.__dict__, "melody": False})
    assert Spec(**hub.__dict__).decoder_params < text_only.decoder_params  # no cross-attention weights
    assert spec_from_config({"model": {"pretrained": "facebook/musicgen-melody-large"}}).hidden == 2048
    assert estimate_main(["--config", "configs/base.yaml", "--config", "configs/musicgen-melody-lora.yaml"]) == 0
    assert "this config fits" in capsys.readouterr().out


def test_melody_errors_name_the_file_or_option(
    melody_dir: Path, tiny_dataset: Path, tiny_model_dir: Path, melody_file: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    import shutil

    from musiclit.data.caption import Caption, CaptionError

    # the caption field: a string, kept through a load/save round trip
    named = Caption.from_dict({"description": "x", "melody_path": "tunes/a.wav"})
    assert named.melody_path == "tunes/a.wav" and named.to_dict()["melody_path"] == "tunes/a.wav"
    with pytest.raises(CaptionError, match="field 'melody_path' must be str"):
        Caption.from_dict({"melody_path": 3}, source="clip.json")
    # a melody_path that does not exist: the caption JSON and the path are named
    data = tmp_path / "data"
    (data / "clips").mkdir(parents=True)
    clip = sorted((tiny_dataset / "clips").glob("*.wav"))[0]
    shutil.copy(clip, data / "clips")
    caption = json.loads(clip.with_suffix(".json").read_text())
    (data / "clips" / clip.with_suffix(".json").name).write_text(json.dumps({**caption, "melody_path": "nope.wav"}))
    args = ["--model.pretrained", str(melody_dir), "--data.data_dir", str(data), "--data.valid_fraction", "0",
            "--data.melody_separator", "null", "--trainer.accelerator", "cpu"]  # fmt: skip
    assert cli_main(["cache", *args]) == 2
    err = capsys.readouterr().err
    assert f"{clip.stem}.json: melody_path nope.wav: no such audio file" in err
    # melody models train from the token cache
    assert cli_main(["fit", *args, "--data.token_cache", "false", "--trainer.max_steps", "1",
                     "--trainer.default_root_dir", str(tmp_path / "run")]) == 2  # fmt: skip
    assert "data.token_cache true" in capsys.readouterr().err
    # a melody needs a melody model
    rc = cli_main(["generate", "--model", str(tiny_model_dir), "--melody", str(melody_file), "--melody-separator",
                   "none", "--seconds", "0.2", "--out", str(tmp_path / "g")])  # fmt: skip
    assert rc == 2 and "a melody needs a MusicGen-melody model" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not Path("/work/shared/realmusic-dev/labels.json").is_file(), reason="realmusic-dev is absent")
def test_melody_pitch_classes_follow_the_score_of_real_music() -> None:
    """On the 16 real pieces (realmusic-dev), with MusicGen-melody's settings (0.5 s windows): the pitch class of
    a frame is one the MIDI score sounds over the whole window (drums excluded) far more often than chance.
    Measured: 0.63 of 2055 frames vs 0.16 by chance; every piece with 20+ such frames at least 1.6x chance."""
    from midi_notes import read_notes

    from musiclit.data.audio import read_audio

    root = Path("/work/shared/realmusic-dev")
    half = M.N_FFT / SR / 2
    hits = chance = count = 0
    for entry in json.loads((root / "labels.json").read_text())["files"]:
        score = [n for n in read_notes(root / entry["midi"]) if n.channel != 9]
        starts, ends = np.array([n.start for n in score]), np.array([n.end for n in score])
        classes = np.array([n.pitch % 12 for n in score])
        melody = M.pitch_classes(read_audio(root / entry["path"], SR, 1)[0])
        h = c = n = 0
        for i, pc in enumerate(melody):
            t = i * M.HOP / SR
            sounding = set(classes[(starts <= t - half) & (ends >= t + half)].tolist())
            if sounding:
                n, h, c = n + 1, h + (int(pc) in sounding), c + len(sounding) / 12
        if n >= 20:
            assert h / n > 1.5 * c / n, entry["path"]
        hits, chance, count = hits + h, chance + c, count + n
    assert hits / count > 0.55 and hits / count > 3 * chance / count


def test_melody_decoder_checkpointing_gives_the_same_loss_and_grads(melody_dir: Path) -> None:
    """The 12 GB config checkpoints the melody decoder: same loss and LoRA gradients as without."""
    from musiclit.model.lora import LoraSettings
    from musiclit.train.module import MusicGenModule

    codes = torch.randint(0, 2048, (2, 4, 8), generator=torch.Generator().manual_seed(1))
    frame_mask = torch.ones(2, 8, dtype=torch.bool)
    melody = M.onehot(torch.randint(0, 12, (2, 16), generator=torch.Generator().manual_seed(2)))
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        m = MusicGenModule(str(melody_dir), lora=LoraSettings(init_lora_weights=False, dropout=0.0),
                           gradient_checkpointing=checkpointing).train()  # fmt: skip
        assert m.base.decoder.is_activation_checkpointing == checkpointing
        for mod in m.base.decoder.modules():  # dropout off to compare exactly
            if isinstance(getattr(mod, "dropout", None), float):
                mod.dropout = 0.0
        text, mask = m.encode_text(["a", "bb"])
        loss = m(codes, frame_mask, text, mask, melody)[0]
        loss.backward()
        results.append((loss.detach(), {k: p.grad.clone() for k, p in m.named_parameters() if p.requires_grad}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for key, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][key], atol=1e-6, rtol=1e-5)
