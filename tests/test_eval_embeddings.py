"""EnCodec-latent embeddings: pooling against a loop, shapes, and FAD/KAD that separate music from noise."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from musiclit.eval.embeddings import encodec_embeddings, encodec_latents, pool_windows
from musiclit.eval.metrics import audio_distances

SR = 32000


def test_pool_windows_against_a_loop():
    lat = torch.randn(3, 107)
    out = pool_windows(lat, 25)
    expected = [lat[:, i : i + 25].double().mean(-1).numpy() for i in range(0, 100, 25)]  # tail of 7 < 12.5: dropped
    np.testing.assert_allclose(out, np.stack(expected))
    out = pool_windows(lat, 25, frames=90)  # frames past 90 are padding; tail of 15 >= 12.5 kept
    expected = [lat[:, i : min(i + 25, 90)].double().mean(-1).numpy() for i in range(0, 90, 25)]
    np.testing.assert_allclose(out, np.stack(expected))
    np.testing.assert_allclose(pool_windows(lat, 200), lat.double().mean(-1).numpy()[None])


@pytest.fixture(scope="module")
def codec(tiny_model_dir):
    from musiclit.model.musicgen import load_musicgen

    return load_musicgen(str(tiny_model_dir)).model.audio_encoder


def test_embeddings_are_pooled_encoder_latents(codec):
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal((1, int(3.0 * SR))).astype(np.float32) * 0.1,
             rng.standard_normal(int(2.5 * SR)).astype(np.float32) * 0.1]  # fmt: skip
    out = encodec_embeddings(codec, clips, window_seconds=1.0)
    dim = codec.config.hidden_size
    assert [o.shape for o in out] == [(3, dim), (3, dim)]  # 2.5 s: two windows and a half window kept
    lat = encodec_latents(codec, torch.from_numpy(clips[0])[None])[0]
    np.testing.assert_allclose(out[0][1], lat[:, 50:100].double().mean(-1).numpy(), rtol=1e-5, atol=1e-7)
    stereo = np.stack([clips[1], clips[1]])  # a stereo clip is mixed down to the codec's mono
    np.testing.assert_allclose(encodec_embeddings(codec, [stereo])[0], out[1], rtol=1e-5, atol=1e-6)


def test_fad_and_kad_on_latents_separate_music_from_noise_and_tones(codec):
    from musiclit.data.synth import random_specs, render_song

    specs = random_specs(16, 4.0, seed=5)
    songs = [render_song(s, SR, seed=i)[0] for i, s in enumerate(specs)]
    rng = np.random.default_rng(1)
    t = np.arange(4 * SR) / SR
    noise = [(0.2 * rng.standard_normal(4 * SR)).astype(np.float32) for _ in range(8)]
    tones = [(0.3 * np.sin(2 * np.pi * rng.uniform(100, 1000) * t)).astype(np.float32) for _ in range(8)]

    def emb(clips):
        return np.concatenate(encodec_embeddings(codec, clips, window_seconds=0.5))

    a, b, n, s = emb(songs[::2]), emb(songs[1::2]), emb(noise), emb(tones)
    same, to_noise, to_tones = audio_distances(a, b), audio_distances(a, n), audio_distances(a, s)
    # measured with the tiny random codec (song seeds 5 / 6 / 7): FAD songs 4.3 / 8.6 / 3.0 against noise
    # 57 / 86 / 47 and tones 67 / 129 / 53; KAD songs 0.019 / 0.057 / -0.007, noise 0.066 / 0.025 / 0.11,
    # tones 2.7 / 3.0 / 3.0. FAD separates both; KAD separates the tones, not the noise, on random latents
    assert same["fad"] < 0.3 * to_noise["fad"] and same["fad"] < 0.3 * to_tones["fad"]
    assert abs(same["kad"]) < 0.2 * to_tones["kad"] and to_noise["kad"] < to_tones["kad"]
    assert same["n_reference"] == len(a) and same["dim"] == codec.config.hidden_size


def test_audio_distances_are_scale_free_and_zero_in_expectation():
    rng = np.random.default_rng(2)
    ref, cand = rng.standard_normal((3000, 8)), rng.standard_normal((3000, 8))
    d1 = audio_distances(ref, cand)
    d2 = audio_distances(1e-4 * ref + 3.0, 1e-4 * cand + 3.0)  # a codec with tiny latents: same numbers
    assert d1["fad"] == pytest.approx(d2["fad"], rel=1e-6) and d1["kad"] == pytest.approx(d2["kad"], rel=1e-6)
    assert d1["fad"] < 0.05 and abs(d1["kad"]) < 0.01
    shifted = audio_distances(ref, cand + np.array([1.0] + [0.0] * 7))
    assert shifted["fad"] == pytest.approx(1.0, abs=0.15) and shifted["kad"] > 5 * abs(d1["kad"])


def test_code_embeddings_are_the_sum_of_the_selected_codebook_vectors(codec):
    from musiclit.eval.embeddings import code_embeddings, code_latents

    rng = np.random.default_rng(4)
    codes = rng.integers(0, 2048, size=(4, 120))
    lat = code_latents(codec, torch.from_numpy(codes))[0]  # (D, T)
    books = [layer.codebook.embed for layer in codec.quantizer.layers[:4]]  # (2048, D) each
    expected = sum(book[torch.from_numpy(codes[k])] for k, book in enumerate(books)).T
    torch.testing.assert_close(lat, expected.float())
    # padding (the special token) ends the clip; windows of 50 frames
    padded = np.concatenate([codes, np.full((4, 30), 2048)], axis=1)
    out = code_embeddings(codec, [padded], frame_rate=50, window_seconds=1.0)[0]
    np.testing.assert_allclose(out, pool_windows(lat, 50), rtol=1e-6)
    # stereo: left and right codebooks interleaved -> the two latents side by side
    stereo = np.stack([codes, codes[::-1]], axis=1).reshape(8, 120)
    both = code_latents(codec, torch.from_numpy(stereo), audio_channels=2)[0]
    torch.testing.assert_close(both[: lat.shape[0]], lat)
    torch.testing.assert_close(both[lat.shape[0] :], code_latents(codec, torch.from_numpy(codes[::-1].copy()))[0])


def test_quantized_latents_of_encoded_audio_approximate_the_encoder_latents(codec):
    from musiclit.data.synth import random_specs, render_song
    from musiclit.eval.embeddings import code_latents
    from musiclit.model.codec import encode_audio

    song = torch.from_numpy(render_song(random_specs(1, 3.0, seed=2)[0], SR)[0])
    raw = encodec_latents(codec, song[None, None])[0]
    codes = encode_audio(codec, song[None, None], 1)[0]
    quantized = code_latents(codec, codes)[0]
    # oracle: the sum over the residual stages of each code's codebook row
    books = [layer.codebook.embed for layer in codec.quantizer.layers[: codes.shape[0]]]
    expected = sum(book[codes[k]] for k, book in enumerate(books)).t()
    torch.testing.assert_close(quantized, expected, rtol=1e-5, atol=1e-6)
    # the stages bring the sum closer to the encoder's latents (the tiny random codec's codebooks come from
    # one broadband signal, so the residual stays large on music: measured 0.919, 0.914, 0.914, 0.914 of the
    # latents' norm; a trained codec's is far smaller)
    errors = [float((sum(b[codes[k]] for k, b in enumerate(books[: n + 1])).t() - raw).norm() / raw.norm())
              for n in range(len(books))]  # fmt: skip
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(errors)) and errors[-1] < errors[0] < 1.0


class FrameStats(torch.nn.Module):
    """A stand-in for a user's embedding model: per 0.25 s frame, mean |x| and std (B, S) -> (B, N, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.sample_rate = 16000

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x[:, : x.shape[1] // 4000 * 4000].reshape(x.shape[0], -1, 4000)
        return torch.stack([frames.abs().mean(-1), frames.std(-1)], dim=-1)


def save_frame_stats(path) -> str:
    torch.jit.script(FrameStats()).save(str(path))
    return str(path)


def test_user_embedding_models_load_from_torchscript(tmp_path):
    from musiclit.errors import MusiclitError
    from musiclit.eval.embeddings import load_embedding_model, model_embeddings

    module, rate, name = load_embedding_model(save_frame_stats(tmp_path / "stats.pt"))
    assert (rate, name) == (16000, "stats")
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR).astype(np.float32)  # 1 s at 32 kHz
    out = model_embeddings(module, rate, [tone, np.stack([tone, tone])], SR)
    assert [o.shape for o in out] == [(4, 2), (4, 2)]  # resampled to 16 kHz: 4 frames of 0.25 s
    np.testing.assert_allclose(out[0][:, 0], 0.5 * 2 / np.pi, rtol=0.02)  # mean |sin| = 2/pi x amplitude
    np.testing.assert_allclose(out[1], out[0], rtol=1e-5)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(MusiclitError, match=r"junk\.pt: not a TorchScript file"):
        load_embedding_model(str(tmp_path / "junk.pt"))
