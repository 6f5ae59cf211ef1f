"""The sampler behind ``python -m musiclit generate``: music from a base model, a fine-tune or a merged model.

The Python API::

    from musiclit.infer.sampler import GenerationParams, load_generator
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
* MusicGen-melody models take a melody (:meth:`Generator.encode_melody`: one pitch class per chroma frame of an
  audio file, drums and bass removed first when a Demucs model is given): each window is conditioned on the
  melody's frames from the window's start time on (the melody repeated end to end when it is shorter), so
  audio past 30 s follows the melody's next stretch. Without a melody they generate from text alone (the
  "no melody" condition). Guidance's unconditional branch has neither text nor melody, as in transformers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from musiclit.errors import MusiclitError
from musiclit.model.finetune import FineTune, load_finetune


class GenerateError(MusiclitError, ValueError):
    """A generation request that cannot work; the message names the option or file and the problem."""


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
        prepare: Move the model to ``device``, cast the decoder to ``dtype`` and put it in eval mode (the
            generator owns the model). False leaves a model that someone else owns exactly as it is (a model
            being trained: the in-training samples); ``device`` and ``dtype`` are then read from the model,
            and the caller sets eval mode and autocast around the calls.
    """

    def __init__(self, finetune: FineTune, device: str = "auto", dtype: str = "auto", prepare: bool = True) -> None:
        import torch

        self.finetune = finetune
        base = finetune.base
        if not prepare:
            param = next(base.decoder.parameters())
            device, dtype = str(param.device), str(param.dtype).replace("torch.", "")
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
        if prepare:
            finetune.place(self.device, self.dtype)  # cast on the host, then move (never fp32 on the GPU)
            finetune.base.eval()
        self.max_positions = int(base.config.decoder.max_position_embeddings)
        self.melody = bool(getattr(loaded, "melody", False))
        self.chroma_length = int(getattr(loaded, "chroma_length", 0))
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
        """Scale every adapter's weight change by ``scale`` inside the block (0: the base model exactly).

        Plain LoRA: its ``scaling`` is multiplied (the change ``scaling * B @ A`` is linear in it). DoRA: the
        change is ``m / ||W + scaling * B @ A|| * (W + scaling * B @ A) - W`` (scaling sits inside a norm), so the
        DoRA branch's output, which is exactly that change applied to the input, is multiplied instead.
        """
        from peft.tuners.lora import LoraLayer

        if self.finetune.kind != "lora":
            if scale != self.finetune.full_scale:
                what = {
                    "full": "a full fine-tune: give its strength when loading (load_generator(..., adapter_scale=s))",
                    "mix": "a mix of adapters: each one's strength was given when loading (--adapter-scale)",
                }.get(self.finetune.kind, "no adapter (a base or merged model)")
                raise GenerateError(f"adapter strength {scale} needs a LoRA adapter; this is {what}")
            yield
            return
        if scale == 0.0:
            with self.model.disable_adapter():
                yield
            return
        saved, hooks = [], []

        def scaled(module: Any, args: Any, output: Any) -> Any:
            return output * scale

        for module in self.base.modules():
            if isinstance(module, LoraLayer):
                dora = getattr(module, "lora_magnitude_vector", None) or {}
                if scale != 1.0:
                    hooks.extend(dora[name].register_forward_hook(scaled) for name in dora)
                saved.append((module, dict(module.scaling)))
                for name in module.scaling:
                    if name not in dora:
                        module.scaling[name] = module.scaling[name] * scale
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
            for module, scaling in saved:
                module.scaling.clear()
                module.scaling.update(scaling)

    # ------------------------------------------------------------------ conditioning / codec
    def encode_text(self, prompts: Sequence[str]) -> tuple[Any, Any]:
        """Decoder-ready text states (B, Lt, D) and mask (B, Lt); each distinct prompt is encoded on its own
        (so a sample does not depend on the other prompts in its batch). An empty prompt is unconditional."""
        import torch

        from musiclit.model.loss import project_text

        base = self.base
        states: dict[str, Any] = {}
        for text in dict.fromkeys(prompts):
            if not text.strip():
                states[text] = None
                continue
            tokens = self.tokenizer([text], return_tensors="pt", truncation=True).to(self.device)
            with torch.inference_mode():
                h = project_text(base, base.text_encoder(**tokens).last_hidden_state[0])
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

        from musiclit.model.codec import encode_audio

        x = torch.as_tensor(wav, dtype=torch.float32, device=self.device)
        if x.ndim == 1:
            x = x[None]
        with torch.inference_mode():
            codes = encode_audio(self.base.audio_encoder, x[None], self.audio_channels)[0]
        return codes.long()

    def decode(self, codes: Any) -> Any:
        """(B, C, S) float32 audio of (B, K, T) codes, decoded in one pass."""
        import torch

        from musiclit.model.codec import decode_audio

        with torch.inference_mode():
            hop = self.sample_rate // self.frame_rate
            return decode_audio(self.base.audio_encoder, codes, self.audio_channels, hop)

    def encode_melody(self, wav: Any, sample_rate: int, separator: Any = None) -> Any:
        """Pitch classes (Tm,) int64 of a melody: (C, S) audio at ``sample_rate`` (drums and bass removed by the
        Demucs ``separator`` first when one is given; it then must be at the separator's rate)."""
        import numpy as np

        from musiclit.data.audio import resample
        from musiclit.model.melody import SAMPLE_RATE, MelodyChroma, pitch_classes

        if not self.melody:
            raise GenerateError("a melody needs a MusicGen-melody model (e.g. facebook/musicgen-melody)")
        wav = np.asarray(wav, dtype=np.float32)
        if separator is not None:
            chroma = MelodyChroma(separator, resample)
            if sample_rate != chroma.sample_rate:
                wav = resample(wav, sample_rate, chroma.sample_rate)
            return pitch_classes(chroma.conditioning_audio(wav), SAMPLE_RATE).astype(np.int64)
        mono = wav.mean(0, keepdims=True) if wav.ndim == 2 else wav[None]
        return pitch_classes(resample(mono, sample_rate, SAMPLE_RATE)[0], SAMPLE_RATE).astype(np.int64)

    def melody_window(self, classes: Any, start_frame: int, bsz: int) -> Any:
        """(B, chroma_length, 12) one-hot melody for a window starting at codec frame ``start_frame`` of the output
        (None: no melody, class 0 everywhere)."""
        import torch

        from musiclit.model.melody import frame_rate, onehot, window

        if classes is None:
            return onehot(torch.zeros((bsz, 1), dtype=torch.long)).to(self.device)
        first = int(round(start_frame / self.frame_rate * frame_rate(self.sample_rate)))
        one = torch.from_numpy(window(classes, first, self.chroma_length))
        return onehot(one[None].expand(bsz, -1)).to(self.device)

    def _melody_prefix(self, enc: Any, enc_mask: Any, melody: Any, guided: bool) -> Any:
        """``[melody states, masked text states]`` (rows: conditional, then the unconditional ones when guided)."""
        import torch

        from musiclit.model.melody import melody_states

        bsz = enc.shape[0]
        states = melody_states(self.base, melody if melody is not None else self.melody_window(None, 0, bsz))
        text = enc * enc_mask[..., None].to(enc.dtype)
        prefix = torch.cat([states.to(self.dtype), text], dim=1)
        if guided:
            null = melody_states(self.base, self.melody_window(None, 0, bsz)).to(self.dtype)
            prefix = torch.cat([prefix, torch.cat([null, torch.zeros_like(text)], dim=1)])
        return prefix

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
        melody: Any | None = None,
    ) -> Any:
        """Generate one window of ``frames`` frames (the first ``prompt.shape[-1]`` of them given).

        Args:
            enc: (B, Lt, D) text states from :meth:`encode_text`; enc_mask: (B, Lt).
            frames: Frames in the window, prompt included.
            params: Sampling parameters.
            generators: One CPU ``torch.Generator`` per row (each sample's own random stream).
            prompt: (B, K, P) codes to continue, P < frames, or None.
            melody: Melody models: (B, Tc, 12) one-hot melody of this window (:meth:`melody_window`), or None.

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
        heads = self.base.decoder.lm_heads
        inputs = seq[:, :, :start]
        cache = None
        with torch.inference_mode(), self.adapter_strength(params.adapter_scale):
            prefix = self._melody_prefix(enc, enc_mask, melody, guided) if self.melody else None
            if guided:
                enc = torch.cat([enc, torch.zeros_like(enc)])
                enc_mask = torch.cat([enc_mask, torch.zeros_like(enc_mask)])
            rows = enc.shape[0]
            for i, pos in enumerate(range(start, length)):
                ids = torch.cat([inputs, inputs]) if guided else inputs
                if prefix is not None:  # prepended once; the KV cache holds it afterwards
                    hidden, cache = self._forward(ids.reshape(rows * num_cb, -1), prefix, None, cache)
                    prefix = None
                elif self.melody:
                    hidden, cache = self._forward(ids.reshape(rows * num_cb, -1), None, None, cache)
                else:
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
        melody: Any | None = None,
    ) -> Any:
        """Codes (B, K, P + new) for one batch: windowed continuation beyond ``params.window_seconds``.

        Args:
            prompts: One text per sample ("" = unconditional).
            params: The parameters.
            seeds: One seed per sample (default ``params.seed + i``).
            prompt_codes: (K, P) or (B, K, P) codes to continue (an audio prompt), or None.
            melody: Melody models: (Tm,) pitch classes (:meth:`encode_melody`); each window reads them from its
                start time on (the audio prompt's start is time 0). None: no melody.
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
            mel = self.melody_window(melody, codes.shape[-1] - ctx.shape[-1], bsz) if self.melody else None
            out = self.sample_window(
                enc, enc_mask, ctx.shape[-1] + new, params, generators, ctx if ctx.shape[-1] else None, mel
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
        melody: Any | None = None,
    ) -> GenerationResult:
        """Generate one sample per prompt (repeat a prompt for several samples), in batches.

        Args:
            prompts: One text per sample.
            params: Sampling parameters (default :class:`GenerationParams`).
            seeds: One seed per sample (default ``params.seed + i``).
            prompt_audio: (C, S) audio at the model's sample rate to continue, or None.
            batch_size: Samples per forward pass.
            melody: Melody models: (Tm,) pitch classes from :meth:`encode_melody`, or None.
        """
        import torch

        params = params or GenerationParams()
        seeds = [params.seed + i for i in range(len(prompts))] if seeds is None else list(seeds)
        if len(seeds) != len(prompts):
            raise GenerateError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        prompt_codes = self.encode_audio(prompt_audio) if prompt_audio is not None else None
        window = round(params.window_seconds * self.frame_rate)
        pf = 0 if prompt_codes is None else min(prompt_codes.shape[-1], window - 1)
        if melody is not None and not self.melody:
            raise GenerateError("a melody needs a MusicGen-melody model (e.g. facebook/musicgen-melody)")
        order, lengths = list(range(len(prompts))), [0] * len(prompts)
        if self.melody:
            # a melody model attends to text padding (zero vectors, as in its training): batch prompts of equal
            # token length only, so that a sample never depends on the other prompts of its batch
            lengths = [len(self.tokenizer(p, truncation=True)["input_ids"]) if p.strip() else 1 for p in prompts]
            order.sort(key=lambda i: lengths[i])
        batches = []
        for i in order:
            if batches and len(batches[-1]) < max(1, batch_size) and lengths[batches[-1][0]] == lengths[i]:
                batches[-1].append(i)
            else:
                batches.append([i])
        codes_of: dict[int, Any] = {}
        for batch in batches:
            out = self.generate_codes(
                [prompts[i] for i in batch], params, [seeds[i] for i in batch], prompt_codes, melody
            )
            codes_of.update(zip(batch, out, strict=True))
        codes = torch.stack([codes_of[i] for i in range(len(prompts))])
        # one sample at a time: the codec's numerics then do not depend on the batch (exact regeneration)
        audio = torch.cat([self.decode(codes[i : i + 1]) for i in range(codes.shape[0])])
        return GenerationResult(audio, codes.cpu(), self.sample_rate, seeds, pf if params.include_prompt else 0)


def load_generator(
    model: str | None = None,
    adapter: str | Sequence[str] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    init_seed: int | None = None,
    adapter_scale: float | Sequence[float] = 1.0,
) -> Generator:
    """Load a model (+ adapter) for generation; see :func:`load_finetune` and :class:`Generator`.

    ``adapter_scale`` matters here only for a full fine-tune checkpoint (weights interpolated at load) and for
    several adapters (a list of adapters and one strength each: :func:`musiclit.model.mix.load_mix`); the
    strength of a single LoRA adapter is a per-call parameter (``GenerationParams.adapter_scale``).
    """
    if adapter is not None and not isinstance(adapter, str):
        adapters = list(adapter)
        scales = [adapter_scale] * len(adapters) if isinstance(adapter_scale, (int, float)) else list(adapter_scale)
        if len(adapters) > 1:
            from musiclit.model.mix import load_mix

            return Generator(load_mix(adapters, scales, model, init_seed), device, dtype)
        adapter, adapter_scale = (adapters[0] if adapters else None), (scales[0] if scales else 1.0)
    if not isinstance(adapter_scale, (int, float)):
        raise GenerateError("one adapter takes one strength")
    return Generator(load_finetune(model, adapter, init_seed, full_scale=adapter_scale), device, dtype)
