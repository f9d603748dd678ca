"""Benchmark: steps per second of `prior train`'s step in each `--mixed-precision`, on this machine's CPU.

    python bench/prior_precision.py --steps 2 --threads 1 --out bench/results/prior_precision.md

Times the step `dsco_hub.prior.train_prior` runs (`make_training_state`, `training_batch`, `train_step`: batch
drawn on the CPU, forward under autocast, float32 loss, backward, clipping, AdamW, EMA) with the shipped prior's
architecture (32,64,64, one layer per block, 28 px, 1 channel, 10 classes + null) at batch 128 on random images,
one warm-up step then `--steps` timed steps per precision. Each precision is measured twice, in a fresh process:

- as this CPU runs it (native bf16 if it has AVX512-BF16 or AMX, see `distributed.cpu_has_native_bf16`);
- with ATen and oneDNN held to AVX2 (`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`): a CPU without native
  bf16, where bf16 autocast is emulated in software (issue 20's machine).

"fp16" is not measured: on the CPU it resolves to "no" (float32).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

MODES = {
    "this CPU": {},
    "ATen and oneDNN held to AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def worker(args) -> None:
    """Time the prior's training step in each precision of `args.precisions`; print one JSON line."""
    import torch

    from dsco_hub import distributed, prior
    from dsco_hub.config import PriorTrainConfig

    torch.set_num_threads(args.threads)
    num_classes, resolution = 10, 28
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (1024, 1, resolution, resolution), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, num_classes, (1024,), generator=g)
    rows = []
    for precision in args.precisions.split(","):
        cfg = PriorTrainConfig(mixed_precision=precision, max_steps=1000, batch_size=args.batch_size)
        accelerator = distributed.make_accelerator(precision)
        torch.manual_seed(0)
        unet, scheduler, optimizer, lr_scheduler, ema = prior.make_training_state(
            cfg, num_classes, 1, resolution, accelerator
        )
        unet.train()
        seconds = []
        for step in range(args.steps + 1):  # step 0 warms up (allocations, oneDNN primitive caches)
            batch = prior.training_batch(cfg, images, labels, num_classes, scheduler, step, 0)
            started = time.perf_counter()
            loss = prior.train_step(accelerator, unet, optimizer, lr_scheduler, ema, *batch)
            loss.item()  # wait for the step (a no-op wait on the CPU)
            seconds.append(time.perf_counter() - started)
        rows.append({"precision": precision, "seconds": [round(s, 3) for s in seconds[1:]]})
    print(
        json.dumps(
            {
                "capability": torch.backends.cpu.get_cpu_capability(),
                "native_bf16": distributed.cpu_has_native_bf16(),
                "auto": distributed.resolve_mixed_precision("auto", "cpu"),
                "threads": torch.get_num_threads(),
                "rows": rows,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per precision (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="torch thread counts (default: cores)")
    parser.add_argument("--precisions", default="no,bf16")
    parser.add_argument("--out", default="bench/results/prior_precision.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.threads = args.threads[0]
        worker(args)
        return
    import torch

    args.threads = args.threads or [torch.get_num_threads()]
    threads = " ".join(map(str, args.threads))
    command = f"python bench/prior_precision.py --steps {args.steps} --threads {threads}"
    results = {}
    for count in args.threads:
        for mode, env in MODES.items():
            argv = [sys.executable, __file__, "--worker", "--steps", str(args.steps), "--threads", str(count)]
            argv += ["--batch-size", str(args.batch_size), "--precisions", args.precisions]
            done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"{mode}: the worker failed:\n{done.stderr}")
            results[(mode, count)] = json.loads(done.stdout.strip().splitlines()[-1])
            print(mode, count, results[(mode, count)], flush=True)
    cpu = platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), cpu)
    lines = [
        "# `prior train` step time per `--mixed-precision` on the CPU",
        "",
        f"Command: `{command}` ({args.steps} timed steps after one warm-up, in a fresh process per row group). "
        f"Step of `dsco_hub.prior.train_prior` (batch drawn, forward under autocast, backward, clip, AdamW, EMA) "
        f"with the shipped prior's architecture (32,64,64 x1, 1.06 M parameters), 28 px, batch {args.batch_size}; "
        f"{model}, {os.cpu_count()} cores, torch {torch.__version__}. The machine was shared with other work "
        "while measuring: read the ratios more than the last digit. 2,400 steps (the shipped prior) take the "
        "seconds per step x 40 minutes.",
        "",
        "| kernels | threads | precision | seconds per step (each) | steps per second | vs float32 | `auto` is |",
        "|---|---|---|---|---|---|---|",
    ]
    for (mode, count), data in results.items():
        base = None
        for row in data["rows"]:
            mean = sum(row["seconds"]) / len(row["seconds"])
            base = mean if row["precision"] == "no" else base
            ratio = f"{mean / base:.1f}x" if base else "—"
            name = "float32 (`no`)" if row["precision"] == "no" else f"`{row['precision']}` autocast"
            each = " / ".join(f"{s:.2f}" for s in row["seconds"])
            native = "native bf16" if data["native_bf16"] else "no native bf16"
            lines.append(
                f"| {mode} ({data['capability']}, {native}) | {count} | {name} | {each} | {1 / mean:.2f} | {ratio} "
                f"| `{data['auto']}` |"
            )
    lines += [
        "",
        "`--mixed-precision auto` (the default) picks bf16 only where it is the faster row (native bf16), float32 "
        "elsewhere; an explicit `bf16` on a CPU without native bf16 prints one warning line with the slowdown.",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


if __name__ == "__main__":
    main()
