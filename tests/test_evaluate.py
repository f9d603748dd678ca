"""Tests of the evaluation protocol: students, augmentation, training and input checks (tiny, CPU, seconds)."""

from __future__ import annotations

import pytest
import torch

from dsco_hub.config import EvalConfig
from dsco_hub.errors import ConfigError
from dsco_hub.evaluate import (
    ConvNet3,
    EvalResult,
    ResNet18,
    augment,
    build_student,
    evaluate_images,
    train_and_test,
)


def halves_dataset(per_class: int, seed: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of uint8 grayscale images: bright left half (class 0) or bright right half (class 1), noisy."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(2).repeat_interleave(per_class)  # (N,)
    images = torch.full((2 * per_class, 1, size, size), 40.0)
    images[labels == 0, :, :, : size // 2] = 215.0
    images[labels == 1, :, :, size // 2 :] = 215.0
    images += 30 * torch.randn(images.shape, generator=g)
    return images.clamp(0, 255).round().to(torch.uint8), labels


def tiny_cfg(**kwargs) -> EvalConfig:
    return EvalConfig(**{"model": "convnet3", "runs": 1, "epochs": 2, "batch_size": 8, **kwargs})


def test_convnet3_shapes():
    model = ConvNet3(channels=1, num_classes=10, image_size=28, width=16)
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    assert model.embed(x).shape == (2, 16 * 3 * 3)  # 28 -> 14 -> 7 -> 3
    assert model(x).shape == (2, 10)


def test_resnet18_shapes_both_stems():
    small = ResNet18(channels=3, num_classes=5, image_size=16)
    assert isinstance(small.stem[0], torch.nn.Conv2d) and small.stem[0].kernel_size == (3, 3)
    assert small(torch.rand(2, 3, 16, 16)).shape == (2, 5)
    large = ResNet18(channels=1, num_classes=4, image_size=72)
    assert large.stem[0].kernel_size == (7, 7) and isinstance(large.stem[-1], torch.nn.MaxPool2d)
    x = torch.rand(2, 1, 72, 72)
    assert large.embed(x).shape == (2, 512)
    assert large(x).shape == (2, 4)


def test_build_student_auto_and_unknown():
    assert isinstance(build_student("auto", 1, 10, 28), ConvNet3)
    assert isinstance(build_student("auto", 3, 10, 128), ResNet18)
    assert isinstance(build_student("resnet18", 3, 10, 28), ResNet18)
    with pytest.raises(ConfigError, match="--eval-model"):
        build_student("vit", 3, 10, 28)


def test_augment_shape_dtype_determinism():
    x = torch.rand(16, 3, 12, 12) * 2 - 1
    out = augment(x, torch.Generator().manual_seed(0), flip=True)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= -1 - 1e-5 and out.max() <= 1 + 1e-5
    assert torch.equal(out, augment(x, torch.Generator().manual_seed(0), flip=True))
    assert not torch.equal(out, augment(x, torch.Generator().manual_seed(1), flip=True))


def test_augment_black_images_stay_black():
    x = torch.full((32, 1, 10, 10), -1.0)
    out = augment(x, torch.Generator().manual_seed(0), flip=True)
    assert torch.equal(out, x)


def test_augment_differentiable():
    x = (torch.rand(4, 1, 8, 8) * 2 - 1).requires_grad_()
    augment(x, torch.Generator().manual_seed(0)).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_learns_toy_problem():
    train_images, train_labels = halves_dataset(per_class=8, seed=0, size=12)
    test_images, test_labels = halves_dataset(per_class=20, seed=1, size=12)
    ticks = []
    cfg = tiny_cfg(epochs=5)  # augmentation on (the default), no flip for grayscale
    accuracy = train_and_test(
        train_images, train_labels, test_images, test_labels, 2, cfg, run=0, progress=ticks.append
    )
    assert accuracy > 0.9
    assert ticks == [1] * cfg.epochs


def test_evaluate_images_deterministic_and_resizes():
    train_images, train_labels = halves_dataset(per_class=4, seed=0, size=16)  # resized to the test's 12 px
    test_images, test_labels = halves_dataset(per_class=4, seed=1, size=12)
    cfg = tiny_cfg(runs=2, model="auto")
    state = torch.random.get_rng_state()
    first = evaluate_images(train_images, train_labels, test_images, test_labels, 2, cfg)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    second = evaluate_images(train_images, train_labels, test_images, test_labels, 2, cfg)
    assert isinstance(first, EvalResult)
    assert first.accuracies == second.accuracies and len(first.accuracies) == 2
    assert first.model == "convnet3" and first.num_train == 8 and first.runs == 2 and first.epochs == 2
    data = first.to_dict()
    assert set(data) == {"accuracy_mean", "accuracy_std", "accuracies", "model", "epochs", "runs", "num_train_images"}
    assert all(0 <= a <= 100 for a in data["accuracies"])


def test_evaluate_images_errors():
    images, labels = halves_dataset(per_class=2, seed=0, size=8)
    cfg = tiny_cfg(epochs=1)
    with pytest.raises(ConfigError, match="channels"):
        evaluate_images(images, labels, images.expand(-1, 3, -1, -1).contiguous(), labels, 2, cfg)
    with pytest.raises(ConfigError, match="label 2"):
        evaluate_images(images, labels + 1, images, labels, 2, cfg)
    with pytest.raises(ConfigError, match="empty"):
        evaluate_images(images[:0], labels[:0], images, labels, 2, cfg)
    with pytest.raises(ConfigError, match="--runs"):
        evaluate_images(images, labels, images, labels, 2, tiny_cfg(runs=0))
