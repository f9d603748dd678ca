"""NOpt: noise optimization lowers the MMD to the targets, deterministically, and refuses bad settings."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from dsco_hub import nopt as nopt_module
from dsco_hub.config import NOptConfig, PriorTrainConfig, SamplerConfig, derive_seed
from dsco_hub.errors import ConfigError
from dsco_hub.kernels import RandomFeatures, TrunkFeatures, conv_trunk, embed, herd, median_bandwidth, mmd2
from dsco_hub.models import DiffusionPrior, initial_noise, sample
from dsco_hub.nopt import NOptClass, _resolvable, nopt_sample, nopt_sample_classes, select_synthetic
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


def test_a_flat_mmd_leaves_the_noise_alone(prior):
    # toward `_targets`' squares the kernel saturates: the gradient is float noise (1e-19 and below), which a
    # normalised step would turn into a full step in a random direction; NOpt keeps x_t instead
    seeds = [5, 6, 7]
    plain = sample(prior, [0] * 3, seeds, SamplerConfig(steps=6, guidance_scale=2.0))
    images, trace = nopt_sample(prior, 0, seeds, _targets(), NOptConfig(window=1.0, iters=2), SamplerConfig(steps=6))
    torch.testing.assert_close(images, plain, rtol=0, atol=1e-6)
    assert trace.iterations == 12  # the MMD was measured at every iteration; no step resolved it
    moved, _ = nopt_sample(prior, 0, seeds, _model_targets(prior, 0), NOptConfig(window=1.0, iters=2),
                           SamplerConfig(steps=6))  # fmt: skip
    assert (moved - plain).abs().mean() > 5e-2  # targets the kernel reaches: every step is taken


def test_a_step_is_taken_where_it_can_change_its_class_mmd_in_float32():
    # the first-order change of a row's step against float32's resolution of its class's MMD^2, relative to it
    eps = torch.finfo(torch.float32).eps
    change = torch.tensor([2 * eps, eps, 0.5 * eps, 2e3 * eps]).view(4, 1, 1, 1)
    moves = _resolvable(change, torch.tensor([1.0, 1e3]), [3, 1])  # class 0 owns rows 0-2, class 1 row 3
    assert moves.shape == (4, 1, 1, 1)
    assert moves.flatten().tolist() == [True, False, False, True]  # exactly at the resolution: no step
    assert _resolvable(change[:1], torch.tensor([1e3]), [1]).flatten().tolist() == [False]  # a larger MMD^2
    assert _resolvable(torch.zeros(1, 1, 1, 1), torch.zeros(1), [1]).flatten().tolist() == [False]  # flat at 0


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
    classes = [
        NOptClass(0, [1, 2, 3], _model_targets(prior, 0), phi_seed=5),
        NOptClass(1, [4, 5], _model_targets(prior, 1), phi_seed=6),  # class 1 matches other targets
    ]
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
        # amplify that over 8 iterations to a mean of ~4e-3 in [-1, 1] (up to 0.08 on a pixel), while the MMD's
        # own steps move the images by a mean of ~0.13 from plain sampling
        assert (images - alone).abs().mean() < 1e-2
        assert trace.iterations == alone_trace.iterations == 8
        assert trace.first_mmd2 == pytest.approx(alone_trace.first_mmd2, rel=1e-5)
        assert trace.last_mmd2 == pytest.approx(alone_trace.last_mmd2, rel=1e-2)
        plain = sample(prior, [c.class_id] * len(c.seeds), c.seeds, SamplerConfig(steps=6, eta=0.5))
        assert (images - plain).abs().mean() > 5e-2  # the gradients steered the images (not a no-op compared)
    assert not torch.equal(together[0][:2], together[1])  # each class its own labels and targets


def _model_targets(prior, class_id: int) -> torch.Tensor:
    """40 of the tiny model's own samples of the class, brightened: targets its samples miss by a known shift, near
    enough that the MMD's gradient is not lost in the kernel's tails (as it is toward `_targets`' squares)."""
    seeds = list(range(100 + 100 * class_id, 140 + 100 * class_id))
    return (sample(prior, [class_id] * 40, seeds, SamplerConfig(steps=6)) + 0.3).clamp(-1, 1)


def test_the_default_window_is_every_step_for_one_image_and_the_first_half_for_more(prior):
    assert [NOptConfig().window_for(n) for n in (0, 1, 2, 3, 4, 50)] == [0.5, 1.0, 1.0, 1.0, 0.5, 0.5]
    assert [NOptConfig(window=0.25).window_for(n) for n in (1, 50)] == [0.25, 0.25]
    classes = [
        NOptClass(0, [1], _model_targets(prior, 0), phi_seed=5),
        NOptClass(1, [4, 5, 6, 7], _model_targets(prior, 1), phi_seed=6),
    ]
    sampler = SamplerConfig(steps=6)
    together, traces = nopt_sample_classes(prior, classes, NOptConfig(target_batch=16), sampler)
    assert [trace.iterations for trace in traces] == [6, 3]  # one class's window does not move the other's
    for c, images, window, other in zip(classes, together, (1.0, 0.5), (0.5, 1.0)):
        alone, _ = nopt_sample(
            prior, c.class_id, c.seeds, c.targets, NOptConfig(window=window, target_batch=16), sampler, c.phi_seed
        )
        assert (images - alone).abs().mean() < 1e-2  # rounding, amplified (above)
        elsewhere, _ = nopt_sample(
            prior, c.class_id, c.seeds, c.targets, NOptConfig(window=other, target_batch=16), sampler, c.phi_seed
        )
        assert (images - elsewhere).abs().mean() > 4e-2


# ---------------------------------------------------------------------------------------------------------------
# Exact values: NOpt's update written out in the test, the feature maps' seeds, the target subsets
# ---------------------------------------------------------------------------------------------------------------


def _nopt_by_hand(prior, class_id, seeds, targets, cfg, steps, guidance_scale, phi_seed):
    """The method of the module docstring, written out for one class in one batch: at each optimized DDIM step, `iters`
    normalised gradient steps of length `lr * |x_t|` on MMD^2(phi(x0_hat(x_t)), phi(targets)), each followed by a
    rescale of `x_t` to its previous norm; `phi` is `RandomFeatures(seed=derive_seed(phi_seed, s, i))`."""
    scheduler = DDIMScheduler.from_config(prior.scheduler.config)
    scheduler.set_timesteps(steps)
    x = initial_noise(prior.sample_shape, seeds)
    labels = torch.full((len(seeds),), class_id)
    losses = []
    for s, t in enumerate(scheduler.timesteps):
        alpha = scheduler.alphas_cumprod[int(t)]
        for i in range(cfg.iters if s < math.ceil(cfg.window * steps) else 0):
            phi = RandomFeatures(prior.sample_shape[0], derive_seed(phi_seed, s, i), width=cfg.width)
            x = x.detach().requires_grad_(True)
            x0 = (x - (1 - alpha).sqrt() * prior.predict_noise(x, t, labels, guidance_scale)) / alpha.sqrt()
            loss = mmd2(phi(x0), embed(phi, targets), cfg.kernel)
            (grad,) = torch.autograd.grad(loss, x)
            losses.append(loss.item())
            with torch.no_grad():
                norm = x.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
                x = x - cfg.lr * norm * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
                x = x * norm / x.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        with torch.no_grad():
            x = scheduler.step(prior.predict_noise(x, t, labels, guidance_scale), t, x).prev_sample
    return prior.decode(x), losses


@pytest.mark.parametrize(
    "cfg, guidance_scale",
    [
        (NOptConfig(window=0.5, iters=2, lr=0.2), 2.0),
        (NOptConfig(window=1.0, iters=1, lr=0.05, kernel="linear", width=8), 1.5),
    ],
)
def test_nopt_is_the_update_of_the_method_written_out(prior, cfg, guidance_scale):
    targets = (sample(prior, [1] * 12, list(range(100, 112)), SamplerConfig(steps=4)) + 0.3).clamp(-1, 1)
    seeds = [3, 4, 5]
    expected, losses = _nopt_by_hand(prior, 1, seeds, targets, cfg, 4, guidance_scale, phi_seed=7)
    images, trace = nopt_sample(
        prior, 1, seeds, targets, cfg, SamplerConfig(steps=4, guidance_scale=guidance_scale), phi_seed=7
    )
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-5)
    assert trace.iterations == len(losses) == cfg.iters * math.ceil(cfg.window * 4)
    assert trace.first_mmd2 == pytest.approx(losses[0], rel=1e-5)
    assert trace.last_mmd2 == pytest.approx(losses[-1], rel=1e-5)
    assert trace.first_mmd2 != pytest.approx(trace.last_mmd2, rel=1e-3)


def test_the_defaults_of_nopt_sample(prior):
    cfg = NOptConfig(window=0.3, iters=1)
    targets = _model_targets(prior, 0)
    default, _ = nopt_sample(prior, 0, [1, 2], targets, cfg)
    explicit, _ = nopt_sample(
        prior, 0, [1, 2], targets, cfg, SamplerConfig(steps=25, guidance_scale=2.0, eta=0.0), phi_seed=0
    )
    assert default.numpy().tobytes() == explicit.numpy().tobytes()
    other, _ = nopt_sample(prior, 0, [1, 2], targets, cfg, phi_seed=1)
    assert (other - default).abs().max() > 1e-4  # the feature maps' seed matters


def test_each_iteration_draws_its_own_feature_map_and_target_subset(prior, monkeypatch):
    maps, subsets = [], []
    real_map, real_batch = nopt_module.feature_map, nopt_module._target_batch

    def feature_map(cfg, channels, seed, snapshots=None):
        maps.append((channels, seed))
        return real_map(cfg, channels, seed, snapshots)

    def target_batch(targets, size, seed):
        subsets.append((len(targets), size, seed))
        return real_batch(targets, size, seed)

    monkeypatch.setattr(nopt_module, "feature_map", feature_map)
    monkeypatch.setattr(nopt_module, "_target_batch", target_batch)
    cfg = NOptConfig(window=0.5, iters=2, target_batch=5)
    classes = [NOptClass(0, [1, 2], _targets(12), phi_seed=3), NOptClass(1, [4], _targets(9), phi_seed=8)]
    nopt_sample_classes(prior, classes, cfg, SamplerConfig(steps=4))
    seeds = [(s, i, c.phi_seed) for s in range(2) for i in range(2) for c in classes]
    assert maps == [(1, derive_seed(phi, s, i)) for s, i, phi in seeds]
    assert subsets == [(12 if phi == 3 else 9, 5, derive_seed(phi, s, i)) for s, i, phi in seeds]


def test_a_target_batch_is_a_seeded_subset_or_every_target():
    targets = torch.arange(10.0)[:, None]
    rows = torch.randperm(10, generator=torch.Generator().manual_seed(4))[:3]
    assert torch.equal(nopt_module._target_batch(targets, 3, 4), targets[rows])
    for size in (0, 10, 11):
        assert nopt_module._target_batch(targets, size, 4) is targets
    assert torch.equal(
        nopt_module._target_batch(targets, 9, 4),
        targets[torch.randperm(10, generator=torch.Generator().manual_seed(4))[:9]],
    )


def test_trained_features_need_their_snapshots(prior):
    with pytest.raises(ConfigError) as err:
        nopt_sample(prior, 0, [1], _targets(), NOptConfig(features="trained"), SamplerConfig(steps=4))
    assert str(err.value) == "--nopt-features=trained needs the trained snapshots (kernels.train_feature_snapshots)."


def test_refusals_name_the_class_and_the_shapes(prior):
    with pytest.raises(ConfigError) as err:
        nopt_sample(prior, 1, [1], _targets(1), NOptConfig(), SamplerConfig(steps=4))
    assert str(err.value) == "class 1 has 1 target image(s); NOpt needs at least 2 (--nopt-targets)."
    with pytest.raises(ConfigError) as err:
        nopt_sample(prior, 0, [1], torch.zeros(4, 3, 16, 16), NOptConfig(), SamplerConfig(steps=4))
    assert str(err.value) == (
        "targets have shape (3, 16, 16) but the denoiser works on (1, 16, 16); encode them with prior.encode."
    )


def test_progress_is_called_once_per_ddim_step(prior):
    ticks = []
    nopt_sample(
        prior, 0, [1], _targets(), NOptConfig(window=0.5, iters=1), SamplerConfig(steps=3), progress=ticks.append
    )
    assert ticks == [1, 1, 1]


def test_select_synthetic_herds_in_the_selection_map_with_the_runs_kernel():
    g = torch.Generator().manual_seed(6)
    candidates, targets = torch.randn(9, 1, 16, 16, generator=g), torch.randn(12, 1, 16, 16, generator=g) + 0.2
    trunks = []
    with torch.random.fork_rng(devices=[]):
        for seed in (1, 2, 3):  # three stages: the middle one is not the last
            torch.manual_seed(seed)
            trunks.append(conv_trunk(1, 8).state_dict())

    def by_hand(phi, kernel):
        return herd(embed(phi, candidates), embed(phi, targets), 9, kernel=kernel)

    # "trained": the last, fully trained snapshot, whatever the seed
    cfg = NOptConfig(features="trained", width=8, kernel="linear")
    picks = select_synthetic(candidates, targets, 9, cfg, seed=0, snapshots=trunks)
    assert picks == by_hand(TrunkFeatures(1, trunks[2], width=8), "linear")
    assert picks != by_hand(TrunkFeatures(1, trunks[1], width=8), "linear")
    assert select_synthetic(candidates, targets, 9, cfg, seed=3, snapshots=trunks) == picks
    # random features: the map of the seed, and the kernel of the run
    for kernel in ("linear", "gaussian"):
        cfg = NOptConfig(width=8, kernel=kernel)
        assert select_synthetic(candidates, targets, 9, cfg, seed=4) == by_hand(RandomFeatures(1, 4, width=8), kernel)
    assert by_hand(RandomFeatures(1, 4, width=8), "linear") != by_hand(RandomFeatures(1, 4, width=8), "gaussian")


def test_a_batch_holding_the_end_of_one_class_and_the_start_of_another_embeds_each_row_once(prior):
    # batches of 4 over classes of 3, 3 and 2 images: the second batch holds rows 4-5 of class 1 and all of class 2
    cfg = NOptConfig(window=0.5, iters=1, target_batch=8)
    classes = [
        NOptClass(k, [10 * k + j for j in range(n)], _targets(12), phi_seed=k) for k, n in ((0, 3), (1, 3), (0, 2))
    ]
    batched, traces = nopt_sample_classes(prior, classes, cfg, SamplerConfig(steps=4, batch_size=4))
    whole, whole_traces = nopt_sample_classes(prior, classes, cfg, SamplerConfig(steps=4, batch_size=64))
    for k, (a, b, ta, tb) in enumerate(zip(batched, whole, traces, whole_traces)):
        assert a.shape == b.shape == (len(classes[k].seeds), 1, 16, 16)
        assert ta.iterations == tb.iterations == 2
        # before any update each class's MMD^2 sees its own rows only (the updates' normalised steps can amplify the
        # denoiser's rounding in other batches, so the images themselves are compared in the test above, not here)
        assert ta.first_mmd2 == pytest.approx(tb.first_mmd2, rel=1e-4)


def _trunks(width=8):
    """Three ConvNet-3 trunks standing in for trained snapshots (stages 0, 1, 2)."""
    trunks = []
    with torch.random.fork_rng(devices=[]):
        for seed in (1, 2, 3):
            torch.manual_seed(seed)
            trunks.append(conv_trunk(1, width).state_dict())
    return trunks


def test_nopt_with_trained_features_draws_the_snapshots_it_is_given(prior):
    # iteration i of step s uses the snapshot derive_seed(phi_seed, s, i) mod 3: other snapshots, other images
    cfg = NOptConfig(features="trained", width=8, window=0.5, iters=2)
    trunks, targets = _trunks(), _model_targets(prior, 0)
    images, trace = nopt_sample(prior, 0, [1, 2], targets, cfg, SamplerConfig(steps=4), snapshots=trunks)
    (together,), _ = nopt_sample_classes(
        prior, [NOptClass(0, [1, 2], targets)], cfg, SamplerConfig(steps=4), snapshots=trunks
    )
    assert images.numpy().tobytes() == together.numpy().tobytes()
    assert trace.iterations == 4
    others, _ = nopt_sample(prior, 0, [1, 2], targets, cfg, SamplerConfig(steps=4), snapshots=trunks[::-1])
    assert (others - images).abs().max() > 1e-4


def test_two_targets_are_enough(prior):
    images, trace = nopt_sample(prior, 0, [1], _targets(2), NOptConfig(window=0.5, iters=1), SamplerConfig(steps=2))
    assert images.shape == (1, 1, 16, 16) and trace.iterations == 1


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_the_mmd_gradient_takes_one_pass_up_to_the_batch_size_and_two_passes_beyond(kernel):
    # five rows of two classes (3 + 2); a feature map whose rows also depend on their place in the whole batch, so
    # a batch embedded as if it started elsewhere gives other features
    g = torch.Generator().manual_seed(2)
    x, w, offsets = (
        torch.randn(5, 1, 4, 4, generator=g),
        torch.randn(16, 3, generator=g),
        torch.randn(5, 3, generator=g),
    )
    target_features = [torch.randn(4, 3, generator=g), torch.randn(6, 3, generator=g) + 1]
    calls = []

    def features(xb, start):
        calls.append((len(xb), start, xb.requires_grad))
        return torch.tanh(xb.flatten(1) @ w) + offsets[start : start + len(xb)]

    x_ref = x.clone().requires_grad_(True)
    f = torch.tanh(x_ref.flatten(1) @ w) + offsets
    expected = torch.stack([mmd2(f[:3], target_features[0], kernel), mmd2(f[3:], target_features[1], kernel)])
    (expected_grad,) = torch.autograd.grad(expected.sum(), x_ref)
    for batch_size, passes in [
        (5, [(5, 0, True)]),
        (64, [(5, 0, True)]),
        (2, [(2, 0, False), (2, 2, False), (1, 4, False), (2, 0, True), (2, 2, True), (1, 4, True)]),
    ]:
        calls.clear()
        losses, grad = nopt_module._mmd_gradient(features, x.clone(), [3, 2], target_features, kernel, batch_size)
        assert calls == passes
        assert not losses.requires_grad
        torch.testing.assert_close(losses, expected.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)
