"""Does a generated clip copy the training material? Exact token copies and melodic copies.

**Exact copies (codec tokens).** :class:`TokenIndex` holds a hash of every n-gram of codec frames (all
codebooks of a frame together) of every training clip, in one sorted array: a lookup is a binary search,
so checking a generated clip costs O(frames x log(index size)) whatever the number of training clips (no
all-pairs loop). Every n-gram the generated clip shares with the index seeds a candidate alignment (a
training clip and a constant offset); the candidate is then verified on the codes themselves and extended
frame by frame in both directions, so the reported run is exact (a hash collision cannot report a copy)
and reaches beyond the seeding n-gram. Runs shorter than ``ngram`` frames are not seen.

n-grams that occur in many different training clips (silence, padding, a stock sample) are generic, not
a copy: they are dropped from the index (``max_clips``). Frames holding the special token (padding) never
enter it.

**Melodic copies (chroma).** A generated clip can copy a melody without sharing a single token (another
sound, another key, a shifted frame grid). :class:`ChromaIndex` compares chromagrams: each frame's 12
pitch-class energies are centred and L2-normalised (two frames' dot product is then their correlation;
silent frames are zeroed), and every window of ``window_seconds`` of the generated clip is slid over every
training clip, at every lag (one chroma hop of resolution) and, with ``key_invariant``, at each of the 12
circular pitch shifts (a transposed copy). The similarity of a window at an alignment is the mean over its
frames of the SQUARED per-frame correlation: 1 for the same pitch content frame for frame; squaring
pushes the many half-similar frames of unrelated music in the same key down (measured: the largest
similarity of unrelated real pieces fell from 0.71 to 0.57 while copies stayed at 0.99). The square of a
dot product is a dot product of degree-2 features (``x_i x_j``, 78 of them), so the whole slide is one
batched convolution over the stacked training chromagrams (cost proportional to training frames x window
frames x shifts x 78, no Python loop over clips).

Thresholds (defaults; documented in docs/evaluate.md with the measurements behind them):

* token copy: flagged at >= 2.0 s of identical frames (100 frames x 4 codebooks = 400 tokens of 2048
  values cannot coincide by chance; only memorised material produces that);
* melodic copy: flagged when a 5 s window has similarity >= 0.7 with a training clip (measured on
  synthesized songs and the real pieces of realmusic-dev: copies 0.99, copies transposed by resampling
  (tempo changed by 6% too) 0.75, unrelated pieces at most 0.57 (real) and 0.63 (synthesized songs that
  share one chord progression)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from musiclit.model.chroma import chroma as chromagram

TOKEN_FLAG_SECONDS = 2.0
MELODY_FLAG_SIMILARITY = 0.7

_MASK64 = (1 << 64) - 1
# fixed odd multipliers (golden-ratio based) so hashes are stable across runs and machines
_FRAME_MULT = np.uint64(0x9E3779B97F4A7C15)
_NGRAM_MULT = np.uint64(0xC2B2AE3D27D4EB4F)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the 64 output bits (uint64 arrays wrap mod 2^64)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def frame_hashes(codes: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each frame of (K, T) codes, over all K codebooks together: (T,) uint64."""
    codes = np.asarray(codes)
    h = np.zeros(codes.shape[1], dtype=np.uint64)
    for k in range(codes.shape[0]):
        h = _mix64(h * _FRAME_MULT + codes[k].astype(np.uint64) + np.uint64(k + 1))
    return h


def ngram_hashes(codes: np.ndarray, n: int) -> np.ndarray:
    """Hash of every run of ``n`` consecutive frames of (K, T) codes: (T - n + 1,) uint64 (empty if T < n)."""
    f = frame_hashes(codes)
    count = f.shape[0] - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(count, dtype=np.uint64)
    for i in range(n):
        h = h * _NGRAM_MULT + f[i : i + count]
    return _mix64(h)


@dataclass
class TokenCopy:
    """The longest run of codec frames a generated clip shares with one training clip.

    Attributes:
        query: Name of the generated clip.
        source: Name of the training clip (None: nothing shared).
        frames: Length of the run in frames (0 when none).
        seconds: The same in seconds.
        source_offset_s: Where the run starts in the training clip.
        query_offset_s: Where it starts in the generated clip.
        flagged: ``seconds >= threshold``.
        threshold_s: The threshold used.
    """

    query: str
    source: str | None
    frames: int
    seconds: float
    source_offset_s: float
    query_offset_s: float
    flagged: bool
    threshold_s: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


class TokenIndex:
    """Hashed n-grams of codec frames over training clips; finds the longest exact run a clip shares.

    Args:
        ngram: Frames per n-gram (5 = 0.1 s at 50 Hz): the shortest run that can be found.
        frame_rate: Codec frames per second (for seconds in the results).
        special_token: Codes >= this value are padding/special and never indexed.
        max_clips: An n-gram found in more than this many training clips is generic and dropped
            (default: max(4, 1% of the clips)).
        flag_seconds: Runs at least this long are flagged as copies.
    """

    def __init__(
        self,
        ngram: int = 5,
        frame_rate: float = 50.0,
        special_token: int = 2048,
        max_clips: int | None = None,
        flag_seconds: float = TOKEN_FLAG_SECONDS,
    ) -> None:
        if ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {ngram}")
        self.ngram = ngram
        self.frame_rate = float(frame_rate)
        self.special_token = special_token
        self.max_clips = max_clips
        self.flag_seconds = flag_seconds
        self.names: list[str] = []
        self.codes: list[np.ndarray] = []
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []
        self._keys: np.ndarray | None = None
        self._vals: np.ndarray | None = None
        self.dropped_generic = 0

    def __len__(self) -> int:
        return len(self.names)

    def add(self, name: str, codes: np.ndarray) -> None:
        """Index a training clip's (K, T) codes (kept by reference: a memory-mapped cache entry stays on disk)."""
        codes = np.asarray(codes)
        if codes.ndim != 2:
            raise ValueError(f"{name}: expected (K, T) codes, got shape {codes.shape}")
        if self.codes and codes.shape[0] != self.codes[0].shape[0]:
            raise ValueError(f"{name}: {codes.shape[0]} codebooks, the index has {self.codes[0].shape[0]}")
        clip = len(self.names)
        self.names.append(name)
        self.codes.append(codes)
        hashes = ngram_hashes(codes, self.ngram)
        if hashes.size:
            special = (codes >= self.special_token).any(0)
            # an n-gram is valid when none of its frames is special
            bad = np.convolve(special.astype(np.int32), np.ones(self.ngram, dtype=np.int32), mode="valid") > 0
            pos = np.nonzero(~bad)[0]
            self._parts.append((hashes[pos], (np.int64(clip) << np.int64(32)) | pos.astype(np.int64)))
        self._keys = None

    def _build(self) -> None:
        if self._keys is not None:
            return
        if self._parts:
            keys = np.concatenate([p[0] for p in self._parts])
            vals = np.concatenate([p[1] for p in self._parts])
        else:
            keys, vals = np.zeros(0, np.uint64), np.zeros(0, np.int64)
        order = np.lexsort((vals, keys))
        keys, vals = keys[order], vals[order]
        limit = self.max_clips if self.max_clips is not None else max(4, int(np.ceil(0.01 * len(self.names))))
        if keys.size:
            # distinct clips per key: count (key, clip) pairs that start a new clip within a key
            clips = vals >> np.int64(32)
            new_key = np.r_[True, keys[1:] != keys[:-1]]
            new_pair = new_key | np.r_[True, clips[1:] != clips[:-1]]
            group = np.cumsum(new_key) - 1
            per_key = np.bincount(group, weights=new_pair.astype(np.float64))
            keep = per_key[group] <= limit
            self.dropped_generic = int((~keep).sum())
            keys, vals = keys[keep], vals[keep]
        self._keys, self._vals = keys, vals
        self._parts = [(keys, vals)] if keys.size else []

    def longest_match(self, codes: np.ndarray, name: str = "") -> TokenCopy:
        """The longest run of frames of (K, T) ``codes`` that also appears, identical, in one training clip."""
        self._build()
        assert self._keys is not None and self._vals is not None
        codes = np.asarray(codes)
        none = TokenCopy(name, None, 0, 0.0, 0.0, 0.0, False, self.flag_seconds)
        hashes = ngram_hashes(codes, self.ngram)
        if not hashes.size or not self._keys.size:
            return none
        lo = np.searchsorted(self._keys, hashes, side="left")
        hi = np.searchsorted(self._keys, hashes, side="right")
        counts = hi - lo
        if not counts.any():
            return none
        qpos = np.repeat(np.arange(hashes.size), counts)
        starts = np.repeat(lo, counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        vals = self._vals[starts + within]
        clip = (vals >> np.int64(32)).astype(np.int64)
        tpos = (vals & np.int64(0xFFFFFFFF)).astype(np.int64)
        # candidate alignments: (clip, diagonal = training position - query position), most seeds first
        pairs, seeds = np.unique(np.stack([clip, tpos - qpos]), axis=1, return_counts=True)
        best = none
        for c, diag in pairs[:, np.argsort(-seeds, kind="stable")[:256]].T:
            frames, q0 = self._run_on_diagonal(codes, int(c), int(diag))
            if frames > best.frames:
                seconds = frames / self.frame_rate
                best = TokenCopy(name, self.names[c], frames, seconds, float((q0 + diag) / self.frame_rate),
                                 q0 / self.frame_rate, seconds >= self.flag_seconds, self.flag_seconds)  # fmt: skip
        return best

    def _run_on_diagonal(self, codes: np.ndarray, clip: int, diag: int) -> tuple[int, int]:
        """Longest run of identical frames between query frame q and training frame q + diag: (length, q start)."""
        train = self.codes[clip]
        q_lo, q_hi = max(0, -diag), min(codes.shape[1], train.shape[1] - diag)
        if q_hi <= q_lo:
            return 0, 0
        a = codes[:, q_lo:q_hi]
        b = np.asarray(train[:, q_lo + diag : q_hi + diag])
        equal = (a == b).all(0) & (b < self.special_token).all(0)
        if not equal.any():
            return 0, 0
        padded = np.r_[False, equal, False]
        edges = np.flatnonzero(padded[1:] != padded[:-1])
        run_starts, run_ends = edges[::2], edges[1::2]
        i = int(np.argmax(run_ends - run_starts))
        return int(run_ends[i] - run_starts[i]), q_lo + int(run_starts[i])


# ---------------------------------------------------------------------------------------------- chroma


_PAIRS = [(i, j) for i in range(12) for j in range(i, 12)]
_PAIR_INDEX = {pair: n for n, pair in enumerate(_PAIRS)}


def _pair_permutation(shift: int) -> list[int]:
    """Where pair feature n goes when the pitch classes are rolled up by ``shift``."""
    out = []
    for i, j in _PAIRS:
        a, b = (i + shift) % 12, (j + shift) % 12
        out.append(_PAIR_INDEX[(min(a, b), max(a, b))])
    return out


def pair_features(frames: torch.Tensor) -> torch.Tensor:
    """Degree-2 features (..., 78) of (..., 12) vectors with ``pair(x) . pair(y) = (x . y)^2``."""
    i = torch.tensor([p[0] for p in _PAIRS])
    j = torch.tensor([p[1] for p in _PAIRS])
    weight = torch.where(i == j, 1.0, 2.0**0.5).to(frames.dtype)
    return frames[..., i] * frames[..., j] * weight


def normalized_chroma(
    audio: np.ndarray | torch.Tensor, sample_rate: int, n_fft: int, hop_length: int, silence_db: float = -50.0
) -> np.ndarray:
    """(frames, 12) float32 chroma of mono audio, each frame centred and L2-normalised; quiet frames zeroed.

    A frame is quiet when its chroma energy is ``silence_db`` below the loudest frame of the clip (or the
    clip is digital silence).
    """
    x = torch.as_tensor(np.asarray(audio, dtype=np.float32) if not torch.is_tensor(audio) else audio).float()
    if x.ndim == 2:
        x = x.mean(0)
    raw = chromagram(x, sample_rate, n_fft=n_fft, hop_length=hop_length, norm=None).double()
    energy = raw.sum(-1)
    centred = raw - raw.mean(-1, keepdim=True)
    norms = centred.norm(dim=-1, keepdim=True)
    out = centred / norms.clamp(min=1e-12)
    peak = float(energy.max()) if energy.numel() else 0.0
    quiet = (energy <= peak * 10 ** (silence_db / 10)) | (energy <= 1e-10)
    out[quiet] = 0.0
    return out.float().numpy()


@dataclass
class MelodyCopy:
    """The best melodic match of a generated clip in the training set.

    Attributes:
        query: Name of the generated clip.
        source: Training clip of the best-matching window (None when the index is empty).
        similarity: Mean squared per-frame chroma correlation of that window at its best alignment (0..1).
        source_offset_s: Where the matched window starts in the training clip.
        query_offset_s: Where the window starts in the generated clip.
        transpose: Semitones the generated window is shifted up from the source (0..11; 0 without key invariance).
        matched_seconds: Length of the stretch of consecutive windows that agree on this match (source,
            alignment and transposition) at or above the threshold (0 when not flagged).
        flagged: ``similarity >= threshold`` over a full window.
        threshold: The threshold used.
        nearest: The most similar training clips, ``[(name, similarity), ...]``, best first.
        window_s: Length of the compared windows. A clip shorter than the index's window is compared whole;
            its similarity is reported but never flagged (short windows match by chance far more often: the
            threshold was set for full windows).
        full_window: Whether the windows had the full length.
    """

    query: str
    source: str | None
    similarity: float
    source_offset_s: float
    query_offset_s: float
    transpose: int
    matched_seconds: float
    flagged: bool
    threshold: float
    nearest: list[tuple[str, float]] = field(default_factory=list)
    window_s: float = 0.0
    full_window: bool = True

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["nearest"] = [[n, s] for n, s in self.nearest]
        return d


class ChromaIndex:
    """Chromagrams of training clips; finds each generated clip's closest melodic match.

    Args:
        sample_rate: Sample rate of the audio given to :meth:`add` and :meth:`match`.
        n_fft: FFT size of the chromagram (8192 at 32 kHz: 0.26 s).
        hop_length: Samples between chroma frames (4096 at 32 kHz: 7.8 frames per second).
        window_seconds: Length of the compared windows (copies shorter than this are diluted).
        key_invariant: Also match transposed copies (max over the 12 pitch shifts).
        threshold: Window similarity at or above which a clip is flagged.
    """

    def __init__(
        self,
        sample_rate: int = 32000,
        n_fft: int = 8192,
        hop_length: int = 4096,
        window_seconds: float = 5.0,
        key_invariant: bool = True,
        threshold: float = MELODY_FLAG_SIMILARITY,
    ) -> None:
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.window = max(2, int(round(window_seconds * sample_rate / hop_length)))
        self.key_invariant = key_invariant
        self.threshold = threshold
        self.names: list[str] = []
        self.chromas: list[np.ndarray] = []
        self._stack: torch.Tensor | None = None

    @property
    def frame_rate(self) -> float:
        """Chroma frames per second."""
        return self.sample_rate / self.hop_length

    def __len__(self) -> int:
        return len(self.names)

    def features(self, audio: np.ndarray | torch.Tensor) -> np.ndarray:
        """Normalised (frames, 12) chroma of mono (S,) or (C, S) audio at the index's sample rate."""
        return normalized_chroma(audio, self.sample_rate, self.n_fft, self.hop_length)

    def add(self, name: str, audio: np.ndarray | torch.Tensor) -> None:
        """Add a training clip's audio."""
        self.add_features(name, self.features(audio))

    def add_features(self, name: str, feats: np.ndarray) -> None:
        """Add a training clip's precomputed :meth:`features`."""
        self.names.append(name)
        self.chromas.append(np.asarray(feats, dtype=np.float32))
        self._stack = None

    def _stacked(self) -> torch.Tensor:
        if self._stack is None:
            length = max(max(c.shape[0] for c in self.chromas), self.window)
            stack = torch.zeros((len(self.chromas), len(_PAIRS), length))
            for i, c in enumerate(self.chromas):
                stack[i, :, : c.shape[0]] = pair_features(torch.from_numpy(c)).T
            self._stack = stack
        return self._stack

    def match(self, audio: np.ndarray | torch.Tensor, name: str = "", nearest: int = 3) -> MelodyCopy:
        """The best-matching training window for each window of the clip, summarised (see :class:`MelodyCopy`)."""
        return self.match_features(self.features(audio), name, nearest)

    def match_features(self, feats: np.ndarray, name: str = "", nearest: int = 3, chunk: int = 256) -> MelodyCopy:
        """:meth:`match` on precomputed :meth:`features`."""
        if not self.names:
            return MelodyCopy(name, None, 0.0, 0.0, 0.0, 0, 0.0, False, self.threshold, [], 0.0, False)
        q = pair_features(torch.from_numpy(np.asarray(feats, dtype=np.float32))).T  # (78, Fq)
        width = min(self.window, q.shape[1])
        hop = max(1, width // 2)
        starts = list(range(0, max(1, q.shape[1] - width + 1), hop))
        if starts[-1] + width < q.shape[1]:
            starts.append(q.shape[1] - width)
        windows = torch.stack([q[:, s : s + width] for s in starts])  # (W, 78, width)
        shifts = list(range(12)) if self.key_invariant else [0]
        # score(p) = mean_t (q_t . roll(r_t, p))^2 = mean_t pair(roll(q_t, -p)) . pair(r_t)
        weight = torch.stack([windows[:, _pair_permutation(p)] for p in shifts], dim=1)  # (W, P, 78, width)
        weight = weight.reshape(-1, len(_PAIRS), width) / width
        stack = self._stacked()
        best_val = torch.full((len(starts),), -2.0)
        best_clip = torch.zeros(len(starts), dtype=torch.long)
        best_shift = torch.zeros(len(starts), dtype=torch.long)
        best_lag = torch.zeros(len(starts), dtype=torch.long)
        per_clip = torch.full((stack.shape[0],), -2.0)
        with torch.inference_mode():
            for c0 in range(0, stack.shape[0], chunk):
                part = stack[c0 : c0 + chunk]
                scores = torch.nn.functional.conv1d(part, weight)  # (N, W * P, lags)
                scores = scores.reshape(part.shape[0], len(starts), len(shifts), -1)
                flat = scores.permute(1, 0, 2, 3).reshape(len(starts), -1)  # (W, N * P * lags)
                val, idx = flat.max(dim=1)
                n_lags = scores.shape[-1]
                better = val > best_val
                best_val = torch.where(better, val, best_val)
                best_clip = torch.where(better, c0 + idx // (len(shifts) * n_lags), best_clip)
                best_shift = torch.where(better, (idx // n_lags) % len(shifts), best_shift)
                best_lag = torch.where(better, idx % n_lags, best_lag)
                per_clip[c0 : c0 + part.shape[0]] = scores.amax(dim=(1, 2, 3))
        w = int(best_val.argmax())
        sim = float(best_val[w])
        clip, shift, lag = int(best_clip[w]), int(shifts[int(best_shift[w])]), int(best_lag[w])
        full = width >= self.window
        flagged = sim >= self.threshold and full
        matched = 0.0
        if flagged:
            # consecutive windows agreeing on source, transposition and alignment (lag - start within 1 frame)
            agree = [
                bool(best_val[i] >= self.threshold and int(best_clip[i]) == clip
                     and shifts[int(best_shift[i])] == shift
                     and abs((int(best_lag[i]) - starts[i]) - (lag - starts[w])) <= 1)
                for i in range(len(starts))
            ]  # fmt: skip
            lo = hi = w
            while lo > 0 and agree[lo - 1]:
                lo -= 1
            while hi < len(starts) - 1 and agree[hi + 1]:
                hi += 1
            matched = (starts[hi] + width - starts[lo]) / self.frame_rate
        order = torch.argsort(per_clip, descending=True)[:nearest]
        return MelodyCopy(
            query=name,
            source=self.names[clip],
            similarity=sim,
            source_offset_s=lag / self.frame_rate,
            query_offset_s=starts[w] / self.frame_rate,
            transpose=shift,
            matched_seconds=matched,
            flagged=flagged,
            threshold=self.threshold,
            nearest=[(self.names[int(i)], float(per_clip[int(i)])) for i in order],
            window_s=width / self.frame_rate,
            full_window=full,
        )


def token_index_from_cache(
    cache: Any, keys: Sequence[str], names: Sequence[str], frame_rate: float, special_token: int = 2048, **kwargs: Any
) -> TokenIndex:
    """A :class:`TokenIndex` over clips of the token cache (``cache.get(key)`` -> (K, T), memory-mapped)."""
    index = TokenIndex(frame_rate=frame_rate, special_token=special_token, **kwargs)
    for key, name in zip(keys, names, strict=True):
        index.add(name, cache.get(key))
    return index
