"""Evaluating a set: open it, find its test split, run the protocol on it and on a random real baseline.

`evaluate.py` is the training protocol (students, augmentation, runs); this module wires it to sets and sources:

- `evaluate_set` / `evaluate_report` (`dsco-hub evaluate`): a set is a folder written by dsco-hub, a Hub repo
  `USER/NAME[@REVISION]` (resolved to a commit, whose card and data are read at that commit) or any
  image-classification dataset; its test split is `--test-dataset`, else the source its card records; with
  `--against` a second set is trained under the same protocol and seeds; with `--update-card` the results go
  into the set's card (a folder's README.md, or a Hub commit / pull request).
- `eval_block` (also what `concentrate` calls on the set it has just built, viewed through `as_source`): the
  protocol on the set and on a random real subset of the same IPC, as the card's `eval` block.
- `eval_test_config` and `load_test`: where a run's test split comes from, mapped onto the set's classes.

Under `torchrun` / `accelerate launch` both commands spread each set's runs over the processes (run `r` on process
`r % W`, each on its own device) and gather the accuracies; only the main process prints, writes and pushes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from huggingface_hub import DatasetCard

from dsco_hub import card, distributed, doping, hub, results, teacher, writer
from dsco_hub.config import ConcentrateConfig, EvalConfig, HubConfig, SourceConfig, is_commit_sha
from dsco_hub.data import SourceData, decode_images, fingerprint, load_source, load_test_source, pin_revision
from dsco_hub.errors import ConfigError, SourceError, SourceNotFoundError
from dsco_hub.evaluate import EvalResult, evaluate_images, runs_of_process
from dsco_hub.files import shown_name
from dsco_hub.ui import progress_bar


def evaluate_set(
    target: str,
    test: SourceConfig,
    cfg: EvalConfig,
    update_card: bool = False,
    hub_cfg: HubConfig | None = None,
    set_config: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    report: Callable[[str], Any] | None = None,
) -> dict:
    """`dsco-hub evaluate`: run the protocol on a set (a folder, a Hub repo, or any image-classification dataset).

    A Hub set `USER/NAME[@REVISION]` is first resolved to a commit sha; its card and data are read at that commit,
    and the sha is recorded in the results (`commit`), so an evaluation names exactly what it measured.

    Args:
        target (`str`): the set: a local folder written by dsco-hub, `USER/NAME[@REVISION]` on the Hub (a set
            dsco-hub pushed, or any dataset with an image and a label column), or a local `datasets` source.
        test (`SourceConfig`): the test source; `test.source=None` uses the source recorded in the set's card (at
            its recorded config and revision, so `test.config_name` and `test.revision` must be None then). Its
            `test_split` (default "test", else "validation") is evaluated; its `split` (default "train") feeds the
            random-real baseline.
        cfg (`EvalConfig`): protocol settings (`cfg.baseline` toggles the baseline).
        update_card (`bool`, *optional*, defaults to False): write the results into the set's card (a folder's
            README.md, or a commit / pull request on the Hub).
        hub_cfg (`HubConfig`, *optional*): token, endpoint, `create_pr` and `commit_message` for a Hub set.
        set_config (`str`, *optional*): the config of the set to evaluate, on the Hub or in a downloaded copy
            (default: its card's default config).
        image_column (`str`, *optional*): the set's image column (default: the column of feature `Image`).
        label_column (`str`, *optional*): the set's label column (default: the `ClassLabel` column).
        report (`Callable[[str], Any]`, *optional*): called with one-line messages (evaluated commit, card URL).

    Returns:
        `dict`: the `eval` block (protocol, test, result, baseline_random; `commit` for a Hub set).

    Raises:
        ConfigError: invalid settings, or `test.config_name` / `test.revision` without `test.source`.
        SourceError: the set or the test source cannot be used (no image or label column, missing split), or their
            classes differ (lists the difference).
        HubError: the repo, revision or config does not exist, or (with `update_card`) no token, 401/403.
    """
    columns = {"set_config": set_config, "image_column": image_column, "label_column": label_column}
    return _evaluate_command(target, test, cfg, None, None, update_card, hub_cfg, report, **columns)[0]


def evaluate_report(
    target: str,
    test: SourceConfig,
    cfg: EvalConfig,
    gates: results.Gates | None = None,
    against: str | None = None,
    update_card: bool = False,
    hub_cfg: HubConfig | None = None,
    set_config: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    report: Callable[[str], Any] | None = None,
) -> dict:
    """`dsco-hub evaluate --json`: evaluate a set (and with `against` a second one) and return the results document.

    Both sets are trained under the same protocol and seeds and tested on the same test split (the first set's),
    so their difference measures the sets; the random-real baseline is trained once, for the first set.

    Args:
        target (`str`): the set, as in `evaluate_set`.
        test (`SourceConfig`): the test source, as in `evaluate_set`.
        cfg (`EvalConfig`): the protocol.
        gates (`results.Gates`, *optional*): thresholds; their outcome is recorded (the caller sets the exit code).
        against (`str`, *optional*): the set to compare with: `@REVISION` (the same Hub repo at another revision),
            `USER/NAME[@REVISION]` or a folder.
        update_card, hub_cfg, set_config, image_column, label_column, report: as in `evaluate_set` (`set_config`
            applies to both sets; `update_card` only without `against`).

    Returns:
        `dict`: the document of `results.document` (validates against `results.schema()`).

    Raises:
        ConfigError: `against` is `@REVISION` for a set that is not on the Hub, or given with `update_card`; a
            gate is out of range.
        SourceError, HubError: as `evaluate_set`.
    """
    columns = {"set_config": set_config, "image_column": image_column, "label_column": label_column}
    return _evaluate_command(target, test, cfg, gates, against, update_card, hub_cfg, report, **columns)[1]


def results_table(block: dict) -> list[tuple[str, str, str]]:
    """Rows `(set, images, accuracy)` of an `eval` block for printing: the set, then the random-real baseline.

    Returns:
        `list[tuple[str, str, str]]`: e.g. `("this set", "30", "71.23 ± 0.45")` (accuracies in percent).
    """
    rows = []
    for key, name in (("result", "this set"), ("baseline_random", "random real (same IPC)")):
        if block.get(key):
            r = block[key]
            rows.append((name, str(r["num_train_images"]), f"{r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f}"))
    return rows


def _evaluate_command(
    target: str,
    test: SourceConfig,
    cfg: EvalConfig,
    gates: results.Gates | None,
    against: str | None,
    update_card: bool,
    hub_cfg: HubConfig | None,
    report: Callable[[str], Any] | None,
    set_config: str | None,
    image_column: str | None,
    label_column: str | None,
) -> tuple[dict, dict]:
    """`dsco-hub evaluate`: the `eval` block of `target` and the results document (see `evaluate_report`)."""
    cfg.validate()
    gates = gates or results.Gates()
    gates.validate(cfg.baseline)
    hub_cfg = hub_cfg or HubConfig()
    for option, value in (("--config", test.config_name), ("--revision", test.revision)):
        if test.source is None and value is not None:
            raise ConfigError(
                f"{option}={value!r} applies to --test-dataset; without it the test data is the source recorded in "
                "the set's card, at its recorded config and commit: add --test-dataset SOURCE, or drop it."
            )
    if against is not None and update_card:
        raise ConfigError(f"--against={against!r} compares two sets; the card update takes one: drop one of them.")
    opened = _open_target(target, hub_cfg, set_config, image_column, label_column, update_card, report)
    other = None
    if against is not None:
        if against.startswith("@"):
            if opened.published is None:
                raise ConfigError(
                    f"--against={against!r} names a revision of {target}, which is not a Hub set; "
                    "pass another set (USER/NAME[@REVISION] or a folder)."
                )
            against = f"{opened.published.repo_id}{against}"
        other = _open_target(against, hub_cfg, set_config, image_column, label_column, False, report, "--against")
    test_cfg = _default_test(opened, test)
    state = distributed.process_state()
    with hub.hub_session(hub_cfg), progress_bar(disable=not state.is_main) as bar:
        test_cfg = pin_test(test_cfg, state)  # one commit for every load of a Hub test source
        block, train = _evaluate_opened(opened, test_cfg, cfg, bar)
        compared = None
        if other is not None:  # same protocol, seeds and test split; the baseline is the first set's
            same = dataclasses.replace(cfg, baseline=False)
            other_block, other_train = _evaluate_opened(other, test_cfg, same, bar, seed=opened.dsco.get("seed", 0))
            compared = (_set_info(other, other_train), other_block)
    doc = results.document(_set_info(opened, train), block, gates, compared)
    if not state.is_main:  # another process of a launch: its share of the runs is in the main process's results
        return block, doc
    if update_card and opened.published is not None:
        url, pr_url = hub.update_card_eval(opened.published, block, hub_cfg)
        if report is not None:
            report(f"card pull request: {pr_url}" if pr_url else f"card updated: {url}")
    elif update_card:
        folder = Path(target).expanduser()
        writer.write_card(folder, card.with_evaluation(opened.existing, block, folder.resolve().name), "TARGET")
    return block, doc


# Opening a set and its test source, before any heavy work


@dataclass
class _OpenedSet:
    """A set to evaluate, resolved: how to load it, its card's `dsco:` block, and the Hub commit it is read at."""

    target: str
    set_cfg: SourceConfig
    dsco: dict
    existing: DatasetCard | None = None
    published: hub.PublishedSet | None = None


def _open_target(
    target: str,
    hub_cfg: HubConfig,
    set_config: str | None,
    image_column: str | None,
    label_column: str | None,
    update_card: bool,
    report: Callable[[str], Any] | None,
    option: str = "TARGET",
) -> _OpenedSet:
    """Resolve a set (a Hub repo to a commit sha, or a folder) and read its card, before any heavy work; `option`
    names the argument in a message ("TARGET", or "--against" for the second set)."""
    if not target.strip():
        raise SourceError(f"{option}={target!r} is empty; pass a set folder or a Hub set USER/NAME[@REVISION].")
    if hub.is_hub_ref(target):
        published = hub.open_set(target, hub_cfg, set_config)
        set_cfg = SourceConfig(
            source=published.repo_id,
            config_name=published.config_name,
            revision=published.sha,
            image_column=image_column,
            label_column=label_column,
        )
        if update_card:
            hub.resolve_token(hub_cfg)  # before any heavy work
        if report is not None:
            config = f" (config {published.config_name})" if published.config_name else ""
            report(f"evaluating datasets/{published.repo_id}{config} at commit {published.sha}")
        return _OpenedSet(target, set_cfg, dict(published.dsco), published.card, published)
    folder = Path(target).expanduser()
    if not folder.exists():
        raise SourceNotFoundError(
            f"{option}={target!r} does not exist; pass a set folder or a Hub set USER/NAME[@REVISION]."
        )
    existing = DatasetCard.load(folder / "README.md") if (folder / "README.md").exists() else None
    if set_config is not None and (existing is None or not card.declared_configs(existing.data)):
        raise SourceError(
            f"--set-config={set_config!r}: {option}={target!r} is a folder whose card declares no configs; pass the "
            "folder without --set-config."
        )
    # a folder written by `concentrate` has one config; a download of a Hub set may have several (--set-config)
    _, dsco = card.evaluated_config(existing, set_config, target)
    set_cfg = SourceConfig(
        source=target, config_name=set_config, split="train", image_column=image_column, label_column=label_column
    )
    if update_card and not dsco:
        raise SourceError(
            f"--update-card: {target} has no dsco-hub card (README.md with a dsco: block); "
            "evaluate without --update-card."
        )
    return _OpenedSet(target, set_cfg, dsco, existing)


def _default_test(opened: _OpenedSet, test: SourceConfig) -> SourceConfig:
    """The test source: `test` when it names one, else the source recorded in the set's card.

    Raises:
        SourceError: a Hub set whose recorded source can be reached neither on the Hub nor here.
    """
    if test.source is not None:
        return test
    recorded = dict(opened.dsco.get("source", {}))
    if recorded.get("path") and opened.published is None:  # a local source, recorded relative to the set's folder
        recorded["id"] = str(Path(opened.target).expanduser() / recorded["path"])
    if opened.published is not None and not _reachable(recorded):
        where = f"was concentrated from {recorded['id']!r}, which" if recorded else "records no source: it"
        raise SourceError(
            f"--test-dataset is needed: {opened.target} {where} is neither on the Hub nor here; "
            "pass --test-dataset SOURCE (a Hub id or a folder) with a test split of the same classes."
        )
    if not recorded or "embedded" in recorded.get("id", ""):
        return SourceConfig(source=None, split=recorded.get("split", "train"), test_split=test.test_split)
    return SourceConfig(
        source=recorded["id"],
        config_name=recorded.get("config"),
        revision=recorded.get("revision") if recorded.get("is_hub") else None,  # a folder is read as it is
        split=recorded.get("split", "train"),
        test_split=test.test_split,
    )


def _evaluate_opened(
    opened: _OpenedSet, test_cfg: SourceConfig, cfg: EvalConfig, bar, seed: int | None = None
) -> tuple[dict, SourceData]:
    """Load an opened set, its test split and (with `cfg.baseline`) the baseline's source, and run the protocol.

    Returns:
        `tuple[dict, SourceData]`: the `eval` block (with `commit` for a Hub set) and the loaded set.

    Raises:
        SourceError: the set has fewer than 2 classes, or the test source other classes.
    """
    task = bar.add_task("load", total=1, info=opened.target)
    train = load_source(opened.set_cfg)
    if train.num_classes < 2:
        raise SourceError(
            f"{opened.target} has {train.num_classes} class; a classification set needs at least 2 classes "
            "(check --label-column)."
        )
    test_source = load_test(test_cfg, train.class_names, opened.target)
    baseline_source = load_source(test_cfg, class_names=train.class_names) if cfg.baseline else None
    bar.advance(task)
    ipc = int(round(len(train.labels) / train.num_classes))
    if baseline_source is not None:
        doping.check_ipc(baseline_source, ipc)
    seed = opened.dsco.get("seed", 0) if seed is None else seed
    block = eval_block(train, test_source, baseline_source, ipc, seed, cfg, bar, spread=True)
    if opened.published is not None:
        block["commit"] = opened.published.sha
    return block, train


def _set_info(opened: _OpenedSet, train: SourceData) -> dict:
    """The `set` of a results document: what was evaluated, at which commit (no local path: a folder's name)."""
    published = opened.published
    ipc = opened.dsco.get("ipc") or int(round(len(train.labels) / train.num_classes))
    return {
        "target": opened.target if published is not None else Path(opened.target).expanduser().resolve().name,
        "repo_id": published.repo_id if published is not None else None,
        "revision": published.revision if published is not None else None,
        "commit": published.sha if published is not None else None,
        "config": published.config_name if published is not None else None,
        "method": opened.dsco.get("method"),
        "ipc": int(ipc),
    }


def _reachable(recorded: dict) -> bool:
    """Whether the source recorded in a Hub set's card can be opened anywhere: a Hub id or the embedded set (a
    local source is recorded by its folder name only, which names no folder here)."""
    return bool(recorded) and (bool(recorded.get("is_hub")) or "embedded" in str(recorded.get("id", "")))


# Shared with `concentrate`: the run's test split, the built set as a source, the protocol


def eval_test_config(cfg: ConcentrateConfig) -> SourceConfig | None:
    """Where a run's evaluation takes its test split from: `--test-dataset` (its test split, SOURCE's classes),
    else SOURCE; None in data-free mode without SOURCE (nothing to test on)."""
    if cfg.test_dataset is not None:
        return SourceConfig(source=cfg.test_dataset, test_split=cfg.source.test_split, classes=cfg.source.classes)
    if cfg.data_free and cfg.source.source is None:
        return None
    return cfg.source


def pin_test(test_cfg: SourceConfig | None, state: distributed.ProcessState) -> SourceConfig | None:
    """`test_cfg` with a Hub test source pinned to the commit its revision resolves to now (`data.pin_revision`).

    An evaluation loads its test source more than once (the test split, then the training split the random-real
    baseline draws from; `--against` loads it again, each process of a launch loads it): pinned, a commit pushed to
    the branch meanwhile cannot mix in, and the results name the commit tested on (`eval.test.revision`). Under a
    launcher every process takes the main process's commit. A collective: every process must call it.

    Args:
        test_cfg (`SourceConfig`, *optional*): the test source (`eval_test_config`, or the one a set's card records).
        state (`distributed.ProcessState`): this process's place in the launch.

    Returns:
        `SourceConfig` or None: `test_cfg` itself for None, the embedded subset, a local folder, a revision that is
        already a commit sha, or when the Hub cannot be reached (offline: loaded from the cache as asked); else a
        copy at the commit.
    """
    if (
        test_cfg is None
        or test_cfg.source is None
        or not hub.is_hub_ref(test_cfg.source)
        or is_commit_sha(test_cfg.revision)
    ):
        return test_cfg
    recorded = state.gather([fingerprint(test_cfg) if state.is_main else None])[0]
    return pin_revision(test_cfg, recorded)


def load_test(
    test_cfg: SourceConfig, class_names: list[str], target: str, stream_to: Path | None = None
) -> SourceData:
    """The test split with labels mapped onto the set's classes `class_names`; refuses a test set with other classes.

    Args:
        test_cfg (`SourceConfig`): the test source (`eval_test_config`, or the one a set's card records).
        class_names (`list[str]`): the set's classes, in the set's label order.
        target (`str`): the set, named in the message.
        stream_to (`Path`, *optional*): where a streamed test split keeps the rows it reads.

    Returns:
        `SourceData`: the test split, labels in the set's label order.

    Raises:
        SourceError: the class names differ (lists the classes only in the set and only in the test dataset), or
            the test source has no test split.
    """
    own = load_test_source(test_cfg, None, stream_to)
    if own.class_names == list(class_names):
        return own
    only_set = [name for name in class_names if name not in set(own.class_names)]
    only_test = [name for name in own.class_names if name not in set(class_names)]
    if only_set or only_test:

        def listed(names: list[str]) -> str:
            return ", ".join(repr(n) for n in names[:10]) + (f" (+{len(names) - 10} more)" if len(names) > 10 else "")

        raise SourceError(
            f"--test-dataset={own.source_id!r} has other classes than the set {target}: only in the set: "
            f"{listed(only_set) or 'none'}; only in the test dataset: {listed(only_test) or 'none'}. "
            "Pass a test dataset with the same classes."
        )
    return load_test_source(test_cfg, list(class_names), stream_to)  # same classes, another order


def as_source(ds: datasets.Dataset, name: str, class_names: list[str]) -> SourceData:
    """View a built concentrated set as a `SourceData` so it decodes (and is evaluated) like any source.

    Args:
        ds (`datasets.Dataset`): the set, with an `image` and a `label` column (`writer.build_dataset`).
        name (`str`): its `source_id` (the output folder).
        class_names (`list[str]`): the names of its labels.

    Returns:
        `SourceData`: split "train", images left undecoded until asked for.
    """
    return SourceData(
        dataset=ds.cast_column("image", datasets.Image(decode=False)),
        source_id=name,
        split="train",
        revision=None,
        image_column="image",
        label_column="label",
        class_names=class_names,
        labels=np.asarray(ds.with_format("numpy", columns=["label"])["label"], dtype=np.int64),
    )


def runs_share(runs: int, rank: int, world_size: int) -> str:
    """What another process of a launch says once its share of an evaluation is trained (the main one has a bar).

    Args:
        runs (`int`): runs per set (`EvalConfig.runs`, at least 1).
        rank (`int`), world_size (`int`): this process in the launch, `0 <= rank < world_size`.

    Returns:
        `str`: e.g. "rank 1 of 2: 1 of 3 evaluation runs per set trained" (the share is `runs_of_process`').
    """
    mine = len(runs_of_process(runs, rank, world_size))
    return f"rank {rank} of {world_size}: {mine} of {runs} evaluation runs per set trained"


def eval_block(
    train: SourceData,
    test: SourceData,
    baseline_source: SourceData | None,
    ipc: int,
    seed: int,
    cfg: EvalConfig,
    bar,
    spread: bool = False,
) -> dict:
    """Run the protocol on `train` and (when `baseline_source`) on a random real subset of the same IPC.

    Students train on this process's device (`distributed.process_state().device`). With `spread` (every process
    of the launch calls this), each set's runs are shared among the processes and gathered on all of them. With
    `cfg.labels == "soft"`, both sets' students learn the soft labels of the teacher in `cfg.teacher`, which must
    have been trained on the test split's classes, channels and size.

    Args:
        train (`SourceData`): the set (a loaded set, or `as_source` of the one `concentrate` built).
        test (`SourceData`): the test split, labels on the set's classes (-1 for rows of other classes).
        baseline_source (`SourceData`, *optional*): the real data the baseline draws `ipc` images per class from.
        ipc (`int`): images per class of the baseline.
        seed (`int`): run seed of the baseline's draw (`doping.select_random`).
        cfg (`EvalConfig`): the protocol.
        bar: the progress bar (`ui.progress_bar`).
        spread (`bool`, *optional*, defaults to False): share each set's runs among the launch's processes.

    Returns:
        `dict`: the `eval` block: `protocol`, `test`, `evaluated_at`, `result` and (with a baseline)
        `baseline_random`, each an `EvalResult.to_dict()`.

    Raises:
        SourceError: the soft-label teacher does not match the test split (`teacher.Teacher.check`).
        ImageDecodeError: an image cannot be decoded (names the row).
    """

    state = distributed.process_state()
    channels, height, width = test.image_shape
    size = min(height, width)
    soft = teacher.load_teacher(cfg.teacher) if cfg.labels == "soft" else None
    if soft is not None:
        soft.check(test.class_names, channels, (size, size))
    test_rows = np.flatnonzero(test.labels >= 0)  # with --classes, rows of other classes are labelled -1
    test_images = decode_images(test, test_rows, channels, size)
    test_labels = torch.from_numpy(test.labels[test_rows])
    sets = [("result", train, np.arange(len(train.labels)))]
    if baseline_source is not None:
        rows = np.concatenate(
            [
                doping.select_random(baseline_source.class_index[k], ipc, seed, k)
                for k in range(baseline_source.num_classes)
            ]
        )
        sets.append(("baseline_random", baseline_source, rows))
    block: dict = {
        "protocol": {**card.protocol_block(cfg, channels, state.device, soft)},
        "test": {
            "dataset": shown_name(test.source_id),
            "split": test.split,
            "num_images": len(test_rows),
            **({"revision": test.revision} if test.revision and hub.is_hub_ref(test.source_id) else {}),  # `pin_test`
        },
        "evaluated_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    for key, source, rows in sets:
        images = decode_images(source, rows, channels, size)
        labels = torch.from_numpy(source.labels[rows])
        task = bar.add_task(f"evaluate {key.split('_')[0]}", total=cfg.runs * cfg.epochs, info=f"{len(rows)} images")
        result: EvalResult = evaluate_images(
            images,
            labels,
            test_images,
            test_labels,
            test.num_classes,
            cfg,
            progress=lambda n, t=task: bar.advance(t, n),
            state=state,
            spread=spread,
            teacher=soft.model if soft is not None else None,
        )
        bar.update(task, info=f"{result.mean * 100:.2f} ± {result.std * 100:.2f} %")
        block[key] = result.to_dict()
    return block
