"""Evaluation results as data: the JSON document a CI job reads, its gates, and the GitHub step summary.

The document follows the versioned JSON Schema shipped in the package (`schemas/eval_result.schema.json`,
`SCHEMA_ID` and `SCHEMA_VERSION` below): the set (target, repo, revision, resolved commit, config), the test set,
the protocol (student, epochs, runs, labels, device, precision, seeds), per-run accuracies, mean, std, the
random-real baseline, the gain over it, an optional comparison set, and the gates with their outcome.
Accuracies and points are percentages. Model: the `--json` reports of pytest-json-report and of `hf` jobs.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from dsco_hub import __version__
from dsco_hub.config import derive_seed
from dsco_hub.errors import ConfigError
from dsco_hub.files import atomic_write

SCHEMA_ID = "https://dsco-hub.invalid/schemas/eval_result.schema.json"  # a name, not a download location
SCHEMA_VERSION = 1
EXIT_GATE_FAILED = 3  # beside 0 (success), 1 (error), 2 (usage error), 130 / 143 (signals)
_MODELS = {"convnet3": "ConvNet-3", "resnet18": "ResNet-18"}


def schema() -> dict:
    """The JSON Schema (draft 2020-12) of the results document, as shipped in the package."""
    text = (resources.files("dsco_hub") / "schemas" / "eval_result.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


@dataclass
class Gates:
    """Thresholds a set must meet, or the command exits with `EXIT_GATE_FAILED` (after writing its results).

    Attributes:
        fail_under (`float`, *optional*): the set's mean accuracy must be at least this, in percent `[0, 100]`.
        fail_below_baseline (`float`, *optional*): the set's gain over the random-real baseline (mean minus the
            baseline's mean, in points) must be at least this; 0 = not below the baseline, negative = a tolerance.
    """

    fail_under: float | None = None
    fail_below_baseline: float | None = None

    def validate(self, baseline: bool) -> None:
        """Raise `ConfigError` on a gate out of range, or a baseline gate without the baseline (before any work)."""
        if self.fail_under is not None and not 0 <= self.fail_under <= 100:
            raise ConfigError(f"--fail-under={self.fail_under} must be an accuracy in percent, in [0, 100].")
        if self.fail_below_baseline is not None and not -100 <= self.fail_below_baseline <= 100:
            raise ConfigError(
                f"--fail-below-baseline={self.fail_below_baseline} must be points of accuracy, in [-100, 100]."
            )
        if self.fail_below_baseline is not None and not baseline:
            raise ConfigError(
                f"--fail-below-baseline={self.fail_below_baseline} compares with the random-real baseline, which "
                "--no-baseline turns off; drop one of them."
            )

    def check(self, block: dict) -> list[str]:
        """The gates `block` (an `eval` block) misses, each as one line; empty when it meets them all."""
        failures = []
        mean = block["result"]["accuracy_mean"]
        if self.fail_under is not None and mean < self.fail_under:
            failures.append(f"accuracy {mean:.2f} % is under --fail-under {self.fail_under:g} %")
        baseline = block.get("baseline_random")
        if self.fail_below_baseline is not None and baseline:
            gain = mean - baseline["accuracy_mean"]
            if gain < self.fail_below_baseline:
                failures.append(
                    f"gain over the random baseline {gain:+.2f} points is under --fail-below-baseline "
                    f"{self.fail_below_baseline:+g}"
                )
        return failures

    def to_dict(self) -> dict:
        """The thresholds as the document's `gates` records them (None where not set)."""
        return {"fail_under": self.fail_under, "fail_below_baseline": self.fail_below_baseline}


def difference(a: dict, b: dict) -> dict:
    """`a - b` of two result blocks: points of mean accuracy, and its std from the runs' stds (independent runs).

    Returns:
        `dict`: `{"points": float, "std": float}`, in points of accuracy, rounded to 2 decimals.
    """
    points = a["accuracy_mean"] - b["accuracy_mean"]
    return {"points": round(points, 2), "std": round(math.hypot(a["accuracy_std"], b["accuracy_std"]), 2)}


def _run(block: dict) -> dict:
    return {
        "accuracies": block["accuracies"],
        "mean": block["accuracy_mean"],
        "std": block["accuracy_std"],
        "num_train_images": block["num_train_images"],
        "model": block["model"],
    }


def document(target: dict, block: dict, gates: Gates | None = None, against: tuple[dict, dict] | None = None) -> dict:
    """The results document of one evaluation (the schema's shape).

    Args:
        target (`dict`): the set: `{"target", "repo_id", "revision", "commit", "config", "method", "ipc"}`
            (None where it does not apply, e.g. `repo_id` of a folder).
        block (`dict`): the `eval` block of the set (`assess.eval_block`), with `commit` for a Hub set.
        gates (`Gates`, *optional*): the thresholds; their outcome is recorded.
        against (`tuple[dict, dict]`, *optional*): the comparison set's `target` and `eval` block (same protocol,
            same seeds), recorded with the difference to it.

    Returns:
        `dict`: JSON-serialisable; validates against `schema()`.
    """
    protocol = dict(block["protocol"])
    protocol["run_seeds"] = [derive_seed(protocol["seed"], "eval", r) for r in range(protocol["runs"])]
    baseline = block.get("baseline_random")
    doc: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "dsco_hub_version": __version__,
        "evaluated_at": block.get("evaluated_at"),
        "set": {**target, "commit": block.get("commit", target.get("commit"))},
        "test": block["test"],
        "protocol": protocol,
        "result": _run(block["result"]),
        "baseline": _run(baseline) if baseline else None,
        "gain_over_baseline": difference(block["result"], baseline) if baseline else None,
        "against": None,
    }
    if against is not None:
        other_target, other = against
        doc["against"] = {
            "set": {**other_target, "commit": other.get("commit", other_target.get("commit"))},
            "result": _run(other["result"]),
            "difference": difference(block["result"], other["result"]),
        }
    failures = (gates or Gates()).check(block)
    doc["gates"] = {**(gates or Gates()).to_dict(), "passed": not failures, "failures": failures}
    return doc


def write(doc: dict, path: str) -> None:
    """Write the document to `path` (atomically), or to standard output when `path` is "-".

    Raises:
        OutputError: the file cannot be written (one line: the path, the reason, the fix).
    """
    text = json.dumps(doc, indent=2, sort_keys=False) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write(Path(path).expanduser(), text, option="--json")


def markdown(doc: dict) -> str:
    """A markdown table of the document, for a GitHub job's step summary (`GITHUB_STEP_SUMMARY`)."""
    s, p, r = doc["set"], doc["protocol"], doc["result"]
    name = s.get("repo_id") or s.get("target")
    where = f"`{name}`" + (f" (config `{s['config']}`)" if s.get("config") else "")
    where += f" at `{s['commit'][:12]}`" if s.get("commit") else ""
    lines = [
        f"### dsco-hub evaluation of {where}",
        "",
        f"{_MODELS.get(r['model'], r['model'])}, {p['runs']} runs x {p['epochs']} epochs, {p['labels']} labels, "
        f"on {p['device']} "
        f"({p['precision']}); test: `{doc['test']['dataset']}` [{doc['test']['split']}], "
        f"{doc['test']['num_images']} images.",
        "",
        "| training set | images | accuracy (%) |",
        "|---|---|---|",
        f"| this set | {r['num_train_images']} | {r['mean']:.2f} ± {r['std']:.2f} |",
    ]
    if doc["baseline"]:
        b = doc["baseline"]
        lines.append(f"| random real (same IPC) | {b['num_train_images']} | {b['mean']:.2f} ± {b['std']:.2f} |")
    if doc["against"]:
        a = doc["against"]
        other = a["set"].get("repo_id") or a["set"].get("target")
        rev = f"@{a['set']['commit'][:12]}" if a["set"].get("commit") else ""
        o = a["result"]
        lines.append(f"| against `{other}{rev}` | {o['num_train_images']} | {o['mean']:.2f} ± {o['std']:.2f} |")
    lines.append("")
    if doc["gain_over_baseline"]:
        g = doc["gain_over_baseline"]
        lines.append(f"Gain over the random baseline: {g['points']:+.2f} ± {g['std']:.2f} points.")
    if doc["against"]:
        d = doc["against"]["difference"]
        lines.append(f"Difference to the compared set: {d['points']:+.2f} ± {d['std']:.2f} points.")
    gates = doc["gates"]
    if gates["fail_under"] is not None or gates["fail_below_baseline"] is not None:
        lines.append("Gates: " + ("passed." if gates["passed"] else "**failed**: " + "; ".join(gates["failures"])))
    return "\n".join(lines) + "\n"


def append_step_summary(doc: dict) -> bool:
    """Append `markdown(doc)` to the file named by `GITHUB_STEP_SUMMARY`, when set; tell whether it did."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return False
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(markdown(doc) + "\n")
    return True
