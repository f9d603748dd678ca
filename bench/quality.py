"""Benchmark: the levers of issue 16 on DsCo's quality (NOpt's feature space, generate-then-select, doping).

    python bench/quality.py --source ../shared/data/fashion_mnist --ipcs 1 10 --runs 3 --epochs 300 \
        --rows ensemble trained oversample2 trained-oversample2

Each row is DsCo with the shipped prior (or `--model`) and the options in `ROWS`, made with
`dsco_hub.pipeline.concentrate` and evaluated with `dsco_hub.assess.evaluate_set` under the protocol of
`bench/baselines.py` (ConvNet-3, hard labels, DSA-style augmentation, `--runs` x `--epochs`). Results are appended
to `--results` (JSON lines) as they finish, a rerun skips what is done, and `--table` is rewritten whole from the
results after each row, beside the reference rows of `bench/results/baselines.jsonl` (herding and DsCo at today's
defaults, same prior, same protocol), which it names by file and row.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import append_row, prior_digest, read_rows  # noqa: E402

from dsco_hub import assess, pipeline  # noqa: E402
from dsco_hub.config import ConcentrateConfig, EvalConfig, NOptConfig, SourceConfig  # noqa: E402

# name -> (ConcentrateConfig options, NOptConfig options); "dsco" is today's defaults
ROWS: dict[str, tuple[dict, dict]] = {
    "dsco": ({}, {}),
    "ensemble": ({}, {"features": "ensemble"}),
    "trained": ({}, {"features": "trained"}),
    "oversample2": ({"oversample": 2}, {}),
    "oversample4": ({"oversample": 4}, {}),
    "trained-oversample2": ({"oversample": 2}, {"features": "trained"}),
    "trained-doped0.5": ({"doping_ratio": 0.5}, {"features": "trained"}),
    # joint doping (the default "herding": continued from the class's synthetic images) against independent doping
    # (herding from zero, blind to them) at three doping ratios; joint at 0.5 is baselines.jsonl's dsco-doped row
    "doped0.25": ({"doping_ratio": 0.25}, {}),
    "doped0.75": ({"doping_ratio": 0.75}, {}),
    "independent0.25": ({"doping_ratio": 0.25, "doping_select": "herding-independent"}, {}),
    "independent0.5": ({"doping_ratio": 0.5, "doping_select": "herding-independent"}, {}),
    "independent0.75": ({"doping_ratio": 0.75, "doping_select": "herding-independent"}, {}),
    "doped-auto": ({"doping_ratio": "auto"}, {}),  # rho = IPC / (IPC + 10)
}
REFERENCE = "bench/results/baselines.jsonl"  # rows quoted beside ours (same prior and protocol)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="../shared/data/fashion_mnist")
    parser.add_argument("--ipcs", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--model", default=None, help="prior folder (default: the shipped prior)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--work", default="runs/bench-quality")
    parser.add_argument("--results", default="bench/results/quality.jsonl")
    parser.add_argument("--table", default="bench/results/quality.md")
    parser.add_argument("--table-only", action="store_true", help="Only rewrite the table from the results file.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    digest = prior_digest(args.model)
    results = Path(args.results)
    done = read_rows(results, ("row", "ipc", "prior"))
    for ipc in [] if args.table_only else args.ipcs:
        for name in args.rows:
            if (name, ipc, digest) in done:
                continue
            options, nopt = ROWS[name]
            out = Path(args.work) / f"{name}-ipc{ipc}-{digest}"
            cfg = ConcentrateConfig(
                source=SourceConfig(source=args.source),
                method="dsco",
                ipc=ipc,
                model=args.model,
                nopt=NOptConfig(**nopt),
                out=str(out),
                evaluate=False,
                **options,
            )
            started = time.time()
            pipeline.concentrate(cfg, command="bench/quality.py")
            made = time.time() - started
            block = assess.evaluate_set(
                str(out),
                SourceConfig(source=args.source),
                EvalConfig(runs=args.runs, epochs=args.epochs, baseline=False),
                update_card=True,
            )
            row = {
                "row": name,
                "ipc": ipc,
                "prior": digest,
                "options": {**options, **{f"nopt.{k}": v for k, v in nopt.items()}},
                **block["result"],
            }
            done[(name, ipc, digest)] = append_row(results, row, started, made, args.threads)
            write_table(done, digest, args)
    write_table(done, digest, args)


def _reference(digest: str) -> dict:
    """Rows of `REFERENCE` at today's defaults: herding (real images) and DsCo / doped DsCo on this prior."""
    found = {}
    path = Path(REFERENCE)
    if not path.exists():
        return found
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        row = json.loads(line)
        if row.get("variant"):
            continue
        if row["method"] == "herding" or (row["method"] in ("dsco", "dsco-doped") and row.get("prior") == digest):
            found[(row["method"], row["ipc"])] = (row, number)
    return found


def write_table(done: dict, digest: str, args) -> None:
    """Rewrite the markdown table from the results (and the reference rows) whole."""
    ipcs = sorted({ipc for _, ipc, p in done if p == digest} | set(args.ipcs))
    rows = [name for name in ROWS if any((name, ipc, digest) in done for ipc in ipcs)]
    reference = _reference(digest)
    command = (
        f"python bench/quality.py --source {args.source} --ipcs {' '.join(map(str, ipcs))} --runs {args.runs} "
        f"--epochs {args.epochs} --rows {' '.join(rows)} --results {args.results} --table {args.table}"
    )  # its own --results and --table: the quoted command writes this table, not another sweep's
    lines = [
        "# DsCo's levers on Fashion-MNIST (ConvNet-3, hard labels)",
        "",
        f"Command: `{command}` (rows appended to `{args.results}` as they finish; `--table-only` rewrites this "
        f"table). Prior {digest} (the shipped prior). Test accuracy (%) on the 10,000 test images, mean ± std over "
        f"{args.runs} runs of {args.epochs} epochs. Reference rows are quoted from `{REFERENCE}` (line numbers).",
        "",
        "| row | options | " + " | ".join(f"IPC {i}" for i in ipcs) + " |",
        "|---|---|" + "---|" * len(ipcs),
    ]
    labels = (
        ("herding", "herding (real images)"),
        ("dsco", "DsCo defaults"),
        ("dsco-doped", "DsCo ρ 0.5 (joint doping)"),
    )
    for method, label in labels:
        cells = []
        for ipc in ipcs:
            hit = reference.get((method, ipc))
            cells.append(f"{hit[0]['accuracy_mean']:.1f} ± {hit[0]['accuracy_std']:.1f} (l. {hit[1]})" if hit else "—")
        lines.append(f"| {label} | reference | " + " | ".join(cells) + " |")
    for name in rows:
        options = ", ".join(f"{k}={v}" for k, v in {**ROWS[name][0], **ROWS[name][1]}.items()) or "defaults"
        cells = []
        for ipc in ipcs:
            row = done.get((name, ipc, digest))
            cells.append(f"{row['accuracy_mean']:.1f} ± {row['accuracy_std']:.1f}" if row else "—")
        lines.append(f"| {name} | {options} | " + " | ".join(cells) + " |")
    lines += ["", "Wall time per set (concentration / evaluation of all runs, seconds):", ""]
    for (name, ipc, prior), row in sorted(done.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if prior == digest:
            lines.append(f"- {name} IPC {ipc}: {row['select_seconds']} / {row['eval_seconds']} ({row['machine']})")
    Path(args.table).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
