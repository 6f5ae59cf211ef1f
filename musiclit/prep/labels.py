"""Step 4: auto-labelling with Essentia (tempo, key, loudness), file tags, optional TensorFlow models.

Tempo (:func:`estimate_tempo`): Essentia's Degara beat tracker (``TempoTapDegara`` on a complex-domain
onset function, the ``degara`` method of ``RhythmExtractor2013``) gives the raw tempo. Beat trackers
often lock onto the wrong metrical level: a slow piece with running eighth notes is reported at double
tempo, a fast one with a half-time feel at half. :func:`choose_metrical_level` only changes the level
when the accent evidence outweighs a prior on typical tempi:

* the evidence is measured on the tracked beats: the weak/strong ratio of every other beat
  (``alternation``: low when every other "beat" is much weaker, the pattern of subdivisions of a slower
  beat) and the offbeat/beat ratio (how strong the positions halfway between the beats are), each the
  geometric mean of two cues, onsets (:func:`onset_envelope`) and harmonic change
  (:func:`harmonic_change_envelope`): subdivisions are weaker in both, while a bar-level accent (drums,
  a strong downbeat) still has the harmony and melody changing on every beat;
* the prior is log-normal around ``TYPICAL_BPM`` (83 BPM: the period of maximal pulse salience,
  about 0.72 s, in Parncutt's 1994 model of pulse perception): halving a raw estimate needs stronger
  evidence the slower the halved tempo would be, doubling one needs it the faster the doubled tempo.

A tempo marking in the song's title tag or file name (Adagio, Andante, Allegro, Presto...,
:func:`tempo_marking`) is the composer's own word on the beat's speed. Where the accents leave the level
open (equal beats with running subdivisions give no alternation to halve on and no empty midpoints to
forbid doubling), the marking picks the level that falls inside its range (:func:`apply_marking`); it
never overrides accents that contradict it by more than ``MARKING_WEIGHT`` octaves.

The confidence (0..1) combines how far the evidence is from the decision threshold with whether a
second, independent estimator (Essentia's ``PercivalBpmEstimator``) agrees with the raw estimate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from musiclit.data.caption import Caption

ENV_FFT = 512
ENV_HOP = 128
ENV_BANDS = 24
TYPICAL_BPM = 83.0  # centre of the tempo prior: Parncutt's (1994) period of maximal pulse salience, ~0.72 s
MAX_HALVING_RATIO = 0.6  # never halve when the weak beats carry more than this share of the strong beats' onsets
AGREE_TOLERANCE = 0.04  # two estimates agree when within 4 %
MARKING_WEIGHT = 1.5  # a tempo marking outweighs accent evidence against its level up to 1.5 octaves
DEGARA_HOP_44K = 1024  # Essentia's BeatTrackerDegara: 2048-sample frames, hop 1024 at 44.1 kHz

KEY_FRAME_44K = 4096  # KeyExtractor's default frame (and hop) at 44.1 kHz

KEY_NAMES = {"A#": "Bb", "D#": "Eb", "G#": "Ab", "Db": "C#", "Gb": "F#"}

TF_MISSING_MESSAGE = (
    "genre/mood/instrument labels are off: this essentia build has no TensorFlow support. Install the "
    "TensorFlow variant (pip uninstall essentia && pip install essentia-tensorflow) and pass --tf-models "
    "with the model files (.pb and .json), see docs/prepare.md."
)


def _essentia():
    import essentia

    essentia.log.infoActive = False
    essentia.log.warningActive = False
    import essentia.standard as es

    return es


@dataclass
class Tempo:
    """A tempo estimate.

    Attributes:
        bpm: Final tempo (after the metrical-level choice).
        raw_bpm: Essentia's beat-tracker estimate before it.
        confidence: 0..1 (see :func:`tempo_confidence`).
        octave: "kept", "halved" or "doubled".
        first_beat: Time of the first beat in the analysed excerpt, in seconds.
        alternation: Weak/strong ratio of every other beat at the raw tempo (low: the raw beats are
            subdivisions of a slower beat).
        offbeat: Offbeat/beat ratio at the raw tempo (high: the beat may be twice as fast).
        second_bpm: The second estimator's (Percival) raw tempo, for the agreement check.
        marking: The tempo marking that was read (e.g. "adagio"), "" when none.
        level_from: What chose the metrical level: "accents" (the accent rule) or "marking".
    """

    bpm: float
    raw_bpm: float
    confidence: float
    octave: str
    first_beat: float
    alternation: float
    offbeat: float
    second_bpm: float = 0.0
    marking: str = ""
    level_from: str = "accents"


# ---------------------------------------------------------------------- tempo markings
# Beat tempi (BPM) of the Italian tempo markings: the usual metronome ranges widened to what performers
# take (an adagio is often played at 50, an allegro at 100); no range is wider than an octave, so at
# most one metrical level of an estimate falls inside it. Words that are also common words in other
# languages' titles ("grave", "vivo") are left out.
TEMPO_MARKINGS: dict[str, tuple[float, float]] = {
    "largo": (40.0, 76.0),
    "lento": (40.0, 76.0),
    "larghetto": (44.0, 80.0),
    "adagio": (40.0, 80.0),
    "adagietto": (44.0, 84.0),
    "andante": (56.0, 108.0),
    "andantino": (60.0, 112.0),
    "moderato": (80.0, 130.0),
    "allegretto": (88.0, 140.0),
    "allegro": (100.0, 180.0),
    "vivace": (120.0, 200.0),
    "vivacissimo": (140.0, 220.0),
    "presto": (140.0, 220.0),
    "prestissimo": (160.0, 240.0),
}


@dataclass(frozen=True)
class TempoMarking:
    """A tempo marking read from a title or file name.

    Attributes:
        words: The marking words found, in order (e.g. ``("allegro", "moderato")``).
        low: Lowest beat tempo of the marking in BPM (the intersection of the words' ranges).
        high: Highest beat tempo.
    """

    words: tuple[str, ...]
    low: float
    high: float

    def __str__(self) -> str:
        return " ".join(self.words)

    def contains(self, bpm: float) -> bool:
        return self.low <= bpm <= self.high


def tempo_marking(*texts: str | None) -> TempoMarking | None:
    """The tempo marking of the first text that has one (title tag first, then the file name).

    Words are matched whole and case-insensitively, with any non-letter as separator (``02_poco_adagio``,
    ``II. Allegro ma non troppo``). Several words narrow the range to their intersection ("Allegro
    moderato": 100-130); words whose ranges do not overlap ("Adagio - Allegro", a slow introduction and a
    fast movement) give no marking, since the analysed excerpt may be either.
    """
    import re

    for text in texts:
        if not text:
            continue
        words = [w for w in re.findall(r"[^\W\d_]+", text.lower()) if w in TEMPO_MARKINGS]
        if not words:
            continue
        low = max(TEMPO_MARKINGS[w][0] for w in words)
        high = min(TEMPO_MARKINGS[w][1] for w in words)
        if low > high:
            return None
        return TempoMarking(tuple(dict.fromkeys(words)), low, high)
    return None


def onset_envelope(x: np.ndarray, rate: int) -> tuple[np.ndarray, float]:
    """Multi-band spectral-flux onset envelope.

    Returns:
        ``(envelope, frames_per_second)``; the envelope is high-passed (local mean removed) and >= 0.
    """
    hop = max(1, int(ENV_HOP * rate / 11025))
    n_fft = max(256, int(ENV_FFT * rate / 11025))
    if x.size < n_fft + hop:
        return np.zeros(0), rate / hop
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float32), n_fft)[::hop] * np.hanning(n_fft).astype(
        np.float32
    )
    spec = np.fft.rfft(frames, axis=1)
    power = spec.real**2 + spec.imag**2
    edges = np.geomspace(40, min(5000, rate / 2 - 1), ENV_BANDS + 1)
    bins = np.unique(np.round(edges * n_fft / rate).astype(int))
    bands = np.add.reduceat(power, bins[:-1], axis=1)[:, : len(bins) - 1]
    logb = np.log1p(1000 * bands / (bands.max() + 1e-12))
    flux = np.maximum(0, np.diff(logb, axis=0)).sum(axis=1)
    fps = rate / hop
    width = max(1, int(fps * 0.5))
    local = np.convolve(flux, np.ones(width) / width, mode="same")
    return np.maximum(0, flux - local), fps


def harmonic_change_envelope(x: np.ndarray, rate: int) -> tuple[np.ndarray, float]:
    """Harmonic-change envelope: rise of the pitch-class profile (80 Hz - 2 kHz) from frame to frame.

    Each frame's chroma is normalised to unit sum, so the envelope follows changes of pitch content
    (a new chord, a new melody note) and not loudness: a drum hit or an accent on a repeated chord
    barely moves it. Frames of 93 ms, hop 23 ms.

    Returns:
        ``(envelope, frames_per_second)``, high-passed like :func:`onset_envelope`.
    """
    hop = max(1, round(256 * rate / 11025))
    n_fft = max(256, round(1024 * rate / 11025))
    if x.size < n_fft + hop:
        return np.zeros(0), rate / hop
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float32), n_fft)[::hop] * np.hanning(n_fft).astype(
        np.float32
    )
    mag = np.abs(np.fft.rfft(frames, axis=1))
    freqs = np.fft.rfftfreq(n_fft, 1.0 / rate)
    use = np.nonzero((freqs >= 80) & (freqs <= 2000))[0]
    pitch_class = np.round(12 * np.log2(freqs[use] / 440.0)).astype(int) % 12
    folding = np.zeros((use.size, 12), dtype=np.float32)
    folding[np.arange(use.size), pitch_class] = 1.0
    chroma = mag[:, use] @ folding
    chroma = chroma / (chroma.sum(axis=1, keepdims=True) + 1e-9)
    flux = np.maximum(0, np.diff(chroma, axis=0)).sum(axis=1)
    fps = rate / hop
    width = max(1, int(fps * 0.5))
    local = np.convolve(flux, np.ones(width) / width, mode="same")
    return np.maximum(0, flux - local), fps


def _peak_hold(env: np.ndarray) -> np.ndarray:
    """Max over +-1 frame (tolerance for beat positions that fall between frames)."""
    out = env.copy()
    out[1:] = np.maximum(out[1:], env[:-1])
    out[:-1] = np.maximum(out[:-1], env[1:])
    return out


def _grid_strengths(held: np.ndarray, period: float, phases: np.ndarray) -> np.ndarray:
    """Mean of ``held`` on the grids ``phase + k * period``, for each phase (vectorised)."""
    k = np.arange(0, max(1, int((held.size - 1 - phases.min()) / period) + 1))
    pos = phases[:, None] + k[None, :] * period
    valid = pos < held.size - 1
    idx = np.clip(np.round(pos).astype(int), 0, held.size - 1)
    vals = np.where(valid, held[idx], 0.0)
    return vals.sum(axis=1) / np.maximum(1, valid.sum(axis=1))


def _grid_strength(held: np.ndarray, period: float, phase: float) -> float:
    return float(_grid_strengths(held, period, np.array([phase]))[0])


def _best_phase(held: np.ndarray, period: float) -> tuple[float, float]:
    phases = np.arange(0, period, 1.0)
    strengths = _grid_strengths(held, period, phases)
    i = int(np.argmax(strengths))
    return float(phases[i]), float(strengths[i])


def halving_threshold(raw_bpm: float, typical: float = TYPICAL_BPM, cap: float = MAX_HALVING_RATIO) -> float:
    """Largest weak/strong ratio at which a raw tempo is read as subdivisions of half that tempo.

    The accent evidence is weighed against a log-normal tempo prior centred on ``TYPICAL_BPM``: at
    ``sqrt(2) * TYPICAL_BPM`` (117 BPM) the raw and the halved tempo are equally likely a priori and a
    weak/strong ratio below 0.5 decides; the threshold scales with the raw tempo (halving a 100 BPM
    estimate to 50 needs a ratio below 0.43, a 140 BPM one to 70 below 0.6), and never exceeds
    ``MAX_HALVING_RATIO``: clearly alternating beats are needed even where the prior favours halving.
    """
    return min(cap, raw_bpm / (2 * math.sqrt(2) * typical))


def doubling_threshold(raw_bpm: float, typical: float = TYPICAL_BPM) -> float:
    """Smallest offbeat/beat ratio at which a raw tempo is read as half the beat.

    The halving rule read from the doubled level: the midpoints must be at least
    ``halving_threshold(2 * raw)`` as strong as the beats, without the cap, so a fast doubled tempo
    needs midpoints about as strong as the beats (at 59 BPM a ratio of 0.5, at 88 BPM 0.75, at 117 BPM 1).
    """
    return 2 * raw_bpm / (2 * math.sqrt(2) * typical)


def level_margins(
    raw_bpm: float, alternation: float, offbeat: float, typical: float = TYPICAL_BPM, cap: float = MAX_HALVING_RATIO
) -> tuple[float, float]:
    """How far the accent ratios are past the halving and the doubling threshold, in octaves.

    Returns:
        ``(m_half, m_double)``: positive where the accents call for halving (doubling), negative by how
        much they fall short (1 = a factor of two).
    """
    m_half = math.log2(halving_threshold(raw_bpm, typical, cap) / max(alternation, 1e-6))
    m_double = math.log2(max(offbeat, 1e-6) / doubling_threshold(raw_bpm, typical))
    return m_half, m_double


def apply_marking(
    raw_bpm: float,
    octave: str,
    margin: float,
    alternation: float,
    offbeat: float,
    marking: TempoMarking,
    min_bpm: float,
    max_bpm: float,
    weight: float = MARKING_WEIGHT,
) -> tuple[str, float] | None:
    """The metrical level a tempo marking asks for, where the accents do not forbid it.

    The accent rule's level (``octave``) stands when its tempo lies inside the marking's range, or when no
    level (half, raw, double, within ``[min_bpm, max_bpm]``) does. Otherwise the level inside the range is
    taken unless the accent evidence against it exceeds ``weight`` octaves: how far the accent ratio falls
    short of the threshold that level needs (doubling onto midpoints that are nearly empty: a 6/8 beat
    with nothing halfway between its beats is never doubled), or, to undo the rule's own halving or
    doubling, the margin of that decision.

    Returns:
        ``(octave, margin)`` of the marking's level (margin = ``weight`` minus the evidence against it),
        or None when the accent rule's level stands.
    """
    levels = {"halved": raw_bpm / 2, "kept": raw_bpm, "doubled": raw_bpm * 2}
    if marking.contains(levels[octave]):
        return None
    inside = [k for k, v in levels.items() if marking.contains(v) and min_bpm <= v <= max_bpm]
    if len(inside) != 1:
        return None
    m_half, m_double = level_margins(raw_bpm, alternation, offbeat)
    target = inside[0]
    if target == "kept":
        against = max(0.0, margin)  # the rule halved or doubled by this margin
    else:
        against = max(0.0, -(m_half if target == "halved" else m_double))
    if against > weight:
        return None
    return target, weight - against


def metrical_decision(
    raw_bpm: float,
    alternation: float,
    offbeat: float,
    min_bpm: float,
    max_bpm: float,
    typical: float = TYPICAL_BPM,
    cap: float = MAX_HALVING_RATIO,
) -> tuple[str, float]:
    """The metrical-level rule on measured accent ratios.

    Returns:
        ``(octave, margin)``: "halved", "doubled" or "kept", and how clearly (in octaves of ratio from
        the nearest threshold; 1 = a factor of two).
    """
    m_half, m_double = level_margins(raw_bpm, alternation, offbeat, typical, cap)
    if m_half > 0 and raw_bpm / 2 >= min_bpm:
        return "halved", m_half
    if m_double > 0 and raw_bpm * 2 <= max_bpm:
        return "doubled", m_double
    return "kept", min(-m_half, -m_double)


def _accent_ratios(held: np.ndarray, fps: float, beats: np.ndarray) -> tuple[float, float, float] | None:
    """Weak/strong and offbeat/beat ratios measured on tracked beat times (None: too few beats).

    Following the tracker's beats (rather than a fixed grid) keeps the measurement on the beats when
    the tempo estimate is off by a fraction of a percent, which over a minute of music would smear a
    fixed grid across a whole beat. Returns ``(alternation, offbeat, first_strong_beat_s)``.
    """
    if beats.size < 8:
        return None
    frames = beats * fps
    mids = (frames[1:] + frames[:-1]) / 2

    def at(pos: np.ndarray, lag: int) -> np.ndarray:
        return held[np.clip(np.round(pos).astype(int) + lag, 0, held.size - 1)]

    # the envelope and the tracker have different latencies: align on the lag where beats are strongest
    lag = max(range(-4, 5), key=lambda g: float(at(frames, g).mean()))
    on = at(frames, lag)
    # every-other-beat ratio in windows of 16 beats (a phase slip of the tracker only spoils one window)
    ratios, strong_first = [], []
    for start in range(0, max(1, on.size - 15), 8):
        w = on[start : start + 16]
        even, odd = float(w[0::2].mean()), float(w[1::2].mean())
        ratios.append(min(even, odd) / max(even, odd, 1e-12))
        strong_first.append((start % 2 == 0) == (even >= odd))
    alternation = float(np.median(ratios))
    offbeat = float(at(mids, lag).mean()) / max(float(on.mean()), 1e-12)
    first = float(beats[0] if sum(strong_first) * 2 >= len(strong_first) else beats[1])
    return alternation, offbeat, first


def choose_metrical_level(
    env: np.ndarray,
    fps: float,
    bpm: float,
    min_bpm: float,
    max_bpm: float,
    second_bpm: float = 0.0,
    beats: np.ndarray | None = None,
    harmonic: tuple[np.ndarray, float] | None = None,
    marking: TempoMarking | None = None,
) -> Tempo:
    """Pick the metrical level of a raw tempo estimate (see the module docstring).

    Args:
        env: Onset envelope (:func:`onset_envelope`).
        fps: Its frame rate.
        bpm: Raw estimate.
        min_bpm: Lowest tempo allowed after halving.
        max_bpm: Highest tempo allowed after doubling.
        second_bpm: A second estimator's raw tempo (0 = none), used for the confidence only.
        beats: The beat tracker's beat times in seconds; without them (or with fewer than 8) the
            ratios are measured on a fixed grid at ``bpm``.
        harmonic: ``(envelope, fps)`` of :func:`harmonic_change_envelope`: a second accent cue; with
            beats, each ratio is the geometric mean of the onset and the harmonic-change ratio.
        marking: The song's tempo marking (:func:`tempo_marking`), applied by :func:`apply_marking`.
    """
    words = str(marking) if marking else ""
    if env.size < 8 or bpm <= 0 or env.max() <= 0:
        return Tempo(round(bpm, 1), round(bpm, 1), 0.0, "kept", 0.0, 1.0, 0.0, round(second_bpm, 1), words)
    period = 60.0 / bpm
    held = _peak_hold(env)
    measured = _accent_ratios(held, fps, beats) if beats is not None else None
    if measured is None:
        phase, on = _best_phase(held, period * fps)
        even = _grid_strength(held, 2 * period * fps, phase)
        odd = _grid_strength(held, 2 * period * fps, phase + period * fps)
        alternation = min(even, odd) / max(even, odd, 1e-12)
        offbeat = _grid_strength(held, period * fps, phase + period * fps / 2) / max(on, 1e-12)
        first = (phase if even >= odd else phase + period * fps) / fps
    else:
        alternation, offbeat, first = measured
        cue = _accent_ratios(_peak_hold(harmonic[0]), harmonic[1], beats) if harmonic is not None else None
        if cue is not None and harmonic[0].max() > 0:
            # both cues must show it: accented weak beats (drums, a bar-level accent) leave the harmony
            # changing on every beat, while subdivisions of a slower beat are weaker in both
            alternation = math.sqrt(alternation * cue[0])
            offbeat = math.sqrt(offbeat * cue[1])
    octave, margin = metrical_decision(bpm, alternation, offbeat, min_bpm, max_bpm)
    level_from = "accents"
    marked = apply_marking(bpm, octave, margin, alternation, offbeat, marking, min_bpm, max_bpm) if marking else None
    if marked is not None:
        (octave, margin), level_from = marked, "marking"
    out_bpm = {"halved": bpm / 2, "doubled": bpm * 2}.get(octave, bpm)
    out_period = 60.0 / out_bpm
    return Tempo(
        bpm=round(out_bpm, 1),
        raw_bpm=round(bpm, 1),
        confidence=tempo_confidence(margin, bpm, second_bpm),
        octave=octave,
        first_beat=float(first % out_period),
        alternation=round(alternation, 3),
        offbeat=round(offbeat, 3),
        second_bpm=round(second_bpm, 1),
        marking=words,
        level_from=level_from,
    )


def tempo_confidence(margin: float, raw_bpm: float, second_bpm: float) -> float:
    """Confidence of a tempo label, 0..1.

    ``(0.5 + 0.5 * clearness) * (0.5 + 0.5 * agreement)``: clearness is the decision margin in octaves
    (distance of the accent ratio from its threshold, 1 = a factor of two), capped at 1; agreement is
    1 when the second estimator is within 4 % of the raw tempo, 0.5 when it is within 4 % of twice or
    half of it (the same beat, another metrical level), 0 otherwise or when there is none.
    """
    clear = max(0.0, min(1.0, margin))
    agree = 0.0
    if raw_bpm > 0 and second_bpm > 0:
        ratio = second_bpm / raw_bpm
        if abs(ratio - 1) <= AGREE_TOLERANCE:
            agree = 1.0
        elif abs(ratio / 2 - 1) <= AGREE_TOLERANCE or abs(ratio * 2 - 1) <= AGREE_TOLERANCE:
            agree = 0.5
    return round((0.5 + 0.5 * clear) * (0.5 + 0.5 * agree), 3)


def track_beats(x: np.ndarray, rate: int, min_bpm: float = 40.0, max_bpm: float = 208.0) -> tuple[float, np.ndarray]:
    """Raw tempo and beat times from Essentia's Degara beat tracker, at any sample rate.

    The onset function is Essentia's complex-domain ``OnsetDetection`` on frames of the same duration
    as ``BeatTrackerDegara``'s at 44.1 kHz (2048 samples, hop 1024), so its frame rate (43 Hz, doubled by
    ``TempoTapDegara``) is the one the tracker was designed for. The tempo is 60 over the mean of the
    beat intervals within 10 % of their median (the median alone is quantised to the frame rate).

    Returns:
        ``(bpm, beat_times_s)``; bpm is 0.0 when fewer than four beats were found.
    """
    es = _essentia()
    hop = max(64, round(DEGARA_HOP_44K * rate / 44100))
    window, fft, polar = es.Windowing(type="hann"), es.FFT(), es.CartesianToPolar()
    detect = es.OnsetDetection(method="complex", sampleRate=rate)
    odf = [
        detect(*polar(fft(window(frame))))
        for frame in es.FrameGenerator(x, frameSize=2 * hop, hopSize=hop, startFromZero=True)
    ]
    if len(odf) < 16:
        return 0.0, np.zeros(0)
    tracker = es.TempoTapDegara(
        sampleRateODF=rate / hop,
        resample="x2",
        minTempo=int(max(40, min(180, min_bpm))),
        maxTempo=int(max(60, min(250, max_bpm))),
    )
    ticks = np.asarray(tracker(np.asarray(odf, dtype=np.float32)), dtype=np.float64)
    if ticks.size < 4:
        return 0.0, ticks
    ibi = np.diff(ticks)
    med = float(np.median(ibi))
    steady = ibi[np.abs(ibi - med) <= 0.1 * med]
    return 60.0 / float(steady.mean() if steady.size else med), ticks


def estimate_tempo(
    x: np.ndarray, rate: int, min_bpm: float = 40.0, max_bpm: float = 220.0, marking: TempoMarking | None = None
) -> Tempo:
    """Tempo of mono audio: Essentia's beat tracker, a metrical-level choice, and a confidence.

    Args:
        x: Mono audio.
        rate: Its sample rate (11025 Hz is plenty).
        min_bpm: Lowest tempo reported.
        max_bpm: Highest tempo reported.
        marking: The song's tempo marking (:func:`tempo_marking` of its title and file name), if any.
    """
    es = _essentia()
    lo, hi = max(30.0, min_bpm), min(300.0, max_bpm)
    second = float(es.PercivalBpmEstimator(sampleRate=rate, minBPM=int(lo), maxBPM=int(hi))(x))
    raw, beats = track_beats(x, rate, lo, hi)
    if raw <= 0:
        raw, beats = second, np.zeros(0)
    env, fps = onset_envelope(x, rate)
    harmonic = harmonic_change_envelope(x, rate)
    tempo = choose_metrical_level(env, fps, raw, lo, hi, second, beats, harmonic, marking)
    while tempo.bpm > hi:
        tempo.bpm, tempo.octave = round(tempo.bpm / 2, 1), "halved"
    while 0 < tempo.bpm < lo:
        tempo.bpm, tempo.octave = round(tempo.bpm * 2, 1), "doubled"
    return tempo


def estimate_key(x: np.ndarray, rate: int, profile: str = "bgate") -> tuple[str, float]:
    """Key of mono audio with Essentia's KeyExtractor.

    KeyExtractor's frame defaults (4096 samples, hop 4096) are meant for 44.1 kHz; at another rate the
    frames keep their duration (93 ms), not their sample count (4096 samples at 11 kHz would be 0.37 s
    frames that smear chord changes and drum hits into the pitch profile).

    Returns:
        ``("A minor", strength)``; sharps are spelled as the usual flats (Bb, Eb, Ab).
    """
    es = _essentia()
    frame = max(256, 2 * round(KEY_FRAME_44K * rate / 44100 / 2))
    key, scale, strength = es.KeyExtractor(sampleRate=rate, profileType=profile, frameSize=frame, hopSize=frame)(x)
    key = KEY_NAMES.get(key, key)
    return f"{key} {scale}", round(float(strength), 3)


def estimate_loudness(x: np.ndarray, rate: int) -> float | None:
    """Integrated loudness (EBU R128, LUFS) of a mono signal played on both channels."""
    es = _essentia()
    if x.size < rate:  # shorter than the 400 ms gating blocks need to be useful
        return None
    stereo = np.ascontiguousarray(np.stack([x, x], axis=1), dtype=np.float32)
    try:
        _, _, integrated, _ = es.LoudnessEBUR128(sampleRate=rate)(stereo)
    except RuntimeError:
        return None
    return round(float(integrated), 1) if math.isfinite(integrated) else None


def read_tags(path: Path) -> dict[str, str]:
    """Title, artist, album and genre tags of an audio file (empty dict when none)."""
    out: dict[str, str] = {}
    try:
        es = _essentia()
        title, artist, album, _comment, genre = es.MetadataReader(filename=str(path), failOnError=False)()[:5]
        out = {"title": title, "artist": artist, "album": album, "genre": genre}
    except Exception:  # essentia raises RuntimeError for odd files; fall back to libsndfile's reader
        try:
            import soundfile as sf

            with sf.SoundFile(str(path)) as fh:
                meta = fh.copy_metadata()
            out = {k: meta.get(k, "") for k in ("title", "artist", "album", "genre")}
        except Exception:
            out = {}
    return {k: " ".join(str(v).split()) for k, v in out.items() if v and str(v).strip()}


def tempo_word(bpm: float | None) -> str | None:
    """Readable tempo class used by caption templates."""
    if not bpm:
        return None
    if bpm < 76:
        return "slow"
    if bpm < 108:
        return "moderate"
    if bpm < 140:
        return "upbeat"
    return "fast"


# ---------------------------------------------------------------------- optional TensorFlow models
def tensorflow_available() -> bool:
    """Whether this essentia build has the TensorFlow predictors."""
    es = _essentia()
    return hasattr(es, "TensorflowPredictEffnetDiscogs") and hasattr(es, "TensorflowPredict2D")


EMBEDDING_MODEL = "discogs-effnet-bs64-1"
DEFAULT_HEAD_INPUT = "model/Placeholder"
DEFAULT_HEAD_OUTPUT = "model/Sigmoid"
DEFAULT_EMBEDDING_OUTPUT = "PartitionedCall:1"


def read_model_card(path: Path) -> dict:
    """A model card (Essentia's ``<model>.json``) as a dict; {} when absent or unreadable."""
    try:
        card = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def _node(entries: object, purpose: str | None) -> str | None:
    """Name of the node with ``output_purpose == purpose`` (else the first) in a list of node entries."""
    if not isinstance(entries, list):
        return None
    named = [e for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str) and e["name"]]
    if purpose is not None:
        for entry in named:
            if entry.get("output_purpose") == purpose:
                return entry["name"]
    return named[0]["name"] if named else None


def model_card_nodes(card: dict, default_input: str, default_output: str, purpose: str) -> tuple[str, str]:
    """Input and output node names of a model, read from its model card.

    Essentia's cards list the graph's nodes as ``{"inputs": [{"name": ...}], "outputs": [{"name": ...,
    "output_purpose": "predictions" | "embeddings"}]}`` under ``schema``; the same lists under
    ``inference`` are read too. The discogs400 genre head, for example, takes
    ``serving_default_model_Placeholder`` and gives ``PartitionedCall:0``. The defaults are used only
    for a name the card does not give.

    Args:
        card: The parsed model card.
        default_input: Input node when the card names none.
        default_output: Output node when the card names none.
        purpose: ``output_purpose`` of the output wanted ("predictions" for a head, "embeddings" for
            the embedding model).

    Returns:
        ``(input_name, output_name)``.
    """
    input_name = output_name = None
    for section in ("schema", "inference"):
        block = card.get(section)
        if isinstance(block, dict):
            input_name = input_name or _node(block.get("inputs"), None)
            output_name = output_name or _node(block.get("outputs"), purpose)
    return input_name or default_input, output_name or default_output


@dataclass
class TFHead:
    """One classifier head: its graph, classes and node names (from its model card).

    Attributes:
        kind: "genre", "mood" or "instrument".
        graph: The ``.pb`` file.
        classes: Class names, in output order.
        input: Input node name.
        output: Output node name.
    """

    kind: str
    graph: Path
    classes: list[str]
    input: str = DEFAULT_HEAD_INPUT
    output: str = DEFAULT_HEAD_OUTPUT


@dataclass
class TFModels:
    """Essentia TensorFlow models found in a folder.

    A folder holds the embedding model ``discogs-effnet-bs64-1.pb`` (its card ``.json`` optional) and
    any number of classifier heads ``<name>.pb`` with their model cards ``<name>.json`` (Essentia's
    format: ``classes``, the node names under ``schema``, see :func:`model_card_nodes`). Heads whose
    name contains "genre" give genres, "mood" moods and "instrument" instruments.
    """

    embedding: Path
    heads: list[TFHead] = field(default_factory=list)
    embedding_output: str = DEFAULT_EMBEDDING_OUTPUT
    embedding_input: str | None = None  # None: the predictor's own default

    @classmethod
    def find(cls, folder: Path) -> tuple[TFModels | None, str]:
        """Look for the models; returns ``(models or None, message)``."""
        if not tensorflow_available():
            return None, TF_MISSING_MESSAGE
        folder = Path(folder)
        embedding = folder / f"{EMBEDDING_MODEL}.pb"
        if not embedding.is_file():
            return None, f"{embedding}: embedding model not found; genre/mood/instrument labels are off"
        embedding_input, embedding_output = model_card_nodes(
            read_model_card(embedding.with_suffix(".json")), "", DEFAULT_EMBEDDING_OUTPUT, "embeddings"
        )
        heads = []
        for pb in sorted(folder.glob("*.pb")):
            if pb == embedding:
                continue
            kind = next((k for k in ("genre", "mood", "instrument") if k in pb.stem), None)
            card = read_model_card(pb.with_suffix(".json"))
            if kind is None or not card:
                continue
            input_name, output_name = model_card_nodes(card, DEFAULT_HEAD_INPUT, DEFAULT_HEAD_OUTPUT, "predictions")
            classes = card.get("classes") if isinstance(card.get("classes"), list) else []
            heads.append(TFHead(kind, pb, [str(c) for c in classes], input_name, output_name))
        if not heads:
            return None, f"{folder}: no genre/mood/instrument heads (<name>.pb + <name>.json) found"
        models = cls(embedding, heads, embedding_output, embedding_input or None)
        return models, f"TensorFlow models: {', '.join(h.graph.name for h in heads)}"

    def predict(self, x16k: np.ndarray, top: int = 3, threshold: float = 0.1) -> tuple[dict[str, list[str]], list[str]]:
        """Top labels per kind for 16 kHz mono audio.

        A head that fails (a broken graph, wrong node names, a shape mismatch) is reported and skipped;
        the other heads still run.

        Returns:
            ``(labels by kind, error messages)``.

        Raises:
            RuntimeError: The embedding model itself fails (no head can run); the caller reports it.
        """
        es = _essentia()
        embed = _tf_predictor(
            es, "TensorflowPredictEffnetDiscogs", str(self.embedding), self.embedding_input, self.embedding_output
        )
        emb = embed(x16k)
        out: dict[str, list[str]] = {}
        errors: list[str] = []
        for head in self.heads:
            try:
                model = _tf_predictor(es, "TensorflowPredict2D", str(head.graph), head.input, head.output)
                scores = np.asarray(model(emb), dtype=np.float64)
                scores = scores.mean(axis=0) if scores.ndim == 2 else scores.reshape(-1)
            except Exception as err:  # essentia raises RuntimeError; anything from a broken graph is per head
                errors.append(f"{head.graph.name}: {err}")
                continue
            if head.classes and scores.size != len(head.classes):
                errors.append(f"{head.graph.name}: {scores.size} scores for {len(head.classes)} classes in its card")
                continue
            order = np.argsort(scores)[::-1][:top]
            # sizes match (checked above); a card without classes gives no names
            found = [head.classes[i].split("---")[-1] for i in order if head.classes and scores[i] >= threshold]
            out.setdefault(head.kind, []).extend(found)
        return out, errors


_PREDICTORS: dict[tuple, object] = {}


def _tf_predictor(es: object, algorithm: str, graph: str, input_name: str | None, output_name: str) -> object:
    """An Essentia TensorFlow predictor, built once per process (loading a graph takes seconds)."""
    key = (id(es), algorithm, graph, input_name, output_name)
    if key not in _PREDICTORS:
        kwargs = {"graphFilename": graph, "output": output_name}
        if input_name is not None:
            kwargs["input"] = input_name
        _PREDICTORS[key] = getattr(es, algorithm)(**kwargs)
    return _PREDICTORS[key]


def labels_to_caption_fields(labels: dict) -> dict:
    """Map analysis labels to Caption fields (bpm, key, genre, mood, instruments, title, artist)."""
    out: dict = {}
    for name in ("bpm", "key", "title", "artist"):
        if labels.get(name):
            out[name] = labels[name]
    genres = labels.get("genres") or ([labels["tag_genre"]] if labels.get("tag_genre") else [])
    if genres:
        out["genre"] = genres[0]
    if labels.get("moods"):
        out["mood"] = labels["moods"][0]
    if labels.get("instruments"):
        out["instruments"] = list(labels["instruments"])
    return Caption.from_dict(out).to_dict()
