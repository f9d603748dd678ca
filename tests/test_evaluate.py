"""Tests of the evaluation protocol: students, augmentation, training and input checks (tiny, CPU, seconds)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsco_hub import distributed
from dsco_hub import evaluate as evaluate_module
from dsco_hub.config import EvalConfig
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
if torch.distributed.is_initialized():  # gloo's threads can abort the exit of a process that keeps its group
    torch.distributed.destroy_process_group()
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
