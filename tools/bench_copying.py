"""How the memorisation check scales with the number of training clips (prints figures; asserts nothing).

    .venv/bin/python tools/bench_copying.py [--clips 100 1000 4000] [--seconds 30] [--queries 8] [--threads 1]

For N training clips of ``--seconds`` each it builds the token index (random codes, 4 codebooks, 50 Hz) and
the chroma index (random chroma features at 7.8 frames/s, the detector's rate; the STFT of the training
audio is a separate, linear cost measured with --audio), then checks ``--queries`` generated clips of 10 s,
one of which contains a planted 5 s copy. It prints build and query times and the index's memory.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _unit(x: np.ndarray) -> np.ndarray:
    """Chroma-like features as the detector stores them: centred, unit length per frame."""
    x = x - x.mean(-1, keepdims=True)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def main() -> None:
    from musiclit.eval.copying import ChromaIndex, TokenIndex, normalized_chroma

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, nargs="+", default=[100, 1000, 4000])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--audio", action="store_true", help="also time the chroma of 30 s of audio (per training clip)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {_cpu()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    rng = np.random.default_rng(0)
    frames = int(args.seconds * 50)
    chroma_frames = int(args.seconds * 32000 / 4096) + 1
    if args.audio:
        audio = rng.standard_normal(int(args.seconds * 32000)).astype(np.float32)
        t0 = time.perf_counter()
        for _ in range(5):
            normalized_chroma(audio, 32000, 8192, 4096)
        print(f"chroma of {args.seconds:g} s of audio: {(time.perf_counter() - t0) / 5 * 1000:.1f} ms per clip")
    print(f"{'clips':>6} {'hours':>6} | {'token build s':>13} {'index MB':>9} {'query ms':>9} | "
          f"{'chroma build s':>14} {'stack MB':>9} {'query ms':>9} | planted copy found")  # fmt: skip
    for n in args.clips:
        tokens = TokenIndex(frame_rate=50.0)
        chroma = ChromaIndex()
        t0 = time.perf_counter()
        clips = [rng.integers(0, 2048, size=(4, frames), dtype=np.int16) for _ in range(n)]
        for i, c in enumerate(clips):
            tokens.add(f"clip{i}", c)
        tokens._build()
        t_tok = time.perf_counter() - t0
        feats = _unit(rng.standard_normal((n, chroma_frames, 12)))
        t0 = time.perf_counter()
        for i in range(n):
            chroma.add_features(f"clip{i}", feats[i])
        chroma._stacked()
        t_chr = time.perf_counter() - t0
        queries = [rng.integers(0, 2048, size=(4, 500), dtype=np.int16) for _ in range(args.queries)]
        queries[0][:, 100:350] = clips[n // 2][:, 600:850]  # a planted 5 s token copy
        t0 = time.perf_counter()
        found = [tokens.longest_match(q, f"q{i}") for i, q in enumerate(queries)]
        q_tok = (time.perf_counter() - t0) / len(queries) * 1000
        cq = [_unit(rng.standard_normal((int(10 * 32000 / 4096) + 1, 12))) for _ in range(args.queries)]
        cq[0][10:60] = feats[n // 3][40:90]  # a planted 6.4 s melodic copy
        t0 = time.perf_counter()
        mel = [chroma.match_features(q, f"q{i}") for i, q in enumerate(cq)]
        q_chr = (time.perf_counter() - t0) / len(cq) * 1000
        mb_tok = (tokens._keys.nbytes + tokens._vals.nbytes) / 1e6
        mb_chr = chroma._stacked().numel() * 4 / 1e6
        if os.environ.get("BENCH_DEBUG"):
            print(
                found[0],
                [f.seconds for f in found[1:]],
                mel[0].source,
                mel[0].similarity,
                [round(m.similarity, 3) for m in mel[1:]],
            )
        token_ok = found[0].source == f"clip{n // 2}" and found[0].frames == 250
        melody_ok = mel[0].source == f"clip{n // 3}" and mel[0].flagged
        ok = token_ok and melody_ok and not any(f.flagged for f in found[1:]) and not any(m.flagged for m in mel[1:])
        print(f"{n:6d} {n * args.seconds / 3600:6.1f} | {t_tok:13.2f} {mb_tok:9.1f} {q_tok:9.1f} | "
              f"{t_chr:14.2f} {mb_chr:9.1f} {q_chr:9.1f} | {'yes' if ok else 'NO'}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
