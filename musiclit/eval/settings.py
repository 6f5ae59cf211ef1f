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
        embedding_models: TorchScript embedding models the user has (CLAP, VGGish audio towers...; see
            :func:`musiclit.eval.embeddings.load_embedding_model`): FAD/KAD on the decoded audio with each.
        copying: Run the memorisation check.
        key_invariant: The melodic check also matches transposed copies.
        training_samples: Also check the run's in-training samples (copying by step).
        bootstrap: Bootstrap resamples of the intervals.
        device: "auto", "cpu", "cuda", ...
        threads: CPU threads for torch. 0 = auto (:func:`auto_threads`): 1 thread for a small decoder (hidden
            size <= 256: the demo's and the tests' models) on the CPU, else torch's default.
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
    embedding_models: tuple[str, ...] = ()
    copying: bool = True
    key_invariant: bool = True
    training_samples: bool = True
    bootstrap: int = 2000
    device: str = "auto"
    threads: int = 0


SMALL_DECODER = 256  # hidden size at or under which sampling on a CPU runs with one thread


def auto_threads(threads: int, device_type: str, hidden_size: int) -> int | None:
    """The torch thread count to use (None: leave torch's default).

    ``threads`` > 0 is taken as given. 0 = auto: one thread for a small decoder on the CPU. Its per-step
    matrices are too small to split between threads, and a second thread only waits for the first; on a
    busy 2-core machine the waiting threads spin (OpenMP's default), which made sampling the demo model
    25x slower with 2 threads than with 1 (docs/evaluate.md).
    """
    if threads > 0:
        return threads
    if device_type == "cpu" and hidden_size <= SMALL_DECODER:
        return 1
    return None
