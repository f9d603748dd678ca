"""NOpt: noise optimization during guided DDIM sampling, the synthesis step of DsCo.

Liu, Liu, Li and Hu, "Beyond Dataset Distillation: Lossless Dataset Concentration via
Diffusion-Assisted Distribution Alignment", arXiv 2603.27987, 2026 (Fig. 2), as specified in
`docs/method.md` §3. For the `n` synthetic images of one class, at each DDIM step inside the
optimization window, the noisy samples `x_t` take normalised gradient steps that lower

    MMD^2( phi(x0_hat(x_t)), phi(targets) )

where `x0_hat` is the x0 prediction of one guided denoiser call (memory does not grow with the
number of steps), `phi` is a randomly initialised ConvNet-3 resampled at every iteration (Zhao
and Bilen, "Dataset Condensation with Distribution Matching", WACV 2023) applied in the
denoiser's own space (pixels, or VAE latents), and the kernel is a sum of Gaussians at median-
heuristic bandwidths. After each update `x_t` is rescaled to its previous per-image norm so it
stays on the noise level's typical shell. The DDIM step itself runs without gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from diffusers import DDIMScheduler

from dsco_hub.config import NOptConfig, derive_seed
from dsco_hub.errors import ConfigError
from dsco_hub.kernels import RandomFeatures, embed, mmd2
from dsco_hub.models import DiffusionPrior, check_sampler_args, eta_generators, initial_noise, step_noise


@dataclass
class NOptTrace:
    """What one class's optimization did: the MMD^2 at the first and last optimized iteration, and the count."""

    first_mmd2: float | None
    last_mmd2: float | None
    iterations: int


def nopt_sample(
    prior: DiffusionPrior,
    class_id: int,
    seeds: Sequence[int],
    targets: torch.Tensor,
    cfg: NOptConfig,
    steps: int = 25,
    guidance_scale: float = 2.0,
    eta: float = 0.0,
    phi_seed: int = 0,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, NOptTrace]:
    """Sample the `n = len(seeds)` synthetic images of one class with noise optimization.

    Args:
        prior (`DiffusionPrior`): the class-conditional model.
        class_id (`int`): the model's class id, in `[0, K)`.
        seeds (sequence of `int`): one seed per image (derive them from `(run seed, class, slot)`).
        targets (`torch.Tensor`): `(M, *prior.sample_shape)` target samples in the denoiser's space (pixels in
            `[-1, 1]`, or latents from `prior.encode`), `M >= 2`: real images of the class, or a pool of the
            model's own samples in data-free mode.
        cfg (`NOptConfig`): window, iterations, step length, kernel, feature width, and the targets embedded per
            iteration (`cfg.batch_for(n)`: a subset drawn with the feature map's seed, or all M).
        steps (`int`, *optional*, defaults to 25): DDIM steps.
        guidance_scale (`float`, *optional*, defaults to 2.0): classifier-free guidance scale.
        eta (`float`, *optional*, defaults to 0.0): DDIM stochasticity in `[0, 1]`; the step noise of image j
            comes from the same per-image generator as in `models.sample`, so `cfg.iters == 0` reproduces it.
        phi_seed (`int`, *optional*, defaults to 0): seed of the feature maps; iteration `i` of DDIM step `s`
            uses `RandomFeatures(seed=derive_seed(phi_seed, s, i))`.
        batch_size (`int`, *optional*, defaults to 64): images per denoiser call. With `n > batch_size` the
            MMD gradient takes two passes (features of all n without autograd, then per-batch vector-Jacobian
            products through the denoiser), so memory is bounded by the batch, not by n; the result equals
            the one-pass gradient up to float rounding.
        progress (`callable`, *optional*): called with 1 after each DDIM step.

    Returns:
        `tuple[torch.Tensor, NOptTrace]`: images `(n, C_img, H_img, W_img)` float32 in `[-1, 1]` on CPU, and
        the trace of the optimization.

    Raises:
        ConfigError: invalid settings, fewer than 2 targets, or targets not in the denoiser's shape.
    """
    cfg.validate()
    check_sampler_args(prior, steps, guidance_scale, eta)
    if len(targets) < 2:
        raise ConfigError(
            f"class {class_id} has {len(targets)} target image(s); NOpt needs at least 2 (--nopt-targets)."
        )
    if tuple(targets.shape[1:]) != tuple(prior.sample_shape):
        raise ConfigError(
            f"targets have shape {tuple(targets.shape[1:])} but the denoiser works on {prior.sample_shape}; "
            "encode them with prior.encode."
        )
    device = prior.device
    scheduler = DDIMScheduler.from_config(prior.scheduler.config)
    scheduler.set_timesteps(steps)
    optimized_steps = math.ceil(cfg.window * steps) if cfg.iters else 0
    labels = torch.full((len(seeds),), class_id, dtype=torch.long, device=device)
    targets = targets.to(device)
    x = initial_noise(prior.sample_shape, seeds).to(device)  # (n, C, H, W)
    eta_gens = eta_generators(seeds, eta)
    target_batch = cfg.batch_for(len(seeds))
    first = last = None
    count = 0
    for s, t in enumerate(scheduler.timesteps):
        alpha = scheduler.alphas_cumprod[int(t)].to(device)
        # Noise optimization: normalised gradient steps on x_t, then back to its per-image norm
        for i in range(cfg.iters if s < optimized_steps else 0):
            seed = derive_seed(phi_seed, s, i)  # the feature map's weights and the target subset
            phi = RandomFeatures(prior.sample_shape[0], seed, width=cfg.width).to(device)
            target_features = embed(phi, _target_batch(targets, target_batch, seed))  # (min(M, batch), D)
            features = partial(_x0_features, prior, phi, t, alpha, class_id, guidance_scale)
            loss, grad = _mmd_gradient(features, x.detach(), target_features, cfg.kernel, batch_size)
            with torch.no_grad():
                norm = x.flatten(1).norm(dim=1)[:, None, None, None]  # (n, 1, 1, 1)
                g_norm = grad.flatten(1).norm(dim=1)[:, None, None, None].clamp_min(1e-12)
                x = x - cfg.lr * norm * grad / g_norm
                x = x * norm / x.flatten(1).norm(dim=1)[:, None, None, None]
            first = loss.item() if first is None else first
            last = loss.item()
            count += 1
        # The DDIM step, without gradients
        with torch.no_grad():
            eps = torch.cat(
                [prior.predict_noise(xb, t, labels[: len(xb)], guidance_scale) for xb in x.split(batch_size)]
            )
            x = scheduler.step(eps, t, x, eta=eta, variance_noise=step_noise(eta_gens, x)).prev_sample
        if progress is not None:
            progress(1)
    with torch.no_grad():
        images = torch.cat([prior.decode(xb).cpu() for xb in x.split(batch_size)])
    return images, NOptTrace(first_mmd2=first, last_mmd2=last, iterations=count)


def _target_batch(targets: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """A seeded random subset of `size` rows of `targets` `(M, ...)` (all of them when `size` is 0 or >= M)."""
    if size == 0 or size >= len(targets):
        return targets
    rows = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))[:size]
    return targets[rows.to(targets.device)]


def _x0_features(prior, phi, t, alpha, class_id: int, guidance_scale: float, x_t: torch.Tensor) -> torch.Tensor:
    """`phi(x0_hat(x_t))` `(n, D)`: the x0 prediction of one guided denoiser call at timestep `t`, embedded."""
    labels = torch.full((len(x_t),), class_id, dtype=torch.long, device=x_t.device)
    eps = prior.predict_noise(x_t, t, labels, guidance_scale)
    return phi(((x_t - (1 - alpha).sqrt() * eps) / alpha.sqrt()).float())


def _mmd_gradient(
    features: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target_features: torch.Tensor,
    kernel: str,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`MMD^2(features(x), target_features)` and its gradient with respect to `x` `(n, C, H, W)`.

    One pass when `n <= batch_size`; otherwise the features of all n images without autograd, the
    gradient of the MMD with respect to those features, then one vector-Jacobian product per batch
    (each image's features depend on that image only, so the batches are independent).
    """
    if len(x) <= batch_size:
        x = x.requires_grad_(True)
        loss = mmd2(features(x), target_features, kernel)
        (grad,) = torch.autograd.grad(loss, x)
        return loss.detach(), grad
    with torch.no_grad():
        feats = torch.cat([features(xb) for xb in x.split(batch_size)])
    feats.requires_grad_(True)
    loss = mmd2(feats, target_features, kernel)
    (feats_grad,) = torch.autograd.grad(loss, feats)
    grads = []
    for xb, gb in zip(x.split(batch_size), feats_grad.split(batch_size)):
        xb = xb.detach().requires_grad_(True)
        grads.append(torch.autograd.grad(features(xb), xb, grad_outputs=gb)[0])
    return loss.detach(), torch.cat(grads)
