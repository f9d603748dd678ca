"""The work units of `concentrate`: the rows of each, the same whatever process computes it.

A run's work is a list of units fixed by its settings (`distributed.plan_units`). `prepare` loads what every unit
needs, once per process (the training split, the diffusion prior and the model's class id of each class, the
run's `SamplerConfig`);
`run_units` computes this process's units that have no shard yet, writing each as a shard in `OUT.partial/units/`
as soon as it is done, so a rerun resumes. A unit is, by method:

- `random` / `herding`: IPC real images of one class (`doping.select`);
- `diffusion`: plain guided DDIM samples of a block of `(class, slot)` pairs (`models.sample`);
- `dsco`: NOpt's synthetic images of the unit's classes (`nopt.nopt_sample_classes`, toward real images of the
  class, or in data-free mode a pool of the model's own samples; with `--oversample`, more of them and then a
  selection), then doping's real images beside them (`doping.select`), class by class (`docs/method.md`).

Image j of class k has the seed `derive_seed(seed, k, j)`, so no row depends on the process, the batch size or
the number of processes (style.md, habit 8).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsco_hub import distributed, doping, files, kernels, models, presets, writer
from dsco_hub.config import REAL_METHODS, ConcentrateConfig, SamplerConfig, derive_seed
from dsco_hub.data import SourceData, decode_images, encode_png, load_source, to_model_range, to_uint8
from dsco_hub.errors import ModelError, OutputError, SourceError
from dsco_hub.nopt import NOptClass, nopt_sample_classes, select_synthetic


@dataclass(frozen=True)
class Synthesis:
    """What every unit of a run needs, loaded once per process by `prepare`.

    Attributes:
        cfg (`ConcentrateConfig`): the run settings.
        sampler (`SamplerConfig`): the run's sampler settings (`cfg.sampler()`), for plain samples, NOpt and the pool.
        source (`SourceData`, *optional*): the training split; None in data-free mode without SOURCE.
        class_names (`list[str]`): the set's classes (the source's, or `cfg.labels` in data-free mode).
        name (`str`): what the classes come from, for messages (the source id, or "data-free class names").
        channels (`int`): channels of the images written: the source's, else (data-free) the model's.
        prior (`models.DiffusionPrior`, *optional*): the diffusion prior; None for `random` and `herding`.
        class_ids (`list[int]`, *optional*): the model's class id of each class of the set, in `[0, K)`.
    """

    cfg: ConcentrateConfig
    sampler: SamplerConfig
    source: SourceData | None
    class_names: list[str]
    name: str
    channels: int
    prior: models.DiffusionPrior | None = None
    class_ids: list[int] | None = None


def prepare(
    cfg: ConcentrateConfig,
    state: distributed.ProcessState,
    stream_to: Path,
    say: Callable[[str], Any] | None = None,
    model_commit: str | None = None,
) -> Synthesis:
    """Load the training split and (for `diffusion` and `dsco`) the prior, and check the class sizes, before any
    unit is computed.

    In data-free mode SOURCE is optional and serves only the evaluation (None without it; synthesis reads no
    image): the classes are `cfg.labels`. A streamed split is read by the main process, which saves the
    `cfg.rows_per_class` rows of each class the run can use in `stream_to`; the other processes open those rows.

    Args:
        cfg (`ConcentrateConfig`): the run settings.
        state (`distributed.ProcessState`): this process (the prior goes to `state.device`).
        stream_to (`Path`): where a streamed split keeps the rows it reads (in the run folder).
        say (`Callable[[str], Any]`, *optional*): one-line notices, said by the main process only.
        model_commit (`str`, *optional*): the Hub commit the run recorded for `cfg.model`
            (`models.model_identity`); loaded instead of `cfg.model_revision`, so the weights are those recorded.

    Returns:
        `Synthesis`: what `compute_unit` needs.

    Raises:
        SourceError: the source cannot be used, or it has fewer than 2 classes.
        ConfigError: IPC (or NOpt's targets with doping) larger than the smallest class; invalid sampler settings.
        ModelError: the model cannot be loaded, or its classes do not cover the set's.
    """
    labels = list(cfg.labels) if cfg.data_free else None
    source = _load_train(cfg, labels, state, stream_to) if not cfg.data_free or cfg.source.source else None
    class_names = labels or source.class_names
    name = source.source_id if source is not None else "data-free class names"
    if len(class_names) < 2:
        raise SourceError(
            f"{name} [{cfg.source.split}] has {len(class_names)} class ({', '.join(map(repr, class_names))}); "
            "a classification set needs at least 2 classes (check --classes and --label-column)."
        )
    sampler = cfg.sampler()
    if cfg.method in REAL_METHODS:
        doping.check_ipc(source, cfg.ipc)
        return Synthesis(cfg, sampler, source, class_names, name, source.image_shape[0])
    prior, class_ids = load_model(cfg, sampler, class_names, name, source, state.device, model_commit)
    if cfg.torch_compile and not models.compile_denoiser(prior) and say is not None and state.is_main:
        say("--compile: ignored on the CPU (compiled kernels may round differently; CPU results stay put)")
    if cfg.method == "dsco" and not cfg.data_free:
        if cfg.num_doped >= 2:
            doping.check_ipc(source, cfg.num_doped, what=f"--doping-ratio={cfg.doping_ratio}", fix="lower it")
        else:  # NOpt's MMD needs a set of real targets in each class
            fix = "drop that class with --classes, or use --method diffusion or random"
            doping.check_ipc(source, 2, what="NOpt's MMD target", fix=fix)
    channels = source.image_shape[0] if source is not None else prior.image_shape[0]
    return Synthesis(cfg, sampler, source, class_names, name, channels, prior, class_ids)


def _load_train(
    cfg: ConcentrateConfig, class_names: list[str] | None, state: distributed.ProcessState, stream_to: Path
) -> SourceData:
    """The source's training split. A streamed one is read by the main process, which saves the
    `cfg.rows_per_class` rows of each class the run can use in `stream_to`; the other processes open those rows."""

    def load() -> SourceData:
        return load_source(
            cfg.source, class_names=class_names, stream_to=stream_to, per_class=cfg.rows_per_class, seed=cfg.seed
        )

    if not cfg.source.streaming:
        return load()
    with state.main_first():
        return load()


def load_model(
    cfg: ConcentrateConfig,
    sampler: SamplerConfig,
    class_names: list[str],
    name: str,
    source: SourceData | None = None,
    device: torch.device | None = None,
    revision: str | None = None,
) -> tuple[models.DiffusionPrior, list[int]]:
    """The diffusion prior of the run and the model's class id of each class, with errors before any heavy work.

    The prior is `cfg.model`, else the shipped Fashion-MNIST prior; a preset maps ImageNet classes by position or
    WordNet id (never by ambiguous name), otherwise classes map by name through `id2label` and `cfg.class_map`.

    Args:
        cfg (`ConcentrateConfig`): model, revision, class map, preset, gradient checkpointing.
        sampler (`SamplerConfig`): the weights' dtype, and the settings checked against the model.
        class_names (`list[str]`): the set's classes.
        name (`str`): what the classes come from, for messages.
        source (`SourceData`, *optional*): the training split (a preset reads its source classes).
        device (`torch.device`, *optional*): where the prior goes (default: CUDA if available).
        revision (`str`, *optional*): the Hub revision to load (default: `cfg.model_revision`), e.g. the commit
            `models.model_identity` resolved it to.

    Returns:
        `tuple[models.DiffusionPrior, list[int]]`: the prior on `device`, and a class id in `[0, K)` per class.

    Raises:
        ModelError: no `--model` and no shipped prior, or classes the model does not have.
        ConfigError: sampler settings the model cannot take (`models.check_sampler_args`).
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = models.resolve_dtype(sampler.dtype, device)
    class_map = models.read_class_map(cfg.class_map) if cfg.class_map else None
    if class_map is not None and cfg.source.classes is None:  # with --classes, a key may name a class left out
        models.check_class_map_keys(class_names, class_map)
    revision = revision or cfg.model_revision
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
        prior = models.load_prior(cfg.model, revision, device=device, dtype=dtype)
        presets.check_model(cfg.preset, cfg.model, prior.num_classes)
        class_ids = presets.class_ids(cfg.preset, class_names, source.source_classes if source else None)
    else:
        prior = models.load_prior(cfg.model, revision, device=device, dtype=dtype)
        class_ids = models.map_classes(class_names, prior.id2label, class_map)
    models.check_sampler_args(prior, sampler)
    if cfg.gradient_checkpointing:  # NOpt's backward recomputes activations instead of storing them
        prior.denoiser.enable_gradient_checkpointing()
    return prior, class_ids


def run_units(
    units: list[distributed.Unit],
    work: Synthesis,
    folder: Path,
    state: distributed.ProcessState,
    bar,
    say: Callable[[str], Any],
) -> None:
    """Compute this process's units that have no valid shard yet, writing each as a shard when it is done.

    Every process of the launch calls this (NOpt's trained features are shared through the run folder). A shard
    that cannot be read back is recomputed, with a warning.

    Args:
        units (`list[distributed.Unit]`): all units of the run (`distributed.plan_units`).
        work (`Synthesis`): what the units need (`prepare`).
        folder (`Path`): the run folder `OUT.partial` (`writer.prepare_run` made it).
        state (`distributed.ProcessState`): this process's rank and the launch's size.
        bar: the progress bar (`ui.progress_bar`).
        say (`Callable[[str], Any]`): one-line notices.

    Raises:
        OutputError: a shard cannot be written.
        ImageDecodeError: an image cannot be decoded (names the row).
    """
    done = sum(writer.shard_path(folder, unit.index).exists() for unit in units)
    if done and state.is_main:
        say(f"resuming {folder}: {done} of {len(units)} units done")
    snapshots = feature_snapshots(work, folder, state, say)
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
    method = work.cfg.method
    label = {"dsco": "NOpt + doping", "diffusion": "sample (diffusion)"}.get(method, f"select ({method})")
    what = f"{len(todo)} of {len(mine)} units" + (f" on rank {state.rank}" if state.world_size > 1 else "")
    task = bar.add_task(label, total=len(todo), info=what)
    for unit in todo:
        writer.write_shard(folder, unit.index, compute_unit(unit, work, snapshots))
        bar.update(task, advance=1, info=f"unit {unit.index} (classes {unit.classes[0]}-{unit.classes[-1]})")
    if not state.is_main:  # the main process has a progress bar; the others say what they did
        say(f"rank {state.rank} of {state.world_size}: {len(todo)} of {len(mine)} units computed")


def compute_unit(
    unit: distributed.Unit, work: Synthesis, snapshots: list[dict] | None = None
) -> writer.ConcentratedRows:
    """The rows of one work unit, in output order; the same whatever process computes it.

    Args:
        unit (`distributed.Unit`): the unit (its classes, or its slots for `diffusion`).
        work (`Synthesis`): what the units need.
        snapshots (`list[dict]`, *optional*): NOpt's trained feature snapshots (`--nopt-features trained`).

    Returns:
        `writer.ConcentratedRows`: the unit's rows, class by class (synthetic first, then real).
    """
    cfg = work.cfg
    if work.prior is None:  # random / herding: IPC real images of the unit's class
        rows = writer.ConcentratedRows()
        rows.add_real(*_real(work, unit.classes[0], cfg.ipc, cfg.method), unit.classes[0])
        return rows
    if cfg.method == "diffusion":
        return _synthesize(work, unit.slots())
    return _dsco(work, unit.classes, snapshots)


def feature_snapshots(
    work: Synthesis, folder: Path, state: distributed.ProcessState, say: Callable[[str], Any]
) -> list[dict] | None:
    """`--nopt-features trained`: the ConvNet-3 snapshots NOpt draws its feature maps from, trained once per run.

    The main process trains them (`kernels.train_feature_snapshots`) on `nopt.feature_images` real images per
    class (a seeded subset, in the denoiser's space) and saves them in the run folder (atomically); the other
    processes, and a resumed run, load that file, so every unit of every process uses the same networks.

    Returns:
        `list[dict]` or None: `nopt.feature_epochs` trunk `state_dict`s; None unless the run is a DsCo run with
        trained features and synthetic images.
    """
    cfg, source, prior = work.cfg, work.source, work.prior
    if cfg.method != "dsco" or cfg.nopt.features != "trained" or not cfg.num_synthetic:
        return None
    from safetensors.torch import load_file, save

    path = folder / writer.FEATURES_FILE
    if state.is_main and not path.exists():
        seed = derive_seed(cfg.seed, "nopt-features")
        channels, size = prior.image_shape[0], prior.image_shape[1]
        images, labels = [], []
        for k in range(source.num_classes):
            rows = np.sort(doping.select_random(source.class_index[k], cfg.nopt.feature_images, seed, k))
            pixels = to_model_range(decode_images(source, rows, channels, size))  # (r, C, H, W) in [-1, 1]
            images.append(_encoded(prior, pixels).cpu())
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


def _synthesize(work: Synthesis, slots: list[tuple[int, int]]) -> writer.ConcentratedRows:
    """Plain guided DDIM samples of the `(class k, slot j)` pairs `slots`; image j of class k has seed (seed, k, j)."""
    rows = writer.ConcentratedRows()
    batch = work.sampler.batch_size
    for start in range(0, len(slots), batch):
        chunk = slots[start : start + batch]
        seeds = [derive_seed(work.cfg.seed, k, j) for k, j in chunk]
        labels = [work.class_ids[k] for k, _ in chunk]
        images = models.sample(work.prior, labels, seeds, work.sampler)  # (b, C, H, W) in [-1, 1]
        for (k, _), seed, image in zip(chunk, seeds, to_uint8(images)):
            rows.add_synthetic([encode_png(image, work.channels)], [seed], k)
    return rows


def _dsco(work: Synthesis, classes: list[int], snapshots: list[dict] | None) -> writer.ConcentratedRows:
    """DsCo for the classes of one unit: NOpt synthesizes IPC - m images of each (the classes share the denoiser's
    batches), doping adds m = round(rho * IPC) real ones per class. Rows are class by class, synthetic first.

    With `cfg.oversample = K > 1` (generate-then-select), NOpt makes K (IPC - m) images of each class and herding in
    NOpt's feature space keeps the IPC - m whose set best matches the class's targets (`nopt.select_synthetic`);
    the kept images keep their seeds, so each row still names the noise it came from."""
    cfg, prior = work.cfg, work.prior
    rows = writer.ConcentratedRows()
    m, n = cfg.num_doped, cfg.num_synthetic
    seeds = {k: [derive_seed(cfg.seed, k, j) for j in range(cfg.nopt_per_class)] for k in classes}  # image j, class k
    targets = {k: _nopt_targets(work, k, n) for k in (classes if n else [])}
    batch = [
        NOptClass(work.class_ids[k], seeds[k], targets[k], phi_seed=derive_seed(cfg.seed, "phi", k))
        for k in (classes if n else [])
    ]
    synthetic = {}  # class k -> its n synthetic images (n, C, H, W) uint8
    if batch:
        images, _ = nopt_sample_classes(prior, batch, cfg.nopt, work.sampler, snapshots=snapshots)
        for k, class_images in zip(classes, images):  # (K n, C, H, W) in [-1, 1]
            if cfg.oversample > 1:
                candidates = _encoded(prior, class_images.to(prior.device))
                select_seed = derive_seed(cfg.seed, "select", k)
                kept = sorted(select_synthetic(candidates, targets[k], n, cfg.nopt, select_seed, snapshots))
                class_images, seeds[k] = class_images[kept], [seeds[k][j] for j in kept]
            synthetic[k] = to_uint8(class_images)
    for k in classes:
        if n:
            rows.add_synthetic([encode_png(image, work.channels) for image in synthetic[k]], seeds[k], k)
        if m:
            rows.add_real(*_real(work, k, m, cfg.doping_select, synthetic.get(k)), k)
    return rows


def _nopt_targets(work: Synthesis, class_k: int, n: int) -> torch.Tensor:
    """NOpt's targets for class k `(M, *prior.sample_shape)` in the denoiser's space: real images (a seeded subset
    of at most `nopt.targets`), or in data-free mode a pool of the model's own plain samples (`cfg.pool_for(n)`,
    the run's sampler at guidance `cfg.pool_guidance`)."""
    cfg, prior, source = work.cfg, work.prior, work.source
    if source is None or cfg.data_free:
        pool = cfg.pool_for(n)
        seeds = [derive_seed(cfg.seed, "pool", class_k, j) for j in range(pool)]
        pool_sampler = dataclasses.replace(work.sampler, guidance_scale=cfg.pool_guidance)
        images = models.sample(prior, [work.class_ids[class_k]] * pool, seeds, pool_sampler)  # (pool, C, H, W)
    else:
        rows = doping.select_random(source.class_index[class_k], cfg.nopt.targets, cfg.seed, class_k)
        channels, size = prior.image_shape[0], prior.image_shape[1]
        images = to_model_range(decode_images(source, np.sort(rows), channels, size))  # (M, C, H, W) in [-1, 1]
    return _encoded(prior, images)


def _real(work: Synthesis, k: int, num: int, how: str, synthetic: torch.Tensor | None = None):
    """`num` real images of class k chosen `how` (`doping.select`: "random", "herding" or "herding-independent",
    beside the class's synthetic images `(n, C, H, W)` uint8 when given): their stored values and source indices, as
    `ConcentratedRows.add_real` takes them."""
    cfg, source = work.cfg, work.source
    picks = doping.select(
        source,
        k,
        num,
        cfg.seed,
        how,
        pool=cfg.herding_pool,
        kernel=cfg.kernel,
        feature_seed=cfg.feature_seed,
        synthetic=synthetic,
    )
    return source.raw_images(picks), source.source_index(picks)


def _encoded(prior: models.DiffusionPrior, images: torch.Tensor) -> torch.Tensor:
    """Images `(N, C, H, W)` in `[-1, 1]` in the denoiser's space `(N, *prior.sample_shape)`, 64 at a time."""
    return torch.cat([prior.encode(batch) for batch in images.split(64)])
