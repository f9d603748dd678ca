"""Benchmark: lossless concentration, accuracy against data volume (doped DsCo and random real subsets).

    python bench/lossless.py --source ../shared/data/fashion_mnist --per-class 1000 \
        --volumes 0.05 0.1 0.25 0.5 1.0 --doping-ratio 0.5 --train-steps 1000 --runs 2 \
        --work runs/bench-lossless --results bench/results/lossless.jsonl --table bench/results/lossless.md

The source is a seeded random subset of `--per-class` training images per class (the full test split is
kept), saved with `save_to_disk`: the data volume of a set is `IPC / per_class`. At every volume two
sets are made with `dsco_hub.pipeline.concentrate`: a random real subset (`--method random`) and doped
DsCo (`--method dsco --doping-ratio RHO`, herding doping); volume 1.0 of the random arm is the whole
source (the "full" reference). Every student trains the same number of SGD steps (`--train-steps`,
batch 256; epochs = steps / batches per epoch), so volumes differ only in data, not in training budget.
Rows are appended to `--results` (a rerun skips what is done) and the table `--table` reports the smallest volume
at which doped DsCo matches the full source's accuracy within the full source's standard deviation, and within the
two sets' combined one. The table quotes the command with its `--work`, `--results` and `--table`, so running the
quoted command writes that table again (another sweep needs its own three). `--nopt-target-batch` sets NOpt's
targets per iteration in the doped sets (default: the product's, max(128, 10 n) for n synthetic images per class).
Doped rows record the prior's weight digest (`prior`) and are keyed by it, as are their sets in `--work`: a sweep
with another prior (a new shipped one, or `--model`) makes its own doped rows and tables only this prior's.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import prior_digest, read_rows  # noqa: E402

from dsco_hub import assess, pipeline  # noqa: E402
from dsco_hub.config import DOPING_SELECT, ConcentrateConfig, EvalConfig, NOptConfig, SourceConfig  # noqa: E402
from dsco_hub.data import load_source  # noqa: E402
from dsco_hub.doping import select_random  # noqa: E402


def make_source(args) -> Path:
    """A `save_to_disk` DatasetDict with `--per-class` training images per class and the full test split."""
    folder = Path(args.work) / f"source-{args.per_class}pc"
    if (folder / "dataset_dict.json").exists():
        return folder
    full = load_source(SourceConfig(source=args.source))
    rows = np.sort(
        np.concatenate([select_random(full.class_index[k], args.per_class, 0, k) for k in range(full.num_classes)])
    )
    train = datasets.load_dataset(args.source, split="train").select(rows.tolist())
    test = datasets.load_dataset(args.source, split="test")
    tmp = folder.with_name(folder.name + ".tmp")
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp))
    tmp.rename(folder)
    return folder


def _ratio(text: str) -> float | str:
    """`--doping-ratio`: a float in [0, 1] or "auto" (the product's `config.auto_doping_ratio`)."""
    return text if text == "auto" else float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="../shared/data/fashion_mnist")
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--volumes", type=float, nargs="+", default=[0.05, 0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--doping-ratio", type=_ratio, default=0.5, help="rho in [0, 1], or auto (IPC / (IPC + 10))")
    parser.add_argument("--doping-select", choices=DOPING_SELECT, default="herding", help="as concentrate's option")
    parser.add_argument("--model", default=None, help="prior folder (default: the shipped prior)")
    parser.add_argument("--train-steps", type=int, default=1000, help="SGD steps of every student")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--nopt-target-batch",
        type=int,
        default=None,
        help="NOpt targets per iteration, 0 = all (default: the product's)",
    )
    parser.add_argument("--work", default="runs/bench-lossless")
    parser.add_argument("--results", default="bench/results/lossless.jsonl")
    parser.add_argument("--table", default="bench/results/lossless.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source = SourceConfig(source=str(make_source(args)))
    results = Path(args.results)
    digest = prior_digest(args.model)
    done = {  # the random arm's rows, and the doped ones made with this prior, by (arm, volume)
        (arm, volume): row
        for (arm, volume, prior), row in read_rows(results, ("arm", "volume", "prior")).items()
        if prior == ("" if arm == "random" else digest)
    }
    arms = [("random", v) for v in args.volumes] + [("dsco-doped", v) for v in args.volumes if v < 1]
    for arm, volume in arms:
        if (arm, volume) in done:
            continue
        ipc = max(1, round(volume * args.per_class))
        out = Path(args.work) / (f"{arm}-v{volume}" if arm == "random" else f"{arm}-v{volume}-{digest}")
        started = time.time()
        # a set finished by an interrupted sweep is reused (a set made with other settings is refused: use another
        # --work); the evaluation of a set is not resumable, so a row is written only when both are done
        extra = {}
        if arm != "random":
            nopt = NOptConfig(target_batch=args.nopt_target_batch)
            extra = {
                "method": "dsco",
                "doping_ratio": args.doping_ratio,
                "doping_select": args.doping_select,
                "model": args.model,
                "nopt": nopt,
            }
        made_set = pipeline.concentrate(
            ConcentrateConfig(
                source=source, ipc=ipc, out=str(out), overwrite=False, evaluate=False, **{"method": "random", **extra}
            ),
            command="bench/lossless.py",
        )
        made = time.time() - started
        batches = math.ceil(ipc * 10 / 256)
        epochs = max(1, round(args.train_steps / batches))
        block = assess.evaluate_set(str(out), source, EvalConfig(runs=args.runs, epochs=epochs, baseline=False))
        row = {
            "arm": arm,
            "volume": volume,
            "ipc": ipc,
            **({"prior": digest} if arm != "random" else {}),
            "doping_ratio": made_set.dsco["doping_ratio"] if arm != "random" else 1.0,
            **({"doping_select": args.doping_select} if arm != "random" else {}),
            **({"nopt_target_batch": made_set.dsco["settings"]["nopt_target_batch"]} if arm != "random" else {}),
            "epochs": epochs,
            "train_steps": epochs * batches,
            "test_images": block["test"]["num_images"],
            **block["result"],
            "make_seconds": round(made, 1),
            "eval_seconds": round(time.time() - started - made, 1),
            "machine": f"{platform.machine()}, {args.threads} threads",
        }
        results.parent.mkdir(parents=True, exist_ok=True)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done[(arm, volume)] = row
        write_table(done, digest, args)
    write_table(done, digest, args)


def write_table(done: dict, digest: str, args) -> None:
    """Accuracy against volume for both arms (doped DsCo with prior `digest`), and doped DsCo's smallest lossless
    volume."""
    full = done.get(("random", 1.0))
    test_images = next(iter(done.values()))["test_images"] if done else "?"
    lines = [
        "# Lossless concentration: accuracy against data volume (Fashion-MNIST, ConvNet-3, hard labels)",
        "",
        f"Command: `python bench/lossless.py --source {args.source} --per-class {args.per_class} --volumes "
        f"{' '.join(map(str, args.volumes))} --doping-ratio {args.doping_ratio}"
        + (f" --doping-select {args.doping_select}" if args.doping_select != "herding" else "")
        + f" --train-steps {args.train_steps} "
        f"--runs {args.runs}"
        + (f" --model {args.model}" if args.model else "")
        + (f" --nopt-target-batch {args.nopt_target_batch}" if args.nopt_target_batch is not None else "")
        + f" --work {args.work} --results {args.results} --table {args.table}`. Source: {args.per_class} training "
        "images per class (a seeded subset), the "
        f"{test_images} test images; every student trains about {args.train_steps} SGD steps (batch 256). "
        f"Doped DsCo with prior {digest}.",
        "",
        "NOpt targets embedded per iteration in the doped sets (0 = all): "
        + (
            ", ".join(sorted({str(r.get("nopt_target_batch", "?")) for (a, _), r in done.items() if a != "random"}))
            or "—"
        )
        + "."
        # rows that record `doping_select` record the ratio reached (real images / IPC); older ones the ratio asked
        + "".join(
            f" Doping ratio reached at IPC {r['ipc']}: {r['doping_ratio']:.2f}."
            for (a, _), r in sorted(done.items())
            if a != "random" and "doping_select" in r
        ),
        "",
        "| volume | IPC | random real | doped DsCo (rho " + str(args.doping_ratio) + ") |",
        "|---|---|---|---|",
    ]

    def cell(row):
        return f"{row['accuracy_mean']:.1f} ± {row['accuracy_std']:.1f}" if row else "—"

    for volume in sorted({v for _, v in done}):
        r, d = done.get(("random", volume)), done.get(("dsco-doped", volume))
        ipc = (r or d)["ipc"]
        lines.append(f"| {volume:.0%} | {ipc} | {cell(r)} | {cell(d) if volume < 1 else '(full source)'} |")
    if full:
        doped = sorted((v, row) for (arm, v), row in done.items() if arm == "dsco-doped")
        own = [v for v, row in doped if row["accuracy_mean"] >= full["accuracy_mean"] - full["accuracy_std"]]
        both = [
            v
            for v, row in doped
            if full["accuracy_mean"] - row["accuracy_mean"] <= math.hypot(full["accuracy_std"], row["accuracy_std"])
        ]

        def first(volumes):
            return f"{volumes[0]:.0%}" if volumes else "none of the volumes measured"

        lines += [
            "",
            f"Full source: {cell(full)}. Smallest volume where doped DsCo is within the full source's std: "
            f"{first(own)}; within the two sets' combined std (sqrt(s_full^2 + s_dsco^2)): {first(both)}.",
        ]
    Path(args.table).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
