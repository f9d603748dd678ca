"""Benchmark: how NOpt's settings move a DsCo set, in proxies and in accuracy (the sweep behind the defaults).

    python bench/nopt_sweep.py lr05 --ipc 10 --runs 2 --nopt '{"lr": 0.05, "target_batch": 128}'
    python bench/nopt_sweep.py pool64 --ipc 1 --runs 3 --config '{"data_free": true, "pool_size": 64}'

One row per call: the set is made with `dsco_hub.pipeline.concentrate` (`--method dsco`, the shipped prior,
`NOptConfig(**--nopt)` and `ConcentrateConfig(**--config)` overrides; data-free rows get the source's class
names as labels), then measured with proxies that need no training:

- fidelity: % of images a ConvNet-3 trained on the real training split labels as their class (the classifier
  cached by `bench/prior_quality.py`; it scores 91.2 % on real test images);
- saturated: fraction of pixels at 250 or above (real test images: 0.013), the signature of over-contrast;
- MMD^2: mean over classes of the Gaussian-kernel MMD^2 between the set's and 500 real test images' features
  of that classifier (held-out data, a trained embedding, unlike NOpt's random ConvNets);
- spread: RMS pairwise feature distance within a class over the same for real test images (1 = as spread out
  as real data), averaged over classes;

and by the evaluation protocol (ConvNet-3, hard labels, 300 epochs, `--runs` students; `--runs 0`: proxies only,
for reference sets whose accuracy another results file holds). Rows are appended to
`--results` (default `bench/results/nopt_sweep.jsonl`); the table beside it (`.md`) is rewritten from it, and
`--table-only` rewrites only the table. The table quotes the call that made each row.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import datasets
import numpy as np
import torch
from huggingface_hub import DatasetCard
from safetensors.torch import load_file

from dsco_hub import assess, pipeline
from dsco_hub.config import ConcentrateConfig, EvalConfig, NOptConfig, SourceConfig
from dsco_hub.data import decode_images, load_source, pil_to_uint8, to_model_range
from dsco_hub.evaluate import ConvNet3
from dsco_hub.kernels import mmd2, sq_dists


@torch.no_grad()
def proxies(folder: Path, source: SourceConfig, classifier: str) -> dict:
    """Fidelity (%), saturated pixel fraction, mean MMD^2 and spread of a written set (see the module docstring).

    The set's images are read as `(N, 1, 28, 28)` (Fashion-MNIST, the classifier's input); returns a dict of floats,
    `spread` None when the set has one image per class.
    """
    ds = datasets.load_dataset("parquet", data_files=str(folder / "data" / "*.parquet"), split="train")
    pixels = pil_to_uint8(ds["image"], 1, 28)  # (N, 1, 28, 28) uint8
    x, y = to_model_range(pixels), torch.tensor(ds["label"])
    test = load_source(source, split="test")
    model = ConvNet3(1, test.num_classes, 28)
    model.load_state_dict(load_file(Path(classifier) / "model.safetensors"))
    model.eval()
    mmds, spreads = [], []
    for k in range(test.num_classes):
        real = model.embed(to_model_range(decode_images(test, test.class_index[k][:500], 1, 28)))
        synthetic = model.embed(x[y == k])
        mmds.append(mmd2(synthetic, real).item())
        spreads.append((sq_dists(synthetic, synthetic).mean() / sq_dists(real, real).mean()).sqrt().item())
    return {
        "fidelity": round(100 * (model(x).argmax(1) == y).float().mean().item(), 1),
        "saturated": round((pixels >= 250).float().mean().item(), 3),
        "mmd2": round(float(np.mean(mmds)), 4),
        "spread": round(float(np.mean(spreads)), 3) if len(x) > test.num_classes else None,  # IPC 1: undefined
    }


# Figures quoted beside the sweep, each naming the results file and row it comes from (not rows of this sweep).
REFERENCES = (
    "The rows `plain` (plain sampling, proxies only) and `lr01` / `lr01-tb128` (the earlier step length 0.1) are the"
    " references. Accuracies quoted (3 runs each): plain sampling 73.3 (IPC 10) and 81.4 (IPC 50), "
    "`bench/results/baselines.md` row `dsco-hub diffusion (prior 572c2ad7dd07)`; data-free DsCo at IPC 1 with the old"
    " pool of 4 samples per class 53.6, row `dsco-hub dsco-datafree (prior 572c2ad7dd07, NOpt lr 0.1, pool 4)`. "
    "Real test images: saturated 0.013."
)


def row_command(row: dict) -> str:
    """The call that makes `row` again: NOpt's step length and target batch pinned to the values the row used.

    Rows record the settings they were given; the rest were the defaults of the day: NOpt's `lr` (`default_lr`) and
    its target batch, which rows made since 2026-12-05 record as NOpt resolved it (`target_batch_used`, the card's
    `nopt_target_batch`); older rows were made before 2026-12-03, when the default was all targets (0).
    """
    nopt = {"lr": row["default_lr"], "target_batch": row.get("target_batch_used", 0), **row["nopt"]}
    config = f" --config '{json.dumps(row['config'])}'" if row["config"] else ""
    return (
        f"python bench/nopt_sweep.py {row['name']} --ipc {row['ipc']} --runs {row['runs']} "
        f"--nopt '{json.dumps(nopt)}'{config}"
    )


def accuracy(row: dict) -> str:
    """A row's accuracy cell: mean ± std (%) and the number of runs, or "— (proxies only)" for `--runs 0`."""
    if not row["runs"]:
        return "— (proxies only)"
    return f"{row['accuracy_mean']:.1f} ± {row['accuracy_std']:.1f} ({row['runs']})"


def write_table(rows: list[dict], path: Path, results: Path) -> None:
    """The markdown table of every row, grouped by IPC, then the call that made each row."""
    rows = sorted(rows, key=lambda r: (r["ipc"], r["name"]))
    lines = [
        "# NOpt settings sweep (Fashion-MNIST, shipped prior, DDIM 25 steps, guidance 2)",
        "",
        f"Command: `python bench/nopt_sweep.py --table-only --results {results}` (rewrites this table from "
        f"`{results}`; each row is made by one call, listed below the table; see the script's docstring for the "
        "proxies). Accuracy: ConvNet-3, hard labels, 300 epochs, mean ± std over the runs given. Settings not "
        "listed are the defaults of the day; `lr` is always listed (its default moved from 0.1 to 0.05 with this "
        "sweep). " + REFERENCES,
        "",
        "| IPC | row | settings | fidelity % | saturated | MMD^2 | spread | accuracy % (runs) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        given = {"lr": row["default_lr"], **row["nopt"], **row["config"]}
        settings = ", ".join(f"{k} {v}" for k, v in given.items())
        lines.append(
            f"| {row['ipc']} | {row['name']} | {settings} | {row['fidelity']} | {row['saturated']} | "
            f"{row['mmd2']} | {row['spread'] or '—'} | {accuracy(row)} |"
        )
    lines += ["", "Rows, one call each (NOpt's step length and target batch pinned to what the row used):", ""]
    lines += [f"    {row_command(row)}" for row in rows]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="row name (also the set's folder under --work)")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--runs", type=int, default=2, help="students trained; 0 = proxies only")
    parser.add_argument("--nopt", default="{}", help="NOptConfig overrides as JSON, e.g. '{\"lr\": 0.05}'")
    parser.add_argument(
        "--config", default="{}", help="ConcentrateConfig overrides as JSON, e.g. '{\"pool_size\": 64}'"
    )
    parser.add_argument("--source", default="../shared/data/fashion_mnist")
    parser.add_argument("--classifier", default="runs/fidelity-convnet3", help="bench/prior_quality.py's cache")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--work", default="runs/nopt-sweep")
    parser.add_argument("--results", default="bench/results/nopt_sweep.jsonl", help="rows; the table is its .md")
    parser.add_argument("--table-only", action="store_true", help="only rewrite the table from --results")
    args = parser.parse_args()
    results = Path(args.results)
    if args.table_only:
        write_table(
            [json.loads(line) for line in results.read_text().splitlines()], results.with_suffix(".md"), results
        )
        return
    if args.name is None:
        parser.error("NAME is required (the row's name), unless --table-only")
    if args.runs < 0:
        parser.error(f"--runs={args.runs} must be >= 0 (0 = proxies only, no student trained)")
    try:
        nopt, overrides = json.loads(args.nopt), json.loads(args.config)
    except json.JSONDecodeError as err:
        parser.error(f"--nopt / --config must be JSON objects ({err}); e.g. --nopt '{{\"lr\": 0.05}}'")
    if not (Path(args.classifier) / "model.safetensors").exists():
        parser.error(
            f"--classifier={args.classifier} has no model; run `python bench/prior_quality.py --classifier-only` first"
        )
    torch.set_num_threads(args.threads)
    source = SourceConfig(source=args.source)
    if overrides.get("data_free"):
        overrides.setdefault("labels", tuple(load_source(source).class_names))
    out = Path(args.work) / args.name
    started = time.time()
    try:
        cfg = ConcentrateConfig(
            source=source,
            ipc=args.ipc,
            out=str(out),
            overwrite=True,
            evaluate=False,
            nopt=NOptConfig(**nopt),
            **overrides,
        )
    except TypeError as err:  # an unknown key in --nopt or --config
        parser.error(f"--nopt / --config: {err}; use NOptConfig / ConcentrateConfig field names, e.g. lr, pool_size")
    pipeline.concentrate(cfg, command="bench/nopt_sweep.py")
    made = time.time() - started
    settings = DatasetCard.load(out / "README.md").data["dsco"]["settings"]
    block = {"result": {"accuracy_mean": None, "accuracy_std": None, "accuracies": []}}  # --runs 0: proxies only
    if args.runs:
        block = assess.evaluate_set(str(out), source, EvalConfig(runs=args.runs, baseline=False))
    row = {
        "name": args.name,
        "ipc": args.ipc,
        "nopt": nopt,
        "config": {k: v for k, v in overrides.items() if k != "labels"},
        "default_lr": NOptConfig().lr,
        **({"target_batch_used": settings["nopt_target_batch"]} if "nopt_target_batch" in settings else {}),
        **proxies(out, source, args.classifier),
        "accuracy_mean": block["result"]["accuracy_mean"],
        "accuracy_std": block["result"]["accuracy_std"],
        "accuracies": block["result"]["accuracies"],
        "runs": args.runs,
        "make_seconds": round(made),
        "eval_seconds": round(time.time() - started - made),
    }
    with results.open("a") as f:
        f.write(json.dumps(row) + "\n")
    write_table([json.loads(line) for line in results.read_text().splitlines()], results.with_suffix(".md"), results)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
