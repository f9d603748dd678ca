"""Scale: work units, shards, resume after a crash or SIGKILL, settings checks, several processes (torchrun)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import tiny_dataset, write_repo
from huggingface_hub import DatasetCard

from dsco_hub import distributed, models, pipeline, synthesis, writer
from dsco_hub.config import ConcentrateConfig, EvalConfig, NOptConfig, SourceConfig, first_difference, run_settings
from dsco_hub.data import load_source
from dsco_hub.errors import ConfigError, OutputError, SourceError

DATA = Path("data") / "train-00000-of-00001.parquet"
COMPUTE_UNIT = synthesis.compute_unit


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
    # from 64 classes on, a dsco unit holds several classes (at most 64 images, at least 32 units)
    assert [len(distributed.plan_units("dsco", 10, k)) for k in (63, 64, 100, 1000)] == [63, 32, 34, 167]
    shared = distributed.plan_units("dsco", 10, 100)
    assert shared[0].classes == [0, 1, 2] and shared[-1].classes == [99]
    assert [u.classes for u in distributed.plan_units("dsco", 1, 1000)][-1] == list(range(992, 1000))


def test_classes_sharing_a_unit_give_the_rows_of_one_class_per_unit(tiny_repo, tiny_prior, tmp_path, monkeypatch):
    pipeline.concentrate(_cfg(tiny_repo, tmp_path / "alone", tiny_prior, doping_ratio=0.5, ipc=4))
    monkeypatch.setattr(distributed, "MIN_DSCO_UNITS", 1)  # the 3 classes now share one unit
    assert [u.classes for u in distributed.plan_units("dsco", 4, 3)] == [[0, 1, 2]]
    pipeline.concentrate(_cfg(tiny_repo, tmp_path / "shared", tiny_prior, doping_ratio=0.5, ipc=4))
    alone, shared = (datasets.load_dataset(str(tmp_path / name), split="train") for name in ("alone", "shared"))
    for column in ("label", "source", "source_index", "seed"):  # class by class: 2 synthetic, then 2 real
        assert shared[column] == alone[column]
    assert shared["source"][:4] == ["synthetic", "synthetic", "real", "real"]
    synthetic = [i for i, source in enumerate(alone["source"]) if source == "synthetic"]
    pixels = [np.stack([np.asarray(ds[i]["image"], dtype=np.int16) for i in synthetic]) for ds in (alone, shared)]
    assert np.abs(pixels[0] - pixels[1]).max() <= 2  # float rounding in other batches: at most a level or two


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
    with pytest.raises(OutputError) as err:
        writer.read_shard(tmp_path, 3, 4)
    assert str(err.value) == f"shard {path} holds 3 rows of unit b'3', not 4 of 3"
    path.write_bytes(path.read_bytes()[:-20])  # truncated
    with pytest.raises(OutputError) as err:
        writer.read_shard(tmp_path, 3, 3)
    assert str(err.value).startswith(f"shard {path} is unreadable (") and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# Resume, settings checks, rerun of a finished set
# ---------------------------------------------------------------------------------------------------------------


def _crash_at_unit(monkeypatch, index: int) -> list[int]:
    """Make `synthesis.compute_unit` crash at unit `index`; return the list of units it computes."""
    computed: list[int] = []

    def compute(unit, *args, **kwargs):
        if unit.index == index:
            raise RuntimeError(f"crash at unit {index}")
        computed.append(unit.index)
        return COMPUTE_UNIT(unit, *args, **kwargs)

    monkeypatch.setattr(synthesis, "compute_unit", compute)
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


def test_a_run_made_with_another_shipped_prior_is_neither_resumed_nor_reused(
    tiny_repo, tiny_prior, tmp_path, monkeypatch
):
    # without --model the shipped prior runs, recorded by its weight digest: an upgrade of dsco-hub that ships
    # another prior must not finish a run, nor pass for a finished set, made with the old one
    monkeypatch.setattr(models, "shipped_prior_path", lambda: tiny_prior)
    out = tmp_path / "out"
    cfg = _cfg(tiny_repo, out, tiny_prior)
    cfg.model = None
    old = f"prior_fashion_mnist@{models.prior_digest(tiny_prior)}"
    _crash_at_unit(monkeypatch, 1)
    with pytest.raises(RuntimeError):
        pipeline.concentrate(cfg)
    saved = json.loads((writer.run_folder(out) / writer.RUN_CONFIG).read_text())
    assert saved["settings"]["shipped_prior"] == old

    scheduler = tiny_prior / "scheduler" / "scheduler_config.json"
    original = scheduler.read_text()
    upgraded = json.dumps({**json.loads(original), "clip_sample": not json.loads(original)["clip_sample"]})
    scheduler.write_text(upgraded)  # "the upgrade": another prior (the same weights sampled otherwise)
    new = f"prior_fashion_mnist@{models.prior_digest(tiny_prior)}"
    assert new != old
    computed = _crash_at_unit(monkeypatch, -1)
    message = r"the shipped prior \(no --model; dsco-hub upgraded\?\) differs from the saved run in .*out.partial"
    with pytest.raises(ConfigError, match=rf"{message} \({old} there, {new} now\)"):
        pipeline.concentrate(cfg)
    assert computed == []

    scheduler.write_text(original)  # the prior the run was made with: it resumes
    pipeline.concentrate(cfg)
    assert computed == [1, 2]  # unit 0 is reused
    assert json.loads((out / "dsco_config.json").read_text())["shipped_prior"] == old
    card = DatasetCard.load(out / "README.md").data["dsco"]
    assert card["settings"]["model"] == f"dsco-hub shipped prior ({old})"

    scheduler.write_text(upgraded)
    with pytest.raises(ConfigError, match=rf"dsco-hub upgraded\?\) differs from the finished set .* \({old} there"):
        pipeline.concentrate(cfg)


def test_a_model_folder_retrained_in_place_is_neither_resumed_nor_reused(tiny_repo, tiny_prior, tmp_path, monkeypatch):
    # a local --model is recorded by its weight digest, not only by its name: retraining the folder in place (the
    # same path, other weights) must not finish a run, nor pass for a finished set, made with the old weights
    from safetensors.torch import load_file, save_file

    model = tmp_path / "my-prior"
    shutil.copytree(tiny_prior, model)
    out = tmp_path / "out"
    old = models.prior_digest(model)
    _crash_at_unit(monkeypatch, 1)
    with pytest.raises(RuntimeError):
        pipeline.concentrate(_cfg(tiny_repo, out, model))
    saved = json.loads((writer.run_folder(out) / writer.RUN_CONFIG).read_text())
    assert saved["settings"]["model_digest"] == old and "shipped_prior" not in saved["settings"]

    (weights,) = model.glob("unet/*.safetensors")
    original = weights.read_bytes()
    tensors = load_file(weights)
    save_file({k: v + 0.01 for k, v in tensors.items()}, weights)  # "retrained": the same folder, other weights
    new = models.prior_digest(model)
    computed = _crash_at_unit(monkeypatch, -1)
    message = r"the --model folder \(its weights or scheduler changed since\?\) differs from the saved run in "
    with pytest.raises(ConfigError, match=rf"{message}.*out.partial \({old} there, {new} now\); rerun with the same"):
        pipeline.concentrate(_cfg(tiny_repo, out, model))
    assert computed == []

    weights.write_bytes(original)  # the weights the run was made with: it resumes
    pipeline.concentrate(_cfg(tiny_repo, out, model))
    assert computed == [1, 2]
    assert json.loads((out / "dsco_config.json").read_text())["model_digest"] == old
    settings = DatasetCard.load(out / "README.md").data["dsco"]["settings"]
    assert (settings["model"], settings["model_digest"]) == ("my-prior", old)
    save_file({k: v + 0.01 for k, v in tensors.items()}, weights)
    with pytest.raises(ConfigError, match=rf"changed since\?\) differs from the finished set .* \({old} there"):
        pipeline.concentrate(_cfg(tiny_repo, out, model))


def test_a_hub_model_is_pinned_to_the_commit_the_run_recorded(tiny_repo, tiny_prior, tmp_path, monkeypatch):
    # a Hub --model without --model-revision follows main: the run records the commit main resolves to when it
    # starts, loads that commit, and a commit pushed to main before it resumes is refused instead of mixed in
    import huggingface_hub

    commits = iter(["a" * 40, "a" * 40, "b" * 40])  # what main resolves to at the start of each run below
    asked, loaded = [], []

    def hf_hub_download(repo_id, filename, revision=None, **kwargs):  # the cache's layout, without a network
        asked.append(revision)
        snapshot = tmp_path / "hub" / "models--alice--prior" / "snapshots" / (revision or next(commits))
        shutil.copytree(tiny_prior, snapshot, dirs_exist_ok=True)
        return str(snapshot / filename)

    load_prior = models.load_prior

    def load_from_cache(model, revision=None, **kwargs):
        loaded.append(revision)
        return load_prior(str(tmp_path / "hub" / "models--alice--prior" / "snapshots" / revision), **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(models, "load_prior", load_from_cache)
    out = tmp_path / "out"
    _crash_at_unit(monkeypatch, 1)
    with pytest.raises(RuntimeError):
        pipeline.concentrate(_cfg(tiny_repo, out, "alice/prior"))
    saved = json.loads((writer.run_folder(out) / writer.RUN_CONFIG).read_text())
    assert saved["settings"]["model_commit"] == "a" * 40
    assert asked == [None] and loaded == ["a" * 40]  # main resolved once, then that commit loaded

    computed = _crash_at_unit(monkeypatch, -1)
    pipeline.concentrate(_cfg(tiny_repo, out, "alice/prior"))  # main has not moved: it resumes
    assert computed == [1, 2] and loaded == ["a" * 40] * 2
    settings = DatasetCard.load(out / "README.md").data["dsco"]["settings"]
    assert (settings["model"], settings["model_commit"], settings["model_revision"]) == ("alice/prior", "a" * 40, None)

    message = r"the Hub commit of --model \(pushed to since\? --model-revision pins one\) differs from the finished"
    with pytest.raises(ConfigError, match=rf"{message} set in .* \({'a' * 40} there, {'b' * 40} now\)"):
        pipeline.concentrate(_cfg(tiny_repo, out, "alice/prior"))  # a new commit on main
    assert computed == [1, 2]


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
    with pytest.raises(ConfigError, match=r"evaluation \(--no-eval\) differs from the finished set"):
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


def _dsco_hub(args: list[str], processes: int = 1) -> subprocess.CompletedProcess:
    """`dsco-hub ARGS` in a subprocess, under `torchrun --nproc_per_node PROCESSES` if more than one; exits 0."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    launch = [*launch, "--master_port", _free_port()] if processes > 1 else [sys.executable]
    done = subprocess.run([*launch, "-m", "dsco_hub", *args], env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.parametrize(
    "method, extra",
    [
        ("dsco", ()),  # 3 units over 2 processes
        ("diffusion", ()),  # 1 unit: rank 1 idle
        ("dsco", ("--streaming", "--shuffle-buffer", "4", "--doping-ratio", "0.5", "--doping-select", "random")),
    ],
)
def test_two_processes_give_byte_identical_output(tiny_repo, tiny_prior, tmp_path, method, extra):
    def args(out):
        return _args(tiny_repo, out, tiny_prior, "--method", method, *extra)

    _dsco_hub(args(tmp_path / "one"))
    two = _dsco_hub(args(tmp_path / "two"), processes=2)
    assert (tmp_path / "two" / DATA).read_bytes() == (tmp_path / "one" / DATA).read_bytes()
    assert (tmp_path / "two" / "samples.png").read_bytes() == (tmp_path / "one" / "samples.png").read_bytes()
    assert two.stdout.count("concentrated set written to") == 1  # only the main process reports
    done = "1 of 1 units computed" if method == "dsco" else "0 of 0 units computed"
    assert f"rank 1 of 2: {done}" in two.stderr  # the second process took its share (none for one unit)
    assert not writer.run_folder(tmp_path / "two").exists()


def test_two_processes_spread_the_evaluation_and_record_the_one_process_accuracies(tiny_repo, tiny_prior, tmp_path):
    def args(out):
        own = [a for a in _args(tiny_repo, out, tiny_prior, "--method", "random") if a != "--no-eval"]
        return [*own, "--runs", "3", "--epochs", "2"]

    _dsco_hub(args(tmp_path / "one"))
    two = _dsco_hub(args(tmp_path / "two"), processes=2)
    # runs 0 and 2 of the set and of the baseline on rank 0, run 1 of each on rank 1, gathered on rank 0
    assert "rank 1 of 2: 1 of 3 evaluation runs per set trained" in two.stderr
    evals = [DatasetCard.load(tmp_path / name / "README.md").data["dsco"]["eval"] for name in ("one", "two")]
    for key in ("result", "baseline_random"):
        assert len(evals[0][key]["accuracies"]) == 3
        assert evals[1][key] == evals[0][key]
    assert (tmp_path / "two" / DATA).read_bytes() == (tmp_path / "one" / DATA).read_bytes()


def test_two_processes_spread_the_runs_of_evaluate_and_report_once(tiny_repo, tiny_prior, tmp_path):
    _dsco_hub(_args(tiny_repo, tmp_path / "set", tiny_prior, "--method", "random"))

    def evaluate(name):
        return ["evaluate", str(tmp_path / "set"), "--runs", "3", "--epochs", "2", "--json", str(tmp_path / name)]

    one = _dsco_hub(evaluate("one.json"))
    two = _dsco_hub(evaluate("two.json"), processes=2)
    docs = [json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json")]
    for key in ("result", "baseline", "gain_over_baseline", "test", "protocol"):
        assert docs[1][key] == docs[0][key]
    assert len(docs[0]["result"]["accuracies"]) == 3
    assert two.stdout.count("this set") == one.stdout.count("this set") == 1  # the table, from the main process
    assert "rank 1 of 2: 1 of 3 evaluation runs per set trained" in two.stderr


def test_gradient_checkpointing_changes_nothing_on_cpu(tiny_repo, tiny_prior, tmp_path):
    pipeline.concentrate(_cfg(tiny_repo, tmp_path / "a", tiny_prior))
    pipeline.concentrate(_cfg(tiny_repo, tmp_path / "b", tiny_prior, gradient_checkpointing=True))
    assert (tmp_path / "a" / DATA).read_bytes() == (tmp_path / "b" / DATA).read_bytes()


# ---------------------------------------------------------------------------------------------------------------
# Streaming sources: only the rows each class needs are read and kept
# ---------------------------------------------------------------------------------------------------------------


def _streamed(repo, **kwargs) -> SourceConfig:
    return SourceConfig(source=str(repo), streaming=True, **{"shuffle_buffer": 8, **kwargs})


def _big_repo(tmp_path) -> Path:
    """75 train rows (30/20/25 per class, interleaved) and 12 test rows."""
    return write_repo(tmp_path / "big", tiny_dataset(per_class=(30, 20, 25)), tiny_dataset((4, 4, 4), seed_offset=100))


def test_a_streamed_split_keeps_the_first_rows_of_each_class_with_their_index(tmp_path):
    repo = _big_repo(tmp_path)
    full = load_source(SourceConfig(source=str(repo)))
    source = load_source(_streamed(repo), stream_to=tmp_path / "s", per_class=4, seed=0)
    assert source.class_names == full.class_names and [len(rows) for rows in source.class_index] == [4, 4, 4]
    info = source.extra["streaming"]
    assert info["rows_kept"] == 12 and 12 <= info["rows_read"] < 75 and not info["read_all"]
    # each kept row is the source's row at its recorded index, with its label
    kept = source.raw_images(range(12))
    index = source.source_index(range(12))
    assert kept == full.raw_images(index) and list(source.labels) == list(full.labels[index])
    assert len(set(index)) == 12 and index != sorted(index)  # shuffled through the buffer
    # the seed decides the rows; the saved rows are reopened without reading the source
    for folder, seed, same in (("again", 0, True), ("other", 1, False)):
        again = load_source(_streamed(repo), stream_to=tmp_path / folder, per_class=4, seed=seed)
        assert (again.raw_images(range(12)) == kept) is same
    shutil.rmtree(repo / "data")
    reopened = load_source(_streamed(repo), stream_to=tmp_path / "s", per_class=4, seed=0)
    assert reopened.raw_images(range(12)) == kept and reopened.extra["streaming"] == info


def test_a_streamed_split_keeps_only_the_classes_asked_for_and_everything_without_a_cap(tmp_path):
    repo = _big_repo(tmp_path)
    picked = load_source(_streamed(repo, classes=("stripe", "circle")), stream_to=tmp_path / "s", per_class=3)
    assert picked.class_names == ["stripe", "circle"] and [len(r) for r in picked.class_index] == [3, 3]
    assert picked.extra["streaming"]["rows_kept"] == 6
    whole = load_source(_streamed(repo), split="test", stream_to=tmp_path / "s", per_class=None)
    assert whole.extra["streaming"]["read_all"] and whole.extra["streaming"]["num_examples"] == 12
    assert sorted(whole.source_index(range(12))) == list(range(12))
    # a buffer larger than the split reads all of it before keeping any row: its size is then known
    buffered = load_source(_streamed(repo, shuffle_buffer=100), stream_to=tmp_path / "b", per_class=2)
    assert buffered.extra["streaming"]["read_all"] and buffered.extra["streaming"]["num_examples"] == 75


def test_a_resumed_streamed_run_opens_the_saved_rows_instead_of_the_stream(tiny_prior, tmp_path, monkeypatch):
    repo = _big_repo(tmp_path)

    def cfg(out):
        streamed = _cfg(repo, out, tiny_prior, doping_ratio=0.5, doping_select="random")
        streamed.source = _streamed(repo)
        return streamed

    pipeline.concentrate(cfg(tmp_path / "ref"))
    out = tmp_path / "out"
    _crash_at_unit(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="crash at unit 1"):
        pipeline.concentrate(cfg(out))
    assert len(list((writer.run_folder(out) / "stream").glob("*/train"))) == 1
    shutil.rmtree(repo / "data")  # the source is gone: only the saved rows can serve the resume
    computed = _crash_at_unit(monkeypatch, -1)
    pipeline.concentrate(cfg(out))
    assert computed == [1, 2]
    assert (out / DATA).read_bytes() == (tmp_path / "ref" / DATA).read_bytes()


def test_streaming_needs_a_classlabel_column(tmp_path):
    repo = write_repo(tmp_path / "ints", tiny_dataset(label_kind="int"))
    with pytest.raises(SourceError, match=r"--streaming: the label column 'label' of .* is not a ClassLabel"):
        load_source(_streamed(repo), stream_to=tmp_path / "s", per_class=2)
    with pytest.raises(ConfigError, match="--shuffle-buffer=-1 must be >= 0"):
        ConcentrateConfig(source=SourceConfig(streaming=True, shuffle_buffer=-1)).validate()


def test_concentrate_from_a_stream_records_what_it_read(tiny_prior, tmp_path):
    repo = _big_repo(tmp_path)
    out = tmp_path / "out"
    cfg = _cfg(repo, out, tiny_prior, doping_ratio=0.5, doping_select="random", evaluate=True)
    cfg.source = _streamed(repo)
    result = pipeline.concentrate(cfg)
    streamed = result.dsco["source"]["streaming"]  # IPC 2 from 4 NOpt targets per class: 4 rows kept of each
    assert streamed["rows_kept"] == 12 and streamed["per_class"] == 4 and streamed["rows_read"] < 75
    assert result.dsco["source"]["num_rows"] is None  # the repo declares no split sizes and was not read to its end
    assert "whose size is not declared" in (out / "README.md").read_text()
    assert result.dsco["eval"]["test"]["num_images"] == 12  # the whole test split, streamed
    assert not writer.run_folder(out).exists()
    # the doped real rows are the source's rows at their recorded index
    ds = datasets.load_dataset(str(out), split="train")
    full = load_source(SourceConfig(source=str(repo)))
    real = [row for row in ds.cast_column("image", datasets.Image(decode=False)) if row["source"] == "real"]
    assert len(real) == 3
    originals = full.raw_images([row["source_index"] for row in real])
    assert [row["image"]["bytes"] for row in real] == [image["bytes"] for image in originals]


def test_a_run_saved_before_an_option_existed_resumes_at_its_default():
    saved = run_settings(ConcentrateConfig().to_dict(), "rows")
    del saved["source.streaming"], saved["source.shuffle_buffer"]  # as saved by a version without streaming
    assert first_difference(saved, run_settings(ConcentrateConfig().to_dict(), "rows")) is None
    streaming = ConcentrateConfig(source=SourceConfig(streaming=True))
    assert first_difference(saved, run_settings(streaming.to_dict(), "rows")) == ("--streaming", False, True)


def test_compile_is_ignored_on_the_cpu(tiny_repo, tiny_prior, tmp_path):
    messages: list[str] = []
    pipeline.concentrate(_cfg(tiny_repo, tmp_path / "a", tiny_prior))
    pipeline.concentrate(_cfg(tiny_repo, tmp_path / "b", tiny_prior, torch_compile=True), report=messages.append)
    assert (tmp_path / "a" / DATA).read_bytes() == (tmp_path / "b" / DATA).read_bytes()
    assert any(m.startswith("--compile: ignored on the CPU") for m in messages)


def test_dry_run_of_a_stream_reads_one_row_and_writes_nothing(tiny_prior, tmp_path):
    repo = _big_repo(tmp_path)
    cfg = _cfg(repo, tmp_path / "out", tiny_prior)
    cfg.source = _streamed(repo, classes=("square", "stripe"))
    plan = pipeline.dry_run(cfg)
    assert (plan.classes, plan.units, plan.synthetic_per_class) == (2, 2, 2)
    assert not (tmp_path / "out").exists() and not writer.run_folder(tmp_path / "out").exists()
