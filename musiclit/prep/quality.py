"""Step 1-2: stream-decode a song once, measure its quality, and fingerprint it.

A song is read in blocks, so memory does not grow with the file's native rate or channel count: each
block updates the clipping count and the long-term spectrum (bandwidth) at the native rate, and is
resampled (streaming soxr) to the clip rate into a :class:`SpillBuffer`, which moves to a temporary file
on disk when a song is longer than ``memory_seconds``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musiclit.data.audio import AudioError

BLOCK_SECONDS = 10.0
CLIP_LEVEL = 0.999
PLATEAU_LEVEL = 0.5
BANDWIDTH_FFT = 4096
BANDWIDTH_FLOOR_DB = 60.0
CUTOFF_DROP_DB = 30.0  # a brick wall: the spectrum falls by at least this much ...
CUTOFF_BELOW = (1500.0, 0.15)  # ... from its mean level over the 1500 Hz (at most 15 % of fc) below fc ...
CUTOFF_GAP = (300.0, 0.05)  # ... (leaving 300 Hz, at most 5 % of fc, on each side of fc for the transition) ...
# ... to its maximum anywhere above, up to the Nyquist frequency
SILENCE_FRAME_S = 0.05
FP_RATE_FFT = 2048
FP_HOP = 256
FP_BANDS = 17
FP_SECONDS = 120.0
FP_MAX_LAG = 8


class SpillBuffer:
    """Append-only (channels, samples) float32 buffer that spills to a raw temp file when it grows large.

    Args:
        channels: Channel count.
        max_memory_samples: Samples per channel kept in memory before spilling to disk.
        spill_dir: Folder for the temporary file (default: the system temp folder).
    """

    def __init__(self, channels: int, max_memory_samples: int, spill_dir: Path | None = None) -> None:
        self.channels = channels
        self.max_memory_samples = max_memory_samples
        self.spill_dir = spill_dir
        self._blocks: list[np.ndarray] = []
        self._n = 0
        self._file: Path | None = None
        self._fh = None
        self._memmap: np.ndarray | None = None

    def __len__(self) -> int:
        return self._n

    def append(self, block: np.ndarray) -> None:
        """Append a (channels, n) block."""
        if block.shape[1] == 0:
            return
        block = np.ascontiguousarray(block, dtype=np.float32)
        if self._fh is None and self._n + block.shape[1] > self.max_memory_samples:
            if self.spill_dir is not None:
                self.spill_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="musiclit-", suffix=".f32", dir=self.spill_dir)
            self._file = Path(name)
            self._fh = os.fdopen(fd, "wb")
            for b in self._blocks:
                self._fh.write(b.T.tobytes())
            self._blocks = []
        if self._fh is not None:
            self._fh.write(block.T.tobytes())
        else:
            self._blocks.append(block)
        self._n += block.shape[1]

    def finish(self) -> None:
        """Stop appending; makes reads possible."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            if self._n:
                self._memmap = np.memmap(self._file, dtype=np.float32, mode="r", shape=(self._n, self.channels))
        elif len(self._blocks) > 1:
            self._blocks = [np.concatenate(self._blocks, axis=1)]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples ``[start, stop)`` as a (channels, n) array."""
        start, stop = max(0, start), min(self._n, stop)
        if stop <= start:
            return np.zeros((self.channels, 0), dtype=np.float32)
        if self._memmap is not None:
            return np.ascontiguousarray(self._memmap[start:stop].T)
        return self._blocks[0][:, start:stop]

    def close(self) -> None:
        """Release memory and delete the temporary file."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._memmap = None
        self._blocks = []
        if self._file is not None:
            self._file.unlink(missing_ok=True)
            self._file = None


@dataclass
class Measurements:
    """What the decode pass measured.

    Attributes:
        duration: Seconds.
        native_rate: The file's sample rate.
        native_channels: The file's channel count.
        format: soundfile's format name (e.g. "MP3", "FLAC").
        clipped_fraction: Fraction of samples at full scale or on a flat top.
        bandwidth: Effective bandwidth in Hz (highest frequency within 60 dB of the spectrum's peak).
        silent_fraction: Fraction of 50 ms frames below the silence level.
        peak: Peak absolute sample value.
        cutoff: Frequency in Hz of a brick-wall cut-off (a lossy encoder's low-pass, or the edge of
            audio upsampled from a lower rate), None when the spectrum rolls off naturally.
        cutoff_drop_db: Depth of the steepest drop found (dB), whether or not it counts as a cut-off.
    """

    duration: float
    native_rate: int
    native_channels: int
    format: str
    clipped_fraction: float
    bandwidth: float
    silent_fraction: float
    peak: float
    cutoff: float | None = None
    cutoff_drop_db: float = 0.0


def _clipped_count(x: np.ndarray) -> int:
    """Samples (all channels) at full scale or inside a flat run of 3+ equal values above half scale."""
    ax = np.abs(x)
    clipped = ax >= CLIP_LEVEL
    if x.shape[0] >= 3:
        eq = (x[1:] == x[:-1]) & (ax[1:] >= PLATEAU_LEVEL)
        run = np.zeros_like(clipped)
        run[2:] = eq[1:] & eq[:-1]
        clipped |= run
    return int(clipped.sum())


def decode_and_measure(
    path: Path,
    out_rate: int,
    out_channels: int,
    silence_db: float = -50.0,
    memory_seconds: float = 900.0,
    spill_dir: Path | None = None,
) -> tuple[Measurements, SpillBuffer]:
    """Decode a song in blocks, measure it, and resample it to the clip format.

    Args:
        path: Audio file.
        out_rate: Rate of the returned audio.
        out_channels: Channels of the returned audio (1 = mono mix).
        silence_db: Frames quieter than this (dBFS RMS) count as silent.
        memory_seconds: Longer songs spill to a temporary file.
        spill_dir: Folder of that temporary file.

    Returns:
        The measurements and the resampled audio (call ``close()`` on it when done).

    Raises:
        AudioError: The file cannot be opened or decoded, or holds no samples.
    """
    import soundfile as sf
    import soxr

    try:
        fh = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{path}: cannot decode audio ({err})") from None
    buf = SpillBuffer(out_channels, int(memory_seconds * out_rate), spill_dir)
    try:
        with fh:
            rate, channels, fmt = fh.samplerate, fh.channels, fh.format
            stream = soxr.ResampleStream(rate, out_rate, out_channels, dtype="float32", quality="HQ")
            block = max(BANDWIDTH_FFT, int(BLOCK_SECONDS * rate))
            window = np.hanning(BANDWIDTH_FFT).astype(np.float32)
            ltas = np.zeros(BANDWIDTH_FFT // 2 + 1)
            n_frames = clipped = total = 0
            peak = 0.0
            while True:
                try:
                    x = fh.read(frames=block, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError) as err:
                    if total:
                        break  # truncated file: keep what decoded
                    raise AudioError(f"{path}: cannot decode audio ({err})") from None
                if x.shape[0] == 0:
                    break
                total += x.shape[0]
                if not np.isfinite(x).all():
                    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
                clipped += _clipped_count(x)
                peak = max(peak, float(np.abs(x).max()))
                mono = x[:, 0] if channels == 1 else x.sum(axis=1, dtype=np.float32) * np.float32(1.0 / channels)
                if mono.size >= BANDWIDTH_FFT:
                    # a sparse sample of frames is enough for a long-term spectrum
                    starts = np.linspace(0, mono.size - BANDWIDTH_FFT, num=8).astype(int)
                    frames = np.stack([mono[s : s + BANDWIDTH_FFT] for s in starts]) * window
                    ltas += (np.abs(np.fft.rfft(frames, axis=1)) ** 2).sum(axis=0)
                    n_frames += len(starts)
                src = mono[:, None] if out_channels == 1 else (x if channels == 2 else _to_channels(x, out_channels))
                buf.append(stream.resample_chunk(np.ascontiguousarray(src), last=False).T)
            buf.append(stream.resample_chunk(np.zeros((0, out_channels), dtype=np.float32), last=True).T)
    except BaseException:
        buf.close()
        raise
    buf.finish()
    if total == 0 or len(buf) == 0:
        buf.close()
        raise AudioError(f"{path}: no audio samples (empty or truncated file)")
    bandwidth = _bandwidth(ltas, rate) if n_frames else 0.0
    cutoff, drop = find_cutoff(ltas, rate) if n_frames else (None, 0.0)
    silent = _silent_fraction(buf, out_rate, silence_db)
    meas = Measurements(
        duration=total / rate,
        native_rate=rate,
        native_channels=channels,
        format=fmt,
        clipped_fraction=clipped / max(1, total * channels),
        bandwidth=bandwidth,
        silent_fraction=silent,
        peak=peak,
        cutoff=cutoff,
        cutoff_drop_db=drop,
    )
    return meas, buf


def _to_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """(frames, c) -> (frames, channels): mono duplicated, or the first two channels' mix kept as L/R."""
    if x.shape[1] == 1:
        return np.repeat(x, channels, axis=1)
    return x[:, :channels]


def _bandwidth(ltas: np.ndarray, rate: int) -> float:
    """Highest frequency whose long-term power is within ``BANDWIDTH_FLOOR_DB`` of the loudest bin."""
    db = 10 * np.log10(ltas + 1e-30)
    above = np.nonzero(db > db.max() - BANDWIDTH_FLOOR_DB)[0]
    if above.size == 0 or ltas.max() <= 1e-20:
        return 0.0
    return float(above.max() * rate / BANDWIDTH_FFT)


def find_cutoff(ltas: np.ndarray, rate: int) -> tuple[float | None, float]:
    """Find a brick-wall cut-off in a long-term power spectrum.

    A lossy encoder low-passes at a fixed frequency (LAME: about 16 kHz at 128 kbps, 19 kHz at 192 kbps)
    and codes nothing above it, and audio upsampled from a lower rate is empty above the old Nyquist
    frequency: the spectrum falls off a cliff and stays at nothing up to the Nyquist frequency. Acoustic
    instruments (or a soft recording) roll off gradually, and a lossless file keeps its noise floor
    up to the top. The test at each frequency ``fc``: the mean level over ``[fc - 1500, fc - 300]`` Hz
    exceeds the highest level anywhere above ``fc + 300`` Hz by at least ``CUTOFF_DROP_DB`` (below
    10 kHz the windows shrink to ``[0.85, 0.95] x fc`` and ``1.05 x fc``, so that a roll-off of even
    30 dB per octave drops less than 30 dB across them).

    Args:
        ltas: Long-term power spectrum, ``BANDWIDTH_FFT // 2 + 1`` bins.
        rate: Its sample rate.

    Returns:
        ``(cutoff_hz or None, drop_db)``: the frequency of the steepest drop when it is a cliff, and its
        depth in dB (reported either way).
    """
    n = ltas.size
    hz = rate / BANDWIDTH_FFT
    if ltas.max() <= 1e-20 or n < 64:
        return None, 0.0
    # light smoothing (5 bins, about 50 Hz at 44.1 kHz) so a single empty bin is not a cliff
    db = 10 * np.log10(np.convolve(ltas, np.ones(5) / 5, mode="same") + 1e-30)
    db = np.maximum(db, db.max() - 200.0)
    cum = np.concatenate([[0.0], np.cumsum(db)])
    above_max = np.maximum.accumulate(db[::-1])[::-1]  # max of db[k:] for each k
    centres = np.arange(max(1, round(1000 / hz)), n)
    f = centres * hz
    # windows relative to fc at low frequencies, so a steady roll-off (dB per octave) never looks like a cliff
    gap = np.maximum(1, np.round(np.minimum(CUTOFF_GAP[0], CUTOFF_GAP[1] * f) / hz)).astype(int)
    width = np.maximum(gap + 1, np.round(np.minimum(CUTOFF_BELOW[0], CUTOFF_BELOW[1] * f) / hz)).astype(int)
    ok = centres + gap < n - 1
    centres, gap, width = centres[ok], gap[ok], width[ok]
    if centres.size == 0:
        return None, 0.0
    below = (cum[centres - gap] - cum[centres - width]) / (width - gap)
    drop = below - above_max[centres + gap]
    i = int(np.argmax(drop))
    depth = float(drop[i])
    return (float(centres[i] * hz) if depth >= CUTOFF_DROP_DB else None), round(depth, 1)


def _silent_fraction(buf: SpillBuffer, rate: int, silence_db: float) -> float:
    frame = max(1, int(SILENCE_FRAME_S * rate))
    step = frame * 2000
    silent = count = 0
    for start in range(0, len(buf), step):
        x = buf.read(start, start + step).mean(axis=0)
        n = x.size // frame
        if n == 0:
            continue
        rms = np.sqrt((x[: n * frame].reshape(n, frame) ** 2).mean(axis=1) + 1e-20)
        silent += int((20 * np.log10(rms) < silence_db).sum())
        count += n
    return silent / count if count else 1.0


def mono_excerpt(
    buf: SpillBuffer, rate: int, target_rate: int, max_seconds: float, where: str = "middle"
) -> tuple[np.ndarray, float]:
    """Mono excerpt of at most ``max_seconds`` resampled to ``target_rate``.

    Args:
        buf: Audio at ``rate``.
        rate: Rate of ``buf``.
        target_rate: Rate of the excerpt.
        max_seconds: Longest excerpt.
        where: "middle" (centred in the song) or "start".

    Returns:
        ``(excerpt, offset_seconds)``.
    """
    import soxr

    n = len(buf)
    want = min(n, int(max_seconds * rate))
    start = (n - want) // 2 if where == "middle" else 0
    x = buf.read(start, start + want).mean(axis=0)
    if target_rate != rate:
        x = soxr.resample(x, rate, target_rate, quality="MQ")
    return np.ascontiguousarray(x, dtype=np.float32), start / rate


# ---------------------------------------------------------------------- fingerprint
def fingerprint(x: np.ndarray, rate: int) -> np.ndarray:
    """Compact, gain-invariant fingerprint: one 16-bit word per 23 ms frame (Haitsma-Kalker style).

    Each bit is the sign of the change over time of the energy difference of two adjacent log-spaced
    bands (300 Hz - 3 kHz), which a gain change, a re-encode (MP3 vs WAV) or a resample leaves intact.

    Args:
        x: Mono audio.
        rate: Its sample rate (about 11 kHz is enough).

    Returns:
        uint16 array, one word per frame (empty when the audio is shorter than a frame).
    """
    hop = int(FP_HOP * rate / 11025)
    n_fft = int(FP_RATE_FFT * rate / 11025)
    if x.size < n_fft + hop:
        return np.zeros(0, dtype=np.uint16)
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float32), n_fft)[::hop] * np.hanning(n_fft).astype(
        np.float32
    )
    spec = np.fft.rfft(frames, axis=1)
    power = spec.real**2 + spec.imag**2
    edges = np.geomspace(300, 3000, FP_BANDS + 1)
    bins = np.round(edges * n_fft / rate).astype(int)
    energy = np.stack([power[:, bins[i] : max(bins[i + 1], bins[i] + 1)].sum(axis=1) for i in range(FP_BANDS)], axis=1)
    loge = np.log(energy + 1e-10)
    diff = loge[:, :-1] - loge[:, 1:]
    bits = (diff[1:] - diff[:-1]) > 0
    packed = np.packbits(bits, axis=1, bitorder="little")  # (frames, 2) bytes, no BLAS involved
    return np.ascontiguousarray(packed).view("<u2")[:, 0].astype(np.uint16)


_POPCOUNT = np.array([bin(i).count("1") for i in range(1 << 16)], dtype=np.uint8)


def fingerprint_distance(a: np.ndarray, b: np.ndarray, max_lag: int = FP_MAX_LAG) -> float:
    """Bit error rate (0 = identical, about 0.5 = unrelated) at the best alignment within ``max_lag`` frames."""
    if a.size == 0 or b.size == 0:
        return 1.0
    best = 1.0
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[lag:], b) if lag >= 0 else (a, b[-lag:])
        n = min(x.size, y.size)
        if n < 32:
            continue
        ber = float(_POPCOUNT[np.bitwise_xor(x[:n], y[:n])].sum()) / (16 * n)
        best = min(best, ber)
    return best


def encode_fingerprint(fp: np.ndarray) -> str:
    """Fingerprint as a hex string (for the JSON state)."""
    return fp.astype("<u2").tobytes().hex()


def decode_fingerprint(text: str) -> np.ndarray:
    """Inverse of :func:`encode_fingerprint`."""
    return np.frombuffer(bytes.fromhex(text), dtype="<u2").astype(np.uint16)


def bandwidth_threshold(min_bandwidth: float, ratio: float, native_rate: int, out_rate: int) -> float:
    """Lowest acceptable brick-wall cut-off (Hz) for a file.

    What the model can hear ends at the Nyquist frequency of the clips (16 kHz at 32 kHz) or of the
    file, whichever is lower; a cut-off at ``ratio`` of that band is enough, and the threshold never
    exceeds ``min_bandwidth``.
    """
    return min(min_bandwidth, ratio * min(native_rate, out_rate) / 2)
