"""The writer (`dsco_hub.writer`): rows, parquet and card YAML, the output and run-folder checks, atomic moves.

Fast and exact (no model, no pipeline): each promise of the module is asserted with its values and its one-line
messages, so that `tests/mutation.sh writer` has tests to run against every mutant.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard
from PIL import Image

from dsco_hub import pipeline, writer
from dsco_hub.config import ConcentrateConfig, SourceConfig, run_settings
from dsco_hub.errors import ConfigError, OutputError

CARD = "---\nlicense: cc-by-4.0\ndsco:\n  method: random\n---\n# A set\n"
SAVED = json.loads(json.dumps(ConcentrateConfig(ipc=2).to_dict()))  # as dsco_config.json holds it


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 4), value, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _set(folder: Path, card: str = CARD, saved: dict | None = None, fingerprint: dict | None = None) -> Path:
    """A folder holding what `concentrate` writes (card, config, samples, .gitattributes, one shard)."""
    (folder / "data").mkdir(parents=True)
    (folder / "README.md").write_text(card)
    (folder / "dsco_config.json").write_text(json.dumps({**(saved or SAVED), "source_fingerprint": fingerprint}))
    (folder / "samples.png").write_bytes(b"png")
    (folder / ".gitattributes").write_text("*.parquet filter=lfs\n")
    (folder / "data" / "train-00000-of-00001.parquet").write_bytes(b"parquet")
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Rows, dataset, parquet, card YAML
# ---------------------------------------------------------------------------------------------------------------


def test_rows_keep_order_provenance_and_plain_types():
    rows = writer.ConcentratedRows()
    rows.add_real([{"bytes": b"a", "path": "x.png", "other": 1}, {"bytes": b"b"}], np.array([7, 3]), np.int64(2))
    rows.add_synthetic([b"p", b"q"], np.array([11, 12]), 0)
    assert len(rows) == 4
    assert rows.images == [
        {"bytes": b"a", "path": "x.png"},
        {"bytes": b"b", "path": None},
        {"bytes": b"p", "path": None},
        {"bytes": b"q", "path": None},
    ]
    assert rows.labels == [2, 2, 0, 0] and rows.source == ["real", "real", "synthetic", "synthetic"]
    assert rows.source_index == [7, 3, None, None] and rows.seed == [None, None, 11, 12]
    assert {type(v) for v in rows.labels + rows.source_index[:2] + rows.seed[2:]} == {int}  # JSON-safe ints
    more = writer.ConcentratedRows()
    more.add_synthetic([b"r"], [13], 1)
    rows.extend(more)
    assert len(rows) == 5 and rows.images[-1] == {"bytes": b"r", "path": None}
    assert (rows.labels[-1], rows.source[-1], rows.source_index[-1], rows.seed[-1]) == (1, "synthetic", None, 13)


def test_the_dataset_has_the_sets_schema_and_embeds_files_read_by_path(tmp_path):
    image_file = tmp_path / "real.png"
    image_file.write_bytes(_png(200))
    rows = writer.ConcentratedRows()
    rows.add_real([{"bytes": None, "path": str(image_file)}], [4], 1)
    rows.add_synthetic([_png(10)], [99], 0)
    ds = writer.build_dataset(rows, ["zero", "one"])
    assert ds.features == datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=["zero", "one"]),
            "source": datasets.Value("string"),
            "source_index": datasets.Value("int64"),
            "seed": datasets.Value("int64"),
        }
    )
    stored = ds.data.column("image").to_pylist()
    assert stored[0]["bytes"] == image_file.read_bytes() and stored[1]["bytes"] == _png(10)  # embedded, not linked
    assert ds.format["type"] is None
    assert [ds[i]["label"] for i in range(2)] == [1, 0] and np.asarray(ds[0]["image"]).max() == 200
    assert ds["source"] == ["real", "synthetic"] and ds["source_index"] == [4, None] and ds["seed"] == [None, 99]


def _dataset(n: int) -> datasets.Dataset:
    rows = writer.ConcentratedRows()
    rows.add_synthetic([_png(i) for i in range(n)], range(n), 0)
    return writer.build_dataset(rows, ["only", "other"])


def test_parquet_shards_are_named_as_push_to_hub_names_them_and_sized(tmp_path):
    ds = _dataset(6)
    nbytes = ds._estimate_nbytes()
    info, written = writer.write_parquet(ds, tmp_path)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["train-00000-of-00001.parquet"]
    assert (info.name, info.num_bytes, info.num_examples) == ("train", nbytes, 6)
    assert written == (tmp_path / "data" / "train-00000-of-00001.parquet").stat().st_size
    max_bytes = nbytes // 3 + 1  # three shards
    info, written = writer.write_parquet(ds, tmp_path / "small", split="test", max_shard_bytes=max_bytes)
    names = sorted(p.name for p in (tmp_path / "small" / "data").iterdir())
    assert math.ceil(nbytes / max_bytes) == 3
    assert names == [f"test-0000{i}-of-00003.parquet" for i in range(3)]
    seeds = [pq.read_table(tmp_path / "small" / "data" / name).column("seed").to_pylist() for name in names]
    assert seeds == [[0, 1], [2, 3], [4, 5]]  # contiguous rows, in order
    assert written == sum((tmp_path / "small" / "data" / name).stat().st_size for name in names)
    assert (info.name, info.num_bytes, info.num_examples) == ("test", nbytes, 6)
    (tmp_path / "exact" / "data").mkdir(parents=True)  # an existing data/ folder is used as it is
    _, _ = writer.write_parquet(ds, tmp_path / "exact", max_shard_bytes=nbytes)  # exactly one shard's worth
    assert [p.name for p in (tmp_path / "exact" / "data").iterdir()] == ["train-00000-of-00001.parquet"]


def test_the_cards_dataset_info_is_what_push_to_hub_writes(tiny_repo, tmp_path):
    cfg = ConcentrateConfig(
        source=SourceConfig(source=str(tiny_repo)), method="random", ipc=2, out=str(tmp_path / "set"), evaluate=False
    )
    pipeline.concentrate(cfg)
    data = DatasetCard.load(tmp_path / "set" / "README.md").data.to_dict()
    info = data["dataset_info"]
    shard = tmp_path / "set" / "data" / "train-00000-of-00001.parquet"
    assert [(s["name"], s["num_examples"]) for s in info["splits"]] == [("train", 6)]
    assert info["download_size"] == shard.stat().st_size
    assert info["dataset_size"] == info["splits"][0]["num_bytes"] > 0
    assert [f["name"] for f in info["features"]] == ["image", "label", "source", "source_index", "seed"]
    assert "config_name" not in info  # the default config is written without a name, as push_to_hub does
    assert data["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]


def test_write_json_is_indented_with_a_final_newline_and_strings_for_the_rest(tmp_path):
    writer.write_json(tmp_path / "a.json", {"b": 1, "path": Path("x/y"), "n": [1, 2]})
    assert (tmp_path / "a.json").read_text() == '{\n  "b": 1,\n  "path": "x/y",\n  "n": [\n    1,\n    2\n  ]\n}\n'


# ---------------------------------------------------------------------------------------------------------------
# What a dsco-hub set is, and the checks of --out
# ---------------------------------------------------------------------------------------------------------------


def test_a_set_is_recognised_by_its_marker_and_its_files_only(tmp_path):
    assert writer.is_dsco_set(_set(tmp_path / "set"))
    assert not writer.is_dsco_set(tmp_path / "missing")
    for name in ("README.md", "dsco_config.json"):  # both marker files are needed
        folder = _set(tmp_path / f"no-{name}")
        (folder / name).unlink()
        assert not writer.is_dsco_set(folder)
    assert not writer.is_dsco_set(_set(tmp_path / "plain-card", card="---\nlicense: mit\n---\n# dsco:\n"))
    assert not writer.is_dsco_set(_set(tmp_path / "body", card="---\nlicense: mit\n---\n\ndsco:\n"))
    assert not writer.is_dsco_set(_set(tmp_path / "rule", card="---\nlicense: mit\n---\n\ndsco:\n\n---\nend\n"))
    garbled = _set(tmp_path / "garbled")
    (garbled / "README.md").write_bytes(b"---\n\xff\xfe\ndsco:\n---\n")
    assert not writer.is_dsco_set(garbled)
    folder = _set(tmp_path / "card-is-a-folder")
    (folder / "README.md").unlink()
    (folder / "README.md").mkdir()
    assert not writer.is_dsco_set(folder)


def test_every_file_a_set_does_not_hold_is_foreign(tmp_path):
    folder = _set(tmp_path / "set")
    assert writer._foreign_files(folder) == []
    (folder / "notes.txt").write_text("mine")
    (folder / "a.txt").write_text("mine")  # sorted before data/
    (folder / "extra").mkdir()
    (folder / "extra" / "a.parquet").write_bytes(b"x")  # a folder other than data/ is foreign as a whole
    (folder / "data" / "notes.txt").write_text("mine")
    (folder / "data" / "sub.parquet").mkdir()  # a folder, not a shard
    assert writer._foreign_files(folder) == ["a.txt", "data/notes.txt", "data/sub.parquet", "extra", "notes.txt"]
    assert not writer.is_dsco_set(folder)


def test_links_and_folders_in_place_of_a_sets_files_are_foreign(tmp_path):
    folder = _set(tmp_path / "set")
    (folder / "samples.png").unlink()
    (folder / "samples.png").mkdir()
    assert writer._foreign_files(folder) == ["samples.png"]
    (folder / "samples.png").rmdir()
    (folder / "samples.png").symlink_to(folder / ".gitattributes")
    assert writer._foreign_files(folder) == ["samples.png"]
    other = tmp_path / "elsewhere"
    other.mkdir()
    linked = _set(tmp_path / "linked")
    (linked / "data" / "train-00000-of-00001.parquet").unlink()
    (linked / "data").rmdir()
    (linked / "data").symlink_to(other)
    assert writer._foreign_files(linked) == ["data"]
    as_file = _set(tmp_path / "data-file")
    (as_file / "data" / "train-00000-of-00001.parquet").unlink()
    (as_file / "data").rmdir()
    (as_file / "data").write_text("x")
    assert writer._foreign_files(as_file) == ["data"]


SETTINGS = run_settings(SAVED, "set")


def test_check_output_on_new_empty_and_file_outputs(tmp_path):
    assert writer.check_output(tmp_path / "new", overwrite=False, settings=SETTINGS) is False
    (tmp_path / "empty").mkdir()
    assert writer.check_output(tmp_path / "empty", overwrite=False, settings=SETTINGS) is False
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError) as err:
        writer.check_output(tmp_path / "file", overwrite=True)
    assert str(err.value) == f"--out={str(tmp_path / 'file')!r} is a file; pass a folder path."


def test_check_output_never_replaces_a_folder_dsco_hub_did_not_write(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("d.txt", "a.txt", "c.txt", "b.txt"):
        (out / name).write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OutputError) as err:
            writer.check_output(out, overwrite=overwrite, settings=SETTINGS)
        assert str(err.value) == (
            f"--out={str(out)!r} holds files dsco-hub did not write (a.txt, b.txt, c.txt (+1 more)); dsco-hub never "
            "replaces such a folder, even with --overwrite: pass a new or empty folder."
        )
    (out / "d.txt").unlink()
    with pytest.raises(OutputError, match=r"did not write \(a.txt, b.txt, c.txt\); dsco-hub never"):
        writer.check_output(out, overwrite=True, settings=SETTINGS)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "README.md").write_text("# not a set\n")  # a set's file, but no marker
    with pytest.raises(OutputError) as err:
        writer.check_output(bare, overwrite=True, settings=SETTINGS)
    assert str(err.value) == (
        f"--out={str(bare)!r} is not a set written by dsco-hub; dsco-hub never replaces such a folder, even with "
        "--overwrite: pass a new or empty folder."
    )


def test_check_output_on_a_finished_set(tmp_path):
    out = _set(tmp_path / "out", fingerprint={"kind": "local", "value": "abc"})
    assert writer.check_output(out, overwrite=True, settings=SETTINGS) is False  # replaced
    assert writer.check_output(out, overwrite=False, settings=SETTINGS) is True  # the same set: nothing to do
    assert writer.check_output(out, False, SETTINGS, fingerprint={"kind": "local", "value": "abc"}) is True
    with pytest.raises(OutputError) as err:
        writer.check_output(out, overwrite=False)
    assert (
        str(err.value) == f"--out={str(out)!r} holds a dsco-hub set; pass --overwrite to replace it, or another --out."
    )
    with pytest.raises(ConfigError) as err:
        writer.check_output(out, False, run_settings(ConcentrateConfig(ipc=3).to_dict(), "set"))
    assert str(err.value) == (
        f"--ipc differs from the finished set in {out} (2 there, 3 now); rerun with the same options, pass "
        "--overwrite to replace it, or choose another --out."
    )
    with pytest.raises(ConfigError) as err:
        writer.check_output(out, False, SETTINGS, fingerprint={"kind": "local", "value": "def"})
    assert str(err.value) == (
        f"SOURCE changed since the finished set in {out} was made (local abc there, local def now): its rows no "
        "longer match; restore the source, or pass --overwrite to replace it."
    )


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_an_unreadable_dsco_config_is_a_difference(tmp_path, text):
    out = _set(tmp_path / "out")
    (out / "dsco_config.json").write_text(text)
    with pytest.raises(ConfigError) as err:
        writer.check_output(out, False, SETTINGS)
    assert str(err.value) == (
        f"dsco_config.json differs from the finished set in {out} (unreadable there, - now); rerun with the same "
        "options, pass --overwrite to replace it, or choose another --out."
    )


# ---------------------------------------------------------------------------------------------------------------
# The run folder: saved settings, fingerprints, shards
# ---------------------------------------------------------------------------------------------------------------


def test_the_run_folder_is_beside_the_resolved_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert writer.run_folder("sets/out") == tmp_path.resolve() / "sets" / "out.partial"
    assert writer.shard_path(tmp_path, 42) == tmp_path / "units" / "unit-000042.parquet"


def test_prepare_run_saves_the_settings_once_and_discard_run_removes_it(tmp_path):
    folder = writer.run_folder(tmp_path / "out")
    writer.prepare_run(folder, {"ipc": 2}, 5, {"kind": "local", "value": "abc"})
    assert (folder / "units").is_dir()
    assert json.loads((folder / "run_config.json").read_text()) == {
        "settings": {"ipc": 2},
        "num_units": 5,
        "source_fingerprint": {"kind": "local", "value": "abc"},
    }
    writer.prepare_run(folder, {"ipc": 3}, 7)  # a resume keeps what the run was started with
    assert json.loads((folder / "run_config.json").read_text())["settings"] == {"ipc": 2}
    writer.discard_run(folder)
    assert not folder.exists()
    writer.discard_run(folder)  # nothing there: no error


def test_check_run_resumes_refuses_or_discards(tmp_path):
    out = tmp_path / "out"
    folder = writer.run_folder(out)
    settings = run_settings(SAVED, "rows")
    assert writer.check_run(out, settings, overwrite=False) == (folder, False)  # nothing saved
    writer.prepare_run(folder, settings, 3, {"kind": "local", "value": "abc"})
    assert writer.check_run(out, settings, overwrite=False) == (folder, False)
    assert writer.check_run(out, settings, False, {"kind": "local", "value": "abc"}) == (folder, False)
    assert writer.check_run(out, settings, overwrite=True) == (folder, False)  # same run: resumed, even so
    other = run_settings(ConcentrateConfig(ipc=3).to_dict(), "rows")
    with pytest.raises(ConfigError) as err:
        writer.check_run(out, other, overwrite=False)
    assert str(err.value) == (
        f"--ipc differs from the saved run in {folder} (2 there, 3 now); rerun with the same options to resume it, "
        "or pass --overwrite to start over."
    )
    assert writer.check_run(out, other, overwrite=True) == (folder, True)
    changed = {"kind": "local", "value": "0123456789abcdef"}
    with pytest.raises(ConfigError) as err:
        writer.check_run(out, settings, False, changed)
    assert str(err.value) == (
        f"SOURCE changed since the saved run in {folder} was made (local abc there, local 0123456789ab now): its rows "
        "no longer match; restore the source, or pass --overwrite to start over."
    )
    assert writer.check_run(out, settings, True, changed) == (folder, True)


@pytest.mark.parametrize("text", ["{not json", '{"num_units": 3}', '{"settings": 5}'])
def test_an_unreadable_run_config_is_a_difference(tmp_path, text):
    folder = writer.run_folder(tmp_path / "out")
    folder.mkdir()
    (folder / "run_config.json").write_text(text)
    with pytest.raises(ConfigError) as err:
        writer.check_run(tmp_path / "out", {"ipc": 2}, overwrite=False)
    assert str(err.value).startswith(
        f"run_config.json differs from the saved run in {folder} (unreadable there, - now)"
    )
    assert writer.check_run(tmp_path / "out", {"ipc": 2}, overwrite=True) == (folder, True)


def test_check_fingerprint_skips_unknowns_and_names_both_sides():
    local = {"kind": "local", "value": "abc"}
    for saved, now in ((None, local), (local, None), (None, None), (local, dict(local))):
        writer.check_fingerprint(saved, now, "the run")  # nothing to compare, or the same data
    with pytest.raises(ConfigError) as err:
        writer.check_fingerprint(local, {"kind": "hub", "value": "f" * 40}, "the run", redo="redo it")
    assert str(err.value) == (
        "SOURCE changed since the run was made (local abc there, hub ffffffffffff now): its rows no longer match; "
        "restore the source, or pass --overwrite to redo it."
    )
    with pytest.raises(ConfigError, match=r"\(hub 0123456789ab there, local abc now\)"):
        writer.check_fingerprint({"kind": "hub", "value": "0123456789abcdef"}, local, "the run")


def test_a_shard_keeps_the_path_of_a_real_image_and_names_the_error_of_an_unreadable_one(tmp_path):
    rows = writer.ConcentratedRows()
    rows.add_real([{"bytes": b"jpg", "path": "cat.jpg"}], [5], 0)
    (tmp_path / "units").mkdir()
    path = writer.write_shard(tmp_path, 0, rows)
    assert writer.read_shard(tmp_path, 0, 1).images == [{"bytes": b"jpg", "path": "cat.jpg"}]
    path.write_bytes(b"not parquet")
    with pytest.raises(OutputError) as err:
        writer.read_shard(tmp_path, 0, 1)
    cause = err.value.__cause__
    assert str(err.value) == f"shard {path} is unreadable ({type(cause).__name__}: {cause})"


def test_a_shard_of_another_unit_is_refused(tmp_path):
    rows = writer.ConcentratedRows()
    rows.add_synthetic([b"a"], [1], 0)
    (tmp_path / "units").mkdir()
    path = writer.write_shard(tmp_path, 3, rows)
    assert pq.read_schema(path).metadata == {b"dsco_hub_unit": b"3"}
    os.replace(path, writer.shard_path(tmp_path, 4))
    with pytest.raises(OutputError) as err:
        writer.read_shard(tmp_path, 4, 1)
    assert str(err.value) == f"shard {writer.shard_path(tmp_path, 4)} holds 1 rows of unit b'3', not 1 of 4"


def test_a_failed_shard_write_leaves_no_temp_file_and_is_one_line(tmp_path, monkeypatch):
    rows = writer.ConcentratedRows()
    rows.add_synthetic([b"a"], [1], 0)
    (tmp_path / "units").mkdir()

    def full_disk(table, where):
        Path(where).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(where))

    monkeypatch.setattr(writer.pq, "write_table", full_disk)
    with pytest.raises(OutputError) as err:
        writer.write_shard(tmp_path, 0, rows)
    assert str(err.value).startswith(f"cannot write {tmp_path / 'units' / 'unit-000000.parquet'}: ")  # not the temp
    assert "(ENOSPC)" in str(err.value)
    assert list((tmp_path / "units").iterdir()) == []

    def no_space(table, where):  # fails before writing anything
        raise OSError(errno.ENOSPC, "No space left on device", str(where))

    monkeypatch.setattr(writer.pq, "write_table", no_space)
    with pytest.raises(OutputError, match=r"\(ENOSPC\)"):
        writer.write_shard(tmp_path, 0, rows)


# ---------------------------------------------------------------------------------------------------------------
# Moving a finished set into place
# ---------------------------------------------------------------------------------------------------------------


def test_commit_moves_the_staging_folder_into_place_and_drops_the_old_set(tmp_path):
    out = tmp_path / "out"
    staging = writer.staging_dir(out)
    assert staging.parent == tmp_path and staging.name.startswith(".out.")
    (staging / "new.txt").write_text("1")
    assert writer.commit(staging, out) == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    staging = writer.staging_dir(out)
    (staging / "newer.txt").write_text("2")
    writer.commit(staging, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no old copy left behind
    assert [p.name for p in out.iterdir()] == ["newer.txt"]


def test_a_commit_whose_old_set_cannot_be_removed_still_succeeds(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    staging = writer.staging_dir(out)
    (staging / "new.txt").write_text("new")

    def rmtree(path, ignore_errors=False):
        if not ignore_errors:
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))

    monkeypatch.setattr(writer.shutil, "rmtree", rmtree)
    assert writer.commit(staging, out) == out and [p.name for p in out.iterdir()] == ["new.txt"]


def test_a_failed_commit_into_a_new_folder_is_one_line_and_leaves_no_set(tmp_path, monkeypatch):
    out = tmp_path / "out"
    staging = writer.staging_dir(out)

    def fail(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))

    monkeypatch.setattr(writer.os, "replace", fail)
    with pytest.raises(OutputError, match=r"Invalid cross-device link \(EXDEV\)"):
        writer.commit(staging, out)
    assert not out.exists()


def test_a_failed_commit_puts_the_previous_set_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    staging = writer.staging_dir(out)
    replace = os.replace

    def fail_on_staging(src, dst):
        if Path(src) == staging:
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        replace(src, dst)

    monkeypatch.setattr(writer.os, "replace", fail_on_staging)
    with pytest.raises(OutputError) as err:
        writer.commit(staging, out)
    assert str(err.value).startswith(f"cannot write {staging}: Invalid cross-device link (EXDEV)")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", staging.name])
