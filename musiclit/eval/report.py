"""The run report: ONE self-contained HTML page a musician can open and listen to (``<run>/report/index.html``).

What it shows: the loss curves (train, validation, per codebook; drawn as inline SVG from the run's CSV
logs), the evaluation table (``eval/eval.json``), base-vs-tuned players side by side with spectrograms per
prompt, the in-training samples per prompt and step, the memorisation table with links to the matching
training clips, the resolved config, and the best checkpoint.

Why audio is EMBEDDED (``data:`` URIs) rather than linked: the page is one file that plays anywhere -- sent
by mail, copied off a cloud machine, opened from a zip -- with no network and no broken links when it is
moved away from the run folder. Audio is re-encoded as 16-bit FLAC (lossless at 16 bits, about half the
size of the float WAVs) before embedding; spectrograms are PNGs. An embedding budget (``embed_mb``) caps
the page: past it, further clips are linked by relative path (they then play only next to the run
folder), and the page says how many. Training clips are always linked (they are the user's files), and the
matching excerpt of a flagged clip is embedded so the copy can be heard next to the sample.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from musiclit.eval.plots import line_chart_svg, spectrogram_png
from musiclit.eval.run import config_path, read_metrics, sample_steps

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1280px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
td,th{border:1px solid #ddd;padding:4px 8px;vertical-align:top}
th{background:#f5f5f5}.num{text-align:right;font-variant-numeric:tabular-nums}.flag{background:#fde2e1}
.ok{color:#1a7f37}.bad{color:#cf222e;font-weight:bold}.note{color:#666;font-size:12px}
.pair{display:flex;gap:16px;flex-wrap:wrap}.cell{display:flex;flex-direction:column;gap:4px}
.cell img{width:320px;height:100px;image-rendering:auto;border:1px solid #ccc}audio{width:320px}
.scroll{overflow-x:auto}pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:480px;font-size:12px}.best{background:#e6f4ea}
"""


class _Embedder:
    """Turns audio files into ``data:`` URIs (FLAC) until the budget is spent, then into relative links."""

    def __init__(self, page_dir: Path, budget_bytes: int) -> None:
        self.page_dir = page_dir
        self.budget = budget_bytes
        self.used = 0
        self.linked = 0

    def _rel(self, path: Path) -> str:
        return Path(os.path.relpath(path.resolve(), self.page_dir.resolve())).as_posix()

    def audio(self, path: Path, start_s: float = 0.0, seconds: float | None = None) -> str:
        """A playable ``src`` for (part of) an audio file."""
        import soundfile as sf

        try:
            with sf.SoundFile(str(path)) as fh:
                sr = fh.samplerate
                fh.seek(min(int(start_s * sr), fh.frames))
                data = fh.read(frames=-1 if seconds is None else int(seconds * sr), dtype="float32", always_2d=True)
        except (OSError, RuntimeError, sf.LibsndfileError):
            return self._rel(path)
        buf = io.BytesIO()
        sf.write(buf, np.clip(data, -1.0, 1.0), sr, format="FLAC", subtype="PCM_16")
        raw = buf.getvalue()
        if self.used + len(raw) > self.budget and start_s == 0.0 and seconds is None:
            self.linked += 1
            return self._rel(path)
        self.used += len(raw)
        return "data:audio/flac;base64," + base64.b64encode(raw).decode("ascii")

    def image(self, png: Path | None, wav: Path) -> str:
        """A ``src`` for the spectrogram PNG of ``wav`` (computed when the PNG is missing)."""
        if png is not None and png.is_file():
            raw = png.read_bytes()
        else:
            from musiclit.data.audio import read_audio

            try:
                raw = spectrogram_png(read_audio(wav), _rate(wav))
            except Exception:
                return ""
        self.used += len(raw)
        return "data:image/png;base64," + base64.b64encode(raw).decode("ascii")


def _rate(path: Path) -> int:
    import soundfile as sf

    return int(sf.info(str(path)).samplerate)


def _sim(value: float | None) -> str:
    return "n/a (shorter than the window)" if value is None else f"{value:.3f}"


def _e(text: Any) -> str:
    return html.escape(str(text))


def _player(emb: _Embedder, wav: Path, caption: str = "", png: Path | None = None) -> str:
    if not wav.is_file():
        return f'<div class="cell"><span class="note">{_e(caption)}: {_e(wav.name)} is missing</span></div>'
    img = emb.image(png if png is not None else wav.with_suffix(".png"), wav)
    pic = f'<img src="{img}" alt="spectrogram of {_e(wav.name)}">' if img else ""
    return (f'<div class="cell"><span class="note">{_e(caption)}</span>'
            f'<audio controls preload="metadata" src="{emb.audio(wav)}"></audio>{pic}</div>')  # fmt: skip


def _loss_section(run: Path, best: tuple[int, float] | None) -> str:
    metrics = read_metrics(run)
    markers = [(best[0], f"best val (step {best[0]})")] if best else []
    out = ["<h2>Loss curves</h2>"]
    if not metrics.rows:
        return out[0] + '<p class="note">no CSV logs in logs/version_*/metrics.csv</p>'
    series = []
    for name in ("train/loss", "val/loss"):
        xs, ys = metrics.series(name)
        if xs:
            series.append((name, xs, ys))
    out.append('<div class="pair">')
    out.append(line_chart_svg(series, "loss (mean CE over codebooks)", y_label="nats/token", markers=markers))
    for split in ("train", "val"):
        cbs = [n for n in metrics.names(f"{split}/ce_") if n.removeprefix(f"{split}/ce_").isdigit()]
        cb_series = [(n.split("/")[1], *metrics.series(n)) for n in sorted(cbs, key=lambda n: int(n.split("_")[-1]))]
        if cb_series:
            out.append(line_chart_svg(cb_series, f"{split}: CE per codebook", y_label="nats/token", markers=markers))
    out.append("</div>")
    return "".join(out)


def _eval_section(ev: dict[str, Any]) -> str:
    lik = ev["likelihood"]
    scales = lik["scales"]
    names = list(scales)
    k = len(next(iter(scales.values()))["ce_per_codebook"])
    out = [
        "<h2>Evaluation</h2>",
        f'<p class="note">{_e(ev["evaluated"]["target"])} on {lik["crops"]} validation crops of {lik["clips"]} '
        f"held-out clips ({lik['tokens']} tokens); created {_e(ev['created'])}</p>",
    ]
    out.append("<table><tr><th>adapter scale</th>" + "".join(f"<th>CE cb{c}</th>" for c in range(k))
               + "<th>CE mean</th><th>perplexity</th></tr>")  # fmt: skip
    for name in names:
        row = scales[name]
        label = "0 (base)" if name == "0" else (f"{name} (tuned)" if name == names[-1] else name)
        cells = "".join(f'<td class="num">{v:.4f}</td>' for v in row["ce_per_codebook"])
        out.append(f'<tr><td>{label}</td>{cells}<td class="num">{row["ce"]:.4f}</td>'
                   f'<td class="num">{math.exp(row["ce"]):.1f}</td></tr>')  # fmt: skip
    out.append("</table>")
    if "gain" in lik:
        g, kl = lik["gain"], lik["kl"]
        cls = "ok" if g["low"] > 0 else "bad"
        out.append(f'<p>Gain (base - tuned): <b class="{cls}">{g["value"]:+.4f}</b> nats/token, 95% bootstrap '
                   f'interval over clips [{g["low"]:+.4f}, {g["high"]:+.4f}]. Adapter effect, mean '
                   f'KL(tuned || base): {kl["value"]:.4f} [{kl["low"]:.4f}, {kl["high"]:.4f}] nats per '
                   "position.</p>")  # fmt: skip
    dist = ev["distances"]
    out.append(f'<table><tr><th>vs the validation audio ({dist["window_s"]:g} s windows)</th><th>FAD</th><th>KAD</th>'
               "<th>windows</th></tr>")  # fmt: skip

    def distance_rows(sets: dict[str, Any], prefix: str, floor: str) -> None:
        for name, label in (("base", "base samples"), ("tuned", "tuned samples"), ("train_audio", floor)):
            if name in sets:
                d = sets[name]
                fad = "n/a" if d["fad"] is None else f"{d['fad']:.3f}"
                kad = "n/a" if d["kad"] is None else f"{d['kad']:.4f}"
                out.append(f'<tr><td>{prefix}{label}</td><td class="num">{fad}</td><td class="num">{kad}</td>'
                           f'<td class="num">{d["n_candidate"]}</td></tr>')  # fmt: skip

    distance_rows(dist, "", "training audio (floor)")
    for model, rows in (dist.get("models") or {}).items():
        distance_rows(rows, f"{_e(model)}: ", "training audio")
    skipped = "" if dist.get("models") else " Perceptual embeddings (CLAP, VGGish): skipped, none was given."
    out.append('</table><p class="note">FAD/KAD on the model\'s own EnCodec latents of the tokens (standardised by the '
               "validation set); the training audio row is what real music of this dataset scores."
               f"{skipped}</p>")  # fmt: skip
    return "".join(out)


def _samples_section(ev: dict[str, Any], eval_dir: Path, emb: _Embedder) -> str:
    samples = ev.get("samples") or {}
    base, tuned = samples.get("base", []), samples.get("tuned", [])
    if not base and not tuned:
        return ""
    out = ["<h2>Base vs tuned</h2><p class=\"note\">Same prompt, same seed; left the base model (adapter scale 0), "
           "right the fine-tune.</p><table><tr><th>prompt</th><th>base</th><th>tuned</th></tr>"]  # fmt: skip
    for b, t in zip(base, tuned, strict=False):
        out.append(f"<tr><td>{_e(b['prompt'])}<br><span class=\"note\">seed {b['seed']}</span></td>"
                   f"<td>{_player(emb, eval_dir / b['wav'], 'base', eval_dir / b['png'])}</td>"
                   f"<td>{_player(emb, eval_dir / t['wav'], 'tuned', eval_dir / t['png'])}</td></tr>")  # fmt: skip
    out.append("</table>")
    return "".join(out)


def _training_samples_section(run: Path, emb: _Embedder) -> str:
    steps = sample_steps(run)
    if not steps:
        return ""
    # rows: (relative path inside the step folder) -> prompt; columns: steps
    grid: dict[str, dict[str, Path]] = {}
    prompts: dict[str, str] = {}
    for label, folder in steps:
        for wav in sorted(folder.rglob("*.wav")):
            key = wav.relative_to(folder).as_posix()
            grid.setdefault(key, {})[label] = wav
            meta = wav.with_suffix(".json")
            if key not in prompts and meta.is_file():
                try:
                    data = json.loads(meta.read_text(encoding="utf-8"))
                    g = data.get("params", {}).get("guidance_scale")
                    prompts[key] = (data.get("prompt") or "(unconditional)") + (f" · guidance {g:g}" if g else "")
                except (OSError, json.JSONDecodeError, TypeError, ValueError):
                    pass
    labels = [label for label, _ in steps]
    out = ["<h2>Samples during training</h2><p class=\"note\">Fixed prompts and seeds: the base model once at step 0, "
           "then the fine-tune as it trains.</p><div class=\"scroll\"><table><tr><th>prompt</th>"
           + "".join(f"<th>{_e(lab)}</th>" for lab in labels) + "</tr>"]  # fmt: skip
    for key, cells in grid.items():
        out.append(f"<tr><td>{_e(prompts.get(key, key))}</td>")
        for label in labels:
            wav = cells.get(label)
            out.append(f"<td>{_player(emb, wav, label) if wav else ''}</td>")
        out.append("</tr>")
    out.append("</table></div>")
    return "".join(out)


def _copy_section(ev: dict[str, Any], data_dir: Path | None, emb: _Embedder) -> str:
    cp = ev.get("copying")
    if not cp:
        return ""
    out = [f"<h2>Memorisation</h2><p class=\"note\">Every sample against the {cp['training_clips']} training clips: "
           "the "
           f"longest run of identical codec frames (flag at {cp['token_flag_seconds']:g} s) and the melodic "
           f"similarity of {cp['melody_window_s']:.1f} s windows (chroma, "
           f"{'any transposition' if cp['key_invariant'] else 'same key'}; flag at {cp['melody_threshold']:g}).</p>",
           "<table><tr><th>sample</th><th>token run</th><th>melodic similarity</th><th>training clip</th>"
           "<th>listen</th></tr>"]  # fmt: skip

    def source_cell(name: str | None) -> str:
        if not name:
            return "-"
        if data_dir is not None and (data_dir / name).is_file():
            return f'<a href="{_e(emb._rel(data_dir / name))}">{_e(name)}</a>'
        return _e(name)

    rows = list(cp.get("samples", []))
    for p in cp.get("planted", []):
        if p.get("skipped"):
            rows.append({"name": f"control: planted {p['kind']} copy (skipped: {p['skipped']})", "flagged": False})
            continue
        kind = "tokens" if p["kind"] == "token" else "melody"
        verdict = "found" if p["passed"] else "NOT FOUND"
        rows.append({"name": f"control: planted {p['kind']} copy ({verdict})", kind: p["result"],
                     "flagged": p["result"]["flagged"]})  # fmt: skip
    for row in rows:
        tok, mel = row.get("tokens") or {}, row.get("melody") or {}
        if tok.get("flagged"):
            src, where, length = tok["source"], tok["source_offset_s"], tok["seconds"]
            detail = f" @ {where:.2f} s"
        else:
            src, where, length = mel.get("source") or tok.get("source"), mel.get("source_offset_s", 0.0), 5.0
            detail = f" @ {where:.2f} s, +{mel.get('transpose', 0)} st" if mel.get("source") else ""
        listen = ""
        if row.get("flagged") and data_dir is not None and src and (data_dir / src).is_file():
            excerpt = emb.audio(data_dir / src, where, max(length, 2.0))
            listen = f'<audio controls preload="metadata" src="{excerpt}"></audio>'
        cls = ' class="flag"' if row.get("flagged") else ""
        short = " (short clip: not flagged)" if mel and not mel.get("full_window", True) else ""
        out.append(f"<tr{cls}><td>{_e(row['name'])}</td><td class=\"num\">{tok.get('seconds', 0.0):.2f} s</td>"
                   f"<td class=\"num\">{mel.get('similarity', 0.0):.3f}{short}</td>"
                   f"<td>{source_cell(src)}{_e(detail)}</td>"
                   f"<td>{listen}</td></tr>")  # fmt: skip
    out.append("</table>")
    by_step = cp.get("by_step") or []
    if by_step:
        choice = (cp.get("least_copying_step") or {}).get("step")
        out.append("<table><tr><th>in-training samples</th><th>samples</th><th>flagged</th><th>longest token run</th>"
                   "<th>max melodic similarity</th></tr>")  # fmt: skip
        for r in by_step:
            cls = ' class="best"' if r["step"] == choice and r["label"] != "base" else ""
            out.append(f"<tr{cls}><td>{_e(r['label'])}</td><td class=\"num\">{r['samples']}</td>"
                       f"<td class=\"num\">{r['flagged']}</td><td class=\"num\">{r['max_token_seconds']:.2f} s</td>"
                       f"<td class=\"num\">{_sim(r['max_melody_similarity'])}</td></tr>")  # fmt: skip
        out.append("</table>")
        if choice is not None:
            c = cp["least_copying_step"]
            out.append(f"<p>Least copying at (near) the best validation loss: <b>step {c['step']}</b> "
                       f"(val loss {c['val_loss']:.4f}).</p>")  # fmt: skip
    return "".join(out)


def build_report(run: str | Path, embed_mb: float = 64.0) -> Path:
    """Write ``<run>/report/index.html`` from what the run folder holds; returns its path.

    Args:
        run: The run folder.
        embed_mb: Most megabytes of audio embedded in the page (the rest is linked).
    """
    from musiclit.eval.run import best_checkpoint
    from musiclit.io import atomic_write_text

    run = Path(run).resolve()
    page_dir = run / "report"
    emb = _Embedder(page_dir, int(embed_mb * 1e6))
    eval_json = run / "eval" / "eval.json"
    ev = json.loads(eval_json.read_text(encoding="utf-8")) if eval_json.is_file() else None
    best = best_checkpoint(run)
    parts = [f"<h1>musiclit run report: {_e(run.name)}</h1>", f'<p class="note">{_e(run)}</p>']
    if best is not None:
        ckpt = best[2].name if best[2] else "no checkpoint of that step was kept"
        parts.append(f'<p class="best">Best validation loss {best[1]:.4f} at step {best[0]} ({_e(ckpt)}).</p>')
    parts.append(_loss_section(run, best[:2] if best else None))
    if ev is not None:
        parts.append(_eval_section(ev))
        parts.append(_samples_section(ev, run / "eval", emb))
    else:
        parts.append('<h2>Evaluation</h2><p class="note">not evaluated yet: python -m musiclit evaluate RUN</p>')
    parts.append(_training_samples_section(run, emb))
    if ev is not None:
        data_dir = Path(ev["data_dir"]) if ev.get("data_dir") else None
        parts.append(_copy_section(ev, data_dir, emb))
    cfg = config_path(run)
    if cfg is not None:
        parts.append(f"<h2>Resolved config</h2><p class=\"note\">{_e(cfg.relative_to(run))}</p>"
                     f"<pre>{_e(cfg.read_text(encoding='utf-8'))}</pre>")  # fmt: skip
    if emb.linked:
        parts.append(f'<p class="note">{emb.linked} audio clips over the {embed_mb:g} MB embedding budget are linked '
                     "by relative path: they play next to the run folder only.</p>")  # fmt: skip
    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>musiclit report: "
            f"{_e(run.name)}</title><link rel=\"icon\" href=\"data:,\"><style>{CSS}</style></head><body>"
            + "".join(parts) + "</body></html>")  # fmt: skip
    out = page_dir / "index.html"
    atomic_write_text(out, page)
    return out
