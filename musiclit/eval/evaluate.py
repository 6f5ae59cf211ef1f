"""``evaluate``: did the fine-tune work, and does it copy? Everything from a run folder, offline.

On the VALIDATION split of the run's dataset (songs never trained on; the split is by song):

1. **Likelihood** (:mod:`musiclit.eval.likelihood`): per-codebook cross-entropy of the base model (adapter
   scale 0), scale 0.5 and the fine-tune (scale 1) on the same crops and captions; the gain in nats with
   a bootstrap interval over clips; the mean KL between base and tuned next-token distributions.
2. **Samples**: the validation captions as prompts, fixed seeds, base and tuned with the same seeds
   (``<run>/eval/samples/{base,tuned}``: WAV, JSON that regenerates it, codes, spectrogram PNG).
3. **FAD / KAD** (:mod:`musiclit.eval.metrics`) of base and tuned samples against the validation audio, on
   the model's own EnCodec latents (:mod:`musiclit.eval.embeddings`), next to the distance between
   training and validation audio (what two sets of real music of this dataset score).
4. **Memorisation** (:mod:`musiclit.eval.memorization`): every sample (and every in-training sample of the
   run) against the TRAINING clips, exact token runs and melodic similarity; planted copies as controls.

Results go to ``<run>/eval/eval.json`` (and to the run's TensorBoard, and the loggers of ``fit`` when the
evaluation runs at its end), then the report is rebuilt.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from musiclit.eval.run import RunError, RunInfo, read_metrics, sample_steps
from musiclit.eval.settings import EvalSettings, auto_threads


class ScaledModels:
    """The model at each adapter scale: one LoRA model with its strength dialled, or full fine-tunes loaded
    with interpolated weights (one copy per scale; scale 0 is the base itself)."""

    def __init__(self, target: Path, device: str = "auto", model: str | None = None) -> None:
        from musiclit.infer.sampler import Generator
        from musiclit.model.finetune import load_finetune

        self.target, self.device, self.model_override = target, device, model
        ft = load_finetune(model, str(target))
        if ft.kind == "plain":
            raise RunError(f"{target}: a model without an adapter; there is no fine-tune to compare with its base")
        self.kind = ft.kind
        self._gens: dict[float, Any] = {1.0: Generator(ft, device)}

    def generator(self, scale: float) -> Any:
        """The generator that runs at ``scale`` (for LoRA always the same one)."""
        from musiclit.infer.sampler import Generator
        from musiclit.model.finetune import load_finetune

        if self.kind == "lora":
            return self._gens[1.0]
        if scale not in self._gens:
            tuned = self._gens[1.0].finetune
            if scale == 0.0:
                ft = load_finetune(tuned.base_source, None, tuned.init_seed)
            else:
                ft = load_finetune(self.model_override, str(self.target), full_scale=scale)
            self._gens[scale] = Generator(ft, self.device)
        return self._gens[scale]

    def strength(self, scale: float) -> contextlib.AbstractContextManager:
        """A context in which :meth:`generator` (scale) runs at that scale."""
        if self.kind == "lora":
            return self._gens[1.0].adapter_strength(scale)
        return contextlib.nullcontext()

    def params_scale(self, scale: float) -> float:
        """``GenerationParams.adapter_scale`` for a sample at ``scale``."""
        return scale if self.kind == "lora" else self.generator(scale).finetune.full_scale


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, unit="it")


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 3)


def _spread(items: list[Any], count: int) -> list[Any]:
    """``count`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    idx = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in idx]


def run_evaluation(
    info: RunInfo,
    settings: EvalSettings | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Evaluate ``info.target`` on its dataset; write ``eval.json`` and the samples; return the results.

    Args:
        info: What :func:`musiclit.eval.run.resolve_run` returned.
        settings: The options (defaults: :class:`EvalSettings`).
        progress: Show progress bars.
        log: Where one-line progress messages go.
        out_dir: Output folder (default ``<run>/eval``; required for an adapter outside a run).

    Raises:
        RunError: No dataset, no validation split, or nothing to compare.
    """
    import torch

    from musiclit.data.audio import read_audio
    from musiclit.data.cache import TokenCache, cached_keys, default_cache_root
    from musiclit.data.caption import Caption, compose_caption
    from musiclit.data.manifest import load_dataset_entries
    from musiclit.eval.embeddings import code_embeddings, load_embedding_model, model_embeddings
    from musiclit.eval.likelihood import make_crops, score_crops, summarize
    from musiclit.eval.memorization import TrainingIndex, check_folder, least_copying_step
    from musiclit.eval.metrics import audio_distances
    from musiclit.eval.plots import write_spectrogram
    from musiclit.infer.sampler import GenerationParams
    from musiclit.infer.samples import write_samples
    from musiclit.io import atomic_folder, atomic_write_json
    from musiclit.model.codec import CodecTokenizer

    s = settings or EvalSettings()
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    if info.data_dir is None:
        raise RunError(f"{info.target}: no dataset to evaluate on (give --data DIR)")
    out = Path(out_dir) if out_dir is not None else (info.run / "eval" if info.run else None)
    if out is None:
        raise RunError(f"{info.target}: not inside a run folder; give --out DIR for the results")
    scales = sorted({0.0, *[float(x) for x in s.scales]})
    top = scales[-1]

    with _timed(timings, "load_model"):
        log(f"loading {info.target}")
        models = ScaledModels(info.target, s.device)
        gen = models.generator(top)
    threads = auto_threads(s.threads, gen.device.type, int(gen.base.config.decoder.hidden_size))
    if threads is not None:
        torch.set_num_threads(threads)
    data = info.data_dir
    entries = load_dataset_entries(data, info.data_option("valid_fraction", 0.1), info.data_option("split_seed", 0))
    train = [e for e in entries if e.split == "train"]
    valid = [e for e in entries if e.split == "valid"]
    if not valid:
        raise RunError(f"{data}: no validation songs (the evaluation needs held-out songs: data.valid_fraction > 0)")

    def audio_of(rel: str | Path, channels: int | None = None) -> np.ndarray:
        return read_audio(data / rel, gen.sample_rate, channels or gen.audio_channels)

    with _timed(timings, "token_cache"):
        tokenizer = CodecTokenizer.from_codec(
            gen.base.audio_encoder, gen.audio_channels, gen.frame_rate, gen.num_codebooks, gen.special_token
        )
        root = info.data_option("cache_dir", None) or default_cache_root(data)
        cache = TokenCache(root, tokenizer.id)
        keys = cached_keys(data, [e.path for e in train + valid], cache, tokenizer, progress=progress)
        train_keys, valid_keys = keys[: len(train)], keys[len(train) :]
    captions = [compose_caption(Caption.load(e.caption_path(data)), None, None) for e in valid]

    # 1. likelihood
    with _timed(timings, "likelihood"):
        segment = float(info.data_option("segment_duration", 30.0))
        crops = make_crops(
            [cache.get(k) for k in valid_keys], captions, [e.path for e in valid],
            segment_frames=int(round(segment * gen.frame_rate)), special_token=gen.special_token,
            min_frames=int(gen.frame_rate), max_crops_per_clip=s.max_crops_per_clip,
        )  # fmt: skip
        log(f"scoring {crops.codes.shape[0]} validation crops of {segment:g} s at adapter scales {scales}")
        bar = _bar(crops.codes.shape[0], "likelihood", progress)
        lik = score_crops(models, crops, scales, batch_size=s.batch_size, progress=bar.update)
        bar.close()
        likelihood = summarize(lik, n_resamples=s.bootstrap, seed=s.seed)

    # the samples are written into a staging folder that replaces <out>/samples only when everything succeeded
    with atomic_folder(out / "samples", force=True) as staging:
        # 2. samples, base and tuned, same prompts and seeds
        prompts_once = _spread(list(dict.fromkeys(captions)), s.prompts)
        prompts = [p for p in prompts_once for _ in range(s.samples_per_prompt)]
        seeds = [s.seed + i for i in range(len(prompts))]
        results: dict[str, Any] = {}
        sample_files: dict[str, list[dict[str, Any]]] = {}
        with _timed(timings, "samples"):
            for name, scale in (("base", 0.0), ("tuned", top)):
                g = models.generator(scale)
                params = GenerationParams(
                    seconds=s.seconds,
                    guidance_scale=s.guidance_scale,
                    seed=s.seed,
                    adapter_scale=models.params_scale(scale),
                )
                log(f"generating {len(prompts)} {name} samples of {s.seconds:g} s (adapter scale {scale:g})")
                result = g.generate(prompts, params, seeds, batch_size=s.batch_size)
                results[name] = result
                paths = write_samples(g, result, prompts, params, staging / name, save_codes=True)
                for i, path in enumerate(paths):
                    write_spectrogram(path.with_suffix(".png"), result.audio[i].numpy(), result.sample_rate)
                sample_files[name] = [
                    {"wav": f"samples/{name}/{p.name}", "png": f"samples/{name}/{p.with_suffix('.png').name}",
                     "prompt": prompts[i], "seed": seeds[i]}
                    for i, p in enumerate(paths)
                ]  # fmt: skip

        # 3. FAD / KAD on the codec's latents (of codes: the decoder plays no part)
        with _timed(timings, "distances"):
            codec = gen.base.audio_encoder

            def embed(clips: list[Any]) -> np.ndarray:
                return np.concatenate(code_embeddings(codec, clips, gen.frame_rate, s.embedding_window,
                                                      gen.audio_channels, gen.special_token))  # fmt: skip

            reference = embed([cache.get(k) for k in valid_keys])
            distances: dict[str, Any] = {"reference": f"{len(valid)} validation clips", "window_s": s.embedding_window}
            for name, result in results.items():
                distances[name] = audio_distances(reference, embed(list(result.codes)))
            if train:
                floor = _spread(list(train_keys), max(len(valid), min(len(train), 16)))
                distances["train_audio"] = audio_distances(reference, embed([cache.get(k) for k in floor]))
                distances["train_audio"]["clips"] = len(floor)
            # embedding models the user gave, on audio (decoded samples vs the validation files)
            distances["models"] = {}
            for path in s.embedding_models:
                module, rate, label = load_embedding_model(path)
                log(f"embedding with {label} ({path})")
                ref = np.concatenate(model_embeddings(module, rate, [audio_of(e.path) for e in valid], gen.sample_rate))
                rows_m: dict[str, Any] = {"path": str(path)}
                for name, result in results.items():
                    emb = np.concatenate(model_embeddings(module, rate, list(result.audio), result.sample_rate))
                    rows_m[name] = audio_distances(ref, emb)
                if train:
                    floor_audio = [audio_of(e.path) for e in _spread(train, max(len(valid), min(len(train), 16)))]
                    emb = np.concatenate(model_embeddings(module, rate, floor_audio, gen.sample_rate))
                    rows_m["train_audio"] = audio_distances(ref, emb)
                distances["models"][label] = rows_m

        # 4. memorisation
        copying: dict[str, Any] | None = None
        if s.copying and train:
            with _timed(timings, "copying"):
                log(f"indexing {len(train)} training clips (tokens and chroma)")
                index = TrainingIndex(
                    data, [e.path for e in train], [cache.get(k) for k in train_keys],
                    lambda rel: audio_of(rel, 1), gen.sample_rate, gen.frame_rate, gen.special_token,
                    key_invariant=s.key_invariant,
                )  # fmt: skip
                rows = []
                for name, result in results.items():
                    for i, prompt in enumerate(prompts):
                        label = sample_files[name][i]["wav"]
                        rows.append(index.check(label, name, result.codes[i].numpy(), result.audio[i].numpy(), prompt))
                planted = index.planted_controls(
                    seed=s.seed, seconds=s.seconds, filler=results["tuned"].codes[0].numpy()
                )
                by_step = []
                if s.training_samples and info.run is not None:

                    def encode(audio: np.ndarray) -> np.ndarray:
                        return tokenizer.encode(audio)

                    for label, folder in sample_steps(info.run):
                        checked = check_folder(index, folder, label, lambda p: read_audio(p, gen.sample_rate, 1),
                                               encode, relative_to=info.run)  # fmt: skip
                        if not checked:
                            continue
                        by_step.append({
                            "label": label,
                            "step": 0 if label == "base" else int(label.split()[1]),
                            "samples": len(checked),
                            "flagged": sum(r.flagged for r in checked),
                            "max_token_seconds": max((r.tokens.seconds for r in checked if r.tokens), default=0.0),
                            "max_melody_similarity": max((r.melody.similarity for r in checked
                                                          if r.melody and r.melody.full_window), default=None),
                            "results": [r.as_dict() for r in checked],
                        })  # fmt: skip
                val = dict(zip(*read_metrics(info.run).series("val/loss"), strict=True)) if info.run else {}
                choice = least_copying_step([r for r in by_step if r["label"] != "base"], val)
                copying = {
                    "training_clips": len(train),
                    "token_flag_seconds": index.tokens.flag_seconds,
                    "token_ngram_frames": index.tokens.ngram,
                    "melody_threshold": index.chroma.threshold,
                    "melody_window_s": index.chroma.window / index.chroma.frame_rate,
                    "key_invariant": s.key_invariant,
                    "generic_ngrams_dropped": index.tokens.dropped_generic,
                    "samples": [r.as_dict() for r in rows],
                    "planted": planted,
                    "by_step": by_step,
                    "least_copying_step": choice,
                }

    evaluated = {
        "target": str(info.target),
        "kind": models.kind,
        "run": str(info.run) if info.run else None,
        "best": {
            "step": info.best[0],
            "val_loss": info.best[1],
            "checkpoint": str(info.best[2]) if info.best[2] else None,
        }
        if info.best
        else None,
    }
    report: dict[str, Any] = {
        "musiclit_version": __import__("musiclit").__version__,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "evaluated": evaluated,
        "data_dir": str(data),
        "split": {"train_clips": len(train), "valid_clips": len(valid)},
        "settings": asdict(s) | {"scales": scales},
        "likelihood": likelihood,
        "samples": sample_files,
        "distances": distances,
        "copying": copying,
        "timings_s": timings | {"total": round(time.perf_counter() - t_start, 3)},
        "machine": {"device": str(gen.device), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "processor": platform.processor() or platform.machine()},
    }  # fmt: skip
    atomic_write_json(out / "eval.json", report, default=float)
    return report


# ---------------------------------------------------------------------------------------------- text summary


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt_interval(d: dict[str, float]) -> str:
    return f"{d['value']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def format_summary(report: dict[str, Any]) -> str:
    """The text ``evaluate`` prints: CE table, gain and KL, FAD/KAD, the memorisation table, controls."""
    from musiclit.eval.memorization import closest_material, control_verdict

    lines = []
    lik = report["likelihood"]
    scales = lik["scales"]
    names = list(scales)
    k = len(next(iter(scales.values()))["ce_per_codebook"])
    lines.append(f"Cross-entropy on {lik['crops']} validation crops of {lik['clips']} held-out clips "
                 f"({lik['tokens']} tokens), nats per token:")  # fmt: skip
    header = "  adapter scale " + "".join(f"{'cb' + str(c):>9}" for c in range(k)) + f"{'mean':>9}{'ppl(mean)':>11}"
    lines.append(header)
    for name in names:
        row = scales[name]
        label = {"0": "0 (base)"}.get(name, name)
        if name == names[-1]:
            label = f"{name} (tuned)"
        cells = "".join(f"{v:9.4f}" for v in row["ce_per_codebook"])
        lines.append(f"  {label:<14}{cells}{row['ce']:9.4f}{float(np.exp(row['ce'])):11.1f}")
    if "gain" in lik:
        gain = lik["gain"]
        verdict = (
            "the fine-tune predicts held-out music better"
            if gain["low"] > 0
            else ("no significant gain" if gain["high"] >= 0 else "the fine-tune is WORSE on held-out music")
        )
        lines.append(f"  gain base - tuned: {_fmt_interval(gain)} nats/token (95% bootstrap over clips): {verdict}")
        kl = lik["kl"]
        note = "  (near 0: the adapter changes almost nothing)" if kl["value"] < 1e-3 else ""
        lines.append(f"  adapter effect, mean KL(tuned || base): {kl['value']:.4f} [{kl['low']:.4f}, "
                     f"{kl['high']:.4f}] nats per position{note}")  # fmt: skip
    dist = report["distances"]
    lines.append("")
    lines.append(
        f"Distances to the validation audio (EnCodec latents, {dist['window_s']:g} s windows; lower = closer):"
    )
    lines.append(f"  {'set':<22}{'FAD':>10}{'KAD':>10}{'windows':>9}")

    def distance_rows(sets: dict[str, Any]) -> None:
        for name in ("base", "tuned", "train_audio"):
            if name in sets:
                d = sets[name]
                label = {"train_audio": "training audio (floor)"}.get(name, f"{name} samples")
                lines.append(f"  {label:<22}{_num(d['fad']):>10}{_num(d['kad'], 4):>10}{d['n_candidate']:9d}")

    distance_rows(dist)
    for model, rows in (dist.get("models") or {}).items():
        lines.append(f"  with {model} ({rows['path']}), on the decoded audio:")
        distance_rows(rows)
    if not dist.get("models"):
        lines.append("  perceptual embeddings (CLAP, VGGish): skipped, none given (--embedding-model FILE.pt)")
    cp = report.get("copying")
    if cp:
        lines.append("")
        lines.append(f"Memorisation vs {cp['training_clips']} training clips (flag: exact token run >= "
                     f"{cp['token_flag_seconds']:g} s, or melodic similarity >= {cp['melody_threshold']:g} over "
                     f"{cp['melody_window_s']:.1f} s):")  # fmt: skip
        lines.append(f"  {'sample':<44}{'token run':>10}  {'melody':>6}  closest training material")
        rows = list(cp["samples"])
        for p in cp["planted"]:
            if p.get("skipped"):
                continue
            result = p["result"]
            kind = "tokens" if p["kind"] == "token" else "melody"
            rows.append({"name": f"[control] planted {p['kind']} copy", kind: result, "flagged": result["flagged"]})
        for row in rows:
            tok, mel = row.get("tokens") or {}, row.get("melody") or {}
            where = closest_material(row)
            flag = "  COPY" if row.get("flagged") else ""
            short = "*" if mel and not mel.get("full_window", True) else " "
            name = f"{row.get('group', '')} {Path(row['name']).stem}".strip()[:44]
            lines.append(f"  {name:<44}{tok.get('seconds', 0.0):9.2f}s  {mel.get('similarity', 0.0):6.3f}{short}"
                         f" {where}{flag}")  # fmt: skip
        for p in cp["planted"]:
            lines.append(f"  control: {control_verdict(p)}")
        if any(r.get("melody") and not r["melody"].get("full_window", True) for r in rows):
            lines.append(f"  * clip shorter than the {cp['melody_window_s']:.1f} s melodic window: compared whole, "
                         "never flagged")  # fmt: skip
        if cp.get("least_copying_step"):
            c = cp["least_copying_step"]
            lines.append(f"  in-training samples: least copying near the best validation loss at step {c['step']} "
                         f"(val loss {c['val_loss']:.4f}, longest token run {c['max_token_seconds']:.2f} s, "
                         f"melodic similarity {_num(c['max_melody_similarity'])})")  # fmt: skip
    t = report["timings_s"]
    lines.append("")
    lines.append(f"took {t['total']:.1f} s (" + ", ".join(f"{k} {v:.1f}" for k, v in t.items() if k != "total") + ")")
    return "\n".join(lines)


def scalars(report: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of an evaluation as flat ``eval/...`` scalars (for TensorBoard, W&B, CSV)."""
    out: dict[str, float] = {}
    lik = report["likelihood"]
    for name, row in lik["scales"].items():
        out[f"eval/ce_scale_{name}"] = row["ce"]
        for k, v in enumerate(row["ce_per_codebook"]):
            out[f"eval/ce_{k}_scale_{name}"] = v
    if "gain" in lik:
        out["eval/gain_nats"] = lik["gain"]["value"]
        out["eval/gain_low"] = lik["gain"]["low"]
        out["eval/gain_high"] = lik["gain"]["high"]
        out["eval/kl_tuned_base"] = lik["kl"]["value"]
    for model, rows in (report["distances"].get("models") or {}).items():
        for name in ("base", "tuned"):
            for metric in ("fad", "kad"):
                if name in rows and rows[name][metric] is not None:
                    out[f"eval/{metric}_{name}_{model}"] = rows[name][metric]
    for name in ("base", "tuned", "train_audio"):
        if name in report["distances"]:
            for metric in ("fad", "kad"):
                if report["distances"][name][metric] is not None:
                    out[f"eval/{metric}_{name}"] = report["distances"][name][metric]
    cp = report.get("copying")
    if cp:
        rows = cp["samples"]
        out["eval/copies_flagged"] = float(sum(r["flagged"] for r in rows))
        out["eval/longest_token_run_s"] = max(((r["tokens"] or {}).get("seconds", 0.0) for r in rows), default=0.0)
        full = [r["melody"]["similarity"] for r in rows if r["melody"] and r["melody"].get("full_window")]
        if full:
            out["eval/max_melody_similarity"] = max(full)
    return out


def log_to_tensorboard(run: Path, report: dict[str, Any]) -> Path | None:
    """Append the evaluation's scalars to the run's newest TensorBoard folder (at the run's last step)."""
    folders = sorted((run / "tensorboard").glob("version_*"), key=lambda p: int(p.name.split("_")[-1]))
    if not folders:
        return None
    from torch.utils.tensorboard import SummaryWriter

    steps = [s for name in ("train/loss", "val/loss") for s in read_metrics(run).series(name)[0]]
    writer = SummaryWriter(str(folders[-1]))
    try:
        for name, value in scalars(report).items():
            writer.add_scalar(name, value, max(steps, default=0))
    finally:
        writer.close()
    return folders[-1]
