"""Writing files: the one temp-and-rename (`files.atomic_path`) and the parquet shards as `push_to_hub` cuts them."""

from __future__ import annotations

import errno
import math
import os

import datasets
import pytest
from conftest import make_image, tiny_dataset

from dsco_hub import writer
from dsco_hub.errors import ConfigError, OutputError
from dsco_hub.files import atomic_path, atomic_write, check_file_path


def test_atomic_path_renames_a_file_or_a_folder_into_place_and_leaves_no_temporary(tmp_path):
    with atomic_path(tmp_path / "a.txt") as tmp:
        assert tmp.parent == tmp_path and not tmp.exists()
        tmp.write_text("new")
    with atomic_path(tmp_path / "rows") as tmp:
        (tmp / "part").mkdir(parents=True)
    assert (tmp_path / "a.txt").read_text() == "new" and (tmp_path / "rows" / "part").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "rows"]


def test_atomic_path_keeps_the_old_file_when_the_write_fails(tmp_path):
    atomic_write(tmp_path / "a.txt", "old")
    (tmp_path / f".a.txt.{os.getpid()}.tmp").write_text("left by a killed process")
    with pytest.raises(OutputError, match=r"^cannot write .*: No space left on device \(ENOSPC\); the disk is full"):
        with atomic_path(tmp_path / "a.txt") as tmp:
            assert not tmp.exists()  # the stale temporary is gone
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    with pytest.raises(ConfigError, match="^ours$"):  # dsco-hub's own errors pass as they are
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise ConfigError("ours")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"] and (tmp_path / "a.txt").read_text() == "old"


def _with_files(tmp_path, count: int) -> datasets.Dataset:
    """A dataset whose images are files on disk (bytes None, path set), as an imagefolder source gives."""
    paths = []
    for i in range(count):
        paths.append(str(tmp_path / f"{i}.png"))
        make_image(i % 3, i).save(paths[-1])
    return datasets.Dataset.from_dict({"image": paths, "label": [i % 3 for i in range(count)]}).cast_column(
        "image", datasets.Image()
    )


@pytest.mark.skipif(not hasattr(datasets.Dataset, "_estimate_nbytes"), reason="the datasets version has no oracle")
def test_a_failed_rename_names_the_users_path_not_the_temporary_one(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep")
    with pytest.raises(OutputError) as err:
        atomic_write(tmp_path / "taken", "{}", option="--json")  # a file cannot replace a folder
    assert f"cannot write {tmp_path / 'taken'}: " in str(err.value) and ".tmp" not in str(err.value)
    assert (tmp_path / "taken" / "x").read_text() == "keep" and sorted(os.listdir(tmp_path)) == ["taken"]


def test_a_file_path_that_cannot_be_written_is_refused_before_work(tmp_path):
    (tmp_path / "f").write_text("")
    assert check_file_path(str(tmp_path / "r.json"), "--json") == tmp_path / "r.json"
    with pytest.raises(OutputError, match=r"^--json='.*' is a folder; pass a file path, e.g. --json .*results.json"):
        check_file_path(str(tmp_path), "--json")
    with pytest.raises(OutputError, match=r"its folder .*/nosuch does not exist; create it or pass another path"):
        check_file_path(str(tmp_path / "nosuch" / "r.json"), "--json")
    with pytest.raises(OutputError, match=r"its folder .*/f is a file"):
        check_file_path(str(tmp_path / "f" / "r.json"), "--json")


def test_estimate_nbytes_is_the_estimate_push_to_hub_shards_by(tmp_path):
    embedded = tiny_dataset(per_class=(600, 400, 300))  # over 1000 rows: the path correction is scaled up
    files = _with_files(tmp_path, 1200)
    cases = [embedded, embedded.select(range(7, 900, 3)), embedded.shuffle(seed=0), files, files.select(range(50))]
    cases += [embedded.select([]), datasets.Dataset.from_dict({"x": [1, 2, 3]})]
    for ds in cases:
        assert writer.estimate_nbytes(ds) == ds._estimate_nbytes()  # datasets' own (private) estimate


def test_parquet_shards_are_cut_where_push_to_hub_cuts_them(tmp_path):
    ds = tiny_dataset(per_class=(40, 30, 20)).shuffle(seed=1)
    info, size = writer.write_parquet(ds, tmp_path / "set", max_shard_bytes=4000)
    shards = sorted((tmp_path / "set" / "data").iterdir())
    count = math.ceil(writer.estimate_nbytes(ds) / 4000)
    assert count > 2 and [p.name for p in shards] == [f"train-{i:05d}-of-{count:05d}.parquet" for i in range(count)]
    for index, path in enumerate(shards):  # the bytes `push_to_hub`'s contiguous shards have
        ds.shard(num_shards=count, index=index, contiguous=True).to_parquet(str(tmp_path / "expected.parquet"))
        assert path.read_bytes() == (tmp_path / "expected.parquet").read_bytes()
    assert (info.num_bytes, info.num_examples, size) == (
        writer.estimate_nbytes(ds),
        90,
        sum(p.stat().st_size for p in shards),
    )
