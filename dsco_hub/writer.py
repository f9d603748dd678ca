"""Write a concentrated set as a `datasets` repo folder, atomically.

Layout (what `push_to_hub` would produce, plus our extras):

    OUT/
      README.md                       dataset card (YAML: dataset_info, configs, dsco block)
      data/train-00000-of-0000N.parquet  image bytes embedded, label (ClassLabel), provenance columns
      samples.png                     a few images per class
      dsco_config.json                the run configuration

Everything is written into a staging folder beside `OUT` and moved into place only when complete,
so a failed run never leaves a half-written folder that looks finished.

While a run is under way, its finished work units live in a run folder beside `OUT`, so a rerun of
the same command resumes (removed once `OUT` is complete):

    OUT.partial/
      run_config.json                 the settings the shards depend on (`config.run_settings(..., "rows")`)
      units/unit-000000.parquet       one shard per finished unit (written to a temp file, then renamed)
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.table import embed_table_storage
from huggingface_hub import DatasetCard

from dsco_hub.config import first_difference, run_settings
from dsco_hub.errors import ConfigError, OutputError
from dsco_hub.files import atomic_path, atomic_write, make_dirs, os_error, relative_to, temp_dir_beside

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

    def extend(self, other: ConcentratedRows) -> None:
        """Append the rows of `other` (e.g. the next unit's shard)."""
        for name in ("images", "labels", "source", "source_index", "seed"):
            getattr(self, name).extend(getattr(other, name))


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


DSCO_FILES = ("README.md", "dsco_config.json", "samples.png", ".gitattributes")  # what `concentrate` writes


def _foreign_files(out: Path) -> list[str]:
    """The entries of `out` that a dsco-hub set does not hold (anything but its files and `data/*.parquet`)."""
    foreign = []
    for entry in sorted(out.iterdir()):
        if entry.name == "data" and entry.is_dir() and not entry.is_symlink():
            foreign += [
                f"data/{f.name}" for f in sorted(entry.iterdir()) if not (f.is_file() and f.suffix == ".parquet")
            ]
        elif entry.name not in DSCO_FILES or not entry.is_file() or entry.is_symlink():
            foreign.append(entry.name)
    return foreign


def is_dsco_set(out: str | Path) -> bool:
    """Whether `out` is a folder dsco-hub wrote: its marker (`dsco_config.json` and a card with a `dsco:` block)
    and nothing else than the files of a set (README.md, dsco_config.json, samples.png, data/*.parquet)."""
    out = Path(out)
    card = out / "README.md"
    if not ((out / "dsco_config.json").is_file() and card.is_file()):
        return False
    try:
        head = card.read_text(encoding="utf-8").split("\n---", 1)[0]
    except (OSError, UnicodeDecodeError):
        return False
    return "\ndsco:" in head and not _foreign_files(out)


def check_output(
    out: str | Path, overwrite: bool, settings: dict | None = None, fingerprint: dict | None = None
) -> bool:
    """Check `--out` before any heavy work; tell whether it already holds this very set.

    A finished set (with `dsco_config.json`) made with the same `settings` from the same source data
    (`fingerprint`) makes the rerun a no-op; with other settings or changed data it is refused (naming the first
    differing option) unless `overwrite`. `overwrite` replaces only a folder dsco-hub wrote (`is_dsco_set`): any other
    non-empty folder is refused, with or without it, so nothing the user put there is ever deleted.

    Args:
        out (`str` or `Path`): the output folder (already checked by `files.check_out_path`).
        overwrite (`bool`): replace a set dsco-hub wrote.
        settings (`dict`, *optional*): `config.run_settings(cfg.to_dict(), "set")` of this run.
        fingerprint (`dict`, *optional*): `data.fingerprint` of this run's source (None: not compared).

    Returns:
        `bool`: True when `out` is already complete with the same settings and data (and not `overwrite`).

    Raises:
        OutputError: `out` is a file, a non-empty folder that dsco-hub did not write, or is named `*.partial` (the name
            of the run folder beside a set: `run_folder`).
        ConfigError: `out` is a finished set made with other settings or from changed data, and `overwrite` is False.
    """
    out = Path(out)
    if out.name.endswith(".partial"):
        raise OutputError(
            f"--out={str(out)!r} ends in .partial, the name of the run folder dsco-hub keeps beside a set while it is "
            f"made (and deletes when the set is complete); choose another name, e.g. --out {out.name[:-8] or 'set'}."
        )
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out={str(out)!r} is a file; pass a folder path.")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    if not is_dsco_set(out):
        foreign = _foreign_files(out)
        shown = ", ".join(foreign[:3]) + (f" (+{len(foreign) - 3} more)" if len(foreign) > 3 else "")
        what = f"holds files dsco-hub did not write ({shown})" if foreign else "is not a set written by dsco-hub"
        raise OutputError(
            f"--out={str(out)!r} {what}; dsco-hub never replaces such a folder, even with --overwrite: "
            "pass a new or empty folder."
        )
    if overwrite:
        return False
    saved = out / "dsco_config.json"
    if settings is None:
        raise OutputError(
            f"--out={str(out)!r} holds a dsco-hub set; pass --overwrite to replace it, or another --out."
        )
    try:
        recorded = json.loads(saved.read_text())
        diff = first_difference(run_settings(recorded, "set"), settings)
    except (ValueError, AttributeError):
        recorded, diff = {}, ("dsco_config.json", "unreadable", "-")
    if diff is None:
        check_fingerprint(recorded.get("source_fingerprint"), fingerprint, f"the finished set in {out}", "replace it")
        return True
    option, there, now = diff
    raise ConfigError(
        f"{option} differs from the finished set in {out} ({there} there, {now} now); rerun with the same "
        "options, pass --overwrite to replace it, or choose another --out."
    )


# ---------------------------------------------------------------------------------------------------------------
# The run folder: one shard per finished unit, so that a rerun resumes
# ---------------------------------------------------------------------------------------------------------------

RUN_CONFIG = "run_config.json"
FEATURES_FILE = "nopt_features.safetensors"  # the trained feature snapshots of a run (`synthesis`)
RUN_ENTRIES = {RUN_CONFIG: "file", FEATURES_FILE: "file", "units": "dir", "stream": "dir"}  # what a run writes
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.\d+\.tmp")  # `files.atomic_path`'s temporary name for `name`
_SHARD_SCHEMA = pa.schema(
    [
        ("image_bytes", pa.binary()),
        ("image_path", pa.string()),
        ("label", pa.int64()),
        ("source", pa.string()),
        ("source_index", pa.int64()),
        ("seed", pa.int64()),
    ]
)


def run_folder(out: str | Path) -> Path:
    """`OUT.partial`, the run folder beside `out` where finished units wait for the assembly."""
    out = Path(out).resolve()
    return out.with_name(out.name + ".partial")


def _foreign_run_entries(folder: Path) -> list[str]:
    """The entries of a run folder that no run writes: anything but `RUN_ENTRIES` (or their temporary names) at the
    top, and anything but shards (or their temporary names) in `units/`. The rows a streamed run keeps in
    `stream/` are the `datasets` folders it saved there, and are not looked into."""

    def written(entry: Path, names: dict[str, str]) -> bool:
        temp = _TEMP_NAME.fullmatch(entry.name)
        kind = names.get(temp["name"] if temp else entry.name)
        return not entry.is_symlink() and (entry.is_dir() if kind == "dir" else kind == "file" and entry.is_file())

    foreign = []
    for entry in sorted(folder.iterdir()):
        if not written(entry, RUN_ENTRIES):
            foreign.append(entry.name)
        elif entry.name == "units":
            shards = {f.name: "file" for f in entry.iterdir() if re.fullmatch(r"unit-\d{6}\.parquet", f.name)}
            foreign += [f"units/{f.name}" for f in sorted(entry.iterdir()) if not written(f, shards)]
    return foreign


def check_run_folder(out: str | Path) -> Path:
    """The run folder of `out` (`run_folder`), once it is known to be a run's or absent; read-only.

    The run folder `OUT.partial` is deleted once the set is complete (or with `--overwrite`, when its settings
    differ), so a path of that name that a run did not write (a file, a link, or a folder holding anything but what
    a run writes: `_foreign_run_entries`) is refused, with or without `--overwrite`: nothing the user put there is
    ever deleted. `check_run` and `--dry-run` call it.

    Returns:
        `Path`: `OUT.partial`, absolute (it may not exist).

    Raises:
        OutputError: `OUT.partial` is a file, a link, or a folder holding entries that no run writes.
    """
    folder = run_folder(out)
    if folder.is_symlink() or folder.exists() and not folder.is_dir():
        raise OutputError(
            f"{folder} is not a run folder dsco-hub wrote (it is a file or a link), yet a run keeps its work there "
            f"and deletes it when the set is complete: move it, or choose another --out than {out}."
        )
    foreign = _foreign_run_entries(folder) if folder.is_dir() else []
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" (+{len(foreign) - 3} more)" if len(foreign) > 3 else "")
        raise OutputError(
            f"{folder} holds files dsco-hub did not write ({shown}), yet a run keeps its work there and deletes it "
            f"when the set is complete: move them, or choose another --out than {out}."
        )
    return folder


def check_run(out: str | Path, settings: dict, overwrite: bool, fingerprint: dict | None = None) -> tuple[Path, bool]:
    """Compare a saved run (if any) with this run's settings and source data; read-only, so every process can call it.

    The run folder is checked first (`check_run_folder`): one that no run wrote is refused, never deleted.

    Args:
        out (`str` or `Path`): the output folder.
        settings (`dict`): `config.run_settings(cfg.to_dict(), "rows")` of this run.
        overwrite (`bool`): a saved run with other settings or from other data is to be discarded instead of refused.
        fingerprint (`dict`, *optional*): `data.fingerprint` of this run's source (None: not compared).

    Returns:
        `tuple[Path, bool]`: the run folder, and whether it must be discarded (other settings or data, and
        `overwrite`).

    Raises:
        OutputError: `OUT.partial` is a file, a link, or a folder holding entries that no run writes.
        ConfigError: a saved run has other settings (names the first differing option) or was made from data that
            has changed since (`check_fingerprint`), and `overwrite` is False.
    """
    folder = check_run_folder(out)
    saved = folder / RUN_CONFIG
    if not saved.exists():
        return folder, False
    try:
        recorded = json.loads(saved.read_text())
        diff = first_difference(recorded["settings"], settings)
    except (ValueError, KeyError, TypeError):
        recorded, diff = {}, (RUN_CONFIG, "unreadable", "-")
    if diff is None:
        try:
            check_fingerprint(recorded.get("source_fingerprint"), fingerprint, f"the saved run in {folder}")
        except ConfigError:
            if overwrite:
                return folder, True
            raise
        return folder, False
    if overwrite:
        return folder, True
    option, there, now = diff
    raise ConfigError(
        f"{option} differs from the saved run in {folder} ({there} there, {now} now); rerun with the same "
        "options to resume it, or pass --overwrite to start over."
    )


def check_fingerprint(
    saved: dict | None, now: dict | None, what: str, redo: str = "start over", fix: str | None = None
) -> None:
    """Refuse to reuse work made from other source data: `saved` and `now` are `data.fingerprint`s.

    Either being None (a run saved by an older version, a data-free run) skips the check.

    Args:
        saved, now (`dict`, *optional*): the fingerprints recorded with the work and taken now.
        what (`str`): the work, as the message names it (e.g. "the saved run in OUT.partial").
        redo (`str`, *optional*): what `--overwrite` does to it, in "pass --overwrite to {redo}".
        fix (`str`, *optional*): the whole fix instead, for a command without `--overwrite`.

    Raises:
        ConfigError: the fingerprints differ; the message names both and the fix (restore the data or --overwrite).
    """
    if saved is None or now is None or saved == now:
        return
    there = f"{saved.get('kind')} {str(saved.get('value'))[:12]}"
    here = f"{now.get('kind')} {str(now.get('value'))[:12]}"
    raise ConfigError(
        f"SOURCE changed since {what} was made ({there} there, {here} now): its rows no longer match; restore the "
        f"source, or {fix or f'pass --overwrite to {redo}'}."
    )


def discard_run(folder: Path) -> None:
    """Delete a saved run made with other settings (`--overwrite`); main process only."""
    shutil.rmtree(folder, ignore_errors=True)


def prepare_run(folder: Path, settings: dict, num_units: int, fingerprint: dict | None = None) -> None:
    """Create the run folder (if needed) and save the settings and the source's fingerprint; main process only.

    Raises:
        OutputError: the folder cannot be written (one line: the path, the reason, the fix).
    """
    make_dirs(folder / "units")
    if not (folder / RUN_CONFIG).exists():
        write_json(
            folder / RUN_CONFIG, {"settings": settings, "num_units": num_units, "source_fingerprint": fingerprint}
        )


def run_fingerprint(folder: Path) -> dict | None:
    """The source fingerprint a run saved when it started (`prepare_run`): what its units were made from.

    For a streamed run resumed after its source changed, this is the first run's, not the source's as it is now.

    Raises:
        FileNotFoundError: `folder` holds no `run_config.json` (call it after `prepare_run`).
    """
    return json.loads((folder / RUN_CONFIG).read_text()).get("source_fingerprint")


def shard_path(folder: Path, index: int) -> Path:
    """Where unit `index` is stored: `folder/units/unit-XXXXXX.parquet`."""
    return folder / "units" / f"unit-{index:06d}.parquet"


def write_shard(folder: Path, index: int, rows: ConcentratedRows) -> Path:
    """Write unit `index`'s rows as a parquet shard, atomically (temp file + rename) so a kill never leaves half."""
    table = pa.table(
        {
            "image_bytes": [im.get("bytes") for im in rows.images],
            "image_path": [im.get("path") for im in rows.images],
            "label": rows.labels,
            "source": rows.source,
            "source_index": rows.source_index,
            "seed": rows.seed,
        },
        schema=_SHARD_SCHEMA.with_metadata({"dsco_hub_unit": str(index)}),
    )
    path = shard_path(folder, index)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_shard(folder: Path, index: int, num_rows: int) -> ConcentratedRows:
    """Read unit `index`'s shard back.

    Raises:
        OutputError: the shard is missing, unreadable, of another unit or has not `num_rows` rows.
    """
    path = shard_path(folder, index)
    try:
        table = pq.read_table(path, schema=_SHARD_SCHEMA)
        unit = (pq.read_schema(path).metadata or {}).get(b"dsco_hub_unit")
    except Exception as err:  # pyarrow raises several types for truncated or garbled files
        raise OutputError(f"shard {path} is unreadable ({type(err).__name__}: {err})") from err
    if unit != str(index).encode() or table.num_rows != num_rows:
        raise OutputError(f"shard {path} holds {table.num_rows} rows of unit {unit!r}, not {num_rows} of {index}")
    data = table.to_pydict()
    rows = ConcentratedRows()
    rows.images = [{"bytes": b, "path": p} for b, p in zip(data["image_bytes"], data["image_path"])]
    rows.labels, rows.source = data["label"], data["source"]
    rows.source_index, rows.seed = data["source_index"], data["seed"]
    return rows


def staging_dir(out: str | Path) -> Path:
    """A fresh staging folder beside `out` (same filesystem, so the final move is a rename; mode as `mkdir`)."""
    return temp_dir_beside(Path(out).resolve())


def commit(staging: Path, out: str | Path) -> Path:
    """Move a complete staging folder to `out`, replacing what was there (the old folder goes only at the end)."""
    out = Path(out).resolve()
    old = None
    try:
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(staging, out)
    except OSError as err:
        if old is not None and not out.exists():
            os.replace(old, out)  # put the previous set back
        raise os_error(err) from err
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def estimate_nbytes(ds: datasets.Dataset) -> int:
    """The size `Dataset.push_to_hub` estimates for `ds`, from which it decides the number of parquet shards.

    The arithmetic of `datasets`' private `Dataset._estimate_nbytes` (as of datasets 5.2), from public pieces, so
    the shard boundaries and the card's `num_bytes` are those `push_to_hub` would write: the Arrow table's bytes;
    plus, when a column holds images (or audio, video), the size of the files its rows only point to (bytes None,
    path set) minus the bytes of the path strings, measured on the first 1000 rows and scaled to the whole table;
    scaled by the rows kept when an indices mapping (`select`, `shuffle`) hides some.

    Args:
        ds (`datasets.Dataset`): the dataset, with or without an indices mapping.

    Returns:
        `int`: the estimated size in bytes (can be below `ds.data.nbytes`: path strings are not counted).
    """
    from datasets.features.features import require_decoding
    from datasets.table import table_visitor
    from datasets.utils.file_utils import xgetsize

    table_rows = len(ds.data)  # rows of the underlying table, before any indices mapping
    nbytes = ds.data.nbytes
    decodable = [
        name for name, feature in ds.features.items() if require_decoding(feature, ignore_decode_attribute=True)
    ]
    if decodable and len(ds) > 0:
        media = tuple(getattr(datasets, name) for name in ("Audio", "Image", "Video") if hasattr(datasets, name))
        extra = 0

        def count(array, feature) -> None:
            nonlocal extra
            if isinstance(feature, media):
                for value in array.to_pylist():
                    if value is not None and value["bytes"] is None and value["path"] is not None:
                        extra += xgetsize(value["path"])
                extra -= array.field("path").nbytes

        head = ds.with_format("arrow")[:1000]
        table_visitor(head, count)
        nbytes += extra * table_rows // len(head)
    if len(ds) != table_rows:
        nbytes = nbytes * len(ds) // table_rows
    return nbytes


def write_parquet(ds: datasets.Dataset, folder: Path, split: str = "train", max_shard_bytes: int = 500 << 20):
    """Write `ds` as `folder/data/{split}-XXXXX-of-YYYYY.parquet` shards of at most about `max_shard_bytes`.

    The number of shards is `ceil(estimate_nbytes(ds) / max_shard_bytes)` (at least 1), contiguous and of equal row
    counts (within one), as `Dataset.push_to_hub` splits a dataset.

    Returns:
        `tuple[datasets.SplitInfo, int]`: the split info (`num_bytes` as `push_to_hub` estimates it) and the
        total parquet size in bytes (`download_size`).
    """
    nbytes = estimate_nbytes(ds)
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


def write_card(folder: Path, card: DatasetCard, option: str = "--out") -> Path:
    """Write `card` (made by `card.dataset_card` or `card.with_evaluation`) as the set's README.md, atomically.

    Args:
        folder (`Path`): the set's folder (or its staging folder).
        card (`huggingface_hub.DatasetCard`): the card, written as `str(card)` in UTF-8.
        option (`str`, *optional*, defaults to "--out"): the argument named if the write fails.

    Returns:
        `Path`: the README.md written.

    Raises:
        OutputError: the file cannot be written (one line: the path, the reason, the fix).
    """
    return atomic_write(Path(folder) / "README.md", str(card), option)


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temp file + rename; `files.atomic_write`).

    Raises:
        OutputError: the file cannot be written (one line: the path, the reason, the fix).
    """
    atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


def portable_config(data: dict, out: Path) -> dict:
    """`ConcentrateConfig.to_dict()` as the set records it in `dsco_config.json`: JSON types, and the local paths
    (SOURCE, --model, --class-map, --test-dataset, --teacher) relative to the set's folder `out` and --out as that
    folder's name, so that no absolute path is written into the set.

    Args:
        data (`dict`): `ConcentrateConfig.to_dict()`.
        out (`Path`): the set's folder.

    Returns:
        `dict`: a new dict (`data` is not changed); values that name no existing path are kept as they are.
    """
    data = json.loads(json.dumps(data, default=str))
    places = [(data["source"], "source"), (data, "model"), (data, "class_map"), (data, "test_dataset")]
    places.append((data["eval"], "teacher"))  # the soft-label teacher's folder
    for holder, key in places:
        value = holder.get(key)
        if value and Path(value).expanduser().exists():
            holder[key] = relative_to(value, out)
    data["out"] = Path(out).name
    return data


def portable_command(command: str) -> str:
    """The command line as recorded in the set: absolute paths (arguments, and values of `--option=PATH`) made
    relative to the current folder; a line `shlex` cannot split is kept as it is."""
    try:
        tokens = shlex.split(command)
    except ValueError:
        return command
    cwd = Path.cwd()

    def relative(token: str) -> str:
        head, sep, value = token.partition("=") if token.startswith("--") else ("", "", token)
        if not os.path.isabs(value):
            return token
        return f"{head}{sep}{Path(os.path.relpath(value, cwd)).as_posix()}"

    return " ".join(shlex.quote(relative(t)) for t in tokens)
