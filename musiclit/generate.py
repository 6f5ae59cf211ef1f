"""``python -m musiclit generate``: music from a base model, a fine-tune (adapter or checkpoint) or a merged model.

The Python API::

    from musiclit.generate import GenerationParams, load_generator
    gen = load_generator("facebook/musicgen-small", adapter="runs/my-band/adapter")
    result = gen.generate(["dreamy synth pop"], GenerationParams(seconds=45, seed=1))
    result.audio  # (B, C, S) float32 at gen.sample_rate

How it works (and why it is not just ``model.generate``):

* Sampling is musiclit's own KV-cached loop over the decoder with classifier-free guidance (CFG) in one
  doubled batch, top-k / top-p / temperature, and the delay pattern laid out explicitly. In greedy mode it
  returns exactly what transformers' ``generate`` returns (tested).
* Every sample draws its random numbers from its own generator seeded with its own seed, so a sample
  depends on its prompt, seed and parameters, not on the other samples in its batch: the JSON written
  beside each file regenerates it (``--from-json``).
* Audio longer than one window (30 s by default, MusicGen's training length) is generated window by
  window: each new window is conditioned on the last ``context`` seconds of CODES of the previous one (as
  a decoder prompt in the delay-pattern layout) and the codes are stitched, then decoded once, so there
  is no seam in the waveform.
* The adapter strength scales every LoRA update (0 = base model, 1 = the fine-tune as trained); for a
  full fine-tune checkpoint it interpolates the weights between base and fine-tune.
* On a GPU the decoder runs in half precision (the codec and text encoder stay float32).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from musiclit.errors import MusiclitError

# ---------------------------------------------------------------------------------------------- errors


class GenerateError(MusiclitError, ValueError):
    """A problem a user can fix; the message names the file and the problem."""


class AdapterMismatchError(GenerateError):
    """An adapter or checkpoint that does not fit the base model (size, layers, target modules)."""


# ---------------------------------------------------------------------------------------------- params


@dataclass
class GenerationParams:
    """Everything that decides a sample (together with the prompt and the model).

    Attributes:
        seconds: Length of the new audio, in seconds (any length: longer than ``window_seconds`` is
            generated window by window).
        guidance_scale: Classifier-free guidance scale (1 disables guidance; MusicGen's default is 3).
        top_k: Sample among the k most likely tokens (0: no top-k).
        top_p: Nucleus sampling: the smallest set of tokens with this much probability (0 or 1: off).
        temperature: Softmax temperature (0: greedy).
        seed: Seed of the first sample; sample i of a run uses ``seed + i``.
        adapter_scale: Adapter strength: 0 = base model, 1 = the fine-tune, in between dials the style in.
        window_seconds: Longest stretch generated in one pass (MusicGen was trained on 30 s).
        context_seconds: Seconds of the previous window's codes that condition the next window.
        include_prompt: With an audio prompt, start the output with the (re-encoded) prompt.
    """

    seconds: float = 10.0
    guidance_scale: float = 3.0
    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    seed: int = 0
    adapter_scale: float = 1.0
    window_seconds: float = 30.0
    context_seconds: float = 10.0
    include_prompt: bool = True

    def check(self) -> None:
        """Raise :class:`GenerateError` on values that make no sense."""
        if not self.seconds > 0:
            raise GenerateError(f"--seconds must be positive, got {self.seconds}")
        if self.top_k < 0:
            raise GenerateError(f"--top-k must be >= 0, got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise GenerateError(f"--top-p must be in [0, 1], got {self.top_p}")
        if self.temperature < 0:
            raise GenerateError(f"--temperature must be >= 0, got {self.temperature}")
        if self.window_seconds <= 0 or self.context_seconds <= 0:
            raise GenerateError("--window and --context must be positive")
        if self.seconds > self.window_seconds and self.context_seconds >= self.window_seconds:
            raise GenerateError(
                f"--context ({self.context_seconds} s) must be shorter than --window ({self.window_seconds} s) "
                "to generate more than one window"
            )


@dataclass
class GenerationResult:
    """Generated audio and the codes it was decoded from.

    Attributes:
        audio: (B, C, S) float32 audio at ``sample_rate``.
        codes: (B, K, T) codec codes (prompt codes first when the prompt is included).
        sample_rate: Audio sample rate, Hz.
        seeds: The seed of each sample.
        prompt_frames: Frames at the start of ``codes`` that come from the audio prompt.
    """

    audio: Any
    codes: Any
    sample_rate: int
    seeds: list[int]
    prompt_frames: int = 0


# ---------------------------------------------------------------------------------------------- loading


@dataclass
class FineTune:
    """A loaded model: the base with an adapter injected (LoRA), fine-tuned weights (full) or alone.

    Attributes:
        model: ``PeftModel`` for LoRA, else ``MusicgenForConditionalGeneration``.
        loaded: The base's :class:`~musiclit.model.musicgen.LoadedMusicGen` (rates, codebooks, tokenizer).
        kind: "lora", "full" or "plain" (a base or merged model without adapter).
        base_source: Where the base came from (hub id, folder or config file).
        adapter_source: The adapter folder or checkpoint file (None for "plain").
        init_seed: Seed of the random init when the base is a config file.
        lora: The LoRA settings of a musiclit checkpoint (None otherwise).
    """

    model: Any
    loaded: Any
    kind: str
    base_source: str
    adapter_source: str | None = None
    init_seed: int = 0
    lora: dict[str, Any] | None = None
    full_scale: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> Any:
        """The ``MusicgenForConditionalGeneration`` (adapters injected for LoRA)."""
        from musiclit.model.lora import base_model

        return base_model(self.model)


def _resolve_source(source: str, search: Sequence[Path] = ()) -> str:
    """A local path made absolute when it exists (as given, else under one of ``search``); hub ids unchanged."""
    path = Path(source).expanduser()
    if path.exists():
        return str(path.resolve())
    if not path.is_absolute():
        for folder in search:
            if (folder / path).exists():
                return str((folder / path).resolve())
    return source


def _load_base(source: str, init_seed: int, what: str) -> Any:
    from musiclit.model.musicgen import ModelLoadError, load_musicgen

    try:
        return load_musicgen(source, init_seed=init_seed)
    except ModelLoadError as err:
        raise GenerateError(f"{what}: cannot load its base model: {err}") from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a musiclit checkpoint (``.ckpt``) on the CPU, with a clear error when it is not one."""
    import torch

    path = Path(path)
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise GenerateError(f"{path}: checkpoint not found") from None
    except Exception as err:
        raise GenerateError(f"{path}: cannot read the checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise GenerateError(f"{path}: not a musiclit checkpoint (no state_dict / hyper_parameters)")
    return ckpt


def _lora_dict(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if is_dataclass(value):
        return asdict(value)  # type: ignore[arg-type]
    if isinstance(value, dict):
        return dict(value.get("init_args", value)) if "class_path" in value else dict(value)
    raise GenerateError(f"unexpected LoRA settings in checkpoint: {value!r}")


def _check_state(path: Path, model: Any, state: dict[str, Any], base_source: str) -> None:
    """Compare weights from a file with the model they should load into; explain any mismatch."""
    have = model.state_dict()
    missing = sorted(k for k in have if k not in state and _trainable_like(k, state))
    unexpected = sorted(k for k in state if k not in have)
    if unexpected:
        raise AdapterMismatchError(
            f"{path}: {len(unexpected)} weights match no module of the base model '{base_source}' "
            f"(e.g. {unexpected[0]}); the adapter was made for other target modules or another architecture "
            "(use --model to give the base it was trained on)"
        )
    for key, value in state.items():
        if tuple(have[key].shape) != tuple(value.shape):
            raise AdapterMismatchError(
                f"{path}: weight {key} has shape {tuple(value.shape)} but the base model '{base_source}' needs "
                f"{tuple(have[key].shape)}: the adapter was trained on a different model size "
                "(use --model to give the base it was trained on)"
            )
    if missing:
        raise AdapterMismatchError(
            f"{path}: {len(missing)} weights the model needs are missing (e.g. {missing[0]}): the base model "
            f"'{base_source}' has more layers/modules than the one it was trained on, or the LoRA settings differ"
        )


def _trainable_like(key: str, state: dict[str, Any]) -> bool:
    """Keys of the same kind as the ones in ``state`` (LoRA weights if it holds LoRA weights)."""
    if any(".lora_" in k for k in state):
        return ".lora_A." in key or ".lora_B." in key
    return key.startswith(("decoder.", "enc_to_dec_proj."))


def _load_checkpoint(path: Path, model_override: str | None, init_seed: int | None, scale: float) -> FineTune:
    from musiclit.model.lora import LoraSettings, apply_lora

    ckpt = read_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    seed = int(hp.get("init_seed", 0) if init_seed is None else init_seed)
    source = _resolve_source(model_override or str(hp.get("pretrained", "")), list(path.resolve().parents)[:4])
    loaded = _load_base(source, seed, str(path))
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    lora = _lora_dict(hp.get("lora"))
    model = loaded.model
    if lora is not None:
        settings = LoraSettings(**{k: v for k, v in lora.items() if k in {f.name for f in fields(LoraSettings)}})
        settings.init_lora_weights = True  # overwritten by the checkpoint's weights
        settings.dropout = 0.0
        try:
            model = apply_lora(model, settings)
        except ValueError as err:
            raise AdapterMismatchError(f"{path}: its LoRA settings do not fit the base '{source}': {err}") from None
        _check_state(path, model, state, source)
        model.load_state_dict(state, strict=False)
        kind = "lora"
    else:
        _check_state(path, model, state, source)
        if scale != 1.0:
            with _no_grad():
                current = model.state_dict()
                state = {k: current[k].float() + scale * (v.float() - current[k].float()) for k, v in state.items()}
        model.load_state_dict(state, strict=False)
        kind = "full"
    model.eval()
    return FineTune(model, loaded, kind, source, str(path), seed, lora, full_scale=scale)


@contextlib.contextmanager
def _no_grad() -> Iterator[None]:
    import torch

    with torch.no_grad():
        yield


def _adapter_weights(folder: Path) -> dict[str, Any]:
    import torch

    st = folder / "adapter_model.safetensors"
    if st.exists():
        from safetensors.torch import load_file

        return load_file(str(st))
    binf = folder / "adapter_model.bin"
    if binf.exists():
        return torch.load(str(binf), map_location="cpu", weights_only=True)
    raise GenerateError(f"{folder}: no adapter_model.safetensors (or adapter_model.bin) in the adapter folder")


def _targets(config: dict[str, Any], names: list[str]) -> list[str]:
    """Module names a peft LoRA config selects (the same rule peft uses: full regex match or name suffix)."""
    target = config.get("target_modules")
    if isinstance(target, str):
        return [n for n in names if re.fullmatch(target, n)]
    target = list(target or [])
    return [n for n in names if any(n == t or n.endswith("." + t) for t in target)]


def check_adapter(folder: str | Path, base: Any, base_source: str = "the base model") -> None:
    """Check that a peft adapter folder fits ``base`` before peft loads it.

    Raises:
        AdapterMismatchError: The target modules select no module, other modules than the adapter has
            weights for, or the weight shapes differ (another model size).
    """
    import torch

    folder = Path(folder)
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterMismatchError(f"{folder}: a {config.get('peft_type')} adapter; musiclit generates with LoRA")
    modules = dict(base.named_modules())
    selected = {n for n in _targets(config, list(modules)) if isinstance(modules[n], torch.nn.Linear)}
    weights = _adapter_weights(folder)
    adapted: dict[str, dict[str, Any]] = {}
    for key, value in weights.items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[\w-]+)?\.weight", key)
        if m:
            adapted.setdefault(m.group(1), {})[m.group(2)] = value
    if not selected:
        raise AdapterMismatchError(
            f"{folder}: its target modules {config.get('target_modules')!r} match no layer of {base_source}: "
            "the adapter was made for another model"
        )
    unknown = sorted(set(adapted) - set(modules))
    if unknown:
        raise AdapterMismatchError(
            f"{folder}: the adapter has weights for {len(unknown)} modules that {base_source} does not have "
            f"(e.g. {unknown[0]}): another architecture or more layers than this base"
        )
    not_targeted = sorted(set(adapted) - selected)
    if not_targeted:
        raise AdapterMismatchError(
            f"{folder}: the adapter has weights for {len(not_targeted)} modules that its target_modules do not "
            f"select (e.g. {not_targeted[0]}); adapter_config.json does not belong to these weights"
        )
    without = sorted(selected - set(adapted))
    if without:
        raise AdapterMismatchError(
            f"{folder}: its target modules select {len(selected)} layers of {base_source} but it has weights for "
            f"{len(adapted)} (e.g. none for {without[0]}): the base has more layers than the model it was "
            "trained on"
        )
    for name, ab in sorted(adapted.items()):
        linear = modules[name]
        a, b = ab.get("A"), ab.get("B")
        if a is None or b is None:
            raise AdapterMismatchError(f"{folder}: module {name} has only one of lora_A / lora_B")
        if a.shape[1] != linear.in_features or b.shape[0] != linear.out_features:
            raise AdapterMismatchError(
                f"{folder}: the adapter of {name} maps {a.shape[1]} -> {b.shape[0]} features but {base_source} "
                f"has {linear.in_features} -> {linear.out_features}: the adapter was trained on another model "
                "size (use --model to give the base it was trained on)"
            )


def _load_adapter_folder(folder: Path, model_override: str | None, init_seed: int | None) -> FineTune:
    from peft import PeftModel

    cfg_path = folder / "adapter_config.json"
    if not cfg_path.is_file():
        raise GenerateError(f"{folder}: not a peft adapter folder (no adapter_config.json)")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise GenerateError(f"{cfg_path}: invalid JSON ({err})") from None
    base_name = model_override or config.get("base_model_name_or_path")
    if not base_name:
        raise GenerateError(f"{cfg_path}: names no base model; pass --model")
    source = _resolve_source(base_name, list(folder.resolve().parents)[:4])
    seed = 0 if init_seed is None else init_seed
    loaded = _load_base(source, seed, str(folder))
    check_adapter(folder, loaded.model, f"the base model '{source}'")
    model = PeftModel.from_pretrained(loaded.model, str(folder), is_trainable=False)
    model.eval()
    return FineTune(model, loaded, "lora", source, str(folder), seed)


def load_finetune(
    model: str | None = None, adapter: str | None = None, init_seed: int | None = None, full_scale: float = 1.0
) -> FineTune:
    """Load a base (or merged) model and optionally an adapter: a peft folder or a musiclit checkpoint.

    Args:
        model: Hub id, model folder or config ``.json``; optional with an adapter that names its base
            (a checkpoint's ``pretrained``, an adapter folder's ``base_model_name_or_path``).
        adapter: A peft adapter folder or a musiclit ``.ckpt``.
        init_seed: Random-init seed of a config-file base (default: the checkpoint's, else 0).
        full_scale: For a full fine-tune checkpoint: interpolate weights (0 = base, 1 = fine-tune).

    Raises:
        GenerateError: A missing/unreadable file; AdapterMismatchError: an adapter that does not fit.
    """
    if adapter is None:
        if model is None:
            raise GenerateError("give --model (a base or merged model) and/or --adapter")
        source = _resolve_source(model)
        seed = 0 if init_seed is None else init_seed
        loaded = _load_base(source, seed, source)
        loaded.model.eval()
        return FineTune(loaded.model, loaded, "plain", source, None, seed)
    path = Path(adapter).expanduser()
    if path.is_dir():
        return _load_adapter_folder(path, model, init_seed)
    if path.is_file():
        return _load_checkpoint(path, model, init_seed, full_scale)
    raise GenerateError(f"{path}: no such adapter folder or checkpoint file")


# ---------------------------------------------------------------------------------------------- sampling


def _pick(logits: Any, u: Any, top_k: int, top_p: float, temperature: float) -> Any:
    """Choose one token per row of ``logits`` (..., V) with uniforms ``u`` (...): inverse-CDF sampling."""
    import torch

    if temperature <= 0:
        return logits.argmax(-1)
    vocab = logits.shape[-1]
    k = vocab if top_k <= 0 else min(top_k, vocab)
    vals, idx = (logits / temperature).topk(k, dim=-1)  # sorted, most likely first
    probs = torch.softmax(vals, dim=-1)
    if 0.0 < top_p < 1.0:
        before = probs.cumsum(-1) - probs  # mass of the more likely tokens
        probs = probs.masked_fill(before >= top_p, 0.0)
    cdf = probs.cumsum(-1)
    target = (u.to(cdf.dtype) * cdf[..., -1]).unsqueeze(-1)
    choice = torch.searchsorted(cdf.contiguous(), target.contiguous()).clamp_(max=k - 1)
    return idx.gather(-1, choice).squeeze(-1)


class Generator:
    """A loaded model ready to generate (see the module docstring).

    Args:
        finetune: What :func:`load_finetune` returned.
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1"...
        dtype: "auto" (float16 on a GPU, float32 on the CPU), "float32", "float16" or "bfloat16": the
            decoder's dtype. The text encoder and the codec stay float32.
    """

    def __init__(self, finetune: FineTune, device: str = "auto", dtype: str = "auto") -> None:
        import torch

        self.finetune = finetune
        self.device = torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        )
        if dtype == "auto":
            dtype = "float16" if self.device.type == "cuda" else "float32"
        if dtype not in ("float32", "float16", "bfloat16"):
            raise GenerateError(f"--dtype must be auto, float32, float16 or bfloat16, got {dtype}")
        self.dtype = getattr(torch, dtype)
        loaded = finetune.loaded
        self.tokenizer = loaded.tokenizer
        self.sample_rate = loaded.sample_rate
        self.frame_rate = loaded.frame_rate
        self.num_codebooks = loaded.num_codebooks
        self.audio_channels = loaded.audio_channels
        self.special_token = loaded.pad_token_id
        from musiclit.model.delay import codebook_delays

        self.delays = codebook_delays(self.num_codebooks, self.audio_channels)
        base = finetune.base
        base.to(self.device)
        base.decoder.to(self.dtype)
        if getattr(base, "enc_to_dec_proj", None) is not None:
            base.enc_to_dec_proj.to(self.dtype)
        base.eval()
        self.max_positions = int(base.config.decoder.max_position_embeddings)
        self._decoder = base.decoder.model.decoder
        import inspect

        self._cache_kw = (
            "cache" if "cache" in inspect.signature(self._decoder.forward).parameters else "past_key_values"
        )

    # ------------------------------------------------------------------ properties
    @property
    def base(self) -> Any:
        """The ``MusicgenForConditionalGeneration`` (adapters injected)."""
        return self.finetune.base

    @property
    def model(self) -> Any:
        """The peft model (LoRA) or the plain model."""
        return self.finetune.model

    # ------------------------------------------------------------------ adapter strength
    @contextlib.contextmanager
    def adapter_strength(self, scale: float) -> Iterator[None]:
        """Scale every LoRA update by ``scale`` inside the block (0: the base model exactly)."""
        from peft.tuners.lora import LoraLayer

        if self.finetune.kind != "lora":
            if scale != self.finetune.full_scale:
                what = (
                    "a full fine-tune: give its strength when loading (load_generator(..., adapter_scale=s))"
                    if self.finetune.kind == "full"
                    else "no adapter (a base or merged model)"
                )
                raise GenerateError(f"adapter strength {scale} needs a LoRA adapter; this is {what}")
            yield
            return
        if scale == 0.0:
            with self.model.disable_adapter():
                yield
            return
        saved = []
        for module in self.base.modules():
            if isinstance(module, LoraLayer):
                saved.append((module, dict(module.scaling)))
                for name in module.scaling:
                    module.scaling[name] = module.scaling[name] * scale
        try:
            yield
        finally:
            for module, scaling in saved:
                module.scaling.clear()
                module.scaling.update(scaling)

    # ------------------------------------------------------------------ conditioning / codec
    def encode_text(self, prompts: Sequence[str]) -> tuple[Any, Any]:
        """Decoder-ready text states (B, Lt, D) and mask (B, Lt); each distinct prompt is encoded on its own
        (so a sample does not depend on the other prompts in its batch). An empty prompt is unconditional."""
        import torch

        base = self.base
        states: dict[str, Any] = {}
        for text in dict.fromkeys(prompts):
            if not text.strip():
                states[text] = None
                continue
            tokens = self.tokenizer([text], return_tensors="pt", truncation=True).to(self.device)
            with torch.inference_mode():
                h = base.text_encoder(**tokens).last_hidden_state[0]
                if getattr(base, "enc_to_dec_proj", None) is not None and (
                    base.text_encoder.config.hidden_size != base.decoder.config.hidden_size
                    and base.decoder.config.cross_attention_hidden_size is None
                ):
                    h = base.enc_to_dec_proj(h.to(self.dtype))
            states[text] = h.to(self.dtype)
        length = max([1] + [s.shape[0] for s in states.values() if s is not None])
        dim = base.decoder.config.hidden_size
        out = torch.zeros((len(prompts), length, dim), dtype=self.dtype, device=self.device)
        mask = torch.zeros((len(prompts), length), dtype=torch.long, device=self.device)
        for i, text in enumerate(prompts):
            s = states[text]
            if s is not None:
                out[i, : s.shape[0]] = s
                mask[i, : s.shape[0]] = 1
        return out, mask

    def encode_audio(self, wav: Any) -> Any:
        """Codes (K, T) of (C, S) audio at the model's sample rate (stereo models: L/R interleaved)."""
        import torch

        codec = self.base.audio_encoder
        x = torch.as_tensor(wav, dtype=torch.float32, device=self.device)
        if x.ndim == 1:
            x = x[None]
        bandwidth = codec.config.target_bandwidths[0] if codec.config.target_bandwidths else None
        with torch.inference_mode():

            def enc(channel: Any) -> Any:
                return codec.encode(channel[None], bandwidth=bandwidth).audio_codes[0, 0]

            if self.audio_channels == 2:
                x = x if x.shape[0] == 2 else x.expand(2, -1)
                codes = torch.stack([enc(x[:1]), enc(x[1:2])], dim=1).flatten(0, 1)
            else:
                codes = enc(x.mean(0, keepdim=True))
        return codes.long()

    def decode(self, codes: Any) -> Any:
        """(B, C, S) float32 audio of (B, K, T) codes, decoded in one pass."""
        import torch

        codec = self.base.audio_encoder
        with torch.inference_mode():
            if self.audio_channels == 2:
                left = codec.decode(codes[None, :, ::2], [None]).audio_values
                right = codec.decode(codes[None, :, 1::2], [None]).audio_values
                audio = torch.cat([left, right], dim=1)
            else:
                audio = codec.decode(codes[None], [None]).audio_values
        hop = self.sample_rate // self.frame_rate
        return audio[..., : codes.shape[-1] * hop].float().cpu()

    # ------------------------------------------------------------------ the sampling loop
    def _forward(self, ids: Any, enc: Any, mask: Any, cache: Any) -> tuple[Any, Any]:
        kwargs = {self._cache_kw: cache} if cache is not None else {}
        out = self._decoder(
            input_ids=ids, encoder_hidden_states=enc, encoder_attention_mask=mask, use_cache=True, **kwargs
        )
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = out.past_key_values
        return out.last_hidden_state[:, -1], new_cache

    def sample_window(
        self,
        enc: Any,
        enc_mask: Any,
        frames: int,
        params: GenerationParams,
        generators: Sequence[Any],
        prompt: Any | None = None,
    ) -> Any:
        """Generate one window of ``frames`` frames (the first ``prompt.shape[-1]`` of them given).

        Args:
            enc: (B, Lt, D) text states from :meth:`encode_text`; enc_mask: (B, Lt).
            frames: Frames in the window, prompt included.
            params: Sampling parameters.
            generators: One CPU ``torch.Generator`` per row (each sample's own random stream).
            prompt: (B, K, P) codes to continue, P < frames, or None.

        Returns:
            (B, K, frames) codes.
        """
        import torch

        bsz, num_cb = enc.shape[0], self.num_codebooks
        max_delay = max(self.delays)
        length = frames + max_delay + 1  # BOS + delayed frames
        given = 0 if prompt is None else int(prompt.shape[-1])
        if given >= frames:
            raise GenerateError(f"the prompt ({given} frames) must be shorter than the window ({frames} frames)")
        if length > self.max_positions:
            raise GenerateError(
                f"a window of {frames / self.frame_rate:.1f} s needs {length} positions; this model has "
                f"{self.max_positions} (use a shorter --window)"
            )
        seq = torch.full((bsz, num_cb, length), -1, dtype=torch.long, device=self.device)
        for k, d in enumerate(self.delays):
            seq[:, k, : 1 + d] = self.special_token
            seq[:, k, 1 + d + frames :] = self.special_token
            if given:
                seq[:, k, 1 + d : 1 + d + given] = prompt[:, k].to(self.device)
        start = given + 1  # the first position with a token to sample (codebook 0, frame `given`)
        steps = length - start
        uniforms = torch.stack([torch.rand((steps, num_cb), generator=g) for g in generators]).to(self.device)
        guided = params.guidance_scale != 1.0
        if guided:
            enc = torch.cat([enc, torch.zeros_like(enc)])
            enc_mask = torch.cat([enc_mask, torch.zeros_like(enc_mask)])
        rows = enc.shape[0]
        heads = self.base.decoder.lm_heads
        inputs = seq[:, :, :start]
        cache = None
        with torch.inference_mode(), self.adapter_strength(params.adapter_scale):
            for i, pos in enumerate(range(start, length)):
                ids = torch.cat([inputs, inputs]) if guided else inputs
                hidden, cache = self._forward(ids.reshape(rows * num_cb, -1), enc, enc_mask, cache)
                logits = torch.stack([head(hidden) for head in heads], dim=1).float()  # (rows, K, V)
                if guided:
                    cond, uncond = logits.split(bsz)
                    logits = uncond + (cond - uncond) * params.guidance_scale
                tokens = _pick(logits, uniforms[:, i], params.top_k, params.top_p, params.temperature)
                known = seq[:, :, pos]
                tokens = torch.where(known >= 0, known, tokens)
                seq[:, :, pos] = tokens
                inputs = tokens[..., None]
        return torch.stack([seq[:, k, 1 + d : 1 + d + frames] for k, d in enumerate(self.delays)], dim=1)

    def generate_codes(
        self,
        prompts: Sequence[str],
        params: GenerationParams,
        seeds: Sequence[int] | None = None,
        prompt_codes: Any | None = None,
    ) -> Any:
        """Codes (B, K, P + new) for one batch: windowed continuation beyond ``params.window_seconds``.

        Args:
            prompts: One text per sample ("" = unconditional).
            params: The parameters.
            seeds: One seed per sample (default ``params.seed + i``).
            prompt_codes: (K, P) or (B, K, P) codes to continue (an audio prompt), or None.
        """
        import torch

        params.check()
        seeds = [params.seed + i for i in range(len(prompts))] if seeds is None else list(seeds)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        enc, enc_mask = self.encode_text(list(prompts))
        window = round(params.window_seconds * self.frame_rate)
        context = round(params.context_seconds * self.frame_rate)
        total = max(1, round(params.seconds * self.frame_rate))
        bsz = len(prompts)
        if prompt_codes is not None:
            codes = prompt_codes.to(self.device).long()
            if codes.ndim == 2:
                codes = codes[None].expand(bsz, -1, -1)
            codes = codes[..., -(window - 1) :]  # the longest prompt one window can hold
        else:
            codes = torch.zeros((bsz, self.num_codebooks, 0), dtype=torch.long, device=self.device)
        prompt_frames = codes.shape[-1]
        done = 0
        first = True
        while done < total:
            ctx = codes if first else codes[..., -context:]
            new = min(total - done, window - ctx.shape[-1])
            if new <= 0:
                raise GenerateError(
                    f"--context ({params.context_seconds} s) must be shorter than --window ({params.window_seconds} s)"
                )
            out = self.sample_window(
                enc, enc_mask, ctx.shape[-1] + new, params, generators, ctx if ctx.shape[-1] else None
            )
            codes = torch.cat([codes, out[..., ctx.shape[-1] :]], dim=-1)
            done += new
            first = False
        return codes if params.include_prompt else codes[..., prompt_frames:]

    def generate(
        self,
        prompts: Sequence[str],
        params: GenerationParams | None = None,
        seeds: Sequence[int] | None = None,
        prompt_audio: Any | None = None,
        batch_size: int = 8,
    ) -> GenerationResult:
        """Generate one sample per prompt (repeat a prompt for several samples), in batches.

        Args:
            prompts: One text per sample.
            params: Sampling parameters (default :class:`GenerationParams`).
            seeds: One seed per sample (default ``params.seed + i``).
            prompt_audio: (C, S) audio at the model's sample rate to continue, or None.
            batch_size: Samples per forward pass.
        """
        import torch

        params = params or GenerationParams()
        seeds = [params.seed + i for i in range(len(prompts))] if seeds is None else list(seeds)
        if len(seeds) != len(prompts):
            raise GenerateError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        prompt_codes = self.encode_audio(prompt_audio) if prompt_audio is not None else None
        window = round(params.window_seconds * self.frame_rate)
        pf = 0 if prompt_codes is None else min(prompt_codes.shape[-1], window - 1)
        all_codes = []
        for i in range(0, len(prompts), max(1, batch_size)):
            all_codes.append(
                self.generate_codes(prompts[i : i + batch_size], params, seeds[i : i + batch_size], prompt_codes)
            )
        codes = torch.cat(all_codes)
        # one sample at a time: the codec's numerics then do not depend on the batch (exact regeneration)
        audio = torch.cat([self.decode(codes[i : i + 1]) for i in range(codes.shape[0])])
        return GenerationResult(audio, codes.cpu(), self.sample_rate, seeds, pf if params.include_prompt else 0)


def load_generator(
    model: str | None = None,
    adapter: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    init_seed: int | None = None,
    adapter_scale: float = 1.0,
) -> Generator:
    """Load a model (+ adapter) for generation; see :func:`load_finetune` and :class:`Generator`.

    ``adapter_scale`` matters here only for a full fine-tune checkpoint (weights interpolated at load);
    LoRA strength is a per-call parameter (``GenerationParams.adapter_scale``).
    """
    return Generator(load_finetune(model, adapter, init_seed, full_scale=adapter_scale), device, dtype)


# ---------------------------------------------------------------------------------------------- files


def _slug(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return slug or "unconditional"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_prompts(prompts: Sequence[str] | None, prompts_file: str | None) -> list[str]:
    """Prompts from the command line and/or a file (one per line; blank lines and # comments skipped)."""
    out = list(prompts or [])
    if prompts_file:
        path = Path(prompts_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise GenerateError(f"{path}: cannot read the prompts file ({err.strerror})") from None
        file_prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not file_prompts:
            raise GenerateError(f"{path}: no prompts in the file (one per line)")
        out.extend(file_prompts)
    return out


def write_samples(
    gen: Generator,
    result: GenerationResult,
    prompts: Sequence[str],
    params: GenerationParams,
    out_dir: str | Path,
    formats: Sequence[str] = ("wav",),
    sample_offset: int = 0,
    prompt_audio: str | None = None,
) -> list[Path]:
    """Write each sample as WAV/FLAC with a JSON beside it holding the prompt, seed and every parameter."""
    from musiclit import __version__
    from musiclit.data.audio import write_audio
    from musiclit.data.caption import write_json_atomic

    out_dir = Path(out_dir)
    written = []
    ft = gen.finetune
    audio_info = None
    if prompt_audio:
        audio_info = {"path": str(Path(prompt_audio).resolve()), "sha256": _sha256(Path(prompt_audio))}
    for i, (prompt, seed) in enumerate(zip(prompts, result.seeds, strict=False)):
        stem = f"{sample_offset + i:03d}-{_slug(prompt)}-seed{seed}"
        files = []
        for fmt in formats:
            path = out_dir / f"{stem}.{fmt}"
            write_audio(path, result.audio[i].numpy(), result.sample_rate)
            files.append(path.name)
            written.append(path)
        p = asdict(params)
        p["seed"] = seed
        meta = {
            "musiclit_version": __version__,
            "prompt": prompt,
            "seed": seed,
            "params": p,
            "model": ft.base_source,
            "adapter": ft.adapter_source,
            "adapter_kind": ft.kind,
            "init_seed": ft.init_seed,
            "prompt_audio": audio_info,
            "files": files,
            "sample_rate": result.sample_rate,
            "frames": int(result.codes.shape[-1]),
            "prompt_frames": result.prompt_frames,
            "seconds_total": result.audio.shape[-1] / result.sample_rate,
            "device": str(gen.device),
            "dtype": str(gen.dtype).replace("torch.", ""),
            "regenerate": f"python -m musiclit generate --from-json {stem}.json",
        }
        write_json_atomic(out_dir / f"{stem}.json", meta)
    return written


def _from_json(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise GenerateError(f"{path}: cannot read the sample's JSON ({err})") from None
    for key in ("prompt", "seed", "params", "model"):
        if key not in meta:
            raise GenerateError(f"{path}: not a musiclit sample JSON (no '{key}')")
    return meta


# ---------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The ``generate`` command's argument parser."""
    d = GenerationParams()
    p = argparse.ArgumentParser(
        prog="python -m musiclit generate",
        description=(
            "Generate music with a base model, a fine-tune (peft adapter folder or musiclit checkpoint) or a "
            "merged model. Each sample is written as WAV (and/or FLAC) with a JSON beside it holding the "
            "prompt, seed and every parameter; --from-json regenerates a sample exactly."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_argument_group("model")
    src.add_argument(
        "--model",
        help="base or merged model: hub id, model folder or config .json "
        "(default: the base the adapter/checkpoint names)",
    )
    src.add_argument("--adapter", help="peft adapter folder (run/adapter) or musiclit checkpoint (.ckpt)")
    src.add_argument(
        "--adapter-scale",
        type=float,
        default=d.adapter_scale,
        help="adapter strength: 0 = base model, 1 = the fine-tune as trained",
    )
    src.add_argument("--init-seed", type=int, default=None, help="random-init seed of a config-file base")
    src.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    src.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "float16", "bfloat16"],
        help="decoder dtype (auto: float16 on a GPU, float32 on the CPU)",
    )
    what = p.add_argument_group("what to generate")
    what.add_argument("--prompt", action="append", help="a text prompt (repeat for several)")
    what.add_argument("--prompts-file", help="a text file with one prompt per line")
    what.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    what.add_argument("--prompt-audio", help="an audio file to continue from (its last seconds, up to a window)")
    what.add_argument("--no-include-prompt", action="store_true", help="leave the audio prompt out of the output")
    what.add_argument("--from-json", help="regenerate the sample described by a JSON this command wrote")
    samp = p.add_argument_group("sampling")
    samp.add_argument("--seconds", type=float, default=d.seconds, help="length of the new audio")
    samp.add_argument("--guidance-scale", type=float, default=d.guidance_scale, help="CFG scale (1 = off)")
    samp.add_argument("--top-k", type=int, default=d.top_k, help="top-k sampling (0 = off)")
    samp.add_argument("--top-p", type=float, default=d.top_p, help="nucleus sampling (0 = off)")
    samp.add_argument("--temperature", type=float, default=d.temperature, help="softmax temperature (0 = greedy)")
    samp.add_argument("--seed", type=int, default=d.seed, help="seed of the first sample (sample i: seed + i)")
    samp.add_argument("--window", type=float, default=d.window_seconds, help="seconds generated per window")
    samp.add_argument(
        "--context",
        type=float,
        default=d.context_seconds,
        help="seconds of the previous window kept as the prompt of the next",
    )
    samp.add_argument("--batch-size", type=int, default=4, help="samples per forward pass")
    out = p.add_argument_group("output")
    out.add_argument("--out", default="outputs/generate", help="output folder")
    out.add_argument("--format", default="wav", choices=["wav", "flac", "both"], help="audio file format")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``generate``; returns the exit code (2 for a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except GenerateError as err:
        print(f"musiclit generate: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from musiclit.cli import quiet_libraries

    quiet_libraries()
    formats = ["wav", "flac"] if args.format == "both" else [args.format]
    if args.from_json:
        meta = _from_json(Path(args.from_json))
        known = {f.name for f in fields(GenerationParams)}
        params = GenerationParams(**{k: v for k, v in meta["params"].items() if k in known})
        prompts, seeds = [meta["prompt"]], [int(meta["seed"])]
        model, adapter = meta["model"], meta.get("adapter")
        init_seed = meta.get("init_seed")
        prompt_audio = (meta.get("prompt_audio") or {}).get("path")
        if prompt_audio and not Path(prompt_audio).is_file():
            raise GenerateError(f"{args.from_json}: its prompt audio {prompt_audio} is gone")
        full_scale = params.adapter_scale if meta.get("adapter_kind") == "full" else 1.0
    else:
        prompts = read_prompts(args.prompt, args.prompts_file)
        if not prompts:
            if not args.prompt_audio:
                raise GenerateError("give --prompt TEXT, --prompts-file FILE or --prompt-audio FILE")
            prompts = [""]
        if args.num_samples < 1:
            raise GenerateError(f"--num-samples must be >= 1, got {args.num_samples}")
        prompts = [p for p in prompts for _ in range(args.num_samples)]
        params = GenerationParams(
            seconds=args.seconds,
            guidance_scale=args.guidance_scale,
            top_k=args.top_k,
            top_p=args.top_p,
            temperature=args.temperature,
            seed=args.seed,
            adapter_scale=args.adapter_scale,
            window_seconds=args.window,
            context_seconds=args.context,
            include_prompt=not args.no_include_prompt,
        )
        seeds = [args.seed + i for i in range(len(prompts))]
        model, adapter, init_seed, prompt_audio = args.model, args.adapter, args.init_seed, args.prompt_audio
        full_scale = args.adapter_scale
    params.check()
    ft = load_finetune(model, adapter, init_seed, full_scale=full_scale if adapter else 1.0)
    gen = Generator(ft, args.device, args.dtype)
    if ft.kind == "full":
        params.adapter_scale = ft.full_scale
    wav = None
    if prompt_audio:
        from musiclit.data.audio import AudioError, read_audio

        try:
            wav = read_audio(prompt_audio, gen.sample_rate, gen.audio_channels)
        except AudioError as err:
            raise GenerateError(str(err)) from None
    import time

    t0 = time.perf_counter()
    result = gen.generate(prompts, params, seeds, wav, batch_size=args.batch_size)
    elapsed = time.perf_counter() - t0
    paths = write_samples(gen, result, prompts, params, args.out, formats, prompt_audio=prompt_audio)
    seconds = result.audio.shape[-1] / result.sample_rate
    print(
        f"wrote {len(prompts)} sample(s) of {seconds:.1f} s to {args.out} in {elapsed:.1f} s "
        f"({len(prompts) * params.seconds / max(elapsed, 1e-9):.2f} s of audio per second)"
    )
    for path in paths:
        print(f"  {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
