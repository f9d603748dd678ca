"""Write a concentrated set as a `datasets` repo folder, atomically.

Layout (what `push_to_hub` would produce, plus our extras):

    OUT/
      README.md                       dataset card (YAML: dataset_info, configs, dsco block)
      data/train-00000-of-0000N.parquet  image bytes embedded, label (ClassLabel), provenance columns
      samples.png                     a few images per class
      dsco_config.json                the run configuration

Everything is written into a staging folder beside `OUT` and moved into place only when complete,
so a failed run never leaves a half-written folder that looks finished.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from datasets.table import embed_table_storage

from dsco_hub.errors import OutputError

PROVENANCE = ("source", "source_index", "seed")


@dataclass
class ConcentratedRows:
    """The rows of a concentrated set, in output order.

    Attributes:
        images (`list[dict]`): `{"bytes": bytes, "path": str | None}` per row (encoded image files).
        labels (`list[int]`): class ids in `[0, K)`.
        source (`list[str]`): "real" or "synthetic".
        source_index (`list[int | None]`): row of the source split for real rows, None for synthetic ones.
        seed (`list[int | None]`): noise seed for synthetic rows, None for real ones.
    """

    images: list[dict] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    source_index: list[int | None] = field(default_factory=list)
    seed: list[int | None] = field(default_factory=list)

    def add_real(self, images: list[dict], rows, class_id: int) -> None:
        """Append real images (their stored `{"bytes", "path"}` values) taken from `rows` of the source."""
        for image, row in zip(images, rows):
            self.images.append({"bytes": image.get("bytes"), "path": image.get("path")})
            self.labels.append(int(class_id))
            self.source.append("real")
            self.source_index.append(int(row))
            self.seed.append(None)

    def add_synthetic(self, pngs: list[bytes], seeds, class_id: int) -> None:
        """Append synthetic images (PNG bytes) generated from `seeds`."""
        for png, seed in zip(pngs, seeds):
            self.images.append({"bytes": png, "path": None})
            self.labels.append(int(class_id))
            self.source.append("synthetic")
            self.source_index.append(None)
            self.seed.append(int(seed))

    def __len__(self) -> int:
        return len(self.labels)


def features(class_names: list[str]) -> datasets.Features:
    """The output schema: `image` (Image), `label` (ClassLabel with the source's names) and provenance."""
    return datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(class_names)),
            "source": datasets.Value("string"),
            "source_index": datasets.Value("int64"),
            "seed": datasets.Value("int64"),
        }
    )


def build_dataset(rows: ConcentratedRows, class_names: list[str]) -> datasets.Dataset:
    """A `datasets.Dataset` of `rows` with image bytes embedded (files referenced by path are read in)."""
    ds = datasets.Dataset.from_dict(
        {
            "image": rows.images,
            "label": rows.labels,
            "source": rows.source,
            "source_index": rows.source_index,
            "seed": rows.seed,
        },
        features=features(class_names),
    )
    return ds.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True).with_format(None)


def check_output(out: str | Path, overwrite: bool) -> Path:
    """Refuse an existing non-empty output folder unless `overwrite`; called before any heavy work.

    Raises:
        OutputError: `out` is a file, or a non-empty folder and `overwrite` is False.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out={str(out)!r} is a file; pass a folder path.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(
            f"--out={str(out)!r} exists and is not empty; pass --overwrite to replace it, or another --out."
        )
    return out


def staging_dir(out: str | Path) -> Path:
    """A fresh staging folder beside `out` (same filesystem, so the final move is a rename)."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))


def commit(staging: Path, out: str | Path) -> Path:
    """Move a complete staging folder to `out`, replacing what was there (the old folder goes only at the end)."""
    out = Path(out).resolve()
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def write_parquet(ds: datasets.Dataset, folder: Path, split: str = "train", max_shard_bytes: int = 500 << 20):
    """Write `ds` as `folder/data/{split}-XXXXX-of-YYYYY.parquet` shards of at most about `max_shard_bytes`.

    Returns:
        `tuple[datasets.SplitInfo, int]`: the split info (`num_bytes` as `push_to_hub` estimates it) and the
        total parquet size in bytes (`download_size`).
    """
    nbytes = ds._estimate_nbytes() if hasattr(ds, "_estimate_nbytes") else ds.data.nbytes
    num_shards = max(1, math.ceil(nbytes / max_shard_bytes))
    data_dir = folder / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for index in range(num_shards):
        shard = ds.shard(num_shards=num_shards, index=index, contiguous=True)
        path = data_dir / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"
        shard.to_parquet(str(path))
        written += path.stat().st_size
    return datasets.SplitInfo(name=split, num_bytes=nbytes, num_examples=len(ds)), written


def dataset_info_yaml(card_data, ds: datasets.Dataset, split_info: datasets.SplitInfo, download_size: int) -> None:
    """Add `dataset_info` and `configs` to `card_data` exactly as `Dataset.push_to_hub` writes them."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict
    from datasets.utils.metadata import MetadataConfigs

    info = DatasetInfo(
        config_name="default", features=ds.features, splits=SplitDict(), download_size=0, dataset_size=0
    )
    info.splits.add(split_info)
    info.download_size += download_size
    info.dataset_size += split_info.num_bytes
    info.size_in_bytes = info.download_size + info.dataset_size
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    configs = {"default": {"data_files": [{"split": split_info.name, "path": f"data/{split_info.name}-*"}]}}
    MetadataConfigs(configs).to_dataset_card_data(card_data)


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
