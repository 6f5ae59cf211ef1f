"""Unit tests of ``prepare``'s pieces: accuracy of tempo/key, quality measurements, fingerprints, chunking,
captions, Demucs plumbing (tiny random HTDemucs), CLI help."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soxr
from prep_audio import SongSpec, accuracy_specs, synth_song, write, write_mp3

from musiclit.prep import chunk, labels, quality
from musiclit.prep.captions import TemplateError, check_template, render_template, song_caption
from musiclit.prep.config import QualityThresholds


def accuracy_rows(specs: list[SongSpec], rate: int = 11025) -> list[dict]:
    """Tempo and key of each synthesized song, as ``prepare`` measures them."""
    rows = []
    for spec in specs:
        x = soxr.resample(synth_song(spec, 44100, 1)[0], 44100, rate).astype(np.float32)
        tempo = labels.estimate_tempo(x, rate)
        key, _ = labels.estimate_key(x, rate)
        rows.append(
            {
                "bpm": spec.bpm,
                "measured_bpm": tempo.bpm,
                "raw_bpm": tempo.raw_bpm,
                "octave": tempo.octave,
                "confidence": tempo.confidence,
                "key": spec.key,
                "measured_key": key,
                "bpm_ok": abs(tempo.bpm - spec.bpm) / spec.bpm <= 0.04,
                "key_ok": key == spec.key,
            }
        )
    return rows


def format_accuracy(rows: list[dict]) -> str:
    """The accuracy table printed by the test and by tools/bench_prepare.py."""
    lines = [f"{'true bpm':>8} {'raw':>6} {'bpm':>6} {'octave':>7} {'conf':>5}  {'true key':<9} {'key':<9} ok"]
    for r in rows:
        ok = ("T" if r["bpm_ok"] else "-") + ("K" if r["key_ok"] else "-")
        lines.append(
            f"{r['bpm']:>8.0f} {r['raw_bpm']:>6.1f} {r['measured_bpm']:>6.1f} {r['octave']:>7} "
            f"{r['confidence']:>5.2f}  {r['key']:<9} {r['measured_key']:<9} {ok}"
        )
    slow = [r for r in rows if r["bpm"] < 70]
    minor = [r for r in rows if r["key"].endswith("minor")]
    lines.append(
        f"tempo within 4%: {sum(r['bpm_ok'] for r in rows)}/{len(rows)} (slow < 70 BPM: "
        f"{sum(r['bpm_ok'] for r in slow)}/{len(slow)}); key exact: {sum(r['key_ok'] for r in rows)}/{len(rows)} "
        f"(minor: {sum(r['key_ok'] for r in minor)}/{len(minor)})"
    )
    return "\n".join(lines)


def test_tempo_and_key_accuracy_on_synthesized_songs():
    rows = accuracy_rows(accuracy_specs(duration=20.0))
    print("\n" + format_accuracy(rows))
    n = len(rows)
    slow = [r for r in rows if r["bpm"] < 70]
    minor = [r for r in rows if r["key"].endswith("minor")]
    assert len(slow) >= 5
    assert len(minor) >= 10
    assert sum(r["bpm_ok"] for r in rows) >= 0.9 * n
    assert sum(r["bpm_ok"] for r in slow) >= 0.8 * len(slow)
    assert sum(r["key_ok"] for r in rows) >= 0.9 * n
    assert sum(r["key_ok"] for r in minor) >= 0.8 * len(minor)
    # the octave correction is what makes slow songs right: Essentia alone reports most at double tempo
    assert any(r["octave"] == "halved" and r["bpm_ok"] for r in slow)


def test_octave_correction_decisions():
    rate = 11025
    x = soxr.resample(synth_song(SongSpec(60, 0, "major", 20), 44100, 1)[0], 44100, rate).astype(np.float32)
    env, fps = labels.onset_envelope(x, rate)
    assert labels.correct_octave(env, fps, 120.0, 40, 220).bpm == pytest.approx(60, rel=0.04)
    assert labels.correct_octave(env, fps, 60.0, 40, 220).octave == "kept"
    x = soxr.resample(synth_song(SongSpec(160, 0, "major", 20), 44100, 1)[0], 44100, rate).astype(np.float32)
    env, fps = labels.onset_envelope(x, rate)
    t = labels.correct_octave(env, fps, 80.0, 40, 220)
    assert t.octave == "doubled"
    assert t.bpm == pytest.approx(160, rel=0.04)


def test_bandwidth_and_clipping_measurements(tmp_path):
    song = synth_song(SongSpec(120, 0, "major", 12), 44100, 2)
    write_mp3(tmp_path / "hi.mp3", song, 44100, 0.0)  # 320 kbps
    write_mp3(tmp_path / "lo.mp3", song, 44100, 0.62)  # 128 kbps
    write(tmp_path / "wav.wav", song, 44100, "WAV")
    write(tmp_path / "clip.wav", np.clip(song * 5, -1, 1), 44100, "WAV")
    m = {}
    for name in ("hi.mp3", "lo.mp3", "wav.wav", "clip.wav"):
        meas, buf = quality.decode_and_measure(tmp_path / name, 32000, 1)
        assert len(buf) == pytest.approx(12 * 32000, abs=3000)
        buf.close()
        m[name] = meas
    assert m["wav.wav"].bandwidth > 20000
    assert m["hi.mp3"].bandwidth > 19000
    assert m["lo.mp3"].bandwidth < 17500
    assert m["wav.wav"].clipped_fraction < 1e-4
    assert m["clip.wav"].clipped_fraction > 0.01
    assert m["wav.wav"].silent_fraction < 0.05


def test_spill_buffer_goes_to_disk_and_reads_back(tmp_path):
    buf = quality.SpillBuffer(1, 1000, tmp_path)
    data = np.arange(5000, dtype=np.float32)[None]
    for i in range(0, 5000, 700):
        buf.append(data[:, i : i + 700])
    buf.finish()
    assert len(list(tmp_path.iterdir())) == 1
    assert np.array_equal(buf.read(1234, 4321), data[:, 1234:4321])
    buf.close()
    assert not list(tmp_path.iterdir())


def test_fingerprint_catches_reencodes_not_other_songs(tmp_path):
    a = synth_song(SongSpec(100, 9, "minor", 30, seed=1), 44100, 2)
    b = synth_song(SongSpec(100, 9, "minor", 30, seed=2), 44100, 2)  # same tempo and key, other song
    write(tmp_path / "a.wav", a, 44100, "WAV")
    write_mp3(tmp_path / "a.mp3", a * 0.8, 44100, 0.62)
    write(tmp_path / "b.wav", b, 44100, "WAV")
    fps = {}
    for name in ("a.wav", "a.mp3", "b.wav"):
        _, buf = quality.decode_and_measure(tmp_path / name, 32000, 1)
        head, _ = quality.mono_excerpt(buf, 32000, 11025, quality.FP_SECONDS, "start")
        fps[name] = quality.fingerprint(head, 11025)
        buf.close()
    same = quality.fingerprint_distance(fps["a.wav"], fps["a.mp3"])
    other = quality.fingerprint_distance(fps["a.wav"], fps["b.wav"])
    # b shares a's chords, bass and drum pattern (only melody and noise differ): as close as songs get
    assert same < 0.1, (same, other)
    assert other > 0.2, (same, other)
    assert same < QualityThresholds().duplicate_distance < other
    assert quality.decode_fingerprint(quality.encode_fingerprint(fps["a.wav"])).tolist() == fps["a.wav"].tolist()


@pytest.mark.parametrize(
    ("n_s", "kwargs", "expected"),
    [
        (95, {}, [(0, 30), (30, 30), (60, 30)]),  # 5 s tail < 10 s dropped
        (95, {"short_tail": "pad"}, [(0, 30), (30, 30), (60, 30), (90, 5)]),
        (75, {}, [(0, 30), (30, 30), (60, 15)]),  # 15 s tail kept as it is
        (70, {"overlap": 10}, [(0, 30), (20, 30), (40, 30)]),
        (12, {}, [(0, 12)]),
        (8, {}, []),
    ],
)
def test_plan_chunks(n_s, kwargs, expected):
    plans = chunk.plan_chunks(n_s * 100, 100, 30, **{"min_tail": 10, **kwargs})
    assert [(p.start // 100, p.length // 100) for p in plans] == expected
    # a kept short tail is written as it is: the padding is added (and masked) by training, not baked in
    assert all(p.padded_length == p.length for p in plans)


def test_a_kept_short_tail_records_its_real_length_and_holds_no_silence(tmp_path):
    class Song:
        def __init__(self, audio):
            self.audio = audio

        def __len__(self):
            return self.audio.shape[1]

        def read(self, start, stop):
            return self.audio[:, start:stop]

    rate = 1000
    song = Song(np.random.default_rng(0).uniform(-0.5, 0.5, (1, 95 * rate)).astype(np.float32))
    plans = chunk.plan_chunks(95 * rate, rate, 30, min_tail=10, short_tail="pad")
    records = chunk.write_chunks(song, tmp_path, "song", plans, rate, subtype="FLOAT")
    tail = records[-1]
    assert tail["duration"] == pytest.approx(5.0) and tail["padded"] == 0
    import soundfile as sf

    audio, _ = sf.read(tmp_path / tail["path"], dtype="float32")
    np.testing.assert_array_equal(audio, song.audio[0, 90 * rate :])  # the song's last 5 s, nothing appended


def test_plan_chunks_on_beats():
    plans = chunk.plan_chunks(100 * 100, 100, 30, beat_period=0.5, first_beat=0.23)
    for p in plans:
        assert ((p.start / 100 - 0.23) / 0.5) == pytest.approx(round((p.start / 100 - 0.23) / 0.5), abs=0.03)
    assert plans[0].start == 23


def test_caption_templates():
    check_template("[{genre} ]music[, {bpm} bpm]")
    with pytest.raises(TemplateError, match="unknown field"):
        check_template("{colour} music")
    with pytest.raises(TemplateError, match="brackets"):
        check_template("[{genre} music")
    values = {"bpm": "92", "key": "A minor", "tempo_word": "moderate"}
    text = render_template("[{genre} ]music[, {mood}][, {tempo_word} tempo at {bpm} bpm][, in {key}]", values)
    assert text == "Music, moderate tempo at 92 bpm, in A minor"
    assert render_template("[{genre}]", {}) == "music"
    cap, source = song_caption({"bpm": 92.0, "key": "A minor"}, {"description": "mine", "mood": "calm"}, "{key}", "s1")
    assert (cap.description, cap.mood, cap.bpm, cap.song_id, source) == ("mine", "calm", 92.0, "s1", "user")


def test_descriptions_csv_and_sidecars(tmp_path):
    from musiclit.prep.scan import scan_input

    src = tmp_path / "src"
    song = synth_song(SongSpec(120, 0, "major", 3), 22050, 1)
    for rel in ("a.wav", "sub/b.wav", "c.wav"):
        write(src / rel, song * (1 + len(rel) / 10), 22050, "WAV")
    (src / "c.json").write_text('{"description": "from json", "genre": "Jazz"}')
    csv = tmp_path / "desc.csv"
    csv.write_text('path,description\na.wav,"from csv, with a comma"\nb.wav,by name\nmissing.wav,nothing\n')
    songs, skips, warnings = scan_input(src, descriptions_csv=csv)
    user = {s.rel: s.user for s in songs}
    assert user["a.wav"]["description"] == "from csv, with a comma"
    assert user["sub/b.wav"]["description"] == "by name"
    assert user["c.wav"] == {"description": "from json", "genre": "Jazz"}
    assert any("missing.wav" in w for w in warnings)
    assert not skips


def test_tensorflow_models_absent_is_a_message(tmp_path):
    models, message = labels.TFModels.find(tmp_path)
    assert models is None
    if not labels.tensorflow_available():
        assert "essentia-tensorflow" in message


def _tiny_demucs():
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(0)
    model = HTDemucs(sources=["drums", "bass", "other", "vocals"], channels=8, depth=4, t_layers=1, segment=2)
    return model.eval()


def test_demucs_no_vocals_is_sum_of_other_stems_and_streams_in_windows(tmp_path):
    import torch
    from demucs.apply import apply_model

    from musiclit.prep import vocals

    model = _tiny_demucs()
    song = synth_song(SongSpec(90, 7, "major", 4, vocals=True), 44100, 2)
    out = vocals.separate_no_vocals(model, song, "cpu", overlap=0.25)
    wav = torch.from_numpy(song)
    ref = wav.mean(0)
    with torch.no_grad():
        stems = apply_model(model, ((wav - ref.mean()) / (ref.std() + 1e-8))[None], split=True, overlap=0.25, shifts=0)[
            0
        ]
    expect = stems[:3].sum(0) * (ref.std() + 1e-8) + ref.mean()
    assert np.allclose(out, expect.numpy(), atol=1e-4)
    write(tmp_path / "v.wav", song, 44100, "WAV")
    blocks = list(vocals.no_vocals_stream(tmp_path / "v.wav", model, 32000, 1, "cpu", window=1.5))
    total = sum(b.shape[1] for b in blocks)
    assert len(blocks) >= 3
    assert abs(total - 4 * 32000) < 200
    assert all(b.shape[0] == 1 and np.isfinite(b).all() for b in blocks)


@pytest.mark.slow
def test_prepare_with_vocal_removal(tmp_path):
    from musiclit.data.manifest import load_dataset_entries
    from musiclit.prep.config import PrepareConfig
    from musiclit.prep.pipeline import run_prepare

    src = tmp_path / "src"
    write(src / "sung.wav", synth_song(SongSpec(90, 7, "major", 12, vocals=True), 44100, 2), 44100, "WAV")
    out = tmp_path / "out"
    cfg = PrepareConfig(
        input=src,
        output=out,
        workers=1,
        progress=False,
        remove_vocals=True,
        segment=4,
        min_tail=1,
        quality=QualityThresholds(min_duration=5),
    )
    report = run_prepare(cfg, demucs_model=_tiny_demucs())
    assert report["clips_out"] == 3
    assert report["songs_used"] == 1
    assert len(load_dataset_entries(out)) == 3
    again = run_prepare(cfg, demucs_model=_tiny_demucs())
    assert again["resume"]["songs_chunked"] == 0


def test_cli_help_documents_every_option(capsys):
    from musiclit.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["prepare", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--input",
        "--output",
        "--workers",
        "--segment",
        "--remove-vocals",
        "--caption-template",
        "--max-silence",
        "--min-bandwidth",
        "--dry-run",
        "--descriptions",
        "--tf-models",
        "--seed",
    ):
        assert option in text
    assert Path(__file__).name  # keep the import used
