"""The `dsco-hub` command line: thin Typer commands that build a config and call one library function.

Errors that users cause (`DscoError`) print as one line plus a hint and exit with code 1; set
`DSCO_HUB_TRACEBACK=1` to see the traceback. Model: huggingface_hub `cli/_cli_utils.py`.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from dsco_hub.config import (
    FULL_WINDOW_MAX_N,
    ConcentrateConfig,
    EvalConfig,
    HubConfig,
    NOptConfig,
    PriorTrainConfig,
    SourceConfig,
    TeacherConfig,
)
from dsco_hub.errors import ConfigError, DscoError
from dsco_hub.files import check_file_path
from dsco_hub.results import EXIT_GATE_FAILED, Gates, append_step_summary, document
from dsco_hub.results import write as write_results
from dsco_hub.text import command_line
from dsco_hub.ui import set_quiet

app = typer.Typer(
    name="dsco-hub",
    help="Concentrate Hugging Face image-classification datasets with DsCo and publish them on the Hub.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
prior_app = typer.Typer(help="Class-conditional diffusion priors.", no_args_is_help=True)
app.add_typer(prior_app, name="prior")
teacher_app = typer.Typer(help="Teacher networks of the soft-label evaluation.", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")
err_console = Console(stderr=True)


# What to do after Ctrl-C (SIGINT) or SIGTERM, per command, for the one line printed then
_AFTER_INTERRUPT = {
    "concentrate": "rerun the same command to resume (its finished units are kept in OUT.partial)",
    "prior": "rerun the same command to resume from the last checkpoint in OUT/checkpoints",
    "teacher": "rerun the same command to resume from its last finished epoch",
    "evaluate": "rerun the same command to evaluate again (the set and its card are unchanged)",
    "push": "rerun it to upload only the files that are not there yet",
}


def reporter(console: Console) -> Callable[[str], None]:
    """The `report` callback of a command: each message printed as it is, on one line (no Rich markup, so text in
    square brackets stays, and no wrapping at the console's width, which is 80 columns off a terminal)."""
    return lambda message: console.print(message, markup=False, highlight=False, soft_wrap=True)


# Shared options, defined once
SourceArg = Annotated[
    Optional[str],
    typer.Argument(
        help="Hub dataset id, local `datasets` repo folder or save_to_disk folder; "
        "omit for the embedded Fashion-MNIST subset."
    ),
]
ConfigOpt = Annotated[Optional[str], typer.Option("--config", help="Dataset config (subset) name on the Hub.")]
SplitOpt = Annotated[str, typer.Option(help="Split to read.")]
RevisionOpt = Annotated[Optional[str], typer.Option(help="Hub revision of the source (branch, tag or commit).")]
ImageColOpt = Annotated[Optional[str], typer.Option(help="Image column (default: the column of feature Image).")]
LabelColOpt = Annotated[Optional[str], typer.Option(help="Label column (default: the ClassLabel column).")]
SeedOpt = Annotated[int, typer.Option(help="Run seed; every random choice derives from (seed, class, slot).")]
TestSplitOpt = Annotated[Optional[str], typer.Option(help="Evaluation split (default: test, else validation).")]
RunsOpt = Annotated[int, typer.Option(help="Evaluation runs (students trained from scratch).")]
EpochsOpt = Annotated[int, typer.Option(help="Training epochs per evaluation run.")]
EvalModelOpt = Annotated[
    str, typer.Option("--eval-model", help="auto (ConvNet-3 up to 64 px, ResNet-18 above), convnet3 or resnet18.")
]
BaselineOpt = Annotated[bool, typer.Option(help="Also evaluate a random real subset of the same IPC.")]
EvalSeedOpt = Annotated[int, typer.Option(help="Seed of the students' initialisation and augmentation.")]
TeacherOpt = Annotated[
    Optional[str], typer.Option(help="--eval-labels soft: a folder written by `dsco-hub teacher train`.")
]
TemperatureOpt = Annotated[
    float, typer.Option(help="--eval-labels soft: softmax temperature T (loss scaled by T^2; RDED uses 4).")
]
JsonOpt = Annotated[
    Optional[str],
    typer.Option(
        "--json",
        help="Write the results as JSON (schema dsco_hub/schemas/eval_result.schema.json) to PATH, or - for stdout.",
    ),
]
FailUnderOpt = Annotated[
    Optional[float],
    typer.Option("--fail-under", help="Exit with code 3 (after writing results) when the accuracy is under ACC %."),
]
FailBelowBaselineOpt = Annotated[
    Optional[float],
    typer.Option(
        "--fail-below-baseline",
        help="Exit with code 3 when the gain over the random baseline is under POINTS (0: not below it).",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
RepoIdOpt = Annotated[
    Optional[str],
    typer.Option("--repo-id", help="Dataset repo on the Hub, USER/NAME (default: <you>/<source>-<method>-ipc<IPC>)."),
]
PrivateOpt = Annotated[bool, typer.Option("--private", help="Create the repo private (when it does not exist yet).")]
CreatePrOpt = Annotated[bool, typer.Option("--create-pr", help="Open a pull request instead of committing.")]
CommitMessageOpt = Annotated[
    Optional[str], typer.Option("--commit-message", help="Commit message (default: a summary).")
]
TokenOpt = Annotated[
    Optional[str],
    typer.Option(
        "--token", help="Hugging Face token (default: HF_TOKEN, else `hf auth login`); never printed or saved."
    ),
]
EndpointOpt = Annotated[
    Optional[str], typer.Option("--endpoint", help="Hub URL (default: HF_ENDPOINT, else https://huggingface.co).")
]


def _source(source, config, split, revision, image_column, label_column, test_split=None) -> SourceConfig:
    return SourceConfig(
        source=source,
        config_name=config,
        split=split,
        revision=revision,
        image_column=image_column,
        label_column=label_column,
        test_split=test_split,
    )


def _doping_ratio(value: str) -> float | str:
    """`--doping-ratio`'s text as a number, or "auto" (`config.auto_doping_ratio`).

    Raises:
        typer.BadParameter: neither a number nor "auto" (a usage error, exit code 2).
    """
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is neither a number in [0, 1] nor auto.") from None


@app.command()
def concentrate(
    source: SourceArg = None,
    ipc: Annotated[int, typer.Option(help="Images per class in the output.")] = 10,
    method: Annotated[
        str, typer.Option(help="dsco (NOpt + doping), diffusion (plain sampling), random or herding (real images).")
    ] = "dsco",
    out: Annotated[Optional[str], typer.Option(help="Output folder (default: ./<source>-<method>-ipc<IPC>).")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace OUT; discard a saved run (OUT.partial) made with other settings.")
    ] = False,
    config: ConfigOpt = None,
    split: SplitOpt = "train",
    test_split: TestSplitOpt = None,
    revision: RevisionOpt = None,
    image_column: ImageColOpt = None,
    label_column: LabelColOpt = None,
    seed: SeedOpt = 0,
    kernel: Annotated[str, typer.Option(help="Herding kernel: gaussian (multi-bandwidth) or linear.")] = "gaussian",
    feature_seed: Annotated[int, typer.Option(help="Seed of herding's random ConvNet-3 feature map.")] = 0,
    herding_pool: Annotated[int, typer.Option(help="Real candidates per class for herding.")] = 5000,
    model: Annotated[
        Optional[str],
        typer.Option(help="Diffusion prior: Hub id or folder (default: the shipped Fashion-MNIST prior)."),
    ] = None,
    model_revision: Annotated[Optional[str], typer.Option(help="Hub revision of --model.")] = None,
    class_map: Annotated[
        Optional[str], typer.Option(help="JSON file mapping source class names to model labels or ids.")
    ] = None,
    steps: Annotated[int, typer.Option(help="DDIM steps.")] = 25,
    guidance_scale: Annotated[float, typer.Option(help="Classifier-free guidance scale (1 = off).")] = 2.0,
    eta: Annotated[float, typer.Option(help="DDIM eta (0 = deterministic).")] = 0.0,
    scheduler: Annotated[str, typer.Option(help="Sampler (ddim).")] = "ddim",
    sample_batch_size: Annotated[int, typer.Option(help="Images per denoiser batch (memory only).")] = 64,
    dtype: Annotated[str, typer.Option(help="auto, float32, float16 or bfloat16.")] = "auto",
    gradient_checkpointing: Annotated[
        bool, typer.Option("--gradient-checkpointing", help="NOpt: recompute activations (less GPU memory).")
    ] = False,
    torch_compile: Annotated[
        bool, typer.Option("--compile", help="torch.compile the denoiser on CUDA (ignored on the CPU).")
    ] = False,
    streaming: Annotated[
        bool,
        typer.Option(
            "--streaming", help="Stream SOURCE: keep only the rows of each class the run uses (in OUT.partial)."
        ),
    ] = False,
    shuffle_buffer: Annotated[
        Optional[int],
        typer.Option(
            help="--streaming: rows in the stream's shuffle buffer (0 = the stream's order; default 1000, as "
            "datasets' IterableDataset.shuffle)."
        ),
    ] = None,
    doping_ratio: Annotated[
        str,
        typer.Option(
            metavar="RHO",
            help="dsco: real images per class = round(RHO x IPC), RHO in [0, 1]; auto = IPC / (IPC + 10).",
        ),
    ] = "0.0",
    doping_select: Annotated[
        str,
        typer.Option(
            help="dsco doping: herding (joint: continued from the class's synthetic images), herding-independent "
            "(blind to them) or random."
        ),
    ] = "herding",
    data_free: Annotated[
        bool,
        typer.Option("--data-free", help="Only class names are known (SOURCE, if given, serves only the evaluation)."),
    ] = False,
    labels: Annotated[Optional[str], typer.Option(help="Data-free class names, comma-separated.")] = None,
    labels_file: Annotated[Optional[str], typer.Option(help="Data-free class names, one per line.")] = None,
    pool_size: Annotated[
        Optional[int], typer.Option(help="Data-free target pool per class (default max(4 x n, 256)).")
    ] = None,
    pool_guidance_scale: Annotated[
        Optional[float], typer.Option(help="Guidance of the data-free pool's samples (default: --guidance-scale).")
    ] = None,
    nopt_window: Annotated[
        Optional[float],
        typer.Option(
            help=f"Fraction of DDIM steps with NOpt (default 1.0 for n<={FULL_WINDOW_MAX_N} images per class, "
            "0.5 above)."
        ),
    ] = None,
    nopt_iters: Annotated[int, typer.Option(help="Gradient steps per optimized DDIM step.")] = 1,
    nopt_lr: Annotated[float, typer.Option(help="NOpt step length, a fraction of ||x_t||.")] = 0.05,
    nopt_targets: Annotated[int, typer.Option(help="Real target images per class for NOpt's MMD.")] = 500,
    nopt_width: Annotated[int, typer.Option(help="Channels of NOpt's random ConvNet-3 feature maps.")] = 128,
    nopt_target_batch: Annotated[
        Optional[int],
        typer.Option(
            help="NOpt targets embedded per iteration, a fresh subset (0 = all; default max(128, 10 n), all at n=1)."
        ),
    ] = None,
    nopt_features: Annotated[
        str,
        typer.Option(
            help="NOpt's feature space: random (a random ConvNet-3 per iteration), ensemble (several per iteration) "
            "or trained (ConvNet-3 snapshots trained on the real images)."
        ),
    ] = "random",
    nopt_ensemble: Annotated[int, typer.Option(help="--nopt-features ensemble: random maps per iteration.")] = 4,
    nopt_feature_epochs: Annotated[
        int, typer.Option(help="--nopt-features trained: training epochs (one snapshot each).")
    ] = 10,
    nopt_feature_images: Annotated[
        int, typer.Option(help="--nopt-features trained: real images per class to train on.")
    ] = 100,
    oversample: Annotated[
        int,
        typer.Option(help="dsco: NOpt makes K x the synthetic images; herding in its feature space keeps the best."),
    ] = 1,
    classes: Annotated[
        Optional[str], typer.Option(help="Keep only these classes: names or label indices, comma-separated.")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the plan (classes, units, calls, size, time); write nothing."),
    ] = False,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip the evaluation.")] = False,
    test_dataset: Annotated[
        Optional[str],
        typer.Option(help="Evaluation source when SOURCE has no test split (Hub id or folder, same classes)."),
    ] = None,
    runs: RunsOpt = 3,
    epochs: EpochsOpt = 300,
    eval_model: EvalModelOpt = "auto",
    baseline: BaselineOpt = True,
    eval_seed: EvalSeedOpt = 0,
    eval_labels: Annotated[
        str, typer.Option("--eval-labels", help="hard (the set's labels) or soft (a teacher's, with --teacher).")
    ] = "hard",
    teacher: TeacherOpt = None,
    temperature: TemperatureOpt = 4.0,
    json_path: JsonOpt = None,
    fail_under: FailUnderOpt = None,
    fail_below_baseline: FailBelowBaselineOpt = None,
    quiet: QuietOpt = False,
    push: Annotated[bool, typer.Option("--push", help="Publish the finished folder on the Hub.")] = False,
    repo_id: RepoIdOpt = None,
    private: PrivateOpt = False,
    token: TokenOpt = None,
    endpoint: EndpointOpt = None,
):
    """Concentrate SOURCE into a small `datasets` repo folder with a card, evaluated under the DC/DSA protocol.

    SOURCE may be a preset: imagenet-1k, imagenette or imagewoof (ImageNet classes on facebook/DiT-XL-2-256).
    Under torchrun / accelerate launch, each process computes its share of the units; a rerun resumes.
    """
    from dsco_hub.pipeline import concentrate as run
    from dsco_hub.pipeline import dry_run as plan_run
    from dsco_hub.presets import PRESETS

    preset = source if source in PRESETS else None

    set_quiet(quiet)
    gates = Gates(fail_under=fail_under, fail_below_baseline=fail_below_baseline)
    reports = json_path is not None or fail_under is not None or fail_below_baseline is not None
    if reports and no_eval:
        raise ConfigError("--json, --fail-under and --fail-below-baseline report the evaluation; drop --no-eval.")
    if reports and data_free and source is None and test_dataset is None:
        raise ConfigError(
            "--json, --fail-under and --fail-below-baseline report the evaluation, which a data-free run makes only "
            "on a test split: pass SOURCE or --test-dataset."
        )
    gates.validate(baseline)
    if json_path not in (None, "-"):
        check_file_path(json_path, "--json")  # before the work, not after it
    if not push and (repo_id or private or token or endpoint):
        raise ConfigError("--repo-id, --private, --token and --endpoint apply to the upload; add --push.")
    if out is None:
        stem = (source or "fashion-mnist-subset").rstrip("/").replace("\\", "/").split("/")[-1]
        out = f"{stem}-{method}-ipc{ipc}"
    cfg = ConcentrateConfig(
        source=_source(None if preset else source, config, split, revision, image_column, label_column, test_split),
        preset=preset,
        method=method,
        ipc=ipc,
        seed=seed,
        kernel=kernel,
        feature_seed=feature_seed,
        herding_pool=herding_pool,
        model=model,
        model_revision=model_revision,
        class_map=class_map,
        steps=steps,
        guidance_scale=guidance_scale,
        eta=eta,
        scheduler=scheduler,
        sample_batch_size=sample_batch_size,
        dtype=dtype,
        nopt=NOptConfig(
            window=nopt_window,
            iters=nopt_iters,
            lr=nopt_lr,
            targets=nopt_targets,
            kernel=kernel,
            width=nopt_width,
            target_batch=nopt_target_batch,
            features=nopt_features,
            ensemble=nopt_ensemble,
            feature_epochs=nopt_feature_epochs,
            feature_images=nopt_feature_images,
        ),
        oversample=oversample,
        gradient_checkpointing=gradient_checkpointing,
        torch_compile=torch_compile,
        doping_ratio=_doping_ratio(doping_ratio),
        doping_select=doping_select,
        data_free=data_free,
        labels=_labels(labels, labels_file),
        pool_size=pool_size,
        pool_guidance_scale=pool_guidance_scale,
        out=out,
        overwrite=overwrite,
        evaluate=not no_eval,
        test_dataset=test_dataset,
        eval=EvalConfig(
            model=eval_model,
            runs=runs,
            epochs=epochs,
            baseline=baseline,
            seed=eval_seed,
            labels=eval_labels,
            teacher=teacher,
            temperature=temperature,
        ),
        push=HubConfig(repo_id=repo_id, private=private, token=token, endpoint=endpoint) if push else None,
    )
    if classes is not None:
        cfg.source.classes = tuple(c.strip() for c in classes.split(",") if c.strip())
    if shuffle_buffer is not None:
        if not streaming:
            raise ConfigError(
                f"--shuffle-buffer={shuffle_buffer} applies to --streaming (it shuffles the stream); add --streaming, "
                "or drop it."
            )
        cfg.source.shuffle_buffer = shuffle_buffer
    cfg.source.streaming = streaming
    if dry_run:
        for line in plan_run(cfg).lines():
            Console().print(line, highlight=False, soft_wrap=True)
        return
    result = run(cfg, command=command_line(), report=reporter(err_console))
    if not result.main:  # another process of a launch: its units are written, the main process reports
        return
    out_console = err_console if json_path == "-" else Console()  # stdout stays JSON with --json -
    _print_eval(result.dsco.get("eval"), out_console)
    out_console.print(f"concentrated set written to [bold]{result.out}[/bold]")
    if result.push is not None:
        _print_push(result.push, out_console)
    block = result.dsco.get("eval")
    if block and (json_path is not None or fail_under is not None or fail_below_baseline is not None):
        target = {
            "target": result.out.name,
            "repo_id": result.push.repo_id if result.push is not None else None,
            "revision": None,
            "commit": None,
            "config": result.push.config_name if result.push is not None else None,
            "method": result.dsco.get("method"),
            "ipc": result.dsco.get("ipc"),
        }
        _finish_results(document(target, block, gates), json_path)


@app.command(name="push")
def push_(
    folder: Annotated[str, typer.Argument(help="A folder written by `dsco-hub concentrate`.")],
    repo_id: RepoIdOpt = None,
    private: PrivateOpt = False,
    revision: Annotated[
        Optional[str], typer.Option(help="Branch to push to (created from main when missing; default: main).")
    ] = None,
    create_pr: CreatePrOpt = False,
    commit_message: CommitMessageOpt = None,
    token: TokenOpt = None,
    endpoint: EndpointOpt = None,
):
    """Publish a concentrated set on the Hub as config ipc<IPC> of a dataset repo; a rerun uploads what is missing."""
    from dsco_hub.pipeline import push as run

    cfg = HubConfig(
        repo_id=repo_id,
        private=private,
        revision=revision,
        create_pr=create_pr,
        commit_message=commit_message,
        token=token,
        endpoint=endpoint,
    )
    _print_push(run(folder, cfg))


def _print_push(result, console: Console | None = None) -> None:
    console = console or Console()
    commits = f"{result.commits} commit{'s' if result.commits > 1 else ''}"
    done = f"{len(result.uploaded)} files uploaded in {commits}" if result.commits else "already up to date"
    skipped = f", {len(result.skipped)} already there" if result.skipped else ""
    console.print(f"pushed [bold]{result.repo_id}[/bold] (config {result.config_name}): {done}{skipped}")
    console.print(f"load it with load_dataset({result.repo_id!r}, {result.config_name!r}); {result.url}")
    if result.pr_url:
        console.print(f"pull request: {result.pr_url}")


def _finish_results(doc: dict, json_path: str | None) -> None:
    """Write the results document (`--json`), append it to the GitHub step summary, and apply the gates: a set
    that misses one exits with code 3, after everything is written."""
    if json_path is not None:
        write_results(doc, json_path)
    append_step_summary(doc)
    if not doc["gates"]["passed"]:
        for failure in doc["gates"]["failures"]:
            err_console.print(f"[bold red]Gate failed:[/bold red] {escape(failure)}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_GATE_FAILED)


@app.command()
def evaluate(
    target: Annotated[
        str,
        typer.Argument(help="The set: USER/NAME[@REVISION] on the Hub, a folder written by dsco-hub, or a dataset."),
    ],
    test_dataset: Annotated[
        Optional[str], typer.Option(help="Test source (default: the set's recorded source).")
    ] = None,
    test_split: TestSplitOpt = None,
    config: ConfigOpt = None,
    revision: RevisionOpt = None,
    runs: RunsOpt = 3,
    epochs: EpochsOpt = 300,
    eval_model: EvalModelOpt = "auto",
    baseline: BaselineOpt = True,
    eval_seed: EvalSeedOpt = 0,
    eval_labels: Annotated[
        str,
        typer.Option(
            "--labels", "--eval-labels", help="hard (the set's labels) or soft (a teacher's, with --teacher)."
        ),
    ] = "hard",
    teacher: TeacherOpt = None,
    temperature: TemperatureOpt = 4.0,
    update_card: Annotated[
        bool, typer.Option(help="Write the results into the set's card (on the Hub: a commit, or a PR).")
    ] = False,
    set_config: Annotated[
        Optional[str],
        typer.Option(help="Config of the set (on the Hub, or a downloaded copy), e.g. ipc50 (default: its default)."),
    ] = None,
    image_column: ImageColOpt = None,
    label_column: LabelColOpt = None,
    create_pr: CreatePrOpt = False,
    commit_message: CommitMessageOpt = None,
    token: TokenOpt = None,
    endpoint: EndpointOpt = None,
    json_path: JsonOpt = None,
    fail_under: FailUnderOpt = None,
    fail_below_baseline: FailBelowBaselineOpt = None,
    against: Annotated[
        Optional[str],
        typer.Option(
            help="Also evaluate this set under the same seeds and report the difference: @REVISION (the same Hub "
            "repo), USER/NAME[@REVISION] or a folder."
        ),
    ] = None,
    quiet: QuietOpt = False,
):
    """Evaluate a concentrated set: train students from scratch on it, test them on the source's test split.

    Exit codes: 0 success, 1 error, 2 usage error, 3 a gate (--fail-under, --fail-below-baseline) missed.
    """
    from dsco_hub import distributed
    from dsco_hub.assess import evaluate_report, runs_share

    set_quiet(quiet)
    if (create_pr or commit_message) and not update_card:
        raise ConfigError("--create-pr and --commit-message apply to the card update; add --update-card.")
    test = SourceConfig(source=test_dataset, config_name=config, revision=revision, test_split=test_split)
    cfg = EvalConfig(
        model=eval_model,
        runs=runs,
        epochs=epochs,
        baseline=baseline,
        seed=eval_seed,
        labels=eval_labels,
        teacher=teacher,
        temperature=temperature,
    )
    gates = Gates(fail_under=fail_under, fail_below_baseline=fail_below_baseline)
    if json_path not in (None, "-"):
        check_file_path(json_path, "--json")  # before the students are trained, not after
    hub_cfg = HubConfig(create_pr=create_pr, commit_message=commit_message, token=token, endpoint=endpoint)
    out_console = err_console if json_path == "-" else Console()  # stdout stays JSON with --json -
    rank, world_size = distributed.world()  # under a launcher every process trains its share; rank 0 reports
    doc = evaluate_report(
        target,
        test,
        cfg,
        gates,
        against,
        update_card,
        hub_cfg,
        set_config=set_config,
        image_column=image_column,
        label_column=label_column,
        report=reporter(out_console) if rank == 0 else None,
    )
    if rank != 0:
        reporter(err_console)(runs_share(runs, rank, world_size))
        return
    _print_eval(_as_block(doc), out_console)
    if doc["against"]:
        d = doc["against"]["difference"]
        out_console.print(f"difference to {against}: {d['points']:+.2f} ± {d['std']:.2f} points")
    _finish_results(doc, json_path)


def _labels(labels: str | None, labels_file: str | None) -> tuple[str, ...] | None:
    """Class names from `--labels "a,b"` or `--labels-file` (one per line); None when neither is given."""
    if labels is not None and labels_file is not None:
        raise ConfigError("--labels and --labels-file are both given; pass one of them.")
    if labels_file is not None:
        try:
            text = open(labels_file, encoding="utf-8").read()
        except FileNotFoundError:
            raise ConfigError(
                f"--labels-file={labels_file!r} does not exist; pass a file with one name per line."
            ) from None
        return tuple(line.strip() for line in text.splitlines() if line.strip())
    return tuple(name.strip() for name in labels.split(",")) if labels is not None else None


def _as_block(doc: dict) -> dict:
    """The printable `eval` block of a results document (the set, its baseline and the compared set)."""

    def run(r: dict) -> dict:
        return {"num_train_images": r["num_train_images"], "accuracy_mean": r["mean"], "accuracy_std": r["std"]}

    block = {"result": {**run(doc["result"]), "model": doc["result"]["model"]}, "test": doc["test"]}
    if doc["baseline"]:
        block["baseline_random"] = run(doc["baseline"])
    if doc["set"].get("commit"):
        block["commit"] = doc["set"]["commit"]
    if doc["against"]:
        block["against"] = run(doc["against"]["result"])
    return block


def _print_eval(block, console: Console | None = None) -> None:
    console = console or Console()
    if not block:
        return
    from rich.table import Table

    from dsco_hub.assess import results_table

    model = {"convnet3": "ConvNet-3", "resnet18": "ResNet-18"}[block["result"]["model"]]
    table = Table(title=f"{model} accuracy on {block['test']['dataset']} [{block['test']['split']}]")
    for column in ("training set", "images", "accuracy (%)"):
        table.add_column(column)
    for row in results_table(block):
        table.add_row(*row)
    if block.get("commit"):
        table.caption = f"evaluated commit {block['commit']}"
    console.print(table)


@prior_app.command("train")
def prior_train(
    source: SourceArg = None,
    out: Annotated[str, typer.Option(help="Output folder (diffusers model folder).")] = "prior-out",
    config: ConfigOpt = None,
    split: SplitOpt = "train",
    revision: RevisionOpt = None,
    image_column: ImageColOpt = None,
    label_column: LabelColOpt = None,
    resolution: Annotated[Optional[int], typer.Option(help="Training resolution in pixels.")] = None,
    channels: Annotated[Optional[int], typer.Option(help="1 or 3 (default: the source's).")] = None,
    block_out_channels: Annotated[str, typer.Option(help="UNet widths per level, comma-separated.")] = "32,64,64",
    layers_per_block: Annotated[int, typer.Option()] = 1,
    norm_num_groups: Annotated[int, typer.Option(help="GroupNorm groups (divides every width).")] = 16,
    max_steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 2400,
    batch_size: Annotated[int, typer.Option()] = 128,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate.")] = 1e-3,
    label_dropout: Annotated[float, typer.Option(help="Null-label probability (guidance).")] = 0.1,
    snr_gamma: Annotated[
        Optional[float],
        typer.Option(help="Min-SNR-gamma loss weighting: min(SNR, gamma) / SNR per sample, e.g. 5 (default: none)."),
    ] = None,
    flip: Annotated[bool, typer.Option(help="Random horizontal flips.")] = False,
    mixed_precision: Annotated[
        str,
        typer.Option(
            help="auto (bf16 on GPUs and CPUs with native bf16, fp16 on older GPUs, float32 on other CPUs), "
            "no, bf16 or fp16."
        ),
    ] = "auto",
    checkpoint_every: Annotated[int, typer.Option(help="Steps between resumable checkpoints.")] = 200,
    seed: SeedOpt = 0,
):
    """Train a class-conditional pixel-space UNet prior (DDPM, EMA, label dropout); a rerun resumes."""
    from dsco_hub.prior import train_prior

    try:
        widths = tuple(int(w) for w in block_out_channels.split(","))
    except ValueError:
        raise DscoError(
            f"--block-out-channels={block_out_channels!r} must be comma-separated integers, e.g. 32,64,64."
        ) from None
    cfg = PriorTrainConfig(
        source=_source(source, config, split, revision, image_column, label_column),
        out=out,
        resolution=resolution,
        channels=channels,
        block_out_channels=widths,
        layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups,
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        label_dropout=label_dropout,
        snr_gamma=snr_gamma,
        flip=flip,
        mixed_precision=mixed_precision,
        checkpoint_every=checkpoint_every,
        seed=seed,
    )
    path = train_prior(cfg, command=command_line())
    Console().print(f"prior saved to [bold]{path}[/bold]")


@teacher_app.command("train")
def teacher_train(
    source: SourceArg = None,
    out: Annotated[str, typer.Option(help="Output folder (weights, teacher_config.json, card).")] = "teacher-out",
    config: ConfigOpt = None,
    split: SplitOpt = "train",
    revision: RevisionOpt = None,
    image_column: ImageColOpt = None,
    label_column: LabelColOpt = None,
    test_split: TestSplitOpt = None,
    epochs: Annotated[int, typer.Option(help="Training epochs (learning rate / 10 from epochs // 2).")] = 30,
    max_images: Annotated[
        Optional[int], typer.Option(help="Train on a seeded random subset of this many images (default: all).")
    ] = None,
    eval_model: EvalModelOpt = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the initialisation, subset, order and augmentation.")] = 0,
):
    """Train the teacher of `evaluate --labels soft` on SOURCE's training split (the students' network); a rerun
    resumes."""
    from dsco_hub.teacher import train_teacher

    cfg = TeacherConfig(
        source=_source(source, config, split, revision, image_column, label_column, test_split),
        out=out,
        model=eval_model,
        epochs=epochs,
        max_images=max_images,
        seed=seed,
    )
    path = train_teacher(cfg, command=command_line(), report=reporter(err_console))
    Console().print(f"teacher saved to [bold]{path}[/bold]")


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached the process: raised from the signal handler so that `finally` and `except
    BaseException` blocks clean up (staging folders), then `main` exits with 128 + the signal number.

    A `BaseException`, not a `KeyboardInterrupt`: Click turns the latter into an exit code that hides the signal.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


def _click_classes() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """Click's usage-error, abort and exit classes, wherever they live: typer >= 0.20 vendors Click as
    `typer._click` (and does not depend on Click), older typer uses Click itself."""
    usage, abort, exit_ = [], [typer.Abort], [typer.Exit]
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        usage.append(module.ClickException)
        abort.append(getattr(module, "Abort", typer.Abort))
        exit_.append(getattr(module, "Exit", typer.Exit))
    return tuple(usage), tuple(abort), tuple(exit_)


def _error(message: str, hint: str | None = None) -> None:
    """Print an error as one line (and its hint as a second), with the message's own brackets left alone."""
    from rich.markup import escape

    err_console.print(f"[bold red]Error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        err_console.print(f"[dim]Hint: {escape(hint)}[/dim]", highlight=False, soft_wrap=True)


def _unexpandable(argv: list[str]) -> str | None:
    """The first argument starting with `~` that `Path.expanduser` cannot expand, as `--option=VALUE` when an option
    gave it (`--out=~x/y` or `--out ~x/y`), else as `'VALUE'`; None when there is none."""
    from pathlib import Path

    previous = ""
    for arg in argv:
        option, value = arg.split("=", 1) if arg.startswith("--") and "=" in arg else (previous, arg)
        previous = arg if arg.startswith("--") and "=" not in arg else ""
        if value.startswith("~"):
            try:
                Path(value).expanduser()
            except RuntimeError:
                return f"{option}={value}" if option else repr(value)
    return None


def main() -> None:
    """Entry point of the `dsco-hub` console script, with the exit codes scripts and CI expect.

    - 0: success.
    - 1: an error the user can fix (`DscoError`, or a file-system error), printed as one line (the traceback with
      `DSCO_HUB_TRACEBACK=1`).
    - 2: a usage error (unknown command or option, a value of the wrong type), with Click's usage message.
    - 130 on SIGINT (Ctrl-C) and 143 on SIGTERM, with one line saying how to resume. Under `torchrun` or
      `accelerate launch`, a rank that exits non-zero makes the launcher stop the others.
    """
    import signal

    import datasets

    from dsco_hub.files import os_error

    datasets.disable_progress_bars()  # our Rich bars report progress
    datasets.logging.set_verbosity_error()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_interrupted)
    traceback = bool(os.environ.get("DSCO_HUB_TRACEBACK"))
    usage_errors, aborts, exits = _click_classes()
    try:
        code = app(standalone_mode=False)
    except Interrupted as stop:
        name = signal.Signals(stop.signum).name
        command = next((a for a in sys.argv[1:] if a in _AFTER_INTERRUPT), None)
        advice = _AFTER_INTERRUPT.get(command, "rerun the same command to resume")
        err_console.print(
            f"Interrupted ({name}): nothing finished was lost; {advice}.",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(128 + stop.signum)
    except usage_errors as err:  # usage errors: Click's own message, exit code 2
        err.show()
        sys.exit(err.exit_code)
    except (*aborts, KeyboardInterrupt):
        err_console.print("Aborted: rerun the same command to resume.")
        sys.exit(130)
    except DscoError as err:
        if traceback:
            raise
        _error(str(err), err.hint)
        sys.exit(1)
    except OSError as err:  # the file system said no: one line with the path, the reason and the fix
        if traceback:
            raise
        _error(str(os_error(err)))
        sys.exit(1)
    except RuntimeError as err:  # pathlib's expanduser: "~name/..." for a user this machine does not know
        value = _unexpandable(sys.argv[1:])
        if traceback or value is None:
            raise
        _error(f"{value}: this machine knows no such home folder ({err}); write the path out in full.")
        sys.exit(1)
    except exits as exit_:
        sys.exit(exit_.exit_code)
    if isinstance(code, int) and code != 0:  # Click returns the code of a `typer.Exit` under standalone_mode=False
        sys.exit(code)
    from dsco_hub import distributed

    distributed.finish()  # under a launcher: every process exits after the last one is done
