"""Dataset and model cards, rendered with `huggingface_hub` from the Jinja templates in `cards/`.

The templates and the documentation they cite ship inside the wheel (`dsco_hub/cards/` and
`dsco_hub/docs/`, hatchling `force-include`); in a source checkout they are read from the repository's
`cards/` and `docs/` folders. `reference` writes every link a card makes to dsco-hub itself.
"""

from __future__ import annotations

import importlib.metadata
import string
from importlib import resources
from pathlib import Path

from dsco_hub import __version__


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


def card_data(dsco: dict, pretty_name: str):
    """The card's YAML header (without `dataset_info`/`configs`, which the writer adds).

    Args:
        dsco (`dict`): the `dsco:` block (method, ipc, doping_ratio, seed, settings, counts, source, versions, eval).
        pretty_name (`str`): the card's title.

    Returns:
        `huggingface_hub.DatasetCardData` with licence, task, source datasets, size, tags and the `dsco` block.
    """
    from huggingface_hub import DatasetCardData

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
    data, dsco: dict, citation: str | None, load_id: str, grid_classes: int, samples_file: str = "samples.png"
):
    """Render `cards/dataset_card.md` into a `huggingface_hub.DatasetCard`.

    Args:
        data (`DatasetCardData`): the YAML header (from `card_data`, plus `dataset_info`/`configs`).
        dsco (`dict`): the `dsco:` block (the body is derived from it, so updating it and re-rendering is enough).
        citation (`str`, *optional*): the source's citation.
        load_id (`str`): what users pass to `load_dataset` (a repo id or a folder path).
        grid_classes (`int`): classes shown in `samples.png`.
        samples_file (`str`, *optional*, defaults to "samples.png"): path of the samples grid, relative to the card.

    Returns:
        `huggingface_hub.DatasetCard`: the card; its links to dsco-hub and its docs come from `reference`.
    """
    from huggingface_hub import DatasetCard

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
    versions = ", ".join(f"{k} {v}" for k, v in dsco["versions"].items())
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
        versions=versions,
        samples_file=samples_file,
        grid_classes=grid_classes,
        load_id=load_id,
        eval=eval_context,
        license=source.get("license"),
        citation=citation,
        reference=reference,
    )


def citation_of(existing) -> str | None:
    """The source citation block of a card we rendered (the first fenced block after "Cite the source dataset:")."""
    text = existing.text
    marker = "Cite the source dataset:"
    if marker not in text:
        return None
    block = text.split(marker, 1)[1].split("```")
    return block[1].strip() if len(block) > 2 else None


def configs_section(blocks: dict[str, dict], default: str, repo_id: str) -> str:
    """Markdown listing the configs (one per IPC) of a Hub repo, each with its size, result and load line.

    Args:
        blocks (`dict[str, dict]`): the `dsco:` block of each config, by config name (e.g. "ipc10").
        default (`str`): the default config (what `load_dataset(repo_id)` loads).
        repo_id (`str`): the dataset repo on the Hub.
    """
    lines = [
        "## Configurations",
        "",
        f'One config per IPC; `load_dataset("{repo_id}")` loads `{default}`.',
        "",
        "| config | IPC | method | images | accuracy (%) | evaluated commit | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, block in sorted(blocks.items(), key=lambda kv: (kv[0] != default, kv[0])):
        evaluation = block.get("eval") or {}
        result = _format_result(evaluation.get("result")) or "not evaluated"
        commit = f"`{evaluation['commit'][:8]}`" if evaluation.get("commit") else "-"
        counts = block.get("counts", {})
        lines.append(
            f"| `{name}`{' (default)' if name == default else ''} | {block.get('ipc', '?')} | "
            f"{block.get('method', '?')} | {counts.get('rows', '?')} | {result} | {commit} | "
            f'`load_dataset("{repo_id}", "{name}", split="train")` |'
        )
    return "\n".join(lines) + "\n"


EVAL_BEGIN = "<!-- dsco-hub eval -->"
EVAL_END = "<!-- /dsco-hub eval -->"


def labels_text(protocol: dict) -> str:
    """The students' labels as a card states them: "hard labels", or the soft labels of a named teacher.

    Args:
        protocol (`dict`): an `eval.protocol` block; one without `labels` (older cards) had hard labels.

    Returns:
        `str`: e.g. "soft labels of the teacher `fmnist-teacher` (ConvNet-3, config 1a2b3c4d5e6f, 88.10 % test
        accuracy), temperature 4".
    """
    if protocol.get("labels", "hard") != "soft":
        return "hard labels"
    teacher = protocol.get("teacher") or {}
    model = {"convnet3": "ConvNet-3", "resnet18": "ResNet-18"}.get(teacher.get("model"), teacher.get("model"))
    accuracy = teacher.get("test_accuracy")
    shown = f", {accuracy * 100:.2f} % test accuracy" if accuracy is not None else ""
    return (
        f"soft labels of the teacher `{teacher.get('name')}` ({model}, config {teacher.get('digest')}{shown}), "
        f"temperature {protocol.get('temperature', 4.0):g}"
    )


def eval_section(blocks: dict[str, dict]) -> str:
    """A marked Markdown section with the `eval` results of each config, for cards dsco-hub did not render.

    The section sits between `EVAL_BEGIN` and `EVAL_END`, so a later evaluation replaces it in place.
    """
    lines = [EVAL_BEGIN, "## dsco-hub evaluation", ""]
    lines += [
        "Students trained from scratch on this dataset (hard labels) and tested on the test set below; "
        "mean ± std of the test accuracy (%) over the runs. Written by `dsco-hub evaluate --update-card`; "
        f"protocol: {reference('docs/evaluation.md')}.",
        "",
        "| config | test set | student | epochs × runs | accuracy (%) | random real baseline (%) | evaluated commit |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, block in sorted(blocks.items()):
        evaluation = block.get("eval")
        if not evaluation:
            continue
        result = evaluation["result"]
        test = evaluation["test"]
        soft = evaluation["protocol"].get("labels") == "soft"
        student = f"{result['model']}, {labels_text(evaluation['protocol'])}" if soft else result["model"]
        lines.append(
            f"| `{name}` | `{test['dataset']}` [`{test['split']}`] | {student} | "
            f"{result['epochs']} × {result['runs']} | {_format_result(result)} | "
            f"{_format_result(evaluation.get('baseline_random')) or '-'} | `{(evaluation.get('commit') or '-')[:8]}` |"
        )
    lines.append(EVAL_END)
    return "\n".join(lines) + "\n"
