"""Source loading: column detection, label handling, splits, image modes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import datasets
import huggingface_hub
import numpy as np
import pytest
import torch
from conftest import CLASS_NAMES, tiny_dataset, write_repo
from hub_server import FakeHub

from dsco_hub.config import SourceConfig
from dsco_hub.data import decode_images, embedded_source_path, fingerprint, load_source, load_test_source, to_mode
from dsco_hub.errors import ConfigError, ImageDecodeError, SourceError, SourceNotFoundError, SplitNotFoundError


def test_repo_folder_columns_classes_and_index(tiny_repo):
    source = load_source(SourceConfig(source=str(tiny_repo)))
    assert (source.image_column, source.label_column) == ("image", "label")
    assert source.class_names == CLASS_NAMES
    assert [len(rows) for rows in source.class_index] == [8, 6, 5]
    for k, rows in enumerate(source.class_index):
        assert (source.labels[rows] == k).all()
    assert source.license == "cc-by-4.0"
    assert source.citation == "Tiny et al. 2026."


def test_class_index_does_not_decode_images(tiny_repo, monkeypatch):
    import PIL.Image

    calls: list[str] = []
    real_decode, real_open = datasets.Image.decode_example, PIL.Image.open

    def decode(*args, **kwargs):
        calls.append("datasets.Image.decode_example")
        return real_decode(*args, **kwargs)

    def open_image(*args, **kwargs):
        calls.append("PIL.Image.open")
        return real_open(*args, **kwargs)

    # patched before the source is loaded: loading and indexing by class must not decode a single image
    monkeypatch.setattr(datasets.Image, "decode_example", decode)
    monkeypatch.setattr(PIL.Image, "open", open_image)
    source = load_source(SourceConfig(source=str(tiny_repo)))
    assert [len(rows) for rows in source.class_index] == [8, 6, 5]
    assert calls == []
    decode_images(source, [0], 1, 16)  # the patches see a decode when one happens
    assert calls


@pytest.mark.parametrize("kind, names", [("str", sorted(CLASS_NAMES)), ("int", ["10", "15", "20"])])
def test_labels_without_names_get_sorted_classlabel(tmp_path, kind, names):
    folder = write_repo(tmp_path / kind, tiny_dataset(label_kind=kind))
    source = load_source(SourceConfig(source=str(folder)))
    assert source.class_names == names
    assert sorted(len(r) for r in source.class_index) == [5, 6, 8]


def test_save_to_disk_folder(tmp_path):
    dd = datasets.DatasetDict({"train": tiny_dataset(), "test": tiny_dataset(per_class=(2, 2, 2))})
    dd.save_to_disk(str(tmp_path / "disk"))
    source = load_source(SourceConfig(source=str(tmp_path / "disk")))
    assert len(source.labels) == 19
    test = load_test_source(SourceConfig(source=str(tmp_path / "disk")), source.class_names)
    assert len(test.labels) == 6


def test_imagefolder_layout(tmp_path):
    from conftest import make_image

    for k, name in enumerate(CLASS_NAMES):
        (tmp_path / "imgs" / "train" / name).mkdir(parents=True)
        for i in range(3):
            make_image(k, i).save(tmp_path / "imgs" / "train" / name / f"{i}.png")
    source = load_source(SourceConfig(source=str(tmp_path / "imgs")))
    assert source.class_names == CLASS_NAMES
    assert decode_images(source, [0, 1], 1, 16).shape == (2, 1, 16, 16)


def test_embedded_default_source():
    source = load_source(SourceConfig(source=None))
    assert source.num_classes == 10 and len(source.labels) == 5000
    assert source.license == "mit"
    assert "Fashion-MNIST" in source.citation
    assert (embedded_source_path() / "LICENSE").exists()
    test = load_test_source(SourceConfig(source=None), source.class_names)
    assert len(test.labels) == 1000 and source.image_shape == (1, 28, 28)


def test_decode_modes_to_uint8_tensor(tiny_repo):
    source = load_source(SourceConfig(source=str(tiny_repo)))
    rows = np.arange(8)  # L, RGB, P and RGBA rows
    gray = decode_images(source, rows, channels=1, size=16)
    rgb = decode_images(source, rows, channels=3, size=8)
    assert gray.shape == (8, 1, 16, 16) and gray.dtype == torch.uint8
    assert rgb.shape == (8, 3, 8, 8)
    assert int(gray.max()) > 150  # the class pattern survives every mode


def test_to_mode_composites_transparency_on_white():
    from PIL import Image

    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_mode(transparent, 1)).min() == 255
    assert to_mode(Image.new("I;16", (4, 4)), 3).mode == "RGB"


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(SourceNotFoundError, match="does not exist"):
        load_source(SourceConfig(source=str(tmp_path / "nope")))


def test_missing_split_lists_splits(tiny_repo):
    with pytest.raises(SourceError, match=r"--split='validation'.*available splits: train, test"):
        load_source(SourceConfig(source=str(tiny_repo), split="validation"))


def test_a_revision_of_a_local_folder_is_refused_not_ignored(tiny_repo):
    # a folder has no revisions: reading it as it is under --revision would record a revision it was not read at
    cfg = SourceConfig(source=str(tiny_repo), revision="v2")
    for read in (load_source, fingerprint):  # `fingerprint` is what every resumable command calls first
        with pytest.raises(ConfigError) as err:
            read(cfg)
        assert str(err.value) == (
            f"--revision='v2' picks a commit of a Hub dataset, but {str(tiny_repo)!r} is a local folder, read as it "
            "is: check that revision out in the folder, or drop --revision."
        )
    assert load_source(SourceConfig(source=str(tiny_repo))).revision is None


def test_missing_test_split_points_to_test_split(tmp_path):
    folder = write_repo(tmp_path / "notest", tiny_dataset())
    with pytest.raises(
        SourceError,
        match=r"available splits: train\), .* pass --test-split SPLIT, --test-dataset SOURCE .*, or --no-eval",
    ):
        load_test_source(SourceConfig(source=str(folder)), CLASS_NAMES)


def test_no_image_column_lists_columns(tmp_path):
    ds = datasets.Dataset.from_dict({"pixels": [[1, 2]], "label": [0]})
    write_repo(tmp_path / "noimg", ds)
    with pytest.raises(SourceError, match=r"no image column.*pixels.*label.*--image-column"):
        load_source(SourceConfig(source=str(tmp_path / "noimg")))


def test_no_label_column_lists_columns(tmp_path):
    ds = tiny_dataset().rename_column("label", "category").cast_column("category", datasets.Value("float32"))
    write_repo(tmp_path / "nolabel", ds)
    with pytest.raises(SourceError, match=r"no label column.*category.*--label-column"):
        load_source(SourceConfig(source=str(tmp_path / "nolabel")))


def test_a_label_column_of_floats_is_named_with_its_type(tmp_path):
    ds = tiny_dataset().cast_column("label", datasets.Value("float32"))  # e.g. regression targets
    write_repo(tmp_path / "floats", ds)
    with pytest.raises(SourceError) as err:
        load_source(SourceConfig(source=str(tmp_path / "floats")))
    assert str(err.value) == (
        f"{tmp_path / 'floats'}: column 'label' holds float32 values, not classes (integers, strings or a "
        "ClassLabel); pass --label-column NAME of a class column; columns: image (PIL.Image.Image), label (float32)."
    )


def test_test_labels_must_match_training_classes(tmp_path):
    train = tiny_dataset(label_kind="str")
    test = tiny_dataset(label_kind="str").map(lambda r: {"label": "zebra" if r["label"] == "circle" else r["label"]})
    folder = write_repo(tmp_path / "mismatch", train, test)
    source = load_source(SourceConfig(source=str(folder)))
    with pytest.raises(SourceError, match="zebra"):
        load_test_source(SourceConfig(source=str(folder)), source.class_names)


def test_unreadable_image_names_the_row(tmp_path):
    ds = tiny_dataset()
    images = ds.cast_column("image", datasets.Image(decode=False))["image"]
    images = list(images)
    images[3] = {"bytes": b"not an image", "path": None}
    broken = datasets.Dataset.from_dict({"image": images, "label": ds["label"]}, features=ds.features)
    write_repo(tmp_path / "broken", broken)
    source = load_source(SourceConfig(source=str(tmp_path / "broken")))
    with pytest.raises(ImageDecodeError, match="row 3"):
        decode_images(source, range(6), 1, 16)


# ---------------------------------------------------------------------------------------------------------------
# Splits from `datasets`' own API (never from the text of an error), metadata at the requested revision
# ---------------------------------------------------------------------------------------------------------------


def test_a_missing_split_is_a_typed_error_listing_the_splits(tmp_path):
    folder = tmp_path / "val"
    write_repo(folder, tiny_dataset())
    tiny_dataset(per_class=(2, 2, 2)).to_parquet(str(folder / "data" / "validation-00000-of-00001.parquet"))
    for streaming in (False, True):  # a stream used to say "cannot be loaded: Bad split: nope. ..."
        with pytest.raises(SplitNotFoundError) as err:
            load_source(SourceConfig(source=str(folder), split="nope", streaming=streaming), stream_to=tmp_path / "s")
        assert str(err.value) == (
            f"--split='nope' does not exist in {folder}; available splits: train, validation. Pass one with --split."
        )
        assert (err.value.split, err.value.available) == ("nope", ["train", "validation"])


def test_a_streamed_evaluation_split_falls_back_to_validation(tmp_path):
    folder = tmp_path / "val"
    write_repo(folder, tiny_dataset())
    tiny_dataset(per_class=(2, 2, 2)).to_parquet(str(folder / "data" / "validation-00000-of-00001.parquet"))
    test = load_test_source(SourceConfig(source=str(folder), streaming=True), CLASS_NAMES, stream_to=tmp_path / "s")
    assert test.split == "validation" and len(test.labels) == 6


def test_a_missing_evaluation_split_lists_split_names_with_dots(tmp_path):
    splits = {"train": tiny_dataset(), "holdout.v2": tiny_dataset(per_class=(2, 2, 2))}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "disk"))
    with pytest.raises(SourceError, match=r"\(available splits: train, holdout\.v2\), and the students"):
        load_test_source(SourceConfig(source=str(tmp_path / "disk")), CLASS_NAMES)


def test_licence_and_citation_are_read_at_the_requested_revision(tmp_path, monkeypatch):
    token = "hf_alice_token_0123456789"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    server = FakeHub({token: "alice"}).start()
    try:
        api = huggingface_hub.HfApi(endpoint=server.url, token=token)
        old = write_repo(tmp_path / "v1", tiny_dataset(), tiny_dataset(per_class=(2, 2, 2)))
        (old / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# v1\n\nCitation: Old et al. 2025.\n")
        repo = {"repo_id": "alice/versions", "repo_type": "dataset"}
        api.create_repo(**repo)
        api.upload_folder(folder_path=str(old), **repo)
        api.create_branch(branch="v1", **repo)  # the data and card as they were
        readme = b"---\nlicense: mit\n---\n# main\n\nCitation: New et al. 2026.\n"
        api.upload_file(path_or_fileobj=readme, path_in_repo="README.md", **repo)  # the card changes on main
        script = (
            "import json; from dsco_hub.config import SourceConfig; from dsco_hub.data import load_source; "
            "s = [load_source(SourceConfig(source='alice/versions', revision=r)) for r in ('v1', None)]; "
            "print(json.dumps([[x.license, x.citation] for x in s]))"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
        env.update(HF_ENDPOINT=server.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_XET="1")
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == [
        ["cc-by-4.0", "Old et al. 2025."],
        ["mit", "New et al. 2026."],
    ]


def test_a_test_split_that_is_the_training_split_is_never_loaded_for_testing(tiny_repo):
    with pytest.raises(SourceError, match=r"^--test-split='train' is the split the training rows come from"):
        load_test_source(SourceConfig(source=str(tiny_repo), test_split="train"), ["a", "b", "c"])
    test = load_test_source(SourceConfig(source=str(tiny_repo), split="test", test_split="train"), None)
    assert len(test.labels) == 19  # the train split, named as the test split of a set drawn from "test"


def test_an_existing_folder_without_data_and_an_unknown_config_are_named_as_such(tiny_repo, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"^SOURCE=.*empty. holds no data `datasets` can read \(EmptyDataset"):
        load_source(SourceConfig(source=str(tmp_path / "empty")))
    with pytest.raises(SourceError, match=r"^--config='nosuch' is not a config of .*tiny; its configs: default\.$"):
        load_source(SourceConfig(source=str(tiny_repo), config_name="nosuch"))
    with pytest.raises(SourceNotFoundError, match="does not exist"):  # a path that is not there: as before
        load_source(SourceConfig(source=str(tmp_path / "nowhere")))
