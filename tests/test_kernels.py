"""Feature maps, MMD and kernel herding."""

from __future__ import annotations

import pytest
import torch

from dsco_hub.kernels import RandomFeatures, herd, kernel_matrix, median_bandwidth, mmd2


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
