"""Pictures for the run report, with no plotting library: spectrogram PNGs (numpy + Pillow) and SVG line charts.

* :func:`spectrogram_image` draws a log-frequency, decibel spectrogram (40 Hz to Nyquist, 80 dB range,
  a perceptually ordered dark-to-bright colour map) and :func:`spectrogram_png` encodes it as PNG bytes.
* :func:`line_chart_svg` draws series of (x, y) points as an inline SVG element (axes, ticks, legend),
  for the loss curves.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

# anchor colours of a dark-to-bright map (black, purple, red, orange, pale yellow), interpolated to 256 steps
_ANCHORS = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39],
     [252, 255, 164]], dtype=np.float64,
)  # fmt: skip
COLORMAP = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c]) for c in range(3)], axis=1
).astype(np.uint8)


def spectrogram_db(
    audio: np.ndarray | torch.Tensor,
    sample_rate: int,
    n_fft: int = 2048,
    hop_length: int = 512,
    height: int = 160,
    fmin: float = 40.0,
) -> np.ndarray:
    """Power spectrogram in dB on a log-frequency grid: (height, frames) float32, row 0 = highest frequency.

    Args:
        audio: (S,) or (C, S) float audio (channels are averaged).
        sample_rate: Its rate, Hz.
        n_fft: FFT size; hop_length: samples between columns.
        height: Rows (log-spaced frequencies from ``fmin`` to Nyquist).
        fmin: Lowest frequency shown, Hz.
    """
    from musiclit.model.chroma import power_spectrogram

    x = torch.as_tensor(np.asarray(audio, dtype=np.float32) if not torch.is_tensor(audio) else audio).float()
    if x.ndim == 2:
        x = x.mean(0)
    power = power_spectrogram(x[None], n_fft, hop_length)[0].numpy()  # (bins, frames)
    bins = power.shape[0]
    pos = np.geomspace(fmin, sample_rate / 2, height) / (sample_rate / 2) * (bins - 1)  # fractional bin per row
    lo = np.minimum(np.floor(pos).astype(np.int64), bins - 2)
    frac = (pos - lo)[:, None]
    rows = power[lo] * (1 - frac) + power[lo + 1] * frac  # linear interpolation between neighbouring bins
    return (10.0 * np.log10(np.maximum(rows, 1e-12)))[::-1].astype(np.float32)


def spectrogram_image(db: np.ndarray, dynamic_range: float = 80.0) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a dB spectrogram: the loudest value is bright, ``dynamic_range`` dB below it dark."""
    top = float(np.max(db)) if db.size else 0.0
    level = np.clip((db - (top - dynamic_range)) / dynamic_range, 0.0, 1.0)
    return COLORMAP[np.round(level * 255).astype(np.int64)]


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG encoding of an (H, W, 3) uint8 image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def spectrogram_png(audio: np.ndarray | torch.Tensor, sample_rate: int, **kwargs: object) -> bytes:
    """PNG bytes of the spectrogram of ``audio`` (see :func:`spectrogram_db`)."""
    return png_bytes(spectrogram_image(spectrogram_db(audio, sample_rate, **kwargs)))  # type: ignore[arg-type]


def write_spectrogram(path: str | Path, audio: np.ndarray | torch.Tensor, sample_rate: int) -> Path:
    """Write the spectrogram PNG of ``audio`` to ``path`` atomically."""
    from musiclit.io import atomic_write_bytes

    atomic_write_bytes(path, spectrogram_png(audio, sample_rate))
    return Path(path)


# ---------------------------------------------------------------------------------------------- SVG charts

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    t = first
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 10))
        t += step
    return ticks


def line_chart_svg(
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    title: str = "",
    x_label: str = "step",
    y_label: str = "",
    width: int = 560,
    height: int = 300,
    markers: Sequence[tuple[float, str]] = (),
) -> str:
    """An inline ``<svg>`` line chart.

    Args:
        series: ``(name, xs, ys)`` per line (NaN values are skipped; a series of one point is drawn as a dot).
        title: Shown above the plot.
        x_label, y_label: Axis labels.
        width, height: Size in pixels.
        markers: Vertical lines ``(x, label)`` (e.g. the best checkpoint).
    """
    left, right, top, bottom = 56, 12, 28, 40
    pw, ph = width - left - right, height - top - bottom
    points = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys, strict=False) if math.isfinite(y)]
    esc = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">']  # fmt: skip
    out.append(
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{esc(title)}</text>'
    )
    if not points:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="12">no data</text></svg>')
        return "".join(out)
    xs_all = [p[0] for p in points] + [m[0] for m in markers]
    ys_all = [p[1] for p in points]
    x0, x1 = min(xs_all), max(xs_all)
    y0, y1 = min(ys_all), max(ys_all)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.05 or abs(y0) * 0.05 or 1.0
    y0, y1 = y0 - pad, y1 + pad

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for t in _nice_ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 4}" y="{sy(t) + 4:.1f}" text-anchor="end" font-size="10">{t:g}</text>')
    for t in _nice_ticks(x0, x1):
        out.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#999"/>')
        out.append(f'<text x="{sx(t):.1f}" y="{top + ph + 15}" text-anchor="middle" font-size="10">{t:g}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle" font-size="11">{esc(x_label)}</text>')
    out.append(f'<text x="12" y="{top + ph / 2}" text-anchor="middle" font-size="11" '
               f'transform="rotate(-90 12 {top + ph / 2})">{esc(y_label)}</text>')  # fmt: skip
    for x, label in markers:
        out.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" y2="{top + ph}" stroke="#444" '
                   f'stroke-dasharray="4 3"/>')  # fmt: skip
        out.append(f'<text x="{sx(x) + 3:.1f}" y="{top + 11}" font-size="10">{esc(label)}</text>')
    for i, (name, xs, ys) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        pts = [(sx(x), sy(y)) for x, y in zip(xs, ys, strict=False) if math.isfinite(y)]
        if len(pts) == 1:
            out.append(f'<circle cx="{pts[0][0]:.1f}" cy="{pts[0][1]:.1f}" r="3" fill="{color}"/>')
        elif pts:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        ly = top + 12 + 14 * i
        out.append(f'<rect x="{left + pw - 150}" y="{ly - 8}" width="10" height="3" fill="{color}"/>'
                   f'<text x="{left + pw - 136}" y="{ly - 4}" font-size="10">{esc(name)}</text>')  # fmt: skip
    out.append("</svg>")
    return "".join(out)
