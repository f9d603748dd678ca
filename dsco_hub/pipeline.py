"""Orchestration only: one function per command, each step one call into the module that owns it.

source --data--> per-class index --doping--> selected rows --writer--> staged datasets repo
       --evaluate--> accuracy (into the card) --writer.commit--> OUT
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from huggingface_hub import DatasetCard

from dsco_hub import (
    card,
    distributed,
    doping,
    files,
    hub,
    kernels,
    models,
    plan,
    presets,
    results,
    teacher,
    writer,
)
from dsco_hub.config import (
    REAL_METHODS,
    ConcentrateConfig,
    EvalConfig,
    HubConfig,
    SourceConfig,
    derive_seed,
    run_settings,
)
from dsco_hub.data import (
    SourceData,
    decode_images,
    embedded_source_path,
    encode_png,
    fingerprint,
    image_grid,
    load_source,
    load_test_source,
    peek_stream,
    pil_to_uint8,
    to_model_range,
    to_pil,
    to_uint8,
)
from dsco_hub.errors import ConfigError, DscoError, HubError, ModelError, OutputError, SourceError
from dsco_hub.evaluate import EvalResult, evaluate_images
from dsco_hub.nopt import NOptClass, nopt_sample_classes, select_synthetic
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


def _check_ipc(source: SourceData, ipc: int, what: str = "--ipc") -> None:
    """Refuse needing more real images per class than the smallest class has (names the class and its size)."""
    sizes = [len(rows) for rows in source.class_index]
    k = int(np.argmin(sizes))
    if ipc > sizes[k]:
        option = f"--ipc={ipc}" if what == "--ipc" else f"{what} (needs {ipc} real images per class)"
        raise ConfigError(
            f"{option} is larger than class {k} ({source.class_names[k]!r}), which has {sizes[k]} images in "
            f"{source.source_id} [{source.split}]; use --ipc {sizes[k]} or less."
        )


def _load_train(
    cfg: ConcentrateConfig, class_names: list[str] | None, state: distributed.ProcessState, stream_to: Path
) -> SourceData:
    """The source's training split. A streamed one is read by the main process, which saves the
    `cfg.rows_per_class` rows of each class the run can use in `stream_to`; the other processes open those rows."""

    def load() -> SourceData:
        return load_source(
            cfg.source, class_names=class_names, stream_to=stream_to, per_class=cfg.rows_per_class, seed=cfg.seed
        )

    if not cfg.source.streaming or state.world_size == 1:
        return load()
    source = load() if state.is_main else None
    state.wait_for_everyone()
    return source if state.is_main else load()


def _shown(source_id: str) -> str:
    """A source as a card shows it: a local folder by its name (never its absolute path), a Hub id as it is."""
    return card.local_name(source_id) if Path(source_id).expanduser().exists() else source_id


def _portable(data: dict, out: Path) -> dict:
    """`ConcentrateConfig.to_dict()` as the set records it: local paths (SOURCE, --model, --class-map,
    --test-dataset, --teacher, --out) relative to the set's folder, so that no absolute path is written into the
    set."""
    data = json.loads(json.dumps(data, default=str))
    places = [(data["source"], "source"), (data, "model"), (data, "class_map"), (data, "test_dataset")]
    places.append((data["eval"], "teacher"))  # the soft-label teacher's folder
    for holder, key in places:
        value = holder.get(key)
        if value and Path(value).expanduser().exists():
            holder[key] = card.relative_path(value, out)
    data["out"] = Path(out).name
    return data


def _portable_command(command: str) -> str:
    """The command line as recorded in the set: absolute paths made relative to the current folder."""
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


def _test_config(cfg: ConcentrateConfig) -> SourceConfig | None:
    """Where the evaluation's test split comes from: `--test-dataset`, else SOURCE (None: no source to test on)."""
    if cfg.test_dataset is not None:
        return SourceConfig(source=cfg.test_dataset, test_split=cfg.source.test_split, classes=cfg.source.classes)
    if cfg.data_free and cfg.source.source is None:
        return None
    return cfg.source


def _load_model(
    cfg: ConcentrateConfig,
    class_names: list[str],
    name: str,
    source: SourceData | None = None,
    device: torch.device | None = None,
) -> tuple[models.DiffusionPrior, list[int]]:
    """The diffusion prior on `device` (default: CUDA if available) and the model class id of each class of `name`
    (errors before any heavy work)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = models.resolve_dtype(cfg.dtype, device)
    class_map = models.read_class_map(cfg.class_map) if cfg.class_map else None
    if cfg.model is None:
        path = models.shipped_prior_path()
        if not (path / "model_index.json").exists():
            raise ModelError("no --model given and this install ships no prior; pass --model facebook/DiT-XL-2-256.")
        prior = models.load_prior(str(path), device=device, dtype=dtype)
        try:
            class_ids = models.map_classes(class_names, prior.id2label, class_map)
        except ModelError:
            raise ModelError(
                f"no --model given and the classes of {name} are not those of the shipped Fashion-MNIST "
                "prior; pass --model facebook/DiT-XL-2-256 (ImageNet classes) or a prior from `dsco-hub prior train`."
            ) from None
    elif cfg.preset is not None:  # ImageNet classes by position or WordNet id, never by (ambiguous) name
        prior = models.load_prior(cfg.model, cfg.model_revision, device=device, dtype=dtype)
        presets.check_model(cfg.preset, cfg.model, prior.num_classes)
        class_ids = presets.class_ids(cfg.preset, class_names, source.source_classes if source else None)
    else:
        prior = models.load_prior(cfg.model, cfg.model_revision, device=device, dtype=dtype)
        class_ids = models.map_classes(class_names, prior.id2label, class_map)
    models.check_sampler_args(prior, cfg.steps, cfg.guidance_scale, cfg.eta, cfg.scheduler)
    if cfg.gradient_checkpointing:  # NOpt's backward recomputes activations instead of storing them
        prior.denoiser.enable_gradient_checkpointing()
    return prior, class_ids


def _synthesize(cfg: ConcentrateConfig, channels: int, prior, class_ids: list[int], slots) -> writer.ConcentratedRows:
    """Plain guided DDIM samples of the `(class k, slot j)` pairs `slots`; image j of class k has seed (seed, k, j)."""
    rows = writer.ConcentratedRows()
    for start in range(0, len(slots), cfg.sample_batch_size):
        chunk = slots[start : start + cfg.sample_batch_size]
        seeds = [derive_seed(cfg.seed, k, j) for k, j in chunk]
        images = _plain_samples(cfg, prior, [class_ids[k] for k, _ in chunk], seeds)  # (b, C, H, W) in [-1, 1]
        for (k, _), seed, image in zip(chunk, seeds, to_uint8(images)):
            rows.add_synthetic([encode_png(image, channels)], [seed], k)
    return rows


def _plain_samples(
    cfg: ConcentrateConfig, prior, labels: list[int], seeds: list[int], guidance_scale: float | None = None
) -> torch.Tensor:
    """Guided DDIM samples `(len(labels), C, H, W)` in `[-1, 1]` with the run's sampler settings (and its guidance
    scale unless `guidance_scale` is given)."""
    return models.sample(
        prior,
        labels,
        seeds,
        steps=cfg.steps,
        guidance_scale=cfg.guidance_scale if guidance_scale is None else guidance_scale,
        eta=cfg.eta,
        batch_size=cfg.sample_batch_size,
    )


def _nopt_targets(cfg: ConcentrateConfig, source: SourceData | None, prior, class_k: int, class_id: int, n: int):
    """NOpt's targets for class k in the denoiser's space: real images (a seeded subset of at most
    `nopt.targets`), or in data-free mode a pool of the model's own plain samples (`cfg.pool_for(n)`, guidance
    `cfg.pool_guidance`)."""
    if source is None or cfg.data_free:
        pool = cfg.pool_for(n)
        seeds = [derive_seed(cfg.seed, "pool", class_k, j) for j in range(pool)]
        images = _plain_samples(cfg, prior, [class_id] * pool, seeds, cfg.pool_guidance)  # (pool, C, H, W), [-1, 1]
    else:
        rows = doping.select_random(source.class_index[class_k], cfg.nopt.targets, cfg.seed, class_k)
        channels, size = prior.image_shape[0], prior.image_shape[1]
        images = to_model_range(decode_images(source, np.sort(rows), channels, size))  # (M, C, H, W)
    return torch.cat([prior.encode(images[i : i + 64]) for i in range(0, len(images), 64)])


def _dsco(
    cfg: ConcentrateConfig,
    source: SourceData | None,
    channels: int,
    prior,
    class_ids: list[int],
    classes: list[int],
    snapshots: list[dict] | None = None,
) -> writer.ConcentratedRows:
    """DsCo for the classes of one unit: NOpt synthesizes IPC - m images of each (the classes share the denoiser's
    batches), doping adds m = round(rho * IPC) real ones per class. Rows are class by class, synthetic first.

    With `cfg.oversample = K > 1` (generate-then-select), NOpt makes K (IPC - m) images of each class and herding in
    NOpt's feature space keeps the IPC - m whose set best matches the class's targets (`nopt.select_synthetic`);
    the kept images keep their seeds, so each row still names the noise it came from."""
    rows = writer.ConcentratedRows()
    m, n = cfg.num_doped, cfg.num_synthetic
    generated = n * cfg.oversample
    seeds = {k: [derive_seed(cfg.seed, k, j) for j in range(generated)] for k in classes}  # image j of class k
    targets = {k: _nopt_targets(cfg, source, prior, k, class_ids[k], n) for k in (classes if n else [])}
    batch = [
        NOptClass(class_ids[k], seeds[k], targets[k], phi_seed=derive_seed(cfg.seed, "phi", k))
        for k in (classes if n else [])
    ]
    synthetic = {}  # class k -> its n synthetic images (n, C, H, W) uint8
    if batch:
        images, _ = nopt_sample_classes(
            prior,
            batch,
            cfg.nopt,
            steps=cfg.steps,
            guidance_scale=cfg.guidance_scale,
            eta=cfg.eta,
            batch_size=cfg.sample_batch_size,
            snapshots=snapshots,
        )
        for k, class_images in zip(classes, images):  # (K n, C, H, W) in [-1, 1]
            if cfg.oversample > 1:
                candidates = torch.cat([prior.encode(b.to(prior.device)) for b in class_images.split(64)])
                kept = sorted(
                    select_synthetic(
                        candidates, targets[k], n, cfg.nopt, derive_seed(cfg.seed, "select", k), snapshots
                    )
                )
                class_images, seeds[k] = class_images[kept], [seeds[k][j] for j in kept]
            synthetic[k] = to_uint8(class_images)
    for k in classes:
        if n:
            rows.add_synthetic([encode_png(image, channels) for image in synthetic[k]], seeds[k], k)
        if m:
            rows.add_real(*_doped(cfg, source, k, m, synthetic.get(k)), k)
    return rows


def _doped(cfg: ConcentrateConfig, source: SourceData, k: int, m: int, synthetic: torch.Tensor | None):
    """Doping of class k: `m` real images (their stored values and source indices), chosen at random or by herding
    beside the class's synthetic images `(n, C, H, W)` uint8 (None when there are none; "herding-independent" ignores
    them: herding from zero, as if the class had no synthetic images)."""
    if cfg.doping_select == "random":
        picks = doping.select_random(source.class_index[k], m, cfg.seed, k)
        source.decode_pil(picks)  # copied undecoded: a corrupt image is reported here, by its source row
    else:
        start = None
        if synthetic is not None and cfg.doping_select == "herding":  # in the source's format, where herding measures
            side = min(source.image_shape[1:])
            start = to_model_range(pil_to_uint8([to_pil(im) for im in synthetic], source.image_shape[0], side))
        picks = doping.select_herding(
            source,
            k,
            m,
            cfg.seed,
            pool=cfg.herding_pool,
            kernel=cfg.kernel,
            feature_seed=cfg.feature_seed,
            synthetic=start,
        )
    return source.raw_images(picks), source.source_index(picks)


def _select(cfg: ConcentrateConfig, source: SourceData, k: int) -> writer.ConcentratedRows:
    """`random` or `herding`: IPC real images of class k."""
    rows = writer.ConcentratedRows()
    if cfg.method == "random":
        picks = doping.select_random(source.class_index[k], cfg.ipc, cfg.seed, k)
        source.decode_pil(picks)  # copied undecoded: a corrupt image is reported here, by its source row
    else:
        picks = doping.select_herding(
            source, k, cfg.ipc, cfg.seed, pool=cfg.herding_pool, kernel=cfg.kernel, feature_seed=cfg.feature_seed
        )
    rows.add_real(source.raw_images(picks), source.source_index(picks), k)
    return rows


def _compute_unit(
    unit: distributed.Unit,
    cfg: ConcentrateConfig,
    source: SourceData | None,
    channels: int,
    prior,
    class_ids,
    snapshots: list[dict] | None = None,
) -> writer.ConcentratedRows:
    """The rows of one work unit (its slots, in output order); the same whatever process computes it."""
    if prior is None:
        return _select(cfg, source, unit.classes[0])
    if cfg.method == "diffusion":
        return _synthesize(cfg, channels, prior, class_ids, unit.slots())
    return _dsco(cfg, source, channels, prior, class_ids, unit.classes, snapshots)


FEATURES_FILE = "nopt_features.safetensors"  # in OUT.partial: the trained feature snapshots of a run


def _feature_snapshots(
    cfg: ConcentrateConfig, source: SourceData, prior, folder: Path, state: distributed.ProcessState, say
) -> list[dict] | None:
    """`--nopt-features trained`: the ConvNet-3 snapshots NOpt draws its feature maps from, trained once per run.

    The main process trains them on `nopt.feature_images` real images per class (a seeded subset, in the denoiser's
    space) and saves them in the run folder (atomically); the other processes, and a resumed run, load that file,
    so every unit of every process uses the same networks.
    """
    if cfg.method != "dsco" or cfg.nopt.features != "trained" or not cfg.num_synthetic:
        return None
    from safetensors.torch import load_file, save

    path = folder / FEATURES_FILE
    if state.is_main and not path.exists():
        seed = derive_seed(cfg.seed, "nopt-features")
        channels, size = prior.image_shape[0], prior.image_shape[1]
        images, labels = [], []
        for k in range(source.num_classes):
            rows = np.sort(doping.select_random(source.class_index[k], cfg.nopt.feature_images, seed, k))
            pixels = to_model_range(decode_images(source, rows, channels, size))  # (r, C, H, W) in [-1, 1]
            images.append(torch.cat([prior.encode(pixels[i : i + 64]) for i in range(0, len(pixels), 64)]).cpu())
            labels.append(torch.full((len(rows),), k, dtype=torch.long))
        started = dt.datetime.now()
        snapshots = kernels.train_feature_snapshots(
            torch.cat(images),
            torch.cat(labels),
            source.num_classes,
            cfg.nopt.feature_epochs,
            seed,
            width=cfg.nopt.width,
            device=prior.device,
        )
        seconds = (dt.datetime.now() - started).total_seconds()
        say(f"NOpt features: ConvNet-3 trained {cfg.nopt.feature_epochs} epochs on {sum(map(len, labels))} images "
            f"in {seconds:.0f} s")  # fmt: skip
        files.make_dirs(folder)
        tensors = {
            f"{e}.{name}": value.contiguous() for e, snap in enumerate(snapshots) for name, value in snap.items()
        }
        files.atomic_write(path, save(tensors))
    state.wait_for_everyone()
    loaded = load_file(str(path))
    snapshots = [{} for _ in range(cfg.nopt.feature_epochs)]
    for key, value in loaded.items():
        epoch, name = key.split(".", 1)
        snapshots[int(epoch)][name] = value
    return snapshots


def _run_units(
    units: list[distributed.Unit], state: distributed.ProcessState, folder: Path, compute, bar, say, label: str
) -> None:
    """Compute this process's units that have no valid shard yet, writing each as a shard when it is done."""
    mine = distributed.assign(units, state.rank, state.world_size)
    todo = []
    for unit in mine:
        if writer.shard_path(folder, unit.index).exists():
            try:
                writer.read_shard(folder, unit.index, unit.stop - unit.start)
                continue
            except OutputError as err:
                say(f"warning: {err}; recomputing unit {unit.index}")
        todo.append(unit)
    what = f"{len(todo)} of {len(mine)} units" + (f" on rank {state.rank}" if state.world_size > 1 else "")
    task = bar.add_task(label, total=len(todo), info=what)
    for unit in todo:
        writer.write_shard(folder, unit.index, compute(unit))
        bar.update(task, advance=1, info=f"unit {unit.index} (classes {unit.classes[0]}-{unit.classes[-1]})")
    if not state.is_main:  # the main process has a progress bar; the others say what they did
        say(f"rank {state.rank} of {state.world_size}: {len(todo)} of {len(mine)} units computed")


def _as_source(ds: datasets.Dataset, name: str, class_names: list[str]) -> SourceData:
    """View a built concentrated set as a `SourceData` so it decodes like any source."""
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


def _evaluate(
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
        "test": {"dataset": _shown(test.source_id), "split": test.split, "num_images": len(test_rows)},
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


def concentrate(
    cfg: ConcentrateConfig, command: str | None = None, report: Callable[[str], Any] | None = None
) -> ConcentrateResult:
    """`dsco-hub concentrate`: select or synthesize, write, evaluate and card a concentrated set into `cfg.out`.

    The work is a list of units (`distributed.plan_units`: a class for `dsco`, `random` and `herding`, blocks of
    slots for `diffusion`), fixed by the settings. Under `torchrun` / `accelerate launch` each process computes the
    units `rank, rank + W, ...`; every finished unit is a shard in `OUT.partial/`, so rerunning the same command
    after a crash skips finished units. The main process then assembles the set in unit order, writes the card,
    evaluates and pushes; the other processes return once their units are written. Seeds derive from
    `(seed, class, slot)`, so the output does not depend on the number of processes.

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
    protected = [cfg.source.source or str(embedded_source_path()), cfg.test_dataset, cfg.model]
    out = files.check_out_path(cfg.out, "--out", protected)  # never the current, home or a source's folder
    plain = _portable(cfg.to_dict(), out)  # as saved in dsco_config.json: JSON types, paths relative to the set
    source_fingerprint = fingerprint(cfg.source) if cfg.source.source is not None or not cfg.data_free else None
    # A streamed run reads its rows once and then only its saved copy (in OUT.partial): that copy, not the source
    # as it is now, is what its units were made from, so the source's fingerprint is recorded but not compared
    compared = None if cfg.source.streaming else source_fingerprint
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
        task = bar.add_task("load source", total=2 if cfg.evaluate else 1, info="")
        # In data-free mode SOURCE is optional and serves only the evaluation; synthesis reads no image
        labels = list(cfg.labels) if cfg.data_free else None
        # A streamed source keeps the rows it uses here (see `load_source`), named by what they depend on: a crash
        # before the run's settings are saved must not let a rerun with other settings reuse them
        key = json.dumps([plain["source"], cfg.rows_per_class, cfg.seed], sort_keys=True)
        stream_to = folder / "stream" / f"{derive_seed(key):016x}"
        source = _load_train(cfg, labels, state, stream_to) if not cfg.data_free or cfg.source.source else None
        class_names = labels or source.class_names
        name = source.source_id if source is not None else "data-free class names"
        if len(class_names) < 2:
            raise SourceError(
                f"{name} [{cfg.source.split}] has {len(class_names)} class ({', '.join(map(repr, class_names))}); "
                "a classification set needs at least 2 classes (check --classes and --label-column)."
            )
        prior, class_ids = None, None
        if cfg.method in REAL_METHODS:
            _check_ipc(source, cfg.ipc)
        else:
            prior, class_ids = _load_model(cfg, class_names, name, source, state.device)
            if cfg.torch_compile and not models.compile_denoiser(prior) and state.is_main:
                say("--compile: ignored on the CPU (compiled kernels may round differently; CPU results stay put)")
            if cfg.method == "dsco" and not cfg.data_free:
                _check_ipc(source, max(cfg.num_doped, 2), what="--nopt-targets/--doping-ratio")
        channels = source.image_shape[0] if source is not None else prior.image_shape[0]
        bar.advance(task)
        test_cfg = _test_config(cfg)
        evaluate = cfg.evaluate and test_cfg is not None and state.is_main
        test = _load_test_source(test_cfg, class_names, name, stream_to) if evaluate else None
        bar.update(task, completed=2 if cfg.evaluate else 1, info=f"{len(class_names)} classes")

        # Units: each process computes its own, each finished unit is a shard in OUT.partial
        units = distributed.plan_units(cfg.method, cfg.ipc, len(class_names))
        if state.is_main:
            writer.prepare_run(folder, settings, len(units), source_fingerprint)
        state.wait_for_everyone()
        done = sum(writer.shard_path(folder, unit.index).exists() for unit in units)
        if done and state.is_main:
            say(f"resuming {folder}: {done} of {len(units)} units done")
        label = {"dsco": "NOpt + doping", "diffusion": "sample (diffusion)"}.get(cfg.method, f"select ({cfg.method})")
        snapshots = _feature_snapshots(cfg, source, prior, folder, state, say) if prior is not None else None
        _run_units(
            units,
            state,
            folder,
            lambda unit: _compute_unit(unit, cfg, source, channels, prior, class_ids, snapshots),
            bar,
            say,
            label,
        )
        state.wait_for_everyone()
        if not state.is_main:
            return ConcentrateResult(out=out, dsco={}, main=False)
        rows = writer.ConcentratedRows()
        for unit in units:
            rows.extend(writer.read_shard(folder, unit.index, unit.stop - unit.start))

        staging = writer.staging_dir(out)
        try:
            task = bar.add_task("write", total=3, info=str(out))
            ds = writer.build_dataset(rows, class_names)
            split_info, download_size = writer.write_parquet(ds, staging)
            bar.advance(task)
            view = _as_source(ds, str(out), class_names)
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
                "settings": card.settings_block(cfg, prior),
                "counts": {
                    "rows": len(rows),
                    "real": rows.source.count("real"),
                    "synthetic": rows.source.count("synthetic"),
                },
                "source": card.source_block(cfg, source, class_names, out),
                "versions": card.versions(),
            }
            if test is not None:
                baseline = source if cfg.eval.baseline and not cfg.data_free else None
                dsco["eval"] = _evaluate(view, test, baseline, cfg.ipc, cfg.seed, cfg.eval, bar)
            citation = source.citation if source is not None else None
            writer.write_card(
                staging, card.dataset_card(dsco, citation, out.name, grid_classes, ds, split_info, download_size)
            )
            command = command or command_line()
            writer.write_json(
                staging / "dsco_config.json",
                {**plain, "source_fingerprint": source_fingerprint, "command": _portable_command(command)},
            )
            bar.advance(task)
            final = writer.commit(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    shutil.rmtree(folder, ignore_errors=True)  # the set is complete: its units are no longer needed
    return ConcentrateResult(out=final, dsco=dsco)


def dry_run(cfg: ConcentrateConfig) -> plan.RunPlan:
    """`dsco-hub concentrate --dry-run`: the plan of a run (classes, units, denoiser calls, size, time), no writes.

    A preset needs no download (its classes and its model's FLOPs are known); otherwise the source's labels are
    read to count classes and the model's configs to count FLOPs (`plan.model_cost`).

    Raises:
        ConfigError: invalid settings, or IPC larger than the smallest class.
        SourceError, ModelError: the source or the model's configs cannot be read.
    """
    presets.apply_preset(cfg)
    cfg.validate()
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
        _check_ipc(source, cfg.ipc if cfg.method in REAL_METHODS else cfg.num_doped)
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
        test (`SourceConfig`): the test source; `test.source=None` uses the source recorded in the set's card.
            Its `test_split` (default "test", else "validation") is evaluated; its `split` (default "train") feeds
            the random-real baseline.
        cfg (`EvalConfig`): protocol settings (`cfg.baseline` toggles the baseline).
        update_card (`bool`, *optional*, defaults to False): write the results into the set's card (a folder's
            README.md, or a commit / pull request on the Hub).
        hub_cfg (`HubConfig`, *optional*): token, endpoint, `create_pr` and `commit_message` for a Hub set.
        set_config (`str`, *optional*): the config of a Hub set to evaluate (default: the repo's default config).
        image_column (`str`, *optional*): the set's image column (default: the column of feature `Image`).
        label_column (`str`, *optional*): the set's label column (default: the `ClassLabel` column).
        report (`Callable[[str], Any]`, *optional*): called with one-line messages (evaluated commit, card URL).

    Returns:
        `dict`: the `eval` block (protocol, test, result, baseline_random; `commit` for a Hub set).

    Raises:
        SourceError: the set or the test source cannot be used (no image or label column, missing split), or their
            classes differ (lists the difference).
        HubError: the repo or revision does not exist, or (with `update_card`) no token, 401/403.
    """
    columns = {"set_config": set_config, "image_column": image_column, "label_column": label_column}
    return _evaluate_command(target, test, cfg, None, None, update_card, hub_cfg, report, **columns)[0]


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
        other = _open_target(against, hub_cfg, set_config, image_column, label_column, False, report)
    test_cfg = _default_test(opened, test)
    with hub.hub_session(hub_cfg), progress_bar() as bar:
        block, train = _evaluate_opened(opened, test_cfg, cfg, bar)
        compared = None
        if other is not None:  # same protocol, seeds and test split; the baseline is the first set's
            same = dataclasses.replace(cfg, baseline=False)
            other_block, other_train = _evaluate_opened(other, test_cfg, same, bar, seed=opened.dsco.get("seed", 0))
            compared = (_set_info(other, other_train), other_block)
    doc = results.document(_set_info(opened, train), block, gates, compared)
    if update_card and opened.published is not None:
        url, pr_url = hub.update_card_eval(opened.published, block, hub_cfg)
        if report is not None:
            report(f"card pull request: {pr_url}" if pr_url else f"card updated: {url}")
    elif update_card:
        folder = Path(target).expanduser()
        writer.write_card(folder, card.with_evaluation(opened.existing, block, folder.resolve().name), "TARGET")
    return block, doc


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
) -> _OpenedSet:
    """Resolve a set (a Hub repo to a commit sha, or a folder) and read its card, before any heavy work."""
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
    existing = DatasetCard.load(folder / "README.md") if (folder / "README.md").exists() else None
    dsco = dict(existing.data.get("dsco") or {}) if existing is not None else {}
    set_cfg = SourceConfig(source=target, split="train", image_column=image_column, label_column=label_column)
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
        revision=recorded.get("revision"),
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
    test_source = _load_test_source(test_cfg, train.class_names, opened.target)
    baseline_source = load_source(test_cfg, class_names=train.class_names) if cfg.baseline else None
    bar.advance(task)
    ipc = int(round(len(train.labels) / train.num_classes))
    if baseline_source is not None:
        _check_ipc(baseline_source, ipc)
    seed = opened.dsco.get("seed", 0) if seed is None else seed
    block = _evaluate(train, test_source, baseline_source, ipc, seed, cfg, bar)
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


def _load_test_source(
    test_cfg: SourceConfig, class_names: list[str], target: str, stream_to: Path | None = None
) -> SourceData:
    """The test split with labels mapped onto the set's classes `class_names`; refuses a test set with other classes.

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


def results_table(block: dict) -> list[tuple[str, str, str]]:
    """Rows `(set, images, accuracy)` of an `eval` block for printing."""
    rows = []
    for key, name in (("result", "this set"), ("baseline_random", "random real (same IPC)")):
        if block.get(key):
            r = block[key]
            rows.append((name, str(r["num_train_images"]), f"{r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f}"))
    return rows
