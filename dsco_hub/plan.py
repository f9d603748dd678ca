"""`concentrate --dry-run`: what a run will do and cost, computed from the settings and the model's FLOP count.

Cost model (per synthetic image; `g` = 2 with classifier-free guidance, else 1):

- plain guided DDIM: `steps * g` denoiser forwards;
- NOpt adds, on each of the `ceil(window * steps)` optimized steps, `iters * 3 * g` forward-equivalents (one
  forward with autograd and its backward, a backward costing about two forwards, `docs/method.md` §3), plus one
  more forward per iteration when a unit (one class, or several sharing the denoiser's batches on datasets of 64
  classes or more, `distributed.classes_per_unit`) has more synthetic images than `--sample-batch-size` (the
  two-pass gradient of `nopt.nopt_sample_classes`);
- latent models: one VAE decode per image, and one VAE encode per NOpt target image;
- data-free mode: `pool_size` plain samples per class for the targets.

FLOPs per call are counted with `torch.utils.flop_counter.FlopCounterMode` on the model built from its config on
the meta device (nothing is downloaded but the config; no weights). For `facebook/DiT-XL-2-256` the counts are
built in (measured that way: 237.3 GFLOPs per DiT forward per image, i.e. twice the 118.6 "Gflops" of the DiT paper,
Peebles and Xie 2023, which count multiply-accumulates; 622 GFLOPs per VAE decode, 273 per encode, at 256 px).
Time = FLOPs / (GPU dense bf16 peak x `UTILIZATION`), which assumes batches large enough to keep the GPU busy (a
unit's classes share the batches so that small IPCs reach them). Herding, feature maps and I/O are not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from dsco_hub import distributed, models
from dsco_hub.config import ConcentrateConfig
from dsco_hub.errors import ModelError

# Dense bf16 tensor-core peak, TFLOP/s, from NVIDIA's datasheets (H100 SXM5, A100 SXM4, L40S, L4; no sparsity)
GPU_BF16_TFLOPS = {"H100 SXM": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
UTILIZATION = 0.4  # assumed fraction of the peak a DiT-size model sustains in bf16 (our assumption, not measured)
PNG_RATIO = 0.5  # assumed PNG size / raw uint8 size for natural images (rough; synthetic images are PNG-encoded)


@dataclass(frozen=True)
class ModelCost:
    """FLOPs of one call per image and the shapes of a diffusion prior.

    Attributes:
        denoiser (`float`): FLOPs of one denoiser forward for one image.
        decode (`float`): FLOPs of one VAE decode (0 for pixel models).
        encode (`float`): FLOPs of one VAE encode (0 for pixel models).
        image_shape (`tuple[int, int, int]`): `(channels, height, width)` of output images.
        source (`str`): where the figures come from.
    """

    denoiser: float
    decode: float
    encode: float
    image_shape: tuple[int, int, int]
    source: str


KNOWN_COSTS = {
    "facebook/DiT-XL-2-256": ModelCost(
        237.33e9, 622.19e9, 272.72e9, (3, 256, 256), "FlopCounterMode on the DiT-XL/2 and SD-VAE configs"
    ),
}


def _count(module: torch.nn.Module, *args, **kwargs) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        module(*args, **kwargs)
    return float(counter.get_total_flops())


def model_cost(model: str | None, revision: str | None = None) -> ModelCost:
    """FLOPs per image of the denoiser (and VAE) of `model`, counted on the meta device from its configs.

    Args:
        model (`str`, *optional*): a Hub id or a folder; None = the shipped prior.
        revision (`str`, *optional*): Hub revision.

    Raises:
        ModelError: the model's configs cannot be read (offline Hub id, missing folder, unknown layout).
    """
    if model in KNOWN_COSTS:
        return KNOWN_COSTS[model]
    from diffusers import AutoencoderKL, DiTTransformer2DModel, UNet2DModel

    path = model or str(models.shipped_prior_path())
    kwargs = {"revision": revision} if revision else {}
    try:
        index = models.load_model_index(path, revision)
        with torch.device("meta"):
            if "transformer" in index:
                dit = DiTTransformer2DModel.from_config(
                    DiTTransformer2DModel.load_config(path, subfolder="transformer", **kwargs)
                )
                vae = AutoencoderKL.from_config(AutoencoderKL.load_config(path, subfolder="vae", **kwargs))
                c, s = dit.config.in_channels, dit.config.sample_size
                x, t, y = torch.randn(1, c, s, s), torch.tensor([1]), torch.tensor([0])
                denoiser = _count(dit, x, timestep=t, class_labels=y)
                decode = _count(vae.decode, x)
                factor = 2 ** (len(vae.config.block_out_channels) - 1)
                image = (vae.config.out_channels, s * factor, s * factor)
                encode = _count(vae.encode, torch.randn(1, *image))
            else:
                unet = UNet2DModel.from_config(UNet2DModel.load_config(path, subfolder="unet", **kwargs))
                c, s = unet.config.in_channels, unet.config.sample_size
                denoiser = _count(unet, torch.randn(1, c, s, s), torch.tensor([1]), class_labels=torch.tensor([0]))
                decode = encode = 0.0
                image = (c, s, s)
    except ModelError:
        raise
    except Exception as err:
        raise ModelError(
            f"--model={model!r}: cannot read its configs to count FLOPs ({type(err).__name__}); pass a local folder."
        ) from err
    return ModelCost(denoiser, decode, encode, image, "FlopCounterMode on the model's configs (meta device)")


@dataclass
class RunPlan:
    """What `concentrate` would do: counts, FLOPs, size and time estimates (see the module docstring)."""

    classes: int
    ipc: int
    synthetic_per_class: int
    real_per_class: int
    units: int
    unit_kind: str
    denoiser_calls_plain: int  # denoiser forwards, counted per image, of plain sampling of every synthetic image
    denoiser_calls_total: int  # with NOpt's extra forward-equivalents (and the data-free pools)
    vae_decodes: int
    vae_encodes: int
    flops: float
    output_bytes: float
    cost: ModelCost | None
    hours: dict[str, dict[int, float]] = field(default_factory=dict)  # GPU -> {number of GPUs: hours}
    generated_per_class: int = 0  # synthetic images NOpt makes per class (`--oversample` x synthetic_per_class)
    feature_images: int = 0  # `--nopt-features trained`: real images the feature network trains on
    feature_epochs: int = 0
    feature_flops: float = 0.0  # its training, forward + backward (3 x forward), in FLOPs
    nopt_steps: tuple[int, int, float, int] | None = None  # dsco: (optimized steps, DDIM steps, window, iterations)

    def lines(self) -> list[str]:
        """The plan as lines of text for the terminal."""
        out = [
            f"classes: {self.classes}; IPC {self.ipc} = {self.synthetic_per_class} synthetic + {self.real_per_class} "
            f"real per class; {self.classes * self.ipc} images",
            f"units: {self.units} ({self.unit_kind}), one shard each; processes take units round-robin",
        ]
        if self.generated_per_class > self.synthetic_per_class:
            out.append(
                f"generate-then-select: NOpt makes {self.generated_per_class} images per class, herding keeps "
                f"{self.synthetic_per_class}"
            )
        if self.nopt_steps is not None:
            optimized, steps, window, iters = self.nopt_steps
            out.append(
                f"NOpt: the first {optimized} of {steps} DDIM steps (--nopt-window {window:g}), {iters} gradient "
                f"step{'s' if iters != 1 else ''} on x_t at each"
            )
        if self.feature_images:
            out.append(
                f"NOpt features: a ConvNet-3 trained {self.feature_epochs} epochs on {self.feature_images:,} real "
                f"images ({self.feature_epochs} snapshots), {_pflop(self.feature_flops)} PFLOP"
            )
        if self.cost is not None:
            extra = self.denoiser_calls_total - self.denoiser_calls_plain
            out += [
                f"denoiser forwards, counted per image: {self.denoiser_calls_plain:,} plain sampling, "
                f"{self.denoiser_calls_total:,} with NOpt (+{extra:,})",
                f"VAE: {self.vae_decodes:,} decodes, {self.vae_encodes:,} encodes (NOpt targets)",
                f"compute: {_pflop(self.flops)} PFLOP ({self.cost.denoiser / 1e9:,.1f} GFLOP per denoiser "
                f"forward; {self.cost.source})",
            ]
            for gpu, by_count in self.hours.items():
                times = ", ".join(f"{n} GPU{'s' if n > 1 else ''}: {_duration(h)}" for n, h in by_count.items())
                out.append(f"time on {gpu} ({GPU_BF16_TFLOPS[gpu]:.0f} TFLOP/s bf16 at {UTILIZATION:.0%}): {times}")
        out.append(f"output: about {self.output_bytes / 2**20:,.0f} MiB of parquet (PNG ~{PNG_RATIO:.0%} of raw)")
        out.append("dry run: nothing was written")
        return out


def _pflop(flops: float) -> str:
    return f"{flops / 1e15:,.0f}" if flops >= 1e17 else f"{flops / 1e15:.3g}"


def _duration(hours: float) -> str:
    if hours >= 1:
        return f"{hours:,.1f} h"
    return f"{hours * 60:.1f} min" if hours * 60 >= 1 else f"{hours * 3600:.1f} s"


def make_plan(cfg: ConcentrateConfig, num_classes: int, cost: ModelCost | None, image_shape=None) -> RunPlan:
    """Count the work of `cfg` on `num_classes` classes.

    Args:
        cfg (`ConcentrateConfig`): validated settings (presets applied).
        num_classes (`int`): K.
        cost (`ModelCost`, *optional*): the prior's cost; None for real-image methods.
        image_shape (`tuple[int, int, int]`, *optional*): `(C, H, W)` of real images (for the size estimate).
    """
    real_only = cost is None
    m = cfg.ipc if real_only else cfg.num_doped if cfg.method == "dsco" else 0
    n = cfg.ipc - m

    def calls(guidance_scale: float) -> int:  # denoiser calls per sample and step: 2 under classifier-free guidance
        return 2 if guidance_scale != 1.0 else 1

    g = calls(cfg.guidance_scale)
    units = distributed.plan_units(cfg.method, cfg.ipc, num_classes)
    per_unit = distributed.classes_per_unit(cfg.ipc, num_classes) if cfg.method == "dsco" else 1
    kind = f"blocks of {distributed.DIFFUSION_BLOCK} slots" if cfg.method == "diffusion" else "one per class"
    if per_unit > 1:
        kind = f"{per_unit} classes each, sharing the denoiser's batches"
    synthetic = num_classes * n
    plain = synthetic * cfg.steps * g
    total, encodes, pools = plain, 0, 0
    generated = n * (cfg.oversample if cfg.method == "dsco" else 1)
    feature_images, feature_flops, nopt_steps = 0, 0.0, None
    if cfg.method == "dsco" and n:
        total = num_classes * generated * cfg.steps * g  # every candidate is sampled
        optimized = math.ceil(cfg.nopt_window * cfg.steps) if cfg.nopt.iters else 0
        nopt_steps = (optimized, cfg.steps, cfg.nopt_window, cfg.nopt.iters)
        per_iter = 3 + (1 if generated * per_unit > cfg.sample_batch_size else 0)  # a second pass beyond one batch
        total += num_classes * generated * optimized * cfg.nopt.iters * per_iter * g
        if cfg.nopt.features == "trained":
            feature_images = num_classes * cfg.nopt.feature_images
            side = (cost.image_shape[1] if cost is not None else (image_shape or (1, 28, 28))[1]) or 28
            channels = cost.image_shape[0] if cost is not None else (image_shape or (1, 28, 28))[0]
            width, forward = cfg.nopt.width, 0.0
            for layer in range(3):  # conv 3x3 FLOPs of ConvNet-3 at each resolution
                forward += 2 * 9 * (channels if layer == 0 else width) * width * (side // 2**layer) ** 2
            feature_flops = 3 * forward * feature_images * cfg.nopt.feature_epochs
        if cfg.data_free:
            pools = num_classes * cfg.pool_for(n)
            total += pools * cfg.steps * calls(cfg.pool_guidance)
        else:
            encodes = num_classes * cfg.nopt.targets
    decodes = synthetic + pools
    flops = 0.0
    if cost is not None:
        flops = total * cost.denoiser + decodes * cost.decode + (encodes * cost.encode if cost.encode else 0.0)
        flops += feature_flops
        encodes = encodes if cost.encode else 0
        image_shape = cost.image_shape
    c, h, w = image_shape or (3, 256, 256)
    hours = {}
    if cost is not None:
        for gpu, tflops in GPU_BF16_TFLOPS.items():
            rate = tflops * 1e12 * UTILIZATION
            hours[gpu] = {count: flops / rate / count / 3600 for count in (1, 8)}
    return RunPlan(
        classes=num_classes,
        ipc=cfg.ipc,
        synthetic_per_class=n,
        real_per_class=m,
        units=len(units),
        unit_kind=kind,
        denoiser_calls_plain=plain,
        denoiser_calls_total=total,
        vae_decodes=decodes if cost is not None and cost.decode else 0,
        vae_encodes=encodes,
        flops=flops,
        output_bytes=num_classes * cfg.ipc * c * h * w * PNG_RATIO,
        cost=cost,
        hours=hours,
        generated_per_class=generated,
        feature_images=feature_images,
        feature_epochs=cfg.nopt.feature_epochs if feature_images else 0,
        feature_flops=feature_flops,
        nopt_steps=nopt_steps,
    )
