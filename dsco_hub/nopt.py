"""NOpt: noise optimization during guided DDIM sampling, the synthesis step of DsCo.

Liu, Liu, Li and Hu, "Beyond Dataset Distillation: Lossless Dataset Concentration via
Diffusion-Assisted Distribution Alignment", arXiv 2603.27987, 2026 (Fig. 2), as specified in
`docs/method.md` §3. For the `n` synthetic images of one class, at each DDIM step inside the
optimization window, the noisy samples `x_t` take normalised gradient steps that lower

    MMD^2( phi(x0_hat(x_t)), phi(targets) )

where `x0_hat` is the x0 prediction of one guided denoiser call (memory does not grow with the
number of steps), `phi` is a randomly initialised ConvNet-3 resampled at every iteration (Zhao
and Bilen, "Dataset Condensation with Distribution Matching", WACV 2023; or several at once, or a
snapshot of a ConvNet-3 trained on the real images: `feature_map`) applied in the
denoiser's own space (pixels, or VAE latents), and the kernel is a sum of Gaussians at median-
heuristic bandwidths. After each update `x_t` is rescaled to its previous per-image norm so it
stays on the noise level's typical shell; an image whose gradient is too small for its step to change the MMD^2
in float32 (a saturated kernel: rounding noise) keeps its `x_t`. The DDIM step itself runs without gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from diffusers import DDIMScheduler
from torch import nn

from dsco_hub.config import NOptConfig, SamplerConfig, derive_seed
from dsco_hub.errors import ConfigError
from dsco_hub.kernels import EnsembleFeatures, RandomFeatures, TrunkFeatures, embed, herd, mmd2
from dsco_hub.models import DiffusionPrior, check_sampler_args, eta_generators, initial_noise, step_noise


@dataclass
class NOptTrace:
    """What one class's optimization did: the MMD^2 at the first and last optimized iteration, and the count."""

    first_mmd2: float | None
    last_mmd2: float | None
    iterations: int


@dataclass
class NOptClass:
    """One class of a NOpt batch (`nopt_sample_classes`).

    Attributes:
        class_id (`int`): the model's class id, in `[0, K)`.
        seeds (sequence of `int`): one seed per synthetic image (derive them from `(run seed, class, slot)`).
        targets (`torch.Tensor`): `(M, *prior.sample_shape)` target samples in the denoiser's space, `M >= 2`.
        phi_seed (`int`): seed of the class's feature maps; iteration `i` of DDIM step `s` uses
            `RandomFeatures(seed=derive_seed(phi_seed, s, i))`.
    """

    class_id: int
    seeds: Sequence[int]
    targets: torch.Tensor
    phi_seed: int = 0


def nopt_sample(
    prior: DiffusionPrior,
    class_id: int,
    seeds: Sequence[int],
    targets: torch.Tensor,
    cfg: NOptConfig,
    sampler: SamplerConfig = SamplerConfig(),
    phi_seed: int = 0,
    progress: Callable[[int], None] | None = None,
    snapshots: Sequence[dict[str, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, NOptTrace]:
    """Sample the `n = len(seeds)` synthetic images of one class with noise optimization.

    Args:
        prior (`DiffusionPrior`): the class-conditional model.
        class_id (`int`): the model's class id, in `[0, K)`.
        seeds (sequence of `int`): one seed per image (derive them from `(run seed, class, slot)`).
        targets (`torch.Tensor`): `(M, *prior.sample_shape)` target samples in the denoiser's space (pixels in
            `[-1, 1]`, or latents from `prior.encode`), `M >= 2`: real images of the class, or a pool of the
            model's own samples in data-free mode.
        cfg (`NOptConfig`): window (`cfg.window_for(n)`: all steps for up to `config.FULL_WINDOW_MAX_N` (3)
            images, the first half for more), iterations, step length, kernel, feature width, and the targets
            embedded per iteration (`cfg.batch_for(n)`: a subset drawn with the feature map's seed, or all M).
        sampler (`SamplerConfig`, *optional*, defaults to `SamplerConfig()`): the DDIM sampler, the same settings
            as `models.sample`'s: `steps`, `guidance_scale`, and `eta` in `[0, 1]` (the step noise of image j
            comes from the same per-image generator as in `models.sample`, so `cfg.iters == 0` reproduces it);
            `batch_size` is the images per denoiser call. With `n > batch_size` the MMD gradient takes two passes
            (features of all n without autograd, then per-batch vector-Jacobian products through the denoiser),
            so memory is bounded by the batch, not by n; the result equals the one-pass gradient up to float
            rounding.
        phi_seed (`int`, *optional*, defaults to 0): seed of the feature maps; iteration `i` of DDIM step `s`
            uses `RandomFeatures(seed=derive_seed(phi_seed, s, i))`.
        progress (`callable`, *optional*): called with 1 after each DDIM step.
        snapshots (sequence of `dict`, *optional*): with `cfg.features == "trained"`, the trunks of
            `kernels.train_feature_snapshots` (trained in the denoiser's space, width `cfg.width`).

    Returns:
        `tuple[torch.Tensor, NOptTrace]`: images `(n, C_img, H_img, W_img)` float32 in `[-1, 1]` on CPU, and
        the trace of the optimization.

    Raises:
        ConfigError: invalid settings, fewer than 2 targets, or targets not in the denoiser's shape.
    """
    images, traces = nopt_sample_classes(
        prior,
        [NOptClass(class_id, seeds, targets, phi_seed)],
        cfg,
        sampler,
        progress=progress,
        snapshots=snapshots,
    )
    return images[0], traces[0]


def nopt_sample_classes(
    prior: DiffusionPrior,
    classes: Sequence[NOptClass],
    cfg: NOptConfig,
    sampler: SamplerConfig = SamplerConfig(),
    progress: Callable[[int], None] | None = None,
    snapshots: Sequence[dict[str, torch.Tensor]] | None = None,
) -> tuple[list[torch.Tensor], list[NOptTrace]]:
    """`nopt_sample` for several classes at once: their images share the denoiser's batches (a GPU's batch fills
    at small IPC), while each class keeps its own targets, feature maps and MMD.

    The classes' MMD^2 terms depend on disjoint images, so the gradient of their sum is each class's own
    gradient: the images equal those of one `nopt_sample` call per class up to float rounding. The denoiser
    rounds a row slightly differently in another batch (~1e-6 on the CPU), and NOpt's normalised steps amplify
    that: on the tests' tiny models, a mean of 4e-3 in `[-1, 1]` (0.08 on one pixel) after 8 iterations (two
    classes, `test_nopt.py`), and 1.4e-2 to 3.6e-2 on a pixel (up to about five uint8 levels) with batches of 4
    against 64 over three classes, depending on the thread count. So which classes share a call is part of the
    settings (`distributed.plan_units`), never of the launch, and the bytes of a set do not depend on the number
    of processes.

    Args:
        prior (`DiffusionPrior`): the class-conditional model.
        classes (sequence of `NOptClass`): the classes, each with `n_k >= 1` seeds.
        cfg, sampler, progress, snapshots: as in `nopt_sample` (`sampler.batch_size` counts the images of all
            classes together; windows and target batches follow each class's own `cfg.window_for(n_k)` and
            `cfg.batch_for(n_k)`: a class outside its window keeps its x_t while the others' are optimized).

    Returns:
        `tuple[list[torch.Tensor], list[NOptTrace]]`: per class, images `(n_k, C_img, H_img, W_img)` float32 in
        `[-1, 1]` on CPU, and the trace of its optimization.

    Raises:
        ConfigError: invalid settings, a class with fewer than 2 targets, targets not in the denoiser's shape, or
            `cfg.features == "trained"` without `snapshots`.
    """
    cfg.validate()
    check_sampler_args(prior, sampler)
    if cfg.features == "trained" and not snapshots:
        raise ConfigError("--nopt-features=trained needs the trained snapshots (kernels.train_feature_snapshots).")
    for c in classes:
        if len(c.targets) < 2:
            raise ConfigError(
                f"class {c.class_id} has {len(c.targets)} target image(s); NOpt needs at least 2 (--nopt-targets)."
            )
        if tuple(c.targets.shape[1:]) != tuple(prior.sample_shape):
            raise ConfigError(
                f"targets have shape {tuple(c.targets.shape[1:])} but the denoiser works on {prior.sample_shape}; "
                "encode them with prior.encode."
            )
    device = prior.device
    scheduler = DDIMScheduler.from_config(prior.scheduler.config)
    scheduler.set_timesteps(sampler.steps)
    guidance_scale, batch_size = sampler.guidance_scale, sampler.batch_size
    seeds = [seed for c in classes for seed in c.seeds]
    sizes = [len(c.seeds) for c in classes]
    firsts = [sum(sizes[:k]) for k in range(len(sizes))]  # first row of each class
    # optimized DDIM steps per class, from its own n (`cfg.window_for`): a class outside its window keeps its x_t
    optimized = [math.ceil(cfg.window_for(n) * sampler.steps) if cfg.iters else 0 for n in sizes]
    labels = torch.tensor([c.class_id for c in classes for _ in c.seeds], dtype=torch.long, device=device)
    targets = [c.targets.to(device) for c in classes]
    x = initial_noise(prior.sample_shape, seeds).to(device)  # (sum n_k, C, H, W), class by class
    eta_gens = eta_generators(seeds, sampler.eta)
    traces = [NOptTrace(None, None, 0) for _ in classes]
    for s, t in enumerate(scheduler.timesteps):
        alpha = scheduler.alphas_cumprod[int(t)].to(device)
        # Noise optimization: normalised gradient steps on x_t, then back to its per-image norm
        active = [s < steps for steps in optimized]
        for i in range(cfg.iters if any(active) else 0):
            phis, target_features = [], []
            for c, m, n in zip(classes, targets, sizes):
                seed = derive_seed(c.phi_seed, s, i)  # the feature map's weights and the target subset
                phis.append(feature_map(cfg, prior.sample_shape[0], seed, snapshots).to(device))
                target_features.append(embed(phis[-1], _target_batch(m, cfg.batch_for(n), seed)))  # (<= M, D)
            features = partial(_x0_features, prior, phis, firsts, sizes, t, alpha, labels, guidance_scale)
            losses, grad = _mmd_gradient(features, x.detach(), sizes, target_features, cfg.kernel, batch_size)
            with torch.no_grad():
                norm = x.flatten(1).norm(dim=1)[:, None, None, None]  # (n, 1, 1, 1)
                g_norm = grad.flatten(1).norm(dim=1)[:, None, None, None]
                stepped = x - cfg.lr * norm * grad / g_norm.clamp_min(1e-30)
                stepped = stepped * norm / stepped.flatten(1).norm(dim=1)[:, None, None, None]
                moves = _resolvable(cfg.lr * norm * g_norm, losses, sizes) & _rows(active, sizes, device)
                x = torch.where(moves, stepped, x)  # picks values as they are: no host sync, no rounding
            for trace, loss, on in zip(traces, losses.tolist(), active):
                if on:
                    trace.first_mmd2 = loss if trace.first_mmd2 is None else trace.first_mmd2
                    trace.last_mmd2 = loss
                    trace.iterations += 1
        # The DDIM step, without gradients
        with torch.no_grad():
            eps = torch.cat(
                [
                    prior.predict_noise(xb, t, yb, guidance_scale)
                    for xb, yb in zip(x.split(batch_size), labels.split(batch_size))
                ]
            )
            x = scheduler.step(eps, t, x, eta=sampler.eta, variance_noise=step_noise(eta_gens, x)).prev_sample
        if progress is not None:
            progress(1)
    with torch.no_grad():
        images = torch.cat([prior.decode(xb).cpu() for xb in x.split(batch_size)])
    return list(images.split(sizes)), traces


def feature_map(
    cfg: NOptConfig, channels: int, seed: int, snapshots: Sequence[dict[str, torch.Tensor]] | None = None
) -> nn.Module:
    """NOpt's feature map for one iteration, in `cfg.features`' space.

    "random": `RandomFeatures(channels, seed, cfg.width)`; "ensemble": `cfg.ensemble` such maps concatenated
    (`EnsembleFeatures`); "trained": the snapshot `seed mod len(snapshots)` of the trained trunks (`TrunkFeatures`),
    so each iteration draws one training stage, as improved distribution matching does.

    Args:
        cfg (`NOptConfig`): the feature space and width.
        channels (`int`): input channels of the denoiser's space.
        seed (`int`): the iteration's seed (`derive_seed(phi_seed, step, iteration)`).
        snapshots (sequence of `dict`, *optional*): trunk `state_dict`s, required for "trained".

    Returns:
        `nn.Module`: frozen; `(B, channels, H, W)` -> `(B, D)`.
    """
    if cfg.features == "ensemble":
        return EnsembleFeatures(channels, seed, cfg.ensemble, width=cfg.width)
    if cfg.features == "trained":
        return TrunkFeatures(channels, snapshots[seed % len(snapshots)], width=cfg.width)
    return RandomFeatures(channels, seed, width=cfg.width)


def select_synthetic(
    candidates: torch.Tensor,
    targets: torch.Tensor,
    num: int,
    cfg: NOptConfig,
    seed: int,
    snapshots: Sequence[dict[str, torch.Tensor]] | None = None,
) -> list[int]:
    """Generate-then-select: the `num` of NOpt's `candidates` whose set best matches the targets.

    Kernel herding (Chen, Welling and Smola, UAI 2010) in NOpt's own feature space: one fixed map drawn with `seed`
    (for "trained", the last, fully trained snapshot), greedy MMD^2 minimisation of the picked set to the targets.

    Args:
        candidates (`torch.Tensor`): `(K n, C, H, W)` synthetic images in the denoiser's space.
        targets (`torch.Tensor`): `(M, C, H, W)` the class's targets in the same space.
        num (`int`): images to keep, in `[0, K n]`.
        cfg (`NOptConfig`): the feature space (`features`, `width`, `ensemble`) and the kernel.
        seed (`int`): the selection map's seed.
        snapshots (sequence of `dict`, *optional*): the trained trunks, for "trained".

    Returns:
        `list[int]`: `num` distinct indices into `candidates`, in pick order.
    """
    last = [snapshots[-1]] if cfg.features == "trained" else None
    phi = feature_map(cfg, candidates.shape[1], seed, last).to(candidates.device)
    return herd(embed(phi, candidates), embed(phi, targets), num, kernel=cfg.kernel)


def _resolvable(change: torch.Tensor, losses: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """`(sum n_k, 1, 1, 1)` bool: whether a row's normalised step changes its class's MMD^2 by more than float32 can
    resolve, to first order (`change` = step length x gradient norm, `(sum n_k, 1, 1, 1)`; `losses` `(K,)`).

    Where the kernel saturates (images far from every target), the MMD^2 is flat: its gradient is float noise (1e-19
    and below), and a normalised step would turn that noise into a full step in a random direction. Such a row
    keeps its x_t. Real runs' gradients resolve by many orders of magnitude, so they always step.
    """
    per_row = losses.to(change.device).abs().repeat_interleave(torch.tensor(sizes, device=change.device))
    eps = torch.finfo(torch.float32).eps
    return change > eps * per_row.clamp_min(eps)[:, None, None, None]


def _rows(active: Sequence[bool], sizes: Sequence[int], device) -> torch.Tensor:
    """`(sum n_k, 1, 1, 1)` bool: whether each row's class is `active` (class k owns `sizes[k]` consecutive rows)."""
    flags = torch.tensor([on for on, n in zip(active, sizes) for _ in range(n)], device=device)
    return flags[:, None, None, None]


def _target_batch(targets: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """A seeded random subset of `size` rows of `targets` `(M, ...)` (all of them when `size` is 0 or >= M)."""
    if size == 0 or size >= len(targets):
        return targets
    rows = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))[:size]
    return targets[rows.to(targets.device)]


def _x0_features(
    prior,
    phis,
    firsts: list[int],
    sizes: list[int],
    t,
    alpha,
    labels: torch.Tensor,
    guidance_scale: float,
    x_t: torch.Tensor,
    start: int,
) -> torch.Tensor:
    """`phi_k(x0_hat(x_t))` `(b, D)` for the rows `[start, start + b)` of the batch: the x0 prediction of one guided
    denoiser call at timestep `t`, each row embedded by its class's feature map (class k owns the `sizes[k]`
    consecutive rows from `firsts[k]`)."""
    eps = prior.predict_noise(x_t, t, labels[start : start + len(x_t)], guidance_scale)
    x0 = ((x_t - (1 - alpha).sqrt() * eps) / alpha.sqrt()).float()
    parts, row = [], start
    for phi, first, size in zip(phis, firsts, sizes):  # the classes overlapping these rows
        lo, hi = max(first, row), min(first + size, start + len(x_t))
        if lo < hi:
            parts.append(phi(x0[lo - start : hi - start]))
            row = hi
    return torch.cat(parts)


def _mmd_gradient(
    features: Callable[[torch.Tensor, int], torch.Tensor],
    x: torch.Tensor,
    sizes: list[int],
    target_features: list[torch.Tensor],
    kernel: str,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class's `MMD^2(features, target_features[k])` `(len(sizes),)` and the gradient of their sum with
    respect to `x` `(sum n_k, C, H, W)`.

    One pass when `len(x) <= batch_size`; otherwise the features of all images without autograd, the
    gradient of the MMDs with respect to those features, then one vector-Jacobian product per batch
    (each image's features depend on that image only, so the batches are independent).
    """

    def mmds(feats: torch.Tensor) -> torch.Tensor:
        return torch.stack([mmd2(f, tf, kernel) for f, tf in zip(feats.split(sizes), target_features)])

    if len(x) <= batch_size:
        x = x.requires_grad_(True)
        losses = mmds(features(x, 0))
        (grad,) = torch.autograd.grad(losses.sum(), x)
        return losses.detach(), grad
    with torch.no_grad():
        feats = torch.cat([features(xb, b * batch_size) for b, xb in enumerate(x.split(batch_size))])
    feats.requires_grad_(True)
    losses = mmds(feats)
    (feats_grad,) = torch.autograd.grad(losses.sum(), feats)
    grads = []
    for b, (xb, gb) in enumerate(zip(x.split(batch_size), feats_grad.split(batch_size))):
        xb = xb.detach().requires_grad_(True)
        grads.append(torch.autograd.grad(features(xb, b * batch_size), xb, grad_outputs=gb)[0])
    return losses.detach(), torch.cat(grads)
