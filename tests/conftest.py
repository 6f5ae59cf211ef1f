"""Shared fixtures: a tiny MusicGen folder and a synthesized dataset (no downloads)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*pad_token_id.*")


@pytest.fixture(autouse=True)
def _finish_wandb_runs():
    """A W&B run left open by one in-process `fit` would swallow the next test's run (its files land in the
    first run's folder), as in one `fit` process per run that a user starts."""
    yield
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init MusicGen folder (config, safetensors weights, tokenizer, processor)."""
    from musiclit.io import quiet_libraries
    from musiclit.model.musicgen import create_tiny_model_folder

    quiet_libraries()
    return create_tiny_model_folder(tmp_path_factory.mktemp("tiny-musicgen"), seed=0)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six synthesized songs of 8 s cut into 4 s clips, with captions and a manifest split by song."""
    from musiclit.data.synth import synthesize_dataset

    root = tmp_path_factory.mktemp("dataset")
    synthesize_dataset(root, n_songs=6, song_seconds=8.0, clip_seconds=4.0, valid_fraction=0.34, seed=0)
    return root
