"""The evaluation protocol of `docs/method.md` §6: train a student from scratch on a small set, test it.

This is the protocol of the condensation literature: Zhao, Mopuri and Bilen, "Dataset Condensation
with Gradient Matching" (DC, ICLR 2021) and Zhao and Bilen, "Dataset Condensation with
Differentiable Siamese Augmentation" (DSA, ICML 2021). A student (ConvNet-3 up to 64 px, ResNet-18
above) is trained with hard labels, SGD (momentum 0.9, weight decay 5e-4, learning rate divided by
10 at half of the epochs) and DSA-style augmentation, then tested on the source's test split.
Several independent runs give a mean and a standard deviation.

Every random choice (initialisation, batch order, augmentation) derives from
`derive_seed(cfg.seed, "eval", run)` through CPU generators: the same inputs and configuration
give the same accuracies, and the global torch RNG is left untouched.

Students train on the process's device (`distributed.process_state().device`: its own GPU under
`accelerate launch` / `torchrun`, else CUDA when available, else the CPU), with bf16 autocast on GPUs
that have it and float32 on the CPU, whose accuracies are those of the CPU-only versions. The random
draws stay on the CPU (one transfer per epoch), so a GPU run sees the batches and augmentations a CPU
run sees. With several processes, `spread=True` trains run `r` on process `r % W`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dsco_hub import distributed
from dsco_hub.config import EVAL_MODELS, EvalConfig, derive_seed
from dsco_hub.data import to_model_range
from dsco_hub.errors import ConfigError
from dsco_hub.kernels import conv_trunk

AUTO_MAX_SIZE = 64  # "auto" picks ConvNet-3 up to this side (pixels), ResNet-18 above
TEST_BATCH_SIZE = 1024

# DSA augmentation parameters (the defaults of the DSA code, `ParamDiffAug`)
CROP_RATIO = 0.125  # translation up to 1/8 of the side, in whole pixels
SCALE_RATIO = 1.2  # per-axis scale factor in [1/1.2, 1.2]
ROTATE_DEGREES = 15.0  # rotation in [-15, 15] degrees
CUTOUT_RATIO = 0.5  # side of the cut-out square, as a fraction of the image side
FILL = -1.0  # value of uncovered and cut-out pixels: black in the [-1, 1] range
_CROP, _SCALE, _ROTATE, _CUTOUT, _FLIP = range(5)


# ---------------------------------------------------------------------------------------------------------------------
# Students
# ---------------------------------------------------------------------------------------------------------------------


class ConvNet3(nn.Module):
    """ConvNet-3, the standard student of the condensation literature (DC, ICLR 2021).

    `depth` x [conv 3x3 (padding 1), instance norm (`GroupNorm(width, width)` as in the DC code), ReLU,
    average pool 2], then a linear classifier on the flattened features.

    Args:
        channels (`int`): input channels (1 or 3).
        num_classes (`int`): number of classes `K`.
        image_size (`int` or `tuple[int, int]`): input side in pixels, or `(height, width)`; each side must be at
            least `2**depth`.
        width (`int`, *optional*, defaults to 128): conv channels.
        depth (`int`, *optional*, defaults to 3): conv blocks; each halves the side (floored), e.g. 28 -> 14 -> 7 -> 3.

    Raises:
        ConfigError: `image_size` is smaller than `2**depth`.
    """

    def __init__(
        self, channels: int, num_classes: int, image_size: int | tuple[int, int], width: int = 128, depth: int = 3
    ):
        super().__init__()
        height, width_px = (image_size, image_size) if isinstance(image_size, int) else image_size
        if min(height, width_px) < 2**depth:
            raise ConfigError(
                f"image_size={image_size} is too small for a ConvNet-{depth}: each side must be at least "
                f"{2**depth} px; resize the images or pass --eval-model resnet18."
            )
        h, w = height, width_px
        for _ in range(depth):
            h, w = h // 2, w // 2
        self.features = conv_trunk(channels, width, depth)
        self.classifier = nn.Linear(width * h * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features.

        Args:
            x (`torch.Tensor`): `(batch_size, channels, height, width)` float images in `[-1, 1]`.

        Returns:
            `torch.Tensor`: `(batch_size, width * s * s)` with `s` the side after `depth` halvings.
        """
        return self.features(x).flatten(1)  # (B, width * h * w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits `(batch_size, num_classes)` of images `(batch_size, channels, height, width)` in `[-1, 1]`."""
        return self.classifier(self.embed(x))


class BasicBlock(nn.Module):
    """The two-conv residual block of ResNet-18 (He et al., "Deep Residual Learning", CVPR 2016)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, in_planes, H, W)` -> `(B, planes, H / stride, W / stride)`."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 (BasicBlock, [2, 2, 2, 2], batch norm), the student for images above 64 px.

    Written here because torchvision does not import beside the local torch build. The stem is a
    3x3 conv with stride 1 and no max pool for images up to 64 px (the CIFAR variant), else the
    ImageNet stem (7x7 conv with stride 2, then a 3x3 max pool with stride 2).

    Args:
        channels (`int`): input channels (1 or 3).
        num_classes (`int`): number of classes `K`.
        image_size (`int` or `tuple[int, int]`): input side in pixels, or `(height, width)`; selects the stem.
    """

    def __init__(self, channels: int, num_classes: int, image_size: int | tuple[int, int]):
        super().__init__()
        side = image_size if isinstance(image_size, int) else max(image_size)
        if side <= AUTO_MAX_SIZE:
            self.stem = nn.Sequential(
                nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
        blocks: list[nn.Module] = []
        in_planes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)]
            in_planes = planes
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features `(batch_size, 512)` of images `(batch_size, channels, height, width)` in `[-1, 1]`."""
        return self.pool(self.layers(self.stem(x))).flatten(1)  # (B, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits `(batch_size, num_classes)` of images `(batch_size, channels, height, width)` in `[-1, 1]`."""
        return self.fc(self.embed(x))


def resolve_model(name: str, image_size: int | tuple[int, int]) -> str:
    """The student network `name` stands for: "auto" is "convnet3" up to 64 px (longest side), else "resnet18".

    Args:
        name (`str`): `--eval-model`, one of `EVAL_MODELS` ("auto", "convnet3", "resnet18").
        image_size (`int` or `tuple[int, int]`): the images' side in pixels, or `(height, width)`.

    Returns:
        `str`: "convnet3" or "resnet18".

    Raises:
        ConfigError: `name` is not one of `EVAL_MODELS` (the message names `--eval-model` and lists them).
    """
    if name not in EVAL_MODELS:
        raise ConfigError(f"--eval-model={name!r} is unknown; use one of {', '.join(EVAL_MODELS)}.")
    if name != "auto":
        return name
    side = image_size if isinstance(image_size, int) else max(image_size)
    return "convnet3" if side <= AUTO_MAX_SIZE else "resnet18"


def build_student(name: str, channels: int, num_classes: int, image_size: int | tuple[int, int]) -> nn.Module:
    """A freshly initialised student (initialised from the global torch RNG; seed it around this call).

    Args:
        name (`str`): "convnet3", "resnet18" or "auto" (ConvNet-3 up to 64 px, ResNet-18 above).
        channels (`int`): input channels.
        num_classes (`int`): number of classes `K`.
        image_size (`int` or `tuple[int, int]`): input side in pixels, or `(height, width)`.

    Returns:
        `nn.Module`: a `ConvNet3` (width 128, depth 3) or a `ResNet18`, in training mode.

    Raises:
        ConfigError: `name` is unknown (the message names `--eval-model`), or the images are too small for ConvNet-3.
    """
    if resolve_model(name, image_size) == "convnet3":
        return ConvNet3(channels, num_classes, image_size)
    return ResNet18(channels, num_classes, image_size)


# ---------------------------------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------------------------------


def augment(x: torch.Tensor, generator: torch.Generator, flip: bool = False) -> torch.Tensor:
    """DSA-style differentiable augmentation: one random transformation per sample.

    As DSA's single-transformation mode (Zhao and Bilen, ICML 2021), each sample gets exactly one of:
    crop (a translation by up to 1/8 of the side, whole pixels), scale (a factor in `[1/1.2, 1.2]` per
    axis), rotate (up to ±15 degrees), cutout (a square of half the side) and, when `flip`, a horizontal
    flip. Uncovered and cut-out pixels are set to -1 (black in `[-1, 1]`), where DSA's normalised images
    get 0. Crop, scale, rotate and flip are one `affine_grid` + `grid_sample` call for the whole batch
    (cutout samples get the identity), cutout is a mask. Gradients flow to `x`.

    Args:
        x (`torch.Tensor`): `(batch_size, channels, height, width)` float images in `[-1, 1]`.
        generator (`torch.Generator`): CPU generator; the only source of randomness.
        flip (`bool`, *optional*, defaults to `False`): include horizontal flips (only where they preserve labels).

    Returns:
        `torch.Tensor`: the augmented batch, same shape, dtype and device as `x`, in `[-1, 1]`.

    Raises:
        ValueError: `x` is not a 4-D floating-point tensor.
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"augment expects float images (B, C, H, W), got {tuple(x.shape)} {x.dtype}.")
    return apply_augment(x, *augment_draws(x.shape[0], generator, flip))


def augment_draws(
    batch_size: int, generator: torch.Generator, flip: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The random draws of `augment` for one batch, in the order `augment` makes them.

    Drawing a whole epoch's batches ahead (one call per batch, in batch order) gives the numbers `augment` would
    draw batch by batch, so the draws can travel to a GPU once an epoch.

    Args:
        batch_size (`int`): samples in the batch.
        generator (`torch.Generator`): CPU generator.
        flip (`bool`, *optional*, defaults to `False`): whether flips are among the transformations.

    Returns:
        `tuple`: `choice` `(batch_size,)` int64 in `[0, 4]` (crop, scale, rotate, cutout, flip) and `u`
        `(batch_size, 7)` float64 uniform in `[0, 1)`, on the CPU.
    """
    choice = torch.randint(0, 5 if flip else 4, (batch_size,), generator=generator)  # (B,) transformation per sample
    u = torch.rand(batch_size, 7, generator=generator, dtype=torch.float64)  # (B, 7) uniform draws per sample
    return choice, u


def apply_augment(x: torch.Tensor, choice: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Apply the transformations of `augment_draws` to a batch, on `x`'s device (see `augment`).

    Args:
        x (`torch.Tensor`): `(batch_size, channels, height, width)` float images in `[-1, 1]`.
        choice (`torch.Tensor`): `(batch_size,)` int64 transformation per sample, on any device.
        u (`torch.Tensor`): `(batch_size, 7)` float64 uniform draws, on `choice`'s device.

    Returns:
        `torch.Tensor`: the augmented batch, same shape, dtype and device as `x`, in `[-1, 1]`.
    """
    b, _, h, w = x.shape
    on = u.device  # the 2x3 matrices and the cutout mask are built where the draws are (float64)

    # Per-sample 2x3 matrices of every transformation, then one picked per sample
    eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64, device=on).expand(b, 2, 3)
    crop = eye.clone()
    shift_x, shift_y = int(w * CROP_RATIO + 0.5), int(h * CROP_RATIO + 0.5)  # pixels
    crop[:, 0, 2] = 2 * (torch.floor(u[:, 0] * (2 * shift_x + 1)) - shift_x) / w  # whole pixels, normalised
    crop[:, 1, 2] = 2 * (torch.floor(u[:, 1] * (2 * shift_y + 1)) - shift_y) / h
    scale = eye.clone()
    scale[:, 0, 0] = u[:, 2] * (SCALE_RATIO - 1 / SCALE_RATIO) + 1 / SCALE_RATIO
    scale[:, 1, 1] = u[:, 3] * (SCALE_RATIO - 1 / SCALE_RATIO) + 1 / SCALE_RATIO
    angle = (u[:, 4] - 0.5) * 2 * math.radians(ROTATE_DEGREES)  # (B,)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    rotate = torch.stack([cos, sin, zero, -sin, cos, zero], dim=1).view(b, 2, 3)
    mirror = eye.clone()
    mirror[:, 0, 0] = -1.0
    theta = torch.stack([crop, scale, rotate, eye, mirror])[choice, torch.arange(b, device=on)]  # (B, 2, 3)

    # Geometry: sample x + 1 with zero padding, so uncovered pixels come out as FILL = -1
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)  # (B, H, W, 2)
    out = F.grid_sample(x - FILL, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + FILL

    # Cutout: a square of half the side at a random centre, clipped at the borders (as DSA)
    size_h, size_w = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    top = torch.floor(u[:, 5] * (h + 1 - size_h % 2)).long() - size_h // 2  # (B,)
    left = torch.floor(u[:, 6] * (w + 1 - size_w % 2)).long() - size_w // 2  # (B,)
    rows, cols = torch.arange(h, device=on), torch.arange(w, device=on)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size_h)  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size_w)  # (B, W)
    mask = in_rows[:, :, None] & in_cols[:, None, :] & (choice == _CUTOUT)[:, None, None]  # (B, H, W)
    return out.masked_fill(mask[:, None].to(x.device), FILL)  # (B, C, H, W)


# ---------------------------------------------------------------------------------------------------------------------
# Protocol
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """Accuracies of the evaluation protocol on one training set.

    Attributes:
        accuracies (`list[float]`): test accuracy of each run, fractions in `[0, 1]`.
        mean (`float`): mean of `accuracies`, in `[0, 1]`.
        std (`float`): population standard deviation of `accuracies` (`np.std`, as the DC code), in `[0, 1]`.
        model (`str`): the student actually used, "convnet3" or "resnet18".
        epochs (`int`): training epochs per run.
        runs (`int`): number of runs.
        num_train (`int`): number of training images.
    """

    accuracies: list[float]
    mean: float
    std: float
    model: str
    epochs: int
    runs: int
    num_train: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data; accuracies in percent rounded to 2 decimals."""
        return {
            "accuracy_mean": round(self.mean * 100, 2),
            "accuracy_std": round(self.std * 100, 2),
            "accuracies": [round(a * 100, 2) for a in self.accuracies],
            "model": self.model,
            "epochs": self.epochs,
            "runs": self.runs,
            "num_train_images": self.num_train,
        }


def _check_inputs(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
) -> None:
    """Raise `ConfigError` on inputs the protocol cannot use (before any training)."""
    if num_classes < 1:
        raise ConfigError(f"num_classes={num_classes} must be at least 1; pass the source's number of classes.")
    for name, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ConfigError(
                f"{name}_images has shape {tuple(images.shape)} and dtype {images.dtype}; "
                "pass uint8 images (N, C, H, W) in [0, 255] (see dsco_hub.data.decode_images)."
            )
        if len(images) == 0:
            raise ConfigError(f"the {name} set is empty (0 images); pass at least one image per class.")
        if labels.ndim != 1 or len(labels) != len(images) or labels.is_floating_point():
            raise ConfigError(
                f"{name}_labels has shape {tuple(labels.shape)} and dtype {labels.dtype} for {len(images)} images; "
                "pass one int64 label per image."
            )
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ConfigError(
                f"{name}_labels holds label {bad}, outside [0, {num_classes}) for num_classes={num_classes}; "
                "map the labels to 0..num_classes-1 or pass the right num_classes."
            )
    if train_images.shape[1] != test_images.shape[1]:
        raise ConfigError(
            f"train images have {train_images.shape[1]} channels but test images have {test_images.shape[1]}; "
            "decode both sets with the same channel count (1 = grayscale, 3 = RGB)."
        )


def soft_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Knowledge-distillation loss on soft labels: `T^2 KL(softmax(t / T) || softmax(s / T))`, batch mean.

    Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network" (arXiv 1503.02531): the student
    matches the teacher's temperature-softened distribution, and the `T^2` factor keeps the gradient's scale
    independent of `T`. This is the loss SRe2L (Yin et al., NeurIPS 2023, arXiv 2306.13092) and RDED (Sun et al.,
    CVPR 2024, arXiv 2312.03526) evaluate their sets with, on the teacher's logits of each augmented batch. Its
    gradient in the student's logits is `T (softmax(s / T) - softmax(t / T)) / B`: with `T = 1` and a teacher whose
    softmax is exactly one-hot, the gradient of cross-entropy on the hard labels.

    Args:
        student_logits (`torch.Tensor`): `(batch_size, num_classes)` float logits of the student.
        teacher_logits (`torch.Tensor`): `(batch_size, num_classes)` float logits of the teacher (no gradient).
        temperature (`float`): `T > 0`.

    Returns:
        `torch.Tensor`: a scalar, >= 0 (0 when the two distributions are equal).
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)  # (B, K)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)  # (B, K)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    generator: torch.Generator,
    batch_size: int,
    augment: bool,
    flip: bool,
    precision: str,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
) -> None:
    """One epoch of the protocol's training: a seeded reshuffle, DSA augmentation, one SGD step per batch.

    The epoch's randomness (order, then each batch's augmentation draws, in batch order) is drawn on the CPU from
    `generator` and moved to the model's device at once. Without a teacher the loss is cross-entropy on `y_train`;
    with one it is `soft_label_loss` on the teacher's logits of the same augmented batch (`y_train` unused).

    Args:
        model (`nn.Module`): the network, in training mode, on the device of `x_train`.
        optimizer (`torch.optim.Optimizer`): its optimizer (the learning rate is the caller's).
        x_train (`torch.Tensor`): `(N, C, H, W)` uint8 in `[0, 255]`, or float in `[-1, 1]`.
        y_train (`torch.Tensor`): `(N,)` int64 labels, on the same device.
        generator (`torch.Generator`): CPU generator of the order and the augmentation.
        batch_size (`int`): images per step.
        augment (`bool`): DSA-style augmentation (`augment`).
        flip (`bool`): include horizontal flips.
        precision (`str`): "no" (float32) or an autocast precision (`distributed.eval_precision`).
        teacher (`nn.Module`, *optional*): a trained network in eval mode on the same device; soft labels when given.
        temperature (`float`, *optional*, defaults to 4.0): `T` of `soft_label_loss`.
    """
    device = x_train.device
    order = torch.randperm(len(x_train), generator=generator)
    starts = range(0, len(order), batch_size)
    if augment:
        draws = [augment_draws(len(order[start : start + batch_size]), generator, flip) for start in starts]
        choices = torch.cat([choice for choice, _ in draws]).to(device)  # (N,)
        uniforms = torch.cat([u for _, u in draws]).to(device)  # (N, 7)
    order = order.to(device)
    for start in starts:
        stop = start + batch_size
        idx = order[start:stop]
        x = x_train[idx]  # (b, C, H, W)
        if x.dtype == torch.uint8:
            x = to_model_range(x)
        if augment:
            x = apply_augment(x, choices[start:stop], uniforms[start:stop])
        with distributed.autocast(device, precision):
            logits = model(x)
        if teacher is None:
            loss = F.cross_entropy(logits.float(), y_train[idx])
        else:
            with torch.no_grad(), distributed.autocast(device, precision):
                teacher_logits = teacher(x)  # (b, K)
            loss = soft_label_loss(logits.float(), teacher_logits.float(), temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def test_accuracy(model: nn.Module, test_images: torch.Tensor, test_labels: torch.Tensor, precision: str) -> float:
    """Test accuracy of `model` (put in eval mode) on a test split, in batches of `TEST_BATCH_SIZE`.

    Args:
        model (`nn.Module`): the network, on its device.
        test_images (`torch.Tensor`): `(M, C, H, W)` uint8 in `[0, 255]`, on any device.
        test_labels (`torch.Tensor`): `(M,)` int64.
        precision (`str`): "no" or an autocast precision.

    Returns:
        `float`: the fraction of images whose arg-max prediction is their label, in `[0, 1]`.
    """
    device = next(model.parameters()).device
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    with torch.no_grad():
        for start in range(0, len(test_images), TEST_BATCH_SIZE):
            x = to_model_range(test_images[start : start + TEST_BATCH_SIZE].to(device))  # (b, C, H', W')
            with distributed.autocast(device, precision):
                pred = model(x).argmax(dim=1)  # (b,)
            correct += (pred == test_labels[start : start + TEST_BATCH_SIZE].to(device)).sum()
    return int(correct) / len(test_images)


def _ready_teacher(
    cfg: EvalConfig, teacher: nn.Module | None, test_images: torch.Tensor, num_classes: int, device: torch.device
) -> nn.Module | None:
    """The teacher of `cfg.labels == "soft"` on `device` in eval mode (None for hard labels), checked on one image."""
    if cfg.labels != "soft":
        return None
    if teacher is None:
        raise ConfigError(
            f"--eval-labels=soft needs a teacher network; pass teacher=dsco_hub.teacher.load_teacher({cfg.teacher!r})."
        )
    teacher = teacher.to(device).eval()
    with torch.no_grad():
        try:
            outputs = teacher(to_model_range(test_images[:1].to(device))).shape[-1]  # (1, K')
        except RuntimeError:
            outputs = None
    if outputs != num_classes:
        raise ConfigError(
            f"--teacher={cfg.teacher!r} does not fit the test images {tuple(test_images.shape[1:])} of "
            f"{num_classes} classes; train a teacher on this source: dsco-hub teacher train SOURCE --out DIR."
        )
    return teacher


def train_and_test(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    cfg: EvalConfig,
    run: int,
    progress: Callable[[int], Any] | None = None,
    device: torch.device | str | None = None,
    teacher: nn.Module | None = None,
) -> float:
    """Train one student from scratch on the training set (hard or soft labels) and return its test accuracy.

    The student, batch order and augmentation of run `run` derive from `derive_seed(cfg.seed, "eval", run)`;
    the global torch RNG is left as it was. The student, the images and the augmentation live on `device`; the
    random draws are made on the CPU, an epoch at a time, in the order a batch-by-batch loop makes them.

    Args:
        train_images (`torch.Tensor`): `(N, C, H, W)` uint8 in `[0, 255]`; resized (bilinear, antialiased) to
            the test resolution when it differs.
        train_labels (`torch.Tensor`): `(N,)` int64 in `[0, num_classes)`.
        test_images (`torch.Tensor`): `(M, C, H', W')` uint8 in `[0, 255]`.
        test_labels (`torch.Tensor`): `(M,)` int64 in `[0, num_classes)`.
        num_classes (`int`): number of classes `K`.
        cfg (`EvalConfig`): the protocol (student, epochs, SGD, batch size, augmentation, seed).
        run (`int`): the run index `r`; different runs train different students.
        progress (`Callable[[int], Any]`, *optional*): called with 1 after each epoch.
        device (`torch.device` or `str`, *optional*): where the student trains; defaults to this process's device
            (`distributed.process_state().device`). bf16 autocast on CUDA devices with bf16, float32 elsewhere
            (`distributed.eval_precision`).
        teacher (`nn.Module`, *optional*): with `cfg.labels == "soft"`, the network whose soft labels of each
            augmented batch the student learns (`dsco_hub.teacher.load_teacher`); moved to `device`, in eval mode.

    Returns:
        `float`: test accuracy, a fraction in `[0, 1]`.

    Raises:
        ConfigError: the inputs are unusable (see `evaluate_images`), the student is unknown, or soft labels are
            asked without a teacher (or with one of another number of classes).
    """
    _check_inputs(train_images, train_labels, test_images, test_labels, num_classes)
    device = torch.device(device) if device is not None else distributed.process_state().device
    precision = distributed.eval_precision(device)
    channels, height, width = test_images.shape[1:]
    teacher = _ready_teacher(cfg, teacher, test_images, num_classes, device)
    seed = derive_seed(cfg.seed, "eval", run)

    # Training set at the test resolution, on the device: uint8 (converted to [-1, 1] per batch), or float in
    # [-1, 1] when it had to be resized
    if train_images.shape[2:] != test_images.shape[2:]:
        x_train = to_model_range(train_images)  # (N, C, h, w)
        x_train = F.interpolate(x_train, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    else:
        x_train = train_images
    x_train = x_train.to(device)  # (N, C, H, W)
    y_train = train_labels.long().to(device)

    # Student, initialised from a derived seed without touching the global RNG
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "eval", run, "init"))
        model = build_student(cfg.model, channels, num_classes, (height, width))
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    flip = cfg.flip if cfg.flip is not None else channels == 3

    # Training: SGD on the hard labels (or the teacher's soft labels), lr / 10 from epoch epochs // 2
    model.train()
    for epoch in range(cfg.epochs):
        if epoch == cfg.epochs // 2 and epoch > 0:
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr / 10
        train_epoch(
            model,
            optimizer,
            x_train,
            y_train,
            generator,
            cfg.batch_size,
            cfg.augment,
            flip,
            precision,
            teacher=teacher,
            temperature=cfg.temperature,
        )
        if progress is not None:
            progress(1)

    # Test: batches moved to the device one at a time; the count is read once
    return test_accuracy(model, test_images, test_labels, precision)


def runs_of_process(runs: int, rank: int, world_size: int) -> list[int]:
    """The runs (indices in `[0, runs)`) that process `rank` of `world_size` trains when runs are spread: `r % W`."""
    return [run for run in range(runs) if run % world_size == rank]


def evaluate_images(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    cfg: EvalConfig,
    progress: Callable[[int], Any] | None = None,
    state: distributed.ProcessState | None = None,
    spread: bool = False,
    teacher: nn.Module | None = None,
) -> EvalResult:
    """Run the evaluation protocol (`docs/method.md` §6): `cfg.runs` students trained from scratch, then tested.

    Args:
        train_images (`torch.Tensor`): `(N, C, H, W)` uint8 in `[0, 255]`, e.g. a concentrated set.
        train_labels (`torch.Tensor`): `(N,)` int64 in `[0, num_classes)`.
        test_images (`torch.Tensor`): `(M, C, H', W')` uint8 in `[0, 255]`; training images are resized to `H' x W'`.
        test_labels (`torch.Tensor`): `(M,)` int64 in `[0, num_classes)`.
        num_classes (`int`): number of classes `K`.
        cfg (`EvalConfig`): the protocol; run `r` is seeded by `derive_seed(cfg.seed, "eval", r)`.
        progress (`Callable[[int], Any]`, *optional*): called with 1 after each epoch of each run this process
            trains (`cfg.runs * cfg.epochs` calls in all with one process).
        state (`distributed.ProcessState`, *optional*): this process in the launch; defaults to
            `distributed.process_state()`. Students train on `state.device`.
        spread (`bool`, *optional*, defaults to `False`): with several processes, train run `r` on process
            `r % world_size` and gather the accuracies on every process (a collective: every process must call
            this with the same inputs). Runs are seeded by their index, so the accuracies are those of one process.
        teacher (`nn.Module`, *optional*): the teacher of `cfg.labels == "soft"` (`dsco_hub.teacher.load_teacher`).

    Returns:
        `EvalResult`: per-run accuracies (in run order), their mean and (population) std, and what was run.

    Raises:
        ConfigError: an option of `cfg` is out of range, a set is empty, a label is outside `[0, num_classes)`,
            images are not uint8 `(N, C, H, W)`, train and test channel counts differ, or soft labels are asked
            without a teacher that fits the test images.
    """
    cfg.validate()
    _check_inputs(train_images, train_labels, test_images, test_labels, num_classes)
    model = resolve_model(cfg.model, tuple(test_images.shape[2:]))
    state = state if state is not None else distributed.process_state()
    mine = runs_of_process(cfg.runs, state.rank, state.world_size) if spread else list(range(cfg.runs))
    done = [
        (
            run,
            train_and_test(
                train_images,
                train_labels,
                test_images,
                test_labels,
                num_classes,
                cfg,
                run,
                progress,
                state.device,
                teacher,
            ),
        )
        for run in mine
    ]
    if spread:
        done = state.gather(done)
    accuracies = [accuracy for _, accuracy in sorted(done)]
    return EvalResult(
        accuracies=accuracies,
        mean=float(np.mean(accuracies)),
        std=float(np.std(accuracies)),
        model=model,
        epochs=cfg.epochs,
        runs=cfg.runs,
        num_train=len(train_images),
    )
