"""`dsco-hub prior train`: a tiny prior trains, saves a loadable diffusers folder with a card, and resumes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dsco_hub import prior as prior_module
from dsco_hub.config import PriorTrainConfig, SourceConfig
from dsco_hub.errors import ConfigError, OutputError
from dsco_hub.models import load_prior, sample


def _cfg(source, out, **kwargs) -> PriorTrainConfig:
    defaults = dict(
        block_out_channels=(8, 16),
        norm_num_groups=8,
        max_steps=4,
        batch_size=8,
        checkpoint_every=2,
        warmup_steps=1,
        mixed_precision="no",
        num_train_timesteps=50,
        sample_steps=2,
    )
    defaults.update(kwargs)
    return PriorTrainConfig(source=SourceConfig(source=str(source)), out=str(out), **defaults)


def _weights(folder):
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_train_saves_a_loadable_prior_with_card(tiny_repo, tmp_path):
    out = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p"), command="dsco-hub prior train tiny")
    index = json.loads((out / "model_index.json").read_text())
    assert index["id2label"] == {"0": "circle", "1": "square", "2": "stripe"}
    prior = load_prior(str(out))
    assert (
        prior.num_classes == 3 and prior.null_class == 3 and prior.image_shape == (3, 16, 16)
    )  # the first row is RGB
    assert sample(prior, [2], [0], steps=2).shape == (1, 3, 16, 16)
    assert prior.scheduler.config.clip_sample is False  # clipping x0 in DDIM erased classes under guidance
    card = (out / "README.md").read_text()
    assert "dsco-hub prior train tiny" in card and "Wall time" in card and "license: cc-by-4.0" in card
    assert (out / "samples.png").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]


def test_interrupted_training_resumes_to_the_same_weights(tiny_repo, tmp_path, monkeypatch):
    straight = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "straight"))
    original = prior_module._save_checkpoint

    def crash_after_first(accelerator, ckpt_dir, step, *args):
        original(accelerator, ckpt_dir, step, *args)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(prior_module, "_save_checkpoint", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        prior_module.train_prior(_cfg(tiny_repo, tmp_path / "resumed"))
    assert not (tmp_path / "resumed" / "model_index.json").exists()
    monkeypatch.setattr(prior_module, "_save_checkpoint", original)
    resumed = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "resumed"))
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_resume_with_other_settings_is_refused(tiny_repo, tmp_path):
    prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", max_steps=2))
    with pytest.raises(OutputError, match="already holds a finished prior; raise --max-steps"):
        prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", max_steps=2))
    with pytest.raises(ConfigError, match=r"different settings \(batch_size: 8 there, 4 now\)"):
        prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", max_steps=2, batch_size=4))
    with pytest.raises(ConfigError, match=r"different settings \(max_steps: 2 there, 1 now\)"):
        prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", max_steps=1))


def test_a_larger_max_steps_extends_a_finished_run(tiny_repo, tmp_path):
    out = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", max_steps=2), command="first")
    short = _weights(out)
    prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", max_steps=4), command="second")
    assert json.loads((out / "prior_config.json").read_text())["extended_from"] == [2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    card = (out / "README.md").read_text()
    assert "Command: `second` (the same run extended: it first finished at 2 steps" in card
    assert "Steps: 4 x batch 8" in card
    longer = _weights(out)
    assert any(not torch.equal(short[key], longer[key]) for key in short)


def test_bad_widths_are_refused_before_work(tiny_repo, tmp_path):
    with pytest.raises(ConfigError, match="not divisible by --norm-num-groups=8"):
        prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", block_out_channels=(8, 12)))
    assert not (tmp_path / "p").exists()
