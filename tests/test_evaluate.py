"""Tests of the evaluation protocol: students, augmentation, training and input checks (tiny, CPU, seconds)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dsco_hub import distributed
from dsco_hub import evaluate as evaluate_module
from dsco_hub.config import EvalConfig, derive_seed
from dsco_hub.errors import ConfigError
from dsco_hub.evaluate import (
    ConvNet3,
    EvalResult,
    ResNet18,
    apply_augment,
    augment,
    augment_draws,
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


# ---------------------------------------------------------------------------------------------------------------
# Devices: the process's device, an epoch's draws at once, runs spread over processes
# ---------------------------------------------------------------------------------------------------------------


def test_an_epochs_draws_made_ahead_give_the_batch_by_batch_augmentation():
    x = torch.rand(20, 3, 12, 12) * 2 - 1
    one_by_one, g = [], torch.Generator().manual_seed(5)
    for start in range(0, 20, 8):
        one_by_one.append(augment(x[start : start + 8], g, flip=True))
    g = torch.Generator().manual_seed(5)
    draws = [augment_draws(len(x[start : start + 8]), g, flip=True) for start in range(0, 20, 8)]
    choices, uniforms = torch.cat([c for c, _ in draws]), torch.cat([u for _, u in draws])
    ahead = [apply_augment(x[s : s + 8], choices[s : s + 8], uniforms[s : s + 8]) for s in range(0, 20, 8)]
    assert all(torch.equal(a, b) for a, b in zip(one_by_one, ahead))


class Reached(Exception):
    """Raised by `RecordingStudent` once it has seen a batch."""


class RecordingStudent(torch.nn.Module):
    """Records the device of its weights and of the batch it is given, then stops the run."""

    def __init__(self, seen):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)
        self.seen = seen

    def forward(self, x):
        self.seen.update(weights=self.linear.weight.device, batch=x.device)
        raise Reached


def test_students_train_on_the_device_of_the_process_state(monkeypatch):
    seen = {}
    meta = distributed.ProcessState(device=torch.device("meta"))  # e.g. this process's GPU under a launcher
    monkeypatch.setattr(evaluate_module.distributed, "process_state", lambda: meta)
    monkeypatch.setattr(evaluate_module, "build_student", lambda *args: RecordingStudent(seen))
    images, labels = halves_dataset(per_class=4, seed=0, size=8)
    with pytest.raises(Reached):
        evaluate_images(images, labels, images, labels, 2, tiny_cfg())
    assert seen == {"weights": torch.device("meta"), "batch": torch.device("meta")}
    seen.clear()
    with pytest.raises(Reached):  # an explicit device wins over the process state
        train_and_test(images, labels, images, labels, 2, tiny_cfg(), run=0, device="cpu")
    assert seen == {"weights": torch.device("cpu"), "batch": torch.device("cpu")}


class FakeRank(distributed.ProcessState):
    """Process `rank` of a launch whose other processes are simulated: `gather` adds their runs' accuracies."""

    def __init__(self, rank, world_size, others):
        super().__init__(rank=rank, world_size=world_size, device=torch.device("cpu"))
        self.others = others

    def gather(self, items):
        return sorted(list(items) + self.others)


def test_spread_trains_only_this_processes_runs_and_gathers_all(monkeypatch):
    trained = []

    def fake_train(*args):
        trained.append(args[6])  # the run index
        return 0.5 + args[6] / 10

    monkeypatch.setattr(evaluate_module, "train_and_test", fake_train)
    images, labels = halves_dataset(per_class=2, seed=0, size=8)
    rank1 = FakeRank(1, 2, others=[(0, 0.5), (2, 0.7), (4, 0.9)])
    result = evaluate_images(images, labels, images, labels, 2, tiny_cfg(runs=5), state=rank1, spread=True)
    assert trained == [1, 3]  # runs r with r % 2 == 1
    assert result.accuracies == [0.5, 0.6, 0.7, 0.8, 0.9] and result.runs == 5
    trained.clear()
    evaluate_images(images, labels, images, labels, 2, tiny_cfg(runs=3), state=rank1)  # not spread: every run
    assert trained == [0, 1, 2]


SPREAD_SCRIPT = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from test_evaluate import halves_dataset, tiny_cfg
from dsco_hub import distributed
from dsco_hub.evaluate import evaluate_images
train, train_labels = halves_dataset(per_class=6, seed=0, size=12)
test, test_labels = halves_dataset(per_class=10, seed=1, size=12)
state = distributed.process_state()
cfg = tiny_cfg(runs=3, epochs=3)
result = evaluate_images(train, train_labels, test, test_labels, 2, cfg, state=state, spread=True)
with open(sys.argv[1] + f"-{{state.rank}}-of-{{state.world_size}}.json", "w") as f:
    json.dump(result.accuracies, f)
distributed.finish()
"""


def test_two_processes_spread_the_runs_and_get_one_process_accuracies(tmp_path):
    script = tmp_path / "spread.py"
    script.write_text(SPREAD_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    two = subprocess.run([*launch, str(script), str(tmp_path / "acc")], env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "acc")], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    reference = json.loads((tmp_path / "acc-0-of-1.json").read_text())
    assert len(reference) == 3
    for rank in (0, 1):  # every process gets all three runs, whichever trained them
        assert json.loads((tmp_path / f"acc-{rank}-of-2.json").read_text()) == reference


# ---------------------------------------------------------------------------------------------------------------
# Exact values: the students' architectures, DSA's transformations written out, one epoch written out, the
# protocol's seeds and schedule, the checks' messages
# ---------------------------------------------------------------------------------------------------------------


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_students_are_the_standard_architectures():
    # ConvNet-3 of DC (width 128, instance norm with affine weights, 3 blocks): 28 -> 14 -> 7 -> 3, then a linear layer
    convnet = build_student("convnet3", 1, 10, 28)
    assert (
        _parameters(convnet) == (1 * 9 + 1) * 128 + 2 * 128 + 2 * ((128 * 9 + 1) * 128 + 2 * 128) + 128 * 9 * 10 + 10
    )
    assert convnet.embed(torch.zeros(2, 1, 28, 28)).shape == (2, 128 * 3 * 3)
    assert ConvNet3(1, 2, 8).embed(torch.zeros(1, 1, 8, 8)).shape == (1, 128)  # 8 px: the smallest side for depth 3
    assert ConvNet3(1, 2, (9, 20), width=4).embed(torch.zeros(1, 1, 9, 20)).shape == (1, 4 * 1 * 2)
    assert ConvNet3(1, 2, 8, width=4, depth=2).embed(torch.zeros(1, 1, 8, 8)).shape == (1, 4 * 2 * 2)


def test_a_residual_block_adds_its_input_after_two_convolutions():
    torch.manual_seed(0)
    block = evaluate_module.BasicBlock(8, 8).eval()
    assert isinstance(block.shortcut, torch.nn.Identity)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        inner = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
        assert torch.equal(block(x), F.relu(inner + x))
    down = evaluate_module.BasicBlock(8, 16, stride=2)
    assert down.conv1.stride == (2, 2) and down.shortcut[0].stride == (2, 2) and down.conv2.stride == (1, 1)
    # ResNet-18 (CIFAR stem up to 64 px): 11,173,962 parameters for 3 channels and 10 classes, as torchvision's
    # resnet18 (11,689,512 with the ImageNet stem and 1000 classes) less its 7x7 stem and classifier
    small = build_student("resnet18", 3, 10, 32)
    assert _parameters(small) == 11_173_962
    stem = small.stem(torch.randn(2, 3, 32, 32))
    assert stem.shape == (2, 64, 32, 32) and stem.min() >= 0  # 3x3 conv, padding 1, batch norm, ReLU
    assert not any(m.bias is not None for m in small.modules() if isinstance(m, torch.nn.Conv2d))
    assert small.layers(small.stem(torch.zeros(2, 3, 32, 32))).shape == (2, 512, 4, 4)
    large = build_student("resnet18", 3, 1000, 224)
    assert _parameters(large) == 11_689_512
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():  # the ImageNet stem, written out
        expected = F.max_pool2d(F.relu(large.stem[1](large.stem[0](x))), kernel_size=3, stride=2, padding=1)
        assert torch.equal(large.stem(x), expected) and expected.shape == (1, 64, 56, 56)
    assert large.layers(large.stem(torch.zeros(1, 3, 224, 224))).shape == (1, 512, 7, 7)
    assert isinstance(ResNet18(1, 2, 64).stem[0], torch.nn.Conv2d) and ResNet18(1, 2, 64).stem[0].stride == (1, 1)
    assert ResNet18(1, 2, 65).stem[0].stride == (2, 2)
    assert ResNet18(1, 2, (20, 65)).stem[0].stride == (2, 2)  # the longest side decides


def test_convnet3_refuses_images_smaller_than_its_depth_allows():
    with pytest.raises(ConfigError) as err:
        ConvNet3(1, 2, (7, 30))
    assert str(err.value) == (
        "image_size=(7, 30) is too small for a ConvNet-3: each side must be at least 8 px; resize the images or pass "
        "--eval-model resnet18."
    )
    with pytest.raises(ConfigError, match="at least 4 px"):
        ConvNet3(1, 2, 3, depth=2)


def test_auto_picks_convnet3_up_to_64_px_on_the_longest_side():
    assert isinstance(build_student("auto", 1, 10, 64), ConvNet3)
    assert isinstance(build_student("auto", 1, 10, 65), ResNet18)
    assert isinstance(build_student("auto", 1, 10, (20, 65)), ResNet18)
    assert isinstance(build_student("convnet3", 1, 10, 100), ConvNet3)
    with pytest.raises(ConfigError) as err:
        build_student("vit", 3, 10, 28)
    assert str(err.value) == "--eval-model='vit' is unknown; use one of auto, convnet3, resnet18."


def test_augment_draws_no_flip_unless_asked():
    x = torch.rand(64, 1, 8, 8) * 2 - 1
    plain = apply_augment(x, *augment_draws(64, torch.Generator().manual_seed(3), flip=False))
    assert torch.equal(augment(x, torch.Generator().manual_seed(3)), plain)


def test_augment_refuses_what_is_not_a_float_batch():
    with pytest.raises(ValueError) as err:
        augment(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.Generator())
    assert str(err.value) == "augment expects float images (B, C, H, W), got (2, 1, 4, 4) torch.uint8."
    with pytest.raises(ValueError, match=r"got \(1, 4, 4\) torch.float32"):
        augment(torch.zeros(1, 4, 4), torch.Generator())


def test_augment_draws_are_one_choice_and_seven_uniforms_per_sample():
    choice, u = augment_draws(6, torch.Generator().manual_seed(2), flip=False)
    g = torch.Generator().manual_seed(2)
    assert torch.equal(choice, torch.randint(0, 4, (6,), generator=g))
    assert torch.equal(u, torch.rand(6, 7, generator=g, dtype=torch.float64)) and u.dtype == torch.float64
    choice, _ = augment_draws(400, torch.Generator().manual_seed(2), flip=True)
    assert set(choice.tolist()) == {0, 1, 2, 3, 4}
    choice, _ = augment_draws(400, torch.Generator().manual_seed(2))  # flip off by default
    assert set(choice.tolist()) == {0, 1, 2, 3}


def _augment_by_hand(x, choice, u):
    """DSA's single transformations as `augment` documents them, one sample at a time."""
    out = torch.empty_like(x)
    _, _, h, w = x.shape
    for b in range(len(x)):
        c, v = int(choice[b]), u[b].tolist()
        theta = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
        if c == 0:  # crop: a translation by whole pixels, up to 1/8 of the side
            sx, sy = math.floor(w / 8 + 0.5), math.floor(h / 8 + 0.5)
            theta[0][2] = 2 * (math.floor(v[0] * (2 * sx + 1)) - sx) / w
            theta[1][2] = 2 * (math.floor(v[1] * (2 * sy + 1)) - sy) / h
        elif c == 1:  # scale: a factor in [1/1.2, 1.2] per axis
            theta[0][0] = 1 / 1.2 + v[2] * (1.2 - 1 / 1.2)
            theta[1][1] = 1 / 1.2 + v[3] * (1.2 - 1 / 1.2)
        elif c == 2:  # rotate: up to 15 degrees either way
            a = (v[4] - 0.5) * 2 * math.pi * 15 / 180
            theta = [[math.cos(a), math.sin(a), 0.0], [-math.sin(a), math.cos(a), 0.0]]
        elif c == 4:  # flip
            theta[0][0] = -1.0
        grid = torch.nn.functional.affine_grid(torch.tensor([theta]), [1, *x.shape[1:]], align_corners=False)
        # uncovered pixels are black (-1)
        out[b] = torch.nn.functional.grid_sample(x[b : b + 1] + 1, grid.float(), align_corners=False)[0] - 1
        if c == 3:  # cutout: a square of half the side at a random centre, clipped at the borders
            size_h, size_w = math.floor(h / 2 + 0.5), math.floor(w / 2 + 0.5)  # half up
            top = math.floor(v[5] * (h + 1 - size_h % 2)) - size_h // 2
            left = math.floor(v[6] * (w + 1 - size_w % 2)) - size_w // 2
            out[b, :, max(top, 0) : max(top + size_h, 0), max(left, 0) : max(left + size_w, 0)] = -1
    return out


@pytest.mark.parametrize("size", [(12, 12), (10, 14), (9, 7)])
def test_apply_augment_is_dsas_transformations_written_out(size):
    g = torch.Generator().manual_seed(11)
    x = torch.rand(40, 2, *size, generator=g) * 2 - 1
    choice = torch.arange(40) % 5  # every transformation, 8 times
    u = torch.rand(40, 7, generator=g, dtype=torch.float64)
    u[35:, 5:] = torch.tensor([[0.0, 0.0], [0.999, 0.999], [0.0, 0.999], [0.5, 0.5], [0.999, 0.0]])  # cutout edges
    torch.testing.assert_close(apply_augment(x, choice, u), _augment_by_hand(x, choice, u), rtol=0, atol=1e-5)
    shifted = apply_augment(x[:1], torch.tensor([0]), torch.tensor([[0.99, 0.5, 0, 0, 0, 0, 0]], dtype=torch.float64))
    sx = math.floor(size[1] / 8 + 0.5)
    torch.testing.assert_close(shifted[0, :, :, : size[1] - sx], x[0, :, :, sx:], rtol=0, atol=1e-5)  # whole pixels
    assert torch.equal(shifted[0, :, :, size[1] - sx :], torch.full_like(shifted[0, :, :, size[1] - sx :], -1.0))


def test_one_epoch_is_the_protocols_epoch_written_out():
    torch.manual_seed(0)
    model = ConvNet3(1, 2, 8, width=4)
    reference = ConvNet3(1, 2, 8, width=4)
    reference.load_state_dict(model.state_dict())
    images, labels = halves_dataset(per_class=5, seed=3, size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    evaluate_module.train_epoch(
        model, optimizer, images, labels, torch.Generator().manual_seed(4), 4, True, False, "no"
    )
    # by hand: one reshuffle, then each batch's augmentation draws, then an SGD step per batch on cross-entropy
    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(4)
    order = torch.randperm(10, generator=g)
    draws = [augment_draws(len(order[s : s + 4]), g) for s in range(0, 10, 4)]
    for (choice, u), s in zip(draws, range(0, 10, 4)):
        idx = order[s : s + 4]
        x = apply_augment(images[idx].float() / 127.5 - 1, choice, u)
        loss = torch.nn.functional.cross_entropy(reference(x), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=1e-6)
    # without augmentation, float images in [-1, 1] are used as they are
    plain = ConvNet3(1, 2, 8, width=4)
    plain.load_state_dict(reference.state_dict())
    model.load_state_dict(reference.state_dict())
    x = images.float() / 127.5 - 1
    g = torch.Generator().manual_seed(5)
    evaluate_module.train_epoch(
        model, torch.optim.SGD(model.parameters(), lr=0.1), x, labels, g, 4, False, False, "no"
    )
    order = torch.randperm(10, generator=torch.Generator().manual_seed(5))
    opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    for s in range(0, 10, 4):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(plain(x[order[s : s + 4]]), labels[order[s : s + 4]]).backward()
        opt.step()
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=1e-6)


class _Brightness(torch.nn.Module):
    """Predicts class 1 when the left half is darker than the right half."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        self.autocast = torch.is_autocast_enabled("cpu")
        half = x.shape[-1] // 2
        score = x[..., half:].mean((1, 2, 3)) - x[..., :half].mean((1, 2, 3))
        return torch.stack([-score, score], dim=1) * self.scale


def test_test_accuracy_counts_arg_max_hits_over_batches_in_eval_mode(monkeypatch):
    images, labels = halves_dataset(per_class=6, seed=0, size=8)
    labels = labels.clone()
    labels[-3:] = 0  # three wrong labels of twelve, in the last batch
    model = _Brightness()
    monkeypatch.setattr(evaluate_module, "TEST_BATCH_SIZE", 5)  # three batches, the last one short
    assert evaluate_module.test_accuracy(model, images, labels, "no") == 9 / 12
    assert not model.training and model.autocast is False


def test_train_and_test_follows_the_protocols_seeds_optimizer_and_schedule(monkeypatch):
    calls = []

    def spy(model, optimizer, x_train, y_train, generator, batch_size, augment, flip, precision, teacher, temperature):
        group = optimizer.param_groups[0]
        calls.append(
            dict(
                lr=group["lr"],
                momentum=group["momentum"],
                weight_decay=group["weight_decay"],
                x=x_train.clone(),
                y=y_train.clone(),
                state=generator.get_state(),
                batch_size=batch_size,
                augment=augment,
                flip=flip,
                precision=precision,
                teacher=teacher,
                temperature=temperature,
                weights=[p.detach().clone() for p in model.parameters()],
                training=model.training,
            )
        )

    monkeypatch.setattr(evaluate_module, "train_epoch", spy)
    train, train_labels = halves_dataset(per_class=3, seed=0, size=16)
    test, test_labels = halves_dataset(per_class=2, seed=1, size=12)
    cfg = EvalConfig(
        model="convnet3", runs=2, epochs=5, lr=0.03, momentum=0.8, weight_decay=1e-3, batch_size=7, seed=9
    )
    ticks = []
    train_and_test(train, train_labels, test, test_labels, 2, cfg, run=1, progress=ticks.append, device="cpu")
    assert ticks == [1] * 5
    assert [c["lr"] for c in calls] == [0.03, 0.03, 0.003, 0.003, 0.003]  # divided by 10 from epoch 5 // 2
    assert {(c["momentum"], c["weight_decay"], c["batch_size"]) for c in calls} == {(0.8, 1e-3, 7)}
    assert {(c["augment"], c["flip"], c["precision"], c["teacher"], c["temperature"]) for c in calls} == {
        (True, False, "no", None, cfg.temperature)  # grayscale: no flips
    }
    assert all(c["training"] for c in calls)
    first = calls[0]
    assert torch.equal(first["state"], torch.Generator().manual_seed(derive_seed(9, "eval", 1)).get_state())
    resized = torch.nn.functional.interpolate(
        train.float() / 127.5 - 1, size=(12, 12), mode="bilinear", antialias=True, align_corners=False
    )
    torch.testing.assert_close(first["x"], resized, rtol=0, atol=1e-6)  # resized to the test's side
    assert torch.equal(first["y"], train_labels) and first["y"].dtype == torch.int64
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(9, "eval", 1, "init"))
        initial = ConvNet3(1, 2, (12, 12))
    assert all(torch.equal(a, b) for a, b in zip(first["weights"], initial.parameters()))
    calls.clear()
    train_and_test(
        train, train_labels, train, train_labels, 2, EvalConfig(model="convnet3", epochs=1), 0, device="cpu"
    )
    assert [c["lr"] for c in calls] == [0.01]  # one epoch: never divided
    assert calls[0]["x"].dtype == torch.uint8 and torch.equal(calls[0]["x"], train)  # same side: as they are
    assert calls[0]["flip"] is False
    calls.clear()
    train_and_test(
        train, train_labels, train, train_labels, 2, EvalConfig(model="convnet3", epochs=2), 0, device="cpu"
    )
    assert [c["lr"] for c in calls] == [0.01, 0.001]  # two epochs: divided from the second
    calls.clear()
    teacher, tested = ConvNet3(1, 2, 16, width=4), []
    monkeypatch.setattr(evaluate_module, "test_accuracy", lambda *args: tested.append(args[3]) or 0.5)
    soft = EvalConfig(model="convnet3", epochs=1, labels="soft", teacher="t", temperature=2.5)
    assert train_and_test(train, train_labels, train, train_labels, 2, soft, 0, device="cpu", teacher=teacher) == 0.5
    assert (calls[0]["teacher"], calls[0]["temperature"], tested) == (teacher, 2.5, ["no"])
    rgb, rgb_labels = train.expand(-1, 3, -1, -1).contiguous(), train_labels
    calls.clear()
    train_and_test(rgb, rgb_labels, rgb, rgb_labels, 2, EvalConfig(model="convnet3", epochs=1), 0, device="cpu")
    assert calls[0]["flip"] is True  # colour images: flips are label-preserving by default
    calls.clear()
    flipless = EvalConfig(model="convnet3", epochs=1, flip=False)
    train_and_test(rgb, rgb_labels, rgb, rgb_labels, 2, flipless, 0, device="cpu")
    assert calls[0]["flip"] is False


def test_evaluate_images_reports_mean_and_population_std(monkeypatch):
    seen = []

    def fake_train(*args):
        seen.append(args[7:])  # progress, device, teacher
        return [0.123456, 0.5, 0.75][args[6]]

    monkeypatch.setattr(evaluate_module, "train_and_test", fake_train)
    images, labels = halves_dataset(per_class=2, seed=0, size=8)
    teacher, tick = ConvNet3(1, 2, 8, width=4), [].append
    state = distributed.ProcessState(device=torch.device("meta"))
    result = evaluate_images(
        images, labels, images, labels, 2, tiny_cfg(runs=3, model="auto"), tick, state, teacher=teacher
    )
    assert seen == [(tick, torch.device("meta"), teacher)] * 3
    accuracies = [0.123456, 0.5, 0.75]
    assert result == EvalResult(accuracies, float(np.mean(accuracies)), float(np.std(accuracies)), "convnet3", 2, 3, 4)
    assert result.to_dict() == {
        "accuracy_mean": 45.78,
        "accuracy_std": 25.75,
        "accuracies": [12.35, 50.0, 75.0],
        "model": "convnet3",
        "epochs": 2,
        "runs": 3,
        "num_train_images": 4,
    }
    tall = torch.zeros(4, 1, 70, 40, dtype=torch.uint8)  # the longest side of the test images picks the student
    assert evaluate_images(images, labels, tall, labels, 2, tiny_cfg(runs=1, model="auto")).model == "resnet18"


def test_soft_label_loss_at_the_default_temperature_is_t_squared_times_the_kl():
    s, t = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), torch.randn(5, 3)
    p, q = (t / 4).softmax(1), (s / 4).softmax(1)
    expected = 16 * (p * (p.log() - q.log())).sum(1).mean()
    assert evaluate_module.soft_label_loss(s, t, 4.0).item() == pytest.approx(expected.item(), rel=1e-5)


def test_one_soft_label_epoch_is_written_out_too():
    torch.manual_seed(1)
    model, reference, teacher = (ConvNet3(3, 2, 8, width=4) for _ in range(3))
    reference.load_state_dict(model.state_dict())
    teacher.eval()
    images, labels = halves_dataset(per_class=4, seed=2, size=8)
    images = images.expand(-1, 3, -1, -1).contiguous()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(6)
    evaluate_module.train_epoch(model, optimizer, images, labels, g, 3, True, True, "no", teacher=teacher)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(6)
    order = torch.randperm(8, generator=g)
    draws = [augment_draws(len(order[s : s + 3]), g, flip=True) for s in range(0, 8, 3)]
    for (choice, u), s in zip(draws, range(0, 8, 3)):
        x = apply_augment(images[order[s : s + 3]].float() / 127.5 - 1, choice, u)
        with torch.no_grad():
            target = teacher(x)
        loss = evaluate_module.soft_label_loss(reference(x), target, 4.0)  # T = 4 by default
        opt.zero_grad()
        loss.backward()
        opt.step()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(num_classes=0), "num_classes=0 must be at least 1; pass the source's number of classes."),
        (
            dict(train_images=torch.zeros(2, 1, 8, 8)),
            "train_images has shape (2, 1, 8, 8) and dtype torch.float32; pass uint8 images (N, C, H, W) in [0, 255] "
            "(see dsco_hub.data.decode_images).",
        ),
        (
            dict(test_images=torch.zeros(2, 8, 8, dtype=torch.uint8)),
            "test_images has shape (2, 8, 8) and dtype torch.uint8; pass uint8 images (N, C, H, W) in [0, 255] "
            "(see dsco_hub.data.decode_images).",
        ),
        (
            dict(
                train_images=torch.zeros(0, 1, 8, 8, dtype=torch.uint8), train_labels=torch.zeros(0, dtype=torch.long)
            ),
            "the train set is empty (0 images); pass at least one image per class.",
        ),
        (
            dict(test_labels=torch.zeros(3, dtype=torch.long)),
            "test_labels has shape (3,) and dtype torch.int64 for 2 images; pass one int64 label per image.",
        ),
        (
            dict(train_labels=torch.zeros(2, 1, dtype=torch.long)),
            "train_labels has shape (2, 1) and dtype torch.int64 for 2 images; pass one int64 label per image.",
        ),
        (
            dict(train_labels=torch.zeros(2)),
            "train_labels has shape (2,) and dtype torch.float32 for 2 images; pass one int64 label per image.",
        ),
        (
            dict(train_labels=torch.tensor([-1, 0])),
            "train_labels holds label -1, outside [0, 2) for num_classes=2; map the labels to 0..num_classes-1 or "
            "pass the right num_classes.",
        ),
        (
            dict(test_labels=torch.tensor([0, 2])),
            "test_labels holds label 2, outside [0, 2) for num_classes=2; map the labels to 0..num_classes-1 or pass "
            "the right num_classes.",
        ),
        (
            dict(test_images=torch.zeros(2, 3, 8, 8, dtype=torch.uint8)),
            "train images have 1 channels but test images have 3; decode both sets with the same channel count (1 = "
            "grayscale, 3 = RGB).",
        ),
    ],
)
def test_unusable_inputs_are_one_line_each(change, message):
    args = {
        "train_images": torch.zeros(2, 1, 8, 8, dtype=torch.uint8),
        "train_labels": torch.tensor([0, 1]),
        "test_images": torch.zeros(2, 1, 8, 8, dtype=torch.uint8),
        "test_labels": torch.tensor([1, 0]),
        "num_classes": 2,
        **change,
    }
    with pytest.raises(ConfigError) as err:
        evaluate_module._check_inputs(**args)
    assert str(err.value) == message
    evaluate_module._check_inputs(
        torch.zeros(1, 1, 8, 8, dtype=torch.uint8), torch.tensor([0]), torch.zeros(1, 1, 8, 8, dtype=torch.uint8),
        torch.tensor([0]), 1,
    )  # fmt: skip


def test_soft_labels_need_a_teacher_of_the_test_images_classes():
    images, labels = halves_dataset(per_class=2, seed=0, size=8)
    soft = EvalConfig(model="convnet3", epochs=1, labels="soft", teacher="runs/t")
    with pytest.raises(ConfigError) as err:
        train_and_test(images, labels, images, labels, 2, soft, 0, device="cpu")
    assert str(err.value) == (
        "--eval-labels=soft needs a teacher network; pass teacher=dsco_hub.teacher.load_teacher('runs/t')."
    )
    message = (
        "--teacher='runs/t' does not fit the test images (1, 8, 8) of 2 classes; train a teacher on this source: "
        "dsco-hub teacher train SOURCE --out DIR."
    )
    for teacher in (ConvNet3(1, 3, 8, width=4), ConvNet3(3, 2, 8, width=4)):  # other classes; other channels
        with pytest.raises(ConfigError) as err:
            train_and_test(images, labels, images, labels, 2, soft, 0, device="cpu", teacher=teacher)
        assert str(err.value) == message
    teacher = ConvNet3(1, 2, 8, width=4)
    assert evaluate_module._ready_teacher(soft, teacher, images, 2, torch.device("cpu")) is teacher
    assert not teacher.training
    assert evaluate_module._ready_teacher(EvalConfig(), teacher, images, 2, torch.device("cpu")) is None
