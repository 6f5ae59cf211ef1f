"""Copy detection: exact token runs (against a brute-force longest-common-run oracle and on real codec tokens)
and melodic copies (chroma), on synthesized songs with known ground truth and on real music."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from musiclit.eval.copying import (
    ChromaIndex,
    TokenIndex,
    frame_hashes,
    ngram_hashes,
    pair_features,
)

SR = 32000
REALMUSIC = Path("/work/shared/realmusic-dev")


# ---------------------------------------------------------------------------------------------- tokens


def _longest_common_run(a: np.ndarray, b: np.ndarray) -> int:
    """Brute force: the longest run of identical (all-codebook) frames of a that also appears in b."""
    best = 0
    prev = np.zeros(b.shape[1] + 1, dtype=np.int64)
    for i in range(a.shape[1]):
        cur = np.zeros_like(prev)
        same = (b == a[:, i : i + 1]).all(0)
        cur[1:] = np.where(same, prev[:-1] + 1, 0)
        best = max(best, int(cur.max()))
        prev = cur
    return best


def test_hashes_see_every_codebook_and_the_order_of_frames():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2048, size=(4, 50))
    base = frame_hashes(codes)
    for k in range(4):  # a change in any single codebook changes that frame's hash
        changed = codes.copy()
        changed[k, 10] = (changed[k, 10] + 1) % 2048
        assert (frame_hashes(changed) != base).sum() == 1
    swapped = codes.copy()
    swapped[:, [3, 4]] = swapped[:, [4, 3]]
    assert (ngram_hashes(swapped, 5) != ngram_hashes(codes, 5)).any()
    assert len(np.unique(ngram_hashes(codes, 5))) == 46


def test_longest_run_matches_brute_force_on_random_planted_copies():
    rng = np.random.default_rng(1)
    train = [rng.integers(0, 64, size=(4, int(rng.integers(80, 200)))) for _ in range(12)]  # small alphabet
    index = TokenIndex(ngram=4, frame_rate=50.0)
    for i, codes in enumerate(train):
        index.add(f"clip{i}", codes)
    for trial in range(25):
        query = rng.integers(0, 64, size=(4, 150))
        if trial % 5:
            src = int(rng.integers(len(train)))
            length = int(rng.integers(1, 60))
            start = int(rng.integers(0, train[src].shape[1] - length))
            at = int(rng.integers(0, 150 - length))
            query[:, at : at + length] = train[src][:, start : start + length]
        expected = max(_longest_common_run(query, t) for t in train)
        found = index.longest_match(query, "q")
        if expected < 4:  # shorter than one n-gram: not visible to the index
            assert found.frames < 4
            continue
        assert found.frames == expected, trial
        src = train[int(found.source.removeprefix("clip"))]
        q0, s0 = round(found.query_offset_s * 50), round(found.source_offset_s * 50)
        np.testing.assert_array_equal(query[:, q0 : q0 + found.frames], src[:, s0 : s0 + found.frames])


def test_generic_ngrams_and_padding_are_not_copies():
    rng = np.random.default_rng(2)
    silence = np.full((4, 60), 7)
    train = [np.concatenate([rng.integers(0, 2048, size=(4, 100)), silence], axis=1) for _ in range(10)]
    train[0][:, -5:] = 2048  # padding frames are never indexed
    index = TokenIndex(ngram=5, frame_rate=50.0, max_clips=3)
    for i, codes in enumerate(train):
        index.add(f"clip{i}", codes)
    assert index.longest_match(silence, "silence").source is None  # shared by 10 clips: generic
    assert index.longest_match(np.full((4, 30), 2048), "pad").source is None
    copy = index.longest_match(train[4][:, :100], "copy")
    assert copy.source == "clip4" and copy.frames == 100 and copy.flagged


@pytest.fixture(scope="module")
def codec_songs(tiny_model_dir):
    """Five synthesized songs of 12 s and their codes from the tiny model's codec (a real EnCodec, random weights)."""
    from musiclit.data.synth import random_specs, render_song
    from musiclit.model.musicgen import load_musicgen

    codec = load_musicgen(str(tiny_model_dir)).model.audio_encoder
    specs = random_specs(6, 12.0, seed=3)
    songs = [render_song(s, SR, seed=i)[0] for i, s in enumerate(specs)]

    def encode(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return codec.encode(torch.from_numpy(x)[None, None], bandwidth=2.2).audio_codes[0, 0].numpy()

    return specs, songs, [encode(s) for s in songs], encode


def test_token_copies_of_real_codec_tokens(codec_songs):
    _, _, codes, encode = codec_songs
    index = TokenIndex(frame_rate=50.0)
    for i in range(5):  # song 5 is held out
        index.add(f"song{i}", codes[i])
    # a generated clip that IS a training clip
    same = index.longest_match(codes[2], "same")
    assert (same.source, same.frames, same.source_offset_s, same.query_offset_s) == ("song2", 600, 0.0, 0.0)
    assert same.flagged and same.seconds == pytest.approx(12.0)
    # a 10 s slice of one, shifted in time: it starts 3 s into the generated clip, 1.5 s into the source
    shifted = np.concatenate([codes[5][:, :150], codes[3][:, 75:575], codes[5][:, 300:350]], axis=1)
    found = index.longest_match(shifted, "shifted")
    assert found.source == "song3" and found.flagged
    assert found.seconds == pytest.approx(10.0)
    assert found.source_offset_s == pytest.approx(1.5) and found.query_offset_s == pytest.approx(3.0)
    # another song, noise, silence: nothing flagged
    for name, clip in (("other", codes[5]),
                       ("noise", encode(0.3 * np.random.default_rng(0).standard_normal(6 * SR).astype(np.float32))),
                       ("silence", encode(np.zeros(6 * SR, np.float32)))):  # fmt: skip
        result = index.longest_match(clip, name)
        assert not result.flagged and result.seconds < 0.5, result


# ---------------------------------------------------------------------------------------------- chroma


def test_pair_features_square_the_dot_product():
    x, y = torch.randn(5, 12), torch.randn(5, 12)
    torch.testing.assert_close((pair_features(x) * pair_features(y)).sum(-1), (x * y).sum(-1) ** 2)


@pytest.fixture(scope="module")
def chroma_songs():
    from musiclit.data.synth import random_specs, render_song

    specs = random_specs(8, 20.0, seed=0)
    songs = [render_song(s, SR, seed=i)[0] for i, s in enumerate(specs)]
    index = ChromaIndex(sample_rate=SR)
    for i in range(6):  # songs 6 and 7 are held out
        for c in range(2):
            index.add(f"song{i}_{c}", songs[i][c * 10 * SR : (c + 1) * 10 * SR])
    return specs, songs, index


def test_melodic_copy_of_a_training_clip(chroma_songs):
    _, songs, index = chroma_songs
    m = index.match(songs[2][10 * SR : 20 * SR], "same")
    assert m.flagged and m.source == "song2_1" and m.transpose == 0 and m.similarity > 0.95
    assert m.source_offset_s == pytest.approx(m.query_offset_s, abs=0.13)
    assert m.matched_seconds == pytest.approx(10.0, abs=0.2)
    assert m.nearest[0][0] == "song2_1"


def test_melodic_copy_of_a_slice_shifted_in_time(chroma_songs):
    _, songs, index = chroma_songs
    # 10 s of song 4 from 10.3 s (off the chroma frame grid), starting 1.7 s into the generated clip
    query = np.concatenate([np.zeros(int(1.7 * SR), np.float32), songs[4][int(10.3 * SR) : int(20.0 * SR)]])
    m = index.match(query, "shifted")
    assert m.flagged and m.source == "song4_1" and m.transpose == 0
    # source time = query time - 1.7 + 0.3 (the clip starts at 10 s of the song)
    assert m.source_offset_s - m.query_offset_s == pytest.approx(-1.4, abs=0.13)


def test_transposed_melodic_copy_is_found_only_key_invariantly(chroma_songs):
    from musiclit.data.synth import render_song

    specs, _, index = chroma_songs
    up3 = render_song(replace(specs[1], tonic=(specs[1].tonic + 3) % 12), SR, seed=1)[0][: 10 * SR]
    m = index.match(up3, "transposed")
    assert m.flagged and m.source == "song1_0" and m.transpose == 3
    assert m.source_offset_s == pytest.approx(m.query_offset_s, abs=0.13)
    strict = ChromaIndex(sample_rate=SR, key_invariant=False)
    strict.names, strict.chromas = index.names, index.chromas
    assert not strict.match(up3, "transposed").flagged


def test_other_songs_and_noise_are_not_melodic_copies(chroma_songs):
    _, songs, index = chroma_songs
    for j in (6, 7):
        for c in range(2):
            m = index.match(songs[j][c * 10 * SR : (c + 1) * 10 * SR], f"other{j}")
            assert not m.flagged, m
    noise = 0.3 * np.random.default_rng(0).standard_normal(10 * SR).astype(np.float32)
    assert index.match(noise, "noise").similarity < 0.4
    assert index.match(np.zeros(10 * SR, np.float32), "silence").similarity == 0.0


@pytest.mark.slow
@pytest.mark.skipif(not (REALMUSIC / "labels.json").is_file(), reason="realmusic-dev is not on this machine")
def test_melodic_copies_in_real_music():
    """Real pieces cut into 10 s training clips: a slice of one is found at the right place (also transposed
    by a semitone, which resampling does while changing the tempo by 6%); no clip of another piece is flagged."""
    from musiclit.data.audio import read_audio, resample

    labels = json.loads((REALMUSIC / "labels.json").read_text())
    wavs = [read_audio(REALMUSIC / f["path"], SR, 1)[0] for f in labels["files"]]
    index = ChromaIndex(sample_rate=SR)
    train = [0, 2, 4, 6, 8, 10, 12, 14]
    for i in train:
        for c in range(0, len(wavs[i]) // SR - 5, 10):
            index.add(f"{i}@{c}", wavs[i][c * SR : (c + 10) * SR])
    # piece 2 (Mozart, no literal repeats): 10 s from 13.7 s; the clip "2@10" starts at 10 s
    m = index.match(wavs[2][int(13.7 * SR) : int(23.7 * SR)], "slice")
    assert m.flagged and m.source in ("2@10", "2@20")
    start = int(m.source.split("@")[1])
    assert start + m.source_offset_s - m.query_offset_s == pytest.approx(13.7, abs=0.13)
    for semitones in (1, -1):
        piece = wavs[12][20 * SR : 30 * SR][None]
        m = index.match(resample(piece, int(SR * 2 ** (semitones / 12)), SR)[0], "transposed")
        assert m.flagged and m.source.startswith("12@") and m.transpose == semitones % 12, m
    others = [index.match(wavs[j][c * SR : (c + 10) * SR], f"{j}@{c}")
              for j in range(16) if j not in train for c in range(0, len(wavs[j]) // SR - 10, 10)]  # fmt: skip
    assert not any(m.flagged for m in others), [m for m in others if m.flagged]
