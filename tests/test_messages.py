"""What messages and records show of the user's input: options that exist, the command line with its token masked,
and did-you-mean hints."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import pytest
import typer.main
from test_prior import _cfg as prior_cfg

from dsco_hub import cli, pipeline, prior
from dsco_hub.config import ConcentrateConfig, SourceConfig, option_name, run_settings
from dsco_hub.text import closest, command_line

PACKAGE = Path(cli.__file__).parent
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?!\w)")  # not torchrun's --nproc_per_node
SECRET = "hf_S3CRET_token_0123456789"


def _options(command) -> set[str]:
    """Every `--option` (and `--no-option`) of a click command and its subcommands."""
    found = {o for p in getattr(command, "params", []) for o in [*p.opts, *p.secondary_opts] if o.startswith("--")}
    for sub in getattr(command, "commands", {}).values():
        found |= _options(sub)
    return found


def _strings(tree: ast.Module):
    """The string constants of a module (parts of f-strings included), docstrings left out."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node


def test_every_option_named_in_a_message_exists():
    options = _options(typer.main.get_command(cli.app))
    unknown = [
        f"{path.name}:{node.lineno} {name}"
        for path in sorted(PACKAGE.glob("*.py"))
        for node in _strings(ast.parse(path.read_text()))
        for name in OPTION.findall(node.value)
        if name not in options
    ]
    assert unknown == []


def test_every_setting_a_resume_compares_is_named_by_an_option_of_concentrate():
    concentrate = _options(typer.main.get_command(cli.app).commands["concentrate"])
    unknown = []
    for key in run_settings(ConcentrateConfig().to_dict(), "set"):
        name, library_only = option_name(key), key.startswith("eval.") and option_name(key) == f"EvalConfig.{key[5:]}"
        named = OPTION.findall(name)
        if not (named and set(named) <= concentrate or library_only or name in ("SOURCE", "SOURCE (preset)")):
            unknown.append(f"{key}: {name}")
    assert unknown == []


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["concentrate", "src", "--push", "--token", SECRET], "dsco-hub concentrate src --push --token REDACTED"),
        (
            ["concentrate", "src", f"--token={SECRET}", "--ipc", "2"],
            "dsco-hub concentrate src --token=REDACTED --ipc 2",
        ),
        (["concentrate", "my src", "--token"], "dsco-hub concentrate 'my src' --token"),  # no value: nothing to mask
        (["--token", "--token", SECRET], "dsco-hub --token REDACTED REDACTED"),
    ],
)
def test_command_line_masks_the_token(argv, expected):
    assert command_line(argv) == expected


def test_command_line_defaults_to_sys_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/usr/bin/dsco-hub", "prior", "train", "--token", SECRET])
    assert command_line() == "dsco-hub prior train --token REDACTED"


def test_a_library_concentrate_records_the_command_with_the_token_masked(tiny_repo, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dsco-hub", "concentrate", str(tiny_repo), "--token", SECRET])
    source = SourceConfig(source=str(tiny_repo))
    cfg = ConcentrateConfig(source=source, out=str(tmp_path / "set"), method="random", ipc=2, evaluate=False)
    out = pipeline.concentrate(cfg).out
    assert json.loads((out / "dsco_config.json").read_text())["command"].endswith("--token REDACTED")
    assert not [p for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


def test_a_library_prior_train_records_the_command_with_the_token_masked(tiny_repo, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dsco-hub", "prior", "train", f"--token={SECRET}"])
    out = prior.train_prior(prior_cfg(tiny_repo, tmp_path / "p", max_steps=2))
    assert "dsco-hub prior train --token=REDACTED" in (out / "README.md").read_text()
    assert not [p for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


def test_closest_ranks_by_similarity_and_keeps_the_candidates_order_on_ties():
    assert closest("strip", ["circle", "square", "stripe"]) == ["stripe", "square", "circle"]
    assert closest("b", ["a", "c", "d", "e"], n=2) == ["a", "c"]  # all equally far: the first two
    assert closest("x", []) == [] and closest("boat", ["boot", "coat"], n=1) == ["boot"]


def test_closest_scores_a_candidate_by_its_best_spelling():
    labels = ["tench, Tinca tinca", "church, church building", "chain"]
    synonyms = lambda label: [s.strip().lower() for s in label.split(",")]  # noqa: E731
    assert closest("church", labels, n=1, spellings=synonyms) == ["church, church building"]
    assert closest("tinca", labels, n=1, spellings=synonyms) == ["tench, Tinca tinca"]
