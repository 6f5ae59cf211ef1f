"""What a training run costs before it runs: decoder tokens per epoch, FLOPs per token, hours and price per GPU.

    python -m musiclit estimate --config configs/base.yaml --config configs/musicgen-medium-lora.yaml \\
        --dataset data/mystyle --epochs 20 --gpu a40 [--price-per-hour 0.79] [--utilization 0.35]

Tokens: one decoder position per codec frame (50 per second of audio at 32 kHz) plus the delay pattern's
tail (``max(delays)`` = 3 positions for every released model). A training epoch sees every training clip
once, cropped to ``data.segment_duration``; validation runs once per epoch over the validation clips.
Durations come from the dataset's manifest (the same split as ``fit``: :func:`load_dataset_entries`).

FLOPs per token (matmul FLOPs; a multiply-add counts 2), with hidden ``d``, ``n`` layers, FFN width ``f``,
``K`` codebooks of ``V`` = 2048 entries, sequence length ``L`` and ``Lt`` text tokens:

- forward, per audio position: ``2 x (n x (4d^2 self-attn + 2d^2 cross q/o + 2df FFN) + K d V heads)`` for the
  linear layers, ``4 n L d`` for self-attention scores and values (SDPA computes the full L x L product),
  ``4 n Lt d`` for cross-attention, plus per sequence ``2 x n x 2 d^2 x Lt`` for the cross-attention keys and
  values of the text, and ``2 r (in + out)`` per adapted linear layer for LoRA.
- backward of a linear layer ``y = x W``: the input gradient ``dy W^T`` costs one forward, the weight gradient
  ``x^T dy`` another. Full fine-tuning needs both (3 x forward: the usual ``6 x params`` per token); with LoRA
  the frozen weights need only input gradients (2 x forward: ``4 x params``), the adapters both. Attention
  has no weights but two inputs (Q and K, then scores and V): its backward is always 2 x its forward.
  The first layer's frozen path below its first adapter needs no input gradient; this is not subtracted
  (a few percent on a 2-layer test model, negligible at 24-48 layers).
- gradient checkpointing recomputes each layer's forward once in the backward: those FLOPs cost time but
  are not "model FLOPs" (the utilisation convention), so they are counted separately.
- not counted: the codec (the token cache encodes each clip once, before training), T5 (states cached per
  caption), optimiser updates, samples generated during training.

Time = FLOPs (with recompute) / (the card's dense bf16 peak x utilisation x GPUs). The utilisation is
ASSUMED (:data:`ASSUMED_UTILIZATION`) for every card until ``tools/bench_train.py`` measures it on that card
(enter the figure in :data:`MEASURED_UTILIZATION`), or ``--utilization`` gives one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from musiclit.data.manifest import load_dataset_entries

VOCAB = 2048
FRAME_RATE = 50  # codec frames per second of every released MusicGen (32 kHz / hop 640)
MAX_DELAY = 3  # delay pattern tail: delays 0..3 (mono) or 0,0,1,1,2,2,3,3 (stereo)
TEXT_TOKENS = 32  # typical caption length in T5 tokens (cross-attention keys/values per sequence)
# hardware FLOP/s over the card's dense bf16 peak. ASSUMED: no GPU measurement of musiclit's training step
# exists yet (docs/benchmarks.md measures CPUs only). A typical figure for a well-fed transformer step at
# ~1,500-token sequences; replace it per card with tools/bench_train.py's MFU on that card.
ASSUMED_UTILIZATION = 0.35
# tools/bench_train.py on the card (model FLOP/s / dense bf16 peak); empty until someone measures.
MEASURED_UTILIZATION: dict[str, float] = {}


@dataclass(frozen=True)
class Gpu:
    """A card: its dense bf16 tensor peak (vendor datasheet, no sparsity), memory and default hourly price.

    Attributes:
        label: Name as printed.
        bf16_tflops: Dense bf16 tensor-core peak, TFLOP/s.
        memory_gib: Memory in GiB.
        price: Default price per GPU-hour in USD (None: not in the seed's table, pass --price-per-hour).
        price_source: Where the default price comes from.
    """

    label: str
    bf16_tflops: float
    memory_gib: float
    price: float | None
    price_source: str


GPUS: dict[str, Gpu] = {
    # GA106: 112 third-generation tensor cores at 1.78 GHz boost; GeForce cards run bf16 with fp32
    # accumulation at half the fp16-accumulate rate (GA102 whitepaper: 71 TFLOP/s on the RTX 3090, scaled)
    "rtx3060": Gpu("RTX 3060 12GB", 25.4, 12, 0.0, "seed's table: your RTX 3060, electricity only"),
    "a40": Gpu("A40 48GB", 149.7, 48, 0.79, "seed's table: RunPod A40 ~$0.79/h"),
    "a100-40gb": Gpu("A100 40GB", 312.0, 40, 1.50, "seed's table: Lambda A100 ~$1.50/h"),
    "a100-80gb": Gpu("A100 80GB", 312.0, 80, 1.50, "seed's table: Lambda A100 ~$1.50/h (the seed names no variant)"),
    "h100": Gpu("H100 80GB SXM", 989.0, 80, None, "not in the seed's table"),
}


@dataclass(frozen=True)
class Arch:
    """What FLOPs depend on.

    Attributes:
        hidden: Decoder width d.
        layers: Decoder layers n.
        ffn: FFN width f.
        codebooks: Codebooks K (LM heads).
        lora_r: LoRA rank; None for full fine-tuning.
        lora_targets: Adapted leaves (q_proj, k_proj, v_proj, out_proj, fc1, fc2), in self- and
            cross-attention alike (peft matches the leaf name in both).
        lora_heads: Whether the LM heads carry adapters too.
        checkpointing: Gradient checkpointing (one more forward per step).
    """

    hidden: int
    layers: int
    ffn: int
    codebooks: int = 4
    lora_r: int | None = 8
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    lora_heads: bool = False
    checkpointing: bool = False

    @classmethod
    def from_spec(cls, spec: Any) -> Arch:
        """From the memory estimate's :class:`musiclit.train.estimate.Spec` (one reading of the config)."""
        return cls(spec.hidden, spec.layers, spec.ffn, spec.codebooks, spec.lora_r, tuple(spec.lora_targets),
                   bool(spec.lora_heads), bool(spec.checkpointing))  # fmt: skip


def sequence_flops(arch: Arch, length: int, text_tokens: int = TEXT_TOKENS) -> dict[str, float]:
    """Matmul FLOPs of one training sequence of ``length`` decoder positions, by part.

    Returns:
        ``forward`` (the forward pass), ``train`` (forward + backward: the model FLOPs of a training step)
        and ``recompute`` (the extra forward of gradient checkpointing, 0 without it).
    """
    d, f, n, k = arch.hidden, arch.ffn, arch.layers, arch.codebooks
    lt, seq = text_tokens, length
    # frozen or trainable linear layers: per audio position and per text token
    per_pos_linear = n * (4 * d * d + 2 * d * d + 2 * d * f) + k * d * VOCAB
    per_text_linear = n * 2 * d * d  # cross-attention k_proj, v_proj over the text states
    linear_fwd = 2 * (per_pos_linear * seq + per_text_linear * lt)
    attention_fwd = n * (4 * seq * seq * d + 4 * seq * lt * d)
    lora_fwd = 0.0
    if arch.lora_r is not None:
        r = arch.lora_r
        sizes = {"q_proj": (d, d), "k_proj": (d, d), "v_proj": (d, d), "out_proj": (d, d), "fc1": (d, f),
                 "fc2": (f, d)}  # fmt: skip
        for leaf in arch.lora_targets:
            shape = 2 * r * sum(sizes[leaf])
            if leaf in ("q_proj", "out_proj"):  # self- and cross-attention, both on audio positions
                lora_fwd += n * shape * 2 * seq
            elif leaf in ("k_proj", "v_proj"):  # self-attention on audio positions, cross on text tokens
                lora_fwd += n * shape * (seq + lt)
            else:
                lora_fwd += n * shape * seq
        if arch.lora_heads:
            lora_fwd += k * 2 * r * (d + VOCAB) * seq
    forward = linear_fwd + attention_fwd + lora_fwd
    # input gradients (+ weight gradients when trained); the text side needs no input gradient (the text
    # states come from the frozen, cached T5; the small text projection of a full fine-tune is not counted)
    linear_bwd = (2 if arch.lora_r is None else 1) * linear_fwd - 2 * per_text_linear * lt
    train = forward + linear_bwd + 2 * attention_fwd + 2 * lora_fwd
    return {"forward": forward, "train": train, "recompute": forward if arch.checkpointing else 0.0}


@dataclass
class EpochWork:
    """The decoder work of one epoch.

    Attributes:
        train_clips: Training clips (each seen once per epoch).
        valid_clips: Validation clips.
        train_tokens: Decoder positions trained per epoch.
        valid_tokens: Decoder positions evaluated per epoch.
        model_flops: Training forward + backward plus validation forward FLOPs per epoch.
        hardware_flops: ``model_flops`` plus gradient checkpointing's recompute.
    """

    train_clips: int
    valid_clips: int
    train_tokens: int
    valid_tokens: int
    model_flops: float
    hardware_flops: float


def positions(seconds: float, segment: float) -> int:
    """Decoder positions of a clip of ``seconds`` cropped to ``segment`` seconds (frames + delay tail)."""
    return int(round(min(seconds, segment) * FRAME_RATE)) + MAX_DELAY


def epoch_work(
    arch: Arch, train_seconds: list[float], valid_seconds: list[float], segment: float, text_tokens: int = TEXT_TOKENS
) -> EpochWork:
    """FLOPs of one epoch over clips of the given durations (training crops and validation crops)."""
    model = hardware = 0.0
    train_tokens = valid_tokens = 0
    for seconds in train_seconds:
        length = positions(seconds, segment)
        parts = sequence_flops(arch, length, text_tokens)
        train_tokens += length
        model += parts["train"]
        hardware += parts["train"] + parts["recompute"]
    for seconds in valid_seconds:
        length = positions(seconds, segment)
        fwd = sequence_flops(arch, length, text_tokens)["forward"]
        valid_tokens += length
        model += fwd
        hardware += fwd
    return EpochWork(len(train_seconds), len(valid_seconds), train_tokens, valid_tokens, model, hardware)


def dataset_durations(data_dir: str | Path, valid_fraction: float = 0.1, split_seed: int = 0) -> tuple[list, list]:
    """Durations (s) of the training and validation clips of a dataset, split as ``fit`` splits it."""
    entries = load_dataset_entries(data_dir, valid_fraction, split_seed)
    train = [e.duration for e in entries if e.split == "train"]
    valid = [e.duration for e in entries if e.split == "valid"]
    return train, valid


@dataclass
class RunCost:
    """Hours and price of a run on one kind of card.

    Attributes:
        gpu: Key in :data:`GPUS`.
        utilization: Hardware FLOP/s over the dense bf16 peak used for the time.
        utilization_source: "ASSUMED", "MEASURED (tools/bench_train.py)" or "given (--utilization)".
        hours_per_epoch: Wall-clock hours per epoch on ``num_gpus`` cards.
        hours: For the whole run.
        price_per_hour: USD per GPU-hour (None: unknown).
        price: USD for the run on ``num_gpus`` cards (None: unknown).
        num_gpus: Cards sharing the work.
    """

    gpu: str
    utilization: float
    utilization_source: str
    hours_per_epoch: float
    hours: float
    price_per_hour: float | None
    price: float | None
    num_gpus: int


def run_cost(
    work: EpochWork,
    epochs: float,
    gpu: str,
    num_gpus: int = 1,
    price_per_hour: float | None = None,
    utilization: float | None = None,
) -> RunCost:
    """Hours per epoch, for ``epochs`` epochs, and the price, on ``num_gpus`` cards of kind ``gpu``.

    Data parallelism is taken as perfectly efficient (the gradients of a LoRA run are megabytes).
    """
    card = GPUS[gpu]
    if utilization is not None:
        util, source = utilization, "given (--utilization)"
    elif gpu in MEASURED_UTILIZATION:
        util, source = MEASURED_UTILIZATION[gpu], "MEASURED (tools/bench_train.py)"
    else:
        util, source = ASSUMED_UTILIZATION, "ASSUMED"
    seconds = work.hardware_flops / (card.bf16_tflops * 1e12 * util * num_gpus)
    per_epoch = seconds / 3600
    hours = per_epoch * epochs
    price = card.price if price_per_hour is None else price_per_hour
    total = None if price is None else price * hours * num_gpus
    return RunCost(gpu, util, source, per_epoch, hours, price, total, num_gpus)


def format_hours(hours: float) -> str:
    """``40 s``, ``4.2 min``, ``12 min``, ``3.2 h``."""
    if hours < 1 / 60:
        return f"{hours * 3600:.0f} s"
    if hours < 1:
        minutes = hours * 60
        return f"{minutes:.1f} min" if minutes < 10 else f"{minutes:.0f} min"
    return f"{hours:.1f} h" if hours < 100 else f"{hours:.0f} h"


def cost_report(
    config: dict[str, Any],
    spec: Any,
    data_dir: str | Path,
    epochs: float | None,
    gpu: str,
    num_gpus: int = 1,
    price_per_hour: float | None = None,
    utilization: float | None = None,
) -> list[str]:
    """The lines ``estimate --dataset`` prints: tokens, FLOPs per token, hours and price on ``gpu`` and on
    every other card (the config read by :func:`musiclit.train.estimate.spec_from_config` as ``spec``)."""
    data = config.get("data") or {}
    trainer = config.get("trainer") or {}
    if epochs is None:
        max_epochs = trainer.get("max_epochs")
        epochs = float(max_epochs) if max_epochs not in (None, -1) else 1.0
    arch = Arch.from_spec(spec)
    train, valid = dataset_durations(data_dir, float(data.get("valid_fraction", 0.1)), int(data.get("split_seed", 0)))
    work = epoch_work(arch, train, valid, spec.seconds)
    per_token = work.model_flops / max(1, work.train_tokens + work.valid_tokens)
    train_per_token = (work.model_flops - _valid_flops(arch, valid, spec.seconds)) / max(1, work.train_tokens)
    recompute = work.hardware_flops / work.model_flops - 1
    kind = "full fine-tune (~6 x params)" if arch.lora_r is None else "LoRA, frozen base (~4 x params)"
    lines = [
        f"COST (ESTIMATE: FLOPs counted from the architecture; utilisation ASSUMED unless measured): {data_dir}",
        f"  {len(train)} training clips ({sum(train) / 60:.1f} min of audio), {len(valid)} validation clips; "
        f"crops of {spec.seconds:g} s",
        f"  decoder tokens per epoch: {work.train_tokens:,} trained + {work.valid_tokens:,} validated",
        f"  model FLOPs per trained token: {train_per_token / 1e9:.2f} GFLOP ({kind}; "
        f"{per_token / 1e9:.2f} averaged with validation)"
        + (f", +{recompute:.0%} recompute for gradient checkpointing" if recompute > 0 else ""),
    ]
    lines.append(f"  {'card':<11}{'peak bf16':>11}{'util':>6}  {'source':<9}{'per epoch':>11}"
                 f"{f'{epochs:g} epochs':>11}{'$/GPU-h':>9}{'price':>10}")  # fmt: skip
    for key in GPUS:
        cost = run_cost(work, epochs, key, num_gpus, price_per_hour if key == gpu else None, utilization)
        price = "-" if cost.price is None else f"${cost.price:,.2f}"
        rate = "-" if cost.price_per_hour is None else f"{cost.price_per_hour:.2f}"
        mark = "*" if key == gpu else " "
        lines.append(f" {mark}{key:<11}{GPUS[key].bf16_tflops:>7.0f} TF{cost.utilization:>6.2f}  "
                     f"{cost.utilization_source.split()[0]:<9}{format_hours(cost.hours_per_epoch):>11}"
                     f"{format_hours(cost.hours):>11}{rate:>9}{price:>10}")  # fmt: skip
    chosen = run_cost(work, epochs, gpu, num_gpus, price_per_hour, utilization)
    card = GPUS[gpu]
    source = "--price-per-hour" if price_per_hour is not None else card.price_source
    price = (f"${chosen.price:,.2f} at ${chosen.price_per_hour:.2f}/GPU-hour ({source})" if chosen.price is not None
             else f"no price ({source}): pass --price-per-hour")  # fmt: skip
    lines.append(f"  {gpu} x {num_gpus}: {format_hours(chosen.hours_per_epoch)} per epoch, "
                 f"{format_hours(chosen.hours)} for {epochs:g} epochs, {price}")  # fmt: skip
    if chosen.utilization_source == "ASSUMED":
        lines.append(f"  utilisation {chosen.utilization:.2f} is ASSUMED: measure it with tools/bench_train.py on the "
                     f"card ({card.label}) and pass --utilization")  # fmt: skip
    return lines


def _valid_flops(arch: Arch, valid: list[float], segment: float) -> float:
    return sum(sequence_flops(arch, positions(s, segment))["forward"] for s in valid)
