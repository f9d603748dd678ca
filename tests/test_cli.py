"""The command line: one-line errors with exit code 1, options reaching the library, help texts."""

from __future__ import annotations

import io
import subprocess
import sys

import datasets
import pytest
import yaml
from rich.console import Console

from dsco_hub.cli import reporter


def dsco(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsco_hub", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_commands():
    result = dsco("--help")
    assert result.returncode == 0
    for command in ("concentrate", "evaluate", "prior"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "args, expected",
    [
        (["concentrate", "./no/such/folder"], "SOURCE='./no/such/folder' does not exist"),
        (["concentrate", "--ipc", "0"], "--ipc=0 must be at least 1"),
        (["concentrate", "--method", "magic"], "--method='magic' is unknown; use one of random, herding"),
        (
            ["concentrate", "--ipc", "501", "--method", "herding", "--no-eval"],
            "--ipc=501 is larger than class 0 ('T-shirt/top'), which has 500",
        ),
        (["concentrate", "--split", "validation"], "--split='validation' does not exist"),
        (["concentrate", "--runs", "0"], "--runs=0 must be at least 1"),
        (
            ["concentrate", "--shuffle-buffer", "5000"],
            "--shuffle-buffer=5000 applies to --streaming (it shuffles the stream); add --streaming, or drop it.",
        ),
        (
            ["concentrate", "--revision", "v2"],
            "--revision='v2' picks a commit of a Hub dataset, but SOURCE is omitted: the embedded subset has none; "
            "pass a Hub SOURCE, or drop --revision.",
        ),
        (
            ["concentrate", "--no-eval", "--test-dataset", "./other"],
            "--test-dataset='./other' applies to the evaluation, which --no-eval skips; drop one of them.",
        ),
    ],
)
def test_bad_input_is_one_line_exit_1(tmp_path, args, expected):
    result = dsco(*args, "--out", str(tmp_path / "out"))
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("[dsco-hub] ")]
    assert len(lines) == 1, result.stderr
    assert expected in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["./no/such/set"], "TARGET='./no/such/set' does not exist; pass a set folder or a Hub set"),
        ([""], "TARGET='' is empty; pass a set folder"),
        (["SET", "--against", "./no/such/set"], "--against='./no/such/set' does not exist; pass a set folder"),
        (["SET", "--against", ""], "--against='' is empty; pass a set folder"),
        (
            ["SET", "--revision", "v2"],  # describes --test-dataset: the card's source is read at its own commit
            "--revision='v2' applies to --test-dataset; without it the test data is the source recorded in the set's "
            "card, at its recorded config and commit: add --test-dataset SOURCE, or drop it.",
        ),
        (["SET", "--config", "full"], "--config='full' applies to --test-dataset; without it the test data is"),
    ],
)
def test_evaluate_names_the_set_argument_that_is_wrong_before_any_training(tmp_path, args, expected):
    (tmp_path / "SET").mkdir()  # opened (and refused) only after --against is checked
    result = dsco("evaluate", *args, "--runs", "1", "--epochs", "1", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in " ".join(result.stderr.split()), result.stderr


def test_doping_ratio_takes_a_number_or_auto_and_refuses_anything_else_as_a_usage_error(tmp_path):
    result = dsco("concentrate", "--doping-ratio", "half", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "'half' is neither a number in [0, 1] nor auto." in " ".join(result.stderr.split())
    assert not (tmp_path / "out").exists()
    plan = dsco("concentrate", "--doping-ratio", "AUTO", "--dry-run", "--out", str(tmp_path / "out"))
    assert plan.returncode == 0, plan.stderr
    assert "IPC 10 = 5 synthetic + 5 real per class" in plan.stdout + plan.stderr  # auto: 10 / (10 + 10)


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_folder_dsco_hub_did_not_write_is_never_replaced(tmp_path, overwrite):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    result = dsco(
        "concentrate", "--no-eval", "--method", "random", "--ipc", "1", *overwrite, "--out", str(tmp_path / "out")
    )
    assert result.returncode == 1
    assert "holds files dsco-hub did not write (mine.txt)" in " ".join(result.stderr.split())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mine.txt"]
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"


def test_concentrate_and_evaluate_from_the_command_line(tiny_repo, tmp_path):
    out = tmp_path / "set"
    made = dsco(
        "concentrate",
        str(tiny_repo),
        "--ipc",
        "2",
        "--method",
        "random",
        "--seed",
        "3",
        "--out",
        str(out),
        "--runs",
        "1",
        "--epochs",
        "1",
    )
    assert made.returncode == 0, made.stderr
    assert "accuracy" in made.stdout and str(out) in " ".join(made.stdout.split())
    meta = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert (meta["dsco"]["ipc"], meta["dsco"]["seed"], meta["dsco"]["eval"]["result"]["runs"]) == (2, 3, 1)
    assert len(datasets.load_dataset(str(out), split="train")) == 6
    evaluated = dsco("evaluate", str(out), "--runs", "2", "--epochs", "1", "--no-baseline", "--update-card")
    assert evaluated.returncode == 0, evaluated.stderr
    meta = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert meta["dsco"]["eval"]["result"]["runs"] == 2 and "baseline_random" not in meta["dsco"]["eval"]


def test_evaluate_missing_test_split_points_to_test_split(tmp_path):
    from conftest import tiny_dataset, write_repo

    folder = write_repo(tmp_path / "notest", tiny_dataset())
    result = dsco("evaluate", str(folder), "--test-dataset", str(folder))
    assert result.returncode == 1
    assert "pass --test-split SPLIT, --test-dataset SOURCE with the same classes, or --no-eval" in " ".join(
        result.stderr.split()
    )


def test_labels_file_gives_the_data_free_classes(tiny_prior, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("  Stripe\n\ncircle  \n", encoding="utf-8")  # stripped, blank lines skipped
    out = tmp_path / "free"
    args = ["concentrate", "--data-free", "--labels-file", str(labels), "--model", str(tiny_prior)]
    result = dsco(*args, "--method", "diffusion", "--ipc", "1", "--steps", "2", "--no-eval", "--out", str(out))
    assert result.returncode == 0, result.stderr
    ds = datasets.load_dataset(str(out), split="train")
    assert ds.features["label"].names == ["Stripe", "circle"] and sorted(ds["label"]) == [0, 1]

    both = dsco(*args, "--labels", "circle,square", "--out", str(tmp_path / "both"))
    missing = dsco(
        "concentrate", "--data-free", "--labels-file", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "x")
    )
    for result, message in (
        (both, "--labels and --labels-file are both given; pass one of them."),
        (missing, f"--labels-file={str(tmp_path / 'nope.txt')!r} does not exist; pass a file with one name per line."),
    ):
        assert result.returncode == 1 and message in " ".join(result.stderr.split()), result.stderr
    assert not (tmp_path / "both").exists() and not (tmp_path / "x").exists()


def test_a_reported_message_stays_one_line_and_keeps_its_square_brackets():
    buffer = io.StringIO()
    message = "unit 3 of OUT.partial [units/unit-000003.parquet] is unreadable (ArrowInvalid); computing it again"
    reporter(Console(file=buffer, width=40))(message)
    assert buffer.getvalue() == message + "\n"  # neither wrapped at 40 columns nor read as Rich markup
