"""Shared fixtures: tiny image-classification datasets built inline (offline, seeded, a few KB each)."""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

from dsco_hub.config import PriorTrainConfig
from dsco_hub.models import save_unet_prior
from dsco_hub.prior import build_unet

CLASS_NAMES = ["circle", "square", "stripe"]


def make_image(k: int, i: int, size: int = 16, mode: str = "L") -> Image.Image:
    """A class-dependent pattern with per-image noise: class 0 bright centre, 1 bright left half, 2 stripes."""
    rng = np.random.default_rng(1000 * k + i)
    base = rng.integers(0, 60, (size, size)).astype(np.uint8)
    if k == 0:
        base[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] += 150
    elif k == 1:
        base[:, : size // 2] += 150
    else:
        base[::4] += 150
    image = Image.fromarray(base, mode="L")
    if mode == "L":
        return image
    if mode == "RGB":
        return Image.merge("RGB", (image, image, image))
    if mode == "RGBA":
        return Image.merge("RGBA", (image, image, image, Image.new("L", image.size, 200)))
    if mode == "P":
        return Image.merge("RGB", (image, image, image)).convert("P")
    raise ValueError(mode)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def tiny_dataset(per_class=(8, 6, 5), size: int = 16, modes=("L",), label_kind: str = "classlabel", seed_offset=0):
    """A `datasets.Dataset` with an `image` column and labels of `label_kind` (classlabel, int or str)."""
    images, labels = [], []
    for k, n in enumerate(per_class):
        for i in range(n):
            images.append(
                {"bytes": png(make_image(k, i + seed_offset, size, modes[(k + i) % len(modes)])), "path": None}
            )
            labels.append(k)
    order = np.random.default_rng(0).permutation(len(labels))  # classes interleaved, as in real data
    images = [images[j] for j in order]
    labels = [labels[j] for j in order]
    if label_kind == "classlabel":
        feature = datasets.ClassLabel(names=CLASS_NAMES)
    elif label_kind == "int":
        labels = [10 + 5 * v for v in labels]
        feature = datasets.Value("int64")
    else:
        labels = [CLASS_NAMES[v] for v in labels]
        feature = datasets.Value("string")
    features = datasets.Features({"image": datasets.Image(), "label": feature})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def write_repo(folder: Path, train: datasets.Dataset, test: datasets.Dataset | None = None) -> Path:
    """Write a `datasets` repo folder (data/<split>-00000-of-00001.parquet), as the Hub stores it."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    train.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    if test is not None:
        test.to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))
    (folder / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# tiny\n\nCitation: Tiny et al. 2026.\n")
    return folder


@contextlib.contextmanager
def changed_train_split(repo: Path) -> Iterator[None]:
    """Inside the block, `repo`'s training split holds one image fewer; after it, the original file is back byte for
    byte with its modification time, so that `data.fingerprint` sees the original data again."""
    parquet = repo / "data" / "train-00000-of-00001.parquet"
    original, stat = parquet.read_bytes(), parquet.stat()
    table = pq.read_table(parquet)
    pq.write_table(table.slice(0, table.num_rows - 1), parquet)  # the schema's metadata (class names) kept
    try:
        yield
    finally:
        parquet.write_bytes(original)
        os.utime(parquet, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def source_changed(what: str, recorded: dict, fix: str) -> str:
    """The pattern of `writer.check_fingerprint`'s refusal of `what`, made from the local data `recorded`: the
    fingerprint there, any other now, and `fix`."""
    return (
        rf"SOURCE changed since {re.escape(what)} was made \(local {recorded['value'][:12]} there, local "
        rf"[0-9a-f]{{12}} now\): its rows no longer match; restore the source, or {re.escape(fix)}\.$"
    )


@pytest.fixture
def tiny_repo(tmp_path) -> Path:
    """A local repo folder: 3 classes (8/6/5 train, 4 test each), 16x16 grayscale, mixed image modes."""
    train = tiny_dataset(modes=("L", "RGB", "P", "RGBA"))
    test = tiny_dataset(per_class=(4, 4, 4), seed_offset=100)
    return write_repo(tmp_path / "tiny", train, test)


@pytest.fixture
def tiny_prior(tmp_path):
    """A tiny untrained class-conditional UNet prior (1 channel, 16 px, CLASS_NAMES) saved as a diffusers folder."""
    torch.manual_seed(0)
    unet = build_unet(PriorTrainConfig(block_out_channels=(8, 16), norm_num_groups=8), len(CLASS_NAMES), 1, 16)
    folder = tmp_path / "prior"
    save_unet_prior(unet, DDIMScheduler(num_train_timesteps=50), dict(enumerate(CLASS_NAMES)), folder)
    return folder
