"""Generation requests and their files: prompts, the WAV/FLAC + JSON of each sample, exact regeneration.

Each sample is written as audio with a JSON beside it holding the prompt, seed, model, adapter and every
parameter; :func:`request_from_json` reads such a JSON back into the request that regenerates it exactly.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from musiclit.infer.sampler import GenerateError, GenerationParams, GenerationResult, Generator
from musiclit.io import atomic_path, atomic_write_json, file_sha256


@dataclass
class SampleRequest:
    """What to generate, with which model: everything a sample's JSON records.

    Attributes:
        prompts: One text per sample ("" = unconditional).
        seeds: One seed per sample.
        params: Sampling parameters.
        model: Base or merged model (hub id, folder, config file); None: the one the adapter names.
        adapter: A peft adapter folder or a musiclit checkpoint, or None.
        init_seed: Random-init seed of a config-file base (None: the checkpoint's, else 0).
        prompt_audio: An audio file to continue from, or None.
        full_scale: For a full fine-tune checkpoint: weights interpolated at load (0 = base, 1 = tuned).
        mix: Several adapters/checkpoints mixed at load, ``[(source, strength), ...]`` (then ``adapter`` is
            None): the base plus each one's weight change times its strength.
        melody: MusicGen-melody: an audio file whose melody (chroma) conditions the music, or None.
        melody_separator: The Demucs model (name or weights file) that removed drums and bass from the melody
            audio first, or None (the file as it is).
    """

    prompts: list[str]
    seeds: list[int]
    params: GenerationParams = field(default_factory=GenerationParams)
    model: str | None = None
    adapter: str | None = None
    init_seed: int | None = None
    prompt_audio: str | None = None
    full_scale: float = 1.0
    mix: list[tuple[str, float]] = field(default_factory=list)
    melody: str | None = None
    melody_separator: str | None = None


def _slug(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return slug or "unconditional"


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
    melody: str | None = None,
    melody_separator: str | None = None,
    save_codes: bool = False,
) -> list[Path]:
    """Write each sample as WAV/FLAC with a JSON beside it holding the prompt, seed and every parameter.

    With ``save_codes`` the sample's codec codes (K, T) are also written as ``<stem>.codes.npy`` (int16):
    the exact tokens the model chose, which the memorisation check compares with the training tokens
    (re-encoding the audio would not give them back exactly).
    """
    from musiclit import __version__
    from musiclit.data.audio import write_audio

    out_dir = Path(out_dir)
    written = []
    ft = gen.finetune
    audio_info = None
    if prompt_audio:
        audio_info = {"path": str(Path(prompt_audio).resolve()), "sha256": file_sha256(prompt_audio)}
    melody_info = None
    if melody:
        melody_info = {"path": str(Path(melody).resolve()), "sha256": file_sha256(melody),
                       "separator": melody_separator}  # fmt: skip
    for i, (prompt, seed) in enumerate(zip(prompts, result.seeds, strict=False)):
        stem = f"{sample_offset + i:03d}-{_slug(prompt)}-seed{seed}"
        files = []
        for fmt in formats:
            path = out_dir / f"{stem}.{fmt}"
            write_audio(path, result.audio[i].numpy(), result.sample_rate)
            files.append(path.name)
            written.append(path)
        if save_codes:
            import numpy as np  # here, not at the top: `generate --help` imports this module

            with atomic_path(out_dir / f"{stem}.codes.npy") as tmp, open(tmp, "wb") as fh:
                np.save(fh, result.codes[i].numpy().astype(np.int16))
            files.append(f"{stem}.codes.npy")
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
            "adapters": [
                {"path": src, "scale": sc}
                for src, sc in zip(ft.extra.get("sources", []), ft.extra.get("scales", []), strict=True)
            ],
            "init_seed": ft.init_seed,
            "prompt_audio": audio_info,
            "melody": melody_info,
            "files": files,
            "sample_rate": result.sample_rate,
            "frames": int(result.codes.shape[-1]),
            "prompt_frames": result.prompt_frames,
            "seconds_total": result.audio.shape[-1] / result.sample_rate,
            "device": str(gen.device),
            "dtype": str(gen.dtype).replace("torch.", ""),
            "regenerate": f"python -m musiclit generate --from-json {stem}.json",
        }
        atomic_write_json(out_dir / f"{stem}.json", meta)
    return written


def request_from_json(path: str | Path) -> SampleRequest:
    """The request that regenerates the sample described by a JSON that :func:`write_samples` wrote."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise GenerateError(f"{path}: cannot read the sample's JSON ({err})") from None
    if not isinstance(meta, dict):
        raise GenerateError(f"{path}: not a musiclit sample JSON (not an object)")
    for key in ("prompt", "seed", "params", "model"):
        if key not in meta:
            raise GenerateError(f"{path}: not a musiclit sample JSON (no '{key}')")
    known = {f.name for f in fields(GenerationParams)}
    params = GenerationParams(**{k: v for k, v in meta["params"].items() if k in known})
    prompt_audio = (meta.get("prompt_audio") or {}).get("path")
    if prompt_audio and not Path(prompt_audio).is_file():
        raise GenerateError(f"{path}: its prompt audio {prompt_audio} is gone")
    melody = meta.get("melody") or {}
    if melody.get("path") and not Path(melody["path"]).is_file():
        raise GenerateError(f"{path}: its melody {melody['path']} is gone")
    return SampleRequest(
        prompts=[meta["prompt"]],
        seeds=[int(meta["seed"])],
        params=params,
        model=meta["model"],
        adapter=meta.get("adapter"),
        init_seed=meta.get("init_seed"),
        prompt_audio=prompt_audio,
        full_scale=params.adapter_scale if meta.get("adapter_kind") == "full" else 1.0,
        mix=[(str(a["path"]), float(a["scale"])) for a in meta.get("adapters") or []],
        melody=melody.get("path"),
        melody_separator=melody.get("separator"),
    )


def run_request(
    request: SampleRequest, device: str = "auto", dtype: str = "auto", batch_size: int = 8, separator: Any = None
) -> tuple[Generator, GenerationResult, float]:
    """Load the model of ``request`` and generate it; returns the generator, the result and the seconds taken.

    ``separator``: the loaded Demucs model that ``request.melody_separator`` names (the caller loads it).
    """
    from musiclit.data.audio import AudioError, read_audio
    from musiclit.model.finetune import load_finetune

    params = request.params
    params.check()
    if request.prompt_audio:  # a bad prompt file is reported before any model is loaded
        try:
            read_audio(request.prompt_audio)
        except AudioError as err:
            raise GenerateError(str(err)) from None
    if request.mix:
        from musiclit.model.mix import load_mix

        ft = load_mix([m[0] for m in request.mix], [m[1] for m in request.mix], request.model, request.init_seed)
    else:
        ft = load_finetune(
            request.model, request.adapter, request.init_seed, full_scale=request.full_scale if request.adapter else 1.0
        )
    gen = Generator(ft, device, dtype)
    if ft.kind in ("full", "mix"):
        params.adapter_scale = ft.full_scale
    wav = None
    if request.prompt_audio:
        try:
            wav = read_audio(request.prompt_audio, gen.sample_rate, gen.audio_channels)
        except AudioError as err:
            raise GenerateError(str(err)) from None
    melody = None
    if request.melody:
        if request.melody_separator and separator is None:
            raise GenerateError(f"the melody separator {request.melody_separator} was not loaded")
        rate = int(separator.samplerate) if separator is not None else gen.sample_rate
        channels = int(separator.audio_channels) if separator is not None else 1
        try:
            melody_wav = read_audio(request.melody, rate, channels)
        except AudioError as err:
            raise GenerateError(f"--melody: {err}") from None
        melody = gen.encode_melody(melody_wav, rate, separator)
    t0 = time.perf_counter()
    result = gen.generate(request.prompts, params, request.seeds, wav, batch_size=batch_size, melody=melody)
    return gen, result, time.perf_counter() - t0
