"""Benchmark: sampling throughput of a diffusion prior with our guided DDIM sampler.

    python bench/sampling_throughput.py --model dsco_hub/resources/prior_fashion_mnist --steps 25 --guidance 2.0 \
        --batch-sizes 1 10 100 --images 100 --repeats 1 --threads 1 --out bench/results/sampling_throughput.md

Reports images per second for a few batch sizes (best of `--repeats` timed runs after one warm-up, on `--threads`
torch threads) and writes `--out`; the command it quotes names every option, so it writes that file again.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from dsco_hub.config import SamplerConfig
from dsco_hub.models import load_prior, sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dsco_hub/resources/prior_fashion_mnist")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, i.e. the cores)")
    parser.add_argument("--out", default="bench/results/sampling_throughput.md")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    prior = load_prior(args.model)
    rows = []
    for batch in args.batch_sizes:
        n = max(batch, min(args.images, 10 * batch))
        labels = [i % prior.num_classes for i in range(n)]
        sampler = SamplerConfig(steps=args.steps, guidance_scale=args.guidance, batch_size=batch)
        sample(prior, labels[:batch], list(range(batch)), sampler)  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            sample(prior, labels, list(range(n)), sampler)
            best = min(best, time.perf_counter() - t0)
        rows.append((batch, n, best, n / best))
        print(f"batch {batch}: {n / best:.1f} images/s")
    params = sum(p.numel() for p in prior.denoiser.parameters()) / 1e6
    lines = [
        f"# Sampling throughput: `{args.model}` ({params:.2f} M parameters)",
        "",
        f"Command: `python bench/sampling_throughput.py --model {args.model} --steps {args.steps} "
        f"--guidance {args.guidance} --batch-sizes {' '.join(map(str, args.batch_sizes))} --images {args.images} "
        f"--repeats {args.repeats} --threads {threads} --out {args.out}`. Machine: {platform.machine()}, "
        f"{threads} torch threads, torch {torch.__version__}, fp32.",
        "",
        f"DDIM {args.steps} steps, classifier-free guidance {args.guidance} "
        f"({2 if args.guidance != 1 else 1} denoiser evaluations per step). Best of {args.repeats} runs.",
        "",
        "| batch size | images | seconds | images / s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {b} | {n} | {s:.2f} | {ips:.1f} |" for b, n, s, ips in rows]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
