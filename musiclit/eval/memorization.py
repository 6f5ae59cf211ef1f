"""The memorisation check of a run: training material indexed once, generated clips checked against it.

:class:`TrainingIndex` holds both detectors of :mod:`musiclit.eval.copying` over the TRAINING split of a
dataset: the token index over the clips' cached codes and the chroma index over their audio. A generated
clip is checked with its exact codes when they were saved (``<stem>.codes.npy`` beside the WAV; musiclit's
samples save them), else its audio is re-encoded with the codec (a lower bound for the token check: the
codec does not give back exactly the codes a clip was decoded from).

Planted controls: :meth:`TrainingIndex.planted_controls` makes a token copy (a training clip's codes, cut
and shifted in time) and a melodic copy (its audio, shifted off the frame grid) and checks that both are
flagged with the right source and offset. They run with every evaluation, so a broken detector cannot
report "no copies" unnoticed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from musiclit.eval.copying import ChromaIndex, MelodyCopy, TokenCopy, TokenIndex


@dataclass
class CopyResult:
    """Both checks of one generated clip.

    Attributes:
        name: The clip (a file name relative to the checked folder, or a label).
        group: What it belongs to ("base", "tuned", "step 120", "planted", ...).
        prompt: Its prompt, when known.
        tokens: The exact-copy result (None when no codes could be had).
        melody: The melodic-copy result (None when no audio).
        codes_exact: True when the token check used the saved codes, False when re-encoded audio.
    """

    name: str
    group: str
    prompt: str | None
    tokens: TokenCopy | None
    melody: MelodyCopy | None
    codes_exact: bool = True

    @property
    def flagged(self) -> bool:
        """Either check flagged the clip."""
        return bool((self.tokens and self.tokens.flagged) or (self.melody and self.melody.flagged))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "name": self.name,
            "group": self.group,
            "prompt": self.prompt,
            "flagged": self.flagged,
            "codes_exact": self.codes_exact,
            "tokens": self.tokens.as_dict() if self.tokens else None,
            "melody": self.melody.as_dict() if self.melody else None,
        }


class TrainingIndex:
    """Token and chroma indices over the training clips of a dataset.

    Args:
        root: The dataset folder.
        paths: Training clips (relative to ``root``); also their names in the results.
        codes: Each clip's (K, T) codes (memory-mapped cache entries are fine).
        read_audio: Reads a clip (relative path) as (C, S) float audio at ``sample_rate``.
        sample_rate: Audio rate; frame_rate: codec frames per second.
        special_token: The codec's padding/special id.
        token_flag_seconds, melody_threshold: Flag thresholds (defaults in :mod:`musiclit.eval.copying`).
        key_invariant: Melodic check over the 12 transpositions.
        progress: Wraps an iterable with a progress bar (or returns it unchanged).
    """

    def __init__(
        self,
        root: Path,
        paths: Sequence[str],
        codes: Sequence[np.ndarray],
        read_audio: Callable[[str], np.ndarray],
        sample_rate: int,
        frame_rate: float,
        special_token: int = 2048,
        token_flag_seconds: float | None = None,
        melody_threshold: float | None = None,
        key_invariant: bool = True,
        progress: Callable[[Any], Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self.paths = list(paths)
        self.read_audio = read_audio
        self.sample_rate = sample_rate
        self.frame_rate = frame_rate
        kw: dict[str, Any] = {} if token_flag_seconds is None else {"flag_seconds": token_flag_seconds}
        self.tokens = TokenIndex(frame_rate=frame_rate, special_token=special_token, **kw)
        ckw: dict[str, Any] = {} if melody_threshold is None else {"threshold": melody_threshold}
        self.chroma = ChromaIndex(sample_rate=sample_rate, key_invariant=key_invariant, **ckw)
        wrap = progress or (lambda it: it)
        for path, clip_codes in wrap(list(zip(self.paths, codes, strict=True))):
            self.tokens.add(path, clip_codes)
            self.chroma.add(path, read_audio(path))

    def check(
        self,
        name: str,
        group: str,
        codes: np.ndarray | None,
        audio: np.ndarray | None,
        prompt: str | None = None,
        codes_exact: bool = True,
    ) -> CopyResult:
        """Check one generated clip: (K, T) codes and/or (C, S) audio at the index's sample rate."""
        tokens = self.tokens.longest_match(np.asarray(codes), name) if codes is not None else None
        melody = self.chroma.match(audio, name) if audio is not None else None
        return CopyResult(name, group, prompt, tokens, melody, codes_exact)

    def planted_controls(self, seed: int = 0, seconds: float = 8.0, filler: np.ndarray | None = None) -> list[dict]:
        """Plant a token copy and a melodic copy of a training clip; return each check with its verdict.

        The token copy is ``seconds`` of a clip's codes (at least the flag threshold plus 1 s; the clip is
        drawn among those long enough) from a quarter of its length, put 1 s into a generated-looking clip
        (``filler`` codes around it, else codes of another training clip). The melodic copy is the clip's audio
        (at least one melodic window plus 1 s) from 37% of its length, put 0.73 s (off the codec and chroma
        frame grids) into silence. A control that no training clip is long enough for is reported as skipped.
        """
        rng = np.random.default_rng(seed)
        out: list[dict[str, Any]] = []
        if not self.paths:
            return out
        fr = self.frame_rate
        tok_frames = int(round(max(seconds, self.tokens.flag_seconds + 1.0) * fr))
        lengths = [np.asarray(c).shape[1] for c in self.tokens.codes]
        long_enough = [i for i, n in enumerate(lengths) if n >= tok_frames]
        if not long_enough:
            out.append(
                {"kind": "token", "skipped": f"no training clip is {tok_frames / fr:.1f} s long", "passed": None}
            )
        else:
            src = int(long_enough[int(rng.integers(len(long_enough)))])
            codes = np.asarray(self.tokens.codes[src])
            start = (codes.shape[1] - tok_frames) // 4
            lead = int(round(fr))
            pad = filler if filler is not None else np.asarray(self.tokens.codes[(src + 1) % len(self.paths)])
            pad = np.asarray(pad)[:, : lead * 2]
            if pad.shape[1] < lead * 2:
                pad = np.concatenate([pad, np.zeros((codes.shape[0], lead * 2 - pad.shape[1]), pad.dtype)], axis=1)
            planted = np.concatenate([pad[:, :lead], codes[:, start : start + tok_frames], pad[:, lead:]], axis=1)
            tok = self.tokens.longest_match(planted, f"planted token copy of {self.paths[src]}")
            passed = (
                tok.flagged
                and tok.source == self.paths[src]
                and abs(tok.source_offset_s - start / fr) < 1e-6
                and abs(tok.query_offset_s - lead / fr) < 1e-6
            )
            out.append({
                "kind": "token", "source": self.paths[src], "expected_source_offset_s": start / fr,
                "expected_query_offset_s": lead / fr, "passed": bool(passed), "result": tok.as_dict(),
            })  # fmt: skip
        window_s = self.chroma.window / self.chroma.frame_rate
        a_len = int(max(seconds, window_s + 1.0) * self.sample_rate)
        audio_len = [int(n / fr * self.sample_rate) for n in lengths]  # clip lengths from their frame counts
        long_enough = [i for i, n in enumerate(audio_len) if n >= a_len]
        if not long_enough:
            out.append({"kind": "melody", "skipped": f"no training clip is {a_len / self.sample_rate:.1f} s long",
                        "passed": None})  # fmt: skip
            return out
        src = int(long_enough[int(rng.integers(len(long_enough)))])
        audio = self.read_audio(self.paths[src]).mean(0)
        a_len = min(a_len, audio.shape[0])
        a_start = int(0.37 * (audio.shape[0] - a_len))
        shift = int(0.73 * self.sample_rate)
        query = np.concatenate([np.zeros(shift, np.float32), audio[a_start : a_start + a_len]])
        mel = self.chroma.match(query, f"planted melodic copy of {self.paths[src]}")
        expected = (a_start - shift) / self.sample_rate  # source time minus query time
        passed = (
            mel.flagged
            and mel.source == self.paths[src]
            and mel.transpose == 0
            and abs((mel.source_offset_s - mel.query_offset_s) - expected) <= 1.5 / self.chroma.frame_rate
        )
        out.append({"kind": "melody", "source": self.paths[src], "expected_offset_difference_s": expected,
                    "passed": bool(passed), "result": mel.as_dict()})  # fmt: skip
        return out


def read_sample_folder(folder: Path) -> list[tuple[Path, str | None]]:
    """Audio files of a sample folder (recursively) with their prompt (from the JSON beside them, if any)."""
    out = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in (".wav", ".flac", ".ogg", ".mp3") or path.name.startswith("."):
            continue
        prompt = None
        meta = path.with_suffix(".json")
        if meta.is_file():
            try:
                prompt = json.loads(meta.read_text(encoding="utf-8")).get("prompt")
            except (OSError, json.JSONDecodeError):
                prompt = None
        out.append((path, prompt))
    return out


def check_folder(
    index: TrainingIndex,
    folder: Path,
    group: str,
    read_audio: Callable[[Path], np.ndarray],
    encode: Callable[[np.ndarray], np.ndarray] | None = None,
    relative_to: Path | None = None,
) -> list[CopyResult]:
    """Check every audio file of ``folder``: saved ``<stem>.codes.npy`` when present, else ``encode(audio)``."""
    results = []
    for path, prompt in read_sample_folder(folder):
        audio = read_audio(path)
        saved = path.with_name(path.name[: -len(path.suffix)] + ".codes.npy")
        if saved.is_file():
            codes, exact = np.load(saved), True
        elif encode is not None:
            codes, exact = encode(audio), False
        else:
            codes, exact = None, False
        name = str(path.relative_to(relative_to)) if relative_to else path.name
        results.append(index.check(name, group, codes, audio, prompt, exact))
    return results


def least_copying_step(
    by_step: Sequence[dict[str, Any]], val_loss: dict[int, float], tolerance: float = 0.05
) -> dict[str, Any] | None:
    """Among steps whose validation loss is within ``tolerance`` nats of the best, the one that copies least.

    Args:
        by_step: Rows ``{"step": int, "max_token_seconds": float, "max_melody_similarity": float | None, ...}``
            (None: no sample was as long as the melodic window).
        val_loss: Validation loss by step (the loss at a row's step is the latest logged at or before it).
        tolerance: Nats above the best validation loss still counted as "at the best loss".

    Returns:
        The chosen row with ``val_loss`` added, or None when no row has a validation loss.
    """
    if not val_loss:
        return None
    logged = sorted(val_loss)
    rows = []
    for row in by_step:
        before = [s for s in logged if s <= row["step"]]
        if before:
            rows.append({**row, "val_loss": val_loss[before[-1]]})
    if not rows:
        return None
    best = min(r["val_loss"] for r in rows)
    near = [r for r in rows if r["val_loss"] <= best + tolerance]
    return min(near, key=lambda r: (r["max_token_seconds"], r["max_melody_similarity"] or 0.0, r["val_loss"]))


def check_copying(
    target: Path,
    data_dir: Path | None = None,
    model: str | None = None,
    init_seed: int | None = None,
    key_invariant: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``check-copying``: every generated clip of a run (or of a folder) against the training clips.

    Args:
        target: A run folder (its ``eval/samples`` and in-training ``samples``) or any folder of audio
            files (searched recursively; a ``<stem>.codes.npy`` beside a file gives its exact codes).
        data_dir: The dataset (default: the run's ``data.data_dir``).
        model: The model whose codec made the tokens (default: the run's ``model.pretrained``, else the
            ``model`` named by the first sample JSON of the folder).
        init_seed: Random-init seed of a config-file model (default: the run's, else 0).
        key_invariant: Match transposed melodies too.
        progress: Progress bars.
        log: One-line messages.

    Returns:
        ``{"groups": {group: [CopyResult dicts]}, "flagged": n, "checked": n, ...}``.
    """
    from tqdm import tqdm

    from musiclit.data.audio import read_audio
    from musiclit.data.cache import TokenCache, cached_keys, default_cache_root
    from musiclit.data.manifest import load_dataset_entries
    from musiclit.eval.run import RunError, find_run_dir, read_config, sample_steps
    from musiclit.model.codec import CodecTokenizer
    from musiclit.model.finetune import _resolve_source
    from musiclit.model.musicgen import ModelLoadError, load_musicgen

    target = Path(target).expanduser().resolve()
    if not target.is_dir():
        raise RunError(f"{target}: not a folder")
    run = find_run_dir(target)
    run = run if run == target else None
    config = read_config(run) if run is not None else {}
    data_cfg, model_cfg = config.get("data") or {}, config.get("model") or {}
    if data_dir is None and data_cfg.get("data_dir"):
        found = [
            b / data_cfg["data_dir"] for b in (Path.cwd(), *target.parents[:3]) if (b / data_cfg["data_dir"]).is_dir()
        ]
        data_dir = found[0].resolve() if found else None
    if data_dir is None or not Path(data_dir).is_dir():
        raise RunError(f"{target}: no dataset to compare with; give --data DIR (the dataset the model was trained on)")
    data_dir = Path(data_dir)
    if model is None:
        model = model_cfg.get("pretrained")
        if init_seed is None and model_cfg.get("init_seed") is not None:
            init_seed = int(model_cfg["init_seed"])
    if model is None:
        for meta in sorted(target.rglob("*.json")):
            try:
                model = json.loads(meta.read_text(encoding="utf-8")).get("model")
            except (OSError, json.JSONDecodeError, AttributeError):
                continue
            if model:
                break
    if model is None:
        raise RunError(f"{target}: cannot tell which model made these clips; give --model (its codec is needed)")
    source = _resolve_source(str(model), [target, *target.parents[:3]])
    try:
        loaded = load_musicgen(source, init_seed=init_seed or 0)
    except ModelLoadError as err:
        raise RunError(f"--model {model}: {err}") from None
    codec = loaded.model.audio_encoder.eval()
    tokenizer = CodecTokenizer.from_codec(
        codec, loaded.audio_channels, loaded.frame_rate, loaded.num_codebooks, loaded.pad_token_id
    )
    valid_fraction = 0.1 if data_cfg.get("valid_fraction") is None else float(data_cfg["valid_fraction"])
    split_seed = 0 if data_cfg.get("split_seed") is None else int(data_cfg["split_seed"])
    entries = load_dataset_entries(data_dir, valid_fraction, split_seed)
    train = [e for e in entries if e.split == "train"]
    cache = TokenCache(data_cfg.get("cache_dir") or default_cache_root(data_dir), tokenizer.id)
    keys = cached_keys(data_dir, [e.path for e in train], cache, tokenizer, progress=progress)
    sr = loaded.sample_rate
    log(f"indexing {len(train)} training clips of {data_dir}")
    index = TrainingIndex(
        data_dir, [e.path for e in train], [cache.get(k) for k in keys], lambda rel: read_audio(data_dir / rel, sr, 1),
        sr, loaded.frame_rate, loaded.pad_token_id, key_invariant=key_invariant,
        progress=lambda it: tqdm(it, desc="index", disable=not progress, leave=False),
    )  # fmt: skip
    if run is not None:
        folders = [("eval base", run / "eval" / "samples" / "base"), ("eval tuned", run / "eval" / "samples" / "tuned")]
        folders = [(g, f) for g, f in folders if f.is_dir()] + sample_steps(run)
    else:
        folders = [(target.name, target)]
    groups: dict[str, list[dict[str, Any]]] = {}
    for group, folder in folders:
        log(f"checking {folder}")
        results = check_folder(
            index, folder, group, lambda p: read_audio(p, sr, 1), tokenizer.encode, relative_to=target
        )
        groups[group] = [r.as_dict() for r in results]
    checked = sum(len(v) for v in groups.values())
    return {
        "target": str(target),
        "data_dir": str(data_dir),
        "training_clips": len(train),
        "token_flag_seconds": index.tokens.flag_seconds,
        "melody_threshold": index.chroma.threshold,
        "planted": index.planted_controls(),
        "groups": groups,
        "checked": checked,
        "flagged": sum(r["flagged"] for v in groups.values() for r in v),
    }


def control_verdict(control: dict[str, Any]) -> str:
    """One line about a planted control: found, NOT FOUND, or skipped (and why)."""
    if control.get("skipped"):
        return f"planted {control['kind']} copy: skipped ({control['skipped']})"
    verdict = "found at the right place" if control["passed"] else "NOT FOUND (the detector is broken)"
    return f"planted {control['kind']} copy of {control['source']}: {verdict}"


def closest_material(row: dict[str, Any]) -> str:
    """Where a checked clip's closest training material is, for a table row: the place of a flagged token
    run or melody (with its transposition), else the nearest clip."""
    tok, mel = row.get("tokens") or {}, row.get("melody") or {}
    if tok.get("flagged"):
        return f"{tok['source']} @ {tok['source_offset_s']:.2f} s (same tokens)"
    if mel.get("flagged"):
        return f"{mel['source']} @ {mel['source_offset_s']:.2f} s, +{mel['transpose']} st (melody)"
    return mel.get("source") or tok.get("source") or "-"
