"""Unit tests of ``prepare``'s pieces: accuracy of tempo/key, quality measurements, fingerprints, chunking,
captions, Demucs plumbing (tiny random HTDemucs), CLI help."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import soxr
from prep_audio import SongSpec, accuracy_specs, natural_rolloff, synth_song, write, write_mp3

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
                "alternation": tempo.alternation,
                "offbeat": tempo.offbeat,
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


def test_metrical_level_decisions_on_synthesized_songs():
    rate = 11025
    x = soxr.resample(synth_song(SongSpec(60, 0, "major", 20), 44100, 1)[0], 44100, rate).astype(np.float32)
    env, fps = labels.onset_envelope(x, rate)
    assert labels.choose_metrical_level(env, fps, 120.0, 40, 220).bpm == pytest.approx(60, rel=0.04)
    assert labels.choose_metrical_level(env, fps, 60.0, 40, 220).octave == "kept"
    x = soxr.resample(synth_song(SongSpec(160, 0, "major", 20), 44100, 1)[0], 44100, rate).astype(np.float32)
    env, fps = labels.onset_envelope(x, rate)
    t = labels.choose_metrical_level(env, fps, 80.0, 40, 220)  # kick-only half tempo: snares as strong as kicks
    assert t.octave == "doubled"
    assert t.bpm == pytest.approx(160, rel=0.04)
    assert labels.choose_metrical_level(env, fps, 160.0, 40, 220).octave == "kept"


def _pulse_envelope(bpm: float, weak: float, fps: float = 100.0, seconds: float = 60.0) -> np.ndarray:
    """Onset envelope of beats at ``bpm`` whose every other beat has strength ``weak`` (strong = 1)."""
    env = np.zeros(int(seconds * fps))
    period = 60.0 * fps / bpm
    for k in range(int(env.size / period)):
        env[round(k * period)] = 1.0 if k % 2 == 0 else weak
    return env


@pytest.mark.parametrize(
    ("raw", "weak", "expected"),
    [
        (140, 0.45, "halved"),  # 70 is as typical as 140: a clear alternation is enough
        (100, 0.45, "kept"),  # halving to 50 needs stronger evidence (threshold 0.43)
        (100, 0.3, "halved"),
        (120, 0.9, "kept"),  # even beats: nothing says the beat is slower
        (160, 0.65, "kept"),  # the cap: weak beats at 65 % of the strong ones are beats
    ],
)
def test_halving_weighs_the_accent_evidence_against_the_tempo_prior(raw, weak, expected):
    """An envelope built with a known weak/strong ratio: the decision follows the documented thresholds."""
    env = _pulse_envelope(raw, weak)
    t = labels.choose_metrical_level(env, 100.0, float(raw), 40, 220)
    assert t.alternation == pytest.approx(weak, abs=0.02)
    assert t.octave == expected
    assert (weak < labels.halving_threshold(raw)) == (expected == "halved")


@pytest.mark.parametrize(
    ("texts", "words", "low", "high"),
    [
        (("II. Adagio",), ("adagio",), 40, 80),
        ((None, "02_cpebach_wq55-4_poco_adagio"), ("adagio",), 40, 80),
        (("Sonata in A", "06_haydn_op1_presto_long"), ("presto",), 140, 220),  # no word in the title: the file name
        (("Allegro ma non troppo", "song_adagio"), ("allegro",), 100, 180),  # the title wins
        (("Allegro moderato",), ("allegro", "moderato"), 100, 130),  # the ranges' intersection
        (("ANDANTE_con_moto",), ("andante",), 56, 108),
    ],
)
def test_tempo_marking_reads_titles_and_file_names(texts, words, low, high):
    m = labels.tempo_marking(*texts)
    assert m is not None
    assert (m.words, m.low, m.high) == (words, low, high)
    for w in words:  # the intersection lies inside every word's own range
        assert labels.TEMPO_MARKINGS[w][0] <= m.low <= m.high <= labels.TEMPO_MARKINGS[w][1]


def test_tempo_marking_ranges_hold_one_metrical_level():
    for word, (low, high) in labels.TEMPO_MARKINGS.items():
        assert 0 < low < high <= 2 * low, word  # half, raw and double tempo cannot all fall inside


@pytest.mark.parametrize(
    "texts",
    [
        ("Adagio - Allegro molto",),  # a slow introduction and a fast movement: the excerpt may be either
        ("The grave digger", "vivo_en_madrid"),  # common words, not markings
        ("prestonpans_reel", "allegrissimo-not-a-word"),  # only whole words count
        (None, ""),
    ],
)
def test_tempo_marking_ignores_what_is_not_one(texts):
    assert labels.tempo_marking(*texts) is None


def _flat_envelope(bpm: float, offbeat: float, fps: float = 100.0, seconds: float = 60.0) -> np.ndarray:
    """Equal beats at ``bpm`` with notes of strength ``offbeat`` halfway between them (a running pulse)."""
    env = np.zeros(int(seconds * fps))
    period = 60.0 * fps / bpm
    for k in range(int(env.size / period) - 1):
        env[round(k * period)] = 1.0
        env[round((k + 0.5) * period)] = offbeat
    return env


@pytest.mark.parametrize(
    ("raw", "offbeat", "title", "expected_bpm", "level_from"),
    [
        (104, 0.6, None, 104, "accents"),  # equal beats, running eighths: the accents keep the raw level
        (104, 0.6, "Poco adagio", 52, "marking"),  # the marking halves what the accents leave open
        (104, 0.6, "Allegro", 104, "accents"),  # 104 is inside the allegro range: nothing to change
        (88, 0.45, "Finale: Presto", 176, "marking"),  # the raw level is the half bar: doubled into the range
        (96, 0.1, "Scherzo: Presto", 96, "accents"),  # nothing halfway between the beats: never doubled
        (140, 0.6, "Largo", 70, "marking"),
    ],
)
def test_a_marking_picks_the_level_the_accents_leave_open(raw, offbeat, title, expected_bpm, level_from):
    env = _flat_envelope(raw, offbeat)
    marking = labels.tempo_marking(title)
    t = labels.choose_metrical_level(env, 100.0, float(raw), 40, 220, marking=marking)
    assert t.offbeat == pytest.approx(offbeat, abs=0.02) and t.alternation == pytest.approx(1.0, abs=0.05)
    assert t.bpm == pytest.approx(expected_bpm, rel=0.01)
    assert t.level_from == level_from
    assert t.marking == (str(marking) if marking else "")
    if title is None:
        return
    # the blocked case is blocked by the accents: the doubling threshold is more than MARKING_WEIGHT octaves away
    _, m_double = labels.level_margins(raw, t.alternation, t.offbeat)
    blocked = expected_bpm == raw and not marking.contains(raw)
    assert blocked == (-m_double > labels.MARKING_WEIGHT)


def test_a_marking_can_undo_a_weakly_supported_halving():
    env = _pulse_envelope(140, 0.45)  # halved by the accents alone: 0.45 is just under the threshold (0.6)
    assert labels.choose_metrical_level(env, 100.0, 140.0, 40, 220).bpm == pytest.approx(70, rel=0.01)
    t = labels.choose_metrical_level(env, 100.0, 140.0, 40, 220, marking=labels.tempo_marking("Allegro"))
    assert (t.bpm, t.octave, t.level_from) == (140.0, "kept", "marking")
    env = _pulse_envelope(140, 0.1)  # a beat that alternates this clearly is not undone
    t = labels.choose_metrical_level(env, 100.0, 140.0, 40, 220, marking=labels.tempo_marking("Allegro"))
    assert (t.bpm, t.level_from) == (70.0, "accents")


def test_prior_thresholds_follow_the_tempo():
    t = labels.TYPICAL_BPM
    assert labels.halving_threshold(np.sqrt(2) * t) == pytest.approx(0.5)
    assert labels.halving_threshold(100) < labels.halving_threshold(120) < labels.halving_threshold(140)
    assert labels.halving_threshold(300) == labels.MAX_HALVING_RATIO
    # doubling is the halving rule read from the doubled level, without the cap
    assert labels.doubling_threshold(60) == pytest.approx(60 / (np.sqrt(2) * t))
    assert labels.doubling_threshold(120) > 1  # never double a 120 BPM estimate to 240


def test_tempo_confidence():
    assert labels.tempo_confidence(2.0, 120, 120.5) == 1.0  # clear and confirmed
    assert labels.tempo_confidence(2.0, 120, 60.2) == 0.75  # the second estimator hears another level
    assert labels.tempo_confidence(0.0, 120, 97) == 0.25  # on the threshold, no agreement
    assert labels.tempo_confidence(0.5, 120, 0.0) == pytest.approx(0.375)


def test_bandwidth_and_clipping_measurements(tmp_path):
    song = synth_song(SongSpec(120, 0, "major", 12), 44100, 2)
    write_mp3(tmp_path / "hi.mp3", song, 44100, 0.0)  # 322 kbps
    write_mp3(tmp_path / "mid.mp3", song, 44100, 0.62)  # 129 kbps
    write_mp3(tmp_path / "lo.mp3", song, 44100, 0.9)  # 56 kbps
    write(tmp_path / "wav.wav", song, 44100, "WAV")
    write(tmp_path / "clip.wav", np.clip(song * 5, -1, 1), 44100, "WAV")
    m = {}
    for name in ("hi.mp3", "mid.mp3", "lo.mp3", "wav.wav", "clip.wav"):
        meas, buf = quality.decode_and_measure(tmp_path / name, 32000, 1)
        assert len(buf) == pytest.approx(12 * 32000, abs=3000)
        buf.close()
        m[name] = meas
    assert m["wav.wav"].bandwidth > 20000
    assert m["wav.wav"].cutoff is None  # noise up to the Nyquist frequency: no edge
    # LAME's low-pass, found where the spectrum falls to nothing (measured: 20.2, 16.9, 11.4 kHz)
    assert m["hi.mp3"].cutoff == pytest.approx(20200, abs=600)
    assert m["mid.mp3"].cutoff == pytest.approx(16900, abs=600)
    assert m["lo.mp3"].cutoff == pytest.approx(11400, abs=600)
    assert all(m[n].cutoff_drop_db > 50 for n in ("hi.mp3", "mid.mp3", "lo.mp3"))
    assert m["wav.wav"].clipped_fraction < 1e-4
    assert m["clip.wav"].clipped_fraction > 0.01
    assert m["wav.wav"].silent_fraction < 0.05


def _verdict(path: Path, sample_rate: int = 32000, **thresholds):
    from musiclit.prep.pipeline import quality_verdict

    meas, buf = quality.decode_and_measure(path, sample_rate, 1)
    buf.close()
    return quality_verdict({"measurements": asdict(meas)}, QualityThresholds(**thresholds), sample_rate), meas


def test_bandwidth_rule_rejects_a_true_low_bitrate_encode_and_keeps_a_natural_rolloff(tmp_path):
    song = synth_song(SongSpec(100, 2, "minor", 15, seed=3), 44100, 2)
    write_mp3(tmp_path / "56k.mp3", song, 44100, 0.9)
    write_mp3(tmp_path / "128k.mp3", song, 44100, 0.62)
    soft = natural_rolloff(synth_song(SongSpec(70, 5, "major", 15, seed=4), 48000, 2), 48000)
    write(tmp_path / "soft.flac", soft, 48000, "FLAC")
    up = soxr.resample(synth_song(SongSpec(95, 3, "major", 15, seed=8), 16000, 1)[0], 16000, 44100)
    write(tmp_path / "upsampled.wav", up[None], 44100, "WAV")

    skip, meas = _verdict(tmp_path / "56k.mp3")
    assert skip is not None and skip.reason == "low_bandwidth"
    assert skip.value < 16000 * 0.85 == skip.threshold  # the model's band at 32 kHz, not the file's
    assert "11." in skip.message and "16 kHz" in skip.message
    skip, meas = _verdict(tmp_path / "128k.mp3")
    assert skip is None  # cut at 16.9 kHz: nothing the model hears is lost
    assert meas.bandwidth < 17500  # ...which the old rule (17.5 kHz on the -60 dB bandwidth) rejected
    skip, meas = _verdict(tmp_path / "soft.flac")
    assert skip is None, skip
    assert meas.cutoff is None
    assert meas.bandwidth < 0.85 * 16000  # little treble: a bandwidth threshold alone would reject it
    skip, _ = _verdict(tmp_path / "upsampled.wav")
    assert skip is not None and skip.reason == "low_bandwidth"
    # the threshold follows the output rate: at 16 kHz clips the model hears up to 8 kHz
    skip, _ = _verdict(tmp_path / "56k.mp3", sample_rate=16000)
    assert skip is None
    # --min-bandwidth 0 keeps everything
    assert _verdict(tmp_path / "upsampled.wav", min_bandwidth=0)[0] is None


def test_skip_notice_names_the_flag_that_keeps_the_songs():
    from musiclit.prep.report import skip_notice

    assert skip_notice({"low_bandwidth": 3}, 16) is None  # 19 %: no notice
    line = skip_notice({"low_bandwidth": 9, "too_short": 1}, 16)
    assert "9 of 16 songs (56%) skipped as low_bandwidth" in line
    assert "--min-bandwidth 0 keeps them" in line
    assert "too_short" not in line
    line = skip_notice({"near_duplicate": 5, "undecodable": 5}, 10)
    assert "--keep-duplicates" in line and "undecodable (no option keeps them)" in line
    assert "\n" not in line


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


class _FakeGraphError(RuntimeError):
    pass


def _fake_graph(path: Path, input_name: str | None, output_name: str, scores: list[float] | None = None) -> None:
    """A stand-in for a frozen TensorFlow graph: the node names it really has (and the scores it gives)."""
    path.write_text(json.dumps({"input": input_name, "output": output_name, "scores": scores}))


class _FakePredictor:
    """Behaves like Essentia's TensorFlow predictors: loading fails on node names the graph lacks."""

    built: ClassVar[list[dict]] = []

    def __init__(self, graphFilename, output, input=None):  # Essentia's parameter names
        try:
            graph = json.loads(Path(graphFilename).read_text())
        except ValueError:
            raise _FakeGraphError(f"{graphFilename}: not a frozen graph") from None
        if output != graph["output"] or (graph["input"] is not None and input != graph["input"]):
            raise _FakeGraphError(f"node {input!r} or {output!r} not found in {graphFilename}")
        self.graph = graph
        _FakePredictor.built.append({"graph": Path(graphFilename).name, "input": input, "output": output})


class _FakeEffnet(_FakePredictor):
    def __call__(self, audio):
        if audio.size < 16000 * 5:
            raise RuntimeError("input too short for a patch")  # one odd song
        return np.ones((3, 8), dtype=np.float32)


class _FakeHead(_FakePredictor):
    def __call__(self, embeddings):
        return np.tile(np.asarray(self.graph["scores"], dtype=np.float32), (embeddings.shape[0], 1))


class _EssentiaWithTF:
    """The real essentia.standard plus the two TensorFlow predictors (the plain wheel has none)."""

    def __init__(self, real):
        self._real = real
        self.TensorflowPredictEffnetDiscogs = _FakeEffnet
        self.TensorflowPredict2D = _FakeHead

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def tf_models(tmp_path, monkeypatch):
    """A models folder whose cards name nodes other than the defaults, with Essentia's TF predictors faked."""
    fake = _EssentiaWithTF(labels._essentia())
    monkeypatch.setattr(labels, "_essentia", lambda: fake)
    monkeypatch.setattr(labels, "_PREDICTORS", {})
    _FakePredictor.built = []
    folder = tmp_path / "models"
    folder.mkdir()
    # the embedding model: its card names the embeddings output (not the default PartitionedCall:1)
    _fake_graph(folder / "discogs-effnet-bs64-1.pb", "serving_default_melspectrogram", "PartitionedCall:3")
    card = {
        "schema": {
            "inputs": [{"name": "serving_default_melspectrogram"}],
            "outputs": [
                {"name": "PartitionedCall:0", "output_purpose": "predictions"},
                {"name": "PartitionedCall:3", "output_purpose": "embeddings"},
            ],
        }
    }
    (folder / "discogs-effnet-bs64-1.json").write_text(json.dumps(card))
    # the discogs400-style genre head: other names than model/Placeholder and model/Sigmoid
    _fake_graph(
        folder / "genre_discogs-effnet-1.pb",
        "serving_default_model_Placeholder",
        "PartitionedCall:0",
        [0.05, 0.9, 0.3, 0.6],
    )
    card = {
        "classes": ["Rock---Punk", "Folk, World, & Country---Celtic", "Jazz---Swing", "Classical---Baroque"],
        "schema": {
            "inputs": [{"name": "serving_default_model_Placeholder", "type": "float"}],
            "outputs": [
                {"name": "PartitionedCall:1", "output_purpose": ""},
                {"name": "PartitionedCall:0", "output_purpose": "predictions", "op": "Sigmoid"},
            ],
        },
        "inference": {"sample_rate": 16000, "algorithm": "TensorflowPredict2D"},
    }
    (folder / "genre_discogs-effnet-1.json").write_text(json.dumps(card))
    # a mood head whose card names no nodes: the defaults apply
    _fake_graph(folder / "mood_calm-effnet-1.pb", "model/Placeholder", "model/Sigmoid", [0.8, 0.2])
    (folder / "mood_calm-effnet-1.json").write_text(json.dumps({"classes": ["calm", "not calm"]}))
    # a broken instrument head
    (folder / "instrument_x-effnet-1.pb").write_bytes(b"\x00garbage")
    (folder / "instrument_x-effnet-1.json").write_text(json.dumps({"classes": ["piano"]}))
    return folder


def test_tensorflow_heads_use_the_node_names_of_their_model_cards(tf_models):
    models, message = labels.TFModels.find(tf_models)
    assert models is not None, message
    genre = next(h for h in models.heads if h.kind == "genre")
    assert (genre.input, genre.output) == ("serving_default_model_Placeholder", "PartitionedCall:0")
    mood = next(h for h in models.heads if h.kind == "mood")
    assert (mood.input, mood.output) == (labels.DEFAULT_HEAD_INPUT, labels.DEFAULT_HEAD_OUTPUT)
    assert models.embedding_output == "PartitionedCall:3"
    predicted, errors = models.predict(np.zeros(16000 * 10, dtype=np.float32))
    # top 3 above 0.1, in score order, the "---" parent genre dropped
    assert predicted["genre"] == ["Celtic", "Baroque", "Swing"]
    assert predicted["mood"] == ["calm", "not calm"]
    assert "instrument" not in predicted
    assert len(errors) == 1 and errors[0].startswith("instrument_x-effnet-1.pb: ")
    built = {b["graph"]: b for b in _FakePredictor.built}
    assert built["genre_discogs-effnet-1.pb"]["output"] == "PartitionedCall:0"


def test_model_card_nodes_fall_back_only_when_absent():
    nodes = labels.model_card_nodes
    assert nodes({}, "in", "out", "predictions") == ("in", "out")
    card = {"inference": {"inputs": [{"name": "x"}], "outputs": [{"name": "y", "output_purpose": "predictions"}]}}
    assert nodes(card, "in", "out", "predictions") == ("x", "y")
    card = {"schema": {"outputs": [{"name": "emb", "output_purpose": "embeddings"}, {"name": "p"}]}}
    assert nodes(card, "in", "out", "embeddings") == ("in", "emb")
    assert nodes(card, "in", "out", "predictions") == ("in", "emb")  # no purpose given: the first output


def test_a_failing_model_or_song_does_not_stop_prepare(tf_models, tmp_path):
    from musiclit.prep.config import PrepareConfig
    from musiclit.prep.pipeline import run_prepare

    src = tmp_path / "src"
    write(src / "long.wav", synth_song(SongSpec(100, 0, "major", 12, seed=1)), 44100, "WAV")
    write(src / "short.wav", synth_song(SongSpec(120, 7, "major", 4.5, seed=2)), 44100, "WAV")  # embedding fails
    cfg = PrepareConfig(
        input=src,
        output=tmp_path / "out",
        workers=1,
        progress=False,
        tf_models=tf_models,
        segment=4,
        min_tail=1,
        quality=QualityThresholds(min_duration=4),
    )
    report = run_prepare(cfg, log=lambda _m: None)
    assert report["songs_used"] == 2
    assert report["labels"]["genres"] == {"Celtic": 1, "Baroque": 1, "Swing": 1}  # the long song only
    warnings = "\n".join(report["warnings"])
    assert "short.wav: genre/mood/instrument model embedding model discogs-effnet-bs64-1.pb" in warnings
    assert "input too short" in warnings
    assert "long.wav: genre/mood/instrument model instrument_x-effnet-1.pb" in warnings
    assert sum(1 for c in report["captions"] if "bpm" in c["description"]) == 2  # tempo labels survive


def _tiny_demucs():
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(0)
    model = HTDemucs(sources=["drums", "bass", "other", "vocals"], channels=8, depth=4, t_layers=1, segment=2)
    return model.eval()


# vocal removal against ground truth: tests/test_vocals.py


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
        "--no-tempo-markings",
        "--seed",
    ):
        assert option in text


def test_prepare_ends_with_the_skip_notice(tmp_path, capsys):
    """Half the songs fall to low_bandwidth: the last line printed names the option that keeps them."""
    from musiclit.__main__ import main

    src = tmp_path / "src"
    write(src / "good.wav", synth_song(SongSpec(120, 0, "major", 12, seed=1)), 44100, "WAV")
    write_mp3(src / "56k.mp3", synth_song(SongSpec(100, 9, "minor", 12, seed=2)), 44100, 0.9)
    out = tmp_path / "out"
    assert main(["prepare", "--input", str(src), "--output", str(out), "--workers", "1", "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("musiclit prepare: NOTE: 1 of 2 songs (50%) skipped as low_bandwidth")
    assert "--min-bandwidth 0 keeps them" in err[-1]
    assert (out / "report.txt").read_text().rstrip().splitlines()[-1] == err[-1]
    # and the option does keep it
    assert main(["prepare", "-i", str(src), "-o", str(out), "--workers", "1", "--min-bandwidth", "0"]) == 0
    assert "NOTE" not in capsys.readouterr().err
