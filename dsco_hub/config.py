"""Typed run configurations, validated in one place and saved beside every output.

Each dataclass is what one command needs. Field comments give the reason and the unit.
`validate()` raises `ConfigError` (one line: the option, the value, the rule, the fix)
before any heavy work starts. `to_dict()` is what goes into `dsco_config.json` and into the
dataset card's `dsco:` block. Model: nanoGPT `GPTConfig`, lerobot `configs/train.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsco_hub.errors import ConfigError, HubError

METHODS = ("random", "herding", "diffusion", "dsco")
DOPING_SELECT = ("herding", "herding-independent", "random")
REAL_METHODS = ("random", "herding")  # methods that select real images only
SCHEDULERS = ("ddim",)
DTYPES = ("auto", "float32", "float16", "bfloat16")
KERNELS = ("gaussian", "linear")
NOPT_FEATURES = ("random", "ensemble", "trained")  # NOpt feature spaces (`NOptConfig.features`)
# NOpt's default window is the whole trajectory up to this many synthetic images per class (`NOptConfig.window_for`)
FULL_WINDOW_MAX_N = 3
EVAL_MODELS = ("auto", "convnet3", "resnet18")
EVAL_LABELS = ("hard", "soft")  # the students' targets: the set's labels, or a teacher's soft labels
TEACHER_CONFIG = "teacher_config.json"  # the file that makes a folder a dsco-hub teacher (`dsco-hub teacher train`)


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed derived from a run seed and coordinates, e.g. `(seed, class, slot)`.

    Seeds never depend on batch position or process rank, so results are the same whatever
    the batch size or the number of processes (dsco-hub determinism rule; model: diffusers
    `randn_tensor` with per-sample generators).

    Args:
        *parts (`int` or `str`): the run seed followed by any coordinates.

    Returns:
        `int`: a seed in `[0, 2**63)`, stable across Python versions and platforms.
    """
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


# `--doping-ratio auto` dopes half of each class at this IPC (see `auto_doping_ratio`)
AUTO_DOPING_HALF_IPC = 10


def auto_doping_ratio(ipc: int) -> float:
    """The doping ratio `--doping-ratio auto` uses: `ipc / (ipc + 10)`, in (0, 1).

    DsCo's efficiency limit (arXiv 2603.27987, §3): synthetic images carry the generator's error, so their
    marginal value falls below that of well-chosen real images as IPC grows, and the share of real images should
    grow with it. Measured on Fashion-MNIST with the 2,400-step prior shipped until 2026-12-05 (572c2ad7dd07;
    `bench/results/baselines.md`, `bench/results/quality.md`): at IPC 1 doping changes nothing (0 real images:
    `round(1/11)`), at IPC 10 the best ratios are 0.25-0.75 (79.8 / 79.6 / 79.5 %, the rule's 10 gives 0.5), at
    IPC 50 all-real herding (85.8 %) beat rho 0.5 (85.3 %), which beat rho 0 (84.0 %), and the rule's 0.83 beat
    all three (86.2 %). The number of real images per class does not enter: no measurement showed an effect of it.

    Args:
        ipc (`int`): images per class, at least 1.

    Returns:
        `float`: the ratio, `ipc / (ipc + AUTO_DOPING_HALF_IPC)`.
    """
    return ipc / (ipc + AUTO_DOPING_HALF_IPC)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_finite(config: Any, prefix: str = "", options: tuple[str, ...] | None = None) -> None:
    """Refuse an infinite or NaN value in any float field of the dataclass `config` (range checks let `inf` through,
    and JSON cannot record it). The message names the option (`option_name(prefix + field)`), or the field itself
    (`TeacherConfig.lr`) when `options` lists the fields a command line sets and this is not one; and the default."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            named = option_name(prefix + f.name) if options is None or f.name in options else None
            default = f" (the default is {f.default})" if isinstance(f.default, (int, float)) else ""
            raise ConfigError(
                f"{named or f'{type(config).__name__}.{f.name}'}={value} must be a finite number{default}."
            )


@dataclass
class SourceConfig:
    """Where the source dataset comes from and which columns hold images and labels."""

    source: str | None = None  # Hub id, local `datasets` repo folder or `save_to_disk` folder; None = embedded default
    config_name: str | None = None  # the dataset's config (subset) name on the Hub
    split: str = "train"  # split the concentrated set is drawn from
    test_split: str | None = None  # split used for evaluation; None = "test", else "validation"
    revision: str | None = None  # Hub revision (branch, tag or commit) of the source
    image_column: str | None = None  # None = the column whose feature is `Image`
    label_column: str | None = None  # None = the column whose feature is `ClassLabel` (or "label")
    classes: tuple[str, ...] | None = None  # keep only these classes (names or label indices), in this order
    # read the split as a stream (`datasets` streaming): the stream is read until every class has the rows the run can
    # use, and only those are kept (in OUT.partial), so neither download nor disk follows the source's size
    streaming: bool = False
    # streaming: undecoded rows held in the seeded shuffle buffer (0 = the stream's order); 1000 is the default of
    # `IterableDataset.shuffle`, about 110 MB of ImageNet JPEGs
    shuffle_buffer: int = 1000

    def same_split_message(self) -> str | None:
        """The one-line refusal of a `test_split` that is `split`, the split the training rows come from (of the set,
        the random-real baseline or a teacher): None when they differ (or no test split is named)."""
        if self.test_split is None or self.test_split != self.split:
            return None
        return (
            f"--test-split={self.test_split!r} is the split the training rows come from (--split {self.split}), and "
            "the students are never tested on rows they could have trained on: pass another split."
        )


@dataclass
class EvalConfig:
    """The evaluation protocol of `docs/method.md` §6 (DC/DSA): train a student from scratch, test it."""

    model: str = "auto"  # "auto" = ConvNet-3 up to 64 px, ResNet-18 above
    runs: int = 3  # independent students (seeds derived from (seed, "eval", r)); mean and std are reported
    epochs: int = 300  # training epochs over the concentrated set (DC protocol: 300)
    lr: float = 0.01  # SGD learning rate, divided by 10 at half of the epochs
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    augment: bool = True  # DSA-style crop / scale / rotate / cutout (one per sample)
    flip: bool | None = None  # horizontal flip; None = on for RGB, off for grayscale (digits, scans)
    baseline: bool = True  # also evaluate a random real subset of the same IPC
    seed: int = 0  # seed of the students' initialisation and of the augmentation
    # "hard" = cross-entropy on the set's labels (DC/DSA); "soft" = KL divergence to a teacher's temperature-softened
    # predictions on each augmented batch (SRe2L, RDED): the ImageNet-scale protocol, not comparable with "hard"
    labels: str = "hard"
    teacher: str | None = None  # labels="soft": folder written by `dsco-hub teacher train`
    # labels="soft": softmax temperature T of student and teacher, the loss scaled by T^2 (Hinton et al. 2015);
    # 4 as RDED's evaluation code with mixup (its argument.py: 4 with mixup, 20 with cutmix, as SRe2L's -T 20 with
    # cutmix); the students here see no mixed images, only DSA's single transformations
    temperature: float = 4.0

    def validate(self) -> None:
        """Raise `ConfigError` on an out-of-range option."""
        _check(
            self.model in EVAL_MODELS, f"--eval-model={self.model!r} is unknown; use one of {', '.join(EVAL_MODELS)}."
        )
        _check(
            self.labels in EVAL_LABELS,
            f"--eval-labels={self.labels!r} is unknown; use hard (the set's labels) or soft (with --teacher DIR).",
        )
        _check(
            self.labels == "hard" or self.teacher is not None,
            "--eval-labels=soft needs a teacher: pass --teacher DIR (a folder written by `dsco-hub teacher train`).",
        )
        _check(
            self.labels == "soft" or self.teacher is None,
            f"--teacher={self.teacher!r} is only used with soft labels: add --eval-labels soft, or drop --teacher.",
        )
        _check(
            self.teacher is None or (Path(self.teacher).expanduser() / TEACHER_CONFIG).is_file(),
            f"--teacher={self.teacher!r} is not a teacher folder (no {TEACHER_CONFIG}); pass a folder written by "
            "`dsco-hub teacher train SOURCE --out DIR`.",
        )
        _check(
            self.temperature > 0 and math.isfinite(self.temperature),
            f"--temperature={self.temperature} must be a positive number; RDED uses 4 (with mixup).",
        )
        _check(self.runs >= 1, f"--runs={self.runs} must be at least 1; pass --runs 3 for the standard protocol.")
        _check(self.epochs >= 1, f"--epochs={self.epochs} must be at least 1; the protocol uses --epochs 300.")
        _check(
            self.batch_size >= 1, f"EvalConfig.batch_size={self.batch_size} must be at least 1; the protocol uses 256."
        )
        _check(self.lr > 0, f"EvalConfig.lr={self.lr} must be positive; the protocol uses 0.01.")
        _check_finite(self, "eval.")


@dataclass
class NOptConfig:
    """NOpt, noise optimization during DDIM sampling (`docs/method.md` §3)."""

    # fraction of the DDIM steps, counted from the start (t = T), where the noise is optimized; None = `window_for(n)`:
    # the whole trajectory (1.0) for up to FULL_WINDOW_MAX_N synthetic images per class, the first half (0.5) for more
    window: float | None = None
    iters: int = 1  # gradient steps on x_t per optimized DDIM step
    lr: float = 0.05  # step length as a fraction of ||x_t|| per image (normalised gradient step)
    targets: int = 500  # real images per class whose features are the MMD target (a seeded subset)
    kernel: str = "gaussian"  # multi-bandwidth Gaussian (median heuristic) or linear (mean matching)
    width: int = 128  # channels of the random ConvNet-3 feature map, resampled at every iteration
    # targets embedded per iteration: a fresh seeded subset of the `targets` (0 = all of them), the real batch that
    # Zhao and Bilen's distribution matching draws per iteration; None = `batch_for(n)`: max(128, 10 n), all for n = 1
    target_batch: int | None = None
    # NOpt's feature space: "random" (a fresh random ConvNet-3 per iteration, distribution matching), "ensemble"
    # (`ensemble` fresh random ConvNet-3s per iteration, features concatenated), or "trained" (ConvNet-3 trunks
    # trained on the real images, one snapshot per epoch, one drawn per iteration: improved distribution matching)
    features: str = "random"
    ensemble: int = 4  # random maps per iteration with features="ensemble"
    feature_epochs: int = 10  # features="trained": training epochs, one snapshot each
    feature_images: int = 100  # features="trained": real images per class the network is trained on

    def validate(self) -> None:
        """Raise `ConfigError` on an out-of-range option."""
        _check_finite(self, "nopt.")
        _check(
            self.window is None or 0 <= self.window <= 1,
            f"--nopt-window={self.window} must be in [0, 1] (fraction of the steps).",
        )
        _check(
            self.features in NOPT_FEATURES,
            f"--nopt-features={self.features!r} is unknown; use one of {', '.join(NOPT_FEATURES)}.",
        )
        _check(self.ensemble >= 1, f"--nopt-ensemble={self.ensemble} must be at least 1 (random maps per iteration).")
        _check(self.feature_epochs >= 1, f"--nopt-feature-epochs={self.feature_epochs} must be at least 1.")
        _check(self.feature_images >= 1, f"--nopt-feature-images={self.feature_images} must be at least 1.")
        _check(self.iters >= 0, f"--nopt-iters={self.iters} must be >= 0 (0 = plain sampling).")
        _check(self.lr > 0, f"--nopt-lr={self.lr} must be positive; e.g. --nopt-lr 0.05.")
        _check(self.targets >= 2, f"--nopt-targets={self.targets} must be at least 2 (the MMD needs a set).")
        _check(self.kernel in KERNELS, f"--kernel={self.kernel!r} is unknown; use one of {', '.join(KERNELS)}.")
        _check(self.width >= 1, f"--nopt-width={self.width} must be at least 1.")
        _check(
            self.target_batch is None or self.target_batch == 0 or self.target_batch >= 2,
            f"--nopt-target-batch={self.target_batch} must be at least 2 (the MMD needs a set), or 0 for all targets.",
        )

    def batch_for(self, n: int) -> int:
        """Targets embedded per iteration for `n` synthetic images of a class: `target_batch`, else all (0) for
        n = 1 and max(128, 10 n) from n = 2 on (all of them once that reaches the `targets`).

        Embedding all 500 targets with each iteration's fresh feature map dominates NOpt's cost on small priors:
        6.1x plain sampling at IPC 10 against 2.8x with 128, which scored as well (79.4 % against 78.8 % with all
        500: bench/results/baselines.jsonl line 27 at 985f36d). The
        target side of the MMD needs many more samples than the n synthetic ones: at IPC 50, 128 targets lost
        0.5 points to all 500 (83.5 % against 84.0 %), at 2.9x the cost of plain sampling. A single image's MMD
        has no repulsion term: its gradient only climbs the targets' kernel density, which a subset estimates
        noisily; 128 lost 1.3 points at IPC 1 over 3 seeds, where all targets cost 13 s per class
        (bench/results/baselines.md, defaults_checks.md, nopt_cost*.md).
        """
        if self.target_batch is not None:
            return self.target_batch
        return 0 if n == 1 else max(128, 10 * n)

    def window_for(self, n: int) -> float:
        """Fraction of the DDIM steps, in [0, 1], where NOpt optimizes the noise of a class's `n >= 0` synthetic
        images: `window`, else 1.0 (every step) for 1 <= n <= `FULL_WINDOW_MAX_N` (3) and 0.5 (the first half,
        from t = T) otherwise.

        The late, low-noise steps move each image toward the dense centre of its class in feature space. With many
        images per class that pulls them together and the set loses its spread; with few there is little spread to
        lose. On the shipped prior (26c6b4bf4c62), over set seeds 0-2, window 1.0 against 0.5: IPC 1 66.0 ± 0.8
        against 63.8 ± 1.8 % (above herding on every seed; data-free 66.9 and 65.9 against 64.2 and 62.5 on seeds 0
        and 1: bench/results/nopt_window_ipc1.md), IPC 2 71.6 against 70.2, IPC 3 73.3 against 72.3, IPC 4 74.3
        against 74.5 (a tie, so the cheaper window), IPC 5 75.0 against 76.6 (bench/results/nopt_window_small_ipc.md),
        IPC 10 77.0 against 79.2 (bench/results/nopt_window.md). The whole window costs about twice NOpt's time.
        """
        if self.window is not None:
            return self.window
        return 1.0 if 1 <= n <= FULL_WINDOW_MAX_N else 0.5


@dataclass(frozen=True)
class SamplerConfig:
    """Guided DDIM sampling settings, one value for every sampler of a run: plain sampling (`models.sample`), NOpt
    (`nopt.nopt_sample_classes`) and the data-free target pool (with the pool's own guidance scale).

    Built once from the run's options (`ConcentrateConfig.sampler()`, `PriorTrainConfig`'s preview grid) and passed
    through; frozen, so a step cannot change it for the next one. The defaults are those of `dsco-hub concentrate`.
    """

    steps: int = 25  # DDIM steps
    guidance_scale: float = 2.0  # classifier-free guidance scale w (1 = no guidance)
    eta: float = 0.0  # DDIM stochasticity (0 = deterministic)
    batch_size: int = 64  # images per denoiser batch (memory only: results do not depend on it)
    dtype: str = "auto"  # denoiser dtype on load; auto = float32 on CPU, float16 on CUDA (`models.resolve_dtype`)
    scheduler: str = "ddim"  # sampler; NOpt extends our own DDIM loop

    def validate(self) -> None:
        """Raise `ConfigError` on an out-of-range option (the model-dependent checks: `models.check_sampler_args`)."""
        _check_finite(self)
        _check(self.steps >= 1, f"--steps={self.steps} must be at least 1; e.g. --steps 25.")
        _check(self.guidance_scale >= 0, f"--guidance-scale={self.guidance_scale} must be >= 0; 1 disables guidance.")
        _check(0 <= self.eta <= 1, f"--eta={self.eta} must be in [0, 1] (0 = deterministic DDIM).")
        _check(
            self.scheduler in SCHEDULERS,
            f"--scheduler={self.scheduler!r} is unknown; use one of {', '.join(SCHEDULERS)}.",
        )
        _check(self.batch_size >= 1, f"--sample-batch-size={self.batch_size} must be at least 1.")
        _check(self.dtype in DTYPES, f"--dtype={self.dtype!r} is unknown; use one of {', '.join(DTYPES)}.")


@dataclass
class HubConfig:
    """Where and how a set is published on (or read from) the Hub: `--push`, `dsco-hub push`, `evaluate USER/NAME`.

    The token is never saved: `to_dict()` drops it and its `repr` hides it.
    """

    repo_id: str | None = None  # USER/NAME (a bare NAME goes under your user); None = <user>/<source>-<method>-ipc<N>
    private: bool = False  # create the repo private (applies only when the repo is created)
    revision: str | None = None  # branch to push to (created from main when missing); None = main
    create_pr: bool = False  # open a pull request instead of committing to the branch
    commit_message: str | None = None  # message of the (last) commit; None = a summary of what is uploaded
    token: str | None = field(default=None, repr=False)  # None = HF_TOKEN, else the stored login (`hf auth login`)
    endpoint: str | None = None  # Hub URL; None = HF_ENDPOINT, else https://huggingface.co
    max_retries: int = 5  # retries of a call huggingface_hub sends once (commit, create_repo...) on 429/5xx/drop
    retry_wait: float = 2.0  # seconds before the first retry, doubled at each retry (Retry-After wins when given)
    max_wait: float = 600.0  # longest wait in seconds; a longer Retry-After stops the push (rerun it later)
    commit_max_files: int = 50  # files per commit: the Hub limits commits per hour, never one commit per class
    commit_max_bytes: int = 5 << 30  # bytes per commit (parquet shards are at most ~500 MB each)

    def validate(self) -> None:
        """Raise `ConfigError` on an out-of-range option (the repo id format is checked by `check_repo_id`)."""
        _check(self.max_retries >= 0, f"max_retries={self.max_retries} must be >= 0 (0 = no retry).")
        _check(self.retry_wait >= 0, f"retry_wait={self.retry_wait} must be >= 0 seconds.")
        _check(self.commit_max_files >= 1, f"commit_max_files={self.commit_max_files} must be at least 1.")
        _check(self.commit_max_bytes >= 1, f"commit_max_bytes={self.commit_max_bytes} must be at least 1.")
        _check(
            self.endpoint is None or self.endpoint.startswith(("http://", "https://")),
            f"--endpoint={self.endpoint!r} must be an http(s) URL, e.g. --endpoint https://huggingface.co.",
        )

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON data, without the token."""
        data = dataclasses.asdict(self)
        data.pop("token")
        return data


REPO_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")  # a repo's user or name on the Hub
MAX_NAME_LENGTH = 96  # the Hub's limit on a repo name


def is_commit_sha(revision: str | None) -> bool:
    """Whether `revision` is a full commit sha (40 lowercase hex digits), as the Hub and its cache name commits.

    Args:
        revision (`str`, *optional*): a branch, tag or commit (None: no revision given).

    Returns:
        `bool`: True only for a full sha; a branch, a tag, an abbreviated sha or None give False.
    """
    return re.fullmatch(r"[0-9a-f]{40}", revision or "") is not None


def check_repo_id(repo_id: str, option: str = "--repo-id") -> None:
    """Raise `HubError` unless `repo_id` is `NAME` or `USER/NAME` as the Hub accepts them.

    Args:
        repo_id (`str`): the repo id to check.
        option (`str`, *optional*, defaults to "--repo-id"): the argument named in the message.

    Raises:
        HubError: the id has more than one "/", an empty part, characters other than letters, digits, "-", "_" and
            ".", "--" or "..", or a name longer than 96 characters.
    """
    parts = repo_id.split("/")
    ok = 1 <= len(parts) <= 2 and all(
        REPO_NAME_RE.match(p) and "--" not in p and ".." not in p and len(p) <= MAX_NAME_LENGTH for p in parts
    )
    if not ok or repo_id.endswith(".git"):
        raise HubError(
            f"{option}={repo_id!r} is not a valid dataset repo id; use USER/NAME with letters, digits, '-', '_' and "
            f"'.' (no '--' or '..', at most {MAX_NAME_LENGTH} characters), e.g. {option} alice/mnist-herding-ipc10."
        )


def parse_set_ref(target: str) -> tuple[str, str | None]:
    """Split `USER/NAME[@REVISION]` into the repo id and the revision (None when not given)."""
    repo_id, _, revision = target.partition("@")
    return repo_id, (revision or None)


def default_repo_id(user: str, dsco: dict) -> str:
    """`<user>/<source-name>-<method>-ipc<IPC>`, the name of a set pushed without `--repo-id`.

    Args:
        user (`str`): the namespace (the token's user).
        dsco (`dict`): the set's `dsco:` block (source id, method, ipc).

    Returns:
        `str`: e.g. "alice/fashion-mnist-subset-herding-ipc50": the source's last path part without a parenthesised
        note, characters other than letters, digits, ".", "_" turned into "-", cut to the Hub's 96 characters.
    """
    stem = str(dsco["source"]["id"]).rstrip("/").replace("\\", "/").split("/")[-1]
    stem = re.sub(r"\s*\(.*?\)\s*", "", stem)  # "fashion-mnist-subset (embedded)"
    slug = re.sub(r"[^A-Za-z0-9._]+", "-", stem).strip("-._") or "dataset"
    slug = re.sub(r"\.{2,}", ".", slug)
    suffix = f"-{dsco['method']}-ipc{dsco['ipc']}"
    return f"{user}/{slug[: MAX_NAME_LENGTH - len(suffix)].rstrip('-._')}{suffix}"


@dataclass
class ConcentrateConfig:
    """Everything `dsco-hub concentrate` needs; saved as `dsco_config.json` and in the card."""

    source: SourceConfig = field(default_factory=SourceConfig)
    preset: str | None = None  # "imagenet-1k", "imagenette" or "imagewoof": source, model and class map (presets.py)
    method: str = "dsco"  # "dsco" (NOpt + doping), "diffusion" (plain sampling), "random" / "herding" (real images)
    ipc: int = 10  # images per class in the output (synthetic and real)
    seed: int = 0  # run seed; every random choice derives from (seed, class, slot)
    kernel: str = "gaussian"  # MMD kernel of herding: multi-bandwidth Gaussian or linear (mean matching)
    feature_seed: int = 0  # seed of the fixed random ConvNet-3 feature map used by herding
    herding_pool: int = 5000  # real candidates per class considered by herding (a seeded random subset)
    model: str | None = None  # diffusion prior (Hub id or folder); None = the shipped prior if the classes match
    model_revision: str | None = None  # Hub revision of the model
    class_map: str | None = None  # JSON file mapping source class names to model labels or ids
    steps: int = 25  # DDIM steps
    guidance_scale: float = 2.0  # classifier-free guidance scale w (1 = no guidance)
    eta: float = 0.0  # DDIM stochasticity (0 = deterministic)
    scheduler: str = "ddim"  # sampler; NOpt extends our own DDIM loop
    sample_batch_size: int = 64  # images per denoiser batch (memory only: results do not depend on it)
    dtype: str = "auto"  # denoiser dtype; auto = float32 on CPU, float16 on CUDA
    nopt: NOptConfig = field(default_factory=NOptConfig)  # DsCo's noise optimization
    gradient_checkpointing: bool = False  # recompute denoiser activations in NOpt's backward: less memory, same images
    torch_compile: bool = False  # `torch.compile` the denoiser on CUDA (ignored on the CPU: its results must not move)
    # rho: real images per class = round(rho * IPC), chosen by doping_select (dsco only); "auto" = `auto_doping_ratio`.
    # 0 by default though auto scored best on the shipped prior: the rule is measured on that one small prior, and
    # with a strong one (DiT-XL/2) it would make `--ipc 50` 42 real images per class and 8 synthetic (README)
    doping_ratio: float | str = 0.0
    # how doped real images are chosen: "herding" (MMD-greedy, continued from the class's synthetic images: joint
    # doping), "herding-independent" (MMD-greedy from zero, blind to the synthetic images) or "random"
    doping_select: str = "herding"
    data_free: bool = False  # only class names are known: no real image is read (targets = the model's own samples)
    labels: tuple[str, ...] | None = None  # class names in data-free mode, mapped to the model through id2label
    pool_size: int | None = None  # data-free target pool per class; None = max(4 x synthetic per class, 256)
    # classifier-free guidance of the data-free pool's samples; None = `guidance_scale`. The pool stands in for the
    # class's real images, and guidance > 1 trades their diversity for fidelity (1 = the model's own p(x | class));
    # on the 2,400-step prior (572c2ad7dd07) 2.0 beat 1.0 and 3.0 at IPC 10 (bench/results/defaults_checks.md)
    pool_guidance_scale: float | None = None
    # generate-then-select (dsco): NOpt synthesizes `oversample` x the synthetic images of each class, and herding in
    # NOpt's feature space keeps those whose set best matches the class's targets (1 = no selection). 1 is measured
    # best on the 2,400-step prior (572c2ad7dd07) at IPC 10: 79.4 against 78.4 (K = 2) and 78.0 (K = 4)
    # (bench/results/quality.md)
    oversample: int = 1
    out: str = "dsco-out"  # output folder (a `datasets` repo)
    overwrite: bool = False  # replace a set dsco-hub wrote in `out` (never a folder it did not write)
    evaluate: bool = True  # run the evaluation protocol and write the results into the card
    # the evaluation's test source when SOURCE has no test split (same classes; its test split is used): the
    # students are never tested on the rows they could have been trained on. None = SOURCE's own test split
    test_dataset: str | None = None
    eval: EvalConfig = field(default_factory=EvalConfig)
    push: HubConfig | None = None  # publish the finished folder on the Hub (`--push`); None = do not push

    @property
    def rho(self) -> float:
        """The doping ratio in [0, 1]: `doping_ratio`, or `auto_doping_ratio(ipc)` for "auto" (0 when data-free)."""
        if self.doping_ratio == "auto":
            return 0.0 if self.data_free else auto_doping_ratio(self.ipc)
        return float(self.doping_ratio)

    @property
    def num_doped(self) -> int:
        """Real images doping adds per class: `round(rho x ipc)`, in [0, ipc].

        DsCo (arXiv 2603.27987) dopes `m = round(rho x IPC)` real images per class (Python's round, half to even:
        0 at IPC 1 and rho 0.5).
        """
        return round(self.rho * self.ipc)

    @property
    def num_synthetic(self) -> int:
        """Synthetic images per class of a DsCo run: `ipc - num_doped`, in `[0, ipc]`."""
        return self.ipc - self.num_doped

    @property
    def nopt_per_class(self) -> int:
        """Images NOpt makes per class, >= 0: `oversample x num_synthetic` with --method dsco, else 0 (no NOpt)."""
        return self.oversample * self.num_synthetic if self.method == "dsco" else 0

    @property
    def nopt_window(self) -> float:
        """NOpt's window as this run resolves it, in [0, 1]: `nopt.window_for(nopt_per_class)`."""
        return self.nopt.window_for(self.nopt_per_class)

    def pool_for(self, n: int) -> int:
        """Data-free target pool per class for `n` synthetic images: `pool_size`, else `max(4 n, 256)`.

        The floor keeps small IPCs from matching a handful of samples: data-free DsCo at IPC 1 on Fashion-MNIST
        scored 53.6 % with a pool of 4, 62.0 % with 64, 63.8 % with 128 and 64.5 % with 256
        (bench/results/baselines.md); at IPC 10 75.7 % with 64 (baselines.jsonl line 28 at 985f36d), 76.2 % with 128
        and 76.5 % with 256 (bench/results/defaults_checks.md). The pool costs `pool_for(n)` plain samples per
        class (`--dry-run` counts them).
        """
        return self.pool_size or max(4 * n, 256)

    @property
    def rows_per_class(self) -> int:
        """Real images per class the run can draw from (>= IPC): what `--streaming` keeps of each class.

        The largest of: IPC (random selection, and the random-real baseline of the evaluation), `herding_pool`
        (herding, and doping by herding), and NOpt's `targets` (data-accessible DsCo). Every selection then draws
        from these rows, which sample the class as well as the stream is shuffled (`shuffle_buffer`).
        """
        needed = [self.ipc]
        if self.method == "herding" or (self.method == "dsco" and self.num_doped and self.doping_select != "random"):
            needed.append(self.herding_pool)
        if self.method == "dsco" and not self.data_free:
            needed.append(self.nopt.targets)
        return max(needed)

    def sampler(self) -> SamplerConfig:
        """The run's sampler settings (steps, guidance, eta, batch size, dtype, scheduler) as one `SamplerConfig`."""
        same = ("steps", "guidance_scale", "eta", "dtype", "scheduler")  # options named as SamplerConfig's fields
        return SamplerConfig(batch_size=self.sample_batch_size, **{name: getattr(self, name) for name in same})

    @property
    def pool_guidance(self) -> float:
        """Classifier-free guidance scale of the data-free pool's samples: `pool_guidance_scale`, else the run's."""
        return self.guidance_scale if self.pool_guidance_scale is None else self.pool_guidance_scale

    def validate(self) -> None:
        """Raise `ConfigError` on an out-of-range option (class-size checks happen once the source is loaded)."""
        _check_finite(self)
        _check(self.method in METHODS, f"--method={self.method!r} is unknown; use one of {', '.join(METHODS)}.")
        _check(self.ipc >= 1, f"--ipc={self.ipc} must be at least 1 (images per class); e.g. --ipc 10.")
        _check(self.kernel in KERNELS, f"--kernel={self.kernel!r} is unknown; use one of {', '.join(KERNELS)}.")
        _check(self.herding_pool >= 1, f"--herding-pool={self.herding_pool} must be at least 1.")
        _check(
            self.source.classes is None or len(self.source.classes) > 0,
            "--classes names no class; list names or label indices (e.g. --classes 'Coat,3'), or omit it for all.",
        )
        _check(
            self.model is None or bool(self.model.strip()),
            f"--model={self.model!r} is empty; pass a Hub id or a prior folder, or omit it for the shipped prior.",
        )
        same_split = self.source.same_split_message()
        if self.evaluate and same_split:  # the evaluation's test split
            raise ConfigError(same_split)
        for option, value in (("--test-dataset", self.test_dataset), ("--teacher", self.eval.teacher)):
            _check(
                self.evaluate or value is None,
                f"{option}={value!r} applies to the evaluation, which --no-eval skips; drop one of them.",
            )
        _check(
            self.source.shuffle_buffer >= 0,
            f"--shuffle-buffer={self.source.shuffle_buffer} must be >= 0 (rows; 0 keeps the stream's order).",
        )
        self.sampler().validate()
        _check(self.seed >= 0, f"--seed={self.seed} must be non-negative.")
        _check(
            self.doping_ratio == "auto" or (not isinstance(self.doping_ratio, str) and 0 <= self.doping_ratio <= 1),
            f"--doping-ratio={self.doping_ratio} must be in [0, 1] (0 = all synthetic, 1 = all real) or auto.",
        )
        _check(
            self.doping_ratio == 0 or self.method == "dsco",
            f"--doping-ratio={self.doping_ratio} needs --method dsco (doping mixes real images into NOpt's set).",
        )
        _check(
            self.doping_select in DOPING_SELECT,
            f"--doping-select={self.doping_select!r} is unknown; use one of {', '.join(DOPING_SELECT)}.",
        )
        if self.data_free:
            _check(
                self.method in ("dsco", "diffusion"),
                f"--data-free works with --method dsco or diffusion, not {self.method!r} (it reads no real image).",
            )
            _check(
                self.doping_ratio in (0, "auto"),
                f"--doping-ratio={self.doping_ratio}: doping needs real images, none with --data-free; use 0.",
            )
            _check(
                bool(self.labels), "--data-free needs class names: pass --labels 'name1,name2,...' or --labels-file."
            )
            shown = ",".join(self.labels)
            _check(all(n.strip() for n in self.labels), f"--labels={shown!r} holds an empty name.")
            _check(
                len(self.labels) >= 2,
                f"--labels={shown!r} names {len(self.labels)} class; a classification set needs at least 2 classes.",
            )
            seen: dict[str, str] = {}
            for name in self.labels:
                key = name.strip().casefold()
                _check(
                    key not in seen,
                    f"--labels={shown!r} names {seen.get(key)!r} and {name!r}, the same class (names are matched "
                    "case-insensitively); list each class once.",
                )
                seen[key] = name
        _check(self.pool_size is None or self.pool_size >= 2, f"--pool-size={self.pool_size} must be at least 2.")
        for option, value in (("--labels", self.labels), ("--pool-size", self.pool_size)):
            _check(
                self.data_free or value is None,
                f"{option} applies to data-free runs only (the real classes come from SOURCE otherwise); add "
                f"--data-free, or drop {option}{' (--classes picks source classes)' if option == '--labels' else ''}.",
            )
        _check(
            self.data_free or self.pool_guidance_scale is None,
            "--pool-guidance-scale applies to data-free runs only (their target pool); add --data-free, or drop it.",
        )
        _check(self.feature_seed >= 0, f"--feature-seed={self.feature_seed} must be non-negative.")
        _check(
            self.preset is None or self.class_map is None,
            f"--class-map applies to classes matched by name; {self.preset} maps ImageNet classes by position or "
            "WordNet id: drop --class-map.",
        )
        _check(self.oversample >= 1, f"--oversample={self.oversample} must be at least 1 (1 = no selection).")
        _check(
            self.oversample == 1 or self.method == "dsco",
            f"--oversample={self.oversample} needs --method dsco (it selects among NOpt's images).",
        )
        _check(
            not (self.data_free and self.nopt.features == "trained"),
            "--nopt-features=trained trains on real images, which --data-free does not read; use random or ensemble.",
        )
        _check(
            self.pool_guidance_scale is None or self.pool_guidance_scale >= 0,
            f"--pool-guidance-scale={self.pool_guidance_scale} must be >= 0; 1 disables guidance.",
        )
        if self.method == "dsco":
            self.nopt.validate()
        self.eval.validate()
        if self.push is not None:
            self.push.validate()

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-serialisable data (never the Hub token), with NOpt's window resolved
        (`nopt_window`): runs saved before its default depended on n recorded 0.5, and still compare equal."""
        data = dataclasses.asdict(self)
        data["nopt"]["window"] = self.nopt_window
        if self.push is not None:
            data["push"] = self.push.to_dict()
        return data


@dataclass
class TeacherConfig:
    """`dsco-hub teacher train`: the teacher network of the soft-label evaluation (`EvalConfig.labels == "soft"`).

    The network is the student the evaluation's rule chooses, trained with the students' SGD settings and
    augmentation (the defaults of `EvalConfig`) on the source's training split; saved with `teacher_config.json`.
    """

    source: SourceConfig = field(default_factory=SourceConfig)
    out: str = "teacher-out"  # output folder: model.safetensors, teacher_config.json, README.md (model card)
    model: str = "auto"  # "auto" = ConvNet-3 up to 64 px, ResNet-18 above (the students' rule)
    epochs: int = 30  # passes over the training images; the learning rate is divided by 10 from epochs // 2
    # train on a seeded random subset of this many images (None = the whole split): one CPU thread trains
    # ConvNet-3 on about 10,000 Fashion-MNIST images a minute
    max_images: int | None = None
    seed: int = 0  # seed of the initialisation, the subset, the order and the augmentation
    lr: float = 0.01  # SGD learning rate (the students'), divided by 10 at half of the epochs
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    augment: bool = True  # DSA-style augmentation, as the students
    flip: bool | None = None  # horizontal flips; None = on for RGB, off for grayscale

    def validate(self) -> None:
        """Raise `ConfigError` on an out-of-range option."""
        _check_finite(self, options=())  # none of its floats is an option of `teacher train`
        _check(
            self.model in EVAL_MODELS, f"--eval-model={self.model!r} is unknown; use one of {', '.join(EVAL_MODELS)}."
        )
        _check(self.epochs >= 1, f"--epochs={self.epochs} must be at least 1; e.g. --epochs 30.")
        _check(
            self.max_images is None or self.max_images >= 1,
            f"--max-images={self.max_images} must be at least 1; omit it to train on the whole split.",
        )
        _check(self.seed >= 0, f"--seed={self.seed} must be non-negative.")
        same_split = self.source.same_split_message()
        if same_split:  # the teacher's test split
            raise ConfigError(same_split)
        _check(self.lr > 0, f"--lr={self.lr} must be positive; the students use 0.01.")
        _check(self.batch_size >= 1, f"--batch-size={self.batch_size} must be at least 1.")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-serialisable data."""
        return dataclasses.asdict(self)


MAX_PRIOR_RESOLUTION = 512  # pixels: `prior train` makes pixel-space UNets; larger images call for a latent model


@dataclass
class PriorTrainConfig:
    """`dsco-hub prior train`: a class-conditional pixel-space `UNet2DModel` trained as a DDPM.

    The defaults are the shipped Fashion-MNIST prior (1.06 M parameters, attention-free); its step time per
    precision on 2 CPU cores is in bench/results/prior_precision.md.
    """

    source: SourceConfig = field(default_factory=SourceConfig)
    out: str = "prior-out"  # output folder: a diffusers model folder with `id2label` and a model card
    resolution: int | None = None  # pixels; None = the source's size when it is a multiple of 4 and <= 64, else 32
    channels: int | None = None  # 1 or 3; None = 1 when the source is grayscale, else 3
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # UNet widths per level (one 2x downsample between levels)
    layers_per_block: int = 1
    norm_num_groups: int = 16
    max_steps: int = 2400  # optimizer steps
    batch_size: int = 128
    lr: float = 1e-3  # AdamW peak learning rate (linear warm-up, cosine decay)
    warmup_steps: int = 200
    label_dropout: float = 0.1  # probability of replacing the label by the null class (classifier-free guidance)
    # Min-SNR-gamma loss weighting (Hang et al., ICCV 2023): each sample's squared error is weighted by
    # min(SNR(t), gamma) / SNR(t), which caps the weight of the low-noise steps; None = the plain DDPM loss
    snr_gamma: float | None = None
    ema_power: float = 0.75  # EMA warm-up exponent: decay = 1 - (1 + step) ** -power, capped at ema_max_decay
    ema_max_decay: float = 0.999
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    flip: bool = False  # random horizontal flips of training images
    # "auto", "no", "bf16" or "fp16" (accelerate's autocast; weights stay fp32). "auto" = bf16 on GPUs and CPUs with
    # native bf16, fp16 with a gradient scaler on older GPUs, float32 on other CPUs (where bf16 autocast is about 10x
    # slower); saved resolved in prior_config.json, and a resumed run keeps it
    mixed_precision: str = "auto"
    checkpoint_every: int = 200  # steps between resumable checkpoints
    seed: int = 0
    sample_steps: int = 25  # DDIM steps of the samples grid in the model card
    sample_guidance: float = 2.0  # guidance scale of the samples grid

    def validate(self) -> None:
        """Raise `ConfigError` on an out-of-range option (the batch against the data: `check_batch_size`)."""
        _check_finite(self, options=("lr", "label_dropout", "snr_gamma"))
        _check(self.max_steps >= 1, f"--max-steps={self.max_steps} must be at least 1.")
        _check(self.batch_size >= 1, f"--batch-size={self.batch_size} must be at least 1.")
        _check(0 <= self.seed < 2**32, f"--seed={self.seed} must be in [0, 2^32) (numpy's and torch's seed range).")
        _check(self.layers_per_block >= 1, f"--layers-per-block={self.layers_per_block} must be at least 1; use 1.")
        _check(self.norm_num_groups >= 1, f"--norm-num-groups={self.norm_num_groups} must be at least 1; use 16.")
        widths = ",".join(map(str, self.block_out_channels))
        _check(
            len(self.block_out_channels) >= 1 and min(self.block_out_channels) >= 1,
            f"--block-out-channels={widths!r} must list positive widths, one per level; e.g. 32,64,64.",
        )
        _check(0 <= self.label_dropout < 1, f"--label-dropout={self.label_dropout} must be in [0, 1); use 0.1.")
        _check(self.lr > 0, f"--lr={self.lr} must be positive.")
        _check(
            self.snr_gamma is None or self.snr_gamma > 0,
            f"--snr-gamma={self.snr_gamma} must be positive; use 5 (Min-SNR-gamma's value) or leave it out.",
        )
        _check(self.channels in (None, 1, 3), f"--channels={self.channels} must be 1 or 3.")
        bad = [w for w in self.block_out_channels if w % self.norm_num_groups]
        _check(
            not bad,
            f"--block-out-channels={','.join(map(str, self.block_out_channels))}: width {bad[0] if bad else 0} is not "
            f"divisible by --norm-num-groups={self.norm_num_groups}; use multiples of it.",
        )
        levels = len(self.block_out_channels)
        if self.resolution is not None:
            _check(
                1 <= self.resolution <= MAX_PRIOR_RESOLUTION,
                f"--resolution={self.resolution} must be in [1, {MAX_PRIOR_RESOLUTION}] pixels (a pixel-space prior); "
                "for larger images use a latent model such as facebook/DiT-XL-2-256 with --model.",
            )
            _check(
                self.resolution % 2 ** (levels - 1) == 0,
                f"--resolution={self.resolution} must be a multiple of {2 ** (levels - 1)} for a {levels}-level UNet; "
                f"e.g. --resolution {max(1, self.resolution // 2 ** (levels - 1)) * 2 ** (levels - 1)}.",
            )
        _check(
            self.mixed_precision in ("auto", "no", "bf16", "fp16"),
            f"--mixed-precision={self.mixed_precision!r} must be 'auto', 'no', 'bf16' or 'fp16'; use auto.",
        )
        _check(self.checkpoint_every >= 1, f"--checkpoint-every={self.checkpoint_every} must be at least 1.")

    def check_batch_size(self, num_images: int) -> None:
        """Raise `ConfigError` when a batch would hold more images than the training split has (`num_images`): batches
        are drawn with replacement, so it would only repeat images at the cost of memory."""
        _check(
            self.batch_size <= num_images,
            f"--batch-size={self.batch_size} is larger than the {num_images:,} training images of the source; "
            f"pass --batch-size {min(128, num_images)} or less.",
        )

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-serialisable data."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# Which settings a saved run must share with a rerun (resume, and the "already complete" no-op)
# ---------------------------------------------------------------------------------------------------------------

# Never compared: where the set goes, whether an existing one may be replaced, the upload, and the denoiser batch
# size, gradient checkpointing and torch.compile (memory and speed only: every image has its own generator, so rows
# do not depend on them beyond GPU float rounding, and a resume may change them after running out of memory or
# into a compiler error).
_NOT_COMPARED = (
    "out",
    "overwrite",
    "push",
    "sample_batch_size",
    "gradient_checkpointing",
    "torch_compile",
    "source_fingerprint",  # compared on its own (`writer.check_fingerprint`), with its own message
)
# Only in the card, not in the rows: the evaluation. A resume may change them; a finished set may not.
_CARD_ONLY = ("evaluate", "eval", "source.test_split", "test_dataset")
_OPTION_NAMES = {
    "source.source": "SOURCE",
    "source.config_name": "--config",
    "source.split": "--split",
    "source.test_split": "--test-split",
    "source.revision": "--revision",
    "source.classes": "--classes",
    "preset": "SOURCE (preset)",
    "evaluate": "evaluation (--no-eval)",
    "eval.model": "--eval-model",
    "eval.seed": "--eval-seed",
    "eval.labels": "--eval-labels",
    "nopt.kernel": "--kernel",
    "torch_compile": "--compile",
    "shipped_prior": "the shipped prior (no --model; dsco-hub upgraded?)",  # `models.shipped_prior_id()`
    "model_digest": "the --model folder (its weights or scheduler changed since?)",  # `models.prior_digest`
    "model_commit": "the Hub commit of --model (pushed to since? --model-revision pins one)",
    # the students' optimiser and augmentation have no option (the protocol fixes them): named by their field
    "eval.lr": "EvalConfig.lr",
    "eval.momentum": "EvalConfig.momentum",
    "eval.weight_decay": "EvalConfig.weight_decay",
    "eval.batch_size": "EvalConfig.batch_size",
    "eval.augment": "EvalConfig.augment",
    "eval.flip": "EvalConfig.flip",
}


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def run_settings(data: dict[str, Any], scope: str) -> dict[str, Any]:
    """The settings of a `ConcentrateConfig.to_dict()` that a rerun must repeat, flattened to dotted keys.

    Args:
        data (`dict`): `ConcentrateConfig.to_dict()` (or the `dsco_config.json` of a finished set).
        scope (`str`): "rows" (what the shards depend on: a resume) or "set" (rows plus the evaluation in the
            card: a finished set).

    Returns:
        `dict[str, Any]`: e.g. `{"ipc": 10, "nopt.window": 0.5, ...}`.
    """
    skip = _NOT_COMPARED + (_CARD_ONLY if scope == "rows" else ())
    flat = _flatten({k: v for k, v in data.items() if k not in ("command",)})
    return {k: v for k, v in flat.items() if not any(k == s or k.startswith(s + ".") for s in skip)}


def option_name(key: str) -> str:
    """The command-line option of a dotted settings key, e.g. "nopt.window" -> "--nopt-window", for messages.

    A setting no option sets is named by its library field, e.g. "eval.lr" -> "EvalConfig.lr"; SOURCE by name.
    """
    if key in _OPTION_NAMES:
        return _OPTION_NAMES[key]
    if key.startswith(("eval.", "source.")):  # these options carry no prefix: --epochs, --image-column
        key = key.split(".", 1)[1]
    return "--" + key.replace(".", "-").replace("_", "-")


def first_difference(saved: dict[str, Any], now: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first option whose value differs between two `run_settings`: `(option, saved value, value now)`.

    An option missing on one side counts as its default: a run saved by an older version lacks the options added
    since, and ran as their defaults do. Whether the run evaluates (`evaluate`, `--no-eval`) comes first: when it
    differs, the evaluation settings that differ with it are not what the user changed.
    """
    defaults = _flatten(ConcentrateConfig().to_dict())
    for key in sorted(set(saved) | set(now), key=lambda k: (k != "evaluate", k)):
        there, here = saved.get(key, defaults.get(key)), now.get(key, defaults.get(key))
        if there != here:
            return option_name(key), there, here
    return None
