"""Benchmark: wall time of `concentrate` with 1 and with 2 processes (torchrun), and the identity of their outputs.

    python bench/distributed.py --ipc 10 --steps 10 --nopt-targets 100 --large-source ../shared/data/fashion_mnist

Runs the same `--method dsco` concentration of the embedded Fashion-MNIST subset (10 classes, so 10 units) with the
shipped prior, `--no-eval`, once as one process and once under `torchrun --nproc_per_node 2` (each process with
`OMP_NUM_THREADS=1`, so 1 vs 2 cores), checks that the parquet files are byte-identical, reports the wall times, the
speed-up and the peak resident memory of the largest process. With `--large-source`, the same one-process run on
that larger source shows how peak memory follows the source size (it should not: only the NOpt targets are decoded),
and so does a `--streaming` run of it (which reads only the first rows of each class it needs).
Appends the `--dry-run` plan of `imagenet-1k --ipc 50 --steps 50`, and the plans of `imagewoof --ipc 100 --steps 50`
(plain sampling and DsCo) beside the synthesis cost MinimaxDiffusion reports for the same subset and IPC.
Writes `--out` (default `bench/results/distributed.md`) and quotes it in the command it writes.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import datasets
import torch
from huggingface_hub import DatasetCard

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"diffusion": "plain DDIM (guided)", "dsco": "DsCo (NOpt)"}  # the methods of the ImageWoof plans


_WRAPPER = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
    "sys.stderr.write(code.stderr); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code.returncode)"
)


def _run(command: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and the peak RSS (MiB) of the largest process of this command alone."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _WRAPPER, *command], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr}")
    return seconds, int(done.stdout.split()[-1]) / 1024


# What peers report for the synthesis of a concentrated ImageNet subset (quoted, with where it is said)
PEERS = [
    (
        "MinimaxDiffusion (Gu et al., CVPR 2024), ImageWoof IPC 100: fine-tune DiT-XL/2 (8 epochs), then sample "
        "50 respaced DDPM steps (guidance 4) at batch size 1, classes split by hand with `--phase`",
        "about 1 h, fine-tuning included; GPU not stated",
        "README of github.com/vimar-gu/MinimaxDiffusion ('only requires 1 hour to finish the distillation process of "
        "a 10-class ImageNet subset, including the fine-tuning and image generation processes'); sample.py",
    ),
]


def _plan(env: dict, *args: str) -> str:
    """The `--dry-run` plan of `dsco-hub concentrate ARGS`."""
    command = [sys.executable, "-m", "dsco_hub", "concentrate", *args, "--dry-run"]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout


def _time_line(plan: str, gpu: str) -> str:
    """The estimated time on `gpu` from a plan ('1 GPU: ..., 8 GPUs: ...')."""
    line = next(line for line in plan.splitlines() if line.startswith(f"time on {gpu}"))
    return line.split(": ", 1)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--nopt-targets", type=int, default=100)
    parser.add_argument("--large-source", default=None, help="a larger local copy of a source, for memory")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "distributed.md"))
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    options = ["--ipc", str(args.ipc), "--steps", str(args.steps), "--nopt-targets", str(args.nopt_targets)]
    options += ["--method", "dsco", "--no-eval"]
    with tempfile.TemporaryDirectory() as tmp:
        one = [sys.executable, "-m", "dsco_hub", "concentrate", *options, "--out", f"{tmp}/one"]
        two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "dsco_hub"]
        two += ["concentrate", *options, "--out", f"{tmp}/two"]
        t1, rss1 = _run(one, env)
        t2, rss2 = _run(two, env)
        large = None
        if args.large_source:
            rows = len(datasets.load_dataset(args.large_source, split="train"))
            command = [sys.executable, "-m", "dsco_hub", "concentrate", args.large_source, *options]
            large = (rows, *_run([*command, "--out", f"{tmp}/large"], env))
            seconds, rss = _run([*command, "--streaming", "--out", f"{tmp}/streamed"], env)
            card = DatasetCard.load(Path(tmp) / "streamed" / "README.md").data["dsco"]["source"]["streaming"]
            streamed = (card["rows_read"], card["rows_kept"], seconds, rss)
        data = Path("data") / "train-00000-of-00001.parquet"
        identical = (Path(tmp) / "one" / data).read_bytes() == (Path(tmp) / "two" / data).read_bytes()
    plan = _plan(env, "imagenet-1k", "--ipc", "50", "--steps", "50")
    woof = {method: _plan(env, "imagewoof", "--ipc", "100", "--steps", "50", "--method", method) for method in METHODS}
    load = os.getloadavg()[0]
    lines = [
        "# Distributed concentration: 1 vs 2 processes",
        "",
        f"Command: `python bench/distributed.py --ipc {args.ipc} --steps {args.steps} "
        f"--nopt-targets {args.nopt_targets}"
        + (f" --large-source {args.large_source}" if args.large_source else "")
        + f" --out {os.path.relpath(args.out, ROOT)}`. Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"load average {load:.1f} at the end (this benchmark's own processes included), torch {torch.__version__}, "
        "OMP_NUM_THREADS=1 per process.",
        "",
        f"`dsco-hub concentrate {' '.join(options)}` on the embedded Fashion-MNIST subset with the shipped prior: "
        f"10 classes x IPC {args.ipc}, 10 units (one per class).",
        "",
        "| processes | launcher | wall time (s) | speed-up |",
        "|---|---|---|---|",
        f"| 1 | `python -m dsco_hub` | {t1:.1f} | 1.00 |",
        f"| 2 | `torchrun --nproc_per_node 2 -m dsco_hub` | {t2:.1f} | {t1 / t2:.2f} |",
        "",
        f"Outputs byte-identical: **{identical}**. Wall times include start-up (imports, loading the source and "
        "the prior) in every process, and the assembly, card and samples grid on the main process only.",
        "",
        "## Peak memory against source size (one process)",
        "",
        "| source | train rows | wall time (s) | peak RSS of the largest process (MiB) |",
        "|---|---|---|---|",
        f"| embedded Fashion-MNIST subset | 5,000 | {t1:.1f} | {rss1:.0f} |",
        f"| same, 2 processes (torchrun) | 5,000 | {t2:.1f} | {rss2:.0f} |",
    ]
    if large is not None:
        lines.append(f"| `{args.large_source}` | {large[0]:,} | {large[1]:.1f} | {large[2]:.0f} |")
        read, kept, seconds, rss = streamed
        lines.append(
            f"| same, `--streaming` ({read:,} rows read, {kept:,} kept) | {large[0]:,} | {seconds:.1f} | {rss:.0f} |"
        )
    lines += [
        "",
        "## Plan of `dsco-hub concentrate imagenet-1k --ipc 50 --steps 50 --dry-run`",
        "",
        "```",
        plan.strip(),
        "```",
        "",
        "## Compared with what peers report",
        "",
        "Our figures are `--dry-run` estimates (FLOPs at 40 % of the GPU's dense bf16 peak), not measurements: no GPU "
        "was available. `dsco-hub concentrate imagewoof --ipc 100 --steps 50 --method M --dry-run`:",
        "",
        "| synthesis of ImageWoof, IPC 100 (1,000 images at 256 px) | time | source |",
        "|---|---|---|",
    ]
    for what, cost, where in PEERS:
        lines.append(f"| {what} | {cost} | {where} |")
    for method, label in METHODS.items():
        for gpu in ("A100", "H100 SXM"):
            estimate = _time_line(woof[method], gpu)
            lines.append(f"| dsco-hub, {label}, batches of 64 | {gpu}: {estimate} | `--dry-run` |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
