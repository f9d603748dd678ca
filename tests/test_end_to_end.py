"""End to end on real data: the embedded Fashion-MNIST subset through the CLI, as a user runs it."""

from __future__ import annotations

import datasets
import pytest
import yaml
from test_cli import dsco


@pytest.mark.slow
def test_embedded_default_herding_end_to_end(tmp_path):
    out = tmp_path / "fmnist-herding"
    result = dsco(
        "concentrate", "--ipc", "5", "--method", "herding", "--out", str(out), "--runs", "2", "--epochs", "40"
    )
    assert result.returncode == 0, result.stderr
    ds = datasets.load_dataset(str(out), split="train")
    assert len(ds) == 50 and ds.features["label"].names[0] == "T-shirt/top"
    assert ds[0]["image"].size == (28, 28) and set(ds["source"]) == {"real"}
    meta = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert meta["license"] == "mit"
    evaluation = meta["dsco"]["eval"]
    assert evaluation["test"]["num_images"] == 1000
    # ConvNet-3 on 5 real images per class learns far above chance (10 %) on real test images
    assert evaluation["result"]["accuracy_mean"] > 40
    assert evaluation["baseline_random"]["accuracy_mean"] > 40


@pytest.mark.slow
def test_embedded_default_dsco_with_doping_end_to_end(tmp_path):
    out = tmp_path / "fmnist-dsco"
    result = dsco(
        "concentrate",
        "--method",
        "dsco",
        "--ipc",
        "4",
        "--doping-ratio",
        "0.5",
        "--steps",
        "10",
        "--nopt-targets",
        "50",
        "--out",
        str(out),
        "--runs",
        "1",
        "--epochs",
        "40",
        "--no-baseline",
    )
    assert result.returncode == 0, result.stderr
    ds = datasets.load_dataset(str(out), split="train")
    assert len(ds) == 40 and sorted(set(ds["source"])) == ["real", "synthetic"]
    meta = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert meta["dsco"]["settings"]["model"].startswith("dsco-hub shipped prior")
    assert meta["dsco"]["eval"]["result"]["accuracy_mean"] > 40  # far above chance (10 %) on real test images
