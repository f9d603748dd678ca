"""Benchmark: DsCo from a streamed source (`--streaming`) against DsCo from the indexed source.

    python bench/streaming.py --source ../shared/data/fashion_mnist --ipc 10 --seeds 0 1 --baseline-seeds 0 \
        --runs 3 --epochs 300 --threads 1 --work runs/bench-streaming --results bench/results/streaming.jsonl \
        --table bench/results/streaming.md

Four sets by default, one per (arm, seed): DsCo at today's defaults (rho 0, the shipped prior or `--model`) from the
indexed source and from the same source read as a stream (`SourceConfig.streaming`), at set seeds `--seeds`. Each
set is made and evaluated by one call of `dsco_hub.pipeline.concentrate`, as `dsco-hub concentrate SOURCE --ipc IPC
[--streaming] [--seed S]` does (ConvNet-3, hard labels, `--runs` x `--epochs`): the evaluation runs inside it, so
the random real reference of the seeds in `--baseline-seeds` draws its images from the rows the run read (the
whole indexed split, or the rows the stream kept). Rows are appended to `--results` (JSON lines) as they finish, a
rerun skips the (arm, IPC, seed, prior) already there, and `--table` is rewritten whole from the results after each
row (`--table-only`: only that). The table quotes this command with its `--work`, `--results` and `--table`.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import append_row, prior_digest, read_rows  # noqa: E402

from dsco_hub import assess, pipeline  # noqa: E402
from dsco_hub.config import ConcentrateConfig, EvalConfig, SourceConfig  # noqa: E402

ARMS = ("indexed", "streamed")


@contextlib.contextmanager
def timed_evaluation():
    """Seconds spent in `assess.eval_block` (the students of the set and of the baseline) during the block.

    `concentrate` evaluates inside itself (the baseline of a streamed set needs the rows the stream kept, which the
    finished set no longer holds), so the wall time of a set is split by timing that one call.
    """
    spent: list[float] = []
    original = assess.eval_block

    def timed(*args, **kwargs):
        began = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            spent.append(time.time() - began)

    assess.eval_block = timed
    try:
        yield spent
    finally:
        assess.eval_block = original


def make_row(arm: str, seed: int, digest: str, args) -> tuple[dict, float, float]:
    """Make and evaluate one set; its row (without the wall times), when it began and how long the set took."""
    baseline = seed in args.baseline_seeds
    out = Path(args.work) / f"{arm}-ipc{args.ipc}-s{seed}{'' if baseline else '-nobaseline'}-{digest}"
    cfg = ConcentrateConfig(
        source=SourceConfig(source=args.source, streaming=arm == "streamed"),
        method="dsco",
        ipc=args.ipc,
        seed=seed,
        model=args.model,
        out=str(out),
        overwrite=False,  # a finished set with these settings is reused: a rerun after a crash redoes no set
        eval=EvalConfig(runs=args.runs, epochs=args.epochs, baseline=baseline),
    )
    started = time.time()
    with timed_evaluation() as spent:
        made = pipeline.concentrate(cfg, command="bench/streaming.py")
    made_seconds = time.time() - started - sum(spent)
    dsco = made.dsco
    settings, source, block = dsco["settings"], dsco["source"], dsco["eval"]
    row = {
        "arm": arm,
        "ipc": args.ipc,
        "seed": seed,
        "prior": digest,
        "nopt_targets": settings["nopt_targets"],
        "nopt_target_batch": settings["nopt_target_batch"],
        "steps": settings["steps"],
        "guidance_scale": settings["guidance_scale"],
        "doping_ratio": dsco["doping_ratio"],
        "source_rows": source["num_rows"],
        "num_classes": source["num_classes"],
        **({"stream": source["streaming"]} if "streaming" in source else {}),
        "test_images": block["test"]["num_images"],
        **block["result"],
        **({"baseline_random": block["baseline_random"]} if block.get("baseline_random") else {}),
    }
    return row, started, made_seconds


def command(args) -> str:
    """The command that writes this table (its own --work, --results and --table)."""
    parts = [
        f"python bench/streaming.py --source {args.source} --ipc {args.ipc}",
        f"--arms {' '.join(args.arms)}" if tuple(args.arms) != ARMS else "",
        f"--seeds {' '.join(map(str, args.seeds))}",
        f"--baseline-seeds {' '.join(map(str, args.baseline_seeds))}".strip(),
        f"--runs {args.runs} --epochs {args.epochs} --threads {args.threads}",
        f"--model {args.model}" if args.model else "",
        f"--work {args.work} --results {args.results} --table {args.table}",
    ]
    return " ".join(part for part in parts if part)


def cell(result: dict | None) -> str:
    return f"{result['accuracy_mean']:.2f} ± {result['accuracy_std']:.2f}" if result else "—"


def write_table(done: dict, digest: str, args) -> None:
    """Rewrite `--table` whole from the rows of this IPC and prior."""
    rows = {(arm, seed): row for (arm, ipc, seed, prior), row in done.items() if ipc == args.ipc and prior == digest}
    seeds = sorted({seed for _, seed in rows} | set(args.seeds))
    any_row = next(iter(rows.values()), None)
    name = Path(args.source).name
    # the split's size: counted by the indexed runs, declared (or None) by the streamed ones
    sizes = [row["source_rows"] for row in sorted(rows.values(), key=lambda r: r["arm"]) if row["source_rows"]]
    total = sizes[0] if sizes else None
    split = f"full {total:,}-row train split" if total else "train split"
    lines = [
        f"# DsCo from a stream against DsCo from the indexed source ({name}, {split})",
        "",
        f"Command: `{command(args)}` (rows appended to `{args.results}` as they finish; `--table-only` rewrites this "
        f"table). Each set is made and evaluated by one call of `dsco_hub.pipeline.concentrate` ({args.threads} "
        f"thread(s)), as the commands below do with S = the set seed: prior {digest} (the shipped prior unless "
        "`--model` is quoted), DsCo defaults",
    ]
    if any_row:
        lines[-1] += (
            f" (rho = {any_row['doping_ratio']:g}, {any_row['steps']} DDIM steps, guidance "
            f"{any_row['guidance_scale']:g}, "
            f"{any_row['nopt_targets']} NOpt targets per class); ConvNet-3, {any_row['runs']} runs x "
            f"{any_row['epochs']} epochs, hard labels, tested on the {any_row['test_images']:,}-image test split."
        )
    else:
        lines[-1] += "."
    model = f" --model {args.model}" if args.model else ""
    lines += [""]
    for arm in args.arms:
        streaming = " --streaming" if arm == "streamed" else ""
        lines.append(
            f"    dsco-hub concentrate {args.source} --ipc {args.ipc}{streaming} --seed S{model} --runs {args.runs} "
            f"--epochs {args.epochs} --out runs/{arm}-S"
        )
    lines += [
        "",
        "The sets of seeds not in `--baseline-seeds` add `--no-baseline` (no random real reference).",
    ]
    batches = sorted({row["nopt_target_batch"] for row in rows.values()})
    if batches:
        shown = ", ".join("all targets" if b == 0 else f"{b} targets" for b in batches)
        lines += ["", f"NOpt embedded {shown} per iteration at IPC {args.ipc} (`NOptConfig.batch_for`)."]
    indexed = next((row for (arm, _), row in rows.items() if arm == "indexed"), None)
    streamed = [(seed, row) for (arm, seed), row in sorted(rows.items()) if arm == "streamed"]
    prose = []
    if indexed:
        prose.append(
            f"Indexed: NOpt's {indexed['nopt_targets']} targets per class are a seeded random subset of the class's "
            "rows."
        )
    if streamed:
        stream = streamed[0][1]["stream"]
        targets = streamed[0][1]["nopt_targets"]
        first = (
            f"the first {targets} rows of each class"
            if stream["per_class"] == targets
            else f"a seeded random subset of {targets} of the first {stream['per_class']} rows of each class"
        )
        prose.append(
            f"Streamed: they are {first} in a stream read through a {stream['shuffle_buffer']:,}-row seeded shuffle "
            "buffer."
        )
        for seed, row in streamed:
            s = row["stream"]
            prose.append(
                f"The run with seed {seed} read {s['rows_read']:,}"
                + (f" of the {total:,}" if total else "")
                + f" rows and kept {s['rows_kept']:,}."
            )
        prose.append("The set's `--seed` also seeds the stream's shuffle.")
    if prose:
        lines += ["", " ".join(prose)]
    lines += [
        "",
        "| set seed | indexed source | streamed source | random real, same IPC (indexed / streamed rows) |",
        "|---|---|---|---|",
    ]
    for seed in seeds:
        i, s = rows.get(("indexed", seed)), rows.get(("streamed", seed))
        bases = [r.get("baseline_random") if r else None for r in (i, s)]
        base = " / ".join(cell(b) for b in bases) if any(bases) else "not run"
        lines.append(f"| {seed} | {cell(i)} | {cell(s)} | {base} |")
    means = {arm: [rows[(arm, seed)]["accuracy_mean"] for seed in seeds if (arm, seed) in rows] for arm in ARMS}
    if any(len(v) > 1 for v in means.values()):
        shown = [f"{statistics.mean(v):.2f} ({len(v)} sets)" if v else "—" for v in means.values()]
        lines.append(f"| mean of the sets | {shown[0]} | {shown[1]} | |")
    lines += ["", "The ± is the std over the evaluation runs of one set."]
    moves = {arm: max(v) - min(v) for arm, v in means.items() if len(v) > 1}  # how far the seed moves one arm's set
    gaps = {
        seed: rows[("streamed", seed)]["accuracy_mean"] - rows[("indexed", seed)]["accuracy_mean"]
        for seed in seeds
        if ("streamed", seed) in rows and ("indexed", seed) in rows
    }
    if moves and gaps:
        spread = ", ".join(f"{arm} {move:.2f}" for arm, move in moves.items())
        differ = ", ".join(f"{gap:+.2f} (seed {seed})" for seed, gap in gaps.items())
        verdict = (
            f"The seed moves a set more than the source's access does: {min(len(v) for v in means.values())} sets "
            "per arm do not separate the two arms."
            if max(abs(g) for g in gaps.values()) < min(moves.values())
            else "The arms differ by as much as the seed moves a set, or more."
        )
        lines[-1] += (
            f" Between the set seeds, the same arm's set moves by {spread} points; streamed minus indexed is "
            f"{differ} points. {verdict}"
        )
    lines += ["", "Wall time per set (concentration / evaluation of the set and its baseline, seconds):", ""]
    for (arm, seed), row in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lines.append(f"- {arm} seed {seed}: {row['select_seconds']} / {row['eval_seconds']} ({row['machine']})")
    Path(args.table).write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="../shared/data/fashion_mnist")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="which sources to run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="set seeds (also the stream's shuffle)")
    parser.add_argument(
        "--baseline-seeds", type=int, nargs="*", default=[0], help="seeds whose sets also train the random real one"
    )
    parser.add_argument("--model", default=None, help="prior folder (default: the shipped prior)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="runs/bench-streaming")
    parser.add_argument("--results", default="bench/results/streaming.jsonl")
    parser.add_argument("--table", default="bench/results/streaming.md")
    parser.add_argument("--table-only", action="store_true", help="Only rewrite the table from the results file.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    digest = prior_digest(args.model)
    results = Path(args.results)
    done = read_rows(results, ("arm", "ipc", "seed", "prior"))
    for seed in [] if args.table_only else args.seeds:
        for arm in args.arms:
            if (arm, args.ipc, seed, digest) in done:
                continue
            row, started, made = make_row(arm, seed, digest, args)
            done[(arm, args.ipc, seed, digest)] = append_row(results, row, started, made, args.threads)
            write_table(done, digest, args)
    write_table(done, digest, args)


if __name__ == "__main__":
    main()
