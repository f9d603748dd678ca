"""Results a CI job can act on: the JSON document and its schema, gates and exit code 3, comparisons, the step
summary, progress lines in logs, and the workflow example."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from dsco_hub import assess, pipeline, results, ui
from dsco_hub.config import ConcentrateConfig, EvalConfig, SourceConfig
from dsco_hub.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def dsco(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dsco_hub", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


@pytest.fixture
def tiny_set(tiny_repo, tmp_path) -> Path:
    """A random IPC 2 set of `tiny_repo`, not evaluated."""
    out = tmp_path / "set"
    pipeline.concentrate(
        ConcentrateConfig(
            source=SourceConfig(source=str(tiny_repo)), method="random", ipc=2, out=str(out), evaluate=False
        )
    )
    return out


def _block(mean: float, baseline: float | None, std: float = 1.0) -> dict:
    def run(m):
        return {"accuracy_mean": m, "accuracy_std": std, "accuracies": [m], "model": "convnet3", "epochs": 1,
                "runs": 1, "num_train_images": 6}  # fmt: skip

    block = {
        "protocol": {
            "model": "auto",
            "epochs": 1,
            "runs": 1,
            "lr": 0.01,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "batch_size": 256,
            "augment": True,
            "flip": False,
            "seed": 0,
            "labels": "hard",
            "device": "cpu",
            "precision": "float32",
        },  # fmt: skip
        "test": {"dataset": "tiny", "split": "test", "num_images": 12},
        "evaluated_at": "2026-12-04T00:00:00+00:00",
        "result": run(mean),
    }
    if baseline is not None:
        block["baseline_random"] = run(baseline)
    return block


TARGET = {"target": "set", "repo_id": None, "revision": None, "commit": None, "config": None, "method": "random",
          "ipc": 2}  # fmt: skip


def test_the_evaluate_json_validates_against_the_shipped_schema(tiny_set, tmp_path):
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    made = dsco("evaluate", str(tiny_set), "--runs", "2", "--epochs", "2", "--json", str(tmp_path / "r.json"), env=env)
    assert made.returncode == 0, made.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(doc, results.schema())
    assert doc["schema_version"] == results.SCHEMA_VERSION and doc["set"]["target"] == "set"
    assert (doc["set"]["method"], doc["set"]["ipc"], doc["set"]["repo_id"]) == ("random", 2, None)
    assert len(doc["result"]["accuracies"]) == 2 and len(doc["protocol"]["run_seeds"]) == 2
    assert doc["protocol"]["device"] == "cpu" and doc["protocol"]["precision"] == "float32"
    gain = doc["result"]["mean"] - doc["baseline"]["mean"]
    assert doc["gain_over_baseline"]["points"] == pytest.approx(gain, abs=0.011)
    assert doc["gates"] == {"fail_under": None, "fail_below_baseline": None, "passed": True, "failures": []}
    summary = (tmp_path / "summary.md").read_text()
    assert "### dsco-hub evaluation of `set`" in summary and f"| this set | 6 | {doc['result']['mean']:.2f}" in summary
    assert "[dsco-hub] evaluate result:" in made.stderr  # progress lines in a log (stderr is not a terminal)


def test_json_to_stdout_is_only_json_and_concentrate_writes_it_too(tiny_repo, tmp_path):
    made = dsco("concentrate", str(tiny_repo), "--method", "random", "--ipc", "1", "--runs", "1", "--epochs", "1",
                "--no-baseline", "--out", str(tmp_path / "s"), "--json", "-")  # fmt: skip
    assert made.returncode == 0, made.stderr
    doc = json.loads(made.stdout)  # nothing else on stdout: the table went to stderr
    jsonschema.validate(doc, results.schema())
    assert doc["baseline"] is None and doc["gain_over_baseline"] is None and doc["set"]["target"] == "s"
    assert "accuracy on tiny" in made.stderr


def test_a_missed_gate_exits_3_after_writing_the_results(tiny_set, tmp_path):
    made = dsco("evaluate", str(tiny_set), "--runs", "1", "--epochs", "1", "--json", str(tmp_path / "r.json"),
                "--fail-below-baseline", "50", "--quiet")  # fmt: skip
    assert made.returncode == results.EXIT_GATE_FAILED, made.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["gates"]["passed"] is False and doc["gates"]["fail_below_baseline"] == 50
    assert doc["gates"]["failures"] == [
        f"gain over the random baseline {doc['result']['mean'] - doc['baseline']['mean']:+.2f} points is under "
        "--fail-below-baseline +50"
    ]
    assert "Gate failed: gain over the random baseline" in made.stderr
    assert "[dsco-hub]" not in made.stderr  # --quiet: no progress


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--fail-below-baseline", "0", "--no-baseline"], "--fail-below-baseline=0.0 compares with the random"),
        (["--fail-under", "101"], "--fail-under=101.0 must be an accuracy in percent"),
        (["--against", "@main"], "--against='@main' names a revision of"),
    ],
)
def test_bad_gate_or_comparison_is_one_line_before_any_work(tiny_set, tmp_path, args, expected):
    made = dsco("evaluate", str(tiny_set), "--runs", "1", "--epochs", "1", *args, "--json", str(tmp_path / "r.json"))
    assert made.returncode == 1, made.stderr
    lines = [line for line in made.stderr.splitlines() if line.strip() and not line.startswith("[dsco-hub] ")]
    assert len(lines) == 1 and expected in " ".join(made.stderr.split())
    assert not (tmp_path / "r.json").exists()


def test_gates_and_differences():
    gates = results.Gates(fail_under=80, fail_below_baseline=0)
    assert gates.check(_block(85.0, 84.0)) == []
    assert gates.check(_block(79.99, 70.0)) == ["accuracy 79.99 % is under --fail-under 80 %"]
    assert gates.check(_block(85.0, 85.5)) == [
        "gain over the random baseline -0.50 points is under --fail-below-baseline +0"
    ]
    assert results.Gates(fail_below_baseline=-1).check(_block(85.0, 85.5)) == []  # a tolerance
    assert results.difference(
        {"accuracy_mean": 80.0, "accuracy_std": 3.0}, {"accuracy_mean": 78.5, "accuracy_std": 4.0}
    ) == {
        "points": 1.5,
        "std": 5.0,
    }
    with pytest.raises(ConfigError, match="--fail-under=-1 must be an accuracy in percent"):
        results.Gates(fail_under=-1).validate(baseline=True)


def test_a_comparison_is_recorded_with_its_difference_and_validates():
    other = {**TARGET, "target": "old", "repo_id": "alice/set", "commit": "a" * 40}
    doc = results.document(TARGET, _block(81.0, 70.0), None, (other, _block(79.0, None, std=2.0)))
    jsonschema.validate(doc, results.schema())
    assert doc["against"]["difference"] == {"points": 2.0, "std": round((1 + 4) ** 0.5, 2)}
    assert doc["against"]["set"]["commit"] == "a" * 40
    text = results.markdown(doc)
    assert "| against `alice/set@aaaaaaaaaaaa` | 6 | 79.00 ± 2.00 |" in text
    assert "Difference to the compared set: +2.00 ± 2.24 points." in text


def test_a_document_that_breaks_the_schema_is_caught():
    doc = results.document(TARGET, _block(81.0, 70.0))
    doc["result"]["mean"] = 181.0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, results.schema())


def test_evaluate_against_another_folder_uses_the_same_seeds_and_test_split(tiny_set, tiny_repo, tmp_path):
    cfg = EvalConfig(runs=1, epochs=2)
    doc = assess.evaluate_report(str(tiny_set), SourceConfig(), cfg, against=str(tiny_set))
    assert doc["against"]["result"]["accuracies"] == doc["result"]["accuracies"]  # the same set, the same seeds
    assert doc["against"]["difference"]["points"] == 0
    assert doc["test"]["dataset"] == "tiny"


# Progress lines in logs -------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_prints_at_each_tenth_every_minute_and_once_at_the_end():
    stream, clock = io.StringIO(), FakeClock()
    progress = ui.PlainProgress(stream=stream, clock=clock)
    task = progress.add_task("evaluate result", total=1000, info="500 images")
    for _ in range(1000):
        clock.now += 1 / 64  # exact in binary
        progress.advance(task, 1)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11  # the start and each 10 %
    assert lines[0] == "[dsco-hub] evaluate result: 0/1000 (0 %) 500 images, elapsed 0:00:00"
    assert lines[5] == "[dsco-hub] evaluate result: 500/1000 (50 %) 500 images, elapsed 0:00:07, ETA 0:00:07"
    assert lines[-1] == "[dsco-hub] evaluate result: 1000/1000 (100 %) 500 images, elapsed 0:00:15"
    progress.advance(task, 0)
    assert len(stream.getvalue().splitlines()) == 11  # a finished task prints no more ...
    progress.update(task, info="81.00 ± 0.50 %")
    assert stream.getvalue().splitlines()[-1].startswith("[dsco-hub] evaluate result: 1000/1000 (100 %) 81.00")
    slow = progress.add_task("train", total=10**6, info="")
    clock.now += 61
    progress.advance(slow, 1)  # far from the next 10 %, but a minute has passed
    assert stream.getvalue().splitlines()[-1].startswith("[dsco-hub] train: 1/1e+06 (0 %), elapsed 0:01:01")


def test_quiet_and_disabled_progress_print_nothing(monkeypatch, capsys):
    stream = io.StringIO()
    progress = ui.PlainProgress(stream=stream, disable=True)
    progress.advance(progress.add_task("x", total=2, info=""), 2)
    assert stream.getvalue() == ""
    ui.set_quiet(True)
    try:
        bar = ui.progress_bar()
        with bar:
            bar.advance(bar.add_task("x", total=2, info=""), 2)
    finally:
        ui.set_quiet(False)
    assert capsys.readouterr().err == ""


# The workflow example ---------------------------------------------------------------------------------------------


def test_the_workflow_example_is_a_valid_github_workflow_using_json_and_a_gate():
    workflow = EXAMPLES / "evaluate-on-hub.yml"
    checked = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(workflow)],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    text = workflow.read_text()
    assert "git+https://github.com/dsco-hub" not in text  # installs what exists: the distribution's name
    assert "--json results.json" in text and "--fail-below-baseline" in text and "upload-artifact" in text
    assert "DSCO_HUB_GPU_RUNNER" in text


def test_json_on_a_data_free_run_without_a_test_split_is_one_line_before_any_work(tmp_path):
    made = dsco("concentrate", "--data-free", "--labels", "Trouser,Dress", "--ipc", "1", "--json", "r.json",
                "--out", "set", cwd=tmp_path)  # fmt: skip
    assert made.returncode == 1, made.stderr
    assert "a data-free run makes only on a test split: pass SOURCE or --test-dataset" in " ".join(made.stderr.split())
    assert list(tmp_path.iterdir()) == []
