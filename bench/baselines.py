"""Benchmark: concentration methods (random, herding, diffusion, DsCo) under the evaluation protocol.

    python bench/baselines.py --source ../shared/data/fashion_mnist --ipcs 1 10 50 --runs 3 --epochs 300 \
        --methods random herding diffusion dsco dsco-doped dsco-datafree --doping-ratio 0.5

Methods: `random` / `herding` (real images), `diffusion` (plain guided DDIM sampling), `dsco` (NOpt,
doping ratio 0), `dsco-doped` (NOpt + herding doping at `--doping-ratio`), `dsco-datafree` (NOpt with
only the class names: targets are the model's own samples). Synthetic methods use `--model` (default:
the shipped prior); their rows record the prior's weight digest, so results of different priors are
never mixed. Each (method, IPC) set is made with `dsco_hub.pipeline.concentrate` and evaluated with
`dsco_hub.assess.evaluate_set` (ConvNet-3, hard labels, DSA-style augmentation). Results are
appended to a JSON-lines file as they finish (a rerun skips what is done) and the markdown table,
beside the published figures of `docs/method.md` §6, is rewritten after each result.

`--seed S` makes the sets with set seed S (default 0: the table of the README). Rows of another seed record it
(`seed`), live in their own work folders, and are neither reused nor tabled by a run of another seed; a seed other
than 0 needs its own `--table` (`bench/results/set_seeds.md` gathers them by hand).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from dsco_hub import assess, models, pipeline
from dsco_hub.config import ConcentrateConfig, EvalConfig, NOptConfig, SourceConfig
from dsco_hub.data import load_source
from dsco_hub.models import shipped_prior_path

SYNTHETIC = ("diffusion", "dsco", "dsco-doped", "dsco-datafree")

# ConvNet-3, hard labels (DC, ICLR 2021; DSA, ICML 2021), test accuracy in %
PUBLISHED = {
    "Fashion-MNIST": {
        "random": {1: 51.4, 10: 73.8, 50: 82.5},
        "herding": {1: 67.0, 10: 71.1, 50: 71.9},
        "DC": {1: 70.5, 10: 82.3, 50: 83.6},
        "DSA": {1: 70.6, 10: 84.6, 50: 88.7},
        "full": 93.5,
    }
}


RESULTS, TABLE = "bench/results/baselines.jsonl", "bench/results/baselines.md"  # --results, --table

# What the digests of priors measured here stand for (rows of other priors are listed by digest only)
PRIORS = {
    "26c6b4bf4c62": "the shipped Fashion-MNIST prior (since 2026-12-05): 9,600 training steps on the CPU, DDIM "
    "without x0 clipping (bench/results/prior_9600.md)",
    "572c2ad7dd07": "the same architecture trained 2,400 steps, DDIM without x0 clipping; shipped from 2026-11-22 to "
    "2026-12-05, superseded by 26c6b4bf4c62 (better DsCo at IPC 10 and 50)",
    "adfb977c86bd": "572c2ad7dd07's weights sampled with x0 clipping (`clip_sample=true`, before 2026-11-22; digest "
    "of the weights only); superseded: clipping erased classes under guidance (bench/results/prior_quality.md)",
}


def prior_digest(model: str | None) -> str:
    """`dsco_hub.models.prior_digest` of `--model` (default: the shipped prior): a prior's identity in the results."""
    return models.prior_digest(model or shipped_prior_path())


def append_row(results: Path, row: dict, started: float, made: float, threads: int) -> dict:
    """Append `row` to the JSON-lines file `results` with its wall times, and return it as written.

    Args:
        results (`Path`): the results file (created with its folder if missing).
        row (`dict`): the row's own fields (method, IPC, accuracies, ...).
        started (`float`): `time.time()` when the set's concentration began.
        made (`float`): seconds the concentration took; the rest, up to now, was the evaluation.
        threads (`int`): the `--threads` the benchmark ran with.

    Returns:
        `dict`: `row` plus `select_seconds`, `eval_seconds` (seconds, 0.1 s), `threads` and `machine`.
    """
    row = {
        **row,
        "select_seconds": round(made, 1),
        "eval_seconds": round(time.time() - started - made, 1),
        "threads": threads,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def read_rows(results: Path, key: tuple[str, ...]) -> dict:
    """The rows of the JSON-lines file `results` (none when it is missing) by the values of their `key` fields
    (a missing field counts as ""); of two rows with the same key the later one is kept."""
    done = {}
    if results.exists():
        for line in results.read_text().splitlines():
            row = json.loads(line)
            done[tuple(row.get(k, "") for k in key)] = row
    return done


def method_config(method: str, ipc: int, out: Path, args) -> ConcentrateConfig:
    """The `ConcentrateConfig` of one benchmark row (no evaluation: `evaluate_set` runs it after)."""
    source = SourceConfig(source=args.source)
    # a finished set with the same settings is reused (its folder name carries the prior's digest), so a rerun
    # after a crash or a new row only makes what is missing
    common = dict(ipc=ipc, seed=args.seed, out=str(out), overwrite=False, evaluate=False)
    if method not in SYNTHETIC:
        return ConcentrateConfig(source=source, method=method, **common)
    sampler = dict(model=args.model, **common)
    if method == "diffusion":
        return ConcentrateConfig(source=source, method="diffusion", **sampler)
    sampler["nopt"] = NOptConfig(**nopt_overrides(args))
    if method == "dsco":
        return ConcentrateConfig(source=source, method="dsco", **sampler)
    if method == "dsco-doped":
        return ConcentrateConfig(source=source, method="dsco", doping_ratio=args.doping_ratio, **sampler)
    names = load_source(source).class_names
    free = dict(data_free=True, labels=names, pool_size=args.pool_size)
    return ConcentrateConfig(source=source, method="dsco", **free, **sampler)


def nopt_overrides(args) -> dict:
    """The NOpt settings given on the command line (`--nopt-window`, `--nopt-lr`, `--nopt-target-batch`); the rest
    are defaults."""
    given = {"window": args.nopt_window, "lr": args.nopt_lr, "target_batch": args.nopt_target_batch}
    return {key: value for key, value in given.items() if value is not None}


def run(args) -> None:
    """Make and evaluate every (method, IPC) set not yet in `args.results`, rewriting the table after each."""
    torch.set_num_threads(args.threads)
    work, results = Path(args.work), Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    digest = prior_digest(args.model)
    every = read_rows(results, ("method", "ipc", "prior", "variant", "seed"))
    done = {key[:4]: row for key, row in every.items() if row.get("seed", 0) == args.seed}  # this set seed's
    if args.table_only:
        write_table(done, args)
        return
    for ipc in args.ipcs:
        for method in args.methods:
            prior = digest if method in SYNTHETIC else ""
            variant = variant_name(method, ipc, args)
            if (method, ipc, prior, variant) in done:
                continue
            seed = f"seed{args.seed}" if args.seed else ""
            out = work / "-".join(filter(None, (f"{method}-ipc{ipc}", variant.replace(" ", ""), prior, seed)))
            started = time.time()
            cfg = method_config(method, ipc, out, args)
            pipeline.concentrate(cfg, command="bench/baselines.py")
            made = time.time() - started
            eval_cfg = EvalConfig(runs=args.runs, epochs=args.epochs, baseline=False)
            block = assess.evaluate_set(str(out), SourceConfig(source=args.source), eval_cfg, update_card=True)
            row = {
                "method": method,
                "ipc": ipc,
                "prior": prior,
                **({"variant": variant} if variant else {}),
                **({"seed": args.seed} if args.seed else {}),
                **({"doping_ratio": args.doping_ratio} if method == "dsco-doped" else {}),
                **block["result"],
            }
            done[(method, ipc, prior, variant)] = append_row(results, row, started, made, args.threads)
            write_table(done, args)


def variant_name(method: str, ipc: int, args) -> str:
    """The row's settings that differ from the defaults at this IPC (part of its identity), e.g. "NOpt lr 0.1"."""
    if method not in SYNTHETIC or method == "diffusion":
        return ""
    n = ConcentrateConfig(ipc=ipc, doping_ratio=args.doping_ratio if method == "dsco-doped" else 0.0).num_synthetic
    nopt = NOptConfig()
    defaults = {"window": nopt.window_for(n), "lr": nopt.lr, "target_batch": nopt.batch_for(n)}
    names = {"window": "NOpt window", "lr": "NOpt lr", "target_batch": "target batch"}
    values = {"target_batch": {0: "all"}}
    given = {k: v for k, v in nopt_overrides(args).items() if v != defaults[k]}
    variant = [f"{names[k]} {values.get(k, {}).get(v, v)}" for k, v in given.items()]
    if method == "dsco-datafree" and args.pool_size not in (None, ConcentrateConfig().pool_for(n)):
        variant.append(f"pool {args.pool_size}")
    return ", ".join(variant)


def row_name(method: str, prior: str, variant: str) -> str:
    """How a row is named in the table: the method, then the prior's digest and non-default settings."""
    details = ", ".join(d for d in (f"prior {prior}" if prior else "", variant) if d)
    return f"{method} ({details})" if details else method


def write_table(done: dict, args) -> None:
    """Write the markdown table of every finished (method, IPC) beside the published figures."""
    published = PUBLISHED["Fashion-MNIST"]
    ipcs = sorted({ipc for _, ipc, _, _ in done} | set(args.ipcs))
    order = ["random", "herding", *SYNTHETIC]
    variants = {(m, p, v) for m, _, p, v in done}
    known = list(PRIORS)  # the current shipped prior first, superseded ones after

    def rank(m):
        return (m[1] != "", known.index(m[1]) if m[1] in known else -1, order.index(m[0]) if m[0] in order else 99, m)

    methods = sorted(variants, key=rank)
    method_names = " ".join(dict.fromkeys(m for m, _, _ in methods))
    # the options that name the prior and the files, where they are not the defaults: the command writes this file
    options = (("model", args.model, None), ("results", args.results, RESULTS), ("table", args.table, TABLE))
    extra = "".join(f" --{name} {value}" for name, value, default in options if value != default)
    lines = [
        "# Concentration methods on Fashion-MNIST (ConvNet-3, hard labels)",
        "",
        f"Command: `python bench/baselines.py --source {args.source} --methods {method_names} --ipcs "
        f"{' '.join(map(str, ipcs))} --runs {args.runs} --epochs {args.epochs}{extra}` (rows appended to "
        f"`{args.results}` as they finish; `--table-only` rewrites this table). Test accuracy (%) on the 10,000 test "
        f"images, mean ± std over "
        f"{args.runs} runs; published figures from DC (ICLR 2021) and DSA (ICML 2021), full dataset "
        f"{published['full']} (quoted).",
        "",
        "| method | " + " | ".join(f"IPC {i}" for i in ipcs) + " |",
        "|---|" + "---|" * len(ipcs),
    ]
    for method, prior, variant in methods:
        cells = []
        for ipc in ipcs:
            row = done.get((method, ipc, prior, variant))
            cells.append(f"{row['accuracy_mean']:.1f} ± {row['accuracy_std']:.1f}" if row else "—")
        name = row_name(method, prior, variant)
        lines.append(f"| dsco-hub {name} | " + " | ".join(cells) + " |")
    for name in ("random", "herding", "DC", "DSA"):
        lines.append(f"| published {name} | " + " | ".join(str(published[name].get(i, "—")) for i in ipcs) + " |")
    priors = list(dict.fromkeys(p for _, p, _ in methods if p))
    if priors:
        lines += ["", "Priors:", ""] + [f"- {p}: {PRIORS.get(p, 'a prior passed with --model')}" for p in priors]
    if any(v for _, _, v in methods):
        lines += [
            "",
            "Rows with settings in their name differ from today's defaults in those settings: NOpt optimizes "
            "every DDIM step for 1 to 3 synthetic images per class and the first half for more "
            "(`NOptConfig.window_for`, `bench/results/nopt_window_small_ipc.md`); NOpt's step length is 0.05 "
            "(`bench/results/nopt_sweep.md`); NOpt embeds max(128, 10 n) of the 500 targets per iteration "
            "for n synthetic images per class, all of them when n = 1 (`NOptConfig.batch_for`, "
            "`bench/results/defaults_checks.md`); "
            "the data-free pool holds max(4 IPC, 256) of the model's own samples per class.",
        ]
    lines += ["", "Wall time per set (selection / evaluation of all runs, seconds):", ""]
    # keys are (method, ipc, prior, variant): list by IPC, then method, prior and variant
    by_ipc = sorted(done.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2], kv[0][3]))
    for (method, ipc, prior, variant), row in by_ipc:
        name = row_name(method, prior, variant)
        lines.append(f"- {name} IPC {ipc}: {row['select_seconds']} / {row['eval_seconds']} ({row['machine']})")
    Path(args.table).write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="../shared/data/fashion_mnist")
    parser.add_argument("--ipcs", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument(
        "--methods", nargs="+", default=["random", "herding"], help=f"random, herding, {', '.join(SYNTHETIC)}"
    )
    parser.add_argument("--model", default=None, help="prior folder for synthetic methods (default: shipped)")
    parser.add_argument("--doping-ratio", type=float, default=0.5, help="doping ratio of dsco-doped")
    parser.add_argument("--nopt-window", type=float, default=None, help="NOpt window (default: window_for)")
    parser.add_argument("--nopt-lr", type=float, default=None, help="NOpt step length (default: NOptConfig's)")
    parser.add_argument(
        "--nopt-target-batch", type=int, default=None, help="NOpt targets per iteration, 0 = all (default: batch_for)"
    )
    parser.add_argument(
        "--pool-size", type=int, default=None, help="data-free target pool per class (default: ConcentrateConfig's)"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--work", default="runs/bench-baselines")
    parser.add_argument("--results", default=RESULTS)
    parser.add_argument("--table", default=TABLE)
    parser.add_argument("--table-only", action="store_true", help="Only rewrite the table from the results file.")
    args = parser.parse_args()
    if args.seed and args.table == TABLE:
        parser.error(f"--seed {args.seed} needs its own --table: {TABLE} is the seed-0 table of the README")
    run(args)


if __name__ == "__main__":
    main()
