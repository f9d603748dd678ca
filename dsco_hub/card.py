"""Every card dsco-hub writes: the dataset card of a set (a folder's, and the merged card of a Hub repo with
several configs), its evaluation update, the section other tools' cards get, and the model cards of a trained
prior and a teacher.

Cards are built with `huggingface_hub` (`DatasetCard`, `ModelCard`, `DatasetCardData`, `ModelCardData`) from the
Jinja templates in `cards/`, with named variables; the `dsco:` block a card records (source, settings, protocol,
versions) is assembled here too. Nothing here reads or writes files other than the templates: `writer` writes a
folder's card, `hub` uploads a repo's, `prior` and `teacher` save theirs.

The templates and the documentation they cite ship inside the wheel (`dsco_hub/cards/` and
`dsco_hub/docs/`, hatchling `force-include`); in a source checkout they are read from the repository's
`cards/` and `docs/` folders. `reference` writes every link a card makes to dsco-hub itself.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import re
import string
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

from dsco_hub import __version__, files
from dsco_hub.config import ConcentrateConfig, EvalConfig, PriorTrainConfig
from dsco_hub.errors import HubError, OutputError, SourceError

if TYPE_CHECKING:
    import datasets
    import torch


def template_path(name: str) -> Path:
    """Path of the card template `name` (e.g. "dataset_card.md").

    Raises:
        FileNotFoundError: the template is in neither the installed package nor the source tree.
    """
    packaged = Path(str(resources.files("dsco_hub") / "cards" / name))
    if packaged.exists():
        return packaged
    source_tree = Path(__file__).resolve().parent.parent / "cards" / name
    if source_tree.exists():
        return source_tree
    raise FileNotFoundError(f"card template {name!r} is missing from dsco_hub/cards and cards/; reinstall dsco-hub.")


DISTRIBUTION = "dsco-hub"  # the distribution whose metadata holds the `[project.urls]` of pyproject.toml
# `[project.urls]` labels that name the source repository, normalised as PEP 753 does (lower case, no punctuation
# or spaces), in order of preference. "Homepage" counts only on github.com (it may be a documentation site).
REPOSITORY_LABELS = ("repository", "source", "sourcecode", "code", "github")


def _normalise_label(label: str) -> str:
    return "".join(c for c in label.lower() if c not in string.punctuation and not c.isspace())


def repository_url() -> str | None:
    """The project's source repository, from `[project.urls]` in the installed distribution's metadata.

    Read at run time (`importlib.metadata.metadata("dsco-hub").get_all("Project-URL")`), so a card names the
    repository of the version that rendered it. The first URL labelled `Repository`, `Source`, `Source Code`,
    `Code` or `GitHub` wins; a `Homepage` on github.com is the fallback.

    Returns:
        `str` or `None`: the URL without a trailing slash, or None when the metadata declares none (or dsco-hub
        is not installed as a distribution).
    """
    try:
        entries = importlib.metadata.metadata(DISTRIBUTION).get_all("Project-URL") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    urls: dict[str, str] = {}
    for entry in entries:
        label, _, url = entry.partition(",")
        url = url.strip().rstrip("/")
        if url.startswith(("https://", "http://")):
            urls.setdefault(_normalise_label(label), url)
    for label in REPOSITORY_LABELS:
        if label in urls:
            return urls[label]
    homepage = urls.get("homepage", "")
    return homepage if homepage.startswith(("https://github.com/", "http://github.com/")) else None


def docs_path(name: str) -> Path:
    """Path of the shipped documentation file `name` (e.g. "method.md" or "docs/method.md").

    Raises:
        FileNotFoundError: the file is in neither the installed package (`dsco_hub/docs`) nor the source tree.
    """
    name = name.removeprefix("docs/")
    packaged = Path(str(resources.files("dsco_hub") / "docs" / name))
    if packaged.exists():
        return packaged
    source_tree = Path(__file__).resolve().parent.parent / "docs" / name
    if source_tree.exists():
        return source_tree
    raise FileNotFoundError(f"doc file {name!r} is missing from dsco_hub/docs and docs/; reinstall dsco-hub.")


def reference(doc: str | None = None, section: int | None = None) -> str:
    """A Markdown reference to dsco-hub, or to one of its documentation files, that resolves for any reader.

    With a repository in `[project.urls]` (see `repository_url`), the reference links the file at this version's
    tag, `<repository>/blob/v<version>/docs/<file>`, so a card keeps pointing at the text that described the code
    that made it. Without one, it names the file, the section and the version: the file ships inside the package
    (`dsco_hub/docs/`) of that version. Both templates in `cards/` and the method descriptions use it.

    Args:
        doc (`str`, *optional*): a file of `docs/`, e.g. "docs/method.md"; None refers to dsco-hub itself.
        section (`int`, *optional*): a numbered section of `doc` ("§5").

    Returns:
        `str`: Markdown, e.g. "[dsco-hub 0.1.0, docs/method.md §5](https://github.com/o/r/blob/v0.1.0/docs/method.md)",
        "dsco-hub 0.1.0, `docs/method.md` §5 (shipped in the package: `dsco_hub/docs/method.md`)", or for
        `doc=None` "[dsco-hub](https://github.com/o/r)" or "dsco-hub".
    """
    repository = repository_url()
    if doc is None:
        return f"[dsco-hub]({repository})" if repository else "dsco-hub"
    name = doc.removeprefix("docs/")
    where = f" §{section}" if section is not None else ""
    if repository:
        return f"[dsco-hub {__version__}, docs/{name}{where}]({repository}/blob/v{__version__}/docs/{name})"
    return f"dsco-hub {__version__}, `docs/{name}`{where} (shipped in the package: `dsco_hub/docs/{name}`)"


GRID_CLASSES = 20  # classes shown in samples.png

METHOD_DESCRIPTIONS = {
    "random": "a seeded random subset of real images per class, the baseline of the dataset condensation literature.",
    "diffusion": "plain class-conditional sampling of the diffusion prior (our DDIM loop with classifier-free "
    "guidance), the baseline every diffusion-based distillation paper reports.",
    "dsco": "DsCo (Liu et al., arXiv 2603.27987): NOpt steers the diffusion prior's sampling noise so each class's "
    "synthetic images match the class distribution (MMD in random ConvNet-3 feature spaces); doping adds real "
    "images chosen by kernel herding where the synthetic ones cover the class worst.",
    "herding": "kernel herding: greedy selection of real images per class minimising the MMD to the class in a fixed "
    "random ConvNet-3 feature space (Chen, Welling and Smola, UAI 2010, arXiv 1203.3472).",
}
# The section of docs/method.md that describes each method
METHOD_SECTIONS = {"random": 5, "herding": 5, "diffusion": 2, "dsco": 1}


def method_description(method: str) -> str:
    """One sentence on `method` for the card, ending with a reference to its section of `docs/method.md`."""
    text = METHOD_DESCRIPTIONS.get(method, method)
    if method not in METHOD_SECTIONS:
        return text
    return f"{text} Details: {reference('docs/method.md', METHOD_SECTIONS[method])}."


def size_category(n: int) -> str:
    """The Hub's `size_categories` bucket of `n` rows ("n<1K", "1K<n<10K", ...)."""
    buckets = [
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
        (100_000_000, "10M<n<100M"),
    ]
    for limit, name in buckets:
        if n < limit:
            return name
    return "n>1T" if n > 10**12 else "100M<n<1B"


def _format_result(result: dict | None) -> str | None:
    if not result:
        return None
    return f"{result['accuracy_mean']:.2f} ± {result['accuracy_std']:.2f}"


def display_name(source: dict) -> str:
    """A short name of the source for titles: the Hub id, or a local folder's name."""
    return source["id"] if source.get("is_hub") else source["id"].rstrip("/").split("/")[-1]


# ---------------------------------------------------------------------------------------------------------------------
# The `dsco:` block: what a set's card records about the run that made it (docs/format.md)
# ---------------------------------------------------------------------------------------------------------------------

VERSIONED = ("torch", "diffusers", "datasets", "huggingface_hub", "accelerate")  # libraries the card names


def versions() -> dict[str, str]:
    """The card's `dsco.versions`: dsco-hub's version and that of each installed library of `VERSIONED`.

    Returns:
        `dict[str, str]`: e.g. `{"dsco_hub": "0.1.0", "torch": "2.13.0", ...}` (a library not installed is left out).
    """
    found = {"dsco_hub": __version__}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def source_block(cfg: ConcentrateConfig, source: Any | None, class_names: list[str], out: Path | None = None) -> dict:
    """The card's `dsco.source`: where the data came from.

    Args:
        cfg (`ConcentrateConfig`): the run's settings (SOURCE, its config, data-free mode).
        source (`data.SourceData`, *optional*): the loaded training split; None in data-free mode without SOURCE.
        class_names (`list[str]`): the set's classes (the data-free labels when `source` is None).
        out (`Path`, *optional*): the set's folder; a local SOURCE is recorded relative to it (`path`).

    Returns:
        `dict`: id (a Hub id, or a local folder's name, never its path), data_free, is_hub, config, split,
        revision, num_rows (the split's declared size for a stream, None when it declares none), num_classes,
        license, and `path` (local SOURCE) or `streaming` (rows_read, rows_kept, per_class, shuffle_buffer).
    """
    if source is None:
        return {
            "id": "data-free",
            "data_free": True,
            "is_hub": False,
            "config": None,
            "split": None,
            "revision": None,
            "num_rows": 0,
            "num_classes": len(class_names),
            "license": None,
        }
    local = cfg.source.source is not None and Path(cfg.source.source).expanduser().exists()
    block = {
        "id": files.local_name(cfg.source.source) if local else source.source_id,
        "data_free": cfg.data_free,
        "is_hub": cfg.source.source is not None and not local,
        "config": cfg.source.config_name,
        "split": source.split,
        "revision": source.revision,
        "num_rows": len(source.labels),
        "num_classes": source.num_classes,
        "license": source.license,
    }
    if local:  # how to reach the source from the set's folder (never an absolute path: a push publishes the card)
        block["path"] = files.relative_to(cfg.source.source, out)
    streamed = source.extra.get("streaming")
    if streamed:  # the split's declared size, else None (the stream stopped before its end)
        block["num_rows"] = streamed["num_examples"]
        block["streaming"] = {k: streamed[k] for k in ("rows_read", "rows_kept", "per_class", "shuffle_buffer")}
    return block


def settings_block(cfg: ConcentrateConfig, prior: Any | None, identity: dict | None = None) -> dict:
    """The card's `dsco.settings`: the method's settings, only those the method uses.

    Args:
        cfg (`ConcentrateConfig`): the run's settings.
        prior (`models.DiffusionPrior`, *optional*): the loaded prior (None for `random` and `herding`); its DDIM
            `clip_sample` and resolution are recorded.
        identity (`dict`, *optional*): `models.model_identity` of the run, as its `dsco_config.json` records it
            (computed when not given: a local model's weights are then read once more).

    Returns:
        `dict`: herding's kernel, feature seed and pool; the sampler's (model by Hub id, local name, or "dsco-hub
        shipped prior (prior_fashion_mnist@<weight digest>)"; then a local model's `model_digest` or a Hub model's
        `model_commit`; scheduler, steps, guidance, eta, batch, resolution) for `diffusion`; NOpt's, doping's and
        data-free mode's before the sampler's for `dsco`; `{}` for `random`.
    """
    from dsco_hub.models import model_identity  # models loads torch and diffusers: imported only when a prior ran

    if cfg.method == "herding":
        return {"kernel": cfg.kernel, "feature_seed": cfg.feature_seed, "herding_pool": cfg.herding_pool}
    if prior is None:
        return {}

    def named(path: str | None) -> str | None:  # a local folder or file by its name, a Hub id as it is
        return files.local_name(path) if path and Path(path).expanduser().exists() else path

    identity = dict(model_identity(cfg.model, cfg.model_revision) if identity is None else identity)
    shipped = identity.pop("shipped_prior", None)  # by name and weight digest, in "model"
    sampler = {
        "model": named(cfg.model) or f"dsco-hub shipped prior ({shipped})",
        **identity,  # model_digest (a local folder) or model_commit (a Hub id)
        "model_revision": cfg.model_revision,
        "class_map": named(cfg.class_map),
        "scheduler": cfg.scheduler,
        "steps": cfg.steps,
        "guidance_scale": cfg.guidance_scale,
        "eta": cfg.eta,
        "clip_sample": bool(prior.scheduler.config.get("clip_sample", False)),  # the model's own DDIM x0 clipping
        "sample_batch_size": cfg.sample_batch_size,
        "resolution": prior.image_shape[1],
    }
    if cfg.method != "dsco":
        return sampler
    n = cfg.num_synthetic
    return {
        **{f"nopt_{k}": v for k, v in dataclasses.asdict(cfg.nopt).items()},
        "nopt_window": cfg.nopt_window,  # resolved (`NOptConfig.window_for`)
        "nopt_target_batch": cfg.nopt.batch_for(cfg.nopt_per_class),  # resolved: max(128, 10 n), all (0) for n = 1
        "oversample": cfg.oversample,
        "doping_select": cfg.doping_select,
        **({"doping_ratio": "auto"} if cfg.doping_ratio == "auto" else {}),  # the dsco block holds the ratio reached
        "data_free": cfg.data_free,
        "pool_size": cfg.pool_for(n) if cfg.data_free else None,
        "pool_guidance_scale": cfg.pool_guidance if cfg.data_free else None,
        **sampler,
    }


def protocol_block(cfg: EvalConfig, channels: int, device: torch.device, soft: Any | None = None) -> dict:
    """The card's `eval.protocol` (docs/evaluation.md): the settings, and the device and precision the students
    trained with.

    Args:
        cfg (`EvalConfig`): the protocol's settings.
        channels (`int`): the test images' channels (1 or 3); flips default to on for 3 (`cfg.flip=None`).
        device (`torch.device`): where the students trained.
        soft (`teacher.Teacher`, *optional*): the soft-label teacher; recorded by its folder's name and config
            digest (never a path), with the temperature.

    Returns:
        `dict`: model, epochs, runs, lr, momentum, weight_decay, batch_size, augment, flip, seed, labels, (teacher,
        temperature), device (e.g. "cpu", "cuda (NVIDIA H200)") and precision ("float32" or "bf16 autocast").
    """
    from dsco_hub import distributed  # accelerate: imported only when an evaluation ran

    flip = cfg.flip if cfg.flip is not None else channels == 3
    precision = distributed.eval_precision(device)
    return {
        "model": cfg.model,
        "epochs": cfg.epochs,
        "runs": cfg.runs,
        "lr": cfg.lr,
        "momentum": cfg.momentum,
        "weight_decay": cfg.weight_decay,
        "batch_size": cfg.batch_size,
        "augment": cfg.augment,
        "flip": flip,
        "seed": cfg.seed,
        "labels": cfg.labels,
        **({"teacher": soft.describe(), "temperature": cfg.temperature} if soft is not None else {}),
        "device": distributed.describe_device(device),  # e.g. "cpu", "cuda (NVIDIA H200)"
        "precision": "float32" if precision == "no" else f"{precision} autocast",
    }


# ---------------------------------------------------------------------------------------------------------------------
# The dataset card of a folder
# ---------------------------------------------------------------------------------------------------------------------


def card_data(dsco: dict, pretty_name: str) -> DatasetCardData:
    """The card's YAML header (without `dataset_info`/`configs`, which `dataset_card` adds).

    Args:
        dsco (`dict`): the `dsco:` block (method, ipc, doping_ratio, seed, settings, counts, source, versions, eval).
        pretty_name (`str`): the card's title.

    Returns:
        `huggingface_hub.DatasetCardData` with licence, task, source datasets, size, tags and the `dsco` block.
    """
    source = dsco["source"]
    is_hub = source.get("is_hub", False)
    license_ = source.get("license")
    tags = ["dsco-hub", "dataset-distillation", "dataset-concentration", f"ipc-{dsco['ipc']}", dsco["method"]]
    if dsco["counts"]["synthetic"]:
        tags.append("synthetic")
    return DatasetCardData(
        license=license_ or "other",
        task_categories=["image-classification"],
        source_datasets=[source["id"]] if is_hub else ["original"],
        size_categories=[size_category(dsco["counts"]["rows"])],
        tags=tags,
        pretty_name=pretty_name,
        dsco=dsco,
    )


def render_dataset_card(
    data: DatasetCardData,
    dsco: dict,
    citation: str | None,
    load_id: str,
    grid_classes: int,
    samples_file: str = "samples.png",
    configs: dict[str, dict] | None = None,
) -> DatasetCard:
    """Render `cards/dataset_card.md` into a `huggingface_hub.DatasetCard`.

    Args:
        data (`DatasetCardData`): the YAML header (from `card_data`, plus `dataset_info`/`configs`).
        dsco (`dict`): the `dsco:` block (the body is derived from it, so updating it and re-rendering is enough).
        citation (`str`, *optional*): the source's citation.
        load_id (`str`): what users pass to `load_dataset` (a repo id or a folder path).
        grid_classes (`int`): classes shown in `samples.png`.
        samples_file (`str`, *optional*, defaults to "samples.png"): path of the samples grid, relative to the card.
        configs (`dict[str, dict]`, *optional*): with more than one config, the `dsco:` block of each config of a
            Hub repo by name (`dsco["config"]` is the default); the card then lists them in "Configurations".

    Returns:
        `huggingface_hub.DatasetCard`: the card; its links to dsco-hub and its docs come from `reference`.
    """
    source = dsco["source"]
    counts = dsco["counts"]
    evaluation = dsco.get("eval")
    eval_context = None
    if evaluation:
        protocol = evaluation["protocol"]
        augmentation = "DSA-style crop, scale, rotate and cutout" + (", flip" if protocol.get("flip") else "")
        eval_context = {
            "model_name": {"convnet3": "ConvNet-3", "resnet18": "ResNet-18"}[evaluation["result"]["model"]],
            "epochs": protocol["epochs"],
            "runs": protocol["runs"],
            # the optimizer as run (older cards lack these keys: they ran the defaults of `EvalConfig`)
            "lr": f"{protocol.get('lr', 0.01):g}",
            "momentum": f"{protocol.get('momentum', 0.9):g}",
            "weight_decay": f"{protocol.get('weight_decay', 5e-4):g}",
            "batch_size": protocol.get("batch_size", 256),
            "augmentation": augmentation if protocol.get("augment", True) else "no augmentation",
            "labels": labels_text(protocol),
            "test_dataset": evaluation["test"]["dataset"],
            "test_split": evaluation["test"]["split"],
            "test_images": evaluation["test"]["num_images"],
            "result": _format_result(evaluation["result"]),
            "baseline": _format_result(evaluation.get("baseline_random")),
        }
    settings = ", ".join(f"`{k}={v}`" for k, v in dsco["settings"].items()) or "none"
    versions_text = ", ".join(f"{k} {v}" for k, v in dsco["versions"].items())
    volume = counts["rows"] / max(source["num_rows"] or 0, 1)  # None: a streamed split of undeclared size
    return DatasetCard.from_template(
        data,
        template_path=str(template_path("dataset_card.md")),
        pretty_name=data.pretty_name,
        source_id=source["id"],
        source_url=f"https://huggingface.co/datasets/{source['id']}"
        if source.get("is_hub")
        else "#source-licence-and-citation",
        source_split=source["split"],
        source_rows=source["num_rows"],
        source_read=source["id"] != "data-free",
        source_revision=source.get("revision"),
        num_classes=source["num_classes"],
        ipc=dsco["ipc"],
        num_rows=counts["rows"],
        num_real=counts["real"],
        num_synthetic=counts["synthetic"],
        data_volume=f"{100 * volume:.3g} %",
        method=dsco["method"],
        method_description=method_description(dsco["method"]),
        doping_ratio=dsco["doping_ratio"],
        settings=settings,
        seed=dsco["seed"],
        versions=versions_text,
        samples_file=samples_file,
        grid_classes=grid_classes,
        load_id=load_id,
        eval=eval_context,
        license=source.get("license"),
        citation=citation,
        reference=reference,
        configs=_config_rows(configs, dsco.get("config")) if configs and len(configs) > 1 else None,
        default_config=dsco.get("config"),
    )


def _config_rows(blocks: dict[str, dict], default: str) -> list[dict[str, str]]:
    """The rows of the "Configurations" table of a Hub card, the default config first."""
    rows = []
    for name, block in sorted(blocks.items(), key=lambda kv: (kv[0] != default, kv[0])):
        evaluation = block.get("eval") or {}
        rows.append(
            {
                "name": name,
                "ipc": str(block.get("ipc", "?")),
                "method": str(block.get("method", "?")),
                "rows": str(block.get("counts", {}).get("rows", "?")),
                "result": _format_result(evaluation.get("result")) or "not evaluated",
                "commit": f"`{evaluation['commit'][:8]}`" if evaluation.get("commit") else "-",
            }
        )
    return rows


def _folder_data(dsco: dict) -> DatasetCardData:
    """The YAML header of a folder's card, titled "<source> concentrated (<method>, IPC <ipc>)"."""
    return card_data(
        dsco, pretty_name=f"{display_name(dsco['source'])} concentrated ({dsco['method']}, IPC {dsco['ipc']})"
    )


def dataset_card(
    dsco: dict,
    citation: str | None,
    load_id: str,
    grid_classes: int,
    ds: datasets.Dataset,
    split_info: datasets.SplitInfo,
    download_size: int,
) -> DatasetCard:
    """The card of a new set: `dataset_info` and `configs` exactly as `Dataset.push_to_hub` writes them.

    Args:
        dsco (`dict`): the `dsco:` block (see `source_block`, `settings_block`, `protocol_block`, `versions`).
        citation (`str`, *optional*): the source's citation.
        load_id (`str`): what users pass to `load_dataset` (the folder's name).
        grid_classes (`int`): classes shown in `samples.png` (at most `GRID_CLASSES`).
        ds (`datasets.Dataset`): the set's rows (for its features).
        split_info (`datasets.SplitInfo`): the written split's name, bytes and rows (`writer.write_parquet`).
        download_size (`int`): the parquet shards' size in bytes.

    Returns:
        `huggingface_hub.DatasetCard`: the card to write as the folder's README.md (`writer.write_card`).
    """
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict
    from datasets.utils.metadata import MetadataConfigs

    data = _folder_data(dsco)
    info = DatasetInfo(
        config_name="default", features=ds.features, splits=SplitDict(), download_size=0, dataset_size=0
    )
    info.splits.add(split_info)
    info.download_size += download_size
    info.dataset_size += split_info.num_bytes
    info.size_in_bytes = info.download_size + info.dataset_size
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    configs = {"default": {"data_files": [{"split": split_info.name, "path": f"data/{split_info.name}-*"}]}}
    MetadataConfigs(configs).to_dataset_card_data(data)
    return render_dataset_card(data, dsco, citation, load_id, grid_classes)


def with_evaluation(existing: DatasetCard, block: dict, load_id: str) -> DatasetCard:
    """A folder's card re-rendered with the evaluation `block` as its `dsco.eval` (`dsco-hub evaluate --update-card`).

    Args:
        existing (`DatasetCard`): the folder's card, as dsco-hub wrote it (with a `dsco:` block).
        block (`dict`): the `eval` block (protocol, test, result, baseline_random, evaluated_at).
        load_id (`str`): what users pass to `load_dataset` (the folder's name).

    Returns:
        `huggingface_hub.DatasetCard`: the card, its `dataset_info`/`configs` and source citation carried over.

    Raises:
        SourceError: `existing` has no `dsco:` block (another tool wrote it).
    """
    if not isinstance(existing.data.get("dsco"), dict) or "source" not in existing.data["dsco"]:
        raise SourceError(
            f"existing={existing.data.get('pretty_name')!r} is not a card dsco-hub wrote (no dsco: block with a "
            "source); evaluate without --update-card, or pass the card of a set made by `dsco-hub concentrate`."
        )
    dsco = {**dict(existing.data["dsco"]), "eval": block}
    data = _folder_data(dsco)
    carried = existing.data.to_dict()
    for key in ("dataset_info", "configs"):
        if key in carried:
            data[key] = carried[key]
    grid_classes = min(dsco["source"]["num_classes"], GRID_CLASSES)
    return render_dataset_card(data, dsco, citation_of(existing), load_id, grid_classes)


def citation_of(existing: DatasetCard) -> str | None:
    """The source citation block of a card we rendered (the first fenced block after "Cite the source dataset:").

    The citation is recorded nowhere else, so re-rendering a card (after an evaluation, or merged on the Hub) reads
    it back from the text `cards/dataset_card.md` wrote.
    """
    text = existing.text
    marker = "Cite the source dataset:"
    if marker not in text:
        return None
    block = text.split(marker, 1)[1].split("```")
    return block[1].strip() if len(block) > 2 else None


# ---------------------------------------------------------------------------------------------------------------------
# The card of a Hub repo: one config per IPC, merged as `push_to_hub` merges them
# ---------------------------------------------------------------------------------------------------------------------


def card_blocks(data: DatasetCardData | None) -> dict[str, dict]:
    """The `dsco:` block of every config of a card, by config name.

    A folder's card has one `dsco:` block (config "default"); a Hub card has `dsco:` (with `config:`) for the
    default config and `dsco_configs:` for the others.

    Args:
        data (`DatasetCardData`, *optional*): the card's YAML (None: no card).

    Returns:
        `dict[str, dict]`: a copy of each block by config name; `{}` for a card without a `dsco:` block.
    """
    blocks: dict[str, dict] = {}
    dsco = data.get("dsco") if data is not None else None
    if isinstance(dsco, dict) and dsco:
        blocks[dsco.get("config") or "default"] = dict(dsco)
    for name, block in ((data.get("dsco_configs") if data is not None else None) or {}).items():
        blocks[name] = dict(block)
    return blocks


def default_config(data: DatasetCardData) -> str | None:
    """The config a card's `configs:` marks `default` (or its only one).

    Args:
        data (`DatasetCardData`): the card's YAML.

    Returns:
        `str` or None: the config name; None when the card declares no configs, or several and none is the default.
    """
    from datasets.utils.metadata import MetadataConfigs

    configs = MetadataConfigs.from_dataset_card_data(data)
    if not configs:
        return None
    try:
        return configs.get_default_config_name()
    except ValueError:
        return None


def _place_blocks(data: DatasetCardData, blocks: dict[str, dict], default: str) -> None:
    """Write `blocks` into the card YAML: `dsco:` for `default`, `dsco_configs:` for the others."""
    name = default if default in blocks else sorted(blocks)[0]

    def with_config(config: str, block: dict) -> dict:
        return {"config": config, **{k: v for k, v in block.items() if k != "config"}}

    data["dsco"] = with_config(name, blocks[name])
    others = {k: with_config(k, v) for k, v in sorted(blocks.items()) if k != name}
    if others:
        data["dsco_configs"] = others
    else:
        data.pop("dsco_configs", None)


def _is_dsco_block(block: dict) -> bool:
    return all(key in block for key in ("method", "ipc", "source", "counts", "settings", "versions"))


def _render_hub(data: DatasetCardData, repo_id: str, citation: str | None) -> DatasetCard:
    """The Hub card of a dsco-hub repo: the template rendered for the default config, with its configs table."""
    blocks = card_blocks(data)
    default = data["dsco"]["config"]
    dsco = blocks[default]
    grid_classes = min(dsco["source"]["num_classes"], GRID_CLASSES)
    samples = f"{default}/samples.png"
    return render_dataset_card(data, dsco, citation, repo_id, grid_classes, samples_file=samples, configs=blocks)


def hub_card(
    local: DatasetCard, remote: DatasetCard | None, config_name: str, repo_id: str, terms: dict[str, Any]
) -> str:
    """The README.md to push: the remote card (if any) with the folder's set added or replaced as `config_name`.

    The YAML keeps the remote card's keys; `configs:` and `dataset_info:` are merged with
    `datasets.utils.metadata.MetadataConfigs` and `datasets.info.DatasetInfosDict` as `push_to_hub` merges them
    (the first config pushed stays `default: true`); the title, licence and tags come from the default config's
    block, the tags of every config are kept, and the source's terms of use are carried over. The body is
    `cards/dataset_card.md` rendered for the default config, with a "Configurations" table when there are several.

    Args:
        local (`DatasetCard`): the folder's card (with its `dsco:`, `dataset_info:` and `configs:`).
        remote (`DatasetCard`, *optional*): the repo's card at the target revision, None when it has none.
        config_name (`str`): the config the folder becomes, e.g. "ipc10".
        repo_id (`str`): the repo (`load_dataset` lines name it).
        terms (`dict`): licence and gating fields of a Hub source's card (`gated` is a repo setting, left out).

    Returns:
        `str`: the card's text.

    Raises:
        OutputError: `local` has no `dsco:` block with an `ipc` (not a set written by dsco-hub).
    """
    from datasets.info import DatasetInfosDict

    if not isinstance(local.data.get("dsco"), dict) or "ipc" not in local.data["dsco"]:
        raise OutputError(
            f"local={local.data.get('pretty_name')!r} is not the card of a set written by dsco-hub (no dsco: block "
            "with an ipc); push a folder written by `dsco-hub concentrate`."
        )
    from datasets.utils.metadata import MetadataConfigs

    dsco = {**local.data["dsco"], "config": config_name}
    info = next(iter(DatasetInfosDict.from_dataset_card_data(local.data).values()))
    splits = list(info.splits) if info.splits else ["train"]
    blocks = card_blocks(remote.data) if remote is not None else {}
    remote_configs = MetadataConfigs.from_dataset_card_data(remote.data) if remote is not None else MetadataConfigs()
    blocks[config_name] = dsco

    # YAML: the remote card's keys, then the fields derived from the default config, then this config's
    data = DatasetCardData(**(remote.data.to_dict() if remote is not None else {}))
    metadata = {"data_files": [{"split": s, "path": f"{config_name}/{s}-*"} for s in splits]}
    if not remote_configs or remote_configs.get(config_name, {}).get("default"):
        metadata["default"] = True  # the first config pushed stays the default: load_dataset(repo) keeps working
    DatasetInfosDict({config_name: info}).to_dataset_card_data(data)
    MetadataConfigs({config_name: metadata}).to_dataset_card_data(data)
    default = default_config(data) or config_name
    if not _is_dsco_block(blocks.get(default, {})):
        default = config_name  # the card is rendered from a block dsco-hub wrote
    default_block = blocks[default]
    ipcs = sorted(int(b["ipc"]) for b in blocks.values() if "ipc" in b)
    pretty = (
        f"{display_name(default_block['source'])} concentrated ({default_block['method']}, "
        f"IPC {', '.join(map(str, ipcs))})"
    )
    base = card_data(default_block, pretty_name=pretty).to_dict()
    base["tags"] = sorted(
        {t for b in blocks.values() if _is_dsco_block(b) for t in card_data(b, pretty).to_dict()["tags"]}
        | set(data.get("tags") or [])
    )
    base.pop("dsco", None)
    for key, value in {**base, **{k: v for k, v in terms.items() if k != "gated"}}.items():
        data[key] = value
    _place_blocks(data, blocks, default)
    citation = citation_of(local) or (citation_of(remote) if remote is not None else None)
    return str(_render_hub(data, repo_id, citation))


# Source card fields that carry the source's terms of use over to the concentrated set
TERMS_KEYS = (
    "license",
    "license_name",
    "license_link",
    "license_details",
    "extra_gated_prompt",
    "extra_gated_fields",
    "extra_gated_heading",
    "extra_gated_description",
    "extra_gated_button_content",
)


def source_terms(source_card: dict[str, Any], gated: str | bool | None, source_id: str) -> dict[str, Any]:
    """The terms of use of a Hub source that its concentrated set carries over (`hub_card` writes them).

    Args:
        source_card (`dict`): the YAML of the source's card.
        gated (`str` or `bool`, *optional*): the source repo's gating ("auto", "manual", or False/None).
        source_id (`str`): the source's Hub id, named in the access prompt of a gated source without one.

    Returns:
        `dict`: the non-empty fields of `TERMS_KEYS`, and for a gated source `gated` (a repo setting, which the
        push applies) and an `extra_gated_prompt`.
    """
    terms = {key: source_card[key] for key in TERMS_KEYS if source_card.get(key) not in (None, "", [])}
    if gated:
        terms["gated"] = gated
        terms.setdefault(
            "extra_gated_prompt",
            f"This dataset holds images of {source_id}, a gated dataset: by requesting access you agree to the "
            f"terms of {source_id} (https://huggingface.co/datasets/{source_id}).",
        )
    return terms


def declared_configs(data: DatasetCardData) -> list[str]:
    """The config names a card's `configs:` declares, in order (`datasets`' own reading of it); `[]` for none."""
    from datasets.utils.metadata import MetadataConfigs

    return list(MetadataConfigs.from_dataset_card_data(data))


def evaluated_config(found: DatasetCard | None, config_name: str | None, where: str) -> tuple[str | None, dict]:
    """The config of a set to evaluate and its `dsco:` block, from the set's card (a Hub repo's, or a folder's:
    one written by `concentrate`, or a download of a Hub set with several configs).

    Args:
        found (`DatasetCard`, *optional*): the set's card (None: it has none).
        config_name (`str`, *optional*): the config asked for (`--set-config`); None picks the card's default
            config, or its only one.
        where (`str`): the set, as messages name it (`datasets/USER/NAME`, or the folder).

    Returns:
        `tuple[str | None, dict]`: the config (None when the card declares none) and its `dsco:` block (`{}` for
        sets other tools published).

    Raises:
        HubError: several configs and none is the default (pick one with --set-config), or `config_name` is not
            one of them (lists them).
    """
    blocks = card_blocks(found.data) if found is not None else {}
    declared = declared_configs(found.data) if found is not None else []
    if config_name is None:
        config_name = (default_config(found.data) if found is not None else None) or (
            declared[0] if len(declared) == 1 else None
        )
        if config_name is None and declared:
            raise HubError(
                f"{where} has several configs and no default ({', '.join(declared)}); pick one with --set-config."
            )
    elif declared and config_name not in declared:
        raise HubError(f"--set-config={config_name!r} is not a config of {where}; its configs: {', '.join(declared)}.")
    dsco = blocks.get(config_name or "default") or (blocks.get("default") if len(blocks) == 1 else None) or {}
    return config_name, dsco


EVAL_BEGIN = "<!-- dsco-hub eval -->"
EVAL_END = "<!-- /dsco-hub eval -->"


def with_hub_evaluation(
    current: DatasetCard | None, config_name: str | None, block: dict, repo_id: str
) -> tuple[str, str]:
    """A Hub card with the evaluation `block` as the `dsco.eval` of `config_name`.

    dsco-hub cards are re-rendered from their blocks; cards of other tools keep their text and get a `dsco:` block
    with just `eval` (and `config`) plus the section of `eval_section`, which replaces the one an earlier
    evaluation left (between `EVAL_BEGIN` and `EVAL_END`).

    Args:
        current (`DatasetCard`, *optional*): the card at the head of the target branch (None: the repo has none).
        config_name (`str`, *optional*): the evaluated config (None: the card's first block, else "default").
        block (`dict`): the `eval` block (protocol, test, result, baseline_random, commit).
        repo_id (`str`): the repo.

    Returns:
        `tuple[str, str]`: the card's text and the name of the config evaluated.
    """
    data = DatasetCardData(**(current.data.to_dict() if current is not None else {}))
    blocks = card_blocks(data)
    name = config_name or next(iter(blocks), "default")
    blocks[name] = {**blocks.get(name, {}), "eval": block}
    default = default_config(data) or (data.get("dsco") or {}).get("config") or name
    _place_blocks(data, blocks, default)
    if all(_is_dsco_block(b) for b in blocks.values()):
        return str(_render_hub(data, repo_id, citation_of(current) if current is not None else None)), name
    # a card another tool wrote: keep its text, (re)place our marked section
    text = current.text if current is not None else ""
    section = eval_section(blocks)
    pattern = re.compile(re.escape(EVAL_BEGIN) + r".*?" + re.escape(EVAL_END) + r"\n?", re.S)
    text = pattern.sub(lambda _: section, text, count=1) if pattern.search(text) else text.rstrip() + "\n\n" + section
    return f"---\n{data.to_yaml()}\n---\n{text}", name


def labels_text(protocol: dict) -> str:
    """The students' labels as a card states them: "hard labels", or the soft labels of a named teacher.

    Args:
        protocol (`dict`): an `eval.protocol` block; one without `labels` (older cards) had hard labels.

    Returns:
        `str`: e.g. "soft labels of the teacher `fmnist-teacher` (ConvNet-3, digest 1a2b3c4d5e6f, 88.10 % test
        accuracy), temperature 4".
    """
    if protocol.get("labels", "hard") != "soft":
        return "hard labels"
    teacher = protocol.get("teacher") or {}
    model = {"convnet3": "ConvNet-3", "resnet18": "ResNet-18"}.get(teacher.get("model"), teacher.get("model"))
    accuracy = teacher.get("test_accuracy")
    shown = f", {accuracy * 100:.2f} % test accuracy" if accuracy is not None else ""
    return (
        f"soft labels of the teacher `{teacher.get('name')}` ({model}, digest {teacher.get('digest')}{shown}), "
        f"temperature {protocol.get('temperature', 4.0):g}"
    )


def eval_section(blocks: dict[str, dict]) -> str:
    """`cards/eval_section.md`: a marked Markdown section with the `eval` results of each config, for cards
    dsco-hub did not render.

    The section sits between `EVAL_BEGIN` and `EVAL_END`, so a later evaluation replaces it in place.

    Args:
        blocks (`dict[str, dict]`): the `dsco:` block of each config, by name (those without `eval` are left out).

    Returns:
        `str`: the section, ending with a newline.
    """
    import jinja2

    rows = []
    for name, block in sorted(blocks.items()):
        evaluation = block.get("eval")
        if not evaluation:
            continue
        result = evaluation["result"]
        soft = evaluation["protocol"].get("labels") == "soft"
        rows.append(
            {
                "name": name,
                "test": evaluation["test"],
                "student": f"{result['model']}, {labels_text(evaluation['protocol'])}" if soft else result["model"],
                "epochs": result["epochs"],
                "runs": result["runs"],
                "result": _format_result(result),
                "baseline": _format_result(evaluation.get("baseline_random")) or "-",
                "commit": (evaluation.get("commit") or "-")[:8],
            }
        )
    template = jinja2.Template(template_path("eval_section.md").read_text(), keep_trailing_newline=True)
    return template.render(begin=EVAL_BEGIN, end=EVAL_END, rows=rows, reference=reference)


# ---------------------------------------------------------------------------------------------------------------------
# Model cards: a trained prior, a teacher
# ---------------------------------------------------------------------------------------------------------------------


def prior_card(
    cfg: PriorTrainConfig,
    source: Any,
    unet: torch.nn.Module,
    num_classes: int,
    channels: int,
    resolution: int,
    wall: float,
    loss_ema: float | None,
    command: str,
    per_class: int,
    extended_from: list[int],
) -> ModelCard:
    """`cards/prior_card.md`: the model card of a prior trained by `dsco-hub prior train`.

    Args:
        cfg (`PriorTrainConfig`): the training settings (steps, batch, optimizer, EMA, schedule, samples, `out`).
        source (`data.SourceData`): the training split (id, split, classes, licence, citation).
        unet (`torch.nn.Module`): the trained denoiser (its parameters are counted).
        num_classes (`int`): the classes; the guidance null class is label `num_classes`.
        channels (`int`): image channels (1 or 3).
        resolution (`int`): image side in pixels.
        wall (`float`): training wall time in seconds.
        loss_ema (`float`, *optional*): the EMA of the batch loss at the end (None: no step ran).
        command (`str`): the command line (secrets masked).
        per_class (`int`): samples per class in `samples.png`.
        extended_from (`list[int]`): the step counts at which earlier runs of the same training finished.

    Returns:
        `huggingface_hub.ModelCard`: the card (`save` it as the folder's README.md).
    """
    import torch

    hours, rem = divmod(int(wall), 3600)
    minutes = rem // 60
    data = ModelCardData(
        library_name="diffusers",
        license=source.license,
        tags=["dsco-hub", "diffusion", "class-conditional", "unconditional-image-generation"],
        pipeline_tag="unconditional-image-generation",
        datasets=[source.source_id] if "/" in source.source_id and " " not in source.source_id else None,
    )
    classes = "\n".join(f"- {k}: {name}" for k, name in enumerate(source.class_names))
    return ModelCard.from_template(
        data,
        template_path=str(template_path("prior_card.md")),
        title=f"Class-conditional diffusion prior for {source.source_id}",
        num_params=f"{sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M",
        samples_file="samples.png",
        samples_per_class=per_class,
        sample_steps=cfg.sample_steps,
        sample_guidance=cfg.sample_guidance,
        classes=classes,
        null_class=num_classes,
        num_class_embeds=num_classes + 1,
        source=source.source_id,
        split=source.split,
        num_images=len(source.labels),
        resolution=resolution,
        channels=channels,
        command=command,
        extended_from=", ".join(map(str, extended_from)),
        steps=cfg.max_steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        ema_power=cfg.ema_power,
        ema_max_decay=cfg.ema_max_decay,
        label_dropout=cfg.label_dropout,
        snr_gamma=cfg.snr_gamma,
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        mixed_precision=cfg.mixed_precision,
        final_loss=f"{loss_ema:.4f}" if loss_ema is not None else "n/a",
        wall_time=f"{hours} h {minutes} min ({wall:.0f} s)",
        hardware=f"{os.cpu_count()} CPU cores ({platform.machine()})"
        if not torch.cuda.is_available()
        else torch.cuda.get_device_name(0),
        load_path=str(cfg.out),
        license=source.license,
        citation=source.citation,
    )


# Variables of `cards/teacher_card.md` shown as `teacher_config.json` records them
TEACHER_AS_RECORDED = (
    "split",
    "channels",
    "num_images",
    "epochs",
    "lr",
    "momentum",
    "weight_decay",
    "batch_size",
    "seed",
    "test_images",
    "device",
)


def teacher_card(config: dict[str, Any], train: Any, num_params: int) -> ModelCard:
    """`cards/teacher_card.md`: the model card of a teacher trained by `dsco-hub teacher train`.

    Args:
        config (`dict`): the teacher's `teacher_config.json` (source name, split, model, training settings, test
            accuracy in `[0, 1]`, device, command, dsco-hub version).
        train (`data.SourceData`): the training split (id and licence).
        num_params (`int`): the network's parameters.

    Returns:
        `huggingface_hub.ModelCard`: the card (written as the folder's README.md).
    """
    data = ModelCardData(
        library_name="pytorch",
        license=train.license,
        tags=["dsco-hub", "image-classification", "dataset-distillation-teacher"],
        pipeline_tag="image-classification",
        datasets=[train.source_id] if "/" in train.source_id and " " not in train.source_id else None,
        metrics=["accuracy"],
    )
    return ModelCard.from_template(
        data,
        template_path=str(template_path("teacher_card.md")),
        source=config["source_name"],
        model_name={"convnet3": "ConvNet-3", "resnet18": "ResNet-18"}[config["model"]],
        num_params=f"{num_params / 1e6:.2f} M",
        num_classes=len(config["class_names"]),
        image_size=config["image_size"][0],
        test_accuracy=f"{config['test_accuracy'] * 100:.2f}",
        machine=platform.machine(),
        command=config["command"] or "(library call)",
        version=config["dsco_hub_version"],
        **{key: config[key] for key in TEACHER_AS_RECORDED},
    )
