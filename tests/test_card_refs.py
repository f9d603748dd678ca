"""Every reference a card makes resolves: the docs it cites exist (with their sections), and its repository link
comes from `[project.urls]` in the installed metadata, or is left out."""

from __future__ import annotations

import email.message
import importlib.metadata
import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, ModelCardData

from dsco_hub import __version__, card

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
