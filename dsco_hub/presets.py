"""Presets: `dsco-hub concentrate imagenet-1k | imagenette | imagewoof` set the source, the model and the class map.

All three use `facebook/DiT-XL-2-256` (latent DiT, 256 px, ImageNet-1k classes) and the standard evaluation for
images above 64 px (ResNet-18, `docs/method.md` §6), tested on the `validation` split (ImageNet-1k's `test`
split has no labels). Source classes map to ImageNet class indices:

- `imagenet-1k` (`ILSVRC/imagenet-1k`): by position (label k is ImageNet class k). Names cannot be used: ImageNet
  has duplicate names ("crane" the bird and the machine, "maillot" twice).
- `imagenette` / `imagewoof` (fastai's 10-class subsets, `frgfm/imagenette` and `frgfm/imagewoof`, config 320px):
  by WordNet id. A source class name matches a preset class when it is its WordNet id or its ImageNet short name
  (case-insensitive), whatever the source's label order.

The ImageNet class list (index, WordNet id, short name) ships as `resources/imagenet_classes.tsv` (provenance in
its header).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from dsco_hub.config import ConcentrateConfig
from dsco_hub.errors import ConfigError, ModelError, SourceError

IMAGENET_CLASSES = 1000
IMAGENET_MODEL = "facebook/DiT-XL-2-256"


@dataclass(frozen=True)
class Preset:
    """A named source with its model and class map.

    Attributes:
        name (`str`): what the user types as SOURCE.
        source (`str`): the Hub dataset id.
        config_name (`str`, *optional*): the dataset's config.
        test_split (`str`): the evaluation split.
        wnids (`tuple[str, ...]`, *optional*): the WordNet ids of the classes; None = all 1000 ImageNet classes by
            position.
    """

    name: str
    source: str
    config_name: str | None
    test_split: str
    wnids: tuple[str, ...] | None = None


PRESETS = {
    "imagenet-1k": Preset("imagenet-1k", "ILSVRC/imagenet-1k", None, "validation"),
    # fastai's Imagenette: https://github.com/fastai/imagenette (the 10 WordNet ids of its folders)
    "imagenette": Preset(
        "imagenette",
        "frgfm/imagenette",
        "320px",
        "validation",
        (
            "n01440764",  # tench
            "n02102040",  # English springer
            "n02979186",  # cassette player
            "n03000684",  # chain saw
            "n03028079",  # church
            "n03394916",  # French horn
            "n03417042",  # garbage truck
            "n03425413",  # gas pump
            "n03445777",  # golf ball
            "n03888257",  # parachute
        ),
    ),
    # fastai's Imagewoof: 10 dog breeds, https://github.com/fastai/imagenette#imagewoof
    "imagewoof": Preset(
        "imagewoof",
        "frgfm/imagewoof",
        "320px",
        "validation",
        (
            "n02086240",  # Shih-Tzu
            "n02087394",  # Rhodesian ridgeback
            "n02088364",  # beagle
            "n02089973",  # English foxhound
            "n02093754",  # Border terrier
            "n02096294",  # Australian terrier
            "n02099601",  # golden retriever
            "n02105641",  # Old English sheepdog
            "n02111889",  # Samoyed
            "n02115641",  # dingo
        ),
    ),
}


@lru_cache(maxsize=1)
def imagenet_classes() -> list[tuple[str, str]]:
    """The 1000 ImageNet-1k classes in class-index order, as `(WordNet id, short name)`."""
    text = (resources.files("dsco_hub") / "resources" / "imagenet_classes.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    assert [int(r[0]) for r in rows] == list(range(IMAGENET_CLASSES)), "imagenet_classes.tsv is damaged"
    return [(wnid, name) for _, wnid, name in rows]


def imagenet_index(wnid: str) -> int:
    """The ImageNet-1k class index in `[0, 1000)` of a WordNet id, e.g. "n01440764" -> 0 (tench).

    Raises:
        ConfigError: `wnid` is not one of the 1000 ImageNet-1k classes.
    """
    for index, (known, _) in enumerate(imagenet_classes()):
        if known == wnid:
            return index
    raise ConfigError(f"WordNet id {wnid!r} is not an ImageNet-1k class; use an id such as n01440764 (tench).")


def apply_preset(cfg: ConcentrateConfig) -> ConcentrateConfig:
    """Fill in what `cfg.preset` implies (source, config, test split, model, ResNet-18 evaluation); idempotent.

    Options the user set keep their values, except the source, which the preset names.

    Raises:
        ConfigError: `cfg.preset` is unknown, or is combined with `--data-free`.
    """
    if cfg.preset is None:
        return cfg
    preset = PRESETS.get(cfg.preset)
    if preset is None:
        raise ConfigError(f"preset {cfg.preset!r} is unknown; use one of {', '.join(PRESETS)}.")
    if cfg.data_free:
        raise ConfigError(f"SOURCE={cfg.preset} is a preset with real images; drop --data-free.")
    cfg.source.source = preset.source
    cfg.source.config_name = cfg.source.config_name or preset.config_name
    cfg.source.test_split = cfg.source.test_split or preset.test_split
    cfg.model = cfg.model or IMAGENET_MODEL
    if cfg.eval.model == "auto":
        cfg.eval.model = "resnet18"
    return cfg


def _norm(name: str) -> str:
    return re.sub(r"[\s_]+", " ", name.strip().lower())


def class_ids(preset_name: str, class_names: list[str], source_classes: list[int] | None = None) -> list[int]:
    """The ImageNet class index of each source class of a preset.

    Args:
        preset_name (`str`): "imagenet-1k", "imagenette" or "imagewoof".
        class_names (`list[str]`): the source's class names, in label order (after `--classes`).
        source_classes (`list[int]`, *optional*): the source label of each class when `--classes` picked a subset;
            None = all classes, label k is class k.

    Returns:
        `list[int]`: indices in `[0, 1000)`.

    Raises:
        SourceError: `imagenet-1k` with a source of other than 1000 classes, or a source class that is not one of the
            preset's (the message lists the preset's classes).
    """
    preset = PRESETS[preset_name]
    positions = source_classes if source_classes is not None else list(range(len(class_names)))
    if preset.wnids is None:
        if source_classes is None and len(class_names) != IMAGENET_CLASSES:
            raise SourceError(
                f"preset {preset_name}: the source has {len(class_names)} classes, not ImageNet-1k's 1000; "
                "pass the source by its id instead of the preset."
            )
        return list(positions)
    table = imagenet_classes()
    lookup = {}
    for wnid in preset.wnids:
        index = imagenet_index(wnid)
        lookup[wnid.lower()] = lookup[_norm(table[index][1])] = index
    missing = [name for name in class_names if _norm(name) not in lookup]
    if missing:
        known = ", ".join(f"{w} ({table[imagenet_index(w)][1]})" for w in preset.wnids)
        raise SourceError(
            f"preset {preset_name}: source classes {', '.join(repr(m) for m in missing[:5])} are not among its "
            f"classes: {known}."
        )
    return [lookup[_norm(name)] for name in class_names]


def check_model(preset_name: str, model: str, num_classes: int) -> None:
    """Refuse a `--model` whose classes are not ImageNet-1k's for a preset.

    Raises:
        ModelError: `num_classes` is not 1000.
    """
    if num_classes != IMAGENET_CLASSES:
        raise ModelError(
            f"--model={model!r} has {num_classes} classes, but preset {preset_name} needs a model of the 1000 "
            f"ImageNet-1k classes; pass --model {IMAGENET_MODEL} (the default of the preset)."
        )
