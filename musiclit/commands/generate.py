"""``python -m musiclit generate``: argument parsing and printing; the work is in :mod:`musiclit.infer`."""

from __future__ import annotations

import argparse

from musiclit.infer.sampler import GenerateError, GenerationParams
from musiclit.infer.samples import SampleRequest, read_prompts, request_from_json, run_request, write_samples
from musiclit.model.mix import pair_strengths


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
    src.add_argument(
        "--adapter",
        action="append",
        help="peft adapter folder (run/adapter) or musiclit checkpoint (.ckpt); repeat to mix several fine-tunes "
        "of the same base, each at its own --adapter-scale",
    )
    src.add_argument(
        "--adapter-scale",
        type=float,
        action="append",
        help=f"adapter strength: 0 = base model, 1 = the fine-tune as trained (default {d.adapter_scale}); with "
        "several --adapter, one per adapter in the same order: the result is the base plus each adapter's weight "
        "change times its strength",
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
    what.add_argument(
        "--melody",
        help="MusicGen-melody models: an audio file whose melody conditions the music (its chromagram, one pitch "
        "class per 128 ms); longer music follows the melody on, and a shorter melody repeats",
    )
    what.add_argument(
        "--melody-separator",
        default="htdemucs",
        help="Demucs model (pretrained name or local weights file) that removes drums and bass from the --melody "
        "audio first, as in training; 'none' uses the file as it is",
    )
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


def request_from_args(args: argparse.Namespace) -> SampleRequest:
    """The generation request the command line describes (``--from-json``: the one that JSON records)."""
    if args.from_json:
        return request_from_json(args.from_json)
    prompts = read_prompts(args.prompt, args.prompts_file)
    if not prompts:
        if not args.prompt_audio and not args.melody:
            raise GenerateError("give --prompt TEXT, --prompts-file FILE, --prompt-audio FILE or --melody FILE")
        prompts = [""]
    if args.num_samples < 1:
        raise GenerateError(f"--num-samples must be >= 1, got {args.num_samples}")
    prompts = [p for p in prompts for _ in range(args.num_samples)]
    adapters, scales = pair_strengths(args.adapter, args.adapter_scale)
    params = GenerationParams(
        seconds=args.seconds,
        guidance_scale=args.guidance_scale,
        top_k=args.top_k,
        top_p=args.top_p,
        temperature=args.temperature,
        seed=args.seed,
        adapter_scale=scales[0] if len(adapters) <= 1 else 1.0,
        window_seconds=args.window,
        context_seconds=args.context,
        include_prompt=not args.no_include_prompt,
    )
    return SampleRequest(
        prompts=prompts,
        seeds=[args.seed + i for i in range(len(prompts))],
        params=params,
        model=args.model,
        adapter=adapters[0] if len(adapters) == 1 else None,
        init_seed=args.init_seed,
        prompt_audio=args.prompt_audio,
        full_scale=scales[0] if len(adapters) == 1 else 1.0,
        mix=list(zip(adapters, scales, strict=True)) if len(adapters) > 1 else [],
        melody=args.melody,
        melody_separator=None if not args.melody or args.melody_separator.lower() == "none" else args.melody_separator,
    )


def main(argv: list[str]) -> int:
    """Run ``generate``: write the samples and say where they are."""
    from musiclit.io import quiet_libraries

    args = build_parser().parse_args(argv)
    quiet_libraries()
    formats = ["wav", "flac"] if args.format == "both" else [args.format]
    request = request_from_args(args)
    request.params.check()
    separator = None
    if request.melody and request.melody_separator:
        from musiclit.prep.vocals import VocalsError, load_demucs

        try:
            separator = load_demucs(request.melody_separator)
        except VocalsError as err:
            raise GenerateError(
                f"--melody-separator {request.melody_separator}: {err} (here: --melody-separator FILE, or none to "
                "take the melody's chroma as it is)"
            ) from None
    gen, result, elapsed = run_request(request, args.device, args.dtype, args.batch_size, separator)
    paths = write_samples(
        gen, result, request.prompts, request.params, args.out, formats, prompt_audio=request.prompt_audio,
        melody=request.melody, melody_separator=request.melody_separator,
    )  # fmt: skip
    seconds = result.audio.shape[-1] / result.sample_rate
    n = len(request.prompts)
    print(
        f"wrote {n} sample(s) of {seconds:.1f} s to {args.out} in {elapsed:.1f} s "
        f"({n * request.params.seconds / max(elapsed, 1e-9):.2f} s of audio per second)"
    )
    for path in paths:
        print(f"  {path}")
    return 0
