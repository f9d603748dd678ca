"""Issue 16's levers: NOpt's feature space (random, ensemble, trained snapshots) and generate-then-select."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from conftest import tiny_dataset

from dsco_hub import kernels, pipeline, plan, synthesis, writer
from dsco_hub.config import ConcentrateConfig, NOptConfig, SourceConfig, derive_seed
from dsco_hub.errors import ConfigError
from dsco_hub.nopt import feature_map, select_synthetic


def _cfg(source, out, prior, **kw) -> ConcentrateConfig:
    nopt = kw.pop("nopt", {})
    return ConcentrateConfig(
        source=SourceConfig(source=str(source)),
        method="dsco",
        ipc=kw.pop("ipc", 2),
        model=str(prior),
        steps=4,
        nopt=NOptConfig(targets=5, **nopt),
        out=str(out),
        evaluate=False,
        **kw,
    )


def _rows(folder) -> datasets.Dataset:
    return datasets.load_dataset(str(folder), split="train").cast_column("image", datasets.Image(decode=False))


def _images():
    ds = tiny_dataset(per_class=(12, 12, 12))
    pixels = torch.stack(
        [torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1)[None] for im in ds["image"]]
    )  # (36, 1, 16, 16) in [-1, 1]
    return pixels, torch.tensor(ds["label"])


def test_trained_snapshots_are_deterministic_and_learn_the_classes():
    images, labels = _images()
    first = kernels.train_feature_snapshots(images, labels, 3, epochs=8, seed=3, width=16, batch_size=12, lr=0.05)
    again = kernels.train_feature_snapshots(images, labels, 3, epochs=8, seed=3, width=16, batch_size=12, lr=0.05)
    assert len(first) == 8
    assert all(torch.equal(a[k], b[k]) for a, b in zip(first, again) for k in a)
    assert not torch.equal(first[0]["0.weight"], first[-1]["0.weight"])  # snapshots of different stages

    def class_gap(features) -> float:  # between-class MMD^2 over within-class MMD^2 (halves of a class)
        f = kernels.embed(features, images)
        between = kernels.mmd2(f[labels == 0], f[labels == 1]) + kernels.mmd2(f[labels == 1], f[labels == 2])
        within = sum(kernels.mmd2(f[labels == k][::2], f[labels == k][1::2]) for k in range(3))
        return float(between / within.clamp_min(1e-9))

    trained = class_gap(kernels.TrunkFeatures(1, first[-1], width=16))
    random = class_gap(kernels.RandomFeatures(1, 3, width=16))
    assert trained > random  # training made the classes further apart in the feature space


def test_feature_maps_of_each_space():
    images, labels = _images()
    snapshots = kernels.train_feature_snapshots(images, labels, 3, epochs=2, seed=0, width=8)
    x = images[:4]
    random = feature_map(NOptConfig(width=8), 1, seed=5)
    assert torch.equal(random(x), kernels.RandomFeatures(1, 5, width=8)(x))  # the default is today's map
    ensemble = feature_map(NOptConfig(features="ensemble", ensemble=3, width=8), 1, seed=5)
    assert ensemble(x).shape == (4, 3 * random(x).shape[1])
    assert torch.equal(ensemble(x), feature_map(NOptConfig(features="ensemble", ensemble=3, width=8), 1, 5)(x))
    trained = NOptConfig(features="trained", width=8)
    assert torch.equal(feature_map(trained, 1, 7, snapshots)(x), kernels.TrunkFeatures(1, snapshots[1], 8)(x))


def test_select_synthetic_keeps_the_candidates_that_match_the_targets():
    torch.manual_seed(0)
    targets = torch.randn(20, 1, 16, 16) * 0.1 + 0.5  # the class: bright images
    near = targets[:3] + 0.01 * torch.randn(3, 1, 16, 16)
    far = -torch.ones(5, 1, 16, 16) + 0.05 * torch.randn(5, 1, 16, 16)  # dark, unlike the class
    candidates = torch.cat([far[:2], near[:1], far[2:], near[1:]])  # near ones at 2, 6, 7
    picks = select_synthetic(candidates, targets, 3, NOptConfig(width=8), seed=1)
    assert sorted(picks) == [2, 6, 7]


def test_oversample_keeps_ipc_images_with_their_own_seeds(tiny_repo, tiny_prior, tmp_path):
    plain = pipeline.concentrate(_cfg(tiny_repo, tmp_path / "k1", tiny_prior))
    chosen = pipeline.concentrate(_cfg(tiny_repo, tmp_path / "k3", tiny_prior, oversample=3))
    one, three = _rows(plain.out), _rows(chosen.out)
    assert len(three) == len(one) == 6
    assert chosen.dsco["settings"]["oversample"] == 3
    for k in range(3):
        candidates = {derive_seed(0, k, j) for j in range(6)}
        kept = [row["seed"] for row in three if row["label"] == k]
        assert len(kept) == 2 and set(kept) <= candidates
    assert one["seed"] != three["seed"]  # the selection changed the set


def test_trained_features_are_trained_once_and_reused_by_a_resume(tiny_repo, tiny_prior, tmp_path, monkeypatch):
    nopt = {"features": "trained", "feature_epochs": 2, "feature_images": 4}
    reference = pipeline.concentrate(_cfg(tiny_repo, tmp_path / "ref", tiny_prior, nopt=nopt))
    assert reference.dsco["settings"]["nopt_features"] == "trained"
    compute, calls = synthesis.compute_unit, []

    def crash_after_one(unit, *args):
        calls.append(unit.index)
        if len(calls) > 1:
            raise RuntimeError("killed")
        return compute(unit, *args)

    monkeypatch.setattr(synthesis, "compute_unit", crash_after_one)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="killed"):
        pipeline.concentrate(_cfg(tiny_repo, out, tiny_prior, nopt=nopt))
    assert (tmp_path / "out.partial" / writer.FEATURES_FILE).exists()
    monkeypatch.setattr(synthesis, "compute_unit", compute)

    def never(*args, **kwargs):
        raise AssertionError("the saved snapshots must be reused")

    monkeypatch.setattr(kernels, "train_feature_snapshots", never)
    pipeline.concentrate(_cfg(tiny_repo, out, tiny_prior, nopt=nopt))
    assert _rows(out)["image"] == _rows(reference.out)["image"]  # byte-identical to the uninterrupted run


@pytest.mark.parametrize(
    "kw, expected",
    [
        (
            {"nopt": {"features": "learned"}},
            "--nopt-features='learned' is unknown; use one of random, ensemble, trained",
        ),
        ({"oversample": 0}, "--oversample=0 must be at least 1"),
        ({"oversample": 2, "method": "random"}, "--oversample=2 needs --method dsco"),
        ({"nopt": {"ensemble": 0}}, "--nopt-ensemble=0 must be at least 1"),
        (
            {"nopt": {"features": "trained"}, "data_free": True, "labels": ("circle", "square")},
            "--nopt-features=trained trains on real images",
        ),
    ],
)
def test_bad_lever_settings_are_refused(tmp_path, kw, expected):
    method = kw.pop("method", "dsco")
    cfg = _cfg(tmp_path, tmp_path / "out", tmp_path, **kw)
    cfg.method = method
    with pytest.raises(ConfigError) as err:
        cfg.validate()
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_dry_run_counts_the_candidates_and_the_feature_network():
    cfg = ConcentrateConfig(ipc=10, oversample=2, nopt=NOptConfig(features="trained"))
    cost = plan.ModelCost(denoiser=4e8, decode=0.0, encode=0.0, image_shape=(1, 28, 28), source="test")
    made = plan.make_plan(cfg, 10, cost, (1, 28, 28))
    assert made.generated_per_class == 20 and made.feature_images == 1000 and made.feature_epochs == 10
    text = "\n".join(made.lines())
    assert "NOpt makes 20 images per class, herding keeps 10" in text
    assert "a ConvNet-3 trained 10 epochs on 1,000 real images" in text
    assert made.feature_flops > 0
    plain = plan.make_plan(ConcentrateConfig(ipc=10), 10, cost, (1, 28, 28))
    assert made.denoiser_calls_total == 2 * plain.denoiser_calls_total  # twice the images, same work per image
    assert made.flops == pytest.approx(2 * plain.flops + made.feature_flops)
