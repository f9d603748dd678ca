"""What NOpt, herding and doping share: random ConvNet feature maps and the MMD between feature sets.

Feature maps follow distribution-matching dataset condensation (Zhao and Bilen, "Dataset
Condensation with Distribution Matching", WACV 2023): embeddings of a *randomly initialised*
ConvNet-3 (3 x [conv 3x3, instance norm, ReLU, 2x2 average pool]); or several of them at once
(`EnsembleFeatures`), or trunks trained on the real images, snapshot after each epoch (improved
distribution matching, Zhao et al., CVPR 2023: `train_feature_snapshots`, `TrunkFeatures`). The MMD is the biased
(V-statistic) estimate of Gretton et al., "A Kernel Two-Sample Test", JMLR 2012, with a sum of
Gaussian kernels whose bandwidths are set by the median heuristic, or a linear kernel (mean
matching). Kernel herding (Chen, Welling and Smola, UAI 2010) greedily picks the points that
most lower that MMD.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

KERNEL_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)  # bandwidths as multiples of the median squared distance


def conv_trunk(channels: int, width: int = 128, depth: int = 3) -> nn.Sequential:
    """The ConvNet-3 trunk of the condensation literature: `depth` x [conv 3x3, instance norm, ReLU, avg pool 2].

    Instance norm is `GroupNorm(width, width)` as in the DC/DSA/DM code. Input `(B, channels, H, W)`, output
    `(B, width, H / 2**depth, W / 2**depth)` (floored at each pooling).
    """
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [
            nn.Conv2d(channels if i == 0 else width, width, kernel_size=3, padding=1),
            nn.GroupNorm(width, width, affine=True),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2),
        ]
    return nn.Sequential(*layers)


class RandomFeatures(nn.Module):
    """A randomly initialised ConvNet-3 trunk used as a feature map `phi`.

    Args:
        channels (`int`): input channels.
        seed (`int`): initialisation seed (the same seed gives the same map on every machine).
        width (`int`, *optional*, defaults to 128): conv channels.
        depth (`int`, *optional*, defaults to 3): conv blocks; the input side must be at least `2**depth`.

    Input `(B, channels, H, W)` (any range, typically `[-1, 1]`), output `(B, width * (H // 2**depth) ** 2)`.
    Weights do not require gradients, but gradients flow to the input (NOpt differentiates through it).
    """

    def __init__(self, channels: int, seed: int, width: int = 128, depth: int = 3):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.trunk = conv_trunk(channels, width, depth)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features `(B, D)` of images `(B, channels, H, W)`."""
        return self.trunk(x).flatten(1)  # (B, width * h * w)


class EnsembleFeatures(nn.Module):
    """Several random ConvNet-3 feature maps at once: their features concatenated.

    With the Gaussian kernel on the concatenation, the kernel is the product of the maps' kernels, so the MMD
    compares the sets in all of the maps together: one draw of `num` maps per NOpt iteration instead of one.

    Args:
        channels (`int`): input channels.
        seed (`int`): map `j` is `RandomFeatures(channels, (seed * 1000 + j) mod (2**63 - 1))`, so the same seed
            gives the same maps.
        num (`int`): number of maps, at least 1.
        width (`int`, *optional*, defaults to 128): conv channels of each map.

    Input `(B, channels, H, W)`, output `(B, num * width * (H // 8) ** 2)`.
    """

    def __init__(self, channels: int, seed: int, num: int, width: int = 128):
        super().__init__()
        self.maps = nn.ModuleList(
            RandomFeatures(channels, (seed * 1000 + j) % (2**63 - 1), width=width) for j in range(num)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features `(B, num * D)` of images `(B, channels, H, W)`."""
        return torch.cat([m(x) for m in self.maps], dim=1)


class TrunkFeatures(nn.Module):
    """A trained ConvNet-3 trunk (one snapshot of `train_feature_snapshots`) used as a fixed feature map.

    Args:
        channels (`int`): input channels.
        state (`dict[str, torch.Tensor]`): the trunk's `state_dict`.
        width (`int`, *optional*, defaults to 128): conv channels (must match `state`).

    Input `(B, channels, H, W)`, output `(B, width * (H // 8) ** 2)`; weights frozen, gradients reach the input.
    """

    def __init__(self, channels: int, state: dict[str, torch.Tensor], width: int = 128):
        super().__init__()
        self.trunk = conv_trunk(channels, width)
        self.trunk.load_state_dict(state)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features `(B, D)` of images `(B, channels, H, W)`."""
        return self.trunk(x).flatten(1)


def train_feature_snapshots(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    epochs: int,
    seed: int,
    width: int = 128,
    batch_size: int = 128,
    lr: float = 0.01,
    device: torch.device | str = "cpu",
) -> list[dict[str, torch.Tensor]]:
    """Train a ConvNet-3 classifier on real images and keep its trunk after each epoch (snapshots).

    The feature maps of improved distribution matching (Zhao et al., "Improved Distribution Matching for Dataset
    Condensation", CVPR 2023, arXiv 2307.09742): instead of random networks only, networks at several stages of
    training on the real data, whose features separate the classes. SGD with momentum 0.9, weight decay 5e-4,
    cosine learning rate, a seeded batch order; no augmentation.

    Args:
        images (`torch.Tensor`): `(N, C, H, W)` float in the denoiser's space (e.g. `[-1, 1]` pixels).
        labels (`torch.Tensor`): `(N,)` int64 in `[0, num_classes)`.
        num_classes (`int`): number of classes `K`.
        epochs (`int`): epochs, at least 1; one snapshot per epoch.
        seed (`int`): initialisation and batch order.
        width (`int`, *optional*, defaults to 128): conv channels.
        batch_size (`int`, *optional*, defaults to 128): images per step.
        lr (`float`, *optional*, defaults to 0.01): peak learning rate.
        device (`torch.device` or `str`, *optional*, defaults to "cpu"): where to train (snapshots come back on the
            CPU).

    Returns:
        `list[dict[str, torch.Tensor]]`: `epochs` trunk `state_dict`s (CPU, float32), in training order.

    Raises:
        ValueError: `epochs < 1`, or `images` and `labels` of different lengths.
    """
    if epochs < 1 or len(images) != len(labels):
        raise ValueError(f"train_feature_snapshots: epochs={epochs} (>= 1) and {len(images)} images vs {len(labels)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trunk = conv_trunk(images.shape[1], width)
        with torch.no_grad():
            dim = trunk(images[:1].float()).flatten(1).shape[1]
        head = nn.Linear(dim, num_classes)
    model = nn.Sequential(trunk, nn.Flatten(), head).to(device)
    steps_per_epoch = -(-len(images) // batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    snapshots = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            rows = order[start : start + batch_size]
            x, y = images[rows].float().to(device), labels[rows].to(device)
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        snapshots.append({k: v.detach().float().cpu().clone() for k, v in trunk.state_dict().items()})
    return snapshots


@torch.no_grad()
def embed(features: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Apply a feature map in batches without gradients: `(N, C, H, W)` -> `(N, D)` float32."""
    outs = [features(images[i : i + batch_size].float()) for i in range(0, len(images), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances `(n, m)` between rows of `a` `(n, D)` and `b` `(m, D)`, clamped at 0."""
    return (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1)[None, :] - 2.0 * a @ b.T).clamp_min(0.0)


def median_bandwidth(*feature_sets: torch.Tensor, max_points: int = 1000) -> torch.Tensor:
    """Median heuristic: the median of squared pairwise distances over (at most `max_points` of) the pooled sets.

    Returns a scalar tensor (detached), at least 1e-12.
    """
    pooled = torch.cat([f.detach() for f in feature_sets])
    if len(pooled) > max_points:  # evenly spaced subsample: deterministic, no generator needed
        pooled = pooled[torch.linspace(0, len(pooled) - 1, max_points).long()]
    d = sq_dists(pooled, pooled)
    off_diagonal = d[~torch.eye(len(pooled), dtype=torch.bool)]
    return off_diagonal.median().clamp_min(1e-12) if off_diagonal.numel() else torch.tensor(1.0)


def kernel_matrix(
    a: torch.Tensor,
    b: torch.Tensor,
    kernel: str = "gaussian",
    bandwidth: torch.Tensor | float | None = None,
    scales: Sequence[float] = KERNEL_SCALES,
) -> torch.Tensor:
    """Kernel matrix `(n, m)` between feature rows `a` `(n, D)` and `b` `(m, D)`.

    Args:
        kernel (`str`, *optional*, defaults to "gaussian"): "gaussian" = `sum_s exp(-d^2 / (s * bandwidth))`
            over `scales`; "linear" = `a @ b.T / D`.
        bandwidth (`float` or tensor, *optional*): the median squared distance; computed from `a` and `b`
            when None.

    Raises:
        ValueError: unknown `kernel`.
    """
    if kernel == "linear":
        return a @ b.T / a.shape[1]
    if kernel != "gaussian":
        raise ValueError(f"kernel={kernel!r} is unknown; use 'gaussian' or 'linear'.")
    if bandwidth is None:
        bandwidth = median_bandwidth(a, b)
    d = sq_dists(a, b)
    return sum(torch.exp(-d / (s * bandwidth)) for s in scales)


def mmd2(
    x: torch.Tensor, y: torch.Tensor, kernel: str = "gaussian", bandwidth: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Biased squared maximum mean discrepancy `MMD^2(x, y)` between feature sets (Gretton et al., 2012).

    Args:
        x (`torch.Tensor`): `(n, D)` features (gradients flow through it).
        y (`torch.Tensor`): `(m, D)` features.
        kernel (`str`, *optional*, defaults to "gaussian"): see `kernel_matrix`.
        bandwidth (*optional*): Gaussian bandwidth (median squared distance of `x` and `y` when None).

    Returns:
        `torch.Tensor`: a scalar >= 0 (up to rounding); exactly 0 when `x` and `y` are the same set.
    """
    if kernel == "gaussian" and bandwidth is None:
        bandwidth = median_bandwidth(x, y)
    kxx = kernel_matrix(x, x, kernel, bandwidth).mean()
    kyy = kernel_matrix(y, y, kernel, bandwidth).mean()
    kxy = kernel_matrix(x, y, kernel, bandwidth).mean()
    return kxx + kyy - 2.0 * kxy


@torch.no_grad()
def herd(
    candidates: torch.Tensor,
    targets: torch.Tensor,
    num: int,
    start: torch.Tensor | None = None,
    kernel: str = "gaussian",
) -> list[int]:
    """Kernel herding: greedily pick `num` candidates minimising `MMD^2(start ∪ picked, targets)`.

    Each step adds the candidate `c` that minimises `(A + 2 s[c] + k(c, c)) / (m + 1)^2 - 2 (B + t[c]) / (m + 1)`,
    where `A` sums the kernel over the current set, `s[c]` sums `k(c, .)` over it, `t[c]` is the mean of
    `k(c, .)` over the targets and `B` sums `t` over the current set (Chen, Welling and Smola, 2010). With
    `start` (the synthetic images of a class) this is doping's selection: real images go where the synthetic
    ones cover the class worst (`docs/method.md` §5).

    Args:
        candidates (`torch.Tensor`): `(N, D)` features of the selectable images.
        targets (`torch.Tensor`): `(M, D)` features of the distribution to match.
        num (`int`): how many to pick, in `[0, N]`.
        start (`torch.Tensor`, *optional*): `(S, D)` features already in the set.
        kernel (`str`, *optional*, defaults to "gaussian").

    Returns:
        `list[int]`: `num` distinct candidate indices, in pick order (deterministic; ties go to the lowest index).

    Raises:
        ValueError: `num` outside `[0, N]`.
    """
    n = len(candidates)
    if not 0 <= num <= n:
        raise ValueError(f"cannot pick num={num} of {n} candidates; num must be in [0, {n}].")
    start = candidates[:0] if start is None else start
    bandwidth = median_bandwidth(candidates, targets, start) if kernel == "gaussian" else None
    t = kernel_matrix(candidates, targets, kernel, bandwidth).mean(1)  # (N,)
    self_k = kernel_matrix(candidates[:1], candidates[:1], kernel, bandwidth)[0, 0] if kernel == "gaussian" else None
    diag = (
        torch.full((n,), float(self_k))
        if self_k is not None
        else (candidates * candidates).sum(1) / candidates.shape[1]
    )
    s = kernel_matrix(candidates, start, kernel, bandwidth).sum(1) if len(start) else torch.zeros(n)  # (N,)
    a = kernel_matrix(start, start, kernel, bandwidth).sum() if len(start) else torch.tensor(0.0)
    b = kernel_matrix(start, targets, kernel, bandwidth).mean(1).sum() if len(start) else torch.tensor(0.0)
    m = len(start)
    taken = torch.zeros(n, dtype=torch.bool)
    picks: list[int] = []
    for _ in range(num):
        score = (a + 2 * s + diag) / (m + 1) ** 2 - 2 * (b + t) / (m + 1)
        score[taken] = float("inf")
        c = int(torch.argmin(score))
        picks.append(c)
        taken[c] = True
        k_c = kernel_matrix(candidates, candidates[c : c + 1], kernel, bandwidth)[:, 0]  # (N,)
        a = a + 2 * s[c] + diag[c]
        b = b + t[c]
        s = s + k_c
        m += 1
    return picks
