"""Selection of real images per class: the random and kernel-herding baselines, and DsCo's doping.

Doping (`docs/method.md` §5) replaces `m = round(rho * IPC)` synthetic images of a class by real
ones chosen by greedy kernel herding in a fixed feature space (a seeded random ConvNet-3): each
pick minimises `MMD^2(synthetic_k ∪ picked, real_k)`, so real images go where the synthetic ones
cover the class worst. With no synthetic images (`rho = 1`) this is plain kernel herding (Chen,
Welling and Smola, UAI 2010), the "herding" baseline of the condensation literature; `random`
draws a seeded random subset. `select` is the one entry for all three: the baselines' IPC images per class
and doping's `m` beside NOpt's images, which it first converts to the source's format (`to_source_format`).
"""

from __future__ import annotations

import numpy as np
import torch

from dsco_hub.config import derive_seed
from dsco_hub.data import SourceData, decode_images, pil_to_uint8, to_model_range, to_pil
from dsco_hub.errors import ConfigError
from dsco_hub.kernels import RandomFeatures, embed, herd


def check_ipc(source: SourceData, ipc: int, what: str = "--ipc", fix: str | None = None) -> None:
    """Refuse needing more real images per class than the smallest class of `source` has.

    Args:
        source (`SourceData`): the split the real images are drawn from.
        ipc (`int`): real images needed per class.
        what (`str`, *optional*, defaults to "--ipc"): what asks for them, named in the message.
        fix (`str`, *optional*): the fix the message ends with; None: "use --ipc N or less" (N the smallest class).

    Raises:
        ConfigError: `ipc` is larger than the smallest class (names the class, its size and the fix).
    """
    sizes = [len(rows) for rows in source.class_index]
    k = int(np.argmin(sizes))
    if ipc > sizes[k]:
        option = f"--ipc={ipc}" if what == "--ipc" else f"{what} (needs {ipc} real images per class)"
        raise ConfigError(
            f"{option} is larger than class {k} ({source.class_names[k]!r}), which has {sizes[k]} images in "
            f"{source.source_id} [{source.split}]; {fix or f'use --ipc {sizes[k]} or less'}."
        )


def select(
    source: SourceData,
    class_id: int,
    num: int,
    seed: int,
    how: str = "herding",
    pool: int = 5000,
    kernel: str = "gaussian",
    feature_seed: int = 0,
    synthetic: torch.Tensor | None = None,
) -> np.ndarray:
    """`num` real images of class `class_id`: the random and herding baselines, and doping beside `synthetic`.

    Args:
        source (`SourceData`): the training split.
        class_id (`int`): class in `[0, K)`.
        num (`int`): real images to pick.
        seed (`int`): run seed.
        how (`str`, *optional*, defaults to "herding"): "random" (`select_random`), "herding" (`select_herding`,
            continued from `synthetic`: joint doping) or "herding-independent" (`select_herding` from zero, blind
            to `synthetic`: the real images the herding baseline would pick).
        pool, kernel, feature_seed: herding's settings, as in `select_herding`.
        synthetic (`torch.Tensor`, *optional*): the class's synthetic images `(n, C, H, W)` uint8 in the model's
            format (doping; herding only), converted to the source's format where herding measures.

    Returns:
        `np.ndarray`: `(num,)` int64 row indices of `source`, in pick order.

    Raises:
        ImageDecodeError: a picked (random) or candidate (herding) image cannot be decoded; random picks are
            copied undecoded, so they are decoded once here to report a corrupt image by its source row.
    """
    if how == "random":
        picks = select_random(source.class_index[class_id], num, seed, class_id)
        source.decode_pil(picks)  # copied undecoded: a corrupt image is reported here, by its source row
        return picks
    joint = synthetic is not None and how == "herding"
    start = to_source_format(synthetic, source.image_shape) if joint else None
    return select_herding(
        source, class_id, num, seed, pool=pool, kernel=kernel, feature_seed=feature_seed, synthetic=start
    )


def to_source_format(images: torch.Tensor, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """Synthetic images in a source's format, where herding compares them with the real ones.

    Args:
        images (`torch.Tensor`): `(n, C', H', W')` uint8 in `[0, 255]`, the model's channels and resolution.
        image_shape (`tuple[int, int, int]`): the source's `(C, H, W)` (`SourceData.image_shape`).

    Returns:
        `torch.Tensor`: `(n, C, S, S)` float32 in `[-1, 1]`, `S = min(H, W)` (through PIL, as real images are
        decoded: `data.pil_to_uint8`).
    """
    channels, side = image_shape[0], min(image_shape[1:])
    return to_model_range(pil_to_uint8([to_pil(image) for image in images], channels, side))


def select_random(rows: np.ndarray, num: int, seed: int, class_id: int) -> np.ndarray:
    """A seeded random subset of `num` of `rows` (the row indices of one class).

    The draw depends only on `(seed, class_id)` and `rows`, never on other classes or processes.

    Returns:
        `np.ndarray`: `(num,)` int64 row indices, in draw order.
    """
    rng = np.random.default_rng(derive_seed(seed, "random", class_id))
    return rows[rng.permutation(len(rows))[:num]]


def herding_pool(rows: np.ndarray, pool: int, seed: int, class_id: int) -> np.ndarray:
    """The candidates herding considers: all of `rows` when at most `pool`, else a seeded random subset, sorted."""
    if len(rows) <= pool:
        return rows
    rng = np.random.default_rng(derive_seed(seed, "herding-pool", class_id))
    return np.sort(rows[rng.choice(len(rows), pool, replace=False)])


def select_herding(
    source: SourceData,
    class_id: int,
    num: int,
    seed: int,
    pool: int = 5000,
    kernel: str = "gaussian",
    feature_seed: int = 0,
    synthetic: torch.Tensor | None = None,
) -> np.ndarray:
    """Kernel herding of `num` real images of class `class_id`, optionally on top of synthetic images (doping).

    Candidates and targets are the same pool of real images (at most `pool`, a seeded subset); features are a
    fixed random ConvNet-3 (`feature_seed`) applied to images at the source's resolution in `[-1, 1]`.

    Args:
        source (`SourceData`): the training split.
        class_id (`int`): class in `[0, K)`.
        num (`int`): real images to pick, at most the pool size.
        seed (`int`): run seed (chooses the pool when the class is larger than `pool`).
        pool (`int`, *optional*, defaults to 5000): cap on candidates (bounds time and memory: `pool^2` floats).
        kernel (`str`, *optional*, defaults to "gaussian"): "gaussian" (multi-bandwidth) or "linear".
        feature_seed (`int`, *optional*, defaults to 0): seed of the fixed random feature map.
        synthetic (`torch.Tensor`, *optional*): `(S, C, H, W)` synthetic images in `[-1, 1]` at the source's
            resolution already in the set (doping); None for plain herding.

    Returns:
        `np.ndarray`: `(num,)` int64 row indices of `source`, in pick order.

    Raises:
        ImageDecodeError: a candidate image cannot be decoded.
    """
    candidates = herding_pool(source.class_index[class_id], pool, seed, class_id)
    channels, height, width = source.image_shape
    images = to_model_range(decode_images(source, candidates, channels, min(height, width)))  # (N, C, H, W)
    features = RandomFeatures(channels, feature_seed)
    feats = embed(features, images)  # (N, D)
    start = embed(features, synthetic) if synthetic is not None and len(synthetic) else None
    picks = herd(feats, feats, num, start=start, kernel=kernel)
    return candidates[np.asarray(picks, dtype=np.int64)]
