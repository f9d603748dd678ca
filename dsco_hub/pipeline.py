"""Orchestration only: one function per command, each step one call into the module that owns it.

source --data--> images per class --synthesis (models, nopt, doping)--> unit shards --writer--> staged repo
       --assess--> accuracy (into the card) --writer.commit--> OUT --hub--> pushed repo

`dsco-hub evaluate` is `assess.evaluate_set` / `assess.evaluate_report`; every card is made in `card`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard

from dsco_hub import (
    assess,
    card,
    distributed,
    doping,
    files,
    hub,
    models,
    plan,
    presets,
    synthesis,
    writer,
)
from dsco_hub.config import (
    REAL_METHODS,
    ConcentrateConfig,
    HubConfig,
    derive_seed,
    run_settings,
)
from dsco_hub.data import (
    SourceData,
    decode_images,
    fingerprint,
    image_grid,
    load_source,
    peek_stream,
    pin_revision,
    source_folder,
)
from dsco_hub.errors import DscoError, HubError
from dsco_hub.text import command_line
from dsco_hub.ui import progress_bar

GRID_CLASSES = card.GRID_CLASSES  # classes shown in samples.png
GRID_PER_CLASS = 8  # images per class shown in samples.png


@dataclass
class ConcentrateResult:
    """What `concentrate` produced: the output folder, its `dsco:` block (with `eval` when evaluated) and the push."""

    out: Path
    dsco: dict
    push: hub.PushResult | None = None  # with `cfg.push`: the repo, commits and files uploaded
    main: bool = True  # False on the other processes of a launch (they only computed their units)


def concentrate(
    cfg: ConcentrateConfig, command: str | None = None, report: Callable[[str], Any] | None = None
) -> ConcentrateResult:
    """`dsco-hub concentrate`: select or synthesize, write, evaluate and card a concentrated set into `cfg.out`.

    The work is a list of units (`distributed.plan_units`: a class for `dsco`, `random` and `herding`, blocks of
    slots for `diffusion`), fixed by the settings. Under `torchrun` / `accelerate launch` each process computes the
    units `rank, rank + W, ...`; every finished unit is a shard in `OUT.partial/`, so rerunning the same command
    after a crash skips finished units. The main process then assembles the set in unit order, writes the card and
    pushes; the evaluation's runs (of the set and of the random-real baseline) are spread over all processes
    (run `r` on process `r % W`) and gathered on the main one, and the other processes return once their units and
    runs are done. Seeds derive from `(seed, class, slot)` and each run's from its index, so the output, the
    accuracies included, does not depend on the number of processes.

    Args:
        cfg (`ConcentrateConfig`): the run settings.
        command (`str`, *optional*): the command line recorded in `dsco_config.json` (defaults to `sys.argv` with
            `--token` masked: `text.command_line`).
        report (`Callable[[str], Any]`, *optional*): called with one-line status messages (resume, corrupt shard
            recomputed, already complete).

    Returns:
        `ConcentrateResult`: the output folder and its `dsco:` card block (`main=False` and an empty block on the
        other processes of a launch).

    Raises:
        ConfigError: invalid settings, IPC larger than the smallest class, or settings that differ from the saved
            run or the finished set in `cfg.out` (without `cfg.overwrite`).
        OutputError: `cfg.out` is a non-empty folder not written by dsco-hub and `cfg.overwrite` is False.
        SourceError: the source or its test split cannot be used.
        ImageDecodeError: an image cannot be decoded (names the row).
        ModelError: `cfg.model` cannot be identified (`models.model_identity`, before any work) or loaded, or its
            classes do not cover the set's.
        HubError: with `cfg.push`, no token, a malformed repo id (both before any work), or the push failed (the
            hint says how to finish it with `dsco-hub push`).
    """
    result = _concentrate_set(cfg, command, report)
    if cfg.push is not None and result.main:  # the one place a set is pushed: once it is complete
        result.push = push(result.out, cfg.push, finishing=True)
    return result


def _concentrate_set(
    cfg: ConcentrateConfig, command: str | None, report: Callable[[str], Any] | None
) -> ConcentrateResult:
    """`concentrate` up to the push: check the settings and `cfg.out`, then make the set (or find it complete)."""
    presets.apply_preset(cfg)
    cfg.validate()
    say = report or (lambda message: print(message, file=sys.stderr))
    state = distributed.process_state()
    out = _out_path(cfg)
    plain = writer.portable_config(cfg.to_dict(), out)  # as saved in dsco_config.json: no absolute path
    if cfg.method not in REAL_METHODS:  # which weights: the shipped prior, a local folder's digest, a Hub commit
        identity = models.model_identity(cfg.model, cfg.model_revision)
        plain.update(state.gather([identity])[0])  # the main process's: one Hub commit for every process
    source_fingerprint, compared = _fingerprints(cfg, state)
    if writer.check_output(out, cfg.overwrite, run_settings(plain, "set"), compared):
        if state.is_main:
            say(f"{cfg.out} is already complete with these settings; nothing to do (pass --overwrite to redo it)")
        dsco = dict(DatasetCard.load(out / "README.md").data.get("dsco") or {})
        return ConcentrateResult(out=out, dsco=dsco, main=state.is_main)
    settings = run_settings(plain, "rows")
    folder, discard = writer.check_run(out, settings, cfg.overwrite, compared)
    state.wait_for_everyone()  # every process has read the saved run before it is discarded
    if discard and state.is_main:
        writer.discard_run(folder)
    if cfg.push is not None and state.is_main:
        hub.preflight(cfg.push)  # repo id, token and its user checked before any heavy work
    created = not folder.exists()  # a run folder this call makes is removed again if its input proves bad
    try:
        return _concentrate(cfg, out, folder, plain, settings, source_fingerprint, state, say, command)
    except DscoError:
        if created and state.is_main and not any(folder.glob("units/*.parquet")):
            shutil.rmtree(folder, ignore_errors=True)  # bad input found late: leave nothing behind
        raise


def _out_path(cfg: ConcentrateConfig) -> Path:
    """`cfg.out` resolved, once `files.check_out_path` has refused the current, home or root folder and any folder
    that is, holds or lies inside a source (SOURCE, `--test-dataset`, `--model`)."""
    protected = [source_folder(cfg.source), cfg.test_dataset, cfg.model]
    return files.check_out_path(cfg.out, "--out", protected)


def _fingerprints(cfg: ConcentrateConfig, state: distributed.ProcessState) -> tuple[dict | None, dict | None]:
    """The source's fingerprint (`data.fingerprint`) as the run records it, and as a saved run's is compared with.

    Under a launcher every process takes the main process's (`state.gather`), so all of them compare the same
    fingerprint and load a Hub source at the same commit (`data.pin_revision`). A streamed run reads its rows once
    and then only its saved copy (in OUT.partial): that copy, not the source as it is now, is what its units were
    made from, so its fingerprint is recorded but not compared (None). Data-free without SOURCE: nothing to
    fingerprint.
    """
    recorded = fingerprint(cfg.source) if cfg.source.source is not None or not cfg.data_free else None
    recorded = state.gather([recorded])[0]
    return recorded, None if cfg.source.streaming else recorded


def _concentrate(
    cfg: ConcentrateConfig,
    out: Path,
    folder: Path,
    plain: dict,
    settings: dict,
    source_fingerprint: dict | None,
    state: distributed.ProcessState,
    say: Callable[[str], Any],
    command: str | None,
) -> ConcentrateResult:
    """The body of `concentrate` once `out` and the saved run are checked: load, compute the units, write."""
    with progress_bar(disable=not state.is_main) as bar:
        work, test, rows = _compute(cfg, state, folder, plain, settings, source_fingerprint, say, bar)
        if rows is None:  # another process of the launch, without evaluation: its units are written
            return ConcentrateResult(out=out, dsco={}, main=False)
        source, class_names, prior = work.source, work.class_names, work.prior
        baseline = source if cfg.eval.baseline and not cfg.data_free else None
        if not state.is_main:  # another process of the launch: its share of the evaluation's runs
            view = assess.as_source(writer.build_dataset(rows, class_names), str(out), class_names)
            assess.eval_block(view, test, baseline, cfg.ipc, cfg.seed, cfg.eval, bar, spread=True)
            say(assess.runs_share(cfg.eval.runs, state.rank, state.world_size))
            return ConcentrateResult(out=out, dsco={}, main=False)

        staging = writer.staging_dir(out)
        try:
            task = bar.add_task("write", total=3, info=str(out))
            ds = writer.build_dataset(rows, class_names)
            split_info, download_size = writer.write_parquet(ds, staging)
            bar.advance(task)
            view = assess.as_source(ds, str(out), class_names)
            grid_classes = min(len(class_names), GRID_CLASSES)
            grid_rows = [int(r) for k in range(grid_classes) for r in view.class_index[k][:GRID_PER_CLASS]]
            channels, h, w = view.image_shape
            grid = decode_images(view, grid_rows, channels, min(h, w, 128))
            image_grid(grid, rows=grid_classes).save(staging / "samples.png")
            bar.advance(task)
            dsco = {
                "method": cfg.method,
                "ipc": cfg.ipc,
                "doping_ratio": round(rows.source.count("real") / max(len(rows), 1), 4),
                "seed": cfg.seed,
                "settings": card.settings_block(cfg, prior, _identity(plain)),
                "counts": {
                    "rows": len(rows),
                    "real": rows.source.count("real"),
                    "synthetic": rows.source.count("synthetic"),
                },
                "source": card.source_block(cfg, source, class_names, out),
                "versions": card.versions(),
            }
            if test is not None:
                dsco["eval"] = assess.eval_block(view, test, baseline, cfg.ipc, cfg.seed, cfg.eval, bar, spread=True)
            citation = source.citation if source is not None else None
            writer.write_card(
                staging, card.dataset_card(dsco, citation, out.name, grid_classes, ds, split_info, download_size)
            )
            command = command or command_line()
            writer.write_json(
                staging / "dsco_config.json",
                {
                    **plain,
                    "source_fingerprint": writer.run_fingerprint(folder),  # what the units were made from
                    "command": writer.portable_command(command),
                },
            )
            bar.advance(task)
            final = writer.commit(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    shutil.rmtree(folder, ignore_errors=True)  # the set is complete: its units are no longer needed
    return ConcentrateResult(out=final, dsco=dsco)


def _identity(plain: dict) -> dict:
    """The model's identity (`models.model_identity`) as the run recorded it in `plain`, for the card."""
    return {k: plain[k] for k in models.MODEL_IDENTITY_KEYS if k in plain}


def _compute(
    cfg: ConcentrateConfig,
    state: distributed.ProcessState,
    folder: Path,
    plain: dict,
    settings: dict,
    source_fingerprint: dict | None,
    say: Callable[[str], Any],
    bar,
) -> tuple[synthesis.Synthesis, SourceData | None, writer.ConcentratedRows | None]:
    """Load the source, the prior and the test split, then compute this process's units (shards in `folder`).

    Returns:
        `tuple`: what the units needed (`synthesis.Synthesis`: source, classes, prior), the test split (with
        evaluation) and the rows of all units in unit order (on the main process, and with evaluation on every
        process: each trains its share of the runs; None otherwise).
    """
    task = bar.add_task("load source", total=2 if cfg.evaluate else 1, info="")
    # A streamed source keeps the rows it uses here (see `load_source`), named by what they depend on: a crash
    # before the run's settings are saved must not let a rerun with other settings reuse them
    key = json.dumps([plain["source"], cfg.rows_per_class, cfg.seed], sort_keys=True)
    stream_to = folder / "stream" / f"{derive_seed(key):016x}"
    pinned = dataclasses.replace(cfg, source=pin_revision(cfg.source, source_fingerprint))  # at the recorded commit
    work = synthesis.prepare(pinned, state, stream_to, say, model_commit=plain.get("model_commit"))
    bar.advance(task)
    test_cfg = assess.eval_test_config(pinned)
    test = None
    if cfg.evaluate and test_cfg is not None:
        if cfg.test_dataset is not None:  # SOURCE itself is already at its fingerprinted commit (`pinned`)
            test_cfg = assess.pin_test(test_cfg, state)  # a --test-dataset on the Hub: one commit for every process
        with state.main_first():  # a streamed test split is read once, and saved in the run folder for the others
            test = assess.load_test(test_cfg, work.class_names, work.name, stream_to)
    bar.update(task, completed=2 if cfg.evaluate else 1, info=f"{len(work.class_names)} classes")

    # Units: each process computes its own, each finished unit is a shard in OUT.partial
    units = distributed.plan_units(cfg.method, cfg.ipc, len(work.class_names))
    if state.is_main:
        writer.prepare_run(folder, settings, len(units), source_fingerprint)
    state.wait_for_everyone()
    synthesis.run_units(units, work, folder, state, bar, say)
    state.wait_for_everyone()
    if not state.is_main and test is None:
        return work, test, None
    rows = writer.ConcentratedRows()
    for unit in units:
        rows.extend(writer.read_shard(folder, unit.index, unit.stop - unit.start))
    return work, test, rows


def dry_run(cfg: ConcentrateConfig) -> plan.RunPlan:
    """`dsco-hub concentrate --dry-run`: the plan of a run (classes, units, denoiser calls, size, time), no writes.

    A preset needs no download (its classes and its model's FLOPs are known); otherwise the source's labels are
    read to count classes and the model's configs to count FLOPs (`plan.model_cost`).

    Raises:
        ConfigError: invalid settings, or IPC larger than the smallest class.
        OutputError: `--out` would be refused by the run itself (`files.check_out_path`; a folder holding files
            dsco-hub did not write; a name ending in .partial; an `OUT.partial` that no run wrote).
        SourceError, ModelError: the source or the model's configs cannot be read.
    """
    presets.apply_preset(cfg)
    cfg.validate()
    out = _out_path(cfg)
    writer.check_output(out, overwrite=True)  # read-only: refuses what the run would refuse
    writer.check_run_folder(out)
    image_shape = None
    if cfg.preset is not None:
        wnids = presets.PRESETS[cfg.preset].wnids
        num_classes = len(cfg.source.classes or wnids or range(presets.IMAGENET_CLASSES))
    elif cfg.data_free:
        num_classes = len(cfg.labels)
    elif cfg.source.streaming:  # one row read: class sizes are unknown until the stream is read
        names, image_shape = peek_stream(cfg.source)
        num_classes = len(names)
    else:
        source = load_source(cfg.source)
        doping.check_ipc(source, cfg.ipc if cfg.method in REAL_METHODS else cfg.num_doped)
        num_classes, image_shape = source.num_classes, source.image_shape
    cost = None if cfg.method in REAL_METHODS else plan.model_cost(cfg.model, cfg.model_revision)
    return plan.make_plan(cfg, num_classes, cost, image_shape)


def push(folder: str | Path, cfg: HubConfig, finishing: bool = False) -> hub.PushResult:
    """`dsco-hub push`: publish a folder written by `concentrate` as config `ipc<IPC>` of a dataset repo.

    `concentrate --push` pushes through here too, once its set is complete.

    Args:
        folder (`str` or `Path`): the set (README.md with a `dsco:` block, data/*.parquet, samples.png).
        cfg (`HubConfig`): repo id, branch, pull request, commit message, token, endpoint.
        finishing (`bool`, *optional*, defaults to False): the push ends `concentrate`; a failure's hint then says
            how to finish the upload without concentrating again.

    Returns:
        `hub.PushResult`: the repo, config, commits and what was uploaded, skipped or deleted.

    Raises:
        OutputError: `folder` is not a set written by dsco-hub.
        HubError: no token, malformed repo id, 401/403, or the Hub kept failing (rerun: it resumes).
    """
    try:
        return hub.push_folder(folder, cfg)
    except HubError as err:
        if finishing:
            repo = f" --repo-id {cfg.repo_id}" if cfg.repo_id else ""
            err.hint = f"the set is complete in {folder}; finish the upload with `dsco-hub push {folder}{repo}`."
        raise
