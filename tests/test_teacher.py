"""Tests of the soft-label protocol: teacher training (resume, refusals, card) and students on soft labels."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import torch
from conftest import CLASS_NAMES, changed_train_split, source_changed, tiny_dataset, write_repo
from safetensors.torch import load_file, save_file

from dsco_hub import evaluate as evaluate_module
from dsco_hub import pipeline, results
from dsco_hub import teacher as teacher_module
from dsco_hub.config import TEACHER_CONFIG, ConcentrateConfig, EvalConfig, SourceConfig, TeacherConfig
from dsco_hub.data import fingerprint, to_model_range
from dsco_hub.errors import ConfigError, OutputError, SourceError
from dsco_hub.evaluate import soft_label_loss, train_and_test
from dsco_hub.teacher import CHECKPOINT, WEIGHTS, load_teacher, train_teacher


def dsco(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dsco_hub", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def teacher_cfg(repo: Path, out: Path, **kwargs) -> TeacherConfig:
    return TeacherConfig(**{"source": SourceConfig(source=str(repo)), "out": str(out), "epochs": 2, "batch_size": 8,
                            **kwargs})  # fmt: skip


@pytest.fixture
def tiny_teacher(tiny_repo, tmp_path) -> Path:
    """A ConvNet-3 teacher trained 2 epochs on `tiny_repo` (19 images of 3 classes, 16 px)."""
    return train_teacher(teacher_cfg(tiny_repo, tmp_path / "teacher"), command="dsco-hub teacher train tiny")


@pytest.fixture
def tiny_set(tiny_repo, tmp_path) -> Path:
    """A random IPC 2 set of `tiny_repo`, not evaluated."""
    out = tmp_path / "set"
    source = SourceConfig(source=str(tiny_repo))
    pipeline.concentrate(ConcentrateConfig(source=source, method="random", ipc=2, out=str(out), evaluate=False))
    return out


def halves(per_class: int = 6, seed: int = 0, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of distinct uint8 images: bright left half (class 0) or right half (class 1), noisy."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(2).repeat_interleave(per_class)
    images = torch.full((2 * per_class, 1, size, size), 40.0)
    images[labels == 0, :, :, : size // 2] = 215.0
    images[labels == 1, :, :, size // 2 :] = 215.0
    images += 30 * torch.randn(images.shape, generator=g)
    return images.clamp(0, 255).round().to(torch.uint8), labels


class OracleTeacher(torch.nn.Module):
    """A "teacher" whose logits are `scale` x the one-hot label of each training image it is shown (found by exact
    match); its softmax at T = 1 is exactly one-hot in float32 (exp(-1e4) underflows to 0)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int, scale: float = 1e4):
        super().__init__()
        self.images, self.labels, self.num_classes, self.scale = to_model_range(images), labels, num_classes, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        same = (x[:, None] == self.images[None]).flatten(2).all(dim=2)  # (B, N)
        logits = torch.zeros(len(x), self.num_classes)
        found = same.any(dim=1)
        logits[found] = self.scale * torch.nn.functional.one_hot(self.labels[same[found].int().argmax(1)],
                                                                 self.num_classes).float()  # fmt: skip
        return logits


def trained_student(monkeypatch, *args, **kwargs) -> tuple[float, dict[str, torch.Tensor]]:
    """`train_and_test(*args, **kwargs)`: its accuracy and the trained student's weights."""
    built = []
    original = evaluate_module.build_student

    def keep(*a, **k):
        built.append(original(*a, **k))
        return built[-1]

    monkeypatch.setattr(evaluate_module, "build_student", keep)
    accuracy = train_and_test(*args, **kwargs)
    return accuracy, {k: v.clone() for k, v in built[-1].state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------------
# Teacher training
# ---------------------------------------------------------------------------------------------------------------------


def test_teacher_writes_weights_config_and_card(tiny_teacher, tiny_repo):
    config = json.loads((tiny_teacher / TEACHER_CONFIG).read_text())
    assert (config["model"], config["class_names"], config["channels"], config["image_size"]) == (
        "convnet3",
        CLASS_NAMES,
        1,
        [16, 16],
    )
    assert (config["epochs"], config["num_images"], config["test_images"]) == (2, 19, 12)
    assert round(config["test_accuracy"] * 12) == pytest.approx(config["test_accuracy"] * 12)  # a count of 12 images
    assert not (tiny_teacher / CHECKPOINT).exists()  # removed once the teacher is complete
    loaded = load_teacher(tiny_teacher)
    assert loaded.name == "teacher" and loaded.digest == teacher_module.teacher_digest(tiny_teacher)
    assert loaded.model(torch.zeros(2, 1, 16, 16)).shape == (2, 3)
    card = (tiny_teacher / "README.md").read_text()
    assert "# Teacher network for tiny" in card and "dsco-hub teacher train tiny" in card
    assert f"**{config['test_accuracy'] * 100:.2f} %** on the 12 images" in card
    assert "| training images | 19 |" in card and "| epochs | 2 |" in card and "ConvNet-3" in card


def test_the_teacher_digest_covers_its_config_and_its_weights(tiny_teacher, tmp_path):
    # the same command retrained in place can give other weights (another device, a GPU's float order): other soft
    # labels, so another teacher, though its config is unchanged
    digest = teacher_module.teacher_digest(tiny_teacher)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_teacher, copy)
    assert teacher_module.teacher_digest(copy) == digest and len(digest) == 12
    weights = load_file(copy / WEIGHTS)
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-3
    save_file(weights, copy / WEIGHTS)
    retrained = teacher_module.teacher_digest(copy)
    assert retrained != digest and load_teacher(copy).digest == retrained
    shutil.copy(tiny_teacher / WEIGHTS, copy / WEIGHTS)
    config = json.loads((copy / TEACHER_CONFIG).read_text())
    (copy / TEACHER_CONFIG).write_text(json.dumps({**config, "epochs": config["epochs"] + 1}))
    assert teacher_module.teacher_digest(copy) not in (digest, retrained)
    (copy / WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError):
        teacher_module.teacher_digest(copy)


def test_a_teacher_is_tied_to_the_source_data_it_was_started_on(tiny_repo, tiny_teacher, tmp_path, monkeypatch):
    # the teacher records its source's fingerprint: a rerun of its command on other data is refused, finished or not
    recorded = json.loads((tiny_teacher / TEACHER_CONFIG).read_text())["source_fingerprint"]
    assert recorded == fingerprint(SourceConfig(source=str(tiny_repo))) and recorded["kind"] == "local"
    refused = source_changed("the teacher in teacher", recorded, "pass another --out to train a teacher on it")
    with changed_train_split(tiny_repo), pytest.raises(ConfigError, match=refused):
        train_teacher(teacher_cfg(tiny_repo, tiny_teacher))
    messages = []
    train_teacher(teacher_cfg(tiny_repo, tiny_teacher), report=messages.append)  # the data restored: done already
    assert len(messages) == 1 and messages[0].startswith("teacher in teacher is complete (")
    assert messages[0].endswith("% test accuracy); nothing to do")

    calls = []
    original = teacher_module.train_epoch

    def stop_at_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(teacher_module, "train_epoch", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(teacher_cfg(tiny_repo, tmp_path / "cut"))
    with changed_train_split(tiny_repo), pytest.raises(ConfigError, match="SOURCE changed since the teacher in cut"):
        train_teacher(teacher_cfg(tiny_repo, tmp_path / "cut"))  # an unfinished one is not resumed on it either
    assert len(calls) == 2


def test_an_interrupted_teacher_resumes_to_the_same_weights(tiny_repo, tmp_path, monkeypatch):
    whole = train_teacher(teacher_cfg(tiny_repo, tmp_path / "whole", epochs=3))
    calls = []
    original = teacher_module.train_epoch

    def stop_at_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(teacher_module, "train_epoch", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(teacher_cfg(tiny_repo, tmp_path / "cut", epochs=3))
    assert (tmp_path / "cut" / CHECKPOINT).exists() and not (tmp_path / "cut" / WEIGHTS).exists()
    monkeypatch.setattr(teacher_module, "train_epoch", original)
    said = []
    resumed = train_teacher(teacher_cfg(tiny_repo, tmp_path / "cut", epochs=3), report=said.append)
    assert "resuming the teacher in cut after epoch 2 of 3" in said
    assert sum("teacher epoch" in line for line in said) == 1  # only the third epoch ran again
    a, b = load_file(whole / WEIGHTS), load_file(resumed / WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_rerun_of_a_finished_teacher_does_nothing_and_other_settings_are_refused(tiny_teacher, tiny_repo, tmp_path):
    before = (tiny_teacher / WEIGHTS).stat().st_mtime_ns
    said = []
    train_teacher(teacher_cfg(tiny_repo, tiny_teacher), report=said.append)
    assert (tiny_teacher / WEIGHTS).stat().st_mtime_ns == before and "nothing to do" in said[-1]
    with pytest.raises(ConfigError) as err:
        train_teacher(teacher_cfg(tiny_repo, tiny_teacher, epochs=5))
    assert str(err.value) == (
        "--epochs=5 differs from the teacher in teacher (--epochs=2); rerun with the same settings to resume, or "
        "pass another --out."
    )
    with pytest.raises(ConfigError, match=r"^--max-images=4 differs"):
        train_teacher(teacher_cfg(tiny_repo, tiny_teacher, max_images=4))
    made = dsco("teacher", "train", str(tiny_repo), "--out", str(tiny_teacher), "--epochs", "3")
    assert made.returncode == 1 and made.stderr.count("\n") == 1 and "--epochs=3 differs" in made.stderr


def test_teacher_output_folders_are_checked_before_any_work(tiny_repo, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"^--out=.*busy.* is not empty and holds no teacher_config.json"):
        train_teacher(teacher_cfg(tiny_repo, tmp_path / "busy"))
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(OutputError, match="is, holds or lies inside the source"):
        train_teacher(teacher_cfg(tiny_repo, tiny_repo / "teacher"))
    with pytest.raises(ConfigError, match=r"^--max-images=0 must be at least 1"):
        train_teacher(teacher_cfg(tiny_repo, tmp_path / "t", max_images=0))


def test_max_images_trains_on_a_seeded_subset(tiny_repo, tmp_path):
    out = train_teacher(teacher_cfg(tiny_repo, tmp_path / "sub", epochs=1, max_images=7))
    assert json.loads((out / TEACHER_CONFIG).read_text())["num_images"] == 7


# ---------------------------------------------------------------------------------------------------------------------
# Students on soft labels
# ---------------------------------------------------------------------------------------------------------------------


def test_soft_label_loss_is_kl_times_t_squared():
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    p, q = (t / 2).softmax(1), (s / 2).softmax(1)
    expected = 4 * (p * (p.log() - q.log())).sum(1).mean()
    assert soft_label_loss(s, t, 2.0).item() == pytest.approx(expected.item(), rel=1e-5)
    assert soft_label_loss(t, t, 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_a_teacher_identical_to_the_labels_reproduces_hard_label_training(monkeypatch):
    # T = 1 and teacher logits 1e4 x one-hot: softmax(t) is exactly one-hot, so the KL gradient in the student's
    # logits, (softmax(s) - one_hot) / B, is the cross-entropy gradient computed by the same float operations.
    # Augmentation is off so that the oracle can recognise each training image (the draws are shared code).
    images, labels = halves(per_class=6, seed=0)
    test_images, test_labels = halves(per_class=4, seed=1)
    cfg = EvalConfig(model="convnet3", runs=1, epochs=4, batch_size=5, augment=False)
    hard = trained_student(monkeypatch, images, labels, test_images, test_labels, 2, cfg, 0, device="cpu")
    soft_cfg = EvalConfig(
        model="convnet3", runs=1, epochs=4, batch_size=5, augment=False, labels="soft", temperature=1
    )
    oracle = OracleTeacher(images, labels, 2)
    soft = trained_student(
        monkeypatch, images, labels, test_images, test_labels, 2, soft_cfg, 0, device="cpu", teacher=oracle
    )
    assert soft[0] == hard[0]
    assert all(torch.equal(soft[1][k], hard[1][k]) for k in hard[1])


def test_soft_labels_train_deterministically_and_differ_from_hard_labels(tiny_teacher, monkeypatch):
    loaded = load_teacher(tiny_teacher)
    images, labels = halves(per_class=3, seed=0)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])  # three classes, as the teacher
    test_images, test_labels = halves(per_class=3, seed=1)
    cfg = EvalConfig(model="convnet3", runs=1, epochs=2, batch_size=4, labels="soft", teacher=str(tiny_teacher))
    first = trained_student(monkeypatch, images, labels, test_images, test_labels, 3, cfg, 0, device="cpu",
                            teacher=loaded.model)  # fmt: skip
    again = trained_student(monkeypatch, images, labels, test_images, test_labels, 3, cfg, 0, device="cpu",
                            teacher=load_teacher(tiny_teacher).model)  # fmt: skip
    assert first[0] == again[0] and all(torch.equal(first[1][k], again[1][k]) for k in first[1])
    hard_cfg = EvalConfig(model="convnet3", runs=1, epochs=2, batch_size=4)
    hard = trained_student(monkeypatch, images, labels, test_images, test_labels, 3, hard_cfg, 0, device="cpu")
    assert not all(torch.equal(first[1][k], hard[1][k]) for k in hard[1])


def test_soft_labels_without_a_fitting_teacher_are_one_line(tiny_teacher, tmp_path):
    with pytest.raises(ConfigError) as err:
        EvalConfig(labels="soft").validate()
    assert str(err.value) == (
        "--eval-labels=soft needs a teacher: pass --teacher DIR (a folder written by `dsco-hub teacher train`)."
    )
    with pytest.raises(ConfigError, match=r"^--teacher=.* is only used with soft labels"):
        EvalConfig(teacher=str(tiny_teacher)).validate()
    with pytest.raises(ConfigError, match=r"^--teacher=.* is not a teacher folder \(no teacher_config.json\)"):
        EvalConfig(labels="soft", teacher=str(tmp_path)).validate()
    with pytest.raises(ConfigError, match=r"^--eval-labels='fuzzy' is unknown"):
        EvalConfig(labels="fuzzy").validate()
    with pytest.raises(ConfigError, match=r"^--temperature=0 must be a positive number; RDED uses 4"):
        EvalConfig(labels="soft", teacher=str(tiny_teacher), temperature=0).validate()
    loaded = load_teacher(tiny_teacher)
    with pytest.raises(ConfigError) as err:
        loaded.check(["a", "b", "c"], 1, (16, 16))
    assert str(err.value).startswith("--teacher='teacher' was trained on other classes (3: circle, square, stripe")
    with pytest.raises(ConfigError, match=r"^--teacher='teacher' takes images of 1 x 16 x 16 \(C x H x W\), the test"):
        loaded.check(CLASS_NAMES, 1, (28, 28))
    images, labels = halves(per_class=2)
    cfg = EvalConfig(model="convnet3", runs=1, epochs=1, labels="soft", teacher=str(tiny_teacher))
    with pytest.raises(ConfigError, match=r"^--teacher=.* does not fit the test images \(1, 16, 16\) of 2 classes"):
        train_and_test(images, labels, images, labels, 2, cfg, 0, device="cpu", teacher=loaded.model)
    with pytest.raises(ConfigError, match=r"^--eval-labels=soft needs a teacher network"):
        train_and_test(images, labels, images, labels, 2, cfg, 0, device="cpu")


def test_evaluate_with_soft_labels_records_the_teacher_and_validates(tiny_set, tiny_teacher, tmp_path):
    made = dsco("evaluate", str(tiny_set), "--runs", "1", "--epochs", "2", "--labels", "soft", "--teacher",
                str(tiny_teacher), "--json", str(tmp_path / "r.json"), "--update-card")  # fmt: skip
    assert made.returncode == 0, made.stderr
    text = (tmp_path / "r.json").read_text()
    doc = json.loads(text)
    jsonschema.validate(doc, results.schema())
    protocol = doc["protocol"]
    assert protocol["labels"] == "soft" and protocol["temperature"] == 4.0
    assert protocol["teacher"]["name"] == "teacher"
    assert protocol["teacher"]["digest"] == teacher_module.teacher_digest(tiny_teacher)
    assert str(tmp_path) not in text and os.sep + "teacher" not in json.dumps(protocol["teacher"])
    del doc["protocol"]["teacher"]  # a soft-label result must name its teacher
    with pytest.raises(jsonschema.ValidationError, match="'teacher' is a required property"):
        jsonschema.validate(doc, results.schema())
    card = (tiny_set / "README.md").read_text()
    assert "with soft labels of the teacher `teacher` (ConvNet-3, digest " in card and "temperature 4" in card
    hard = dsco("evaluate", str(tiny_set), "--runs", "1", "--epochs", "2", "--json", "-", "--no-baseline")
    hard_protocol = json.loads(hard.stdout)["protocol"]
    assert hard_protocol["labels"] == "hard" and "teacher" not in hard_protocol and "temperature" not in hard_protocol
    refused = dsco("evaluate", str(tiny_set), "--labels", "soft")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "--eval-labels=soft needs a teacher: pass --teacher DIR" in refused.stderr


def test_concentrate_evaluates_with_soft_labels(tiny_repo, tiny_teacher, tmp_path):
    made = dsco("concentrate", str(tiny_repo), "--method", "random", "--ipc", "1", "--runs", "1", "--epochs", "1",
                "--eval-labels", "soft", "--teacher", str(tiny_teacher), "--temperature", "2", "--out",
                str(tmp_path / "s"), "--json", "-")  # fmt: skip
    assert made.returncode == 0, made.stderr
    doc = json.loads(made.stdout)
    jsonschema.validate(doc, results.schema())
    assert (doc["protocol"]["labels"], doc["protocol"]["temperature"]) == ("soft", 2.0)
    assert doc["protocol"]["teacher"]["digest"] == teacher_module.teacher_digest(tiny_teacher)
    assert doc["baseline"] is not None  # the random-real baseline learns the same teacher's soft labels
    card = (tmp_path / "s" / "README.md").read_text()
    assert "soft labels of the teacher `teacher`" in card and "temperature 2" in card


def test_a_source_without_a_test_split_names_the_fix_teacher_train_has(tmp_path):
    source = write_repo(tmp_path / "train-only", tiny_dataset())
    cfg = TeacherConfig(source=SourceConfig(source=str(source)), out=str(tmp_path / "t"), epochs=1)
    with pytest.raises(SourceError) as err:
        train_teacher(cfg)
    assert str(err.value).endswith("pass --test-split SPLIT, a split apart from --split.")
    assert "--no-eval" not in str(err.value) and "--test-dataset" not in str(err.value)  # options it does not have
