"""GPU check (issue 14): one command, under 8 minutes on one GPU, whose results come back even if it is cut short.

    bash bench/make_gpu_carry.sh                  # here, once: .gpu_carry/ (wheels the GPU machine lacks + data)
    bash bench/gpu_check.sh                       # there, from the repository root: results in $OUT
    GPU_CHECK_SMOKE=1 bash bench/gpu_check.sh     # anywhere: every stage with tiny settings (a CPU: about 2 min)

`bench/gpu_check.sh` installs the carried wheels and runs this driver. Its stages run in order, each within what
is left of `--budget` seconds counted from `GPU_CHECK_STARTED` (the shell's start); a stage that would not fit is
skipped and named in the report. After every stage the report is rewritten in `--out`: `gpu_check.md` (tables)
and `results.json` (every figure), plus `pytest_gpu.log` and `prior.tar` (the trained prior's files).

1. `pytest -m gpu`: the tests of `tests/test_gpu.py` (prior train with EMA on CUDA, fp16, resumes across
   devices, evaluation and `concentrate --method dsco` on CUDA).
2. A larger Fashion-MNIST prior (64,128,128, two layers per block, 6.1 M parameters, batch 256, `--mixed-precision
   auto`): its step time is calibrated for a few seconds, then `dsco-hub prior train` runs as many steps as fit in
   `--prior-seconds`. Meanwhile a background process makes the real-image sets (random, herding).
3. The quality table's synthetic sets with that prior (plain diffusion, DsCo rho 0 and 0.5, data-free) at IPC
   1, 10 and 50, four processes side by side, then all 18 sets evaluated on the GPU (ConvNet-3, 3 runs x 300
   epochs, no baseline) by `--eval-workers` processes; one student run of a 500-image set is first timed alone.
4. A DiT-XL/2-shaped model with random weights (diffusers `DiTTransformer2DModel` + `AutoencoderKL` in the
   `facebook/DiT-XL-2-256` layout, built and saved locally, ImageNet `id2label`): plain sampling and NOpt of 64
   classes at IPC 10 and 50 with `--dit-steps` DDIM steps and 16 NOpt targets per class, beside `--dry-run`'s
   estimate for the same settings (FLOPs at 40 % of the H200's 989 TFLOP/s dense bf16 peak).
5. Issue 14's ship rule, with what time is left: DsCo (rho 0) at IPC 10 and 50 over set seeds 0-2 (`--ship-seeds`)
   with the trained prior and with the shipped one, all made and evaluated here. A set's own seed moves DsCo by up
   to 2 points at IPC 10 (`bench/results/set_seeds.md`), and the CPU figures in brackets come from another device
   and precision: the report says whether the trained prior leads at both IPCs by more than the sets' spread.
   When the full check leaves it too little time, `bash bench/gpu_check.sh --stages prior sets evaluate ship
   --ipcs 10 50` decides alone (no tests, no IPC 1, no DiT), and its `prior.tar` is the prior the verdict is about.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("random", "herding", "diffusion", "dsco", "dsco-doped", "dsco-datafree")
REAL = ("random", "herding")
STAGES = ("tests", "prior", "sets", "student_run", "evaluate", "dit", "ship")
SHIPPED = "shipped-"  # folder prefix of the ship stage's sets made with the shipped prior
PRIOR_ARCH = {"block_out_channels": (64, 128, 128), "layers_per_block": 2, "batch_size": 256}  # issue 14's GPU try
SMOKE_ARCH = {"block_out_channels": (8, 16), "layers_per_block": 1, "batch_size": 16, "norm_num_groups": 8}
H200_BF16_TFLOPS = 989.0  # dense bf16 peak of an H200 SXM (NVIDIA's datasheet; the H100 SXM's figure)
DIT_XL_2 = {  # facebook/DiT-XL-2-256's transformer/config.json
    "num_attention_heads": 16,
    "attention_head_dim": 72,
    "in_channels": 4,
    "out_channels": 8,
    "num_layers": 28,
    "sample_size": 32,
    "patch_size": 2,
    "num_embeds_ada_norm": 1000,
}
SD_VAE = {  # facebook/DiT-XL-2-256's vae/config.json (stabilityai/sd-vae-ft-*)
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 256,
}
TINY_DIT = {**DIT_XL_2, "num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 1, "sample_size": 8}
TINY_VAE = {
    **SD_VAE,
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "block_out_channels": (8, 8),
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 16,  # 16 px images: NOpt's ConvNet-3 features need at least 8
}
BASELINES = Path(__file__).parent / "results" / "baselines.jsonl"  # the CPU quality table's raw rows


def shipped_figures(results: Path = BASELINES) -> dict[str, dict[int, float]]:
    """The CPU figures to compare with: `{method: {ipc: accuracy_mean}}` of `results`' rows at the defaults (no
    variant), real methods and the shipped prior's (by `dsco_hub.models.prior_digest`) synthetic ones; `{}` when the
    file is missing."""
    from dsco_hub.models import prior_digest, shipped_prior_path

    if not results.exists():
        return {}
    shipped = prior_digest(shipped_prior_path())
    figures: dict[str, dict[int, float]] = {}
    for line in results.read_text().splitlines():
        row = json.loads(line)
        if row.get("prior", "") in ("", shipped) and not row.get("variant"):
            figures.setdefault(row["method"], {})[row["ipc"]] = row["accuracy_mean"]
    return figures


def ship_verdict(summary: dict[tuple[str, int], tuple[float, float, int]], ipcs: list[int], seeds: int) -> str:
    """Issue 14's rule on the ship stage's figures: the trained prior replaces the shipped one when its DsCo leads
    at every IPC by more than the larger std over sets (`summary[(prior, ipc)] = (mean, std, sets)`)."""
    pairs = [(p, i) for p in ("trained", "shipped") for i in ipcs]
    missing = [f"{p} IPC {i}" for p, i in pairs if summary.get((p, i), (0, 0, 0))[2] < seeds]
    if missing:
        return f"Verdict: not decided, sets missing ({', '.join(missing)})."
    leads = []
    for ipc in ipcs:
        (ours, our_std, _), (theirs, their_std, _) = summary[("trained", ipc)], summary[("shipped", ipc)]
        leads.append((ipc, ours - theirs, max(our_std, their_std)))
    shown = "; ".join(f"IPC {ipc}: {lead:+.1f} (spread {spread:.1f})" for ipc, lead, spread in leads)
    if all(lead > spread for _, lead, spread in leads):
        return f"Verdict: the trained prior leads at every IPC by more than the sets' spread ({shown}): ship it."
    return f"Verdict: keep the shipped prior ({shown})."


# ---------------------------------------------------------------------------------------------------------------
# Settings of the sets
# ---------------------------------------------------------------------------------------------------------------


def set_config(method: str, ipc: int, out: Path, data: str | None, prior: str | None, smoke: bool, seed: int = 0):
    """The `ConcentrateConfig` of one quality-table set (no evaluation: the evaluation stage runs it); `prior` None
    is the shipped prior."""
    from dsco_hub.config import ConcentrateConfig, NOptConfig, SourceConfig
    from dsco_hub.data import load_source

    source = SourceConfig(source=data)
    common = {"ipc": ipc, "seed": seed, "out": str(out), "evaluate": False, "overwrite": True}
    if smoke:
        common["steps"] = 2
    if method in REAL:
        return ConcentrateConfig(source=source, method=method, **common, **({"herding_pool": 50} if smoke else {}))
    common["model"] = prior
    if method == "diffusion":
        return ConcentrateConfig(source=source, method="diffusion", **common)
    nopt = NOptConfig(targets=8) if smoke else NOptConfig()
    if method == "dsco":
        return ConcentrateConfig(source=source, method="dsco", nopt=nopt, **common)
    if method == "dsco-doped":
        return ConcentrateConfig(source=source, method="dsco", doping_ratio=0.5, nopt=nopt, **common)
    names = tuple(load_source(source).class_names)
    free = {"data_free": True, "labels": names, **({"pool_size": 4} if smoke else {})}
    return ConcentrateConfig(source=source, method="dsco", nopt=nopt, **free, **common)


def set_name(method: str, ipc: int, seed: int = 0, tag: str = "") -> str:
    """A set's folder name: `[shipped-]METHOD-ipcN[-sSEED]` (seed 0 unmarked, as the quality table's sets)."""
    return f"{tag}{method}-ipc{ipc}" + (f"-s{seed}" if seed else "")


def parse_set_name(name: str) -> dict:
    """`set_name`'s parts: `{"method", "ipc", "seed", "prior"}` (prior "shipped" or "trained")."""
    tagged = name.startswith(SHIPPED)
    method, rest = name.removeprefix(SHIPPED).rsplit("-ipc", 1)
    ipc, _, seed = rest.partition("-s")
    return {"method": method, "ipc": int(ipc), "seed": int(seed or 0), "prior": "shipped" if tagged else "trained"}


def set_folder(work: Path, method: str, ipc: int, seed: int = 0, tag: str = "") -> Path:
    return work / "sets" / set_name(method, ipc, seed, tag)


# ---------------------------------------------------------------------------------------------------------------
# Workers (subprocesses): make sets, evaluate sets
# ---------------------------------------------------------------------------------------------------------------


def worker_sets(args) -> None:
    """Make the sets of `--methods` x `--ipcs` x `--seeds`, appending `{method, ipc, seed, name, seconds}` lines to
    `--results` (`--tag` prefixes the folder names)."""
    from dsco_hub import pipeline

    for seed in args.seeds:
        for ipc in args.ipcs:
            for method in args.methods:
                started = time.time()
                folder = set_folder(args.work, method, ipc, seed, args.tag)
                cfg = set_config(method, ipc, folder, args.data, args.prior, args.smoke, seed)
                pipeline.concentrate(cfg, command=f"bench/gpu_check.py ({folder.name})")
                row = {"method": method, "ipc": ipc, "seed": seed, "name": folder.name}
                _append(args.results, {**row, "seconds": round(time.time() - started, 1)})


def worker_evaluate(args) -> None:
    """Evaluate the sets named in `--sets` (method-ipcN), appending one line of accuracies each to `--results`."""
    from dsco_hub import assess
    from dsco_hub.config import EvalConfig, SourceConfig

    cfg = EvalConfig(runs=args.runs, epochs=args.epochs, baseline=False)
    for name in args.sets:
        started = time.time()
        folder = args.work / "sets" / name
        block = assess.evaluate_set(str(folder), SourceConfig(source=args.data), cfg)
        row = {**parse_set_name(name), "name": name, **block["result"], "seconds": round(time.time() - started, 1)}
        row.update(device=block["protocol"].get("device"), precision=block["protocol"].get("precision"))
        _append(args.results, row)


def _append(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# ---------------------------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------------------------


class Check:
    """The run's clock, its subprocesses (all ended before it returns) and its report."""

    def __init__(self, args):
        self.args = args
        self.started = float(os.environ.get("GPU_CHECK_STARTED", time.time()))
        self.out, self.work = args.out, args.work
        self.out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.work, ignore_errors=True)  # a fresh run: `prior train --out` wants an empty folder
        (self.work / "sets").mkdir(parents=True, exist_ok=True)
        self.results: dict = {"skipped": [], "stages": {}}
        self.procs: list[subprocess.Popen] = []

    def left(self) -> float:
        """Seconds left of the budget."""
        return self.args.budget - (time.time() - self.started)

    def say(self, message: str) -> None:
        print(f"[{time.time() - self.started:6.1f} s] {message}", flush=True)

    def skip(self, what: str, why: str) -> None:
        self.results["skipped"].append(f"{what}: {why}")
        self.say(f"skipped {what}: {why}")

    def spawn(self, argv: list[str], log: Path) -> subprocess.Popen:
        """Start a subprocess in its own process group (so that it and its children can be ended together)."""
        handle = open(log, "w")
        proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
        proc.log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen, timeout: float) -> int | None:
        """Wait for `proc` at most `timeout` seconds; end its process group if it runs longer. Its exit code or
        None when it was ended."""
        try:
            return proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            self.end(proc)
            return None

    def end(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def end_all(self) -> None:
        for proc in self.procs:
            self.end(proc)

    def worker(self, kind: str, *extra: str) -> list[str]:
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--work", str(self.work)]
        argv += ["--data", self.args.data or "", *extra]
        return [*argv, "--smoke"] if self.args.smoke else argv

    def tail(self, log: Path, lines: int = 15) -> str:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    # -----------------------------------------------------------------------------------------------------------
    # Stage 1: tests marked gpu
    # -----------------------------------------------------------------------------------------------------------

    def tests(self) -> None:
        log = self.out / "pytest_gpu.log"
        started = time.time()
        argv = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu.py"]
        code = self.finish(self.spawn(argv, log), min(self.args.tests_seconds, self.left() - 60))
        summary = (self.tail(log, 1) or "").strip()
        self.results["tests"] = {"exit_code": code, "summary": summary, "seconds": round(time.time() - started, 1)}
        self.say(f"tests: {summary} (exit {code})")

    # -----------------------------------------------------------------------------------------------------------
    # Stage 2: the prior (real-image sets made meanwhile)
    # -----------------------------------------------------------------------------------------------------------

    def start_real_sets(self) -> subprocess.Popen:
        self.real_results = self.work / "sets-real.jsonl"
        self.real_results.unlink(missing_ok=True)
        argv = self.worker("sets", "--methods", *REAL, "--ipcs", *map(str, self.args.ipcs))
        return self.spawn([*argv, "--results", str(self.real_results)], self.work / "sets-real.log")

    def calibrate(self) -> float:
        """Seconds per step of the prior's training step on this device (random images, after a warm-up)."""
        import torch

        from dsco_hub import distributed, prior
        from dsco_hub.config import PriorTrainConfig

        arch = SMOKE_ARCH if self.args.smoke else PRIOR_ARCH
        cfg = PriorTrainConfig(**arch, max_steps=10_000)
        accelerator = distributed.make_accelerator(
            distributed.resolve_mixed_precision("auto", distributed.default_device())
        )
        torch.manual_seed(0)
        unet, scheduler, optimizer, lr_scheduler, ema = prior.make_training_state(cfg, 10, 1, 28, accelerator)
        images = torch.randint(0, 256, (4096, 1, 28, 28), dtype=torch.uint8)
        labels = torch.randint(0, 10, (4096,))
        unet.train()

        def steps(first: int, count: int) -> None:
            for step in range(first, first + count):
                batch = prior.training_batch(cfg, images, labels, 10, scheduler, step, 0)
                loss = prior.train_step(accelerator, unet, optimizer, lr_scheduler, ema, *batch)
            loss.item()  # wait for the device

        timed = 3 if self.args.smoke else 30
        steps(0, 5)  # warm-up: allocations, cuDNN's choice of kernels
        started = time.perf_counter()
        steps(5, timed)
        seconds = (time.perf_counter() - started) / timed
        return seconds  # the model and optimizer go with this frame

    def prior(self) -> None:
        step_seconds = self.calibrate()
        budget = min(self.args.prior_seconds, self.left() - self.args.after_prior_seconds)
        # 0.85: the command also checkpoints and logs, and a run cut at its timeout leaves no prior at all
        steps = 3 if self.args.smoke else int(0.85 * budget / step_seconds)
        self.results["prior"] = {"calibrated_step_seconds": round(step_seconds, 4), "max_steps": steps}
        self.say(f"prior: {step_seconds * 1000:.1f} ms a step (calibrated) -> {steps} steps")
        if steps < 100 and not self.args.smoke:
            self.skip("prior", f"only {budget:.0f} s left for it")
            return
        arch = SMOKE_ARCH if self.args.smoke else PRIOR_ARCH
        out = self.work / "prior"
        argv = [sys.executable, "-m", "dsco_hub", "prior", "train", *([self.args.data] if self.args.data else [])]
        argv += ["--out", str(out), "--max-steps", str(steps), "--batch-size", str(arch["batch_size"])]
        argv += ["--block-out-channels", ",".join(map(str, arch["block_out_channels"]))]
        argv += ["--layers-per-block", str(arch["layers_per_block"])]
        argv += ["--norm-num-groups", str(arch.get("norm_num_groups", 16))]
        argv += ["--checkpoint-every", str(max(steps // 4, 1)), "--mixed-precision", "auto"]
        shown = " ".join(["dsco-hub", *argv[3:]]).replace(str(self.work), "WORK")
        started = time.time()
        code = self.finish(self.spawn(argv, self.work / "prior.log"), self.left() - self.args.after_prior_seconds + 30)
        wall = time.time() - started
        self.results["prior"].update(command=shown, exit_code=code, seconds=round(wall, 1))
        if code != 0 or not (out / "model_index.json").exists():
            self.skip("prior", f"prior train ended with {code}:\n{self.tail(self.work / 'prior.log')}")
            return
        card = (out / "README.md").read_text()
        saved = json.loads((out / "prior_config.json").read_text())
        loss = next((line.split(":", 1)[1].strip() for line in card.splitlines() if "loss" in line.lower()), "?")
        self.results["prior"].update(
            mixed_precision=saved["mixed_precision"],
            steps_per_second=round(steps / wall, 2),
            card_loss_line=loss,
            wall_time_line=next((line.strip("- ") for line in card.splitlines() if "Wall time" in line), ""),
        )
        self.prior_path = out
        self.pack_prior(out)

    def pack_prior(self, folder: Path) -> None:
        """The prior's files (not its checkpoints) as one tar under 16 MiB: weights in fp16 when fp32 is too big."""
        from safetensors.torch import load_file, save_file

        weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
        note = "weights as trained (float32)"
        staged = weights
        if weights.stat().st_size > 15 * 2**20:
            staged = self.work / "unet-fp16.safetensors"
            save_file({k: v.half() for k, v in load_file(str(weights)).items()}, str(staged))
            note = "weights cast to float16 to fit the 16 MiB file limit (load_prior casts them back to float32)"
        with tarfile.open(self.out / "prior.tar", "w") as tar:
            for path in sorted(folder.rglob("*")):
                relative = path.relative_to(folder)
                if path.is_file() and relative.parts[0] != "checkpoints" and path != weights:
                    tar.add(path, arcname=f"prior/{relative}")
            tar.add(staged, arcname="prior/unet/diffusion_pytorch_model.safetensors")
        self.results["prior"]["tar"] = f"prior.tar ({(self.out / 'prior.tar').stat().st_size / 2**20:.1f} MiB): {note}"

    # -----------------------------------------------------------------------------------------------------------
    # Stage 3: the quality table
    # -----------------------------------------------------------------------------------------------------------

    def synthetic_sets(self, real: subprocess.Popen) -> None:
        procs = []
        if hasattr(self, "prior_path"):
            for method in METHODS[2:]:
                results = self.work / f"sets-{method}.jsonl"
                results.unlink(missing_ok=True)
                argv = self.worker("sets", "--methods", method, "--ipcs", *map(str, self.args.ipcs))
                argv += ["--prior", str(self.prior_path), "--results", str(results)]
                procs.append((method, self.spawn(argv, self.work / f"sets-{method}.log"), results))
        else:
            self.skip("synthetic sets", "no prior was trained")
        for method, proc, _ in [("random/herding", real, self.real_results), *procs]:
            code = self.finish(proc, self.left() - self.args.after_sets_seconds)
            if code != 0:
                self.skip(f"{method} sets", f"ended with {code}:\n{self.tail(proc.log)}")
        made = [row for path in [self.real_results, *(r for _, _, r in procs)] for row in _read_lines(path)]
        self.results["sets"] = made
        self.say(f"sets: {len(made)} made")

    def student_run(self) -> None:
        """One student run alone: ConvNet-3 on the largest set made (500 images at IPC 50), 300 epochs."""
        import torch

        from dsco_hub.config import EvalConfig, SourceConfig
        from dsco_hub.data import decode_images, load_source, load_test_source
        from dsco_hub.evaluate import train_and_test

        made = sorted(self.results.get("sets", []), key=lambda row: -row["ipc"])
        if not made or self.left() < self.args.after_sets_seconds / 2:
            self.skip("student run timing", "no set made" if not made else "no time left")
            return
        name = made[0]["name"]
        train = load_source(SourceConfig(source=str(self.work / "sets" / name)))
        test = load_test_source(SourceConfig(source=self.args.data), train.class_names)
        channels, height, width = test.image_shape
        images = decode_images(train, range(len(train.labels)), channels, min(height, width))
        test_images = decode_images(test, range(len(test.labels)), channels, min(height, width))
        labels, test_labels = torch.from_numpy(train.labels), torch.from_numpy(test.labels)
        k = train.num_classes
        cfg = EvalConfig(runs=1, epochs=2 if self.args.smoke else self.args.epochs)
        train_and_test(images, labels, test_images, test_labels, k, EvalConfig(epochs=1), run=0)  # warm-up
        started = time.time()
        accuracy = train_and_test(images, labels, test_images, test_labels, k, cfg, run=0)
        seconds = time.time() - started
        self.results["student_run"] = {
            "set": name,
            "images": len(images),
            "epochs": cfg.epochs,
            "seconds": round(seconds, 2),
            "accuracy": round(accuracy * 100, 2),
        }
        self.say(f"one student run: {len(images)} images x {cfg.epochs} epochs in {seconds:.1f} s")

    def evaluate(self) -> None:
        names = [row["name"] for row in sorted(self.results["sets"], key=lambda r: -r["ipc"])]
        self.results["eval"] = self.evaluate_sets(names, "eval", self.args.after_eval_seconds)
        self.say(f"evaluated: {len(self.results['eval'])} of {len(names)} sets")

    def evaluate_sets(self, names: list[str], label: str, keep_seconds: float) -> list[dict]:
        """Evaluate the sets `names` (largest first) with `--eval-workers` processes, leaving `keep_seconds` of the
        budget; their result rows."""
        if not names:
            return []
        results = self.work / f"{label}.jsonl"
        results.unlink(missing_ok=True)
        procs = []
        workers = min(self.args.eval_workers, len(names))  # ConvNet-3 runs are launch-bound: processes overlap
        for w in range(workers):
            mine = names[w::workers]
            argv = self.worker("evaluate", "--sets", *mine, "--results", str(results))
            argv += ["--runs", str(self.args.runs), "--epochs", str(self.args.epochs)]
            procs.append(self.spawn(argv, self.work / f"{label}-{w}.log"))
        for proc in procs:
            code = self.finish(proc, self.left() - keep_seconds)
            if code != 0:
                self.skip(f"evaluation worker {proc.log.name}", f"ended with {code}:\n{self.tail(proc.log)}")
        return _read_lines(results)

    # -----------------------------------------------------------------------------------------------------------
    # Stage 4: DiT-XL/2-shaped model, random weights: plain sampling and NOpt beside the dry run
    # -----------------------------------------------------------------------------------------------------------

    def dit(self) -> None:
        import torch
        from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel

        from dsco_hub import distributed, models, plan, presets
        from dsco_hub.config import ConcentrateConfig, NOptConfig, SamplerConfig, derive_seed
        from dsco_hub.nopt import NOptClass, nopt_sample_classes

        if self.left() < 60:
            self.skip("DiT timing", f"{self.left():.0f} s left")
            return
        classes, ipcs, steps, targets = (
            (4, (1, 2), 2, 4) if self.args.smoke else (64, (10, 50), self.args.dit_steps, 16)
        )
        folder = self.work / "dit-xl-2-256"
        started = time.time()
        device = distributed.default_device()
        torch.manual_seed(0)
        with torch.device(device):  # random initialisation on the GPU: seconds instead of a minute on the CPU
            transformer = DiTTransformer2DModel(**(TINY_DIT if self.args.smoke else DIT_XL_2))
            vae = AutoencoderKL(**(TINY_VAE if self.args.smoke else SD_VAE))
        dtype = models.resolve_dtype("auto", device)  # what `concentrate --dtype auto` uses: float16 on CUDA
        transformer.to(dtype).save_pretrained(folder / "transformer")
        config_path = folder / "transformer" / "config.json"
        config_path.write_text(
            json.dumps({**json.loads(config_path.read_text()), "_class_name": "Transformer2DModel"})
        )
        vae.save_pretrained(folder / "vae")
        DDIMScheduler(num_train_timesteps=1000, clip_sample=False).save_pretrained(folder / "scheduler")
        id2label = {str(k): name for k, (_, name) in enumerate(presets.imagenet_classes())}
        index = {
            "_class_name": "DiTPipeline",
            "transformer": ["diffusers", "Transformer2DModel"],
            "id2label": id2label,
        }
        index.update(vae=["diffusers", "AutoencoderKL"], scheduler=["diffusers", "DDIMScheduler"])
        (folder / "model_index.json").write_text(json.dumps(index))
        del transformer, vae
        prior = models.load_prior(str(folder), device=device, dtype=dtype)
        cost = plan.model_cost(str(folder))
        params = sum(p.numel() for p in prior.denoiser.parameters()) + sum(p.numel() for p in prior.vae.parameters())
        self.results["dit"] = {
            "build_seconds": round(time.time() - started, 1),
            "parameters_millions": round(params / 1e6, 1),
            "classes": classes,
            "steps": steps,
            "nopt_targets": targets,
            "dtype": str(dtype).replace("torch.", ""),
            "gflops_per_forward": round(cost.denoiser / 1e9, 1),
            "rows": [],
        }
        self.write_report()
        rate = H200_BF16_TFLOPS * 1e12 * plan.UTILIZATION
        g = torch.Generator().manual_seed(0)
        targets_px = {k: torch.rand(targets, *prior.image_shape, generator=g) * 2 - 1 for k in range(classes)}
        measured: dict[tuple[str, int], float] = {}
        for ipc in ipcs:
            for method in ("diffusion", "dsco"):
                cfg = ConcentrateConfig(method=method, ipc=ipc, steps=steps, nopt=NOptConfig(targets=targets))
                estimate = plan.make_plan(cfg, classes, cost).flops / rate
                guess = measured.get((method, ipcs[0]), 0) * ipc / ipcs[0] if ipc != ipcs[0] else estimate * 3
                if guess > self.left() - 15:
                    self.skip(f"DiT {method} IPC {ipc}", f"would take about {guess:.0f} s, {self.left():.0f} s left")
                    continue
                if device.type == "cuda":
                    torch.cuda.synchronize()
                began = time.time()
                if method == "diffusion":
                    labels = [k for k in range(classes) for _ in range(ipc)]
                    seeds = [derive_seed(0, k, j) for k in range(classes) for j in range(ipc)]
                    images = models.sample(
                        prior, labels, seeds, SamplerConfig(steps=steps, batch_size=cfg.sample_batch_size)
                    )
                else:
                    per_unit = distributed.classes_per_unit(ipc, classes)
                    images = []
                    for first in range(0, classes, per_unit):
                        batch = []
                        for k in range(first, min(first + per_unit, classes)):
                            encoded = prior.encode(targets_px[k].to(device))  # the VAE encode of the targets
                            seeds = [derive_seed(0, k, j) for j in range(ipc)]
                            batch.append(NOptClass(k, seeds, encoded, phi_seed=derive_seed(0, "phi", k)))
                        done, _ = nopt_sample_classes(
                            prior, batch, cfg.nopt, SamplerConfig(steps=steps, batch_size=cfg.sample_batch_size)
                        )
                        images += done
                    images = torch.cat(images)
                seconds = time.time() - began
                measured[(method, ipc)] = seconds
                row = {
                    "method": "plain sampling" if method == "diffusion" else "NOpt (dsco)",
                    "ipc": ipc,
                    "images": int(images.shape[0]),
                    "seconds": round(seconds, 1),
                    "images_per_second": round(images.shape[0] / seconds, 2),
                    "dry_run_seconds_h200": round(estimate, 1),
                }
                self.results["dit"]["rows"].append(row)
                self.say(f"DiT {row['method']} IPC {ipc}: {seconds:.1f} s (dry run {estimate:.1f} s)")
                self.write_report()

    # -----------------------------------------------------------------------------------------------------------
    # Stage 5: the ship rule over set seeds, both priors made and evaluated here
    # -----------------------------------------------------------------------------------------------------------

    def ship(self) -> None:
        if not hasattr(self, "prior_path"):
            self.skip("ship rule", "no prior was trained")
            return
        if self.left() < 30:
            self.skip("ship rule", f"{self.left():.0f} s left")
            return
        ipcs = [str(i) for i in self.args.ship_ipcs]
        seeds = [str(s) for s in self.args.ship_seeds]
        evaluated = {row["name"] for row in self.results.get("eval", [])}
        have_seed0 = all(set_name("dsco", i) in evaluated for i in self.args.ship_ipcs)  # the quality table's
        jobs = [  # (label, prior, seeds, tag): the trained prior's (seed 0 from the quality table), the shipped one's
            ("ship-trained", str(self.prior_path), [s for s in seeds if not (have_seed0 and s == "0")], ""),
            ("ship-shipped", None, seeds, SHIPPED),
        ]
        procs = []
        for label, prior, own, tag in [job for job in jobs if job[2]]:
            results = self.work / f"sets-{label}.jsonl"
            results.unlink(missing_ok=True)
            argv = self.worker("sets", "--methods", "dsco", "--ipcs", *ipcs, "--seeds", *own, "--tag", tag)
            argv += [*(["--prior", prior] if prior else []), "--results", str(results)]
            procs.append((label, self.spawn(argv, self.work / f"sets-{label}.log"), results))
        for label, proc, _ in procs:
            code = self.finish(proc, self.left() * 0.6)  # what is left after making them goes to evaluating them
            if code != 0:
                self.skip(f"{label} sets", f"ended with {code}:\n{self.tail(proc.log)}")
        names = [row["name"] for _, _, path in procs for row in _read_lines(path)]
        quality = self.results.get("eval", []) if have_seed0 else []
        seed0 = [r for r in quality if r["method"] == "dsco" and r["ipc"] in self.args.ship_ipcs]
        ship = self.evaluate_sets(sorted(names, key=lambda n: -parse_set_name(n)["ipc"]), "ship", 5)
        self.results["ship"] = [*seed0, *ship]
        self.say(f"ship rule: {len(ship)} of {len(names)} sets evaluated")

    # -----------------------------------------------------------------------------------------------------------
    # Report
    # -----------------------------------------------------------------------------------------------------------

    def write_report(self) -> None:
        import torch

        r = self.results
        r["elapsed_seconds"] = round(time.time() - self.started, 1)
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"no GPU ({platform.machine()} CPU)"
        r["machine"] = f"{gpu}, torch {torch.__version__}, CUDA {torch.version.cuda}"
        (self.out / "results.json").write_text(json.dumps(r, indent=1) + "\n")
        lines = [
            "# GPU check (`bash bench/gpu_check.sh`)" + (" — SMOKE RUN, tiny settings" if self.args.smoke else ""),
            "",
            f"Machine: {r['machine']}. Elapsed: {r['elapsed_seconds']} s of a {self.args.budget:.0f} s budget.",
            "",
        ]
        if "tests" in r:
            t = r["tests"]
            lines += [
                f"Tests marked gpu: `{t['summary']}` (exit {t['exit_code']}, {t['seconds']} s; pytest_gpu.log).",
                "",
            ]
        if "prior" in r:
            p = r["prior"]
            lines += ["## Prior", "", f"- command: `{p.get('command', '(not run)')}`"]
            lines += [f"- calibrated step: {p['calibrated_step_seconds'] * 1000:.1f} ms; {p['max_steps']} steps"]
            if "steps_per_second" in p:
                lines += [
                    f"- precision (auto, resolved): {p['mixed_precision']}; {p['steps_per_second']} steps/s over the "
                    f"whole command ({p['seconds']} s with data decoding and the samples grid)",
                    f"- card: {p['wall_time_line']}; final loss {p['card_loss_line']}",
                    f"- files: {p.get('tar', '')}",
                ]
            lines.append("")
        if "eval" in r or "sets" in r:
            ipcs = self.args.ipcs
            lines += [
                "## Quality table",
                "",
                "Sets made with the prior above (random and herding need none), evaluated on "
                f"{self._device_of_eval()}: ConvNet-3, hard labels, {self.args.runs} runs x {self.args.epochs} "
                "epochs, test accuracy (%) on the source's test split, mean ± std. In brackets: the shipped "
                "prior's figures (bench/results/baselines.md).",
                "",
                "| method | " + " | ".join(f"IPC {i}" for i in ipcs) + " |",
                "|---|" + "---|" * len(ipcs),
            ]
            found = {(row["method"], row["ipc"]): row for row in r.get("eval", [])}
            figures = {} if self.args.smoke else shipped_figures()
            for method in METHODS:
                cells = []
                for ipc in ipcs:
                    row = found.get((method, ipc))
                    shipped = figures.get(method, {}).get(ipc)
                    cell = f"{row['accuracy_mean']:.1f} ± {row['accuracy_std']:.1f}" if row else "—"
                    cells.append(f"{cell} ({shipped:.1f})" if shipped is not None else cell)
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            made = {(row["method"], row["ipc"]): row["seconds"] for row in r.get("sets", [])}
            timing = [
                f"{m} IPC {i}: {made.get((m, i), '—')} / {found[(m, i)]['seconds'] if (m, i) in found else '—'}"
                for m in METHODS
                for i in ipcs
            ]
            lines += ["", "Seconds to make / evaluate each set (processes side by side): " + "; ".join(timing) + "."]
            if "student_run" in r:
                s = r["student_run"]
                lines += [
                    "",
                    f"One student run alone: {s['images']} images ({s['set']}) x {s['epochs']} epochs in "
                    f"{s['seconds']} s ({s['accuracy']} % on the test split).",
                ]
            lines.append("")
        if "dit" in r:
            d = r["dit"]
            lines += [
                "## DiT-XL/2-shaped model, random weights",
                "",
                f"{d['parameters_millions']} M parameters (DiT + VAE), denoiser in {d['dtype']}, "
                f"{d['gflops_per_forward']} GFLOPs per forward; {d['classes']} ImageNet classes, {d['steps']} DDIM "
                f"steps, guidance 2.0, {d['nopt_targets']} NOpt targets per class (VAE-encoded in the timed part); "
                f"built, saved and loaded in {d['build_seconds']} s. Dry run: `concentrate --dry-run`'s FLOPs at "
                f"{H200_BF16_TFLOPS:.0f} TFLOP/s x 40 %.",
                "",
                "| what | IPC | images | seconds | images/s | dry-run estimate (s) |",
                "|---|---|---|---|---|---|",
            ]
            for row in d["rows"]:
                lines.append(
                    f"| {row['method']} | {row['ipc']} | {row['images']} | {row['seconds']} | "
                    f"{row['images_per_second']} | {row['dry_run_seconds_h200']} |"
                )
            lines.append("")
        if "ship" in r:
            lines += self.ship_report(r["ship"])
        if r["skipped"]:
            lines += ["## Skipped or failed", ""] + [f"- {s}".replace("\n", "\n  ") for s in r["skipped"]] + [""]
        (self.out / "gpu_check.md").write_text("\n".join(lines))

    def ship_report(self, rows: list[dict]) -> list[str]:
        """The ship stage's table: DsCo (rho 0) per prior, IPC and set seed, and the verdict of issue 14's rule."""
        seeds, ipcs = self.args.ship_seeds, self.args.ship_ipcs
        found = {(row["prior"], row["ipc"], row["seed"]): row["accuracy_mean"] for row in rows}
        lines = [
            "## Ship rule: DsCo (rho 0) over set seeds, both priors made and evaluated here",
            "",
            f"ConvNet-3, hard labels, {self.args.runs} runs x {self.args.epochs} epochs per set; each cell is a set's "
            "mean over its runs, the last columns the mean ± std over the sets.",
            "",
            "| prior | IPC | " + " | ".join(f"seed {s}" for s in seeds) + " | sets |",
            "|---|---|" + "---|" * (len(seeds) + 1),
        ]
        summary: dict[tuple[str, int], tuple[float, float, int]] = {}
        for prior in ("trained", "shipped"):
            for ipc in ipcs:
                values = [found[(prior, ipc, s)] for s in seeds if (prior, ipc, s) in found]
                cells = [f"{found[(prior, ipc, s)]:.1f}" if (prior, ipc, s) in found else "—" for s in seeds]
                if values:
                    mean = sum(values) / len(values)
                    std = (sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5
                    summary[(prior, ipc)] = (mean, std, len(values))
                    cells.append(f"{mean:.1f} ± {std:.1f} ({len(values)})")
                else:
                    cells.append("—")
                lines.append(f"| {prior} | {ipc} | " + " | ".join(cells) + " |")
        lines += ["", ship_verdict(summary, ipcs, len(seeds)), ""]
        return lines

    def _device_of_eval(self) -> str:
        rows = self.results.get("eval", [])
        return f"{rows[0]['device']} ({rows[0]['precision']})" if rows else "this machine"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/dsco-gpu-check"))
    parser.add_argument(
        "--data", default=".gpu_carry/fashion_mnist", help="Fashion-MNIST folder; '' = embedded subset"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny settings for every stage (a CPU run in minutes)")
    parser.add_argument("--budget", type=float, default=465.0, help="seconds for everything, from GPU_CHECK_STARTED")
    parser.add_argument("--tests-seconds", type=float, default=120.0)
    parser.add_argument("--prior-seconds", type=float, default=180.0, help="training steps' share of the budget")
    parser.add_argument("--after-prior-seconds", type=float, default=170.0, help="kept for the later stages")
    parser.add_argument("--after-sets-seconds", type=float, default=115.0, help="kept for evaluation and the DiT")
    parser.add_argument("--after-eval-seconds", type=float, default=75.0, help="kept for the DiT timing")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, help="stages to run, in order")
    parser.add_argument("--ipcs", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--eval-workers", type=int, default=6)
    parser.add_argument("--dit-steps", type=int, default=5, help="DDIM steps of the DiT timing (the dry run's too)")
    parser.add_argument("--ship-ipcs", type=int, nargs="+", default=[10, 50], help="IPCs of the ship rule")
    parser.add_argument("--ship-seeds", type=int, nargs="+", default=[0, 1, 2], help="set seeds of the ship rule")
    parser.add_argument("--worker", choices=["sets", "evaluate"], help=argparse.SUPPRESS)
    parser.add_argument("--methods", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--sets", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--prior", help=argparse.SUPPRESS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="", help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data = args.data or None
    if args.smoke:
        args.ipcs, args.runs, args.epochs, args.eval_workers = [1], 1, 1, 2
        args.ship_ipcs, args.ship_seeds = [1], [0, 1]
    if args.worker == "sets":
        worker_sets(args)
        return
    if args.worker == "evaluate":
        worker_evaluate(args)
        return

    check = Check(args)
    try:
        for stage in [s for s in STAGES if s in args.stages]:
            began = time.time()
            try:
                if stage == "tests":
                    check.tests()
                elif stage == "prior":
                    real = check.start_real_sets() if "sets" in args.stages else None
                    check.prior()
                elif stage == "sets":
                    check.synthetic_sets(real if "prior" in args.stages else check.start_real_sets())
                else:
                    getattr(check, stage)()
            except Exception as err:  # a stage's failure is reported, the next stage still runs
                check.skip(stage, f"{type(err).__name__}: {err}")
            check.results["stages"][f"{stage}_seconds"] = round(time.time() - began, 1)
            check.write_report()
    finally:
        check.end_all()
        check.write_report()
    check.say(f"done: {args.out / 'gpu_check.md'}")


if __name__ == "__main__":
    main()
