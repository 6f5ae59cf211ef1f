"""Audio decoding, crop/pad/mask and the DataModule, on audio with ground truth built in."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from musiclit.data.audio import AudioError, crop_or_pad, read_audio, write_audio
from musiclit.data.caption import Caption, CaptionDropout
from musiclit.data.datamodule import MusicDataModule
from musiclit.data.datasets import ClipDataset, EpochSampler, ResumableLoader, collate_clips
from musiclit.data.manifest import ClipEntry


def _peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * sr / len(x))


@pytest.mark.parametrize(("rate", "fmt"), [(44100, "wav"), (48000, "flac"), (22050, "ogg"), (16000, "mp3")])
def test_decode_resample_keeps_pitch_and_duration(tmp_path, rate, fmt):
    import soundfile as sf

    seconds, freq = 2.0, 440.0
    t = np.arange(int(seconds * rate)) / rate
    stereo = np.stack([np.sin(2 * np.pi * freq * t), 0.5 * np.sin(2 * np.pi * freq * t)], axis=1) * 0.5
    path = tmp_path / f"tone.{fmt}"
    sf.write(str(path), stereo, rate, format=fmt.upper())
    wav = read_audio(path, sample_rate=32000, channels=1)
    assert wav.shape[0] == 1 and wav.dtype == np.float32
    assert abs(wav.shape[1] / 32000 - seconds) < 0.06  # mp3 encoders pad a few ms
    assert abs(_peak_hz(wav[0, 3200:-3200], 32000) - freq) < 2.0
    # the downmix is the mean of the channels: amplitude (0.5 + 0.25) / 2
    assert abs(np.abs(wav[0, 8000:-8000]).max() - 0.375) < 0.03


def test_read_segment_and_stereo(tmp_path):
    sr = 32000
    ramp = np.arange(sr * 3, dtype=np.float32) / (sr * 3)
    write_audio(tmp_path / "r.wav", ramp[None], sr)
    part = read_audio(tmp_path / "r.wav", start=1.0, duration=0.5)
    assert part.shape == (1, sr // 2)
    assert part[0, 0] == pytest.approx(ramp[sr], abs=1e-6)
    assert read_audio(tmp_path / "r.wav", channels=2).shape == (2, sr * 3)


def test_bad_audio_names_the_file(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(AudioError, match=r"broken\.wav: cannot decode"):
        read_audio(bad)
    with pytest.raises(AudioError, match=r"missing\.wav: file not found"):
        read_audio(tmp_path / "missing.wav")


def test_crop_or_pad_mask():
    wav = np.ones((1, 10), dtype=np.float32)
    audio, mask = crop_or_pad(wav, 16, offset=4)
    assert audio.shape == (1, 16) and mask.sum() == 6
    assert audio[0, :6].sum() == 6 and audio[0, 6:].sum() == 0
    audio, mask = crop_or_pad(wav, 5, offset=2)
    assert mask.all() and audio.shape == (1, 5)


def _dataset(tmp_path, durations, sr=32000, **kwargs):
    entries = []
    for i, dur in enumerate(durations):
        n = int(dur * sr)
        # a ramp: the value at a sample tells where in the clip it came from
        write_audio(tmp_path / f"c{i}.wav", (np.arange(n, dtype=np.float32) / n)[None] * 0.9, sr)
        Caption(description=f"clip {i}", genre="folk", bpm=90).save(tmp_path / f"c{i}.json")
        entries.append(ClipEntry(f"c{i}.wav", dur, sr, 1, f"s{i}", "train"))
    return ClipDataset(tmp_path, entries, sample_rate=sr, channels=1, **kwargs)


def test_short_clip_is_padded_and_masked_not_dropped(tmp_path):
    ds = _dataset(tmp_path, [1.5], segment_duration=4.0)
    for epoch in range(3):
        item = ds[(epoch, 0)]
        assert item["audio"].shape == (1, 4 * 32000)
        assert int(item["audio_mask"].sum()) == 48000 and item["offset"] == 0.0
        assert not item["audio_mask"][48000:].any()


def test_random_crop_respects_min_segment_ratio(tmp_path):
    ds = _dataset(tmp_path, [10.0], segment_duration=4.0, min_segment_ratio=0.8, seed=5)
    starts = []
    for epoch in range(200):
        item = ds[(epoch, 0)]
        starts.append(item["offset"])
        real = int(item["audio_mask"].sum())
        assert real >= 0.8 * 4 * 32000 - 1
        # ground truth: the ramp value of the first sample says where the crop started
        assert float(item["audio"][0, 0]) == pytest.approx(0.9 * item["offset"] / 10.0, abs=1e-3)
    assert min(starts) >= 0 and max(starts) <= 10 - 3.2 + 1e-9
    assert max(starts) > 6.0 and min(starts) < 1.0  # covers the range
    assert ds[(7, 0)]["offset"] == ds[(7, 0)]["offset"]  # keyed: same epoch, same crop


def test_validation_crops_are_deterministic(tmp_path):
    ds = _dataset(tmp_path, [10.0], segment_duration=4.0, random_crop=False)
    a, b = ds[(0, 0)], ds[(9, 0)]
    assert a["offset"] == b["offset"] == 0.0 and torch.equal(a["audio"], b["audio"])
    assert a["caption"] == Caption.load(tmp_path / "c0.json").full_text()


def test_caption_dropout_varies_by_epoch_but_is_reproducible(tmp_path):
    ds = _dataset(tmp_path, [2.0], segment_duration=2.0, caption_dropout=CaptionDropout(merge_prob=1.0), seed=1)
    texts = [ds[(e, 0)]["caption"] for e in range(30)]
    assert len(set(texts)) > 1 and all(texts)
    assert texts == [ds[(e, 0)]["caption"] for e in range(30)]


def test_sampler_order_and_resume_position():
    sampler = EpochSampler(10, shuffle=True, seed=0)
    first = list(sampler)
    assert sorted(i for _, i in first) == list(range(10))
    sampler.set_epoch(1)
    assert [i for _, i in sampler] != [i for _, i in first]
    sampler.set_epoch(1)
    sampler.start = 4
    assert [i for _, i in sampler] == sampler.order(1)[4:]


def test_loader_state_resumes_mid_epoch_and_after_epoch_end(tmp_path):
    ds = _dataset(tmp_path, [1.0] * 6, segment_duration=1.0)
    loader = ResumableLoader(ds, EpochSampler(6, True, 0), batch_size=2, collate_fn=collate_clips)
    loader.epoch_sampler.set_epoch(3)
    full = [b["index"].tolist() for b in loader]
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    assert state == {"epoch": 3, "batches_done": 1, "batch_size": 2, "world_size": 1, "batches": 3}
    fresh = ResumableLoader(ds, EpochSampler(6, True, 0), batch_size=2, collate_fn=collate_clips)
    fresh.load_state_dict(state)
    assert [b["index"].tolist() for b in fresh] == full[1:]
    fresh.load_state_dict({"epoch": 3, "batches_done": 3})  # finished epoch: continue with the next
    assert fresh.epoch_sampler.epoch == 4 and len(list(fresh)) == 3


def test_loader_refuses_a_position_inside_an_epoch_of_another_layout(tmp_path):
    """A mid-epoch position counts batches of one size on one number of processes: in another layout it is
    refused with the way out; at an epoch's end any layout continues with the next epoch."""
    from musiclit.errors import ConfigError

    ds = _dataset(tmp_path, [1.0] * 6, segment_duration=1.0)
    saved = {"epoch": 3, "batches_done": 1, "batch_size": 2, "world_size": 1, "batches": 3}
    for batch_size, world in ((3, 1), (2, 2)):
        other = ResumableLoader(ds, EpochSampler(6, True, 0, rank=0, world_size=world), batch_size=batch_size,
                                collate_fn=collate_clips)  # fmt: skip
        with pytest.raises(ConfigError, match=r"--data.batch_size 2 and 1 device"):
            other.load_state_dict(saved)
        other.load_state_dict({**saved, "batches_done": 3})
        assert other.epoch_sampler.epoch == 4 and other.epoch_sampler.start == 0


def test_datamodule_splits_by_song(tiny_dataset):
    dm = MusicDataModule(str(tiny_dataset), batch_size=2, num_workers=0, segment_duration=2.0)
    dm.setup("fit")
    train_songs = {e.song_id for e in dm.train_set.entries}
    valid_songs = {e.song_id for e in dm.valid_set.entries}
    assert train_songs and valid_songs and not train_songs & valid_songs
    batch = next(iter(dm.train_dataloader()))
    assert batch["audio"].shape == (2, 1, 64000) and batch["audio_mask"].shape == (2, 64000)
    assert len(batch["captions"]) == 2 and all(batch["captions"])


@pytest.mark.parametrize(("size", "world"), [(10, 2), (7, 3), (5, 1)])
def test_sampler_shards_by_rank(size, world):
    """Ranks get disjoint shares of equal length that together cover every index (padded with repeats)."""
    shares = [EpochSampler(size, shuffle=True, seed=4, rank=r, world_size=world) for r in range(world)]
    for s in shares:
        s.set_epoch(2)
    orders = [[i for _, i in s] for s in shares]
    assert len({len(o) for o in orders}) == 1 and len(orders[0]) == -(-size // world)
    flat = [i for o in orders for i in o]
    assert set(flat) == set(range(size)) and len(flat) - len(set(flat)) == len(flat) - size
    single = EpochSampler(size, shuffle=True, seed=4)
    assert sorted(set(flat)) == sorted(single.order(2))


def test_length_buckets_reorder_within_the_epoch_and_cut_padding():
    """Bucketing only reorders the epoch, keeps it keyed, and groups short clips: fewer padded frames."""
    lengths = [2.0 if i % 2 else 8.0 for i in range(64)]  # half short clips, half full segments
    plain = EpochSampler(64, shuffle=True, seed=1)
    bucketed = EpochSampler(64, shuffle=True, seed=1, lengths=lengths, batch_size=4, bucket_batches=8)
    for s in (plain, bucketed):
        s.set_epoch(3)
    a, b = [i for _, i in plain], [i for _, i in bucketed]
    assert sorted(a) == sorted(b) == list(range(64)) and a != b
    assert b == [i for _, i in bucketed]  # same epoch, same order

    def padded_seconds(order):  # each batch is trimmed to its longest clip
        batches = [order[j : j + 4] for j in range(0, 64, 4)]
        return sum(len(x) * max(lengths[i] for i in x) - sum(lengths[i] for i in x) for x in batches)

    assert padded_seconds(b) < 0.2 * padded_seconds(a)
    print(f"padded seconds per epoch: {padded_seconds(a):.0f} unbucketed -> {padded_seconds(b):.0f} bucketed")


def test_a_mono_dataset_for_a_stereo_model_is_reported_once(tiny_dataset):
    stereo = MusicDataModule(str(tiny_dataset), channels=2, token_cache=False, num_workers=0)
    with pytest.warns(UserWarning, match=r"clips are mono; the stereo model") as record:
        stereo.setup("fit")
    assert sum("clips are mono" in str(w.message) for w in record) == 1
    mono = MusicDataModule(str(tiny_dataset), channels=1, token_cache=False, num_workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        mono.setup("fit")
