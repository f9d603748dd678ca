"""Benchmark: hard vs soft labels (the soft-label protocol of `docs/evaluation.md` §10) on Fashion-MNIST.

    dsco-hub teacher train ../shared/data/fashion_mnist --out runs/teacher-fmnist --epochs 4 --max-images 10000
    python bench/soft_labels.py --source ../shared/data/fashion_mnist --teacher runs/teacher-fmnist \
        --methods random herding --ipcs 1 10 --runs 3 --epochs 300 --threads 1

Each (method, IPC) set is made as `bench/baselines.py` makes it (`pipeline.concentrate`, seed 0, no evaluation; a
finished set in `--work` is reused) and evaluated with `assess.evaluate_set` under the same protocol and seeds as
the hard-label rows, with `EvalConfig(labels="soft", teacher=..., temperature=T)`: each student learns the
teacher's temperature-softened predictions on its augmented batches. The hard-label reference of random and
herding is quoted from `bench/results/baselines.jsonl` (same sets, protocol and seeds; the line number is given);
methods without a quoted row (`--hard` lists them) are also evaluated here with hard labels. Rows are appended
to `--results` as they finish (a rerun skips what is done) and the markdown table is rewritten whole from it after
each row (`--table-only`: only the table). Rows of the methods that sample a prior (diffusion, dsco) record the
shipped prior's weight digest (`prior`) and are keyed by it, as are their sets in `--work`: after a prior swap they
are made again, and the table lists each prior's rows apart.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import append_row, prior_digest  # noqa: E402

from dsco_hub import assess, pipeline  # noqa: E402
from dsco_hub.config import ConcentrateConfig, EvalConfig, SourceConfig
from dsco_hub.teacher import load_teacher

BASELINES = "bench/results/baselines.jsonl"
PRIOR_METHODS = ("diffusion", "dsco")  # their rows carry the prior's digest


def quoted_hard(method: str, ipc: int, runs: int, epochs: int, baselines: Path) -> tuple[int, dict] | None:
    """The hard-label row of `baselines.jsonl` for a real-image method at this IPC: `(line number, row)`.

    Only rows of the same protocol (runs, epochs, ConvNet-3) and of the real-image methods, whose sets are the
    ones made here (seed 0, default herding settings), are quoted.
    """
    if method not in ("random", "herding") or not baselines.exists():
        return None
    for number, line in enumerate(baselines.read_text().splitlines(), start=1):
        row = json.loads(line)
        if (row["method"], row["ipc"], row["runs"], row["epochs"], row.get("prior", "")) == (
            method,
            ipc,
            runs,
            epochs,
            "",
        ):
            return number, row
    return None


def finished(results: Path) -> dict[tuple[str, int, str, str], dict]:
    """The rows of the results file by (method, IPC, labels, prior digest or ""); the last of a key wins."""
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    return {(row["method"], row["ipc"], row["labels"], row.get("prior", "")): row for row in rows}


def _measured(rows: dict, key: tuple[str, int, str, str], teacher_digest: str) -> bool:
    """Whether `rows` (`finished`) hold `key`'s row, a soft-label row with this teacher (another one's is redone)."""
    row = rows.get(key)
    return row is not None and (row["labels"] == "hard" or row["teacher"]["digest"] == teacher_digest)


def run(args) -> None:
    """Make and evaluate every (method, IPC, labels) row not yet in `args.results`, rewriting the table after each."""
    torch.set_num_threads(args.threads)
    work, results = Path(args.work), Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    done = finished(results)
    if args.table_only:
        write_table(done, args)
        return
    teacher = load_teacher(args.teacher)
    digest = prior_digest(None)
    for ipc in args.ipcs:
        for method in args.methods:
            prior = digest if method in PRIOR_METHODS else ""
            labels = ["soft"] + (
                ["hard"] if quoted_hard(method, ipc, args.runs, args.epochs, Path(BASELINES)) is None else []
            )
            for kind in labels:
                key = (method, ipc, kind, prior)
                if _measured(done, key, teacher.digest) or _measured(finished(results), key, teacher.digest):
                    continue  # (or by another process)
                out = work / (f"{method}-ipc{ipc}-{prior}" if prior else f"{method}-ipc{ipc}")
                started = time.time()
                cfg = ConcentrateConfig(
                    source=SourceConfig(source=args.source),
                    method=method,
                    ipc=ipc,
                    seed=0,
                    out=str(out),
                    evaluate=False,
                )
                pipeline.concentrate(cfg, command="bench/soft_labels.py")
                made = time.time() - started
                soft = kind == "soft"
                eval_cfg = EvalConfig(
                    runs=args.runs,
                    epochs=args.epochs,
                    baseline=False,
                    labels=kind,
                    teacher=args.teacher if soft else None,
                    temperature=args.temperature,
                )
                block = assess.evaluate_set(str(out), SourceConfig(source=args.source), eval_cfg)
                row = {
                    "method": method,
                    "ipc": ipc,
                    "labels": kind,
                    **({"prior": prior} if prior else {}),
                    **({"teacher": teacher.describe(), "temperature": args.temperature} if soft else {}),
                    **block["result"],
                }
                done[key] = append_row(results, row, started, made, args.threads)
                write_table(finished(results), args)  # every row of the file: another process may add rows too


def _cell(row: dict | None) -> str:
    return f"{row['accuracy_mean']:.1f} ± {row['accuracy_std']:.1f}" if row else "—"


def command(args) -> str:
    """The command that writes the table, as the .md quotes it."""
    parts = ["python", "bench/soft_labels.py", "--source", args.source, "--teacher", args.teacher]
    parts += ["--methods", *args.methods, "--ipcs", *map(str, args.ipcs), "--runs", str(args.runs)]
    parts += ["--epochs", str(args.epochs), "--temperature", f"{args.temperature:g}", "--threads", str(args.threads)]
    parts += ["--work", args.work, "--results", args.results, "--table", args.table]
    return " ".join(shlex.quote(p) for p in parts)


def write_table(done: dict, args) -> None:
    """Write the markdown table whole from the rows of `args.results` (and the quoted hard-label rows)."""
    ipcs = sorted({ipc for _, ipc, _, _ in done} | set(args.ipcs))
    digest = prior_digest(None)
    asked = [(m, digest if m in PRIOR_METHODS else "") for m in args.methods]  # then other priors' rows
    found = sorted({(m, p) for m, _, _, p in done}, key=lambda mp: (mp[1] != digest, mp))  # stable across runs
    methods = list(dict.fromkeys([*asked, *found]))
    teachers = {json.dumps(r["teacher"], sort_keys=True): r for r in done.values() if r["labels"] == "soft"}
    lines = [
        "# Hard vs soft labels on Fashion-MNIST (ConvNet-3 students)",
        "",
        f"Command: `{command(args)}` (rows appended to `{args.results}` as they finish; `--table-only` rewrites this "
        f"table). Test accuracy (%) on the 10,000 test images, mean ± std over {args.runs} runs of {args.epochs} "
        "epochs; the same sets (seed 0), student seeds and augmentation in both columns. Soft labels: each student "
        "learns the teacher's predictions on its augmented batches, KL divergence at temperature "
        f"{args.temperature:g} scaled by T² (Hinton et al. 2015; T = 4 as RDED with mixup), `docs/evaluation.md` "
        "§10.",
        "",
        "| method | " + " | ".join(f"IPC {i} hard | IPC {i} soft | gain" for i in ipcs) + " |",
        "|---|" + "---|---|---|" * len(ipcs),
    ]
    notes = []
    for method, prior in methods:
        cells = []
        for ipc in ipcs:
            hard = done.get((method, ipc, "hard", prior))
            mark = ""
            if hard is None and not prior:
                quoted = quoted_hard(method, ipc, args.runs, args.epochs, Path(BASELINES))
                if quoted is not None:
                    number, hard = quoted
                    mark = f" [{len(notes) + 1}]"
                    notes.append(f"[{len(notes) + 1}] `{BASELINES}` line {number} (same set, protocol and seeds).")
            soft = done.get((method, ipc, "soft", prior))
            gain = f"{soft['accuracy_mean'] - hard['accuracy_mean']:+.1f}" if hard and soft else "—"
            cells += [_cell(hard) + mark, _cell(soft), gain]
        lines.append(f"| {method}{f' (prior {prior})' if prior else ''} | " + " | ".join(cells) + " |")
    lines += ["", "Hard-label rows quoted from the baselines benchmark:", ""] + [f"- {n}" for n in notes]
    lines += ["", "Teacher:", ""]
    config = Path(args.teacher) / "teacher_config.json"
    made_by = json.loads(config.read_text()).get("command") if config.is_file() else None
    for row in teachers.values():
        t = row["teacher"]
        lines.append(
            f"- `{t['name']}` (digest {t['digest']}): {t['model']} trained {t['epochs']} epochs on {t['num_images']} "
            f"images of `{t['source']}`, {t['test_accuracy'] * 100:.2f} % test accuracy"
            + (f", made by `{made_by}` (as its `teacher_config.json` records it)." if made_by else ".")
        )
    lines += [
        "",
        "Wall time per row (selection / evaluation of all runs, seconds; one thread on a 2-core machine shared with "
        "other jobs, so the times follow the load more than the method):",
        "",
    ]
    for (method, ipc, kind, prior), row in sorted(done.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2:])):
        named = f"{method} (prior {prior})" if prior else method
        lines.append(f"- {named} IPC {ipc} {kind}: {row['select_seconds']} / {row['eval_seconds']} ({row['machine']})")
    Path(args.table).write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="../shared/data/fashion_mnist")
    parser.add_argument("--teacher", required=True, help="folder written by `dsco-hub teacher train`")
    parser.add_argument("--methods", nargs="+", default=["random", "herding"], help="random, herding, dsco, ...")
    parser.add_argument("--ipcs", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--temperature", type=float, default=EvalConfig().temperature)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--work", default="runs/bench-soft-labels")
    parser.add_argument("--results", default="bench/results/soft_labels.jsonl")
    parser.add_argument("--table", default="bench/results/soft_labels.md")
    parser.add_argument("--table-only", action="store_true", help="Only rewrite the table from the results file.")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
