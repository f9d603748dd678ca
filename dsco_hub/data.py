"""Source datasets: open any Hugging Face image-classification dataset and decode what is used.

A source is a Hub dataset id, a local `datasets` repo folder (parquet or imagefolder layout)
or a `save_to_disk` folder; with no source, the Fashion-MNIST subset embedded in the package.
The image column (feature `Image`) and the label column (`ClassLabel`) are found by type.
The per-class index comes from the label column alone: images are decoded only when used.

Images leave this module as tensors of shape `(batch_size, channels, height, width)`:
`uint8` in `[0, 255]` from `decode_images`, `float32` in `[-1, 1]` through `to_model_range`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image as PILImage

from dsco_hub.config import SourceConfig, derive_seed
from dsco_hub.errors import ConfigError, ImageDecodeError, SourceError, SourceNotFoundError, SplitNotFoundError
from dsco_hub.files import atomic_path
from dsco_hub.text import closest

EMBEDDED_NAME = "fashion_mnist_subset"
EMBEDDED_ID = "dsco-hub/fashion-mnist-subset (embedded)"
STREAM_INFO = "dsco_stream.json"  # beside a streamed split's saved rows: what was read, and the source's metadata
STREAM_INDEX = "dsco_stream_index"  # column of a streamed split's saved rows: each row's index in the source split
_LABEL_NAMES = ("label", "labels", "class", "classes", "target", "fine_label", "y")


def embedded_source_path() -> Path:
    """Folder of the embedded default source: Fashion-MNIST, 500 train and 100 test images per class (MIT)."""
    return Path(str(resources.files("dsco_hub") / "resources" / EMBEDDED_NAME))


@dataclass
class SourceData:
    """One split of a source dataset, with its class structure resolved.

    Attributes:
        dataset (`datasets.Dataset`): the split; its image column is left undecoded (`Image(decode=False)`).
        source_id (`str`): the Hub id or local path the user gave (or the embedded default's name).
        split (`str`): the split name.
        revision (`str`, *optional*): the Hub revision asked for.
        image_column (`str`): the column holding images.
        label_column (`str`): the column holding labels.
        class_names (`list[str]`): class names; label `k` is `class_names[k]`.
        labels (`np.ndarray`): `(num_rows,)` int64 in `[0, num_classes)`.
        license (`str`, *optional*): the source's licence identifier when the card states one.
        citation (`str`, *optional*): the source's citation when known.
        source_classes (`list[int]`, *optional*): with `--classes`, the split's own label of each kept class
            (rows of other classes have label -1 and belong to no class); None when every class is kept.
        row_ids (`np.ndarray`, *optional*): `(num_rows,)` int64, for a streamed split the index of each kept row in
            the source split (its position in the stream, in file order); None when the rows are the split's own.
    """

    dataset: datasets.Dataset
    source_id: str
    split: str
    revision: str | None
    image_column: str
    label_column: str
    class_names: list[str]
    labels: np.ndarray
    license: str | None = None
    citation: str | None = None
    extra: dict = field(default_factory=dict)
    source_classes: list[int] | None = None
    row_ids: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes `K`."""
        return len(self.class_names)

    @cached_property
    def class_index(self) -> list[np.ndarray]:
        """Row indices of each class: `class_index[k]` is a sorted int64 array (rows labelled -1 are in none)."""
        order = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[order], np.arange(self.num_classes + 1))
        return [order[bounds[k] : bounds[k + 1]] for k in range(self.num_classes)]

    @cached_property
    def image_shape(self) -> tuple[int, int, int]:
        """`(channels, height, width)` of the first image: channels 1 for grayscale sources, else 3."""
        return _shape(self.decode_pil([0])[0])

    def decode_pil(self, rows) -> list[PILImage.Image]:
        """Decode the images of `rows` (row indices of this split) as PIL images.

        Raises:
            ImageDecodeError: an image cannot be decoded; the message names the row.
        """
        rows = [int(r) for r in rows]
        values = self.dataset.select_columns([self.image_column])[rows][self.image_column]
        feature = datasets.Image()
        images = []
        for row, value in zip(rows, values):
            try:
                image = feature.decode_example(value)
                image.load()
            except Exception as err:  # PIL raises many types for corrupt data
                source_row = row if self.row_ids is None else int(self.row_ids[row])
                raise ImageDecodeError(
                    f"{self.source_id} [{self.split}] row {source_row}: column {self.image_column!r} holds an image "
                    f"that cannot be decoded ({type(err).__name__}: {err}); fix or drop that row."
                ) from err
            images.append(image)
        return images

    def source_index(self, rows) -> list[int]:
        """The index in the source split of each of `rows` (row indices of this split), for provenance."""
        rows = [int(r) for r in rows]
        return rows if self.row_ids is None else [int(self.row_ids[r]) for r in rows]

    def raw_images(self, rows) -> list[dict]:
        """The stored `{"bytes", "path"}` values of `rows`, for copying real images without re-encoding."""
        rows = [int(r) for r in rows]
        return self.dataset.select_columns([self.image_column])[rows][self.image_column]


def _shape(image: PILImage.Image) -> tuple[int, int, int]:
    channels = 1 if image.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
    return channels, image.height, image.width


def source_folder(cfg: SourceConfig) -> str:
    """The source an output folder must stay out of (`files.check_out_path`): SOURCE as given (a Hub id is ignored
    there), or the embedded subset's folder when SOURCE is omitted, so that no command writes into the package."""
    return cfg.source or str(embedded_source_path())


def _resolve(cfg: SourceConfig) -> tuple[str, str]:
    """What to open for `cfg.source` (the embedded subset's folder when None), and the name to show for it.

    Raises:
        ConfigError: `cfg.revision` with a local source (a folder is read as it is; only the Hub has revisions).
    """
    source, display = (str(embedded_source_path()), EMBEDDED_ID) if cfg.source is None else (cfg.source, cfg.source)
    if cfg.revision is not None and _is_local(source):
        where = (
            "SOURCE is omitted: the embedded subset has none; pass a Hub SOURCE"
            if cfg.source is None
            else f"{display!r} is a local folder, read as it is: check that revision out in the folder"
        )
        raise ConfigError(
            f"--revision={cfg.revision!r} picks a commit of a Hub dataset, but {where}, or drop --revision."
        )
    return source, display


def _is_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists() or source.count("/") > 1


def _card_metadata(source: str, is_local: bool, revision: str | None) -> tuple[str | None, str | None]:
    """Licence and citation from the source's README card, for a Hub dataset the card at `revision` (the data's
    own; None is the default branch). Best effort: None when unreachable."""
    try:
        from huggingface_hub import DatasetCard, hf_hub_download

        if is_local:
            path = Path(source).expanduser() / "README.md"
            if not path.exists():
                return None, None
        else:
            path = hf_hub_download(source, "README.md", repo_type="dataset", revision=revision)
        card = DatasetCard.load(Path(path))
    except Exception:
        return None, None
    license_ = card.data.get("license")
    if isinstance(license_, list):
        license_ = license_[0] if license_ else None
    text = card.text or ""
    citation = None
    match = re.search(r"```(?:bibtex|bib)?\s*\n(@.*?)```", text, flags=re.S)
    if match:
        citation = match.group(1).strip()
    else:
        match = re.search(r"^\s*Citation:\s*(.+)$", text, flags=re.M)
        if match:
            citation = match.group(1).strip()
    return license_, citation


def fingerprint(cfg: SourceConfig) -> dict | None:
    """What identifies the source's data, so that a resumed or rerun concentration never mixes two versions of it.

    A local folder (and the embedded subset) is fingerprinted by the relative path, size and modification time of
    each of its files (no file is read); a Hub dataset by the commit `cfg.revision` resolves to now (None when the
    Hub cannot be reached: nothing to compare), which the resumable commands then load it at (`pin_revision`). No
    absolute path enters the fingerprint: it is saved in the set.

    Args:
        cfg (`SourceConfig`): the source (`source=None` is the embedded subset).

    Returns:
        `dict` or None: `{"kind": "local" | "hub", "value": str, "files": int | None}`; `value` is a SHA-256 hex
        digest of the file listing, or the Hub commit sha.

    Raises:
        ConfigError: `cfg.revision` with a local source (a folder has no revisions).
    """
    source, _ = _resolve(cfg)
    path = Path(source).expanduser()
    if _is_local(source) or path.exists():
        if not path.is_dir():  # gone (a streamed run resumes from its saved rows), or a file: loading says so
            return None
        digest, count = hashlib.sha256(), 0
        for root, dirs, names in os.walk(path):
            dirs.sort()
            for name in sorted(names):
                file = Path(root) / name
                try:
                    stat = file.stat()
                except OSError:
                    continue
                digest.update(f"{file.relative_to(path).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
                count += 1
        return {"kind": "local", "value": digest.hexdigest(), "files": count}
    try:
        from huggingface_hub import HfApi

        sha = HfApi().dataset_info(source, revision=cfg.revision).sha
    except Exception:  # offline, or the Hub says no: loading the source reports that properly
        sha = None
    return {"kind": "hub", "value": sha, "files": None} if sha else None


def pin_revision(cfg: SourceConfig, recorded: dict | None) -> SourceConfig:
    """`cfg` with a Hub source's `--revision` replaced by the commit its fingerprint recorded, for loading.

    A resumable command (`concentrate`, `prior train`, `teacher train`) fingerprints its source when it starts
    (`fingerprint`); loading at that commit means a commit pushed to the branch meanwhile (or between two processes
    of a launch loading) cannot mix in, and what the command records names the exact commit. `datasets` prepares a
    Hub dataset in a cache folder named by the commit the revision resolves to, so a source already loaded at its
    branch is not downloaded again.

    Args:
        cfg (`SourceConfig`): the source as given.
        recorded (`dict`, *optional*): its `fingerprint` (None: not taken, offline or data-free).

    Returns:
        `SourceConfig`: `cfg` itself for a local source, or without a Hub fingerprint; else a copy at the commit.
    """
    if recorded is None or recorded["kind"] != "hub":
        return cfg
    return dataclasses.replace(cfg, revision=recorded["value"])


def _open_split(source: str, cfg: SourceConfig, split: str, streaming: bool = False):
    """The split as a `datasets.Dataset`, or with `streaming` an `IterableDataset` (rows read lazily, in order)."""
    path = Path(source).expanduser()
    if _is_local(source) and not path.exists():
        raise SourceNotFoundError(
            f"SOURCE={source!r} does not exist; pass an existing folder, a Hub dataset id, or nothing for the "
            "embedded Fashion-MNIST subset."
        )
    if path.is_file():
        raise SourceError(
            f"SOURCE={source!r} is a file; pass a `datasets` repo folder, a save_to_disk folder or a Hub id."
        )
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.Dataset):  # a single `Dataset` has one split: its own name, else "train"
            own = str(loaded.split) if loaded.split else "train"
            if split != own and not (path / STREAM_INFO).exists():  # a streamed split's saved rows: that split
                raise _split_not_found(source, split, [own])
        else:
            if split not in loaded:
                raise _split_not_found(source, split, list(loaded))
            loaded = loaded[split]
        return loaded.to_iterable_dataset() if streaming else loaded
    target = str(path) if path.is_dir() else source
    try:
        return datasets.load_dataset(
            target, name=cfg.config_name, split=split, revision=cfg.revision, streaming=streaming
        )
    except ValueError as err:
        configs = _config_names(target) if cfg.config_name is not None else None
        if configs and cfg.config_name not in configs:
            raise SourceError(
                f"--config={cfg.config_name!r} is not a config of {source}; its configs: {', '.join(configs)}."
            ) from err
        available = _split_names(target, cfg)
        if available is not None and split not in available:
            raise _split_not_found(source, split, available) from err
        raise SourceError(f"SOURCE={source!r} cannot be loaded: {err}") from err
    except (FileNotFoundError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
        if path.is_dir():  # it exists: `datasets` found nothing it can read in it
            raise SourceError(
                f"SOURCE={source!r} holds no data `datasets` can read ({type(err).__name__}); pass a `datasets` "
                "repo folder (data/*.parquet), an image folder (one subfolder per class) or a save_to_disk folder."
            ) from err
        raise SourceNotFoundError(
            f"SOURCE={source!r} was not found locally nor on the Hub ({type(err).__name__}); check the id or path, "
            "and --config / --revision."
        ) from err


def _config_names(target: str) -> list[str] | None:
    """The configs (subsets) of a Hub dataset or a local repo folder (`datasets.get_dataset_config_names`); None when
    they cannot be read."""
    try:
        return list(datasets.get_dataset_config_names(target))
    except Exception:  # unreachable, or the builder cannot be resolved: the caller reports the load error itself
        return None


def _split_names(target: str, cfg: SourceConfig) -> list[str] | None:
    """The splits of a Hub dataset or a local repo folder at `cfg.revision` and `cfg.config_name`, from `datasets`'
    builder info (`datasets.get_dataset_split_names`); None when they cannot be read."""
    try:
        return list(datasets.get_dataset_split_names(target, config_name=cfg.config_name, revision=cfg.revision))
    except Exception:  # unreachable, or the builder cannot be resolved: the caller reports the load error itself
        return None


def _split_not_found(source: str, split: str, available: list[str]) -> SplitNotFoundError:
    return SplitNotFoundError(
        f"--split={split!r} does not exist in {source}; available splits: {', '.join(available)}. "
        "Pass one with --split.",
        split,
        available,
    )


def _find_columns(ds: datasets.Dataset, cfg: SourceConfig, source: str) -> tuple[str, str]:
    described = _columns_described(ds)
    if cfg.image_column is not None:
        holds = "images are an `Image` column, file paths, encoded image bytes or pixel arrays. Pass the image column"
        image_column = _given_column(ds, cfg.image_column, "--image-column", source, _is_image_feature, holds)
    else:
        found = [n for n, f in ds.features.items() if isinstance(f, datasets.Image)]
        if not found:
            raise SourceError(
                f"{source} has no image column (feature `Image`); columns: {described}. Pass --image-column NAME."
            )
        image_column = found[0]
    if cfg.label_column is not None:
        holds = "class labels are integers, strings or a ClassLabel. Pass the column of class ids or names"
        return image_column, _given_column(ds, cfg.label_column, "--label-column", source, _is_label_feature, holds)
    found = [n for n, f in ds.features.items() if isinstance(f, datasets.ClassLabel)]
    if found:
        return image_column, found[0]
    named = [(name, f) for name, f in ds.features.items() if name.lower() in _LABEL_NAMES]
    for name, f in named:
        if _is_label_feature(f):
            return image_column, name
    if named:  # a column named like labels, of a type that holds no class (floats: regression targets, scores)
        name, f = named[0]
        kind = f.dtype if isinstance(f, datasets.Value) else type(f).__name__
        raise SourceError(
            f"{source}: column {name!r} holds {kind} values, not classes (integers, strings or a ClassLabel); pass "
            f"--label-column NAME of a class column; columns: {described}."
        )
    raise SourceError(
        f"{source} has no label column (feature `ClassLabel`, or an int/string column named 'label'); "
        f"columns: {described}. Pass --label-column NAME."
    )


def _columns_described(ds) -> str:
    return ", ".join(
        f"{name} ({type(f).__name__ if not hasattr(f, 'dtype') else f.dtype})" for name, f in ds.features.items()
    )


def _given_column(ds, name: str, option: str, source: str, accepts, holds: str) -> str:
    """`name`, once it is a column of `ds` whose feature `accepts`; else one line naming `option`, what such a
    column `holds` and the columns there are."""
    if name not in ds.features:
        raise SourceError(f"{option}={name!r} is not a column of {source}; columns: {_columns_described(ds)}.")
    feature = ds.features[name]
    if not accepts(feature):
        kind = feature.dtype if isinstance(feature, datasets.Value) else type(feature).__name__
        raise SourceError(
            f"{option}={name!r} of {source} holds {kind} values; {holds}; columns: {_columns_described(ds)}."
        )
    return name


def _is_image_feature(feature) -> bool:
    """Whether a column can hold images, i.e. `datasets.Image.cast_storage` takes it: an `Image`, strings (file paths),
    binary values (encoded bytes), a struct with `bytes` or `path`, or a list or array (pixel values)."""
    if isinstance(feature, (datasets.Image, list, *_ARRAY_FEATURES)):
        return True
    if isinstance(feature, dict):
        return "bytes" in feature or "path" in feature
    return isinstance(feature, datasets.Value) and feature.dtype in _IMAGE_DTYPES


_ARRAY_NAMES = ("Sequence", "List", "LargeList", "Array2D", "Array3D")  # pixel arrays; `List`: datasets >= 4
_ARRAY_FEATURES = tuple(getattr(datasets, name) for name in _ARRAY_NAMES if hasattr(datasets, name))
_IMAGE_DTYPES = ("string", "large_string", "binary", "large_binary")  # file paths, encoded bytes


def _is_label_feature(feature) -> bool:
    """Whether a column can hold class labels: a ClassLabel, or integer or string values (never floats)."""
    if isinstance(feature, datasets.ClassLabel):
        return True
    dtype = getattr(feature, "dtype", "") if isinstance(feature, datasets.Value) else ""
    return dtype.startswith(("int", "uint")) or dtype in ("string", "large_string")


def _labels(ds: datasets.Dataset, column: str, names: list[str] | None, where: str) -> tuple[np.ndarray, list[str]]:
    """Integer labels in `[0, K)` and the class names; a ClassLabel keeps its names, other columns get sorted names."""
    feature = ds.features[column]
    values = np.asarray(ds.with_format("numpy", columns=[column])[column])
    if isinstance(feature, datasets.ClassLabel):
        own = list(feature.names)
        if names is None or own == names:
            return values.astype(np.int64), own
        values = np.asarray(own, dtype=object)[values]
    else:
        values = values.astype(str).astype(object) if values.dtype.kind in "iu" else values.astype(object)
        if names is None:
            unique = np.unique(values)
            if unique.dtype.kind in "O" and all(str(v).lstrip("-").isdigit() for v in unique):
                unique = sorted(unique, key=lambda v: int(v))
            names = [str(v) for v in unique]
    lookup = {name: k for k, name in enumerate(names)}
    unknown = sorted({str(v) for v in np.unique(values)} - set(lookup))
    if unknown:
        raise SourceError(
            f"{where} has labels the concentrated set does not know: {', '.join(unknown[:10])}; its classes are "
            f"{', '.join(names[:10])}{'...' if len(names) > 10 else ''}. Use a test set with the same classes."
        )
    return np.fromiter((lookup[str(v)] for v in values), dtype=np.int64, count=len(values)), names


def load_source(
    cfg: SourceConfig,
    split: str | None = None,
    class_names: list[str] | None = None,
    stream_to: Path | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> SourceData:
    """Open one split of a source dataset and resolve its image column, label column and classes.

    With `cfg.streaming` the split is read as a `datasets` stream, shuffled through a buffer of `cfg.shuffle_buffer`
    rows (seeded by `(seed, "stream", split)`; shards in file order, so each row keeps its index in the split, in
    `row_ids`), and its first `per_class` rows of each class are saved, undecoded, in `stream_to/<split>`
    (atomically, in Arrow batches: memory does not follow the split's size); the stream stops as soon as every
    class has them. A later call with the same `stream_to` opens the saved rows and reads nothing from the source,
    so a resumed run and the other processes of a launch see the same rows.

    Args:
        cfg (`SourceConfig`): where the data comes from (`source=None` is the embedded Fashion-MNIST subset).
        split (`str`, *optional*, defaults to `cfg.split`): which split to open.
        class_names (`list[str]`, *optional*): the class names to map labels onto (for a test split that must
            agree with a training split); None keeps the split's own names.
        stream_to (`Path`, *optional*): with `cfg.streaming`, the folder that keeps the streamed rows (required).
        per_class (`int`, *optional*): with `cfg.streaming`, rows kept per class (None = every row of the split).
        seed (`int`, *optional*, defaults to 0): with `cfg.streaming`, the run seed the shuffle derives from.

    Returns:
        `SourceData`: the split with `labels` as `(num_rows,)` int64 in `[0, K)`. No image is decoded. A streamed
        split has only its kept rows; `extra["streaming"]` records how many rows were read and kept.

    Raises:
        ConfigError: `cfg.revision` with a local source (a folder has no revisions).
        SourceNotFoundError: the source does not exist.
        SplitNotFoundError: the split is not one of the source's (a `SourceError`; `available` lists them).
        SourceError: the image column or the label column is missing, or labels are unknown; with
            `cfg.streaming`, the source declares no features or its labels are not a `ClassLabel`.
    """
    source, display = _resolve(cfg)
    split = split or cfg.split
    if cfg.streaming:
        if stream_to is None:
            raise ValueError("load_source: a streaming source needs `stream_to`, the folder that keeps its rows")
        return _load_streamed(source, display, cfg, split, class_names, Path(stream_to) / split, per_class, seed)
    ds = _open_split(source, cfg, split)
    image_column, label_column = _find_columns(ds, cfg, display)
    where = f"{display} [{split}]"
    picks = None
    if cfg.classes:  # keep a subset: the split's own classes first, then (for a test split) the given names
        labels, names = _labels(ds, label_column, None, where)
        labels, names, picks = _keep_classes(labels, names, cfg.classes, where)
        if class_names is not None and names != list(class_names):
            lookup = {name: k for k, name in enumerate(class_names)}
            if set(names) - set(lookup):
                raise SourceError(f"{where}: --classes picks {names}, not the classes {list(class_names)}.")
            labels = np.asarray([lookup[names[v]] if v >= 0 else -1 for v in labels], dtype=np.int64)
            names = list(class_names)
    else:
        labels, names = _labels(ds, label_column, class_names, where)
    ds = ds.cast_column(image_column, datasets.Image(decode=False))
    is_local = _is_local(source)
    license_, citation = _card_metadata(source, is_local, cfg.revision)
    citation = citation or (ds.info.citation or None)
    license_ = license_ or (ds.info.license or None)
    return SourceData(
        dataset=ds,
        source_id=display,
        split=split,
        revision=cfg.revision,
        image_column=image_column,
        label_column=label_column,
        class_names=names,
        labels=labels,
        license=license_,
        citation=citation,
        source_classes=picks,
    )


def _open_stream(source: str, display: str, cfg: SourceConfig, split: str):
    """The split as a stream with its image column undecoded, its columns and its label feature.

    Raises:
        SourceError: the stream declares no features, or its label column is not a `ClassLabel` (the classes would
            only be known after reading the whole split).
    """
    stream = _open_split(source, cfg, split, streaming=True)
    where = f"{display} [{split}]"
    if stream.features is None:
        raise SourceError(
            f"--streaming: {where} declares no features, so its classes are known only after reading all of it; "
            "drop --streaming (the split is then indexed by its label column)."
        )
    image_column, label_column = _find_columns(stream, cfg, display)
    feature = stream.features[label_column]
    if not isinstance(feature, datasets.ClassLabel):
        raise SourceError(
            f"--streaming: the label column {label_column!r} of {where} is not a ClassLabel, so its classes are "
            "known only after reading all of it; drop --streaming (the split is then indexed by its label column)."
        )
    stream = stream.select_columns([image_column, label_column])
    stream = stream.cast_column(image_column, datasets.Image(decode=False))
    return stream, image_column, label_column, feature


def _kept_classes(cfg: SourceConfig, names: list[str], where: str) -> np.ndarray:
    """`(K,)` bool: the classes a streamed split keeps rows of (all of them, or those `--classes` picks)."""
    keep = np.ones(len(names), dtype=bool)
    if cfg.classes:
        keep[:] = False
        keep[_keep_classes(np.arange(len(names)), names, cfg.classes, where)[2]] = True
    return keep


def _save_stream(
    source: str, display: str, cfg: SourceConfig, split: str, saved: Path, per_class: int | None, seed: int
) -> None:
    """Read the split as a stream and save its first `per_class` rows of each kept class at `saved` (atomically).

    Rows go to disk through `Dataset.from_generator` in Arrow batches, so memory stays bounded whatever the source.
    """
    stream, image_column, label_column, feature = _open_stream(source, display, cfg, split)
    keep = _kept_classes(cfg, list(feature.names), f"{display} [{split}]")
    rng = np.random.default_rng(derive_seed(seed, "stream", split))
    counts = np.zeros(len(keep), dtype=np.int64)
    stats = {"rows_read": 0, "read_all": False}  # read_all: the stream was read to its end

    def shuffled():
        # `IterableDataset.shuffle`'s buffer shuffle, but over the shards in file order: it would also permute the
        # shards and lose each row's index in the split, which the set records as provenance (`source_index`)
        buffer: list[tuple[int, dict]] = []
        with contextlib.closing(iter(stream)) as it:
            for index, row in enumerate(it):
                stats["rows_read"] = index + 1
                if len(buffer) < cfg.shuffle_buffer:
                    buffer.append((index, row))
                elif not buffer:  # --shuffle-buffer 0: the stream's order
                    yield index, row
                else:
                    j = int(rng.integers(len(buffer)))
                    yield buffer[j]
                    buffer[j] = (index, row)
        stats["read_all"] = True
        yield from (buffer[j] for j in rng.permutation(len(buffer)))

    def rows():
        for index, row in shuffled():
            k = row[label_column]
            if k is None or k < 0 or not keep[k] or (per_class is not None and counts[k] >= per_class):
                continue
            counts[k] += 1
            yield {**row, STREAM_INDEX: index}
            if per_class is not None and counts[keep].min() >= per_class:
                return

    cache = saved.with_name(f".{saved.name}.{os.getpid()}.cache")
    shutil.rmtree(cache, ignore_errors=True)
    try:
        ds = datasets.Dataset.from_generator(
            rows,
            features=datasets.Features(
                {
                    image_column: datasets.Image(decode=False),
                    label_column: feature,
                    STREAM_INDEX: datasets.Value("int64"),
                }
            ),
            cache_dir=str(cache),
            fingerprint=f"dsco-stream-{derive_seed(seed, 'stream', split, per_class, cfg.shuffle_buffer):016x}",
        )
        license_, citation = _card_metadata(source, _is_local(source), cfg.revision)
        splits = stream.info.splits or {}
        num_examples = splits[split].num_examples if split in splits else None
        info = {
            "rows_read": stats["rows_read"],
            "rows_kept": len(ds),
            "per_class": per_class,
            "shuffle_buffer": cfg.shuffle_buffer,
            "read_all": stats["read_all"],
            "num_examples": num_examples or (stats["rows_read"] if stats["read_all"] else None),
            "revision": cfg.revision,  # what the rows were read at (a resume reads them here, not at --revision)
            "license": license_ or (stream.info.license or None),
            "citation": citation or (stream.info.citation or None),
        }
        saved.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(saved) as tmp:
            ds.save_to_disk(str(tmp))
            (tmp / STREAM_INFO).write_text(json.dumps(info, indent=2))
            del ds
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _load_streamed(
    source: str,
    display: str,
    cfg: SourceConfig,
    split: str,
    class_names: list[str] | None,
    saved: Path,
    per_class: int | None,
    seed: int,
) -> SourceData:
    """A streamed split: its rows saved at `saved` (streamed first when they are not there yet)."""
    if not (saved / STREAM_INFO).exists():
        _save_stream(source, display, cfg, split, saved, per_class, seed)
    local = dataclasses.replace(cfg, source=str(saved), streaming=False, config_name=None, revision=None)
    loaded = load_source(local, split=split, class_names=class_names)
    info = json.loads((saved / STREAM_INFO).read_text())
    return dataclasses.replace(
        loaded,
        source_id=display,
        revision=info.get("revision", cfg.revision),  # rows saved by an older version: no revision recorded
        license=info["license"],
        citation=info["citation"],
        extra={**loaded.extra, "streaming": info},
        row_ids=np.asarray(loaded.dataset.with_format("numpy", columns=[STREAM_INDEX])[STREAM_INDEX], dtype=np.int64),
    )


def peek_stream(cfg: SourceConfig, split: str | None = None) -> tuple[list[str], tuple[int, int, int]]:
    """The class names (after `--classes`) and the first image's `(channels, height, width)` of a streamed split,
    reading one row: what `--dry-run` needs.

    Raises:
        SourceNotFoundError, SourceError: as `load_source` with `cfg.streaming`.
    """
    source, display = _resolve(cfg)
    split = split or cfg.split
    stream, image_column, _, feature = _open_stream(source, display, cfg, split)
    names = list(feature.names)
    if cfg.classes:
        names = _keep_classes(np.arange(len(names)), names, cfg.classes, f"{display} [{split}]")[1]
    with contextlib.closing(iter(stream)) as it:
        first = next(it)
    return names, _shape(datasets.Image().decode_example(first[image_column]))


def _keep_classes(labels: np.ndarray, names: list[str], wanted, where: str) -> tuple[np.ndarray, list[str], list[int]]:
    """`--classes`: relabel the kept classes 0..len(wanted)-1 in the order given, the other rows -1.

    Raises:
        SourceError: a wanted class is neither a class name (case-insensitive) nor a label index, or is repeated.
    """
    by_name = {name.lower(): k for k, name in enumerate(names)}
    picks = []
    for item in wanted:
        key = str(item).strip()
        if key.lower() in by_name:
            picks.append(by_name[key.lower()])
        elif key.isdigit() and int(key) < len(names):
            picks.append(int(key))
        else:
            raise SourceError(
                f"--classes: {key!r} is neither a class of {where} nor a label in [0, {len(names)}); "
                f"closest names: {', '.join(repr(c) for c in closest(key, names))}."
            )
    if len(set(picks)) != len(picks):
        raise SourceError(f"--classes={','.join(map(str, wanted))!r} names a class twice; list each class once.")
    remap = np.full(len(names), -1, dtype=np.int64)
    remap[picks] = np.arange(len(picks))
    return remap[labels], [names[k] for k in picks], picks


def load_test_source(
    cfg: SourceConfig,
    class_names: list[str],
    stream_to: Path | None = None,
    fix: str = "pass --test-split SPLIT, --test-dataset SOURCE with the same classes, or --no-eval",
) -> SourceData:
    """Open the evaluation split of `cfg` with labels mapped onto `class_names`.

    Uses `cfg.test_split`, else "test", else "validation". With `cfg.streaming`, the whole split is streamed into
    `stream_to` first (see `load_source`). `fix` ends the message when there is no such split: the options of the
    command at hand (`teacher train` has neither `--test-dataset` nor `--no-eval`).

    Raises:
        SourceError: no such split (the message lists the splits and points to `--test-split`), `cfg.test_split` is
            `cfg.split` (the rows a set, a baseline or a teacher trains on), or the test labels include classes
            outside `class_names`.
    """
    same_split = cfg.same_split_message()
    if same_split:
        raise SourceError(same_split)
    candidates = [cfg.test_split] if cfg.test_split else ["test", "validation"]
    for split in candidates:
        try:
            return load_source(cfg, split=split, class_names=class_names, stream_to=stream_to)
        except SplitNotFoundError as err:
            available = err.available
    asked = f"--test-split={cfg.test_split!r}" if cfg.test_split else "the evaluation split (test, else validation)"
    raise SourceError(
        f"{asked} does not exist in {cfg.source or EMBEDDED_ID} (available splits: {', '.join(available)}), and "
        f"the students are never tested on their training rows: {fix}."
    )


def to_mode(image: PILImage.Image, channels: int) -> PILImage.Image:
    """Convert any PIL image (1, L, P, RGB, RGBA, LA, I, F) to "L" (channels=1) or "RGB" (channels=3).

    Transparent pixels are composited over white, palettes expanded, 16-bit images scaled to 8 bits.
    """
    if image.mode in ("I", "I;16", "F"):
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        array = (array - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(array)
        image = PILImage.fromarray(array.astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PILImage.alpha_composite(background, rgba)
    return image.convert("L" if channels == 1 else "RGB")


def resize_square(image: PILImage.Image, size: int) -> PILImage.Image:
    """Center-crop to a square and resize to `size` x `size` (bicubic), the usual preprocessing of diffusion priors."""
    w, h = image.size
    if w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (size, size):
        image = image.resize((size, size), PILImage.Resampling.BICUBIC)
    return image


def pil_to_uint8(images: list[PILImage.Image], channels: int, size: int) -> torch.Tensor:
    """Stack PIL images as a `uint8` tensor `(batch_size, channels, size, size)` in `[0, 255]`."""
    arrays = [np.asarray(resize_square(to_mode(im, channels), size)) for im in images]
    batch = torch.from_numpy(np.stack(arrays))
    return batch.unsqueeze(1) if channels == 1 else batch.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


def decode_images(
    source: SourceData, rows, channels: int, size: int, chunk: int = 1024, progress=None
) -> torch.Tensor:
    """Decode the images of `rows` as one `uint8` tensor `(len(rows), channels, size, size)` in `[0, 255]`.

    Args:
        source (`SourceData`): the split.
        rows (sequence of `int`): row indices, in output order.
        channels (`int`): 1 (grayscale) or 3 (RGB).
        size (`int`): output side in pixels (center crop + bicubic resize when it differs).
        chunk (`int`, *optional*, defaults to 1024): rows decoded per step (bounds peak memory).
        progress (`callable`, *optional*): called with the number of rows done after each chunk.

    Raises:
        ImageDecodeError: an image cannot be decoded (the message names the row).
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = torch.empty((len(rows), channels, size, size), dtype=torch.uint8)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        out[start : start + len(part)] = pil_to_uint8(source.decode_pil(part), channels, size)
        if progress is not None:
            progress(len(part))
    return out


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """`uint8` images in `[0, 255]` to `float32` in `[-1, 1]`, same shape."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """`float` images in `[-1, 1]` (clipped) to `uint8` in `[0, 255]`, same shape."""
    return images.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)


def to_pil(image: torch.Tensor) -> PILImage.Image:
    """One `uint8` image `(1 or 3, height, width)` in `[0, 255]` as a PIL image ("L" or "RGB")."""
    array = image.permute(1, 2, 0).numpy()  # (H, W, C)
    return PILImage.fromarray(
        array[..., 0] if array.shape[2] == 1 else array, mode="L" if array.shape[2] == 1 else "RGB"
    )


def encode_png(image: torch.Tensor, channels: int | None = None) -> bytes:
    """PNG bytes of one `uint8` image `(C, height, width)` in `[0, 255]`; deterministic for the same pixels.

    Args:
        image (`torch.Tensor`): `(1 or 3, height, width)` uint8.
        channels (`int`, *optional*): store as 1 (L) or 3 (RGB) channels; defaults to the image's own.
    """
    pil = to_pil(image)
    if channels is not None:
        pil = to_mode(pil, channels)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def image_grid(images: torch.Tensor, rows: int) -> PILImage.Image:
    """Tile `uint8` images `(rows * cols, C, H, W)` into one PIL image of `rows` rows (row-major order)."""
    n, c, h, w = images.shape
    cols = -(-n // rows)
    canvas = torch.zeros((c, rows * h, cols * w), dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        canvas[:, r * h : (r + 1) * h, k * w : (k + 1) * w] = images[i]
    array = canvas.permute(1, 2, 0).numpy()
    return PILImage.fromarray(array[..., 0] if c == 1 else array, mode="L" if c == 1 else "RGB")
