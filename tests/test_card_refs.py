"""Every reference a card makes resolves: the docs it cites exist (with their sections), and its repository link
comes from `[project.urls]` in the installed metadata, or is left out."""

from __future__ import annotations

import email.message
import importlib.metadata
import re
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

from dsco_hub import __version__, card
from dsco_hub.errors import HubError

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REPO = "https://github.com/acme/dsco-hub"

# "docs/method.md §5", "`docs/method.md` §5" or `reference("docs/method.md", 5)`: the file, and the section if any
DOC_REF = re.compile(r"docs/([A-Za-z0-9_.-]+\.md)`?(?:\s*§\s*(\d+)|[\"']\s*,\s*(\d+)\s*\))?")
# cross-references inside docs/: "`method.md` §5"
SIBLING_REF = re.compile(r"`([a-z]+\.md)`(?:\s*§\s*(\d+))?")


def _sections(doc: Path) -> set[int]:
    """The numbers of the `## N. Title` headings of a doc."""
    return {int(n) for n in re.findall(r"^## (\d+)\. ", doc.read_text(), flags=re.M)}


def _refs(paths, pattern=DOC_REF) -> list[tuple[str, str, int | None]]:
    refs = []
    for path in paths:
        for match in pattern.finditer(path.read_text()):
            section = next((g for g in match.groups()[1:] if g), None)
            refs.append((str(path.relative_to(ROOT)), match.group(1), int(section) if section else None))
    return refs


def _metadata(*urls: str):
    """Distribution metadata whose `[project.urls]` are `urls` ("Label, https://...")."""
    message = email.message.Message()
    message["Name"] = "dsco-hub"
    for url in urls:
        message["Project-URL"] = url
    return lambda name: message


def _dsco(method: str = "dsco", evaluated: bool = True, data_free: bool = False) -> dict:
    """A `dsco:` block as `pipeline.concentrate` writes it, for a 3-class source."""
    source = {
        "id": "data-free" if data_free else "tiny",
        "data_free": data_free,
        "is_hub": False,
        "config": None,
        "split": None if data_free else "train",
        "revision": None,
        "num_rows": 0 if data_free else 19,
        "num_classes": 3,
        "license": None,
    }
    block = {
        "method": method,
        "ipc": 2,
        "doping_ratio": 0.5 if method == "dsco" and not data_free else 0.0,
        "seed": 0,
        "settings": {"steps": 25} if method in ("dsco", "diffusion") else {},
        "counts": {"rows": 6, "real": 3, "synthetic": 3},
        "source": source,
        "versions": {"dsco_hub": __version__},
    }
    if evaluated:
        result = {"accuracy_mean": 70.0, "accuracy_std": 1.0, "model": "convnet3", "epochs": 2, "runs": 2}
        block["eval"] = {
            "protocol": {"model": "auto", "epochs": 2, "runs": 2, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
            "test": {"dataset": "tiny", "split": "test", "num_images": 12},
            "result": result,
            "baseline_random": result,
        }
    return block


def _dataset_cards() -> list[str]:
    """The dataset card of every method, evaluated or not, data-free, and the evaluation section of other cards."""
    blocks = [_dsco(m, evaluated=e) for m in ("random", "herding", "diffusion", "dsco") for e in (True, False)]
    blocks += [_dsco("dsco", evaluated=False, data_free=True)]
    texts = []
    for block in blocks:
        data = card.card_data(block, pretty_name="tiny concentrated")
        texts.append(str(card.render_dataset_card(data, block, None, "out", 3)))
    texts.append(card.eval_section({"default": _dsco()}))
    return texts


def _prior_card(**kwargs) -> str:
    """The prior's model card rendered as `prior.py` renders it (its variables do not matter here)."""
    template = str(card.template_path("prior_card.md"))
    return str(ModelCard.from_template(ModelCardData(), template_path=template, title="prior", **kwargs))


def test_rendered_cards_link_no_missing_repository():
    for text in [*_dataset_cards(), _prior_card(), _prior_card(reference=card.reference)]:
        assert "github.com/dsco-hub" not in text
    for path in ROOT.glob("cards/*.md"):
        assert "github.com/dsco-hub" not in path.read_text(), path


def test_every_docs_reference_names_an_existing_file_and_section():
    refs = _refs([*ROOT.glob("cards/*.md"), *ROOT.glob("dsco_hub/*.py"), ROOT / "README.md"])
    assert ("dsco_hub/card.py", "evaluation.md", None) in refs and any(s for _, _, s in refs)  # the scan sees them
    for where, name, section in refs:
        assert (DOCS / name).is_file(), f"{where} cites docs/{name}, which does not exist"
        if section is not None:
            assert section in _sections(DOCS / name), f"{where} cites docs/{name} §{section}, which does not exist"
    for method, section in card.METHOD_SECTIONS.items():
        assert section in _sections(DOCS / "method.md"), f"{method}: docs/method.md §{section} does not exist"
    for where, name, section in _refs(DOCS.glob("*.md"), SIBLING_REF):
        assert (DOCS / name).is_file() and (section is None or section in _sections(DOCS / name)), (where, name)


def test_docs_sections_are_numbered_in_order():
    for doc in DOCS.glob("*.md"):
        numbers = [int(n) for n in re.findall(r"^## (\d+)\. ", doc.read_text(), flags=re.M)]
        assert numbers == list(range(1, len(numbers) + 1)), doc.name
    text = (DOCS / "method.md").read_text()
    assert re.search(r"^## 5\. .*herding", text, flags=re.M | re.I)  # card.py and kernels.py cite §5 for it
    assert re.search(r"^## 3\. NOpt", text, flags=re.M) and re.search(r"^## 6\. Evaluation", text, flags=re.M)


def test_docs_ship_in_the_wheel_and_the_sdist():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]
    assert build["wheel"]["force-include"]["docs"] == "dsco_hub/docs"
    assert "docs" in build["sdist"]["include"]
    assert card.docs_path("docs/method.md").read_text() == (DOCS / "method.md").read_text()


def test_with_a_repository_url_the_card_links_the_docs_at_the_version_tag(monkeypatch):
    urls = ("Homepage, https://example.org/dsco", f"Repository, {REPO}/", "Issues, https://example.org/issues")
    monkeypatch.setattr(importlib.metadata, "metadata", _metadata(*urls))
    assert card.repository_url() == REPO
    text = _dataset_cards()[-2]  # data-free dsco, not evaluated
    assert f"[dsco-hub]({REPO})" in text
    evaluated = _dataset_cards()[6]  # dsco, evaluated
    for name in ("method.md", "format.md", "evaluation.md"):
        assert f"{REPO}/blob/v{__version__}/docs/{name})" in evaluated
    links = re.findall(re.escape(REPO) + r"/blob/v[^/]+/(docs/[^)]+)\)", "\n".join(_dataset_cards()))
    assert links and all((ROOT / link).is_file() for link in links)
    assert f"[dsco-hub {__version__}, docs/method.md §5]({REPO}/blob/v{__version__}/docs/method.md)" in (
        card.method_description("herding")
    )
    # the prior card's template takes the same reference (prior.py passes `reference=card.reference`)
    assert f"trained by [dsco-hub]({REPO})" in _prior_card(reference=card.reference)


def test_without_a_repository_url_there_is_no_repository_link(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "metadata", _metadata("Documentation, https://example.org/docs"))
    assert card.repository_url() is None
    assert card.reference() == "dsco-hub"
    assert card.reference("docs/method.md", 5) == (
        f"dsco-hub {__version__}, `docs/method.md` §5 (shipped in the package: `dsco_hub/docs/method.md`)"
    )
    for text in [*_dataset_cards(), _prior_card(), _prior_card(reference=card.reference)]:
        assert "/blob/" not in text and "](https://github.com" not in text
    evaluated = _dataset_cards()[6]
    assert f"dsco-hub {__version__}, `docs/evaluation.md`" in evaluated and "made by\ndsco-hub:" in evaluated


@pytest.mark.parametrize(
    "urls, expected",
    [
        ((), None),
        (("Homepage, https://example.org/dsco",), None),  # may be a docs site: no /blob/ links under it
        (("Homepage, https://github.com/acme/dsco-hub",), REPO),
        (("Source Code, https://gitlab.com/acme/dsco-hub", f"GitHub, {REPO}"), "https://gitlab.com/acme/dsco-hub"),
        (("repository, not-a-url", f"Code, {REPO}"), REPO),
    ],
)
def test_repository_url_reads_the_project_urls_labels(monkeypatch, urls, expected):
    monkeypatch.setattr(importlib.metadata, "metadata", _metadata(*urls))
    assert card.repository_url() == expected


def test_repository_url_without_an_installed_distribution(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "metadata", missing)
    assert card.repository_url() is None and card.reference() == "dsco-hub"


# ---------------------------------------------------------------------------------------------------------------------
# The helpers of card.py written out (mutation survivors)
# ---------------------------------------------------------------------------------------------------------------------


def test_size_category_buckets():
    cases = [
        (0, "n<1K"),
        (999, "n<1K"),
        (1_000, "1K<n<10K"),
        (9_999, "1K<n<10K"),
        (10_000, "10K<n<100K"),
        (100_000, "100K<n<1M"),
        (1_000_000, "1M<n<10M"),
        (10_000_000, "10M<n<100M"),
        (99_999_999, "10M<n<100M"),
        (100_000_000, "100M<n<1B"),
        (10**12, "100M<n<1B"),
        (10**12 + 1, "n>1T"),
    ]
    assert [card.size_category(n) for n, _ in cases] == [name for _, name in cases]


def test_result_names_and_method_descriptions(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "metadata", _metadata())
    assert card._format_result(None) is None and card._format_result({}) is None
    assert card._format_result({"accuracy_mean": 70.126, "accuracy_std": 1.0}) == "70.13 ± 1.00"
    assert card.display_name({"id": "alice/source", "is_hub": True}) == "alice/source"
    assert card.display_name({"id": "/data/tiny/", "is_hub": False}) == "tiny"
    assert card.display_name({"id": "alice/source"}) == "source"
    assert card.method_description("other") == "other"
    assert card.method_description("random") == (
        f"{card.METHOD_DESCRIPTIONS['random']} Details: {card.reference('docs/method.md', 5)}."
    )
    assert card.method_description("dsco").endswith(
        "`docs/method.md` §1 (shipped in the package: `dsco_hub/docs/method.md`)."
    )


def test_versions_name_the_installed_libraries(monkeypatch):
    real = importlib.metadata.version

    def version(name):
        if name == "accelerate":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert card.versions() == {"dsco_hub": __version__, **{n: real(n) for n in card.VERSIONED if n != "accelerate"}}


def test_card_data_header():
    block = _dsco("dsco")
    data = card.card_data(block, pretty_name="title").to_dict()
    assert data == {
        "license": "other",
        "task_categories": ["image-classification"],
        "source_datasets": ["original"],
        "size_categories": ["n<1K"],
        "tags": ["dsco-hub", "dataset-distillation", "dataset-concentration", "ipc-2", "dsco", "synthetic"],
        "pretty_name": "title",
        "dsco": block,
    }
    hub_block = _dsco("random")
    hub_block["source"] = {**hub_block["source"], "id": "alice/src", "is_hub": True, "license": "mit"}
    hub_block["counts"] = {"rows": 1000, "real": 1000, "synthetic": 0}
    data = card.card_data(hub_block, pretty_name="t").to_dict()
    assert (data["license"], data["source_datasets"], data["size_categories"]) == ("mit", ["alice/src"], ["1K<n<10K"])
    assert data["tags"][-1] == "random"


def test_config_rows_citation_and_blocks():
    evaluated = {**_dsco(), "eval": {**_dsco()["eval"], "commit": "0123456789abcdef"}}
    rows = card._config_rows({"ipc9": {}, "ipc2": evaluated, "ipc1": _dsco(evaluated=False)}, "ipc2")
    assert [r["name"] for r in rows] == ["ipc2", "ipc1", "ipc9"]  # the default first, then by name
    assert rows[0] == {"name": "ipc2", "ipc": "2", "method": "dsco", "rows": "6", "result": "70.00 ± 1.00",
                       "commit": "`01234567`"}  # fmt: skip
    assert rows[1]["result"] == "not evaluated" and rows[1]["commit"] == "-"
    assert rows[2] == {
        "name": "ipc9",
        "ipc": "?",
        "method": "?",
        "rows": "?",
        "result": "not evaluated",
        "commit": "-",
    }

    def text_card(text):
        return DatasetCard("---\nlicense: mit\n---\n" + text)

    assert card.citation_of(text_card("# no citation\n")) is None
    assert card.citation_of(text_card("Cite the source dataset:\n\n```\n@misc{x}\n```\nafter\n")) == "@misc{x}"
    assert card.citation_of(text_card("Cite the source dataset:\n\n```\n@misc{x}\n")) is None

    assert card.card_blocks(None) == {}
    assert card.card_blocks(DatasetCardData(dsco={})) == {}
    folder = DatasetCardData(dsco={"ipc": 2})
    blocks = card.card_blocks(folder)
    assert blocks == {"default": {"ipc": 2}}
    blocks["default"]["ipc"] = 3
    assert folder["dsco"] == {"ipc": 2}  # a copy
    merged = DatasetCardData(dsco={"config": "ipc2", "ipc": 2}, dsco_configs={"ipc5": {"config": "ipc5", "ipc": 5}})
    assert card.card_blocks(merged) == {"ipc2": {"config": "ipc2", "ipc": 2}, "ipc5": {"config": "ipc5", "ipc": 5}}

    def configs(*entries):
        return DatasetCardData(configs=[{"config_name": n, "data_files": f"{n}/*", **extra} for n, extra in entries])

    assert card.default_config(DatasetCardData()) is None
    assert card.default_config(configs(("a", {}))) == "a"
    assert card.default_config(configs(("a", {}), ("b", {}))) is None
    assert card.default_config(configs(("a", {}), ("b", {"default": True}))) == "b"
    assert card.default_config(configs(("a", {"default": True}), ("b", {"default": True}))) is None

    data = DatasetCardData(dsco_configs={"old": {}})
    card._place_blocks(data, {"b": {"ipc": 2}, "a": {"config": "x", "ipc": 1}}, "missing")  # then the first by name
    assert data["dsco"] == {"config": "a", "ipc": 1} and data["dsco_configs"] == {"b": {"config": "b", "ipc": 2}}
    card._place_blocks(data, {"b": {"ipc": 2}}, "b")
    assert data["dsco"] == {"config": "b", "ipc": 2} and "dsco_configs" not in data
    assert card._is_dsco_block(_dsco()) and not card._is_dsco_block(
        {k: v for k, v in _dsco().items() if k != "versions"}
    )


def test_source_terms_and_evaluated_config():
    source = {"license": "other", "license_name": "", "license_link": None, "extra_gated_fields": [], "tags": ["x"]}
    assert card.source_terms(source, False, "alice/src") == {"license": "other"}
    assert card.source_terms(source, None, "alice/src") == {"license": "other"}
    gated = card.source_terms(source, "manual", "alice/src")
    assert gated == {
        "license": "other",
        "gated": "manual",
        "extra_gated_prompt": "This dataset holds images of alice/src, a gated dataset: by requesting access you "
        "agree to the terms of alice/src (https://huggingface.co/datasets/alice/src).",
    }
    assert card.source_terms({"extra_gated_prompt": "Ours."}, "auto", "s")["extra_gated_prompt"] == "Ours."

    assert card.evaluated_config(None, None, "datasets/alice/x") == (None, {})
    two = DatasetCard(
        "---\nconfigs:\n- config_name: ipc2\n  data_files: ipc2/*\n- config_name: ipc5\n  data_files: ipc5/*\n"
        "dsco:\n  config: ipc2\n  ipc: 2\ndsco_configs:\n  ipc5:\n    config: ipc5\n    ipc: 5\n---\n"
    )
    with pytest.raises(HubError) as err:
        card.evaluated_config(two, None, "datasets/alice/x")
    assert (
        str(err.value)
        == "datasets/alice/x has several configs and no default (ipc2, ipc5); pick one with --set-config."
    )
    with pytest.raises(HubError) as err:
        card.evaluated_config(two, "ipc9", "datasets/alice/x")
    assert str(err.value) == "--set-config='ipc9' is not a config of datasets/alice/x; its configs: ipc2, ipc5."
    assert card.evaluated_config(two, "ipc5", "datasets/alice/x") == ("ipc5", {"config": "ipc5", "ipc": 5})
    one = DatasetCard("---\nconfigs:\n- config_name: only\n  data_files: data/*\ndsco:\n  ipc: 3\n---\n")
    assert card.evaluated_config(one, None, "datasets/alice/x") == ("only", {"ipc": 3})  # a folder's block, default
    bare = DatasetCard("---\ndsco:\n  ipc: 3\n---\n")
    assert card.evaluated_config(bare, None, "datasets/alice/x") == (None, {"ipc": 3})
    assert card.evaluated_config(DatasetCard("---\nlicense: mit\n---\n"), None, "datasets/alice/x") == (None, {})


def test_labels_text_and_eval_section(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "metadata", _metadata())
    assert card.labels_text({}) == card.labels_text({"labels": "hard"}) == "hard labels"
    teacher = {"name": "t", "model": "resnet18", "digest": "abc", "test_accuracy": 0.881}
    assert card.labels_text({"labels": "soft", "teacher": teacher, "temperature": 2.5}) == (
        "soft labels of the teacher `t` (ResNet-18, digest abc, 88.10 % test accuracy), temperature 2.5"
    )
    assert card.labels_text({"labels": "soft", "teacher": {"name": "u", "model": "mlp", "digest": "d"}}) == (
        "soft labels of the teacher `u` (mlp, digest d), temperature 4"
    )
    assert (
        card.labels_text({"labels": "soft"}) == "soft labels of the teacher `None` (None, digest None), temperature 4"
    )

    soft = _dsco()
    soft["eval"] = {**soft["eval"], "protocol": {"labels": "soft", "teacher": teacher, "temperature": 4.0},
                    "commit": "0123456789"}  # fmt: skip
    del soft["eval"]["baseline_random"]
    section = card.eval_section({"b": _dsco(), "a": _dsco(evaluated=False), "c": soft})
    assert section.startswith(card.EVAL_BEGIN + "\n## dsco-hub evaluation\n") and section.endswith(
        card.EVAL_END + "\n"
    )
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows == [
        "| `b` | `tiny` [`test`] | convnet3 | 2 × 2 | 70.00 ± 1.00 | 70.00 ± 1.00 | `-` |",
        "| `c` | `tiny` [`test`] | convnet3, soft labels of the teacher `t` (ResNet-18, digest abc, 88.10 % test "
        "accuracy), temperature 4 | 2 × 2 | 70.00 ± 1.00 | - | `01234567` |",
    ]
    assert "protocol: dsco-hub " in section and "`docs/evaluation.md`" in section


def test_cards_refuse_blocks_dsco_hub_did_not_write():
    from dsco_hub.errors import OutputError, SourceError

    foreign = DatasetCard("---\npretty_name: theirs\ndsco:\n  ipc: 2\n---\n# theirs\n")
    with pytest.raises(SourceError) as err:
        card.with_evaluation(foreign, {}, "x")
    assert str(err.value) == (
        "existing='theirs' is not a card dsco-hub wrote (no dsco: block with a source); evaluate without "
        "--update-card, or pass the card of a set made by `dsco-hub concentrate`."
    )
    with pytest.raises(SourceError):
        card.with_evaluation(DatasetCard("---\ndsco: 3\n---\n"), {}, "x")
    with pytest.raises(OutputError) as err:
        card.hub_card(DatasetCard("---\npretty_name: p\ndsco:\n  method: random\n---\n"), None, "ipc2", "a/b", {})
    assert str(err.value) == (
        "local='p' is not the card of a set written by dsco-hub (no dsco: block with an ipc); push a folder written "
        "by `dsco-hub concentrate`."
    )
    with pytest.raises(OutputError):
        card.hub_card(DatasetCard("---\ndsco: 3\n---\n"), None, "ipc2", "a/b", {})


def test_a_foreign_card_keeps_its_text_and_gets_one_eval_section(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "metadata", _metadata())
    block = {**_dsco()["eval"], "commit": "abcdef0123"}
    text, name = card.with_hub_evaluation(None, None, block, "datasets/alice/x")
    assert name == "default" and text.startswith("---\ndsco:\n  config: default\n  eval:\n")
    assert text.endswith("\n---\n\n\n" + card.eval_section({"default": {"eval": block}}))
    theirs = DatasetCard("---\nlicense: mit\n---\n# Theirs\n\nWords.\n")
    first, name = card.with_hub_evaluation(theirs, "cfg", block, "datasets/alice/x")
    assert name == "cfg" and "# Theirs\n\nWords.\n\n" + card.EVAL_BEGIN in first and "license: mit" in first
    again, _ = card.with_hub_evaluation(DatasetCard(first + "after\n"), "cfg", {**block, "commit": "fedcba98"}, "a/x")
    assert again.count(card.EVAL_BEGIN) == 1 and "`fedcba98`" in again and "`abcdef01`" not in again
    assert again.endswith(card.EVAL_END + "\nafter\n")  # replaced in place, the text after it kept


def test_prior_card_records_its_training(tmp_path):
    import os
    import platform
    import types

    import torch

    from dsco_hub.config import PriorTrainConfig

    cfg = PriorTrainConfig(
        out=str(tmp_path / "prior"), max_steps=7, batch_size=5, lr=0.003, warmup_steps=2, ema_power=0.5,
        ema_max_decay=0.99, label_dropout=0.2, num_train_timesteps=50, beta_schedule="linear", mixed_precision="no",
        sample_steps=9, sample_guidance=1.5,
    )  # fmt: skip
    source = types.SimpleNamespace(
        license="mit", source_id="alice/src", class_names=["cat", "dog"], split="train", labels=[0, 1, 1],
        citation="@misc{src}",
    )  # fmt: skip
    unet = torch.nn.Linear(999, 1000)  # 1,000,000 parameters
    made = card.prior_card(cfg, source, unet, 2, 3, 16, 3725.4, 0.25, "dsco-hub prior train x", 4, [3, 5])
    assert made.data.to_dict() == {
        "library_name": "diffusers",
        "license": "mit",
        "tags": ["dsco-hub", "diffusion", "class-conditional", "unconditional-image-generation"],
        "pipeline_tag": "unconditional-image-generation",
        "datasets": ["alice/src"],
    }
    text = str(made)
    hardware = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"{os.cpu_count()} CPU cores ({platform.machine()})"
    )
    for expected in [
        "# Class-conditional diffusion prior for alice/src",
        "(`diffusers.UNet2DModel`, 1.00 M parameters",
        "![samples](samples.png)",
        "*Samples: 4 per class (rows), DDIM 9 steps (x0 not clipped), classifier-free guidance 1.5.*",
        "- 0: cat\n- 1: dog",
        "null class is label 2 (`num_class_embeds = 3`)",
        "- Data: `alice/src` (split `train`, 3 images, 16x16 px, 3 channel(s)).",
        "- Command: `dsco-hub prior train x` (the same run extended: it first finished at 3, 5 steps",
        "- Steps: 7 x batch 5; AdamW, peak learning rate 0.003 (warm-up 2 steps, cosine decay);",
        "(warm-up power 0.5, max decay 0.99); label dropout 0.2;",
        "50 timesteps, `linear` betas, epsilon prediction; mixed precision `no`.",
        "(EMA of the batch loss): 0.2500.",
        f"- Wall time: 1 h 2 min (3725 s) on {hardware}.",
        f'load_prior("{tmp_path / "prior"}")',
        "derived from `alice/src` (licence: mit).",
        "```\n@misc{src}\n```",
    ]:
        assert expected in text, expected
    for source_id in ("local-folder", "a b/c"):  # not a Hub id: no `datasets`
        source.source_id = source_id
        made = card.prior_card(cfg, source, unet, 2, 3, 16, 59, None, "c", 4, [])
        assert made.data.to_dict().get("datasets") is None
        assert "(EMA of the batch loss): n/a." in str(made) and "extended" not in str(made)


def test_teacher_card_shows_its_config():
    import platform
    import types

    config = {
        "source_name": "tiny", "model": "resnet18", "class_names": ["a", "b", "c"], "image_size": [16, 16],
        "test_accuracy": 0.8812, "command": "dsco-hub teacher train tiny", "dsco_hub_version": "9.9",
        "split": "train", "channels": 1, "num_images": 19, "epochs": 2, "lr": 0.05, "momentum": 0.8,
        "weight_decay": 0.001, "batch_size": 7, "seed": 3, "test_images": 12, "device": "cpu",
    }  # fmt: skip
    train = types.SimpleNamespace(license="mit", source_id="alice/tiny")
    made = card.teacher_card(config, train, 2_500_000)
    assert made.data.to_dict() == {
        "library_name": "pytorch",
        "license": "mit",
        "tags": ["dsco-hub", "image-classification", "dataset-distillation-teacher"],
        "pipeline_tag": "image-classification",
        "datasets": ["alice/tiny"],
        "metrics": ["accuracy"],
    }
    text = str(made)
    for expected in [
        "# Teacher network for tiny",
        "A ResNet-18 (2.50 M parameters, 3 classes, 1 x 16 x 16 images",
        "[dsco-hub](https://pypi.org/project/dsco-hub/) 9.9",
        "| source | `tiny` [`train`] |",
        "| training images | 19 |",
        "| epochs | 2 |",
        "learning rate 0.05 (divided by 10 at half of the epochs), momentum 0.8, weight decay 0.001 |",
        "| batch size | 7 |",
        "| seed | 3 |",
        f"| device | cpu ({platform.machine()}) |",
        "**88.12 %** on the 12 images",
        "```bash\ndsco-hub teacher train tiny\n```",
    ]:
        assert expected in text, expected
    train.source_id = "tiny"
    made = card.teacher_card({**config, "command": None, "model": "convnet3"}, train, 1)
    assert "```bash\n(library call)\n```" in str(made) and "A ConvNet-3 (" in str(made)
    assert made.data.to_dict().get("datasets") is None


def test_settings_source_and_protocol_blocks(tmp_path):
    import types

    import torch

    from dsco_hub.config import ConcentrateConfig, EvalConfig, SourceConfig
    from dsco_hub.models import SHIPPED_PRIOR, prior_digest, shipped_prior_path

    herding = ConcentrateConfig(method="herding", kernel="linear", feature_seed=4, herding_pool=9)
    assert card.settings_block(herding, None) == {"kernel": "linear", "feature_seed": 4, "herding_pool": 9}
    assert card.settings_block(ConcentrateConfig(method="random"), None) == {}
    prior = types.SimpleNamespace(
        scheduler=types.SimpleNamespace(config={"clip_sample": True}), image_shape=(1, 16, 16)
    )
    (tmp_path / "model").mkdir()
    diffusion = ConcentrateConfig(
        method="diffusion", model=str(tmp_path / "model"), model_revision="r1", class_map="alice/map", steps=7,
        guidance_scale=1.5, eta=0.5, sample_batch_size=3,
    )  # fmt: skip
    assert card.settings_block(diffusion, prior, {"model_digest": "0123456789ab"}) == {
        "model": "model",
        "model_digest": "0123456789ab",  # as the run recorded it (`models.model_identity`)
        "model_revision": "r1",
        "class_map": "alice/map",
        "scheduler": "ddim",
        "steps": 7,
        "guidance_scale": 1.5,
        "eta": 0.5,
        "clip_sample": True,
        "sample_batch_size": 3,
        "resolution": 16,
    }
    prior.scheduler.config = {}
    dsco = card.settings_block(ConcentrateConfig(method="dsco", ipc=4, data_free=True, oversample=2), prior)
    assert (dsco["model"], dsco["clip_sample"], dsco["data_free"]) == (
        f"dsco-hub shipped prior ({SHIPPED_PRIOR}@{prior_digest(shipped_prior_path())})",
        False,
        True,
    )
    assert (dsco["pool_size"], dsco["pool_guidance_scale"], dsco["oversample"]) == (256, 2.0, 2)
    assert dsco["doping_select"] == "herding" and "doping_ratio" not in dsco and "nopt_lr" in dsco
    shipped = card.settings_block(ConcentrateConfig(method="diffusion"), prior)  # the same keys as the dsco block's
    assert list(dsco)[-10:] == list(shipped)  # NOpt's and doping's, then the sampler's
    real = card.settings_block(ConcentrateConfig(method="dsco", ipc=4, doping_ratio="auto"), prior)
    assert (real["pool_size"], real["pool_guidance_scale"], real["doping_ratio"]) == (None, None, "auto")

    assert card.source_block(ConcentrateConfig(data_free=True), None, ["a", "b"]) == {
        "id": "data-free", "data_free": True, "is_hub": False, "config": None, "split": None, "revision": None,
        "num_rows": 0, "num_classes": 2, "license": None,
    }  # fmt: skip
    loaded = types.SimpleNamespace(
        source_id="alice/src", split="train", revision="abc", labels=[0, 1, 2, 2], num_classes=3, license="mit",
        extra={},
    )  # fmt: skip
    hub_cfg = ConcentrateConfig(source=SourceConfig(source="alice/src", config_name="small"))
    assert card.source_block(hub_cfg, loaded, ["a", "b", "c"]) == {
        "id": "alice/src", "data_free": False, "is_hub": True, "config": "small", "split": "train",
        "revision": "abc", "num_rows": 4, "num_classes": 3, "license": "mit",
    }  # fmt: skip
    (tmp_path / "data" / "src").mkdir(parents=True)
    local_cfg = ConcentrateConfig(source=SourceConfig(source=str(tmp_path / "data" / "src")))
    local = card.source_block(local_cfg, loaded, ["a", "b", "c"], tmp_path / "out")
    assert (local["id"], local["is_hub"], local["path"]) == ("src", False, "../data/src")
    loaded.extra = {"streaming": {"num_examples": None, "rows_read": 9, "rows_kept": 6, "per_class": 2,
                                  "shuffle_buffer": 100, "other": 1}}  # fmt: skip
    streamed = card.source_block(hub_cfg, loaded, ["a", "b", "c"])
    assert streamed["num_rows"] is None and "path" not in streamed
    assert streamed["streaming"] == {"rows_read": 9, "rows_kept": 6, "per_class": 2, "shuffle_buffer": 100}

    eval_cfg = EvalConfig(model="convnet3", epochs=3, runs=2, lr=0.02, momentum=0.8, weight_decay=0.001,
                          batch_size=16, augment=False, seed=5)  # fmt: skip
    protocol = card.protocol_block(eval_cfg, 3, torch.device("cpu"))
    assert protocol == {
        "model": "convnet3", "epochs": 3, "runs": 2, "lr": 0.02, "momentum": 0.8, "weight_decay": 0.001,
        "batch_size": 16, "augment": False, "flip": True, "seed": 5, "labels": "hard", "device": "cpu",
        "precision": "float32",
    }  # fmt: skip
    assert card.protocol_block(eval_cfg, 1, torch.device("cpu"))["flip"] is False
    assert card.protocol_block(EvalConfig(flip=False), 3, torch.device("cpu"))["flip"] is False
    teacher = types.SimpleNamespace(describe=lambda: {"name": "t"})
    soft = card.protocol_block(EvalConfig(labels="soft", temperature=2.0), 1, torch.device("cpu"), teacher)
    assert (soft["teacher"], soft["temperature"], list(soft)[-2:]) == ({"name": "t"}, 2.0, ["device", "precision"])


def test_with_evaluation_rerenders_a_folder_card_and_keeps_what_it_carried(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "metadata", _metadata())
    block = _dsco(evaluated=False)
    data = card.card_data(block, pretty_name="old title")
    data["dataset_info"] = {"features": [{"name": "label", "dtype": "int64"}]}
    data["configs"] = [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    existing = DatasetCard(str(card.render_dataset_card(data, block, "@misc{source}", "out", 3)))
    evaluation = _dsco()["eval"]
    updated = card.with_evaluation(existing, evaluation, "my-set")
    assert updated.data["dsco"] == {**block, "eval": evaluation}
    assert updated.data["pretty_name"] == "tiny concentrated (dsco, IPC 2)"
    assert (updated.data["dataset_info"], updated.data["configs"]) == (data["dataset_info"], data["configs"])
    text = str(updated)
    assert "```\n@misc{source}\n```" in text and "70.00 ± 1.00" in text and 'load_dataset("my-set"' in text


def test_only_the_first_eval_section_is_replaced():
    old = card.eval_section({"a": {**_dsco(), "eval": {**_dsco()["eval"], "commit": "aaaaaaaa11"}}})
    other = old.replace("aaaaaaaa", "bbbbbbbb")
    theirs = DatasetCard("---\nlicense: mit\n---\n# Theirs\n\n" + old + "\nmiddle\n\n" + other)
    block = {**_dsco()["eval"], "commit": "cccccccc22"}
    text, _ = card.with_hub_evaluation(theirs, "a", block, "datasets/alice/x")
    assert text.count(card.EVAL_BEGIN) == 2 and "`aaaaaaaa`" not in text
    assert text.index("`cccccccc`") < text.index("middle") < text.index("`bbbbbbbb`")


def test_hub_card_keeps_the_remote_cards_tags_and_needs_no_remote(monkeypatch):
    import datasets
    import yaml

    monkeypatch.setattr(importlib.metadata, "metadata", _metadata())
    rows = datasets.Dataset.from_dict({"label": [0, 1]})
    split = datasets.SplitInfo(name="train", num_bytes=10, num_examples=2)
    local = card.dataset_card(_dsco(evaluated=False), None, "set", 3, rows, split, 100)
    alone = yaml.safe_load(card.hub_card(local, None, "ipc2", "alice/x", {}).split("---")[1])
    assert alone["dsco"]["config"] == "ipc2" and "custom" not in alone["tags"] and "ipc-2" in alone["tags"]
    remote = DatasetCard("---\nlicense: mit\ntags:\n- custom\n---\n# theirs\n")
    merged = yaml.safe_load(card.hub_card(local, remote, "ipc2", "alice/x", {"license": "cc-by-4.0"}).split("---")[1])
    assert {"custom", "ipc-2", "dsco", "synthetic"} <= set(merged["tags"]) and merged["license"] == "cc-by-4.0"


def test_the_cards_protocol_line_and_dataset_info(monkeypatch):
    import datasets

    monkeypatch.setattr(importlib.metadata, "metadata", _metadata())

    def protocol_line(**protocol):
        block = _dsco()
        block["eval"] = {**block["eval"], "protocol": {**block["eval"]["protocol"], **protocol}}
        text = str(card.render_dataset_card(card.card_data(block, "t"), block, None, "out", 3))
        return " ".join(text.split("Protocol: ")[1].split(" The protocol in full")[0].split())

    assert protocol_line() == (
        "train a ConvNet-3 from scratch on the set with hard labels (2 epochs, SGD with momentum 0.9, learning rate "
        "0.01 divided by 10 at half of the epochs, weight decay 0.0005, batch 256, DSA-style crop, scale, rotate and "
        "cutout), test on `tiny` [`test`] (12 images); 2 runs, mean ± std of the test accuracy (%)."
    )
    assert "batch 64, DSA-style crop, scale, rotate and cutout, flip)" in protocol_line(flip=True, batch_size=64)
    assert "weight decay 0.001, batch 256, no augmentation)" in protocol_line(augment=False, weight_decay=0.001)
    older = {k: v for k, v in _dsco()["eval"]["protocol"].items() if k not in ("lr", "momentum", "weight_decay")}
    block = _dsco()
    block["eval"] = {**block["eval"], "protocol": older, "result": {**block["eval"]["result"], "model": "resnet18"}}
    text = " ".join(str(card.render_dataset_card(card.card_data(block, "t"), block, None, "out", 3)).split())
    assert "train a ResNet-18 from scratch" in text  # an older card without the optimizer: EvalConfig's defaults
    defaults = "momentum 0.9, learning rate 0.01 divided by 10 at half of the epochs, weight decay 0.0005, batch 256"
    assert defaults in text
    assert "- Settings: `steps=25`" in text
    rows = datasets.Dataset.from_dict({"label": [0, 1]})
    split = datasets.SplitInfo(name="train", num_bytes=10, num_examples=2)
    made = card.dataset_card(_dsco(evaluated=False), None, "set", 3, rows, split, 100).data.to_dict()
    info = made["dataset_info"]
    assert (info["download_size"], info["dataset_size"], info["splits"]) == (
        100,
        10,
        [{"name": "train", "num_bytes": 10, "num_examples": 2}],
    )
    assert made["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]


def test_the_cards_source_line_volume_and_configurations_table(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "metadata", _metadata("Repository, http://example.org/r/"))
    assert card.repository_url() == "http://example.org/r"  # http is a URL too
    block = _dsco(evaluated=False)
    block["source"] = {**block["source"], "revision": "abc123"}
    block["config"] = "b"
    other = {**_dsco(evaluated=False), "ipc": 5, "counts": {"rows": 15, "real": 8, "synthetic": 7}}
    data = card.card_data(block, "t")
    text = str(card.render_dataset_card(data, block, None, "alice/x", 3, configs={"a": other, "b": block}))
    assert "Source dataset: `tiny` (revision `abc123`), split `train`." in text
    assert "6 images in all (31.6 % of the 19 images" in text
    table = [line for line in text.splitlines() if line.startswith("| `")]
    assert table == [
        '| `b` (default) | 2 | dsco | 6 | not evaluated | - | `load_dataset("alice/x", "b", split="train")` |',
        '| `a` | 5 | dsco | 15 | not evaluated | - | `load_dataset("alice/x", "a", split="train")` |',
    ]
    alone = str(card.render_dataset_card(data, block, None, "alice/x", 3, configs={"b": block}))
    assert "## Configurations" not in alone
