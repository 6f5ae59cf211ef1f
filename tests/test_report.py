"""The report's parts: spectrogram pictures, SVG charts, the run folder's logs and checkpoints, and a page built
from a hand-made run folder, opened in a headless browser."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from musiclit.eval.plots import COLORMAP, line_chart_svg, png_bytes, spectrogram_db, spectrogram_image
from musiclit.eval.run import RunError, best_checkpoint, read_metrics, resolve_run

SR = 32000


def test_spectrogram_puts_a_tone_on_its_row():
    t = np.arange(SR) / SR
    height = 160
    for freq in (110.0, 1000.0, 6000.0):
        db = spectrogram_db(np.sin(2 * np.pi * freq * t).astype(np.float32), SR, height=height)
        assert db.shape == (height, 1 + SR // 512)
        row = int(np.argmax(db[:, db.shape[1] // 2]))
        grid = np.geomspace(40.0, SR / 2, height)[::-1]  # row 0 is the highest frequency
        assert abs(np.log2(grid[row] / freq)) < 0.05, (freq, grid[row])


def test_spectrogram_image_and_png_round_trip():
    from PIL import Image

    db = np.array([[0.0, -40.0], [-80.0, -120.0]], dtype=np.float32)
    rgb = spectrogram_image(db)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], COLORMAP[255])  # the loudest value: brightest colour
    np.testing.assert_array_equal(rgb[1, 0], COLORMAP[0])  # 80 dB below: darkest
    np.testing.assert_array_equal(rgb[1, 1], COLORMAP[0])  # clipped below the range
    back = np.asarray(Image.open(io.BytesIO(png_bytes(rgb))).convert("RGB"))
    np.testing.assert_array_equal(back, rgb)
    luminance = COLORMAP.astype(float) @ np.array([0.2126, 0.7152, 0.0722])  # Rec. 709
    assert (np.diff(luminance) > 0).all()  # strictly dark to bright: louder always looks brighter


def test_line_chart_is_valid_svg_with_one_line_per_series():
    svg = line_chart_svg([("train", [1, 2, 3], [3.0, 2.0, 1.5]), ("val", [2], [2.5]),
                          ("gap", [1, 2], [float("nan"), 1.0])], "loss & <co>", markers=[(2, "best")])  # fmt: skip
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}polyline")) == 1  # "val" and "gap" have one finite point each: dots
    assert len(root.findall(f"{ns}circle")) == 2
    assert "loss &amp; &lt;co&gt;" in svg
    points = [tuple(map(float, p.split(","))) for p in root.find(f"{ns}polyline").get("points").split()]
    assert points[0][0] < points[1][0] < points[2][0] and points[0][1] < points[2][1]  # y grows downwards
    assert "no data" in line_chart_svg([], "empty")


def _csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = ["epoch", "step", "train/loss", "val/loss", "val/ce_0"]
    path.write_text(",".join(keys) + "\n" + "".join(",".join(str(r.get(k, "")) for k in keys) + "\n" for r in rows))


def test_metrics_merge_restarts_and_find_the_best_checkpoint(tmp_path):
    _csv(tmp_path / "logs" / "version_0" / "metrics.csv",
         [{"step": 9, "train/loss": 7.0}, {"step": 19, "val/loss": 6.0}, {"step": 39, "val/loss": 5.5}])  # fmt: skip
    # the resumed run logs step 40 again (a later version wins) and goes on
    _csv(tmp_path / "logs" / "version_1" / "metrics.csv",
         [{"step": 39, "val/loss": 5.4}, {"step": 59, "val/loss": 5.6}])  # fmt: skip
    metrics = read_metrics(tmp_path)
    assert metrics.series("val/loss") == ([20, 40, 60], [6.0, 5.4, 5.6])  # steps completed: CSV step + 1
    assert metrics.best() == (40, 5.4)
    assert best_checkpoint(tmp_path) == (40, 5.4, None)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step-0000040.ckpt").write_bytes(b"")
    assert best_checkpoint(tmp_path)[2].name == "step-0000040.ckpt"
    (tmp_path / "checkpoints" / "best-0000040.ckpt").write_bytes(b"")
    assert best_checkpoint(tmp_path)[2].name == "best-0000040.ckpt"


def test_resolve_run_errors_name_the_problem(tmp_path):
    with pytest.raises(RunError, match="no such run folder"):
        resolve_run(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(RunError, match="not a run folder"):
        resolve_run(tmp_path / "plain")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(RunError, match=r"no adapter/ and no checkpoints/last\.ckpt"):
        resolve_run(tmp_path / "run")
    with pytest.raises(RunError, match="best validation loss was kept"):
        resolve_run(tmp_path / "run", which="best")


def test_a_report_of_a_hand_made_run_opens_in_a_browser(tmp_path):
    """No evaluation yet, in-training samples only (one WAV without its PNG, drawn on the fly)."""
    from browser import open_in_browser

    from musiclit.data.audio import write_audio
    from musiclit.eval.plots import write_spectrogram
    from musiclit.eval.report import build_report

    run = tmp_path / "run"
    _csv(run / "logs" / "version_0" / "metrics.csv",
         [{"step": s, "train/loss": 7 - s / 10, "val/ce_0": 6 - s / 20} for s in range(0, 40, 5)])  # fmt: skip
    (run / "logs" / "version_0" / "config.yaml").write_text("model:\n  pretrained: tiny <&>\n")
    t = np.arange(SR) / SR
    for step in ("base", "step_0000010"):
        wav = run / "samples" / step / "cfg3" / "000-calm-seed0.wav"
        write_audio(wav, (0.3 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32), SR)
        if step == "base":
            write_spectrogram(wav.with_suffix(".png"), np.sin(2 * np.pi * 440 * t), SR)
    page = build_report(run)
    text = page.read_text()
    assert "not evaluated yet" in text and "tiny &lt;&amp;&gt;" in text
    media, errors = open_in_browser(page)
    assert not errors, errors
    assert [a["duration"] for a in media["audio"]] == [1, 1]
    assert len(media["images"]) == 2 and all(i["complete"] and i["width"] > 0 for i in media["images"])
    assert media["svgs"] >= 2
