"""Benchmark: the wall time of the README's main job (`dsco-hub concentrate` on its embedded default), per phase.

    python bench/main_job.py --out bench/results/main_job.md

Runs the README's command as written (`dsco-hub concentrate`: DsCo at IPC 10 on the embedded Fashion-MNIST subset,
shipped prior, then 3 students on the set and 3 on a random real baseline, 300 epochs each) in a scratch folder, with
`--out` pointed there, and reads the progress lines it prints when its standard error is not a terminal
(`[dsco-hub] PHASE: i/n ..., elapsed H:MM:SS`). A phase's time is the largest `elapsed` it printed; the total is the
command's wall time measured here. The machine's load average before and after is written beside the figures, since
the README quotes them as the time on an idle 2-core machine. `--results` (JSON lines) keeps every run; the table is
rewritten whole from it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROGRESS = re.compile(r"^\[dsco-hub\] (?P<phase>[^:]+): .*elapsed (?P<h>\d+):(?P<m>\d\d):(?P<s>\d\d)")


def phase_seconds(lines: list[str]) -> dict[str, float]:
    """The largest `elapsed` each phase printed, in seconds, in the order the phases first appear."""
    phases: dict[str, float] = {}
    for line in lines:
        match = PROGRESS.match(line)
        if match:
            seconds = 3600 * int(match["h"]) + 60 * int(match["m"]) + int(match["s"])
            phases[match["phase"]] = max(phases.get(match["phase"], 0.0), float(seconds))
    return phases


def run_once(command: list[str]) -> dict:
    """Run `command` (the README's, plus `--out` in a scratch folder) and time it."""
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dsco-main-job-") as scratch:
        started = time.monotonic()
        proc = subprocess.run(
            [*command, "--out", str(Path(scratch) / "set")], cwd=scratch, capture_output=True, text=True, check=False
        )
        wall = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"main_job: `{' '.join(command)}` exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return {
        "command": " ".join(command),
        "wall_s": round(wall, 1),
        "phases_s": phase_seconds(proc.stderr.splitlines()),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    }


# the phases reported, in order: "write" is left out, its bar stays open while the evaluation runs (the card it
# writes records the accuracy), so its time is in "other" (total minus the phases below)
PHASES = ("load source", "NOpt + doping", "evaluate result", "evaluate baseline")


def table(rows: list[dict], command: str) -> str:
    """The markdown file: the command, then one line per run (seconds per phase, the rest, the total)."""
    lines = [
        "# The README's main job: wall time per phase",
        "",
        f"Command: `{command}` (rows appended to the `--results` file; the table is rewritten from it). Each run is "
        "`dsco-hub concentrate` as the README gives it (DsCo at IPC 10 on the embedded Fashion-MNIST subset, the "
        "shipped prior, evaluation of 3 students on the set and 3 on a random real baseline, 300 epochs each), in a "
        'scratch folder. Seconds; a phase\'s time is the last `elapsed` of its progress lines; "other" is the total '
        "minus those phases (start-up, model loading, writing the parquet, the sample grid and the card).",
        "",
        "| date (UTC) | CPUs | load avg before / after (1 min) | " + " | ".join(PHASES) + " | other | total |",
        "|---|---|---|" + "---|" * len(PHASES) + "---|---|",
    ]
    for row in rows:
        phases = [row["phases_s"].get(p, 0.0) for p in PHASES]
        cells = [f"{seconds:.0f}" for seconds in phases] + [
            f"{row['wall_s'] - sum(phases):.0f}",
            f"{row['wall_s']:.0f}",
        ]
        lines.append(
            f"| {row['date']} | {row['cpus']} | {row['load_before'][0]:.2f} / {row['load_after'][0]:.2f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="times to run the job")
    parser.add_argument("--results", default="bench/results/main_job.jsonl")
    parser.add_argument("--out", default="bench/results/main_job.md")
    parser.add_argument("--table-only", action="store_true", help="Only rewrite the table from the results file.")
    args = parser.parse_args()
    command = ["dsco-hub", "concentrate"]
    results = Path(args.results)
    for _ in range(0 if args.table_only else args.runs):
        row = run_once(command)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row))
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    quoted = "python bench/main_job.py" + ("" if args.out == parser.get_default("out") else f" --out {args.out}")
    Path(args.out).write_text(table(rows, quoted))


if __name__ == "__main__":
    main()
