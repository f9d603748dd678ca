"""NOpt: noise optimization lowers the MMD to the targets, deterministically, and refuses bad settings."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from dsco_hub.config import NOptConfig, PriorTrainConfig, SamplerConfig
from dsco_hub.errors import ConfigError
from dsco_hub.kernels import RandomFeatures, embed, median_bandwidth, mmd2
from dsco_hub.models import DiffusionPrior, sample
from dsco_hub.nopt import NOptClass, nopt_sample, nopt_sample_classes
from dsco_hub.prior import build_unet


@pytest.fixture
def prior():
    torch.manual_seed(0)
    unet = build_unet(PriorTrainConfig(block_out_channels=(8, 16), norm_num_groups=8), 2, 1, 16).eval()
    unet.requires_grad_(False)
    scheduler = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    return DiffusionPrior(denoiser=unet, scheduler=scheduler, id2label={0: "a", 1: "b"}, name="tiny")


def _targets(n=40):
    g = torch.Generator().manual_seed(3)
    images = -torch.ones(n, 1, 16, 16)
    images[:, :, 4:12, 4:12] = 0.8 + 0.1 * torch.randn(n, 1, 8, 8, generator=g)  # a bright square: far from noise
    return images


def _final_mmd(images, targets):
    phi = RandomFeatures(1, seed=12345)
    a, b = embed(phi, images), embed(phi, targets)
    return mmd2(a, b, bandwidth=median_bandwidth(a, b)).item()


def test_nopt_lowers_mmd_to_targets_compared_with_plain_sampling(prior):
    # targets: other samples of the model, brightened (a class the plain sampler misses by a known shift)
    targets = (sample(prior, [0] * 40, list(range(100, 140)), SamplerConfig(steps=10)) + 0.3).clamp(-1, 1)
    seeds = list(range(6))
    plain = sample(prior, [0] * 6, seeds, SamplerConfig(steps=10, guidance_scale=2.0))
    optimized, trace = nopt_sample(prior, 0, seeds, targets, NOptConfig(window=0.6, iters=2), SamplerConfig(steps=10))
    assert optimized.shape == plain.shape == (6, 1, 16, 16) and optimized.abs().max() <= 1
    assert trace.iterations == 12  # ceil(0.6 * 10) optimized steps x 2 iterations
    assert _final_mmd(optimized, targets) < _final_mmd(plain, targets)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_nopt_with_zero_iterations_is_plain_sampling(prior, eta):
    seeds = [5, 6, 7]
    plain = sample(prior, [1] * 3, seeds, SamplerConfig(steps=6, guidance_scale=2.0, eta=eta))
    same, trace = nopt_sample(prior, 1, seeds, _targets(), NOptConfig(iters=0), SamplerConfig(steps=6, eta=eta))
    torch.testing.assert_close(same, plain, rtol=0, atol=1e-6)
    assert trace.iterations == 0


def test_nopt_in_batches_equals_one_batch(prior):
    targets = (sample(prior, [1] * 40, list(range(100, 140)), SamplerConfig(steps=6)) + 0.3).clamp(-1, 1)
    cfg = NOptConfig(window=0.5, iters=2)
    seeds = list(range(7))
    whole, trace_whole = nopt_sample(prior, 1, seeds, targets, cfg, SamplerConfig(steps=6, batch_size=64))
    batched, trace_batched = nopt_sample(prior, 1, seeds, targets, cfg, SamplerConfig(steps=6, batch_size=3))
    torch.testing.assert_close(batched, whole, rtol=0, atol=1e-4)
    assert trace_batched.last_mmd2 == pytest.approx(trace_whole.last_mmd2, rel=1e-5)


def test_eta_changes_nopt_samples(prior):
    cfg = NOptConfig(window=0.5, iters=1)
    deterministic, _ = nopt_sample(prior, 0, [1, 2], _targets(), cfg, SamplerConfig(steps=6))
    stochastic, _ = nopt_sample(prior, 0, [1, 2], _targets(), cfg, SamplerConfig(steps=6, eta=1.0))
    assert (deterministic - stochastic).abs().max() > 1e-3


def test_nopt_is_deterministic(prior):
    cfg = NOptConfig(window=0.5, iters=1)
    a, _ = nopt_sample(prior, 0, [1, 2, 3], _targets(), cfg, SamplerConfig(steps=6), phi_seed=9)
    b, _ = nopt_sample(prior, 0, [1, 2, 3], _targets(), cfg, SamplerConfig(steps=6), phi_seed=9)
    assert a.numpy().tobytes() == b.numpy().tobytes()


def test_a_target_batch_draws_seeded_subsets_and_still_lowers_the_mmd(prior):
    targets = (sample(prior, [0] * 40, list(range(100, 140)), SamplerConfig(steps=10)) + 0.3).clamp(-1, 1)
    seeds = list(range(6))
    plain = sample(prior, [0] * 6, seeds, SamplerConfig(steps=10, guidance_scale=2.0))
    full, _ = nopt_sample(
        prior, 0, seeds, targets, NOptConfig(window=0.6, iters=2, target_batch=0), SamplerConfig(steps=10)
    )
    # a batch as large as the target set, or the default 128 > 40, is the full set
    for batch in (40, NOptConfig().target_batch):
        whole, _ = nopt_sample(
            prior, 0, seeds, targets, NOptConfig(window=0.6, iters=2, target_batch=batch), SamplerConfig(steps=10)
        )
        assert whole.numpy().tobytes() == full.numpy().tobytes()
    cfg = NOptConfig(window=0.6, iters=2, target_batch=8)
    subset, trace = nopt_sample(prior, 0, seeds, targets, cfg, SamplerConfig(steps=10))
    again, _ = nopt_sample(prior, 0, seeds, targets, cfg, SamplerConfig(steps=10))
    assert subset.numpy().tobytes() == again.numpy().tobytes()
    assert (subset - full).abs().max() > 1e-3  # the MMD saw other targets
    assert trace.iterations == 12
    assert _final_mmd(subset, targets) < _final_mmd(plain, targets)


def test_the_default_target_batch_grows_with_n_and_is_all_targets_for_a_single_image(prior):
    assert [NOptConfig().batch_for(n) for n in (1, 2, 12, 13, 50)] == [0, 128, 128, 130, 500]
    assert [NOptConfig(target_batch=64).batch_for(n) for n in (1, 50)] == [64, 64]
    targets = sample(prior, [0] * 140, list(range(100, 240)), SamplerConfig(steps=4))  # M = 140 > 128
    targets = (targets + 0.3).clamp(-1, 1)
    cfg = dict(window=0.6, iters=2)
    one = [
        nopt_sample(prior, 0, [7], targets, NOptConfig(**cfg, target_batch=b), SamplerConfig(steps=6))[0]
        for b in (None, 0, 128)
    ]
    assert one[0].numpy().tobytes() == one[1].numpy().tobytes()  # n = 1: every target
    assert (one[0] - one[2]).abs().max() > 1e-4
    two = [
        nopt_sample(prior, 0, [7, 8], targets, NOptConfig(**cfg, target_batch=b), SamplerConfig(steps=6))[0]
        for b in (None, 128)
    ]
    assert two[0].numpy().tobytes() == two[1].numpy().tobytes()  # n >= 2: 128 of them


@pytest.mark.parametrize(
    "cfg, match",
    [
        (NOptConfig(window=1.5), "--nopt-window=1.5"),
        (NOptConfig(lr=0), "--nopt-lr=0"),
        (NOptConfig(targets=1), "--nopt-targets=1"),
        (NOptConfig(kernel="cosine"), "--kernel='cosine'"),
        (NOptConfig(target_batch=1), "--nopt-target-batch=1"),
        (NOptConfig(target_batch=-5), "--nopt-target-batch=-5"),
    ],
)
def test_bad_settings_are_refused(prior, cfg, match):
    with pytest.raises(ConfigError, match=match):
        nopt_sample(prior, 0, [1], _targets(), cfg, SamplerConfig(steps=4))


def test_too_few_or_misshaped_targets_are_refused(prior):
    with pytest.raises(ConfigError, match="1 target image"):
        nopt_sample(prior, 0, [1], _targets(1), NOptConfig(), SamplerConfig(steps=4))
    with pytest.raises(ConfigError, match="prior.encode"):
        nopt_sample(prior, 0, [1], torch.zeros(4, 3, 16, 16), NOptConfig(), SamplerConfig(steps=4))


@pytest.mark.parametrize("batch_size", [64, 4])  # one pass; two passes with batches that straddle the classes
def test_classes_sampled_together_equal_each_class_sampled_alone(prior, batch_size):
    cfg = NOptConfig(window=0.6, iters=2, target_batch=16)
    other = (_targets(30) * -0.5).clamp(-1, 1)  # class 1 matches other targets
    classes = [NOptClass(0, [1, 2, 3], _targets(), phi_seed=5), NOptClass(1, [4, 5], other, phi_seed=6)]
    together, traces = nopt_sample_classes(prior, classes, cfg, SamplerConfig(steps=6, eta=0.5, batch_size=batch_size))
    for c, images, trace in zip(classes, together, traces):
        alone, alone_trace = nopt_sample(
            prior,
            c.class_id,
            c.seeds,
            c.targets,
            cfg,
            SamplerConfig(steps=6, eta=0.5, batch_size=batch_size),
            phi_seed=c.phi_seed,
        )
        assert images.shape == (len(c.seeds), 1, 16, 16)
        # the denoiser rounds a row differently in another batch (~1e-6 on the CPU); NOpt's normalised steps
        # amplify that over 8 iterations to ~1e-3, far below one uint8 level (2 / 255 = 8e-3)
        torch.testing.assert_close(images, alone, rtol=0, atol=4e-3)
        assert trace.iterations == alone_trace.iterations == 8
        assert trace.first_mmd2 == pytest.approx(alone_trace.first_mmd2, rel=1e-6)
        assert trace.last_mmd2 == pytest.approx(alone_trace.last_mmd2, rel=1e-3)
    assert not torch.equal(together[0][:2], together[1])  # each class its own labels and targets
