"""Every benchmark results file names the command that writes it, and that command runs as written.

A file in `bench/results/*.md` starts with its title, then either

- `Command: `python bench/SCRIPT.py ...``: the one command that writes the file whole. SCRIPT exists, its argument
  parser accepts every option and value of the command, the command writes this very file (its `--out`, `--table`,
  or the `.md` beside its `--results`), and a `--results` file it reads from is committed beside it; or
- `Assembled by hand ...` followed by the commands (indented lines) of the runs it gathers, for files no script
  writes: each command's options exist.

Every other indented command in a results file (e.g. the call behind each row of `nopt_sweep.md`) is checked the
same way. Nothing is run: the scripts' parsers are captured when their `main()` asks for the arguments.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = sorted((ROOT / "bench" / "results").glob("*.md"))
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
INDENTED_COMMAND = re.compile(r"^    ((?:[A-Z_][A-Z0-9_]*=\S+ )*(?:python bench/|dsco-hub ).*)$", re.M)


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__("parser captured")
        self.parser = parser


_PARSERS: dict[str, argparse.ArgumentParser] = {}


def _bench_module(name: str):
    """`bench/NAME.py` imported as a module (its `main()` is not run)."""
    path = ROOT / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_parser(script: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The `argparse` parser `bench/SCRIPT.py`'s `main()` builds, captured when it parses (nothing else runs)."""
    if script not in _PARSERS:
        path = ROOT / script
        assert path.is_file(), f"{script} does not exist"
        module = _bench_module(path.stem)

        def capture(self, *args, **kwargs):
            raise _Captured(self)

        with monkeypatch.context() as patch:
            patch.setattr(argparse.ArgumentParser, "parse_args", capture)
            with pytest.raises(_Captured) as captured:
                module.main()
        _PARSERS[script] = captured.value.parser
    return _PARSERS[script]


def cli_options(words: list[str]) -> tuple[str, set[str]]:
    """The (sub)command `dsco-hub WORDS...` names (e.g. `prior train`) and the options it accepts."""
    import typer

    from dsco_hub.cli import app

    command, name = typer.main.get_command(app), "dsco-hub"
    while hasattr(command, "commands"):  # descend through the command groups (`prior train`)
        assert words and words[0] in command.commands, f"{name} has no command {words[:1]}"
        command, name, words = command.commands[words[0]], f"{name} {words[0]}", words[1:]
    return name, {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}


def parse(command: str, monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace | None:
    """Check `command`'s options against its parser; the parsed arguments of a bench script (None for dsco-hub)."""
    argv = shlex.split(command)
    while argv and ENV_ASSIGNMENT.match(argv[0]):  # OMP_NUM_THREADS=1 ...
        argv.pop(0)
    if argv[:1] == ["dsco-hub"]:
        name, options = cli_options(argv[1:])
        used = {arg.split("=", 1)[0] for arg in argv[2:] if arg.startswith("--")}
        assert used <= options, f"{name} has no option {sorted(used - options)}: {command}"
        return None
    assert argv[:1] == ["python"] and argv[1].startswith("bench/"), f"not a bench script or dsco-hub: {command}"
    parser = script_parser(argv[1], monkeypatch)
    try:
        return parser.parse_args(argv[2:])
    except SystemExit:
        pytest.fail(f"{argv[1]} refuses the arguments of: {command}")


def header(text: str) -> tuple[str, list[str]]:
    """`("command", [command])` or `("by hand", [commands])` from the top of a results file."""
    lines = text.splitlines()
    assert lines[0].startswith("# "), "a results file starts with its title"
    rest = "\n".join(lines[1:]).lstrip("\n")
    if rest.startswith("Command: `"):
        return "command", [rest[len("Command: `") : rest.index("`", len("Command: `"))]]
    if rest.startswith("Assembled by hand"):
        block = re.split(r"\n\S", rest.split("\n\n    ", 1)[1], maxsplit=1)[0]  # the first indented block
        commands = [line.strip() for line in ("    " + block).splitlines() if line.strip()]
        assert commands, "a file assembled by hand lists the commands of its runs"
        return "by hand", commands
    pytest.fail("after the title, a results file quotes its command (`Command: `...``) or says `Assembled by hand`")


def test_every_results_file_is_checked():
    assert len(RESULTS) >= 10 and all(path.suffix == ".md" for path in RESULTS)


@pytest.mark.parametrize("path", RESULTS, ids=[path.name for path in RESULTS])
def test_results_file_names_a_command_that_writes_it(path, monkeypatch):
    if not path.exists():  # a benchmark running beside the tests rewrote it (write, rename) between collection and now
        pytest.skip(f"{path.name} was replaced while the tests ran")
    text = path.read_text()
    kind, commands = header(text)
    relative = path.relative_to(ROOT)
    for command in commands:
        args = parse(command, monkeypatch)
        if kind != "command":
            continue
        assert args is not None, f"{relative}: the command that writes a results file is a bench script"
        results = getattr(args, "results", None)
        written = {
            getattr(args, "out", None),
            getattr(args, "table", None),
            str(Path(results).with_suffix(".md")) if results else None,
        } - {None}
        assert any((ROOT / str(w)).resolve() == path for w in written), (
            f"{relative}: its command writes {sorted(map(str, written))}, not this file; quote --out/--table"
        )
        if results:
            assert (ROOT / results).is_file(), f"{relative}: the raw results {results} are not committed"
    for command in INDENTED_COMMAND.findall(text):  # the commands quoted further down (e.g. one per row)
        parse(command, monkeypatch)


def test_a_command_with_an_unknown_option_is_caught(monkeypatch):
    """The check can fail: an option no parser knows, or a file the command does not write."""
    with pytest.raises(pytest.fail.Exception, match="refuses the arguments"):
        parse("python bench/sampling_throughput.py --steps 25 --best-of 3", monkeypatch)
    with pytest.raises(AssertionError, match="has no option"):
        parse("dsco-hub concentrate SOURCE --ipc 1 --nopt-magic 2", monkeypatch)
    with pytest.raises(AssertionError, match="dsco-hub prior train has no option"):
        parse("dsco-hub prior train SOURCE --out P --max-step 9600", monkeypatch)
    parse("dsco-hub prior train SOURCE --out P --max-steps 9600", monkeypatch)  # a command of a group is checked
    args = parse("python bench/nopt_cost.py --ipc 1", monkeypatch)
    assert args.out == "bench/results/nopt_cost.md"  # the default: a command for nopt_cost_ipc1.md must say --out


def test_gpu_check_compares_with_the_shipped_priors_cpu_rows(tmp_path):
    import json

    from dsco_hub.models import prior_digest, shipped_prior_path

    gpu_check = _bench_module("gpu_check")
    shipped = prior_digest(shipped_prior_path())
    rows = [
        {"method": "herding", "ipc": 10, "prior": "", "accuracy_mean": 79.2},
        {"method": "dsco", "ipc": 10, "prior": "0123456789ab", "accuracy_mean": 70.0},  # another prior
        {"method": "dsco", "ipc": 10, "prior": shipped, "accuracy_mean": 80.2},
        {"method": "dsco", "ipc": 1, "prior": shipped, "variant": "pool 64", "accuracy_mean": 50.0},  # not defaults
    ]
    results = tmp_path / "baselines.jsonl"
    results.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert gpu_check.shipped_figures(results) == {"herding": {10: 79.2}, "dsco": {10: 80.2}}
    assert gpu_check.shipped_figures(tmp_path / "missing.jsonl") == {}


def test_gpu_checks_ship_rule_needs_a_lead_beyond_the_spread_over_set_seeds():
    gpu_check = _bench_module("gpu_check")
    for name, parts in [
        ("dsco-ipc10", ("dsco", 10, 0, "trained")),
        ("dsco-datafree-ipc50-s2", ("dsco-datafree", 50, 2, "trained")),
        ("shipped-dsco-ipc10-s1", ("dsco", 10, 1, "shipped")),
    ]:
        assert tuple(gpu_check.parse_set_name(name).values()) == parts
        assert gpu_check.set_name(*parts[:3], gpu_check.SHIPPED if parts[3] == "shipped" else "") == name
    shipped = {("shipped", 10): (79.2, 1.0, 3), ("shipped", 50): (84.9, 0.3, 3)}
    ahead = {**shipped, ("trained", 10): (80.5, 0.5, 3), ("trained", 50): (85.5, 0.4, 3)}
    assert gpu_check.ship_verdict(ahead, [10, 50], 3) == (
        "Verdict: the trained prior leads at every IPC by more than the sets' spread (IPC 10: +1.3 (spread 1.0); "
        "IPC 50: +0.6 (spread 0.4)): ship it."
    )
    within = {**ahead, ("trained", 10): (80.0, 0.5, 3)}  # +0.8 at IPC 10, inside the shipped sets' spread of 1.0
    assert gpu_check.ship_verdict(within, [10, 50], 3) == (
        "Verdict: keep the shipped prior (IPC 10: +0.8 (spread 1.0); IPC 50: +0.6 (spread 0.4))."
    )
    short = {**ahead, ("trained", 50): (85.5, 0.0, 1)}  # two of its three IPC 50 sets missing (time ran out)
    assert gpu_check.ship_verdict(short, [10, 50], 3) == "Verdict: not decided, sets missing (trained IPC 50)."


def test_the_shipped_priors_quality_table_is_complete():
    # the README's quality table is `baselines.jsonl`'s rows at the defaults: every method at IPC 1, 10 and 50,
    # synthetic ones with the prior this checkout ships (re-run them when another prior is shipped)
    gpu_check = _bench_module("gpu_check")
    figures = gpu_check.shipped_figures()
    assert [(m, ipc) for m in gpu_check.METHODS for ipc in (1, 10, 50) if ipc not in figures.get(m, {})] == []
