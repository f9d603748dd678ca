"""Benchmark: the cost of NOpt over plain guided DDIM sampling (wall time and peak memory).

    python bench/nopt_cost.py --model dsco_hub/resources/prior_fashion_mnist \
        --source ../shared/data/fashion_mnist --ipc 10 --steps 25 100 --target-batch 0 128 \
        --out bench/results/nopt_cost.md

For one class at a time, `--ipc` images are sampled in one batch, once plainly (`models.sample`)
and once with NOpt (`nopt.nopt_sample`, default `NOptConfig`: window 0.5, 1 iteration per step,
500 real targets) for each `--target-batch` (targets embedded per iteration, 0 = all 500), from
the same seeds. Each measurement runs in a fresh process so its peak resident memory (`ru_maxrss`)
is its own. Targets: NOpt at most 3x the wall time of plain sampling, and the same peak memory at
25 and 100 steps (the gradient goes through one denoiser call per iteration). Writes `--out`
(default `bench/results/nopt_cost.md`); the command it quotes names `--out`, so it writes that file again.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from dsco_hub.config import NOptConfig, SamplerConfig, SourceConfig, derive_seed
from dsco_hub.data import decode_images, load_source, to_model_range
from dsco_hub.doping import select_random
from dsco_hub.models import load_prior, sample
from dsco_hub.nopt import nopt_sample


def nopt_config(lr: float | None, target_batch: int | None = None) -> NOptConfig:
    """NOpt's default settings, but `lr` when given and the targets embedded per iteration (0 = all)."""
    return NOptConfig(target_batch=target_batch, **({} if lr is None else {"lr": lr}))


def measure(args: dict) -> dict:
    """One measurement in this process: seconds per class and peak RSS (MiB) for `args["mode"]`."""
    torch.set_num_threads(args["threads"])
    prior = load_prior(args["model"])
    source = load_source(SourceConfig(source=args["source"]))
    cfg = nopt_config(args.get("nopt_lr"), args.get("target_batch", 0))
    seconds = []
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for k in args["classes"]:
        seeds = [derive_seed(0, k, j) for j in range(args["ipc"])]
        rows = np.sort(select_random(source.class_index[k], cfg.targets, 0, k))
        targets = to_model_range(decode_images(source, rows, *prior.image_shape[:2]))  # (500, C, H, W)
        t0 = time.perf_counter()
        if args["mode"] == "plain":  # all of the class's images in one batch
            sample(prior, [k] * len(seeds), seeds, SamplerConfig(steps=args["steps"], batch_size=len(seeds)))
        else:
            nopt_sample(prior, k, seeds, targets, cfg, SamplerConfig(steps=args["steps"]), phi_seed=k)
        seconds.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**args, "seconds_per_class": float(np.mean(seconds)), "peak_mib": peak, "loaded_mib": before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dsco_hub/resources/prior_fashion_mnist")
    parser.add_argument("--source", default="../shared/data/fashion_mnist")
    parser.add_argument("--ipc", type=int, nargs="+", default=[10])
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 100])
    parser.add_argument("--target-batch", type=int, nargs="+", default=[0], help="0 = all targets")
    parser.add_argument("--classes", type=int, nargs="+", default=[0, 5, 9])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nopt-lr", type=float, default=None, help="NOpt's step length (default: NOptConfig's)")
    parser.add_argument("--out", default="bench/results/nopt_cost.md")
    args = parser.parse_args()
    modes = [("plain", 0)] + [("nopt", b) for b in args.target_batch]
    jobs = [
        {"mode": mode, "target_batch": batch, "steps": steps, "ipc": ipc}
        | {"model": args.model, "source": args.source, "classes": args.classes, "threads": args.threads}
        | {"nopt_lr": args.nopt_lr}
        for ipc in args.ipc
        for steps in args.steps
        for mode, batch in modes
    ]
    results = []
    ctx = multiprocessing.get_context("spawn")
    for job in jobs:
        with ctx.Pool(1) as pool:  # a fresh process per measurement: its own peak RSS
            result = pool.apply(measure, (job,))
        results.append(result)
        print(json.dumps({k: result[k] for k in ("mode", "target_batch", "ipc", "steps", "seconds_per_class")}))

    by = {(r["mode"], r["target_batch"], r["ipc"], r["steps"]): r for r in results}
    ipcs, steps_list, batches = " ".join(map(str, args.ipc)), " ".join(map(str, args.steps)), args.target_batch
    lines = [
        "# NOpt cost over plain guided DDIM sampling",
        "",
        f"Command: `python bench/nopt_cost.py --model {args.model} --source {args.source} --ipc {ipcs} "
        f"--steps {steps_list} --target-batch {' '.join(map(str, batches))} "
        f"--classes {' '.join(map(str, args.classes))} --threads {args.threads}"
        + (f" --nopt-lr {args.nopt_lr}" if args.nopt_lr is not None else "")
        + f" --out {args.out}`. Machine: {platform.machine()}, {args.threads} torch thread(s), "
        f"torch {torch.__version__}, fp32.",
        "",
        f"Per class: IPC images in one batch, guidance 2.0; NOpt settings {nopt_config(args.nopt_lr)} "
        "except the targets embedded per iteration (target batch; all = the 500 targets). Seconds are the mean "
        f"over classes {args.classes}; peak memory is the measuring process's peak resident set (model, source "
        "index and 500 targets included).",
        "",
        "| IPC | DDIM steps | target batch | plain (s / class) | NOpt (s / class) | NOpt / plain "
        "| peak MiB plain | peak MiB NOpt |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for ipc in args.ipc:
        for steps in args.steps:
            p = by[("plain", 0, ipc, steps)]
            for batch in batches:
                n = by[("nopt", batch, ipc, steps)]
                lines.append(
                    f"| {ipc} | {steps} | {batch or 'all'} | {p['seconds_per_class']:.2f} | "
                    f"{n['seconds_per_class']:.2f} | {n['seconds_per_class'] / p['seconds_per_class']:.2f}x | "
                    f"{p['peak_mib']:.0f} | {n['peak_mib']:.0f} |"
                )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
