"""`concentrate` and `evaluate` end to end on a tiny local source: output repo, card, atomicity, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from conftest import CLASS_NAMES

from dsco_hub import assess, pipeline
from dsco_hub.config import ConcentrateConfig, EvalConfig, SourceConfig
from dsco_hub.errors import ConfigError, ModelError, OutputError

FAST_EVAL = EvalConfig(runs=2, epochs=2, batch_size=8)


def _cfg(source: Path, out: Path, **kwargs) -> ConcentrateConfig:
    kwargs.setdefault("eval", FAST_EVAL)
    kwargs.setdefault("method", "random")  # these tests are about sources and the writer, not a method
    return ConcentrateConfig(source=SourceConfig(source=str(source)), out=str(out), **kwargs)


def _yaml(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    return yaml.safe_load(text.split("---")[1])


@pytest.mark.parametrize("method", ["random", "herding"])
def test_concentrate_writes_a_loadable_repo_with_provenance(tiny_repo, tmp_path, method):
    out = tmp_path / "out"
    result = pipeline.concentrate(_cfg(tiny_repo, out, method=method, ipc=3))
    ds = datasets.load_dataset(str(out), split="train")
    assert len(ds) == 9
    assert ds.features["label"].names == CLASS_NAMES
    assert sorted(ds["label"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert set(ds["source"]) == {"real"} and all(s is None for s in ds["seed"])
    source = datasets.load_dataset(str(tiny_repo), split="train")
    for row in ds:  # real rows are the source's images, byte for byte, with the source's label
        original = source[row["source_index"]]
        assert original["label"] == row["label"]
        assert np.array_equal(np.asarray(original["image"]), np.asarray(row["image"]))
    assert len(set(ds["source_index"])) == 9
    assert list(out.glob("data/train-*.parquet")) and (out / "samples.png").exists()
    assert result.dsco["eval"]["result"]["runs"] == 2


def test_card_yaml_matches_push_to_hub_and_records_everything(tiny_repo, tmp_path):
    out = tmp_path / "out"
    pipeline.concentrate(_cfg(tiny_repo, out, method="herding", ipc=2, seed=7))
    meta = _yaml(out)
    assert meta["license"] == "cc-by-4.0"
    assert meta["task_categories"] == ["image-classification"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    info = meta["dataset_info"]
    assert info["splits"] == [{"name": "train", "num_bytes": info["dataset_size"], "num_examples": 6}]
    assert info["features"][1]["dtype"]["class_label"]["names"] == {str(k): n for k, n in enumerate(CLASS_NAMES)}
    dsco = meta["dsco"]
    assert (dsco["method"], dsco["ipc"], dsco["seed"], dsco["doping_ratio"]) == ("herding", 2, 7, 1.0)
    assert dsco["settings"] == {"kernel": "gaussian", "feature_seed": 0, "herding_pool": 5000}
    assert dsco["source"]["id"] == "tiny" and dsco["source"]["num_classes"] == 3  # the folder's name, no path
    assert (out / dsco["source"]["path"]).resolve() == tiny_repo.resolve()  # relative to the set
    assert {"dsco_hub", "torch", "datasets"} <= set(dsco["versions"])
    evaluation = dsco["eval"]
    result = evaluation["result"]
    assert result["runs"] == 2 and len(result["accuracies"]) == 2  # FAST_EVAL's runs, each on the 12 test images
    for accuracy in result["accuracies"]:
        assert abs(accuracy * 12 / 100 - round(accuracy * 12 / 100)) < 0.01  # n of 12 images right, in percent
    assert result["accuracy_mean"] == pytest.approx(np.mean(result["accuracies"]), abs=0.01)
    assert result["accuracy_std"] == pytest.approx(np.std(result["accuracies"]), abs=0.01)
    assert evaluation["baseline_random"]["num_train_images"] == 6
    assert evaluation["test"] == {"dataset": "tiny", "split": "test", "num_images": 12}
    body = (out / "README.md").read_text()
    assert f"{evaluation['result']['accuracy_mean']:.2f} ±" in body
    assert "random real subset (baseline)" in body and "Tiny et al. 2026." in body
    assert json.loads((out / "dsco_config.json").read_text())["ipc"] == 2
    # what `push_to_hub` reads back: the card's YAML is valid dataset metadata
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCard

    infos = DatasetInfosDict.from_dataset_card_data(DatasetCard.load(out / "README.md").data)
    assert infos["default"].splits["train"].num_examples == 6


def test_same_command_gives_identical_parquet(tiny_repo, tmp_path):
    for name in ("a", "b"):
        pipeline.concentrate(_cfg(tiny_repo, tmp_path / name, method="herding", ipc=2, evaluate=False))
    a = (tmp_path / "a" / "data" / "train-00000-of-00001.parquet").read_bytes()
    assert a == (tmp_path / "b" / "data" / "train-00000-of-00001.parquet").read_bytes()


def test_herding_differs_from_random_and_seed_changes_random(tiny_repo, tmp_path):
    picks = {}
    for name, method, seed in (("h", "herding", 0), ("r0", "random", 0), ("r1", "random", 1)):
        pipeline.concentrate(_cfg(tiny_repo, tmp_path / name, method=method, ipc=3, seed=seed, evaluate=False))
        picks[name] = datasets.load_dataset(str(tmp_path / name), split="train")["source_index"]
    assert picks["r0"] != picks["r1"] and picks["h"] != picks["r0"]


def test_overwrite_replaces_a_set_but_never_a_folder_dsco_hub_did_not_write(tiny_repo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match=r"holds files dsco-hub did not write \(keep.txt\)"):
            pipeline.concentrate(_cfg(tiny_repo, out, evaluate=False, overwrite=overwrite))
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    (out / "keep.txt").unlink()
    pipeline.concentrate(_cfg(tiny_repo, out, evaluate=False, ipc=1))
    pipeline.concentrate(_cfg(tiny_repo, out, evaluate=False, overwrite=True, ipc=2))  # its own set: replaced
    assert len(datasets.load_dataset(str(out), split="train")) == 2 * 3
    (out / "notes.txt").write_text("mine")  # the user's file inside a set makes it the user's folder
    with pytest.raises(OutputError, match=r"did not write \(notes.txt\)"):
        pipeline.concentrate(_cfg(tiny_repo, out, evaluate=False, overwrite=True, ipc=1))
    assert (out / "notes.txt").read_text() == "mine"


def test_failure_leaves_nothing_half_written(tiny_repo, tmp_path, monkeypatch):
    out = tmp_path / "out"
    pipeline.concentrate(_cfg(tiny_repo, out, evaluate=False, ipc=1))
    before = sorted(p.name for p in out.rglob("*"))

    def boom(*args, **kwargs):
        raise RuntimeError("evaluation crashed")

    monkeypatch.setattr(assess, "evaluate_images", boom)
    with pytest.raises(RuntimeError, match="crashed"):
        pipeline.concentrate(_cfg(tiny_repo, out, overwrite=True, ipc=2))
    assert sorted(p.name for p in out.rglob("*")) == before  # the previous complete set is untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_ipc_larger_than_smallest_class_names_the_class(tiny_repo, tmp_path):
    with pytest.raises(ConfigError, match=r"--ipc=6 .* class 2 \('stripe'\), which has 5 images"):
        pipeline.concentrate(_cfg(tiny_repo, tmp_path / "out", ipc=6))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("ipc", [0, -3])
def test_ipc_must_be_positive(tiny_repo, tmp_path, ipc):
    with pytest.raises(ConfigError, match=f"--ipc={ipc} must be at least 1"):
        pipeline.concentrate(_cfg(tiny_repo, tmp_path / "out", ipc=ipc))


def test_evaluate_folder_and_update_card(tiny_repo, tmp_path):
    out = tmp_path / "out"
    pipeline.concentrate(_cfg(tiny_repo, out, method="random", ipc=2, evaluate=False))
    assert "eval" not in _yaml(out)["dsco"]
    block = assess.evaluate_set(str(out), SourceConfig(source=None), FAST_EVAL, update_card=True)
    assert block["test"]["dataset"] == "tiny"  # the recorded source (found through source.path) is the test source
    assert block["test"]["num_images"] == 12
    meta = _yaml(out)
    assert meta["dsco"]["eval"]["result"] == block["result"]
    assert meta["dataset_info"]["splits"][0]["num_examples"] == 6  # YAML carried over
    assert "Tiny et al. 2026." in (out / "README.md").read_text()
    assert len(datasets.load_dataset(str(out), split="train")) == 6


def test_the_cards_accuracy_is_what_evaluate_measures_on_the_written_set(tiny_repo, tmp_path):
    out = tmp_path / "out"
    card = pipeline.concentrate(_cfg(tiny_repo, out, method="herding", ipc=2)).dsco["eval"]
    again = assess.evaluate_set(str(out), SourceConfig(source=None), FAST_EVAL)
    assert again["result"]["accuracies"] == card["result"]["accuracies"]
    assert again["baseline_random"]["accuracies"] == card["baseline_random"]["accuracies"]


def test_evaluate_any_dataset_against_explicit_test_source(tiny_repo):
    block = assess.evaluate_set(
        str(tiny_repo), SourceConfig(source=str(tiny_repo)), EvalConfig(runs=1, epochs=1, baseline=False)
    )
    assert block["result"]["num_train_images"] == 19 and "baseline_random" not in block


def test_staging_is_beside_output(tmp_path):
    from dsco_hub.writer import staging_dir

    staging = staging_dir(tmp_path / "x" / "out")
    assert staging.parent == (tmp_path / "x").resolve() and staging.name.startswith(".out.")
    os.rmdir(staging)


def test_diffusion_method_writes_synthetic_rows_with_seeds(tiny_repo, tmp_path):
    import torch
    from diffusers import DDIMScheduler

    from dsco_hub.config import PriorTrainConfig
    from dsco_hub.models import save_unet_prior
    from dsco_hub.prior import build_unet

    torch.manual_seed(0)
    unet = build_unet(PriorTrainConfig(block_out_channels=(8, 16), norm_num_groups=8), 3, 1, 16)
    model = tmp_path / "prior"
    save_unet_prior(unet, DDIMScheduler(num_train_timesteps=50), {0: "Circle", 1: "square", 2: "stripe"}, model)
    runs = []
    for name, batch in (("a", 4), ("b", 4), ("c", 3)):
        out = tmp_path / name
        result = pipeline.concentrate(
            _cfg(
                tiny_repo,
                out,
                method="diffusion",
                ipc=2,
                model=str(model),
                steps=3,
                sample_batch_size=batch,
                eval=EvalConfig(runs=1, epochs=1, baseline=False),
            )
        )
        runs.append(datasets.load_dataset(str(out), split="train"))
    ds = runs[0]
    assert len(ds) == 6 and set(ds["source"]) == {"synthetic"}
    assert all(i is None for i in ds["source_index"]) and len(set(ds["seed"])) == 6
    assert ds[0]["image"].size == (16, 16)
    assert ds[0]["image"].mode == "RGB"  # stored with the source's channels (its first row is RGB)
    dsco = result.dsco
    assert dsco["doping_ratio"] == 0 and dsco["counts"]["synthetic"] == 6
    assert dsco["settings"]["steps"] == 3 and dsco["settings"]["guidance_scale"] == 2.0
    assert dsco["settings"]["clip_sample"] is True  # recorded from the model's scheduler (DDIMScheduler default)
    # same command, same bytes; another batch size, the same images up to float rounding
    a = (tmp_path / "a" / "data" / "train-00000-of-00001.parquet").read_bytes()
    assert a == (tmp_path / "b" / "data" / "train-00000-of-00001.parquet").read_bytes()
    assert runs[2]["seed"] == ds["seed"]
    diff = [
        np.abs(np.asarray(x, dtype=int) - np.asarray(y, dtype=int)).max()
        for x, y in zip(ds["image"], runs[2]["image"])
    ]
    assert max(diff) <= 1


def test_diffusion_without_matching_model_is_refused_before_work(tiny_repo, tmp_path):
    with pytest.raises(ModelError) as err:
        pipeline.concentrate(_cfg(tiny_repo, tmp_path / "out", method="diffusion"))
    assert str(err.value) == (
        f"no --model given and the classes of {tiny_repo} are not those of the shipped Fashion-MNIST prior; "
        "pass --model facebook/DiT-XL-2-256 (ImageNet classes) or a prior from `dsco-hub prior train`."
    )
    assert not (tmp_path / "out").exists()
