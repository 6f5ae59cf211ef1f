"""``python -m musiclit estimate``: predict (and with ``--measure``, measure) peak memory of a training config.

    python -m musiclit estimate --config configs/base.yaml --config configs/musicgen-medium-lora.yaml \\
        [--gpu-memory 12] [--measure]

The prediction is analytic (no weights are loaded): parameter counts by architecture, bytes per parameter
by role (frozen weights in the compute dtype, trainable weights fp32 + grads + AdamW's two moments), and
activations per decoder layer per token with and without checkpointing, SDPA attention (no L x L scores
kept), LoRA inputs and dropout masks, and the K x V logits kept in fp32 for the loss. GPU figures are
ESTIMATES until measured (``--measure`` runs real steps at random init on the GPU, or on the CPU where it
measures the process's peak RSS increase over a few steps, the number the CPU check in the tests uses).
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from musiclit.train.variables import expand_config

GiB = 2**30
MiB = 2**20
# EnCodec 32 kHz (MusicGen's codec) as transformers builds it, float32 on the GPU: 57,584,834 parameters and
# 2,105,348 float buffers (codebooks, their running averages) at 4 bytes, 96 int64 scalars (conv geometry) at 8
# (counted by tests/test_estimate.py on the meta device)
ENCODEC_32K_BYTES = (57_584_834 + 2_105_348) * 4 + 96 * 8
VOCAB = 2048
TEXT_TOKENS = 32
# Eager PyTorch keeps more than the tensors counted below (residual/attention dropout masks and outputs,
# layer-norm statistics, autograd temporaries). Measured on the CPU (peak RSS of real steps, fp32, see
# tests/test_estimate.py): 2.6x the counted activations per layer and 2.0x the counted logits memory, on a
# 256-wide, 1- and 4-layer model; checked on held-out sizes in the test. On a GPU these are estimates.
ACTIVATION_OVERHEAD = 2.6
LOGITS_OVERHEAD = 2.0
# The text-state cache: T5 states of captions already seen, kept in (pinned) host memory, not on the GPU
DEFAULT_TEXT_CACHE_BYTES = 256 * MiB

ARCHS = {
    "small": (1024, 24, 16),
    "medium": (1536, 48, 24),
    "large": (2048, 48, 32),
    "melody": (1536, 48, 24),  # facebook/musicgen-melody (1.5B); musicgen-melody-large has large's sizes
}
CHROMA_FRAMES = 235  # MusicGen-melody's prepended melody (30 s of chroma)

LORA_PRESETS = {
    "qv": ("q_proj", "v_proj"),
    "attention": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "all-linear": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
}


def arch_of(pretrained: str) -> str | None:
    """The released architecture a hub id names (its size first: "musicgen-melody-large" is large-sized)."""
    size = next((n for n in ("small", "medium", "large") if n in pretrained), None)
    return size or ("melody" if "melody" in pretrained else None)


@dataclass
class Spec:
    """What memory depends on. The text-encoder fields describe T5 (t5-base by default: every released model's)."""

    hidden: int
    layers: int
    ffn: int
    codebooks: int = 4
    text_dim: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_kv: int = 64
    text_ff: int = 3072
    text_vocab: int = 32128
    text_buckets: int = 32
    text_gated: bool = False  # T5 v1.1 / flan-t5: two input matrices in every feed-forward block
    codec_bytes: int = ENCODEC_32K_BYTES
    max_positions: int = 2048
    batch: int = 1
    seconds: float = 30.0
    frame_rate: int = 50
    bf16: bool = True  # 16-bit mixed precision (bf16-mixed or 16-mixed): activations in 2 bytes
    frozen_bytes: int | None = None  # bytes of a frozen matmul weight; None: 2 under 16-bit precision, else 4
    lora_r: int | None = 8
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    lora_heads: bool = False
    lora_dropout: float = 0.05
    checkpointing: bool = False
    token_cache: bool = True
    text_cache_bytes: int = DEFAULT_TEXT_CACHE_BYTES
    melody: bool = False  # MusicGen-melody: no cross-attention; melody + text prepended to the decoder input

    @property
    def decoder_matmul_params(self) -> int:
        """Linear and embedding weights of the decoder (what a frozen dtype applies to)."""
        d, f = self.hidden, self.ffn
        # self (+ cross, except melody models, which prepend their conditions) attention q/k/v/out, fc1, fc2
        per_layer = (4 if self.melody else 8) * d * d + 2 * d * f
        return self.layers * per_layer + self.codebooks * (VOCAB + 1) * d + self.codebooks * d * VOCAB

    @property
    def decoder_norm_params(self) -> int:
        """Layer-norm weights and biases of the decoder (always float32)."""
        return self.layers * (2 if self.melody else 3) * 2 * self.hidden + 2 * self.hidden

    @property
    def decoder_params(self) -> int:
        """Every parameter of the decoder (``MusicgenForCausalLM``)."""
        return self.decoder_matmul_params + self.decoder_norm_params

    @property
    def projection_params(self) -> int:
        """The text projection ``enc_to_dec_proj`` (only when the text width differs from the decoder's)."""
        return 0 if self.text_dim == self.hidden else self.text_dim * self.hidden + self.hidden

    @property
    def text_matmul_params(self) -> int:
        """T5 encoder linears and embeddings (shared token embedding, relative position bias)."""
        d, inner = self.text_dim, self.text_heads * self.text_kv
        ff = (3 if self.text_gated else 2) * d * self.text_ff
        return self.text_vocab * d + self.text_buckets * self.text_heads + self.text_layers * (4 * d * inner + ff)

    @property
    def text_norm_params(self) -> int:
        """T5 layer norms (two per block and a final one; always float32)."""
        return (2 * self.text_layers + 1) * self.text_dim

    @property
    def text_params(self) -> int:
        """Every parameter of the T5 text encoder."""
        return self.text_matmul_params + self.text_norm_params

    @property
    def weight_bytes(self) -> int:
        """Bytes of a frozen matmul weight."""
        if self.frozen_bytes is not None:
            return self.frozen_bytes
        return 2 if self.bf16 else 4

    @property
    def prefix_tokens(self) -> int:
        """Decoder positions before the codes: melody models prepend the melody and the text."""
        return CHROMA_FRAMES + TEXT_TOKENS if self.melody else 0

    @property
    def lora_params(self) -> int:
        """Trainable parameters: the adapters, or the decoder and the text projection when fully fine-tuned."""
        if self.lora_r is None:
            return self.decoder_params + self.projection_params
        d, f, r = self.hidden, self.ffn, self.lora_r
        shapes = {"q_proj": (d, d), "k_proj": (d, d), "v_proj": (d, d), "out_proj": (d, d), "fc1": (d, f),
                  "fc2": (f, d)}  # fmt: skip
        per_layer = 0
        for leaf in self.lora_targets:
            i, o = shapes[leaf]
            attention = leaf in ("q_proj", "k_proj", "v_proj", "out_proj")
            per_layer += r * (i + o) * (2 if attention and not self.melody else 1)  # self- and cross-attention
        heads = self.codebooks * r * (d + VOCAB) if self.lora_heads else 0
        return self.layers * per_layer + heads


def estimate(spec: Spec) -> dict[str, float]:
    """Peak training memory by component, in bytes (GPU: what ``torch.cuda.max_memory_allocated`` counts)."""
    a = 2 if spec.bf16 else 4  # bytes of an activation in the compute dtype
    w = spec.weight_bytes  # frozen matmul weights: the compute dtype under frozen_dtype auto
    d, f, layers = spec.hidden, spec.ffn, spec.layers
    frames = int(round(spec.seconds * spec.frame_rate))
    tokens = spec.batch * (frames + spec.codebooks + spec.prefix_tokens)  # delay pattern steps (+ melody prefix)
    full = spec.lora_r is None
    trainable = spec.lora_params
    out: dict[str, float] = {}
    # frozen matmul weights in the frozen dtype; layer norms stay float32 (module.setup casts only linears
    # and embeddings); the sinusoidal position table is a float32 buffer
    frozen_decoder = (
        0 if full else (spec.decoder_matmul_params + spec.projection_params) * w + spec.decoder_norm_params * 4
    )
    out["decoder weights (frozen)"] = frozen_decoder
    out["decoder position table (fp32)"] = spec.max_positions * d * 4
    out["trainable weights + grads + AdamW"] = trainable * 16
    out["text encoder (frozen)"] = spec.text_matmul_params * w + spec.text_norm_params * 4
    out["codec (fp32)"] = spec.codec_bytes
    drop = spec.lora_dropout > 0 and not full
    mask = 1 if drop else 0
    # per layer per token: fp32 residual inputs of the 3 layer norms, LN outputs, q/k/v/attention outputs kept
    # for SDPA's backward, LoRA inputs (dropout outputs + masks), fc1 output (GELU backward), fc2's input
    norms = 2 if spec.melody else 3  # melody layers have no cross-attention (and no norm before it)
    per_token = d * (norms * 4 + norms * a + 4 * a + 3 * a + 2 * a + 3 * (a + mask)) + f * (2 * a + mask)
    if full:
        per_token += d * 2 * a  # inputs of every linear are saved for weight gradients
    layer_acts = ACTIVATION_OVERHEAD * per_token * tokens
    if spec.checkpointing:
        out["activations"] = layers * tokens * d * 4 + layer_acts  # layer inputs + one layer recomputed
    else:
        out["activations"] = layers * layer_acts
    # logits, one codebook at a time (the module never stacks them): every codebook's fp32 log-softmax is
    # kept for the backward; one codebook's transients live at a time: its head output (plus the LoRA
    # branch and the sum when the heads are adapted), the fp32 copy, and in the backward three fp32
    # gradients of the same size
    per_head = spec.batch * (frames + spec.codebooks) * VOCAB
    transient = a * (3 if spec.lora_heads and not full else 1) + 4 + 3 * 4
    out["logits + loss"] = LOGITS_OVERHEAD * per_head * (spec.codebooks * 4 + transient)
    out["text states"] = spec.batch * TEXT_TOKENS * spec.text_dim * 4 * 4
    if not spec.token_cache:
        samples = int(spec.seconds * 32000) * spec.batch
        out["codec activations (no cache)"] = samples * 64 * 4 * 3  # first conv block, 64 filters, fp32
    out["allocator slack (10%)"] = 0.1 * sum(out.values())
    return out


def step_memory(parts: dict[str, float]) -> float:
    """The parts of an estimate a step allocates and frees (what the CPU measurement sees): activations,
    logits and gradients of the trainable weights."""
    trainable = parts["trainable weights + grads + AdamW"] / 16
    return parts["activations"] + parts["logits + loss"] + 4 * trainable


def spec_from_config(config: dict[str, Any], gpu: bool = True) -> Spec:
    """A :class:`Spec` from a resolved musiclit YAML config (``model``/``data``/``trainer`` sections).

    ``model.pretrained`` is read when it is a local config ``.json`` or model folder; a hub id is recognised by
    its size (small/medium/large, stereo).
    """
    model = config.get("model") or {}
    data = config.get("data") or {}
    trainer = config.get("trainer") or {}
    pretrained = str(model.get("pretrained", "facebook/musicgen-small"))
    path = Path(pretrained).expanduser()
    cfg_file = path if path.suffix == ".json" else path / "config.json"
    kwargs: dict[str, Any] = {}
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        dec, t5 = cfg["decoder"], cfg["text_encoder"]
        kwargs.update(hidden=dec["hidden_size"], layers=dec["num_hidden_layers"], ffn=dec["ffn_dim"],
                      codebooks=dec["num_codebooks"], max_positions=dec.get("max_position_embeddings", 2048),
                      text_dim=t5["d_model"], text_layers=t5["num_layers"], text_heads=t5["num_heads"],
                      text_kv=t5["d_kv"], text_ff=t5["d_ff"], text_vocab=t5["vocab_size"],
                      text_buckets=t5.get("relative_attention_num_buckets", 32),
                      text_gated=str(t5.get("feed_forward_proj", "relu")).startswith("gated"),
                      codec_bytes=_codec_bytes(cfg["audio_encoder"]),
                      melody=cfg.get("model_type") == "musicgen_melody")  # fmt: skip
    else:
        arch = arch_of(pretrained)
        if arch is None:
            raise FileNotFoundError(f"{pretrained}: no config file or model folder, and not a released model id")
        d, n, _ = ARCHS[arch]
        kwargs.update(hidden=d, layers=n, ffn=4 * d, codebooks=8 if "stereo" in pretrained else 4,
                      melody="melody" in pretrained)  # fmt: skip
    lora = model.get("lora", {"r": 8, "target_modules": "qv"})
    if lora is None:
        kwargs["lora_r"] = None
    else:
        targets = lora.get("target_modules", "qv")
        kwargs.update(lora_r=int(lora.get("r", 8)), lora_heads=bool(lora.get("lm_heads", False)),
                      lora_targets=LORA_PRESETS[targets] if isinstance(targets, str) else tuple(targets),
                      lora_dropout=float(lora.get("dropout", 0.05)))  # fmt: skip
    precision = str(trainer.get("precision", "bf16-mixed"))
    mixed16 = precision.startswith("bf16") or precision.startswith("16")
    # the frozen dtype the module picks (MusicGenModule.frozen_dtype): "auto" follows the autocast dtype
    frozen = str(model.get("frozen_dtype", "auto"))
    frozen_bytes = (2 if mixed16 else 4) if frozen == "auto" else (4 if frozen == "float32" else 2)
    cache_bytes = model.get("text_cache_bytes", DEFAULT_TEXT_CACHE_BYTES)
    return Spec(
        **kwargs,
        batch=int(data.get("batch_size", 1)),
        seconds=float(data.get("segment_duration", 30.0)),
        bf16=mixed16,
        frozen_bytes=frozen_bytes,
        checkpointing=bool(model.get("gradient_checkpointing", False)),
        token_cache=bool(data.get("token_cache", True)),
        text_cache_bytes=int(cache_bytes or 0),
    )


def _codec_bytes(audio_encoder: dict[str, Any]) -> int:
    """Bytes of a codec's parameters and buffers (float32), counted on the meta device (no memory, no weights)."""
    import torch
    from transformers import EncodecConfig, EncodecModel

    config = EncodecConfig.from_dict(audio_encoder)
    with torch.device("meta"):
        codec = EncodecModel(config)
    return sum(t.numel() * t.element_size() for t in (*codec.parameters(), *codec.buffers()))


def host_memory(spec: Spec) -> dict[str, float]:
    """Host (CPU) memory a training run holds besides the process itself, in bytes.

    The text-state cache keeps the T5 states of captions already seen in pinned host memory (a caption's
    states cross to the GPU in microseconds each step; on the GPU they would take memory the step needs).
    """
    return {"text-state cache (pinned host memory, at most)": float(spec.text_cache_bytes)}


def suggest(spec: Spec, budget: float, effective_batch: int = 8) -> list[str]:
    """Settings that fit ``budget`` bytes: the largest batch without, then with, checkpointing."""
    lines = []
    for ckpt in (False, True):
        best = 0
        for batch in (1, 2, 4, 8, 16):
            trial = Spec(**{**spec.__dict__, "batch": batch, "checkpointing": ckpt})
            if sum(estimate(trial).values()) <= budget:
                best = batch
        if best:
            accum = max(1, math.ceil(effective_batch / best))
            lines.append(f"checkpointing {'on ' if ckpt else 'off'}: batch_size {best} x accumulate_grad_batches "
                         f"{accum} (effective {best * accum})")  # fmt: skip
        else:
            lines.append(f"checkpointing {'on ' if ckpt else 'off'}: does not fit even at batch 1")
    return lines


def load_configs(paths: list[str]) -> dict[str, Any]:
    """Merge YAML configs in order (later ones override, section by section, key by key) and expand their
    ``${MUSICLIT_*}`` variables."""
    import yaml

    merged: dict[str, Any] = {}

    def merge(into: dict[str, Any], new: dict[str, Any]) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict) and "class_path" not in value:
                merge(into[key], value)
            else:
                into[key] = value

    for path in paths:
        merge(merged, yaml.safe_load(Path(path).read_text()) or {})
    return expand_config(merged)  # ${MUSICLIT_*} as `fit` reads them


def measure(config: dict[str, Any], steps: int = 3) -> dict[str, Any]:
    """Run ``steps`` real training steps at random init (same architecture) and return measured memory.

    GPU: ``torch.cuda.max_memory_allocated`` over the steps (weights, optimizer state, activations). CPU:
    the peak RSS increase of the process over the steps after one warm-up step (the warm-up allocates the
    optimizer state and touches the code of every kernel), i.e. activations + logits + gradients, compared
    with the same parts of the estimate (:func:`step_memory`). Also ``step_seconds``: the median time of the
    steps after the warm-up. Under 16-bit precision the compute dtype is bf16, or fp16 (with a gradient
    scaler) on a GPU without native bf16, as ``fit`` would choose.
    """
    import torch

    from musiclit.model.lora import LoraSettings
    from musiclit.train.module import MusicGenModule

    spec = spec_from_config(config)
    model = config.get("model") or {}
    pretrained = str(model.get("pretrained"))
    if arch_of(pretrained) is not None and not Path(pretrained).exists():
        import tempfile

        from musiclit.model.musicgen import real_config_dict  # the real architecture at random init

        tmp = Path(tempfile.mkdtemp()) / "config.json"
        tmp.write_text(json.dumps(real_config_dict(str(arch_of(pretrained)), melody=spec.melody)))
        pretrained = str(tmp)
    lora = model.get("lora", {})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    native_bf16 = device == "cpu" or torch.cuda.is_bf16_supported(including_emulation=False)
    half = torch.bfloat16 if native_bf16 else torch.float16
    frozen = {4: "float32", 2: "bfloat16" if native_bf16 else "float16"}[spec.weight_bytes]
    module = MusicGenModule(pretrained, lora=None if lora is None else LoraSettings(**lora),
                            gradient_checkpointing=spec.checkpointing, frozen_dtype=frozen)  # fmt: skip
    module.setup("fit")
    module.to(device).train()
    frames = int(round(spec.seconds * 50))
    batch = {"codes": torch.randint(0, 2048, (spec.batch, spec.codebooks, frames), device=device),
             "frame_mask": torch.ones(spec.batch, frames, dtype=torch.bool, device=device),
             "captions": ["a calm folk piece with guitar"] * spec.batch}  # fmt: skip
    if spec.melody:
        batch["melody"] = torch.randint(0, 12, (spec.batch, CHROMA_FRAMES), device=device)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    autocast = torch.autocast(device, dtype=half, enabled=spec.bf16)
    scaler = torch.amp.GradScaler(device, enabled=spec.bf16 and half == torch.float16)
    times = []
    for i in range(steps + 1):
        if i == 1 and device == "cpu":
            _reset_peak()
            before = _status("VmRSS")
        elif i == 0 and device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        torch.manual_seed(i)
        start = time.perf_counter()
        with autocast:
            loss = module._batch_loss(batch, 0.3)[0]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i > 0:
            times.append(time.perf_counter() - start)
    step_seconds = statistics.median(times) if times else float("nan")
    compute = str(half if spec.bf16 else torch.float32)
    if device == "cuda":
        return {"device": device, "peak": torch.cuda.max_memory_allocated(), "before_steps": before,
                "step_seconds": step_seconds, "compute_dtype": compute}  # fmt: skip
    return {"device": device, "peak_increase": _status("VmHWM") - before, "before_steps": before,
            "step_seconds": step_seconds, "compute_dtype": compute}  # fmt: skip


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    # hand freed heap pages back first: otherwise the warm-up's freed activations stay resident and the
    # increase measured after it misses them (the measurement then swings with the allocator's caching)
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
