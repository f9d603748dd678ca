"""Benchmark: the checks behind NOpt's target batch and the data-free pool's defaults (guidance and size).

    python bench/defaults_checks.py --source ../shared/data/fashion_mnist \
        --groups target-batch pool-guidance pool-size --target-batch-ipc 1 --seeds 0 1 2 --target-batches 128 0 \
        --pool-ipc 10 --pool-guidance 1.0 2.0 3.0 --guidance-pool-size 128 --pool-sizes 128 256 \
        --runs 3 --epochs 300 --threads 1 --work runs/bench-defaults --results bench/results/defaults_checks.jsonl \
        --table bench/results/defaults_checks.md

Three groups of sets, each made with `dsco_hub.pipeline.concentrate` and evaluated with
`dsco_hub.assess.evaluate_set` (ConvNet-3, hard labels, `--runs` x `--epochs`, no random real baseline), as
`bench/baselines.py` does:

- `target-batch`: DsCo from SOURCE at IPC `--target-batch-ipc`, set seeds `--seeds`, with NOpt embedding
  `--target-batches` targets per iteration (0 = all of them), as `dsco-hub concentrate SOURCE --nopt-target-batch B`;
- `pool-guidance`: data-free DsCo (only SOURCE's class names; SOURCE's test split evaluates it) at IPC `--pool-ipc`
  with a pool of `--guidance-pool-size` samples per class drawn at each `--pool-guidance` scale;
- `pool-size`: data-free DsCo at IPC `--pool-ipc` with each pool size of `--pool-sizes` (pool guidance: the run's).

A pool-guidance set at the run's own guidance (2.0) with the pool size of a pool-size set is the same set: it is made
once and shown in both tables. `--groups` runs some of the groups: the table shows those and every other group with
rows in the results file (same options), and its command names them all, so parts run separately add up to one table
that its quoted command writes again. Rows are appended to `--results` (JSON lines) as they finish, a rerun skips
the rows already there, and `--table` is rewritten whole from the results after each row (`--table-only`: only
that). The table quotes rows of `bench/results/baselines.jsonl` only by their key fields (method, IPC, prior,
variant).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import append_row, prior_digest, read_rows  # noqa: E402

from dsco_hub import assess, pipeline  # noqa: E402
from dsco_hub.config import ConcentrateConfig, EvalConfig, NOptConfig, SourceConfig  # noqa: E402
from dsco_hub.data import load_source  # noqa: E402

GROUPS = ("target-batch", "pool-guidance", "pool-size")
GUIDANCE = ConcentrateConfig().guidance_scale  # the run's guidance (the synthetic images'), the pool's default
REFERENCE = "bench/results/baselines.jsonl"  # rows quoted by their key fields (same prior and protocol)
KEY = ("kind", "ipc", "seed", "nopt_target_batch", "pool_size", "pool_guidance_scale", "prior")


def planned(args, digest: str, groups: tuple[str, ...] | list[str]) -> dict[str, list[tuple]]:
    """The row keys each of `groups` names with the options of `args` (a key: the values of `KEY`)."""
    keys = {
        "target-batch": [
            ("data", args.target_batch_ipc, seed, batch, None, None, digest)
            for seed in args.seeds
            for batch in args.target_batches
        ],
        "pool-guidance": [
            ("data-free", args.pool_ipc, 0, None, args.guidance_pool_size, float(g), digest)
            for g in args.pool_guidance
        ],
        "pool-size": [("data-free", args.pool_ipc, 0, None, size, GUIDANCE, digest) for size in args.pool_sizes],
    }
    return {group: keys[group] for group in GROUPS if group in groups}


def make_row(key: tuple, labels: list[str], args) -> tuple[dict, float, float]:
    """Make and evaluate the set of one row key; its row (without wall times), when it began, the set's seconds."""
    kind, ipc, seed, batch, pool, guidance, digest = key
    common = dict(method="dsco", ipc=ipc, seed=seed, model=args.model, overwrite=False, evaluate=False)
    if kind == "data":
        out = Path(args.work) / f"tb-ipc{ipc}-s{seed}-b{batch}-{digest}"
        cfg = ConcentrateConfig(
            source=SourceConfig(source=args.source), nopt=NOptConfig(target_batch=batch), out=str(out), **common
        )
    else:
        out = Path(args.work) / f"datafree-ipc{ipc}-pool{pool}-g{guidance:g}-{digest}"
        cfg = ConcentrateConfig(
            data_free=True,
            labels=tuple(labels),
            pool_size=pool,
            # the run's own guidance is left to the default: the same set as a pool-size row of this pool size
            pool_guidance_scale=None if guidance == GUIDANCE else guidance,
            test_dataset=args.source,
            out=str(out),
            **common,
        )
    started = time.time()
    made = pipeline.concentrate(cfg, command="bench/defaults_checks.py")
    made_seconds = time.time() - started
    block = assess.evaluate_set(
        str(out),
        SourceConfig(source=args.source),
        EvalConfig(runs=args.runs, epochs=args.epochs, baseline=False),
        update_card=True,
    )
    settings = made.dsco["settings"]
    row = {
        **dict(zip(KEY, key)),
        "nopt_targets": settings["nopt_targets"],
        "nopt_target_batch_used": settings["nopt_target_batch"],  # resolved (0 = all)
        "guidance_scale": settings["guidance_scale"],
        "test_images": block["test"]["num_images"],
        **block["result"],
    }
    return row, started, made_seconds


def reference(digest: str) -> dict:
    """DsCo rows of `REFERENCE` on this prior, by (method, IPC, variant); variant "" = today's defaults."""
    found = {}
    path = Path(REFERENCE)
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("prior") == digest and row["method"] in ("dsco", "dsco-datafree"):
                found[(row["method"], row["ipc"], row.get("variant", ""))] = row
    return found


def command(args, groups: list[str]) -> str:
    """The command that writes this table (its own --work, --results and --table)."""
    parts = [
        f"python bench/defaults_checks.py --source {args.source} --groups {' '.join(groups)}",
        f"--target-batch-ipc {args.target_batch_ipc} --seeds {' '.join(map(str, args.seeds))}",
        f"--target-batches {' '.join(map(str, args.target_batches))}",
        f"--pool-ipc {args.pool_ipc} --pool-guidance {' '.join(map(str, args.pool_guidance))}",
        f"--guidance-pool-size {args.guidance_pool_size} --pool-sizes {' '.join(map(str, args.pool_sizes))}",
        f"--model {args.model}" if args.model else "",
        f"--runs {args.runs} --epochs {args.epochs} --threads {args.threads}",
        f"--work {args.work} --results {args.results} --table {args.table}",
    ]
    return " ".join(part for part in parts if part)


def signed(x: float) -> str:
    """A difference with its sign, to 0.1 (never "-0.0")."""
    return f"{round(x, 1) + 0.0:+.1f}"


def cell(row: dict | None) -> str:
    return f"{row['accuracy_mean']:.1f} ± {row['accuracy_std']:.1f}" if row else "—"


def quoted(row: dict, method: str, ipc: int, variant: str) -> str:
    """A reference row named by its key fields."""
    return (
        f"{row['accuracy_mean']:.1f} ± {row['accuracy_std']:.1f} (`{REFERENCE}`: method {method}, IPC {ipc}, prior "
        f"{row['prior']}, {f'variant {variant!r}' if variant else 'no variant'})"
    )


def target_batch_section(done: dict, keys: list[tuple], args, ref: dict) -> list[str]:
    ipc, digest = args.target_batch_ipc, keys[0][-1]
    batches = list(args.target_batches)
    other = next((b for b in batches if b != 0), None)
    paired = len(batches) == 2 and 0 in batches  # 0 (all) against one batch: a difference column
    heads = ["seed", *("all targets (0)" if b == 0 else f"{b} targets per iteration" for b in batches)]
    heads += [f"all − {other}"] if paired else []
    lines = [
        f"## NOpt target batch at IPC {ipc} (`--ipc {ipc} --seed S --nopt-target-batch B`)",
        "",
        "| " + " | ".join(heads) + " |",
        "|" + "---|" * len(heads),
    ]
    diffs, columns = [], {b: [] for b in batches}
    for seed in args.seeds:
        rows = {b: done.get(("data", ipc, seed, b, None, None, digest)) for b in batches}
        cells = [cell(rows[b]) for b in batches]
        for b in batches:
            if rows[b]:
                columns[b].append(rows[b]["accuracy_mean"])
        if paired:
            if rows[0] and rows[other]:
                diffs.append(rows[0]["accuracy_mean"] - rows[other]["accuracy_mean"])
                cells.append(signed(diffs[-1]))
            else:
                cells.append("—")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    if len(args.seeds) > 1 and any(columns.values()):
        means = [f"{statistics.mean(v):.1f}" if len(v) == len(args.seeds) else "—" for v in columns.values()]
        if paired:
            means.append(signed(statistics.mean(diffs)) if len(diffs) == len(args.seeds) else "—")
        lines.append("| mean | " + " | ".join(means) + " |")
    prose = []
    if paired and diffs:
        won = sum(d > 0 for d in diffs)
        prose.append(
            f"All targets scored higher than {other} per iteration on {won} of the {len(diffs)} seeds measured "
            f"(mean difference {signed(statistics.mean(diffs))} points)."
        )
    prose.append(
        "Today's default (`NOptConfig.batch_for`): all targets for one synthetic image per class, max(128, 10 n) "
        "from n = 2 on (all of them once that reaches the 500 targets)."
    )
    big = ref.get(("dsco", 50, "")), ref.get(("dsco", 50, "target batch 128"))
    if all(big):
        prose.append(
            f"At IPC 50 that is all 500: {quoted(big[0], 'dsco', 50, '')} against "
            f"{quoted(big[1], 'dsco', 50, 'target batch 128')}."
        )
    return lines + ["", " ".join(prose)]


def pool_guidance_section(done: dict, keys: list[tuple], args) -> list[str]:
    ipc, pool = args.pool_ipc, args.guidance_pool_size
    lines = [
        f"## Data-free pool guidance at IPC {ipc} (`--data-free --labels LABELS --ipc {ipc} --pool-size {pool} "
        "--pool-guidance-scale G`)",
        "",
        f"Pool of {pool} of the model's own samples per class; the synthetic images are always sampled at guidance "
        f"{GUIDANCE}.",
        "",
        "| pool guidance | accuracy |",
        "|---|---|",
    ]
    notes = {1.0: " (no guidance: the model's own p(x \\| class))", GUIDANCE: " (default: the run's guidance)"}
    measured = {}
    for key in keys:
        row = done.get(key)
        guidance = key[5]
        if row:
            measured[guidance] = row["accuracy_mean"]
        lines.append(f"| {guidance}{notes.get(guidance, '')} | {cell(row)} |")
    if len(measured) > 1:
        best = max(measured, key=measured.get)
        verdict = (
            "the default scored highest"
            if best == GUIDANCE
            else f"{best} scored highest"
            + (f", {measured[best] - measured[GUIDANCE]:.1f} points above the default" if GUIDANCE in measured else "")
        )
        lines += ["", f"Of the guidance scales measured, {verdict}."]
    return lines


def pool_size_section(done: dict, keys: list[tuple], args, ref: dict) -> list[str]:
    ipc = args.pool_ipc
    accessible = ref.get(("dsco", ipc, ""))
    lines = [
        f"## Data-free pool size at IPC {ipc} (`--data-free --labels LABELS --ipc {ipc} --pool-size P`)",
        "",
        "| pool per class | accuracy |" + (" below data-accessible DsCo |" if accessible else ""),
        "|---|---|" + ("---|" if accessible else ""),
    ]
    default = ConcentrateConfig(ipc=ipc).pool_for(ipc)
    measured = []
    used = set()
    for key in keys:
        row = done.get(key)
        size = key[4]
        note = " (today's default, max(4 IPC, 256))" if size == default else ""
        cells = [f"{size}{note}", cell(row)]
        if accessible:
            cells.append(f"{accessible['accuracy_mean'] - row['accuracy_mean']:.1f}" if row else "—")
        if row:
            measured.append((size, row["accuracy_mean"]))
            used.add(row["nopt_target_batch_used"])
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    prose = []
    if accessible:
        prose.append(f"Data-accessible DsCo at IPC {ipc}: {quoted(accessible, 'dsco', ipc, '')}.")
    if used:
        shown = " or ".join("all" if b == 0 else f"a fresh {b}" for b in sorted(used))
        prose.append(f"NOpt embeds {shown} of the pool's samples per iteration (`NOptConfig.batch_for`).")
    if len(measured) > 1:
        measured.sort()
        rising = all(b[1] > a[1] for a, b in zip(measured, measured[1:]))
        prose.append(
            (
                "Accuracy rose with every larger pool measured"
                if rising
                else "Accuracy did not rise with every larger pool"
            )
            + f" ({', '.join(f'{s}: {a:.1f}' for s, a in measured)}); a pool costs P plain samples per class "
            "(`ConcentrateConfig.pool_for`)."
        )
    lines.append(" ".join(prose))
    return lines if prose else lines[:-2]


def write_table(done: dict, digest: str, labels: list[str], args) -> None:
    """Rewrite `--table` whole from the results file: the groups of `args.groups`, and every other group whose rows
    (with the options of `args`) are in it, so parts run separately into one table add up; its command names them."""
    every = planned(args, digest, GROUPS)
    plan = {g: keys for g, keys in every.items() if g in args.groups or any(k in done for k in keys)}
    ref = reference(digest)
    first = next((done[k] for keys in plan.values() for k in keys if k in done), None)
    protocol = f"{first['runs']} runs x {first['epochs']} epochs" if first else f"{args.runs} runs x {args.epochs}"
    shown = ",".join(labels)
    test_images = f"{first['test_images']:,}" if first else "source's"
    model = f" --model {args.model}" if args.model else ""
    lines = [
        f"# Checks behind NOpt's target batch and the data-free pool ({Path(args.source).name}, prior {digest}, "
        f"ConvNet-3, hard labels, {protocol})",
        "",
        f"Command: `{command(args, list(plan))}` (rows appended to `{args.results}` as they finish; `--table-only` "
        f"rewrites this table). Test accuracy (%) on the {test_images} test images, mean ± std over "
        "the students of one set. Each set is made and evaluated by the product's own API "
        f"(`dsco_hub.pipeline.concentrate`, `dsco_hub.assess.evaluate_set`), {args.threads} thread(s), as one of "
        f"these commands makes it (LABELS = {json.dumps(shown)}, the source's class names):",
        "",
    ]
    tail = f"--runs {args.runs} --epochs {args.epochs} --no-baseline"
    if "target-batch" in plan:
        lines.append(
            f"    dsco-hub concentrate {args.source} --ipc {args.target_batch_ipc} --seed S --nopt-target-batch B"
            f"{model} {tail} --out runs/tb-S-B"
        )
    if "pool-guidance" in plan:
        lines.append(
            f"    dsco-hub concentrate --data-free --labels LABELS --ipc {args.pool_ipc} --pool-size "
            f"{args.guidance_pool_size} --pool-guidance-scale G{model} --test-dataset {args.source} {tail} "
            "--out runs/pool-guidance-G"
        )
    if "pool-size" in plan:
        lines.append(
            f"    dsco-hub concentrate --data-free --labels LABELS --ipc {args.pool_ipc} --pool-size P{model} "
            f"--test-dataset {args.source} {tail} --out runs/pool-P"
        )
    lines += [
        "",
        "(`--test-dataset` names the test split the data-free sets are evaluated on, which a data-free run reads from "
        "no source of its own.)",
    ]
    sections = {
        "target-batch": lambda keys: target_batch_section(done, keys, args, ref),
        "pool-guidance": lambda keys: pool_guidance_section(done, keys, args),
        "pool-size": lambda keys: pool_size_section(done, keys, args, ref),
    }
    for group, keys in plan.items():
        lines += [""] + sections[group](keys)
    lines += ["", "Wall time per set (concentration / evaluation of all runs, seconds):", ""]
    for key in dict.fromkeys(k for keys in plan.values() for k in keys):  # a set in two groups is listed once
        if key in done:
            row = done[key]
            lines.append(f"- {label(key)}: {row['select_seconds']} / {row['eval_seconds']} ({row['machine']})")
    Path(args.table).write_text("\n".join(lines).rstrip("\n") + "\n")


def label(key: tuple) -> str:
    kind, ipc, seed, batch, pool, guidance, _ = key
    if kind == "data":
        return f"IPC {ipc} seed {seed} target batch {batch}"
    return f"IPC {ipc} pool {pool} pool guidance {guidance}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="../shared/data/fashion_mnist")
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=GROUPS)
    parser.add_argument("--target-batch-ipc", type=int, default=1, help="IPC of the target-batch sets")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="set seeds of the target-batch sets")
    parser.add_argument("--target-batches", type=int, nargs="+", default=[128, 0], help="NOpt targets per iteration")
    parser.add_argument("--pool-ipc", type=int, default=10, help="IPC of the data-free sets")
    parser.add_argument("--pool-guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0], help="pool guidance scales")
    parser.add_argument("--guidance-pool-size", type=int, default=128, help="pool size of the pool-guidance sets")
    parser.add_argument(
        "--pool-sizes", type=int, nargs="+", default=[128, 256], help="pool sizes of the pool-size sets"
    )
    parser.add_argument("--model", default=None, help="prior folder (default: the shipped prior)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="runs/bench-defaults")
    parser.add_argument("--results", default="bench/results/defaults_checks.jsonl")
    parser.add_argument("--table", default="bench/results/defaults_checks.md")
    parser.add_argument("--table-only", action="store_true", help="Only rewrite the table from the results file.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    digest = prior_digest(args.model)
    labels = list(load_source(SourceConfig(source=args.source)).class_names)
    results = Path(args.results)
    done = read_rows(results, KEY)
    todo = (
        []
        if args.table_only
        else list(dict.fromkeys(k for keys in planned(args, digest, args.groups).values() for k in keys))
    )
    for key in todo:
        if key in done:
            continue
        row, started, made = make_row(key, labels, args)
        done[key] = append_row(results, row, started, made, args.threads)
        write_table(done, digest, labels, args)
    write_table(done, digest, labels, args)


if __name__ == "__main__":
    main()
