"""Bad input never deletes or changes what the user has, and gets the exit code and the one line it should.

One test per case of issue 15: each asserts the exit code, the one-line message, and that nothing outside the
output folder changed (a listing of the files, their sizes and modification times, before and after).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import typer
from conftest import png, tiny_dataset, write_repo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dsco_hub import assess, cli, files, pipeline, synthesis, writer
from dsco_hub.config import ConcentrateConfig, EvalConfig, SourceConfig
from dsco_hub.errors import ConfigError, ImageDecodeError, OutputError


def dsco(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dsco_hub", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def listing(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[int, int]]:
    """Every file under `folder` (but those under `skip`) with its size and modification time."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not any(rel == s or rel.startswith(s + "/") or rel.startswith(s + ".") for s in skip):
            stat = path.stat()
            found[rel] = (stat.st_size, stat.st_mtime_ns)
    return found


def one_line_error(result: subprocess.CompletedProcess, code: int, *expected: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("[dsco-hub] ")]
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    text = " ".join(result.stderr.split())
    for part in expected:
        assert part in text, text
    return text


def _cfg(source, out, **kw) -> ConcentrateConfig:
    kw.setdefault("method", "random")
    kw.setdefault("ipc", 1)
    kw.setdefault("evaluate", False)
    return ConcentrateConfig(
        source=SourceConfig(source=str(source)), out=str(out), eval=EvalConfig(runs=1, epochs=1), **kw
    )


# 1. --out: never the current folder, the home folder, the root, nor a source's folder -----------------------------


@pytest.mark.parametrize("value", ["", "   ", ".", "..", "./", "~", "/", "HOME", "CWD", "SOURCE", "SOURCE/sub"])
def test_out_that_would_touch_the_users_folders_is_refused(tiny_repo, tmp_path, value):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "mine.txt").write_text("keep")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("keep")
    value = {"HOME": str(home), "CWD": str(work), "SOURCE": str(tiny_repo), "SOURCE/sub": str(tiny_repo / "data")}.get(
        value, value
    )
    before = listing(tmp_path)
    result = dsco(
        "concentrate", str(tiny_repo), "--ipc", "1", "--method", "random", "--no-eval", "--overwrite", "--out", value,
        cwd=work / "sub" if value == ".." else work,
        env={**os.environ, "HOME": str(home)},
    )  # fmt: skip
    one_line_error(result, 1, "--out=", "pass a new or dsco-hub-written folder")
    assert listing(tmp_path) == before


def test_prior_train_out_follows_the_same_rules(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    before = listing(tmp_path)
    result = dsco("prior", "train", "--out", "", "--max-steps", "1", cwd=tmp_path)
    one_line_error(result, 1, "--out='' is empty")
    result = dsco("prior", "train", "--out", ".", "--max-steps", "1", cwd=tmp_path)
    one_line_error(result, 1, "--out='.' is the current")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("command", [["teacher", "train", "--epochs", "1"], ["prior", "train", "--max-steps", "1"]])
def test_training_without_source_never_writes_into_the_embedded_subset(command):
    from dsco_hub.data import embedded_source_path

    embedded = embedded_source_path()
    before = listing(embedded)
    result = dsco(*command, "--out", str(embedded / "data" / "teacher"))
    one_line_error(result, 1, "lies inside the source", "fashion_mnist_subset")
    assert listing(embedded) == before


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parts=st.lists(
        st.sampled_from([".", "..", "", "~", "set", "src", "data", " ", "a b", "é"]), min_size=1, max_size=4
    ),
    absolute=st.booleans(),
)
def test_any_accepted_out_is_a_folder_apart_from_cwd_home_and_source(tmp_path_factory, parts, absolute):
    root = tmp_path_factory.mktemp("paths")
    cwd, source = root / "w" / "cwd", root / "w" / "cwd" / "src"
    source.mkdir(parents=True, exist_ok=True)
    value = ("/" if absolute else "") + "/".join(parts)
    here = os.getcwd()
    os.chdir(cwd)
    try:
        try:
            path = files.check_out_path(value, "--out", [str(source)])
        except OutputError as err:
            assert "\n" not in str(err) and str(err).startswith("--out=")
            return
    finally:
        os.chdir(here)
    resolved_cwd, home = cwd.resolve(), Path.home().resolve()
    assert path.is_absolute()
    assert path != resolved_cwd and path not in resolved_cwd.parents
    assert path != home and path != Path(path.anchor)
    held = source.resolve()
    assert path != held and path not in held.parents and held not in path.parents


def test_a_folder_named_like_the_run_folder_that_no_run_wrote_is_never_deleted(tiny_repo, tmp_path):
    mine = tmp_path / "set.partial"
    mine.mkdir()
    (mine / "thesis.txt").write_text("keep")
    (mine / "units").mkdir()
    (mine / "units" / "notes.md").write_text("keep")
    before = listing(tmp_path)
    for overwrite in ([], ["--overwrite"]):
        result = dsco("concentrate", str(tiny_repo), "--method", "random", "--ipc", "1", "--no-eval",
                      "--out", str(tmp_path / "set"), *overwrite)  # fmt: skip
        one_line_error(result, 1, f"{mine} holds files dsco-hub did not write (thesis.txt, units/notes.md)",
                       "move them, or choose another --out")  # fmt: skip
        assert listing(tmp_path) == before and not (tmp_path / "set").exists()
    mine.rename(tmp_path / "moved")
    (tmp_path / "set.partial").write_text("a file")  # a file (or a link) of that name is refused too
    result = dsco("concentrate", str(tiny_repo), "--method", "random", "--ipc", "1", "--no-eval",
                  "--out", str(tmp_path / "set"))  # fmt: skip
    one_line_error(result, 1, "is not a run folder dsco-hub wrote (it is a file or a link)")
    assert (tmp_path / "set.partial").read_text() == "a file"


def test_a_set_is_never_named_like_a_run_folder_so_no_run_deletes_one(tiny_repo, tmp_path):
    sets = tmp_path / "sets"
    sets.mkdir()
    result = dsco("concentrate", str(tiny_repo), "--method", "random", "--ipc", "1", "--no-eval",
                  "--out", str(sets / "a.partial"))  # fmt: skip
    one_line_error(result, 1, "--out=", "a.partial' ends in .partial", "e.g. --out a.")
    assert not any(sets.iterdir())
    pipeline.concentrate(_cfg(tiny_repo, sets / "a"))
    before = listing(sets)
    os.replace(sets / "a", sets / "a.partial")  # a set an older version let the user name so
    pipeline.concentrate(_cfg(tiny_repo, sets / "b"))
    with pytest.raises(OutputError, match=r"a\.partial holds files dsco-hub did not write \(README\.md, data"):
        pipeline.concentrate(_cfg(tiny_repo, sets / "a", seed=5, overwrite=True))
    assert {k.replace("a.partial/", "a/"): v for k, v in listing(sets, skip=("b",)).items()} == before


def test_a_dry_run_refuses_the_out_the_run_would_refuse(tiny_repo, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    before = listing(tmp_path)
    for out, expected in ((tmp_path / "mine", "holds files dsco-hub did not write (notes.txt)"),
                          (tmp_path / "x.partial", "ends in .partial"),
                          (tiny_repo / "data", "lies inside the source")):  # fmt: skip
        result = dsco("concentrate", str(tiny_repo), "--method", "random", "--dry-run", "--out", str(out))
        one_line_error(result, 1, expected)
    (tmp_path / "y.partial").mkdir()
    (tmp_path / "y.partial" / "draft.md").write_text("keep")  # the run folder of --out y, which no run wrote
    before = listing(tmp_path)
    result = dsco("concentrate", str(tiny_repo), "--method", "random", "--dry-run", "--out", str(tmp_path / "y"))
    one_line_error(result, 1, "y.partial holds files dsco-hub did not write (draft.md)")
    assert listing(tmp_path) == before


# 2. Signals: 130 on SIGINT, 143 on SIGTERM, one line, and the run resumes ------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_with_its_exit_code_and_the_run_resumes(tmp_path, signum, code):
    out = tmp_path / "set"
    args = [sys.executable, "-m", "dsco_hub", "concentrate", "--ipc", "3", "--method", "diffusion", "--no-eval"]
    proc = subprocess.Popen([*args, "--out", str(out)], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "set.partial" / "run_config.json").exists() and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    message = [line for line in stderr.splitlines() if "Interrupted" in line]
    assert len(message) == 1 and f"({signal.Signals(signum).name})" in message[0]
    assert "rerun the same command to resume" in message[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    resumed = dsco("concentrate", "--ipc", "3", "--method", "diffusion", "--no-eval", "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert len(datasets.load_dataset(str(out), split="train")) == 30


# 3. Usage errors: Click's message and exit code 2 ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["concentrate", "--bogus"], "No such option: --bogus"),
        (["concentrate", "--ipc", "abc"], "Invalid value for '--ipc'"),
        (["no-such-command"], "No such command 'no-such-command'"),
    ],
)
def test_usage_errors_exit_2_with_clicks_message(tmp_path, args, expected):
    result = dsco(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Usage: " in result.stderr and expected in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


# 4. A source without a test split is never evaluated on its training rows ------------------------------------------


@pytest.fixture
def saved_dataset(tmp_path) -> Path:
    """A `save_to_disk` folder of one `Dataset` (no splits)."""
    folder = tmp_path / "saved"
    tiny_dataset().save_to_disk(str(folder))
    return folder


def test_a_dataset_without_splits_refuses_another_split_and_an_evaluation_on_itself(saved_dataset, tmp_path):
    before = listing(tmp_path)
    result = dsco("concentrate", str(saved_dataset), "--split", "foo", "--method", "random", "--ipc", "1",
                  "--no-eval", "--out", str(tmp_path / "a"))  # fmt: skip
    one_line_error(result, 1, "--split='foo' does not exist in", "available splits: train")
    result = dsco("concentrate", str(saved_dataset), "--method", "random", "--ipc", "1", "--out", str(tmp_path / "b"))
    one_line_error(result, 1, "never tested on their training rows", "--test-dataset SOURCE", "--no-eval")
    assert listing(tmp_path) == before


def test_test_dataset_evaluates_a_source_without_a_test_split(saved_dataset, tiny_repo, tmp_path):
    out = tmp_path / "set"
    cfg = _cfg(saved_dataset, out, evaluate=True, test_dataset=str(tiny_repo))
    cfg.eval.baseline = False
    result = pipeline.concentrate(cfg)
    test = result.dsco["eval"]["test"]
    assert test["split"] == "test" and test["num_images"] == 12  # tiny_repo's test split, not the 19 training rows
    assert test["dataset"] != result.dsco["source"]["id"]


# 5. A resume is tied to the source's data --------------------------------------------------------------------------


def test_a_resume_on_changed_data_is_refused_and_overwrite_starts_over(tiny_repo, tmp_path, monkeypatch):
    out = tmp_path / "set"
    compute = synthesis.compute_unit
    calls = []

    def crash_after_one(unit, *args):
        calls.append(unit.index)
        if len(calls) > 1:
            raise RuntimeError("killed")
        return compute(unit, *args)

    monkeypatch.setattr(synthesis, "compute_unit", crash_after_one)
    with pytest.raises(RuntimeError, match="killed"):
        pipeline.concentrate(_cfg(tiny_repo, out))
    monkeypatch.setattr(synthesis, "compute_unit", compute)
    assert len(list((tmp_path / "set.partial" / "units").glob("*.parquet"))) == 1
    fixed = tiny_dataset(seed_offset=7)  # "fix a row": other bytes in the same file
    fixed.to_parquet(str(tiny_repo / "data" / "train-00000-of-00001.parquet"))
    with pytest.raises(ConfigError, match=r"SOURCE changed since the saved run .* pass --overwrite to start over"):
        pipeline.concentrate(_cfg(tiny_repo, out))
    assert not out.exists()
    pipeline.concentrate(_cfg(tiny_repo, out, overwrite=True))
    raw = fixed.cast_column("image", datasets.Image(decode=False))
    rows = datasets.load_dataset(str(out), split="train").cast_column("image", datasets.Image(decode=False))
    for row in rows:  # every row's provenance points at the source as it is now: same label, same bytes
        assert raw[row["source_index"]]["label"] == row["label"]
        assert raw[row["source_index"]]["image"]["bytes"] == row["image"]["bytes"]
    config = json.loads((out / "dsco_config.json").read_text())
    assert config["source_fingerprint"]["kind"] == "local" and config["source_fingerprint"]["files"] == 3
    fixed.select(range(3)).to_parquet(str(tiny_repo / "data" / "train-00000-of-00001.parquet"))
    with pytest.raises(ConfigError, match=r"SOURCE changed since the finished set"):
        pipeline.concentrate(_cfg(tiny_repo, out))


# 6. File-system failures are one line, and leave nothing half-written ----------------------------------------------


def test_out_under_a_file_is_one_line(tiny_repo, tmp_path):
    (tmp_path / "file").write_text("keep")
    before = listing(tmp_path)
    result = dsco("concentrate", str(tiny_repo), "--method", "random", "--ipc", "1", "--no-eval",
                  "--out", str(tmp_path / "file" / "set"))  # fmt: skip
    one_line_error(result, 1, "cannot write", "Not a directory (ENOTDIR)", "choose another --out")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only")])
def test_file_system_errors_become_one_line_and_exit_1(tiny_repo, tmp_path, monkeypatch, capsys, code, reason):
    out = tmp_path / "set"

    def fail(table, where, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(where))

    monkeypatch.setattr(writer.pq, "write_table", fail)  # the first shard cannot be written
    monkeypatch.setattr(sys, "argv", ["dsco-hub", "concentrate", str(tiny_repo), "--method", "random", "--ipc", "1",
                                      "--no-eval", "--out", str(out)])  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        cli.main()
    assert stop.value.code == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[dsco-hub] ")]
    assert len(lines) == 1 and f"({errno.errorcode[code]})" in lines[0] and reason in lines[0], err
    assert not out.exists()
    assert not [p for p in (tmp_path / "set.partial" / "units").glob("*")]  # no half-written shard


@pytest.mark.parametrize(
    "args, named",
    [
        (["evaluate", "~no-such-user-x/set"], "'~no-such-user-x/set'"),
        (["concentrate", "--ipc", "1", "--no-eval", "--out", "~no-such-user-x/out"], "--out=~no-such-user-x/out"),
        (["concentrate", "--ipc", "1", "--no-eval", "--out=~no-such-user-x/out"], "--out=~no-such-user-x/out"),
    ],
)
def test_a_path_under_an_unknown_users_home_is_one_line(monkeypatch, capsys, tmp_path, args, named):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["dsco-hub", *args])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    assert stop.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"Error: {named}: this machine knows no such home folder (Could not determine home directory.); "
                     "write the path out in full."]  # fmt: skip
    assert not any(tmp_path.iterdir())


# 7. Bad input found late: reported by its source row, nothing left behind ------------------------------------------


def test_a_corrupt_image_is_reported_by_its_source_row_and_leaves_nothing(tmp_path):
    bad = tiny_dataset(per_class=(5, 5, 5)).cast_column("image", datasets.Image(decode=False))
    rows = bad.to_list()
    rows[4]["image"] = {"bytes": b"not an image", "path": None}
    broken = datasets.Dataset.from_list(rows, features=bad.features)
    source = write_repo(tmp_path / "broken", broken, tiny_dataset(per_class=(2, 2, 2), seed_offset=50))
    before = listing(tmp_path)
    result = dsco("concentrate", str(source), "--method", "random", "--ipc", "5", "--no-eval",
                  "--out", str(tmp_path / "set"))  # fmt: skip
    one_line_error(result, 1, "broken [train] row 4:", "cannot be decoded", "fix or drop that row")
    assert listing(tmp_path) == before  # neither OUT nor OUT.partial


def test_duplicate_data_free_labels_are_refused_before_any_work(tmp_path):
    result = dsco("concentrate", "--data-free", "--labels", "Trouser,trouser", "--no-eval", "--out",
                  str(tmp_path / "set"), cwd=tmp_path)  # fmt: skip
    one_line_error(result, 1, "--labels='Trouser,trouser' names 'Trouser' and 'trouser', the same class")
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=80, deadline=None)
@given(
    names=st.lists(st.text(st.characters(codec="utf-8", exclude_characters=","), min_size=1), min_size=1, max_size=6)
)
def test_data_free_labels_are_accepted_exactly_when_distinct_nonblank_and_two_or_more(names):
    cfg = ConcentrateConfig(data_free=True, labels=tuple(names))
    keys = [n.strip().casefold() for n in names]
    valid = all(n.strip() for n in names) and len(names) >= 2 and len(set(keys)) == len(keys)
    if valid:
        cfg.validate()
    else:
        with pytest.raises(ConfigError, match=r"^--labels="):
            cfg.validate()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ipc=st.integers(min_value=-5, max_value=12))
def test_ipc_is_accepted_exactly_when_every_class_has_that_many_images(tiny_repo, tmp_path_factory, ipc):
    out = tmp_path_factory.mktemp("ipc") / "set"
    cfg = _cfg(tiny_repo, out, ipc=ipc)
    if ipc < 1:
        with pytest.raises(ConfigError, match=rf"--ipc={ipc} must be at least 1"):
            pipeline.concentrate(cfg)
    elif ipc > 5:  # the smallest class (stripe) has 5 images
        with pytest.raises(ConfigError, match=rf"--ipc={ipc} is larger than class 2 \('stripe'\), which has 5"):
            pipeline.concentrate(cfg)
    else:
        pipeline.concentrate(cfg)
        assert len(datasets.load_dataset(str(out), split="train")) == 3 * ipc
        return
    assert not out.exists() and not out.with_name("set.partial").exists()


# 8. Nonsense: float labels, a single class -------------------------------------------------------------------------


def test_a_float_label_column_is_refused(tmp_path):
    ds = tiny_dataset(label_kind="int")
    ds = ds.add_column("score", [float(i) / 10 for i in range(len(ds))])
    source = write_repo(tmp_path / "floats", ds)
    result = dsco("concentrate", str(source), "--label-column", "score", "--method", "random", "--ipc", "1",
                  "--no-eval", "--out", str(tmp_path / "set"))  # fmt: skip
    one_line_error(result, 1, "--label-column='score'", "holds float64 values", "integers, strings or a ClassLabel")
    assert not (tmp_path / "set").exists()


@pytest.mark.parametrize("streaming", [[], ["--streaming"]])
def test_an_image_column_that_holds_no_images_is_refused_and_leaves_nothing(tmp_path, streaming):
    source = write_repo(tmp_path / "src", tiny_dataset(), tiny_dataset(per_class=(2, 2, 2), seed_offset=50))
    result = dsco("concentrate", str(source), "--image-column", "label", "--method", "random", "--ipc", "1",
                  "--no-eval", "--out", str(tmp_path / "set"), *streaming)  # fmt: skip
    one_line_error(result, 1, "--image-column='label'", "holds ClassLabel values", "Pass the image column")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # neither OUT nor OUT.partial


def test_a_json_path_that_is_a_folder_is_refused_before_any_student_is_trained(tiny_repo, tmp_path):
    pipeline.concentrate(_cfg(tiny_repo, tmp_path / "set"))
    (tmp_path / "results").mkdir()
    before = listing(tmp_path)
    concentrate = ["concentrate", str(tiny_repo), "--out", str(tmp_path / "b")]
    for command in (["evaluate", str(tmp_path / "set")], concentrate):
        result = dsco(*command, "--runs", "1", "--epochs", "1", "--json", str(tmp_path / "results"))
        one_line_error(result, 1, f"--json='{tmp_path / 'results'}' is a folder; pass a file path")
        assert "[dsco-hub] evaluate" not in result.stderr  # refused before the students' progress starts
    assert listing(tmp_path) == before


def test_a_one_class_source_is_refused(tmp_path):
    one = tiny_dataset(per_class=(6, 0, 0), label_kind="str")
    source = write_repo(tmp_path / "one", one, tiny_dataset(per_class=(2, 0, 0), label_kind="str", seed_offset=9))
    result = dsco("concentrate", str(source), "--method", "random", "--ipc", "1", "--out", str(tmp_path / "set"))
    one_line_error(result, 1, "has 1 class", "needs at least 2 classes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one"]


# 9. Output folders honour the umask ---------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_the_output_folder_honours_the_umask(tiny_repo, tmp_path, umask):
    old = os.umask(umask)
    try:
        pipeline.concentrate(_cfg(tiny_repo, tmp_path / "set"))
    finally:
        os.umask(old)
    assert (tmp_path / "set").stat().st_mode & 0o777 == 0o777 & ~umask


# 10. No absolute path anywhere in the set; a local source is recorded by its folder name ---------------------------


def test_the_set_holds_no_absolute_path_and_evaluate_still_finds_the_source(tiny_repo, tmp_path):
    out = tmp_path / "deep" / "set"
    cfg = _cfg(tiny_repo, out, evaluate=True)
    cfg.eval.baseline = False
    result = pipeline.concentrate(cfg)
    assert result.dsco["source"]["id"] == "tiny" and result.dsco["source"]["path"] == "../../tiny"
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert str(tmp_path).encode() not in data, path
            assert b"/tmp/" not in data and b"/root" not in data and b"/home/" not in data, path
    block = assess.evaluate_set(str(out), SourceConfig(), EvalConfig(runs=1, epochs=1, baseline=False))
    assert block["test"]["num_images"] == 12


# The exit-code contract of cli.main itself --------------------------------------------------------------------------


def test_main_turns_a_typer_exit_code_into_the_process_exit_code(monkeypatch):
    monkeypatch.setattr(cli, "app", lambda standalone_mode: 3)
    with pytest.raises(SystemExit) as stop:
        cli.main()
    assert stop.value.code == 3


@pytest.mark.parametrize(
    "argv, advice",
    [
        (["concentrate", "--ipc", "3"], "rerun the same command to resume (its finished units are kept in OUT."),
        (["prior", "train"], "rerun the same command to resume from the last checkpoint in OUT/checkpoints."),
        (["teacher", "train", "--out", "t"], "rerun the same command to resume from its last finished epoch."),
        (["evaluate", "set"], "rerun the same command to evaluate again (the set and its card are unchanged)."),
        (["push", "set"], "rerun it to upload only the files that are not there yet."),
    ],
)  # fmt: skip
def test_the_interrupt_line_says_what_a_rerun_of_that_command_does(monkeypatch, capsys, argv, advice):
    def interrupted(standalone_mode):
        raise cli.Interrupted(signal.SIGINT)

    monkeypatch.setattr(cli, "app", interrupted)
    monkeypatch.setattr(sys, "argv", ["dsco-hub", *argv])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    assert stop.value.code == 130
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Interrupted (SIGINT): nothing finished was lost; {advice}")


def test_every_command_has_its_interrupt_advice():
    assert set(cli._AFTER_INTERRUPT) == set(typer.main.get_command(cli.app).commands)


def test_a_png_that_is_not_one_is_caught_at_selection(tmp_path):
    """The unit test beside the CLI test of case 7: `random` decodes its picks, so the error names the source row."""
    ds = tiny_dataset(per_class=(3, 3, 3))
    rows = ds.cast_column("image", datasets.Image(decode=False)).to_list()
    rows[0]["image"] = {"bytes": png(Image.new("L", (4, 4)))[:20], "path": None}  # truncated
    broken = datasets.Dataset.from_list(rows, features=ds.cast_column("image", datasets.Image(decode=False)).features)
    source = write_repo(tmp_path / "trunc", broken)
    with pytest.raises(ImageDecodeError, match=r"trunc \[train\] row 0:"):
        pipeline.concentrate(_cfg(source, tmp_path / "set", ipc=3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trunc"]
