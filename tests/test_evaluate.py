"""evaluate / check-copying / report end to end on a tiny run: fit with in-training samples, early stopping and
the evaluation at its end; the report opened in a real headless browser."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from browser import open_in_browser
from tiny_run import tiny_fit

from musiclit.__main__ import main as cli_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    """A 6-step LoRA run (validation every 2 steps, samples every 3) that evaluates itself when fit ends."""
    from musiclit.data.synth import synthesize_dataset

    root = tmp_path_factory.mktemp("eval-run")
    data = root / "data"
    # 8 s clips: long enough for the planted controls (a 3 s token copy, a 6 s melodic copy)
    synthesize_dataset(data, n_songs=6, song_seconds=8.0, clip_seconds=8.0, valid_fraction=0.34, seed=1)
    tiny_fit(tiny_model_dir, data, root / "run",
             "--trainer.max_steps", "6", "--trainer.val_check_interval", "2", "--trainer.num_sanity_val_steps", "0",
             "--trainer.log_every_n_steps", "1", "--model.optimizer.lr", "0.01", "--data.batch_size", "2",
             "--samples.prompts", '["calm folk", "fast"]', "--samples.seconds", "0.5", "--samples.every_n_steps", "3",
             "--early_stopping.enabled", "true", "--evaluation.enabled", "true", "--evaluation.prompts", "2",
             "--evaluation.samples_per_prompt", "1", "--evaluation.seconds", "1")  # fmt: skip
    return root / "run", data


def test_evaluation_at_the_end_of_fit(run):
    run_dir, _ = run
    ev = json.loads((run_dir / "eval" / "eval.json").read_text())
    scales = ev["likelihood"]["scales"]
    assert list(scales) == ["0", "0.5", "1"]
    assert ev["likelihood"]["gain"]["low"] > 0  # lr 0.01 for 6 steps already helps on held-out songs
    assert ev["likelihood"]["kl"]["value"] > 0
    assert scales["1"]["ce"] < scales["0"]["ce"]
    for name in ("base", "tuned", "train_audio"):
        assert np.isfinite(ev["distances"][name]["fad"]) and np.isfinite(ev["distances"][name]["kad"])
    cp = ev["copying"]
    assert [c["kind"] for c in cp["planted"]] == ["token", "melody"]
    assert all(c["passed"] for c in cp["planted"]), cp["planted"]
    assert not any(r["flagged"] for r in cp["samples"])  # 6 steps of training copy nothing
    assert [r["label"] for r in cp["by_step"]] == ["base", "step 3", "step 6"]
    # the evaluated checkpoint is the best one early stopping kept
    assert Path(ev["evaluated"]["target"]).name.startswith("best-")
    for name in ("base", "tuned"):
        for sample in ev["samples"][name]:
            wav = run_dir / "eval" / sample["wav"]
            stem = wav.with_suffix("")
            assert wav.is_file() and stem.with_suffix(".json").is_file() and stem.with_suffix(".png").is_file()
            assert Path(f"{stem}.codes.npy").is_file()
    # the scalars went to the loggers of fit
    rows = list(csv.DictReader((run_dir / "logs" / "version_0" / "metrics.csv").open()))
    assert any(r.get("eval/gain_nats") for r in rows)
    assert (run_dir / "report" / "index.html").is_file()


def test_eval_samples_regenerate_exactly_from_their_json(run):
    from musiclit.infer.samples import request_from_json, run_request

    run_dir, _ = run
    meta = sorted((run_dir / "eval" / "samples" / "base").glob("*.json"))[0]
    request = request_from_json(meta)
    assert request.params.adapter_scale == 0.0  # the base samples are the adapter at strength 0
    _, result, _ = run_request(request, device="cpu")
    saved = np.load(meta.with_name(meta.stem + ".codes.npy"))
    np.testing.assert_array_equal(result.codes[0].numpy(), saved)


def test_samples_during_training(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = run
    for folder in ("base", "step_0000003", "step_0000006"):
        names = sorted(p.relative_to(run_dir / "samples" / folder).as_posix()
                       for p in (run_dir / "samples" / folder).rglob("*.wav"))  # fmt: skip
        assert names == ["cfg1/000-calm-folk-seed0.wav", "cfg1/001-fast-seed1.wav", "cfg3/000-calm-folk-seed0.wav",
                         "cfg3/001-fast-seed1.wav", "unconditional/000-unconditional-seed0.wav"], folder  # fmt: skip
    base = json.loads((run_dir / "samples" / "base" / "cfg3" / "000-calm-folk-seed0.json").read_text())
    step = json.loads((run_dir / "samples" / "step_0000006" / "cfg3" / "000-calm-folk-seed0.json").read_text())
    assert (base["params"]["adapter_scale"], step["params"]["adapter_scale"]) == (0.0, 1.0)
    assert base["params"]["guidance_scale"] == 3.0 and base["seed"] == step["seed"] == 0
    events = EventAccumulator(str(next((run_dir / "tensorboard").glob("version_*"))), size_guidance={"audio": 0,
                              "images": 0})  # fmt: skip
    events.Reload()
    tags = events.Tags()
    assert "samples/base/cfg3/00" in tags["audio"] and "samples/cfg1/01" in tags["audio"]
    assert "samples/unconditional/00/spectrogram" in tags["images"]


def test_best_checkpoint_is_the_lowest_validation_loss(run):
    from musiclit.eval.run import best_checkpoint

    run_dir, _ = run
    rows = list(csv.DictReader((run_dir / "logs" / "version_0" / "metrics.csv").open()))
    # Lightning's CSV step is the 0-based index of the optimiser step: one less than the steps completed
    val = [(float(r["val/loss"]), int(r["step"]) + 1) for r in rows if r.get("val/loss")]
    assert len(val) == 3
    best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1
    step = torch.load(best[0], weights_only=False, map_location="cpu")["global_step"]
    assert best[0].name == f"best-{step:07d}.ckpt" and {s: v for v, s in val}[step] == min(val)[0]
    assert best_checkpoint(run_dir) == (step, min(val)[0], best[0])


def test_evaluate_command(run, capsys, tmp_path):
    from test_eval_embeddings import save_frame_stats

    run_dir, _ = run
    model = save_frame_stats(tmp_path / "framestats.pt")
    code = cli_main(["evaluate", str(run_dir), "--prompts", "1", "--samples-per-prompt", "2", "--seconds", "1",
                     "--bootstrap", "200", "--quiet", "--embedding-model", model])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    for text in ("0 (base)", "1 (tuned)", "gain base - tuned", "FAD", "KAD", "Memorisation", "with framestats",
                 "control: planted token copy", "found at the right place", "report:"):  # fmt: skip
        assert text in out, text
    assert "NOT FOUND" not in out
    ev = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert ev["distances"]["models"]["framestats"]["tuned"]["n_candidate"] == 2 * 4  # 2 samples x 4 frames
    # every distance in eval.json is a row of the printed table and of the report (latents, then the model)
    from musiclit.eval.report import build_report

    page = build_report(run_dir).read_text()
    dist = ev["distances"]
    for sets in (dist, dist["models"]["framestats"]):
        for name, d in sets.items():
            if name in ("base", "tuned", "train_audio"):
                assert f"{d['fad']:.3f}" in out and f"{d['fad']:.3f}</td>" in page, (name, d)
                assert f"{d['kad']:.4f}" in out and f"{d['kad']:.4f}</td>" in page, (name, d)
    assert "framestats: tuned samples" in page and "training audio (floor)" in out


def test_check_copying_flags_a_planted_copy(run, tiny_model_dir, tmp_path, capsys):
    from musiclit.data.cache import TokenCache
    from musiclit.data.manifest import load_dataset_entries

    run_dir, data = run
    assert cli_main(["check-copying", str(run_dir), "--quiet"]) == 0  # the run's own samples copy nothing
    # a "generated" folder holding a training clip (as audio with its exact codes) and a held-out one
    entries = load_dataset_entries(data, 0.34, 0)
    train = next(e for e in entries if e.split == "train")
    valid = next(e for e in entries if e.split == "valid")
    folder = tmp_path / "generated"
    folder.mkdir()
    shutil.copy(data / train.path, folder / "copy.wav")
    shutil.copy(data / valid.path, folder / "heldout.wav")
    cache_root = data / ".musiclit-cache"
    cache = TokenCache(cache_root, next(p.name for p in cache_root.iterdir() if p.is_dir()))
    np.save(folder / "copy.codes.npy", np.asarray(cache.get(cache.key_for(data / train.path))))
    capsys.readouterr()
    code = cli_main(["check-copying", str(folder), "--data", str(data), "--model", str(tiny_model_dir), "--quiet",
                     "--json", str(tmp_path / "copies.json")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    result = json.loads((tmp_path / "copies.json").read_text())
    rows = {r["name"]: r for r in result["groups"]["generated"]}
    assert rows["copy.wav"]["flagged"] and rows["copy.wav"]["tokens"]["source"] == train.path
    assert rows["copy.wav"]["tokens"]["source_offset_s"] == 0.0 and rows["copy.wav"]["codes_exact"]
    assert rows["copy.wav"]["melody"]["source"] == train.path and rows["copy.wav"]["melody"]["flagged"]
    assert not rows["heldout.wav"]["flagged"] and not rows["heldout.wav"]["codes_exact"]
    assert "1 flagged" in out and train.path in out


def test_report_opens_in_a_headless_browser(run):
    from musiclit.eval.report import build_report

    run_dir, _ = run
    page = build_report(run_dir)
    text = page.read_text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text  # no network
    media, errors = open_in_browser(page)
    assert not errors, errors
    ev = json.loads((run_dir / "eval" / "eval.json").read_text())
    players = len(ev["samples"]["base"]) + len(ev["samples"]["tuned"]) + 3 * 5  # eval + in-training (3 x 5)
    excerpts = sum(c["result"]["flagged"] for c in ev["copying"]["planted"])  # the planted copies' sources
    assert len(media["audio"]) == players + excerpts
    for audio in media["audio"]:
        assert audio["error"] is None and audio["duration"] > 0 and audio["playable"], audio
    assert len(media["images"]) == players  # a spectrogram beside every sample
    assert all(i["complete"] and i["width"] > 0 for i in media["images"]), media["images"]
    assert media["svgs"] >= 3  # loss curves: train+val loss, per-codebook train and val


def test_report_links_audio_past_the_embedding_budget(run, tmp_path):
    from musiclit.eval.report import build_report

    run_dir, _ = run
    small = build_report(run_dir, embed_mb=0.05).read_text()
    assert "data:audio/flac;base64," in small  # the first clips still fit
    assert 'src="../samples/' in small and "over the 0.05 MB embedding budget are linked" in small
    media, _ = open_in_browser(run_dir / "report" / "index.html")
    assert all(a["duration"] > 0 and a["error"] is None for a in media["audio"])  # linked files play too
    build_report(run_dir)
