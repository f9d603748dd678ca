"""Diffusion priors: tiny DiT + VAE in the `facebook/DiT-XL-2-256` layout and a tiny UNet prior, loaded through
the public loading code and sampled with our DDIM sampler."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CLASS_NAMES
from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel, UNet2DModel

from dsco_hub.config import ConcentrateConfig, PriorTrainConfig, SamplerConfig, SourceConfig
from dsco_hub.errors import ConfigError, ModelError
from dsco_hub.models import check_sampler_args, load_prior, map_classes, read_class_map, sample, save_unet_prior
from dsco_hub.prior import build_unet
from dsco_hub.synthesis import load_model

DIT_LABELS = {0: "tench, Tinca tinca", 1: "goldfish, Carassius auratus", 2: "church, church building", 3: "parachute"}


@pytest.fixture
def tiny_unet_prior(tmp_path):
    """A tiny class-conditional UNet prior (3 classes + null) saved as `dsco-hub prior train` writes it."""
    torch.manual_seed(0)
    cfg = PriorTrainConfig(block_out_channels=(8, 16), norm_num_groups=8)
    unet = build_unet(cfg, num_classes=3, channels=1, resolution=16)
    scheduler = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    save_unet_prior(unet, scheduler, {0: "circle", 1: "square", 2: "stripe"}, tmp_path / "unet-prior")
    return tmp_path / "unet-prior"


@pytest.fixture
def tiny_dit(tmp_path):
    """A tiny DiT + VAE saved in the exact layout of `facebook/DiT-XL-2-256` (Transformer2DModel class name)."""
    torch.manual_seed(0)
    folder = tmp_path / "tiny-dit"
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=1,
        sample_size=4,
        patch_size=2,
        num_embeds_ada_norm=len(DIT_LABELS),
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=8,
    )
    transformer.save_pretrained(folder / "transformer")
    config_path = folder / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["_class_name"] = "Transformer2DModel"  # what the Hub repo says
    config_path.write_text(json.dumps(config))
    vae.save_pretrained(folder / "vae")
    DDIMScheduler(num_train_timesteps=1000, clip_sample=False).save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "DiTPipeline",
        "_diffusers_version": "0.12.0.dev0",
        "id2label": {str(k): v for k, v in DIT_LABELS.items()},
        "scheduler": ["diffusers", "DDIMScheduler"],
        "transformer": ["diffusers", "Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_unet_prior_loads_and_samples(tiny_unet_prior):
    prior = load_prior(str(tiny_unet_prior))
    assert isinstance(prior.denoiser, UNet2DModel) and prior.vae is None
    assert prior.num_classes == 3 and prior.null_class == 3
    assert prior.image_shape == (1, 16, 16)
    images = sample(prior, [0, 1, 2, 0], [1, 2, 3, 4], SamplerConfig(steps=4, guidance_scale=2.0))
    assert images.shape == (4, 1, 16, 16) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1


def test_dit_layout_loads_with_vae_and_samples(tiny_dit):
    prior = load_prior(str(tiny_dit))
    assert isinstance(prior.denoiser, DiTTransformer2DModel) and isinstance(prior.vae, AutoencoderKL)
    assert prior.num_classes == 4 and prior.null_class == 4  # not a hard-coded 1000
    assert prior.sample_shape == (4, 4, 4) and prior.image_shape == (3, 8, 8)
    images = sample(prior, [0, 3], [5, 6], SamplerConfig(steps=3, guidance_scale=4.0))
    assert images.shape == (2, 3, 8, 8) and images.abs().max() <= 1


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sampling_is_deterministic_and_independent_of_batch_size(tiny_unet_prior, eta):
    prior = load_prior(str(tiny_unet_prior))
    labels, seeds = [0, 1, 2, 1, 0], [11, 12, 13, 14, 15]
    a = sample(prior, labels, seeds, SamplerConfig(steps=5, eta=eta, batch_size=5))
    b = sample(prior, labels, seeds, SamplerConfig(steps=5, eta=eta, batch_size=5))
    assert a.numpy().tobytes() == b.numpy().tobytes()
    c = sample(prior, labels, seeds, SamplerConfig(steps=5, eta=eta, batch_size=2))
    torch.testing.assert_close(a, c, rtol=0, atol=1e-5)
    # image j depends only on its own seed: a subset reproduces the same images
    torch.testing.assert_close(
        sample(prior, labels[3:], seeds[3:], SamplerConfig(steps=5, eta=eta)), a[3:], rtol=0, atol=1e-5
    )
    assert not torch.allclose(a[0], a[4])  # different seeds, different images


def test_class_mapping_by_synonym_case_insensitive_and_class_map(tmp_path):
    assert map_classes(["Goldfish", "church", "TENCH"], DIT_LABELS) == [1, 2, 0]
    with pytest.raises(ModelError, match=r"'chapel' \(closest: .*'church, church building'.*--class-map"):
        map_classes(["chapel", "tench"], DIT_LABELS)
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"chapel": "church building", "fish": 0}))
    assert map_classes(["chapel", "fish"], DIT_LABELS, read_class_map(path)) == [2, 0]
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="--class-map"):
        read_class_map(path)


def test_missing_and_unconditional_models_are_refused(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_prior(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no model_index.json"):
        load_prior(str(tmp_path / "empty"))
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 8),
        norm_num_groups=8,
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
    )
    save_unet_prior(unet, DDIMScheduler(), {0: "a"}, tmp_path / "uncond")
    with pytest.raises(ModelError, match="not class-conditional|no class embeddings"):
        load_prior(str(tmp_path / "uncond"))


def test_sampler_argument_checks(tiny_unet_prior, tmp_path):
    prior = load_prior(str(tiny_unet_prior))
    with pytest.raises(ConfigError, match=r"--steps=0 must be in \[1, 100\]"):
        check_sampler_args(prior, SamplerConfig(steps=0))
    with pytest.raises(ConfigError, match="--steps=101"):
        check_sampler_args(prior, SamplerConfig(steps=101))
    with pytest.raises(ConfigError, match="--scheduler='euler'"):
        check_sampler_args(prior, SamplerConfig(steps=10, scheduler="euler"))
    # a UNet without a null-class embedding cannot be guided
    torch.manual_seed(0)
    unet = build_unet(PriorTrainConfig(block_out_channels=(8, 16), norm_num_groups=8), 2, 1, 16)
    unet.register_to_config(num_class_embeds=3)
    save_unet_prior(unet, DDIMScheduler(num_train_timesteps=100), {0: "a", 1: "b", 2: "c"}, tmp_path / "nonull")
    no_null = load_prior(str(tmp_path / "nonull"))
    assert no_null.null_class is None
    with pytest.raises(ConfigError, match="no null class"):
        check_sampler_args(no_null, SamplerConfig(steps=10, guidance_scale=0.5))
    assert (
        check_sampler_args(no_null, SamplerConfig(steps=10, guidance_scale=1.0)) is None
    )  # unguided sampling is fine, and it samples:
    images = sample(no_null, [0, 2], [5, 6], SamplerConfig(steps=2, guidance_scale=1.0))
    assert images.shape == (2, 1, 16, 16) and torch.isfinite(images).all()
    assert images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, sample(no_null, [0, 2], [5, 6], SamplerConfig(steps=2, guidance_scale=1.0)))


def test_shipped_prior_covers_the_embedded_fashion_mnist_classes():
    from dsco_hub.config import SourceConfig
    from dsco_hub.data import load_source
    from dsco_hub.models import shipped_prior_path

    prior = load_prior(str(shipped_prior_path()))
    names = load_source(SourceConfig(source=None)).class_names
    assert map_classes(names, prior.id2label) == list(range(10))
    assert prior.image_shape == (1, 28, 28) and prior.null_class == 10
    assert sample(prior, [9], [0], SamplerConfig(steps=2)).shape == (1, 1, 28, 28)


def test_prior_digest_names_weights_and_scheduler_and_refuses_a_folder_without_weights(tiny_unet_prior, tmp_path):
    import shutil

    from dsco_hub.models import prior_digest

    digest = prior_digest(tiny_unet_prior)
    assert len(digest) == 12 and int(digest, 16) >= 0
    copy = tmp_path / "copy"
    shutil.copytree(tiny_unet_prior, copy)
    assert prior_digest(copy) == digest  # where the folder lies is not part of it
    config = copy / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "_diffusers_version": "0.0.1"}))
    assert prior_digest(copy) == digest  # nor the diffusers version that saved it
    DDIMScheduler.from_pretrained(copy / "scheduler", clip_sample=False).save_pretrained(copy / "scheduler")
    clipless = prior_digest(copy)
    assert clipless != digest  # the same weights sampled without x0 clipping: another prior
    unet = UNet2DModel.from_pretrained(copy / "unet")
    with torch.no_grad():
        unet.conv_out.bias.add_(1e-3)
    unet.save_pretrained(copy / "unet")
    assert prior_digest(copy) not in (digest, clipless)
    with pytest.raises(ModelError) as err:
        prior_digest(tmp_path / "empty")
    assert str(err.value) == (
        f"prior {tmp_path / 'empty'} holds no */*.safetensors (or *.bin) weights; pass a folder saved by diffusers."
    )
    unet.save_pretrained(copy / "unet", safe_serialization=False)  # an older diffusers' pickled weights
    (copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    pickled = prior_digest(copy)
    assert pickled not in (digest, clipless)  # the .bin file is hashed when there is no safetensors
    (copy / "vae").mkdir()  # a second component saved only as .bin (a DiT's vae/ beside its transformer/)
    (copy / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"weights")
    with_vae = prior_digest(copy)
    (copy / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"other weights")
    assert len({pickled, with_vae, prior_digest(copy)}) == 3  # every component's weights count
    shutil.rmtree(copy / "scheduler")
    with pytest.raises(ModelError, match=r"has no readable scheduler/ config; pass a folder saved by diffusers\.$"):
        prior_digest(copy)


def test_model_identity_is_the_shipped_prior_a_folder_digest_or_a_hub_commit(tiny_unet_prior, tmp_path, monkeypatch):
    import huggingface_hub

    from dsco_hub.models import model_identity, prior_digest, shipped_prior_id

    assert model_identity(None) == {"shipped_prior": shipped_prior_id()}
    assert model_identity(str(tiny_unet_prior), "ignored") == {"model_digest": prior_digest(tiny_unet_prior)}
    with pytest.raises(ModelError, match=r"^--model='\./gone' does not exist; pass an existing folder or a Hub"):
        model_identity("./gone")
    snapshots = tmp_path / "models--alice--dit" / "snapshots"
    asked = []

    def hf_hub_download(repo_id, filename, revision=None, **kwargs):  # the cache's layout: snapshots/<commit>/
        asked.append((repo_id, filename, revision))
        return str(snapshots / {None: "c" * 40, "v1": "d" * 40}.get(revision, revision) / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    assert model_identity("alice/dit") == {"model_commit": "c" * 40}
    assert model_identity("alice/dit", "v1") == {"model_commit": "d" * 40}  # a tag resolves to its commit
    assert asked == [("alice/dit", "model_index.json", None), ("alice/dit", "model_index.json", "v1")]
    assert model_identity("alice/dit", "not-a-commit") == {"model_commit": None}  # another layout: not compared

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline and not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ModelError) as err:
        model_identity("alice/dit", "v1")
    assert str(err.value) == (
        "--model='alice/dit' (revision v1) could not be loaded from the Hub (LocalEntryNotFoundError); check the id, "
        "your network and HF_TOKEN for gated models."
    )


def test_a_class_map_entry_that_names_no_model_class_is_shown_with_its_entry():
    id2label = {0: "T-shirt/top", 1: "Coat", 2: "Bag"}
    for entry in ("Nosuch", "99"):
        with pytest.raises(ModelError) as err:
            map_classes(["Coat", "Bag"], id2label, {"Coat": entry})
        message = str(err.value)
        assert message.startswith(f"1 source classes match no model class: 'Coat' -> '{entry}' (--class-map) (")
        assert message.endswith("of --class-map (model labels, or ids below 3) and add the classes it lacks.")
    with pytest.raises(ModelError, match=r"'Sandal' \(closest: .*\); pass --class-map FILE \(JSON source name"):
        map_classes(["Sandal", "Bag"], id2label)  # no map: the fix is to pass one


def test_a_class_map_key_that_names_no_source_class_is_refused_unless_classes_left_it_out(tiny_prior, tmp_path):
    # a typo ("Circle") would leave "circle" mapped by its own name, and the map's entry unused
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"Circle": "square", "stripe": "stripe"}))
    cfg = ConcentrateConfig(method="diffusion", model=str(tiny_prior), class_map=str(path))
    with pytest.raises(ModelError) as err:
        load_model(cfg, cfg.sampler(), list(CLASS_NAMES), "tiny", device=torch.device("cpu"))
    assert str(err.value) == (
        "--class-map names 1 class(es) the source does not have: 'Circle' (closest: 'circle', 'square', 'stripe'); "
        "its keys are the source's class names as written: correct or drop those entries."
    )
    subset = ConcentrateConfig(
        method="diffusion", model=str(tiny_prior), class_map=str(path), source=SourceConfig(classes=("square",))
    )
    assert load_model(subset, subset.sampler(), ["square"], "tiny", device=torch.device("cpu"))[1] == [1]
