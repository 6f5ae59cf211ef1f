"""Step 4: auto-labelling with Essentia (tempo, key, loudness), file tags, optional TensorFlow models.

Tempo: Essentia's ``PercivalBpmEstimator`` gives a first estimate. Beat trackers often lock onto the
wrong metrical level: a slow piece with a busy hi-hat is reported at double tempo, a fast one with a
half-time feel at half tempo. :func:`correct_octave` checks the metrical level on a multi-band onset
envelope (log band energies, so kick and snare weigh alike):

* **halve** when the estimated beats alternate strong/weak (every other "beat" carries most of the
  onset energy, the pattern of subdivisions of a slower beat);
* **double** when the positions halfway between the beats are as strong as the beats themselves (the
  beat is twice as fast).

The confidence (0..1) is the regularity of the beat (normalised autocorrelation of the onset envelope
at the beat period) times how clearly the octave tests decided (distance of the measured ratios from
their thresholds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from musiclit.data.caption import Caption

ENV_FFT = 512
ENV_HOP = 128
ENV_BANDS = 24
ALTERNATION_THRESHOLD = 0.4  # weak/strong beat ratio below which the beat is halved
OFFBEAT_THRESHOLD = 0.5  # offbeat/beat ratio above which the beat is doubled

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
        bpm: Tempo after octave correction.
        raw_bpm: Essentia's estimate before the correction.
        confidence: 0..1.
        octave: "kept", "halved" or "doubled".
        first_beat: Time of the first beat in the analysed excerpt, in seconds.
        alternation: Weak/strong beat ratio at the raw tempo.
        offbeat: Offbeat/beat ratio at the raw tempo.
    """

    bpm: float
    raw_bpm: float
    confidence: float
    octave: str
    first_beat: float
    alternation: float
    offbeat: float


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


def correct_octave(env: np.ndarray, fps: float, bpm: float, min_bpm: float, max_bpm: float) -> Tempo:
    """Pick the metrical level of a tempo estimate (see the module docstring).

    Args:
        env: Onset envelope.
        fps: Its frame rate.
        bpm: First estimate.
        min_bpm: Lowest tempo allowed after halving.
        max_bpm: Highest tempo allowed after doubling.
    """
    if env.size < 8 or bpm <= 0 or env.max() <= 0:
        return Tempo(bpm, bpm, 0.0, "kept", 0.0, 1.0, 0.0)
    period = 60.0 * fps / bpm
    held = _peak_hold(env)
    phase, on = _best_phase(held, period)
    even = _grid_strength(held, 2 * period, phase)
    odd = _grid_strength(held, 2 * period, phase + period)
    alternation = min(even, odd) / max(even, odd, 1e-12)
    offbeat = _grid_strength(held, period, phase + period / 2) / max(on, 1e-12)
    octave, out_bpm, out_period, out_phase = "kept", bpm, period, phase
    if alternation < ALTERNATION_THRESHOLD and bpm / 2 >= min_bpm:
        octave, out_bpm, out_period = "halved", bpm / 2, 2 * period
        out_phase = phase if even >= odd else phase + period
        margin = (ALTERNATION_THRESHOLD - alternation) / ALTERNATION_THRESHOLD
    elif offbeat > OFFBEAT_THRESHOLD and bpm * 2 <= max_bpm:
        octave, out_bpm, out_period = "doubled", bpm * 2, period / 2
        margin = min(1.0, (offbeat - OFFBEAT_THRESHOLD) / OFFBEAT_THRESHOLD)
    else:
        m_alt = (alternation - ALTERNATION_THRESHOLD) / (1 - ALTERNATION_THRESHOLD)
        m_off = (OFFBEAT_THRESHOLD - offbeat) / OFFBEAT_THRESHOLD
        margin = max(0.0, min(m_alt, m_off))
    # regularity: normalised autocorrelation at the beat period
    e = env - env.mean()
    lag = round(out_period)
    denom = float((e * e).sum())
    acf = float((e[:-lag] * e[lag:]).sum()) / denom if 0 < lag < e.size and denom > 0 else 0.0
    regularity = max(0.0, min(1.0, acf / max(1e-9, 1 - lag / e.size)))
    confidence = round(regularity * (0.5 + 0.5 * max(0.0, min(1.0, margin))), 3)
    return Tempo(
        bpm=round(out_bpm, 1),
        raw_bpm=round(bpm, 1),
        confidence=confidence,
        octave=octave,
        first_beat=float(out_phase % out_period) / fps,
        alternation=round(alternation, 3),
        offbeat=round(offbeat, 3),
    )


def estimate_tempo(x: np.ndarray, rate: int, min_bpm: float = 40.0, max_bpm: float = 220.0) -> Tempo:
    """Tempo of mono audio: Essentia's Percival estimator plus the octave correction."""
    es = _essentia()
    lo, hi = max(30.0, min_bpm), min(300.0, max_bpm)
    # let the raw estimate range one octave around the allowed range, the correction brings it back
    raw = float(es.PercivalBpmEstimator(sampleRate=rate, minBPM=int(lo), maxBPM=int(hi))(x))
    env, fps = onset_envelope(x, rate)
    tempo = correct_octave(env, fps, raw, lo, hi)
    while tempo.bpm > hi:
        tempo.bpm, tempo.octave = round(tempo.bpm / 2, 1), "halved"
    while tempo.bpm < lo:
        tempo.bpm, tempo.octave = round(tempo.bpm * 2, 1), "doubled"
    return tempo


def estimate_key(x: np.ndarray, rate: int, profile: str = "bgate") -> tuple[str, float]:
    """Key of mono audio with Essentia's KeyExtractor.

    Returns:
        ``("A minor", strength)``; sharps are spelled as the usual flats (Bb, Eb, Ab).
    """
    es = _essentia()
    key, scale, strength = es.KeyExtractor(sampleRate=rate, profileType=profile)(x)
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


@dataclass
class TFModels:
    """Essentia TensorFlow models found in a folder.

    A folder holds ``discogs-effnet-bs64-1.pb`` (the embedding model) and any number of classifier
    heads ``<name>.pb`` with their metadata ``<name>.json`` (Essentia's model cards, with ``classes``
    and an ``inference`` section). Heads whose name contains "genre" give genres, "mood" moods and
    "instrument" instruments.
    """

    embedding: Path
    heads: list[tuple[str, Path, list[str]]] = field(default_factory=list)

    @classmethod
    def find(cls, folder: Path) -> tuple[TFModels | None, str]:
        """Look for the models; returns ``(models or None, message)``."""
        import json

        if not tensorflow_available():
            return None, TF_MISSING_MESSAGE
        folder = Path(folder)
        embedding = folder / "discogs-effnet-bs64-1.pb"
        if not embedding.is_file():
            return None, f"{embedding}: embedding model not found; genre/mood/instrument labels are off"
        heads = []
        for pb in sorted(folder.glob("*.pb")):
            if pb == embedding:
                continue
            meta = pb.with_suffix(".json")
            kind = next((k for k in ("genre", "mood", "instrument") if k in pb.stem), None)
            if kind is None or not meta.is_file():
                continue
            classes = json.loads(meta.read_text(encoding="utf-8")).get("classes", [])
            heads.append((kind, pb, [str(c) for c in classes]))
        if not heads:
            return None, f"{folder}: no genre/mood/instrument heads (<name>.pb + <name>.json) found"
        return cls(embedding, heads), f"TensorFlow models: {', '.join(h[1].name for h in heads)}"

    def predict(self, x16k: np.ndarray, top: int = 3, threshold: float = 0.1) -> dict[str, list[str]]:
        """Top labels per kind for 16 kHz mono audio."""
        es = _essentia()
        emb = es.TensorflowPredictEffnetDiscogs(graphFilename=str(self.embedding), output="PartitionedCall:1")(x16k)
        out: dict[str, list[str]] = {}
        for kind, pb, classes in self.heads:
            model = es.TensorflowPredict2D(graphFilename=str(pb), input="model/Placeholder", output="model/Sigmoid")
            scores = np.asarray(model(emb)).mean(axis=0)
            order = np.argsort(scores)[::-1][:top]
            labels = [classes[i].split("---")[-1] for i in order if i < len(classes) and scores[i] >= threshold]
            out.setdefault(kind, []).extend(labels)
        return out


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
