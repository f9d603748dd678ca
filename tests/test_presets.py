"""Presets (offline: resolution into a config, WordNet id -> ImageNet index, errors), --classes, --dry-run, and
decoding bounded by what is used."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from test_cli import dsco
from test_models import tiny_dit  # noqa: F401 (fixture)
from test_scale import _cfg

from dsco_hub import pipeline, plan, presets, synthesis
from dsco_hub.config import ConcentrateConfig, EvalConfig, SourceConfig
from dsco_hub.data import SourceData, load_source
from dsco_hub.errors import ConfigError, ModelError, SourceError


def test_presets_resolve_into_a_config():
    cfg = presets.apply_preset(ConcentrateConfig(preset="imagenette"))
    assert (cfg.source.source, cfg.source.config_name, cfg.source.test_split) == (
        "frgfm/imagenette",
        "320px",
        "validation",
    )
    assert (cfg.model, cfg.eval.model) == ("facebook/DiT-XL-2-256", "resnet18")
    cfg = presets.apply_preset(ConcentrateConfig(preset="imagenet-1k", eval=EvalConfig(model="convnet3")))
    assert cfg.source.source == "ILSVRC/imagenet-1k" and cfg.source.test_split == "validation"
    assert cfg.eval.model == "convnet3"  # what the user set stays
    with pytest.raises(ConfigError, match="preset 'imagenet-22k' is unknown; use one of imagenet-1k"):
        presets.apply_preset(ConcentrateConfig(preset="imagenet-22k"))


def test_wordnet_ids_map_to_imagenet_indices():
    assert presets.imagenet_index("n01440764") == 0 and presets.imagenet_classes()[0][1] == "tench"
    assert presets.imagenet_index("n15075141") == 999 and presets.imagenet_classes()[999][1] == "toilet tissue"
    wnids = [w for w, _ in presets.imagenet_classes()]
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000  # the ILSVRC2012 index order
    names = ["tench", "English springer", "cassette player", "chain saw", "church", "French horn"]
    names += ["garbage truck", "gas pump", "golf ball", "parachute"]
    assert presets.class_ids("imagenette", names) == [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]
    # frgfm/imagewoof's label order is not the WordNet order: names decide, not positions
    woof = ["Australian terrier", "Border terrier", "Samoyed", "Beagle", "Shih-Tzu", "English foxhound"]
    woof += ["Rhodesian ridgeback", "Dingo", "Golden retriever", "Old English sheepdog"]
    assert presets.class_ids("imagewoof", woof) == [193, 182, 258, 162, 155, 167, 159, 273, 207, 229]
    assert presets.class_ids("imagenette", ["n03888257", "TENCH"]) == [701, 0]  # WordNet ids work too
    assert presets.class_ids("imagenet-1k", ["a", "b"], source_classes=[5, 999]) == [5, 999]
    with pytest.raises(SourceError, match="'poodle' are not among its classes: n01440764 \\(tench\\)"):
        presets.class_ids("imagenette", ["tench", "poodle"])
    with pytest.raises(SourceError, match="the source has 3 classes, not ImageNet-1k's 1000"):
        presets.class_ids("imagenet-1k", ["a", "b", "c"])
    with pytest.raises(ConfigError, match="'n99999999' is not an ImageNet-1k class"):
        presets.imagenet_index("n99999999")


def test_preset_with_a_model_of_other_classes_is_refused(tiny_dit, tmp_path):  # noqa: F811
    with pytest.raises(ModelError, match=r"has 4 classes, but preset imagenette needs a model of the 1000 ImageNet"):
        presets.check_model("imagenette", str(tiny_dit), 4)
    (tmp_path / "cwd").mkdir()
    result = dsco("concentrate", "imagenette", "--model", str(tiny_dit), "--dry-run", cwd=tmp_path / "cwd")
    assert result.returncode == 0, result.stderr  # the plan needs no class check; a run does, before any heavy work
    text = " ".join(result.stdout.split())
    assert "classes: 10; IPC 10 = 10 synthetic + 0 real per class; 100 images" in text  # imagenette's 10 classes
    assert "units: 10 (one per class)" in text and "dry run: nothing was written" in text
    assert list((tmp_path / "cwd").iterdir()) == []
    cfg = presets.apply_preset(ConcentrateConfig(preset="imagenette", model=str(tiny_dit)))
    with pytest.raises(ModelError, match="has 4 classes, but preset imagenette"):
        synthesis.load_model(cfg, cfg.sampler(), ["tench"], "imagenette")


def test_classes_keeps_a_subset_by_name_or_index(tiny_repo):
    source = load_source(SourceConfig(source=str(tiny_repo), classes=("stripe", "0")))
    assert source.class_names == ["stripe", "circle"] and source.source_classes == [2, 0]
    full = load_source(SourceConfig(source=str(tiny_repo)))
    assert np.array_equal(source.class_index[0], full.class_index[2])  # row numbers stay the source's
    assert np.array_equal(source.class_index[1], full.class_index[0])
    assert set(source.labels[full.class_index[1]]) == {-1}
    with pytest.raises(SourceError, match="--classes: 'strip' is neither a class .* closest names: 'stripe'"):
        load_source(SourceConfig(source=str(tiny_repo), classes=("strip",)))


def test_concentrate_with_classes_evaluates_on_those_classes(tiny_repo, tmp_path):
    cfg = ConcentrateConfig(
        source=SourceConfig(source=str(tiny_repo), classes=("square", "stripe")),
        method="random",
        ipc=2,
        out=str(tmp_path / "out"),
        eval=EvalConfig(runs=1, epochs=1, baseline=True),
    )
    result = pipeline.concentrate(cfg)
    ds = datasets.load_dataset(str(tmp_path / "out"), split="train")
    assert ds.features["label"].names == ["square", "stripe"] and sorted(ds["label"]) == [0, 0, 1, 1]
    assert result.dsco["eval"]["test"]["num_images"] == 8  # 4 test images of each kept class


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_repo, tiny_prior, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    args = ["concentrate", str(tiny_repo), "--model", str(tiny_prior), "--ipc", "4", "--doping-ratio", "0.5"]
    result = dsco(*args, "--steps", "10", "--nopt-window", "0.5", "--dry-run", "--out", str(out))
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "classes: 3; IPC 4 = 2 synthetic + 2 real per class" in text
    assert "units: 3 (one per class)" in text
    # 6 synthetic images x 10 steps x 2 (guidance) = 120; NOpt: + 6 x 5 optimized steps x 1 iter x 3 x 2 = 180
    assert "NOpt: the first 5 of 10 DDIM steps (--nopt-window 0.5), 1 gradient step on x_t at each" in text
    assert "denoiser forwards, counted per image: 120 plain sampling, 300 with NOpt (+180)" in text
    assert "nothing was written" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prior", "tiny"]
    one = dsco(*args[:4], "--ipc", "1", "--steps", "10", "--dry-run", "--out", str(out))
    assert one.returncode == 0, one.stderr
    # one synthetic image per class: NOpt steers every step by default (`NOptConfig.window_for`); 3 x 10 x 3 x 2
    text = " ".join(one.stdout.split())
    assert "NOpt: the first 10 of 10 DDIM steps (--nopt-window 1), 1 gradient step on x_t at each" in text
    assert "denoiser forwards, counted per image: 60 plain sampling, 240 with NOpt (+180)" in text


def test_imagenet_plan_is_offline_and_counts_dit_flops():
    cfg = presets.apply_preset(ConcentrateConfig(preset="imagenet-1k", ipc=50, steps=50))
    run = plan.make_plan(cfg, 1000, plan.model_cost(cfg.model))
    assert run.denoiser_calls_plain == 1000 * 50 * 50 * 2 and run.units == 1000
    assert run.cost.denoiser == pytest.approx(2 * 118.6e9, rel=1e-3)  # the DiT paper's 118.6 Gflops are MACs


def test_counted_flops_of_a_dit_folder_match_its_layout(tiny_dit):  # noqa: F811
    cost = plan.model_cost(str(tiny_dit))
    assert cost.denoiser > 0 and cost.decode > 0 and cost.encode > 0 and cost.image_shape == (3, 8, 8)


def test_synthesis_decodes_only_the_rows_it_uses(tiny_repo, tiny_prior, tmp_path, monkeypatch):  # noqa: F811
    decoded: list[int] = []
    real = SourceData.decode_pil

    def counting(self, rows):
        if self.source_id == str(tiny_repo):  # not the written set, decoded afterwards for samples.png
            decoded.extend(int(r) for r in rows)
        return real(self, rows)

    monkeypatch.setattr(SourceData, "decode_pil", counting)
    pipeline.concentrate(_cfg(tiny_repo, tmp_path / "out", tiny_prior, doping_ratio=0.5, doping_select="random"))
    # NOpt targets: at most --nopt-targets=4 per class (of 5 to 8), plus the first row for the image shape
    assert 0 < len(set(decoded)) <= 3 * 4 + 1
