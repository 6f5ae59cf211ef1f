"""The options of ``evaluate`` (no heavy imports: the command's ``--help`` reads the defaults from here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalSettings:
    """What ``evaluate`` does (every field is a command-line option and a YAML key of ``evaluation:``).

    Attributes:
        scales: Adapter scales scored (0 = base; the largest is "tuned").
        prompts: Validation captions used as prompts (distinct captions, in dataset order).
        samples_per_prompt: Samples per prompt (seeds seed, seed + 1, ...), for base and for tuned.
        seconds: Length of each sample.
        guidance_scale: CFG scale of the samples.
        seed: First sampling seed.
        batch_size: Crops / samples per forward pass.
        max_crops_per_clip: Crops of ``data.segment_duration`` per validation clip (None: cover each clip).
        embedding_window: Seconds of codec latents pooled into one FAD/KAD embedding.
        copying: Run the memorisation check.
        key_invariant: The melodic check also matches transposed copies.
        training_samples: Also check the run's in-training samples (copying by step).
        bootstrap: Bootstrap resamples of the intervals.
        device: "auto", "cpu", "cuda", ...
        threads: CPU threads for torch. 0 = auto: 1 thread for a small decoder (hidden size <= 256, the
            demo's and the tests' models) on the CPU, where per-step work is too small to split and a second
            thread only waits (measured 2-25x slower on a busy 2-core machine, docs/evaluate.md); else
            torch's default.
    """

    scales: tuple[float, ...] = (0.0, 0.5, 1.0)
    prompts: int = 4
    samples_per_prompt: int = 2
    seconds: float = 8.0
    guidance_scale: float = 3.0
    seed: int = 0
    batch_size: int = 4
    max_crops_per_clip: int | None = None
    embedding_window: float = 1.0
    copying: bool = True
    key_invariant: bool = True
    training_samples: bool = True
    bootstrap: int = 2000
    device: str = "auto"
    threads: int = 0
