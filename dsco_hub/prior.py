"""`dsco-hub prior train`: train a class-conditional pixel-space diffusion prior (DDPM) on a source dataset.

Users of domains without a pretrained class-conditional model (medical, satellite, industrial)
train one here. The model is a diffusers `UNet2DModel` with `num_class_embeds = K + 1`; labels
are dropped to the null class `K` with probability `label_dropout` so the prior supports
classifier-free guidance (Ho and Salimans, 2022). Training is the DDPM epsilon objective
(Ho et al., 2020), optionally Min-SNR-gamma weighted (Hang et al., 2023), with an EMA of the weights,
run through `accelerate` (one CPU or many GPUs), with checkpoints every `checkpoint_every` steps that
a rerun of the same command resumes from.

Batches are a pure function of `(seed, step, rank)`, so a resumed run sees the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import broadcast_object_list
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel, compute_snr

from dsco_hub import distributed
from dsco_hub.card import prior_card
from dsco_hub.config import PriorTrainConfig, SamplerConfig, derive_seed, option_name
from dsco_hub.data import (
    decode_images,
    fingerprint,
    image_grid,
    load_source,
    pin_revision,
    source_folder,
    to_model_range,
    to_uint8,
)
from dsco_hub.errors import ConfigError, OutputError
from dsco_hub.files import atomic_write, check_out_path, open_file_modes
from dsco_hub.models import DiffusionPrior, sample, save_unet_prior
from dsco_hub.text import command_line
from dsco_hub.ui import progress_bar
from dsco_hub.writer import check_fingerprint

STATE_FILE = "training_state.json"
LOG_EVERY = 50  # steps between reads of the loss on the host (each read waits for the device to finish its queue)


def _resolution(cfg: PriorTrainConfig, height: int, width: int) -> int:
    if cfg.resolution is not None:
        return cfg.resolution
    side = min(height, width)
    multiple = 2 ** (len(cfg.block_out_channels) - 1)
    return side if side <= 64 and side % multiple == 0 else 32


def build_unet(cfg: PriorTrainConfig, num_classes: int, channels: int, resolution: int) -> UNet2DModel:
    """The prior's `UNet2DModel`: attention-free, `len(block_out_channels)` levels, `num_classes + 1` embeddings."""
    levels = len(cfg.block_out_channels)
    return UNet2DModel(
        sample_size=resolution,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        norm_num_groups=cfg.norm_num_groups,
        num_class_embeds=num_classes + 1,
    )


def _resume(accelerator, ema, ckpt_dir: Path, out: str) -> tuple[int, float, float | None]:
    """Load the newest readable checkpoint of `ckpt_dir` into the prepared training state; `(0, 0.0, None)` if none.

    A checkpoint is written atomically, yet a file of it can still be truncated or damaged later (a full disk, a
    copy cut short): then the one before it (the last two are kept) is loaded instead, with a warning. Batches are a
    pure function of the step, so the run still ends with the weights of an uninterrupted one.

    Returns:
        `tuple`: the step to continue from, the wall time so far (seconds) and the loss EMA (None before the first
        logged step).

    Raises:
        OutputError: checkpoints exist but none can be read (one line: the folder and the fix).
    """
    done = sorted(p for p in ckpt_dir.glob("step-*") if (p / STATE_FILE).exists())
    for checkpoint in reversed(done):
        try:
            # Weights and optimizer load onto the device whichever device saved them; the EMA loads on the CPU
            # (accelerate's custom state), so it is moved back beside the model
            accelerator.load_state(str(checkpoint), map_location="cpu")
            state = json.loads((checkpoint / STATE_FILE).read_text())
        except Exception as err:  # a torch, pickle, safetensors or JSON error: whichever file is damaged
            accelerator.print(
                f"checkpoint {checkpoint} cannot be read ({type(err).__name__}); trying the one before it",
                file=sys.stderr,
            )
            continue
        ema.to(accelerator.device)
        accelerator.print(f"resuming from {checkpoint} (step {state['step']})")
        return state["step"], state["elapsed_seconds"], state["loss_ema"]
    if done:
        raise OutputError(
            f"--out={out!r}: no checkpoint in {ckpt_dir} can be read ({', '.join(p.name for p in done)}); delete "
            f"{ckpt_dir} to train this run again from step 0, or pass another --out."
        )
    return 0, 0.0, None


def train_prior(cfg: PriorTrainConfig, command: str | None = None) -> Path:
    """Train (or resume) a class-conditional UNet prior and save it as a diffusers folder.

    Output `cfg.out`: `model_index.json` (with `id2label`), `unet/` (EMA weights, safetensors), `scheduler/`
    (DDIM, the training noise schedule), `samples.png`, `README.md` (model card with the command and wall
    time), `prior_config.json` (the settings and the source's fingerprint), and `checkpoints/step-N/` (accelerate
    state + EMA) that a rerun resumes from. A resume or an extension is refused when the source's data changed since
    the run started (`data.fingerprint`), and a Hub source is loaded at the commit recorded then
    (`data.pin_revision`).

    Args:
        cfg (`PriorTrainConfig`): the training settings (see its field comments).
        command (`str`, *optional*): the command line to record in the card; defaults to `sys.argv` with `--token`
            masked (`text.command_line`).

    Returns:
        `Path`: the output folder.

    Raises:
        ConfigError: invalid settings, or a resume whose saved settings differ from `cfg` (names the option) or
            whose source data changed.
        OutputError: `cfg.out` holds a finished prior or unrelated files.
        SourceError: the source cannot be used.
    """
    cfg.validate()
    out = Path(cfg.out)
    check_out_path(cfg.out, "--out", [source_folder(cfg.source)])  # never a user's folder, nor the package
    ckpt_dir = out / "checkpoints"
    saved_cfg_path = out / "prior_config.json"
    saved = json.loads(saved_cfg_path.read_text()) if saved_cfg_path.exists() else None
    device = distributed.default_device()
    cfg = dataclasses.replace(cfg, mixed_precision=_precision(cfg, saved, device))
    wanted = json.loads(json.dumps(cfg.to_dict()))
    extended_from: list[int] = []
    if saved is not None:
        extended_from = saved.pop("extended_from", [])
        diff = [k for k in wanted if k not in ("out",) and saved.get(k) != wanted[k]]
        if diff == ["max_steps"] and wanted["max_steps"] > saved["max_steps"]:
            # Extension: continue a run past its old end; the cosine schedule restarts from its value at
            # the saved step under the new length (a warm restart), so the result differs from a fresh run.
            extended_from = [*extended_from, saved["max_steps"]]
        elif diff:
            also = f"; also {', '.join(option_name(k) for k in diff[1:])}" if len(diff) > 1 else ""
            raise ConfigError(
                f"--out={cfg.out!r} holds a prior run with different settings ({option_name(diff[0])}: "
                f"{saved.get(diff[0])!r} there, {wanted[diff[0]]!r} now{also}); "
                "rerun with the same options, raise only --max-steps to train further, or use another --out."
            )
        elif (out / "model_index.json").exists():
            raise OutputError(
                f"--out={cfg.out!r} already holds a finished prior; raise --max-steps to train it further "
                "or pass another --out to train again."
            )
    elif out.exists() and any(out.iterdir()):
        raise OutputError(f"--out={cfg.out!r} exists and is not empty; pass an empty or new folder.")

    accelerator = distributed.make_accelerator(cfg.mixed_precision, project_dir=str(out))
    warning = distributed.mixed_precision_warning(cfg.mixed_precision, accelerator.device)
    if warning:
        accelerator.print(warning, file=sys.stderr)
    made_from = broadcast_object_list([fingerprint(cfg.source)])[0]  # the main process's: one commit for all
    if saved is not None:
        fix = "pass another --out to train a prior on it"
        check_fingerprint(saved.get("source_fingerprint"), made_from, f"the prior run in {cfg.out}", fix=fix)
        made_from = saved.get("source_fingerprint", made_from)  # a run saved by an older version recorded none
    source = load_source(pin_revision(cfg.source, made_from))
    cfg.check_batch_size(len(source.labels))
    channels = cfg.channels or source.image_shape[0]
    resolution = _resolution(cfg, *source.image_shape[1:])
    num_classes = source.num_classes
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        recorded = {**wanted, "extended_from": extended_from, "source_fingerprint": made_from}
        atomic_write(saved_cfg_path, json.dumps(recorded, indent=2) + "\n")
    accelerator.wait_for_everyone()

    # Data: the whole split as uint8 (N, C, R, R); memory = N * C * R * R bytes
    with progress_bar() as bar:
        task = bar.add_task("decode", total=len(source.labels), info=f"{resolution}px x{channels}")
        images = decode_images(
            source, range(len(source.labels)), channels, resolution, progress=lambda n: bar.advance(task, n)
        )
    labels = torch.from_numpy(source.labels)

    # Model, noise schedule, optimizer, EMA: the EMA is made after `prepare`, from the weights on the device
    distributed.seed_everything(cfg.seed)
    unet, noise_scheduler, optimizer, lr_scheduler, ema = make_training_state(
        cfg, num_classes, channels, resolution, accelerator
    )

    step, elapsed, loss_ema = _resume(accelerator, ema, ckpt_dir, cfg.out)

    # Training loop: batch = f(seed, step, rank). Losses stay on the device and are read every LOG_EVERY steps and
    # at checkpoints, never once a step: a GPU would otherwise idle while the host waits for each step to finish
    rank = accelerator.process_index
    started = time.time() - elapsed
    unet.train()
    losses: list[torch.Tensor] = []  # this step's and the unread steps' losses, 0-d float32 on the device
    # Min-SNR-gamma weight of every timestep, looked up per batch: (T,) float32, or None for the plain loss
    snr_weights = None
    if cfg.snr_gamma is not None:
        snr_weights = min_snr_weights(noise_scheduler, torch.arange(cfg.num_train_timesteps), cfg.snr_gamma)
    with progress_bar() as bar:
        task = bar.add_task("train prior", total=cfg.max_steps, completed=step, info="")
        while step < cfg.max_steps:
            x_t, t, y, noise = training_batch(cfg, images, labels, num_classes, noise_scheduler, step, rank)
            weights = None if snr_weights is None else snr_weights[t]
            loss = train_step(accelerator, unet, optimizer, lr_scheduler, ema, x_t, t, y, noise, weights=weights)
            losses.append(loss)
            step += 1
            checkpoint = step % cfg.checkpoint_every == 0 or step == cfg.max_steps
            if checkpoint or step % LOG_EVERY == 0:
                loss_ema = _read_losses(accelerator, losses, loss_ema)
                losses = []
                bar.update(task, info=f"loss {loss_ema:.4f}")
            bar.update(task, completed=step)
            if checkpoint:
                _save_checkpoint(accelerator, ckpt_dir, step, time.time() - started, loss_ema)
    wall = time.time() - started

    # Final model: EMA weights, DDIM scheduler with the training schedule, samples grid, model card
    if accelerator.is_main_process:
        final = build_unet(cfg, num_classes, channels, resolution)
        final.load_state_dict(accelerator.unwrap_model(unet).state_dict())
        ema.copy_to(final.parameters())
        final.eval().requires_grad_(False)
        # Sampling does not clip x0: DDIM clips x0_hat but keeps the unclipped eps (use_clipped_model_output=False),
        # which at the first, noisiest steps shrinks the signal and, under guidance, erases classes (shipped prior:
        # 70.8 % class fidelity with clipping, 98.0 % without, bench/results/prior_quality*.md).
        ddim = DDIMScheduler.from_config(noise_scheduler.config, clip_sample=False)
        id2label = dict(enumerate(source.class_names))
        staging = out / ".final.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        save_unet_prior(final, ddim, id2label, staging)
        final.to(accelerator.device)  # the samples grid is drawn where training ran (noise is drawn on the CPU)
        prior = DiffusionPrior(denoiser=final, scheduler=ddim, id2label=id2label, name=str(out))
        per_class = 10
        grid_labels = [k for k in range(num_classes) for _ in range(per_class)]
        grid_seeds = [derive_seed(cfg.seed, "card", k, j) for k in range(num_classes) for j in range(per_class)]
        grid_sampler = SamplerConfig(steps=cfg.sample_steps, guidance_scale=cfg.sample_guidance)
        grid = sample(prior, grid_labels, grid_seeds, grid_sampler)
        image_grid(to_uint8(grid), rows=num_classes).save(staging / "samples.png")
        prior_card(
            cfg,
            source,
            final,
            num_classes,
            channels,
            resolution,
            wall,
            loss_ema,
            command or command_line(),
            per_class,
            extended_from,
        ).save(staging / "README.md")
        for item in staging.iterdir():
            target = out / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
        staging.rmdir()
    accelerator.wait_for_everyone()
    return out


def _precision(cfg: PriorTrainConfig, saved: dict | None, device: torch.device) -> str:
    """The run's resolved `--mixed-precision`: the saved run's own on a resume, else `cfg`'s resolved on `device`.

    Raises:
        ConfigError: a resume asks for another precision than the saved run's, or the saved precision cannot run
            on this device (fp16 needs CUDA); one line naming `--mixed-precision`, both values and the fix.
    """
    resolved = distributed.resolve_mixed_precision(cfg.mixed_precision, device)
    if saved is None or "mixed_precision" not in saved:
        return resolved
    there = saved["mixed_precision"]
    if cfg.mixed_precision == "auto":
        if distributed.resolve_mixed_precision(there, device) == there:
            return there  # a resumed run keeps the precision it started with, whichever device resumes it
        raise ConfigError(
            f"--mixed-precision: the run in --out={cfg.out!r} trains in {there!r}, which {device.type} cannot run "
            f"(it would be {resolved!r} here; {there!r} there, auto now); resume it on a CUDA device, or train "
            "again in another --out."
        )
    if resolved != there:
        raise ConfigError(
            f"--mixed-precision={cfg.mixed_precision!r} differs from the run in --out={cfg.out!r} ({there!r} there, "
            f"{resolved!r} now); a resumed run keeps its precision: pass --mixed-precision auto (or {there}), "
            "or use another --out."
        )
    return resolved


def make_training_state(
    cfg: PriorTrainConfig, num_classes: int, channels: int, resolution: int, accelerator
) -> tuple[UNet2DModel, DDPMScheduler, torch.optim.Optimizer, object, EMAModel]:
    """The prior's UNet, noise schedule, AdamW, cosine schedule and EMA, prepared on `accelerator.device`.

    The UNet is built on the CPU from the global RNG (seed it first), moved by `accelerator.prepare`, and only then
    is the EMA made from its weights, so the EMA's shadow weights live on the training device (an EMA made before
    `prepare` keeps them on the CPU and `EMAModel.step` fails on a GPU). AdamW is fused on CUDA (the same update,
    one kernel) and the plain loop on the CPU, whose results stay as they were.

    Args:
        cfg (`PriorTrainConfig`): the architecture, optimizer and EMA settings.
        num_classes (`int`): real classes `K`; the UNet embeds `K + 1` (the last one the null class).
        channels (`int`): image channels, 1 or 3.
        resolution (`int`): training side in pixels.
        accelerator (`accelerate.Accelerator`): from `distributed.make_accelerator`.

    Returns:
        `tuple`: `(unet, noise_scheduler, optimizer, lr_scheduler, ema)`, the first, third and fourth wrapped by
        `accelerator.prepare` (and the EMA registered for its checkpoints).
    """
    unet = build_unet(cfg, num_classes, channels, resolution)
    noise_scheduler = DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type="epsilon",
        clip_sample=True,
    )
    fused = {"fused": True} if accelerator.device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0, **fused)
    lr_scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.max_steps)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    ema = EMAModel(
        accelerator.unwrap_model(unet).parameters(),
        decay=cfg.ema_max_decay,
        use_ema_warmup=True,
        inv_gamma=1.0,
        power=cfg.ema_power,
    )
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)
    return unet, noise_scheduler, optimizer, lr_scheduler, ema


def training_batch(
    cfg: PriorTrainConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    noise_scheduler: DDPMScheduler,
    step: int,
    rank: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch of `step` on process `rank`, a pure function of `(cfg.seed, step, rank)` drawn on the CPU.

    Args:
        cfg (`PriorTrainConfig`): batch size, flips, label dropout, timesteps and seed.
        images (`torch.Tensor`): `(N, C, R, R)` uint8 in `[0, 255]`, the training split.
        labels (`torch.Tensor`): `(N,)` int64 in `[0, num_classes)`.
        num_classes (`int`): `K`; dropped labels become the null class `K`.
        noise_scheduler (`DDPMScheduler`): the training noise schedule (`alphas_cumprod`).
        step (`int`): the optimizer step, from 0.
        rank (`int`): the process index.

    Returns:
        `tuple`: `x_t` `(B, C, R, R)` float32 noisy images, `t` `(B,)` int64 timesteps in `[0, T)`, `y` `(B,)`
        int64 labels in `[0, K]`, `noise` `(B, C, R, R)` float32 standard normal; all on the CPU.
    """
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "batch", step, rank))
    idx = torch.randint(0, len(labels), (cfg.batch_size,), generator=g)
    x0 = to_model_range(images[idx])  # (B, C, R, R) in [-1, 1]
    if cfg.flip:
        flip = torch.rand(cfg.batch_size, generator=g) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
    y = labels[idx].clone()
    y[torch.rand(cfg.batch_size, generator=g) < cfg.label_dropout] = num_classes  # null class
    t = torch.randint(0, cfg.num_train_timesteps, (cfg.batch_size,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    alphas = noise_scheduler.alphas_cumprod
    a = alphas[t].sqrt()[:, None, None, None]  # (B, 1, 1, 1)
    s = (1 - alphas[t]).sqrt()[:, None, None, None]
    return a * x0 + s * noise, t, y, noise


def min_snr_weights(noise_scheduler: DDPMScheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights of an epsilon-prediction objective (Hang et al., "Efficient Diffusion Training via
    Min-SNR Weighting Strategy", ICCV 2023, arXiv 2303.09556): `min(SNR(t), gamma) / SNR(t)`.

    `SNR(t) = alpha_bar_t / (1 - alpha_bar_t)` (diffusers' `training_utils.compute_snr`, as its training scripts'
    `--snr_gamma` use it). Noisy steps (SNR <= gamma) keep weight 1; the weight of cleaner steps falls as
    `gamma / SNR`, so they no longer dominate the gradient.

    Args:
        noise_scheduler (`DDPMScheduler`): the training noise schedule (`alphas_cumprod`).
        t (`torch.Tensor`): `(B,)` int64 timesteps in `[0, num_train_timesteps)`.
        gamma (`float`): the SNR cap, positive (the paper uses 5).

    Returns:
        `torch.Tensor`: `(B,)` float32 weights in `(0, 1]`, on `t`'s device.
    """
    snr = compute_snr(noise_scheduler, t).float()
    return torch.clamp(snr, max=gamma) / snr


def train_step(
    accelerator, unet, optimizer, lr_scheduler, ema, x_t, t, y, noise, clip_norm: float = 1.0, weights=None
):
    """One optimizer step of the DDPM epsilon objective (Ho et al., 2020), then one EMA update.

    The batch moves to `accelerator.device`; the forward runs under the accelerator's autocast (bf16 or fp16, with
    the gradient scaler for fp16), the loss is computed in float32, gradients are clipped to `clip_norm`. With
    `weights`, the loss is the batch mean of each sample's mean squared error times its weight (Min-SNR-gamma,
    `min_snr_weights`); without, the plain mean squared error.

    Args:
        accelerator (`accelerate.Accelerator`): owns the device, autocast and gradient scaler.
        unet, optimizer, lr_scheduler: as `make_training_state` returns them.
        ema (`EMAModel`): updated from the unwrapped UNet's weights (on the same device).
        x_t (`torch.Tensor`): `(B, C, R, R)` float32 noisy images.
        t (`torch.Tensor`): `(B,)` int64 timesteps.
        y (`torch.Tensor`): `(B,)` int64 labels in `[0, K]`.
        noise (`torch.Tensor`): `(B, C, R, R)` float32, the regression target.
        clip_norm (`float`, *optional*, defaults to 1.0): gradient norm clip.
        weights (`torch.Tensor`, *optional*): `(B,)` float32 per-sample loss weights; None = unweighted.

    Returns:
        `torch.Tensor`: the loss, 0-d float32 on the device, detached (reading it waits for the step).
    """
    device = accelerator.device
    x_t, noise = x_t.to(device, non_blocking=True), noise.to(device, non_blocking=True)
    with accelerator.autocast():
        pred = unet(x_t, t.to(device, non_blocking=True), class_labels=y.to(device, non_blocking=True)).sample
    if weights is None:
        loss = F.mse_loss(pred.float(), noise)
    else:
        per_sample = F.mse_loss(pred.float(), noise, reduction="none").mean(dim=(1, 2, 3))  # (B,)
        loss = (per_sample * weights.to(device, non_blocking=True)).mean()
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(unet.parameters(), clip_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    ema.step(accelerator.unwrap_model(unet).parameters())
    return loss.detach()


def _read_losses(accelerator, losses: list[torch.Tensor], loss_ema: float | None) -> float | None:
    """Fold unread per-step losses into the running loss (0.98 EMA of the mean over processes), one host read."""
    if not losses:
        return loss_ema
    per_step = accelerator.gather(torch.stack(losses)[None])  # (W, n): every process's losses of these n steps
    for value in per_step.mean(dim=0).tolist():
        loss_ema = value if loss_ema is None else 0.98 * loss_ema + 0.02 * value
    return loss_ema


def _save_checkpoint(accelerator, ckpt_dir: Path, step: int, elapsed: float, loss_ema: float) -> None:
    """Write `checkpoints/step-N` atomically (a temp folder renamed once complete) and keep the last two."""
    tmp = ckpt_dir / f".step-{step:08d}.tmp"
    final = ckpt_dir / f"step-{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        state = {"step": step, "elapsed_seconds": elapsed, "loss_ema": loss_ema}
        (tmp / STATE_FILE).write_text(json.dumps(state) + "\n")
        open_file_modes(tmp)  # a run another user resumes can read its weights (safetensors writes 0600)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(p for p in ckpt_dir.glob("step-*"))[:-2]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
