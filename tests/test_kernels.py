"""Feature maps, MMD and kernel herding."""

from __future__ import annotations

import pytest
import torch

from dsco_hub.kernels import RandomFeatures, herd, kernel_matrix, median_bandwidth, mmd2, sq_dists


def _points(n, d=6, shift=0.0, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) + shift


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_mmd_zero_for_identical_sets_and_grows_with_shift(kernel):
    x = _points(40)
    assert mmd2(x, x, kernel).abs().item() < 1e-6
    bw = median_bandwidth(x, x)
    values = [
        mmd2(x, _points(40, shift=s, seed=1), kernel, bandwidth=bw if kernel == "gaussian" else None).item()
        for s in (0.0, 0.5, 1.0, 2.0)
    ]
    assert values == sorted(values) and values[-1] > 10 * max(values[0], 1e-4)


def test_mmd_gradient_matches_finite_differences():
    x = _points(5, d=3).double().requires_grad_(True)
    y = _points(7, d=3, shift=0.3, seed=2).double()
    bw = median_bandwidth(x, y)  # fixed bandwidth: the loss is then a smooth function of x
    loss = mmd2(x, y, bandwidth=bw)
    (grad,) = torch.autograd.grad(loss, x)
    eps = 1e-6
    numeric = torch.zeros_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            plus, minus = x.detach().clone(), x.detach().clone()
            plus[i, j] += eps
            minus[i, j] -= eps
            numeric[i, j] = (mmd2(plus, y, bandwidth=bw) - mmd2(minus, y, bandwidth=bw)) / (2 * eps)
    torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-8)


def test_kernel_matrix_rejects_unknown_kernel():
    with pytest.raises(ValueError, match="kernel='cosine'"):
        kernel_matrix(_points(2), _points(2), "cosine")


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_herding_beats_random_subsets(kernel):
    pool = torch.cat([_points(150, seed=3), _points(50, shift=3.0, seed=4)])  # a class with two modes
    picks = herd(pool, pool, 10, kernel=kernel)
    assert len(set(picks)) == 10
    bw = median_bandwidth(pool, pool) if kernel == "gaussian" else None
    herded = mmd2(pool[picks], pool, kernel, bandwidth=bw).item()
    g = torch.Generator().manual_seed(0)
    randoms = [mmd2(pool[torch.randperm(200, generator=g)[:10]], pool, kernel, bandwidth=bw).item() for _ in range(20)]
    assert herded < min(randoms)


def test_herding_with_start_fills_uncovered_mode():
    mode_a, mode_b = _points(60, seed=5), _points(60, shift=4.0, seed=6)
    pool = torch.cat([mode_a, mode_b])
    picks = herd(pool, pool, 3, start=mode_a[:10])  # synthetic images already cover mode A
    assert all(p >= 60 for p in picks)


def test_herding_is_deterministic_and_validates_num():
    pool = _points(30)
    assert herd(pool, pool, 5) == herd(pool, pool, 5)
    with pytest.raises(ValueError, match="num=31"):
        herd(pool, pool, 31)


def test_random_features_shape_seed_and_input_gradient():
    images = torch.rand(4, 1, 28, 28) * 2 - 1
    a, b, c = RandomFeatures(1, seed=0), RandomFeatures(1, seed=0), RandomFeatures(1, seed=1)
    assert a(images).shape == (4, 128 * 3 * 3)
    torch.testing.assert_close(a(images), b(images))
    assert not torch.allclose(a(images), c(images))
    x = images.clone().requires_grad_(True)
    a(x).sum().backward()
    assert x.grad is not None and all(p.grad is None for p in a.parameters())


# ---------------------------------------------------------------------------------------------------------------
# Exact values (tests/mutation.sh: these kill the mutants the behavioural tests above let through)
# ---------------------------------------------------------------------------------------------------------------


def test_squared_distances_exactly():
    a, b = torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert torch.equal(sq_dists(a, b), torch.tensor([[0.0, 25.0], [1.0, 20.0]]))


def test_median_bandwidth_exactly_and_on_a_subsample():
    x = torch.tensor([[0.0], [1.0], [3.0]])  # squared distances 1, 9, 4 (each twice off the diagonal)
    assert median_bandwidth(x).item() == 4.0 and median_bandwidth(x[:2], x[2:]).item() == 4.0
    assert median_bandwidth(x * 1e-3).item() == pytest.approx(4e-6)  # small features keep a small bandwidth
    assert median_bandwidth(x[:1]).item() == 1.0  # one point: no pair, the neutral 1
    points = _points(11, d=2, seed=9)
    subsample = points[torch.linspace(0, 10, 4).long()]  # rows 0, 3, 6, 10: evenly spaced, both ends kept
    assert median_bandwidth(points, max_points=4).item() == median_bandwidth(subsample, max_points=100).item()
    assert median_bandwidth(points, max_points=11).item() == median_bandwidth(points).item()  # no subsample
    many = _points(1001, d=2, seed=10)
    assert median_bandwidth(many).item() == median_bandwidth(many[torch.linspace(0, 1000, 1000).long()]).item()


def test_gaussian_kernel_and_mmd_exactly():
    a, b = _points(3, d=2, seed=11), _points(4, d=2, shift=1.0, seed=12)
    bw = median_bandwidth(a, b)  # the default bandwidth is the median of both sets together

    def k(u, v, width):
        return sum(torch.exp(-sq_dists(u, v) / (s * width)) for s in (0.25, 0.5, 1.0, 2.0, 4.0))

    torch.testing.assert_close(kernel_matrix(a, b), k(a, b, bw))
    assert median_bandwidth(a, b) != median_bandwidth(b)  # so a bandwidth from one set would show
    torch.testing.assert_close(mmd2(a, b), k(a, a, bw).mean() + k(b, b, bw).mean() - 2 * k(a, b, bw).mean())
    width = torch.tensor(5.0)  # an explicit bandwidth is used for all three terms
    expected = k(a, a, width).mean() + k(b, b, width).mean() - 2 * k(a, b, width).mean()
    torch.testing.assert_close(mmd2(a, b, bandwidth=width), expected)
    linear = (a @ a.T).mean() / 2 + (b @ b.T).mean() / 2 - 2 * (a @ b.T).mean() / 2
    torch.testing.assert_close(mmd2(a, b, "linear"), linear)


def test_conv_trunk_layout():
    from torch import nn

    from dsco_hub.kernels import conv_trunk

    trunk = conv_trunk(1)  # defaults: width 128, depth 3
    assert [type(m) for m in trunk] == [nn.Conv2d, nn.GroupNorm, nn.ReLU, nn.AvgPool2d] * 3
    assert all(m.weight is not None and m.bias is not None for m in trunk if isinstance(m, nn.GroupNorm))  # affine
    assert trunk(torch.zeros(2, 1, 28, 28)).shape == (2, 128, 3, 3)
    assert RandomFeatures(1, seed=0, width=8, depth=2)(torch.zeros(2, 1, 28, 28)).shape == (2, 8 * 7 * 7)


def test_ensemble_maps_are_random_features_with_derived_seeds():
    from dsco_hub.kernels import EnsembleFeatures

    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for seed, expected in ((7, [7000, 7001, 7002]), (2**63 - 1, [0, 1, 2])):  # (seed * 1000 + j) mod (2**63 - 1)
        ensemble = EnsembleFeatures(1, seed, num=3, width=4)
        singles = torch.cat([RandomFeatures(1, s, width=4)(x) for s in expected], dim=1)
        assert torch.equal(ensemble(x), singles), seed
    assert EnsembleFeatures(1, 0, num=2)(torch.zeros(1, 1, 8, 8)).shape == (1, 2 * 128)  # default width 128


def test_trunk_features_load_a_default_trunk_frozen():
    from dsco_hub.kernels import TrunkFeatures, conv_trunk

    features = TrunkFeatures(1, conv_trunk(1).state_dict())  # default width 128
    assert features(torch.zeros(1, 1, 8, 8)).shape == (1, 128)
    assert not any(p.requires_grad for p in features.parameters())


def test_feature_snapshots_exactly():
    from dsco_hub.kernels import train_feature_snapshots

    images = torch.rand(130, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = torch.arange(130) % 3
    with pytest.raises(ValueError, match=r"^train_feature_snapshots: epochs=0 \(>= 1\) and 130 images vs 130$"):
        train_feature_snapshots(images, labels, 3, epochs=0, seed=1)
    with pytest.raises(ValueError, match="and 130 images vs 129"):
        train_feature_snapshots(images, labels[:129], 3, epochs=1, seed=1)
    assert len(train_feature_snapshots(images[:4], labels[:4], 3, epochs=1, seed=1, width=4)) == 1
    # defaults (width 128, batch 128: two steps per epoch, lr 0.01, momentum 0.9, weight decay 5e-4, cosine):
    # how far each snapshot moved from the seeded initialisation, pinned (torch 2.13, CPU, float32)
    snapshots = train_feature_snapshots(images, labels, 3, epochs=2, seed=1)
    start = RandomFeatures(1, 1).trunk.state_dict()
    moved = [
        [(s[k] - start[k]).abs().sum().item() for k in ("0.weight", "1.weight", "1.bias", "8.weight")]
        for s in snapshots
    ]
    expected = [[0.087018, 0.006313, 0.00592, 7.639293], [0.145377, 0.0104, 0.010013, 12.613848]]
    for got, want in zip(moved, expected):
        assert got == pytest.approx(want, rel=2e-3)
