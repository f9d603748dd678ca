"""Teacher networks for the soft-label protocol (`dsco-hub teacher train`, `evaluate --labels soft`).

The ImageNet-scale methods (SRe2L, Yin et al., NeurIPS 2023, arXiv 2306.13092; RDED, Sun et al., CVPR 2024,
arXiv 2312.03526) evaluate a set by training the student on a teacher's soft labels of each augmented batch. The
teacher here is the student the evaluation's rule chooses (ConvNet-3 up to 64 px, ResNet-18 above:
`evaluate.build_student`), trained on the source's training split with the students' SGD settings and DSA-style
augmentation (`evaluate.train_epoch`), on this process's device, then tested on the source's test split.

A teacher folder holds:

- `model.safetensors`: the weights;
- `teacher_config.json`: what was trained (source and its fingerprint, classes, image size, student, epochs,
  images, seed), its test accuracy and the command; its SHA-256 with the weights' (`teacher_digest`) names the
  teacher in evaluation results;
- `README.md`: a model card (huggingface_hub `ModelCard`);
- while training, `checkpoint.safetensors` (weights, SGD momentum, epochs done), written atomically after each
  epoch: a rerun of the same command resumes from it; other settings are refused.

Every epoch's order and augmentation derive from `derive_seed(seed, "teacher", epoch)`, so a resumed teacher is
the teacher an uninterrupted run trains (on the same device).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load, save
from torch import nn

from dsco_hub import __version__, distributed
from dsco_hub.card import teacher_card
from dsco_hub.config import TEACHER_CONFIG, TeacherConfig, derive_seed
from dsco_hub.data import (
    decode_images,
    fingerprint,
    load_source,
    load_test_source,
    pin_revision,
    source_folder,
)
from dsco_hub.errors import ConfigError, OutputError
from dsco_hub.evaluate import build_student, resolve_model, test_accuracy, train_epoch
from dsco_hub.files import atomic_write, check_out_path, make_dirs
from dsco_hub.writer import check_fingerprint

WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"
# Settings a rerun must repeat to resume (or to find the teacher complete): (key in teacher_config.json, option)
_RESUME_KEYS = (
    ("source", "SOURCE"),
    ("config", "--config"),
    ("split", "--split"),
    ("revision", "--revision"),
    ("test_split", "--test-split"),
    ("eval_model", "--eval-model"),
    ("epochs", "--epochs"),
    ("max_images", "--max-images"),
    ("seed", "--seed"),
    ("lr", "--lr"),
    ("batch_size", "--batch-size"),
)


@dataclass
class Teacher:
    """A trained teacher, loaded: the network and what its folder records.

    Attributes:
        model (`nn.Module`): the network in eval mode, on the CPU; logits `(batch_size, num_classes)` of images
            `(batch_size, channels, height, width)` in `[-1, 1]`.
        config (`dict`): its `teacher_config.json`.
        name (`str`): the folder's name (never a path: it goes into cards and results).
        digest (`str`): `teacher_digest` of the folder (its config and weights).
    """

    model: nn.Module
    config: dict[str, Any]
    name: str
    digest: str

    def describe(self) -> dict[str, Any]:
        """The teacher as an evaluation's `protocol.teacher` records it: name, digest, student, images, accuracy."""
        return {
            "name": self.name,
            "digest": self.digest,
            "model": self.config["model"],
            "source": self.config["source_name"],
            "num_images": self.config["num_images"],
            "epochs": self.config["epochs"],
            "test_accuracy": self.config["test_accuracy"],
        }

    def check(self, class_names: list[str], channels: int, image_size: tuple[int, int]) -> None:
        """Refuse a teacher trained on other classes, channels or image size than the evaluation's test images.

        Args:
            class_names (`list[str]`): the evaluation's classes, in label order.
            channels (`int`): the test images' channels.
            image_size (`tuple[int, int]`): the test images' `(height, width)`.

        Raises:
            ConfigError: one line naming `--teacher`, what differs and the fix.
        """
        fix = "train one on the evaluation's source: dsco-hub teacher train SOURCE --out DIR"
        if list(self.config["class_names"]) != list(class_names):
            raise ConfigError(
                f"--teacher={self.name!r} was trained on other classes ({len(self.config['class_names'])}: "
                f"{', '.join(self.config['class_names'][:5])}...) than the evaluation's {len(class_names)} "
                f"({', '.join(class_names[:5])}...); {fix}."
            )
        theirs = (self.config["channels"], *self.config["image_size"])
        if theirs != (channels, *image_size):
            raise ConfigError(
                f"--teacher={self.name!r} takes images of {theirs[0]} x {theirs[1]} x {theirs[2]} (C x H x W), the "
                f"test images are {channels} x {image_size[0]} x {image_size[1]}; {fix}."
            )


def _shown(source: str) -> str:
    """A source as results show it: a local folder by its name (never a path), a Hub id as it is."""
    path = Path(source).expanduser()
    return path.resolve().name if path.exists() else source


def teacher_digest(folder: str | Path) -> str:
    """A teacher's identity: the first 12 hex digits of the SHA-256 of its `teacher_config.json` and weights.

    The weights count as well as the config: the same command retrained in place (on a GPU, or after a resume on
    another device) can give other weights, hence other soft labels, and must not pass for the same teacher.

    Args:
        folder (`str` or `Path`): a finished teacher folder (`teacher_config.json` and `model.safetensors`).

    Returns:
        `str`: e.g. "7d1c0a9e42b5".

    Raises:
        FileNotFoundError: either file is missing (`load_teacher` checks both first).
    """
    path = Path(folder).expanduser()
    digest = hashlib.sha256()
    for name in (TEACHER_CONFIG, WEIGHTS):
        digest.update(name.encode() + b"\0" + (path / name).read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def load_teacher(folder: str | Path) -> Teacher:
    """Load a teacher written by `train_teacher` (`dsco-hub teacher train`).

    Args:
        folder (`str` or `Path`): the teacher folder.

    Returns:
        `Teacher`: the network (CPU, eval mode) and its config.

    Raises:
        ConfigError: the folder holds no finished teacher (no `teacher_config.json` with a test accuracy, or no
            `model.safetensors`).
    """
    path = Path(folder).expanduser()
    config_file = path / TEACHER_CONFIG
    config = json.loads(config_file.read_text()) if config_file.is_file() else None
    if config is None or config.get("test_accuracy") is None or not (path / WEIGHTS).is_file():
        raise ConfigError(
            f"--teacher={str(folder)!r} holds no finished teacher ({TEACHER_CONFIG} and {WEIGHTS}); train it with "
            "dsco-hub teacher train SOURCE --out DIR (a rerun resumes an unfinished one)."
        )
    model = build_student(config["model"], config["channels"], len(config["class_names"]), tuple(config["image_size"]))
    model.load_state_dict(load((path / WEIGHTS).read_bytes()))
    return Teacher(model=model.eval(), config=config, name=path.resolve().name, digest=teacher_digest(path))


def _settings(cfg: TeacherConfig) -> dict[str, Any]:
    """The settings of `cfg` that `teacher_config.json` records and a rerun must repeat."""
    return {
        "source": cfg.source.source,
        "config": cfg.source.config_name,
        "split": cfg.source.split,
        "revision": cfg.source.revision,
        "test_split": cfg.source.test_split,
        "eval_model": cfg.model,
        "epochs": cfg.epochs,
        "max_images": cfg.max_images,
        "seed": cfg.seed,
        "lr": cfg.lr,
        "momentum": cfg.momentum,
        "weight_decay": cfg.weight_decay,
        "batch_size": cfg.batch_size,
        "augment": cfg.augment,
        "flip": cfg.flip,
    }


def _check_rerun(out: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The saved `teacher_config.json` of `out` when a rerun may resume or find it done (None for a new folder).

    Raises:
        OutputError: `out` holds files but no teacher (never overwritten), or a teacher of other settings.
    """
    config_file = out / TEACHER_CONFIG
    if not config_file.is_file():
        if out.exists() and any(out.iterdir()):
            raise OutputError(
                f"--out={str(out)!r} is not empty and holds no {TEACHER_CONFIG}; pass a new folder, e.g. --out "
                "./teacher."
            )
        return None
    saved = json.loads(config_file.read_text())
    for key, option in _RESUME_KEYS:
        if saved.get(key) != settings[key]:
            raise ConfigError(
                f"{option}={settings[key]!r} differs from the teacher in {out.name} ({option}={saved.get(key)!r}); "
                "rerun with the same settings to resume, or pass another --out."
            )
    return saved


def train_teacher(cfg: TeacherConfig, command: str | None = None, report=None) -> Path:
    """Train (or resume) a teacher on the source's training split and test it (`dsco-hub teacher train`).

    The network is `evaluate.build_student(cfg.model, ...)` (ConvNet-3 up to 64 px, ResNet-18 above), initialised
    from `derive_seed(cfg.seed, "teacher", "init")`, trained for `cfg.epochs` epochs with SGD (learning rate
    `cfg.lr`, divided by 10 from epoch `epochs // 2`) and DSA-style augmentation, as the evaluation's students are,
    on `distributed.process_state().device`. Images are decoded as the evaluation decodes them: at the side of the
    test split's first image, with its channels. A checkpoint is written atomically after each epoch; a rerun of
    the same command resumes from it, and a finished teacher is left as it is. Both are refused when the source's
    data changed since the teacher was started (`data.fingerprint`, recorded in `teacher_config.json`), and a Hub
    source is loaded at the commit recorded then (`data.pin_revision`).

    Args:
        cfg (`TeacherConfig`): what to train and where (`cfg.out`).
        command (`str`, *optional*): the command line, recorded in the config and the card.
        report (`Callable[[str], Any]`, *optional*): called with one-line progress messages.

    Returns:
        `Path`: the teacher folder.

    Raises:
        ConfigError: an option is out of range, `cfg.out` holds a teacher of other settings (the message names
            the first differing option) or of other source data, or the command runs under a launcher with several
            processes.
        OutputError: `cfg.out` is refused by `files.check_out_path`, or holds files that are not a teacher.
        SourceError: the source, its split or its test split cannot be used.
    """
    cfg.validate()
    say = report or (lambda message: None)
    state = distributed.process_state()
    if state.world_size > 1:
        raise ConfigError(
            f"dsco-hub teacher train runs in one process, not {state.world_size}: launch it without torchrun or "
            "accelerate launch (it trains on that process's device)."
        )
    out = check_out_path(cfg.out, "--out", [source_folder(cfg.source)])  # never into a source, nor the package
    settings = _settings(cfg)
    saved = _check_rerun(out, settings)
    made_from = fingerprint(cfg.source)  # what the teacher learns from: a rerun on other data is refused
    if saved is not None:
        fix = "pass another --out to train a teacher on it"
        check_fingerprint(saved.get("source_fingerprint"), made_from, f"the teacher in {out.name}", fix=fix)
    if saved is not None and saved.get("test_accuracy") is not None and (out / WEIGHTS).is_file():
        say(f"teacher in {out.name} is complete ({saved['test_accuracy'] * 100:.2f} % test accuracy); nothing to do")
        return out

    # Data: the training split (a seeded subset with --max-images) and the test split, decoded at the test size
    source = pin_revision(cfg.source, made_from)  # a Hub source at the commit fingerprinted above
    train = load_source(source)
    test = load_test_source(source, train.class_names, fix="pass --test-split SPLIT, a split apart from --split")
    channels, height, width = test.image_shape
    size = min(height, width)
    rows = np.arange(len(train.labels))
    if cfg.max_images is not None and cfg.max_images < len(rows):
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "teacher", "images"))
        rows = np.sort(torch.randperm(len(rows), generator=generator)[: cfg.max_images].numpy())
    test_rows = np.flatnonzero(test.labels >= 0)  # with --classes, rows of other classes are labelled -1
    say(f"decoding {len(rows)} training and {len(test_rows)} test images at {size} px")
    device = state.device
    x_train = decode_images(train, rows, channels, size).to(device)  # (N, C, S, S) uint8
    y_train = torch.from_numpy(train.labels[rows]).long().to(device)
    test_images = decode_images(test, test_rows, channels, size)  # (M, C, S, S) uint8
    test_labels = torch.from_numpy(test.labels[test_rows]).long()

    # The network and its optimizer, from the checkpoint when there is one
    model_name = resolve_model(cfg.model, (size, size))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "teacher", "init"))
        model = build_student(model_name, channels, train.num_classes, (size, size))
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    config = {
        **settings,  # "source" as given (None = the embedded subset), compared on a rerun
        "source_name": _shown(train.source_id),  # a local folder by its name: the config travels with the weights
        "source_fingerprint": made_from,  # compared on a rerun (`writer.check_fingerprint`)
        "model": model_name,
        "class_names": list(train.class_names),
        "channels": channels,
        "image_size": [size, size],
        "num_images": len(rows),
        "test_images": len(test_rows),
        "test_accuracy": None,
        "command": command,
        "dsco_hub_version": __version__,
    }
    make_dirs(out)
    if saved is None:
        atomic_write(out / TEACHER_CONFIG, json.dumps(config, indent=2) + "\n")
    start = _resume(out / CHECKPOINT, model, optimizer, device)
    if start:
        say(f"resuming the teacher in {out.name} after epoch {start} of {cfg.epochs}")

    # Training: one checkpoint per epoch, each epoch seeded by its index
    flip = cfg.flip if cfg.flip is not None else channels == 3
    precision = distributed.eval_precision(device)
    began = time.monotonic()
    for epoch in range(start, cfg.epochs):
        lr = cfg.lr / 10 if epoch >= cfg.epochs // 2 and epoch > 0 else cfg.lr
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "teacher", epoch))
        train_epoch(model, optimizer, x_train, y_train, generator, cfg.batch_size, cfg.augment, flip, precision)
        _checkpoint(out / CHECKPOINT, model, optimizer, epoch + 1)
        say(f"teacher epoch {epoch + 1}/{cfg.epochs} done ({time.monotonic() - began:.0f} s)")

    # Test, then the weights, the config with the accuracy, and the card
    accuracy = test_accuracy(model, test_images, test_labels, precision)
    say(f"teacher test accuracy: {accuracy * 100:.2f} % on {len(test_rows)} images")
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    atomic_write(out / WEIGHTS, save(weights))
    config["test_accuracy"] = accuracy
    config["device"] = distributed.describe_device(device)
    atomic_write(out / TEACHER_CONFIG, json.dumps(config, indent=2) + "\n")
    atomic_write(out / "README.md", str(teacher_card(config, train, sum(p.numel() for p in model.parameters()))))
    (out / CHECKPOINT).unlink(missing_ok=True)
    return out


def _checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epochs_done: int) -> None:
    """Weights, SGD momentum buffers and the epochs done, as one safetensors file written atomically."""
    tensors = {f"model.{name}": t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    for index, param in enumerate(model.parameters()):
        buffer = optimizer.state.get(param, {}).get("momentum_buffer")
        if buffer is not None:
            tensors[f"momentum.{index}"] = buffer.detach().cpu().contiguous()
    atomic_write(path, save(tensors, metadata={"epochs_done": str(epochs_done)}))


def _resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> int:
    """Load a checkpoint into `model` and `optimizer`; the epochs it had done (0 without a checkpoint)."""
    if not path.is_file():
        return 0
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        epochs_done = int(handle.metadata()["epochs_done"])
    tensors = load(path.read_bytes())
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    for index, param in enumerate(model.parameters()):
        buffer = tensors.get(f"momentum.{index}")
        if buffer is not None:
            optimizer.state[param]["momentum_buffer"] = buffer.to(device)
    return epochs_done
