"""Scale: work units, shards, resume after a crash or SIGKILL, settings checks, several processes (torchrun)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsco_hub import distributed, pipeline, writer
from dsco_hub.config import ConcentrateConfig, EvalConfig, NOptConfig, SourceConfig
from dsco_hub.errors import ConfigError

DATA = Path("data") / "train-00000-of-00001.parquet"
COMPUTE_UNIT = pipeline._compute_unit


def _cfg(source, out, model, **kwargs) -> ConcentrateConfig:
    kwargs.setdefault("nopt", NOptConfig(window=0.5, iters=1, targets=4))
    kwargs.setdefault("method", "dsco")
    kwargs.setdefault("ipc", 2)
    kwargs.setdefault("evaluate", False)
    kwargs.setdefault("eval", EvalConfig(runs=1, epochs=1, baseline=False))
    return ConcentrateConfig(
        source=SourceConfig(source=str(source)),
        out=str(out),
        model=str(model),
        **{"steps": 4, **kwargs},
    )


def _args(source, out, model, *extra) -> list[str]:
    """The same small dsco concentration as `_cfg`, on the command line."""
    return [
        "concentrate",
        str(source),
        "--model",
        str(model),
        "--ipc",
        "2",
        "--steps",
        "4",
        "--nopt-targets",
        "4",
        "--no-eval",
        "--out",
        str(out),
        *extra,
    ]


def _env() -> dict:
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else ""), "OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------------------------------------------------------
# Units
# ---------------------------------------------------------------------------------------------------------------


def test_units_depend_on_the_settings_only():
    dsco = distributed.plan_units("dsco", ipc=50, num_classes=4)
    assert [(u.start, u.stop, u.classes) for u in dsco] == [(50 * k, 50 * k + 50, [k]) for k in range(4)]
    plain = distributed.plan_units("diffusion", ipc=50, num_classes=3)  # 150 slots in blocks of 64
    assert [(u.start, u.stop) for u in plain] == [(0, 64), (64, 128), (128, 150)]
    assert plain[0].classes == [0, 1] and plain[0].slots()[49:51] == [(0, 49), (1, 0)]
    for world_size in (1, 2, 3, 7):  # every unit exactly once, whatever the number of processes
        taken = [u.index for r in range(world_size) for u in distributed.assign(dsco, r, world_size)]
        assert sorted(taken) == [0, 1, 2, 3]
    assert distributed.assign(dsco, 5, 7) == []  # more processes than units: nothing to do
    assert distributed.assign(dsco, 1, 2) == [dsco[1], dsco[3]]  # round-robin


def test_shards_round_trip_and_refuse_garbage(tmp_path):
    rows = writer.ConcentratedRows()
    rows.add_synthetic([b"png-a", b"png-b"], [11, 12], 1)
    rows.add_real([{"bytes": b"jpg", "path": None}], [7], 1)
    (tmp_path / "units").mkdir()
    path = writer.write_shard(tmp_path, 3, rows)
    assert path.name == "unit-000003.parquet" and sorted(p.name for p in (tmp_path / "units").iterdir()) == [path.name]
    back = writer.read_shard(tmp_path, 3, 3)
    assert (back.images, back.labels, back.source, back.source_index, back.seed) == (
        rows.images,
        rows.labels,
        rows.source,
        rows.source_index,
        rows.seed,
    )
    with pytest.raises(Exception, match="not 4 of 3"):
        writer.read_shard(tmp_path, 3, 4)
    path.write_bytes(path.read_bytes()[:-20])  # truncated
    with pytest.raises(Exception, match="unit-000003.parquet is unreadable"):
        writer.read_shard(tmp_path, 3, 3)


# ---------------------------------------------------------------------------------------------------------------
# Resume, settings checks, rerun of a finished set
# ---------------------------------------------------------------------------------------------------------------


def _crash_at_unit(monkeypatch, index: int) -> list[int]:
    """Make `_compute_unit` crash at unit `index`; return the list of units it computes."""
    computed: list[int] = []

    def compute(unit, *args, **kwargs):
        if unit.index == index:
            raise RuntimeError(f"crash at unit {index}")
        computed.append(unit.index)
        return COMPUTE_UNIT(unit, *args, **kwargs)

    monkeypatch.setattr(pipeline, "_compute_unit", compute)
    return computed


def test_resume_recomputes_only_unfinished_units(tiny_repo, tiny_prior, tmp_path, monkeypatch):
    pipeline.concentrate(_cfg(tiny_repo, tmp_path / "ref", tiny_prior, doping_ratio=0.5))
    out = tmp_path / "out"
    computed = _crash_at_unit(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="crash at unit 2"):
        pipeline.concentrate(_cfg(tiny_repo, out, tiny_prior, doping_ratio=0.5))
    assert computed == [0, 1] and not out.exists()
    partial = writer.run_folder(out)
    stamps = {p.name: p.stat().st_mtime_ns for p in (partial / "units").iterdir()}
    assert sorted(stamps) == ["unit-000000.parquet", "unit-000001.parquet"]

    computed = _crash_at_unit(monkeypatch, -1)
    messages: list[str] = []
    pipeline.concentrate(_cfg(tiny_repo, out, tiny_prior, doping_ratio=0.5), report=messages.append)
    assert computed == [2]  # only the unfinished unit
    assert any("2 of 3 units done" in m for m in messages)
    assert (out / DATA).read_bytes() == (tmp_path / "ref" / DATA).read_bytes()
    assert not partial.exists()  # removed once the set is complete


def test_corrupt_shard_is_recomputed_with_a_warning(tiny_repo, tiny_prior, tmp_path, monkeypatch):
    pipeline.concentrate(_cfg(tiny_repo, tmp_path / "ref", tiny_prior))
    out = tmp_path / "out"
    _crash_at_unit(monkeypatch, 2)
    with pytest.raises(RuntimeError):
        pipeline.concentrate(_cfg(tiny_repo, out, tiny_prior))
    shard = writer.shard_path(writer.run_folder(out), 0)
    shard.write_bytes(b"not parquet")
    computed = _crash_at_unit(monkeypatch, -1)
    messages: list[str] = []
    pipeline.concentrate(_cfg(tiny_repo, out, tiny_prior), report=messages.append)
    assert computed == [0, 2]
    warning = [m for m in messages if m.startswith("warning:")]
    assert (
        len(warning) == 1 and "unit-000000.parquet is unreadable" in warning[0] and "recomputing unit 0" in warning[0]
    )
    assert (out / DATA).read_bytes() == (tmp_path / "ref" / DATA).read_bytes()


def test_resume_with_other_settings_is_refused(tiny_repo, tiny_prior, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _crash_at_unit(monkeypatch, 1)
    with pytest.raises(RuntimeError):
        pipeline.concentrate(_cfg(tiny_repo, out, tiny_prior))
    _crash_at_unit(monkeypatch, -1)
    with pytest.raises(ConfigError, match=r"--ipc differs from the saved run in .*out.partial \(2 there, 3 now\)"):
        pipeline.concentrate(_cfg(tiny_repo, out, tiny_prior, ipc=3))
    with pytest.raises(ConfigError, match=r"--nopt-window differs .* \(0.5 there, 0.25 now\)"):
        pipeline.concentrate(_cfg(tiny_repo, out, tiny_prior, nopt=NOptConfig(window=0.25, targets=4)))
    # what does not change the rows may change: the evaluation, the batch size (memory only)
    pipeline.concentrate(_cfg(tiny_repo, out, tiny_prior, sample_batch_size=1, eval=EvalConfig(runs=1, epochs=2)))
    assert (out / DATA).exists()


def test_overwrite_discards_a_saved_run_with_other_settings(tiny_repo, tiny_prior, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _crash_at_unit(monkeypatch, 1)
    with pytest.raises(RuntimeError):
        pipeline.concentrate(_cfg(tiny_repo, out, tiny_prior))
    computed = _crash_at_unit(monkeypatch, -1)
    pipeline.concentrate(_cfg(tiny_repo, out, tiny_prior, ipc=3, overwrite=True))
    assert computed == [0, 1, 2]


def test_rerun_of_a_finished_set_is_a_no_op(tiny_repo, tiny_prior, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = pipeline.concentrate(_cfg(tiny_repo, out, tiny_prior))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    computed = _crash_at_unit(monkeypatch, -1)
    messages: list[str] = []
    again = pipeline.concentrate(_cfg(tiny_repo, out, tiny_prior), report=messages.append)
    assert computed == [] and {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert any("already complete" in m for m in messages)
    assert again.dsco["counts"] == first.dsco["counts"]
    with pytest.raises(ConfigError, match=r"--ipc differs from the finished set in .* \(2 there, 3 now\)"):
        pipeline.concentrate(_cfg(tiny_repo, out, tiny_prior, ipc=3))
    with pytest.raises(ConfigError, match=r"--eval/--no-eval differs from the finished set"):
        pipeline.concentrate(_cfg(tiny_repo, out, tiny_prior, evaluate=True))


# ---------------------------------------------------------------------------------------------------------------
# Real processes: SIGKILL part-way, and 1 vs 2 processes under torchrun
# ---------------------------------------------------------------------------------------------------------------


def test_sigkill_part_way_then_resume_gives_the_same_set(tiny_repo, tiny_prior, tmp_path):
    # the reference is the same command run uninterrupted, in a process like the killed one: CPU float results
    # may depend on the number of torch threads, which _env() fixes for the subprocesses only
    def command(out):
        return [sys.executable, "-m", "dsco_hub", *_args(tiny_repo, out, tiny_prior), "--steps", "40"]

    ref = subprocess.run(command(tmp_path / "ref"), env=_env(), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "out"
    args = command(out)
    run = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    units = writer.run_folder(out) / "units"
    deadline = time.monotonic() + 300
    while not (units.exists() and any(p.suffix == ".parquet" for p in units.iterdir())):
        assert run.poll() is None and time.monotonic() < deadline, run.stderr.read().decode()
        time.sleep(0.02)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    done = sorted(p.name for p in units.iterdir() if p.suffix == ".parquet")
    assert 1 <= len(done) < 3 and not out.exists()

    resumed = subprocess.run(args, env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(done)} of 3 units done" in " ".join(resumed.stderr.split())
    assert (out / DATA).read_bytes() == (tmp_path / "ref" / DATA).read_bytes()


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.mark.parametrize("method", ["dsco", "diffusion"])  # 3 units over 2 processes; 1 unit (rank 1 idle)
def test_two_processes_give_byte_identical_output(tiny_repo, tiny_prior, tmp_path, method):
    one = subprocess.run(
        [sys.executable, "-m", "dsco_hub", *_args(tiny_repo, tmp_path / "one", tiny_prior, "--method", method)],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _free_port()]
    two = subprocess.run(
        [*launch, "-m", "dsco_hub", *_args(tiny_repo, tmp_path / "two", tiny_prior, "--method", method)],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert two.returncode == 0, two.stderr
    assert (tmp_path / "two" / DATA).read_bytes() == (tmp_path / "one" / DATA).read_bytes()
    assert (tmp_path / "two" / "samples.png").read_bytes() == (tmp_path / "one" / "samples.png").read_bytes()
    assert two.stdout.count("concentrated set written to") == 1  # only the main process reports
    done = "1 of 1 units computed" if method == "dsco" else "0 of 0 units computed"
    assert f"rank 1 of 2: {done}" in two.stderr  # the second process took its share (none for one unit)
    assert not writer.run_folder(tmp_path / "two").exists()


def test_gradient_checkpointing_changes_nothing_on_cpu(tiny_repo, tiny_prior, tmp_path):
    pipeline.concentrate(_cfg(tiny_repo, tmp_path / "a", tiny_prior))
    pipeline.concentrate(_cfg(tiny_repo, tmp_path / "b", tiny_prior, gradient_checkpointing=True))
    assert (tmp_path / "a" / DATA).read_bytes() == (tmp_path / "b" / DATA).read_bytes()
