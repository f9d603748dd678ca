"""Class-conditional diffusion priors and our guided DDIM sampler.

Two layouts load through `load_prior`:

- the DiT layout of `facebook/DiT-XL-2-256`: `model_index.json` with `id2label`, `transformer/`
  (`DiTTransformer2DModel`), `vae/` (`AutoencoderKL`), `scheduler/`; sampling in latent space;
- a pixel-space `UNet2DModel` with class embeddings (`num_class_embeds = K + 1`, the last one the
  null class), the layout `dsco-hub prior train` writes (`model_index.json`, `unet/`, `scheduler/`).

The classifier-free guidance null class is `num_classes` (never a hard-coded 1000). `sample` is
our own DDIM loop (Song et al., "Denoising Diffusion Implicit Models", ICLR 2021, with Ho and
Salimans, "Classifier-Free Diffusion Guidance", 2022): `DiTPipeline.__call__` runs without
gradients and hard-codes the null class, and NOpt extends this loop.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel, UNet2DModel

from dsco_hub.config import SamplerConfig, derive_seed, is_commit_sha
from dsco_hub.errors import ConfigError, ModelError
from dsco_hub.files import open_file_modes
from dsco_hub.text import closest

SHIPPED_PRIOR = "prior_fashion_mnist"  # dsco_hub/resources/<this>: the embedded Fashion-MNIST prior
MODEL_IDENTITY_KEYS = ("shipped_prior", "model_digest", "model_commit")  # what `model_identity` may return


@dataclass
class DiffusionPrior:
    """A class-conditional denoiser with what sampling needs.

    Attributes:
        denoiser (`UNet2DModel` or `DiTTransformer2DModel`): predicts the noise `eps(x_t, t, y)`, in eval mode.
        scheduler (`DDIMScheduler`): built from the model's own noise schedule.
        id2label (`dict[int, str]`): class id to name (DiT labels hold comma-separated synonyms).
        vae (`AutoencoderKL`, *optional*): decodes latents to pixels (latent models only).
        name (`str`): the Hub id or folder it was loaded from.
    """

    denoiser: torch.nn.Module
    scheduler: DDIMScheduler
    id2label: dict[int, str]
    vae: AutoencoderKL | None = None
    name: str = ""

    @property
    def num_classes(self) -> int:
        """Number of real classes `K`; the null class of classifier-free guidance is `K`."""
        return len(self.id2label)

    @property
    def null_class(self) -> int | None:
        """Label of the unconditional (null) class, or None when the model has none."""
        if isinstance(self.denoiser, UNet2DModel):
            return self.num_classes if self.denoiser.config.num_class_embeds > self.num_classes else None
        return self.num_classes if self.denoiser.config.get("class_dropout_prob", 0.1) > 0 else None

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """`(channels, height, width)` of the denoiser's space (latents for DiT, pixels for a UNet)."""
        cfg = self.denoiser.config
        size = cfg.sample_size
        return cfg.in_channels, size, size

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """`(channels, height, width)` of decoded images."""
        c, h, w = self.sample_shape
        if self.vae is None:
            return c, h, w
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return self.vae.config.out_channels, h * factor, w * factor

    @property
    def device(self) -> torch.device:
        """Device of the denoiser's weights."""
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the denoiser's weights (inputs are cast to it; outputs come back in the input's dtype)."""
        return next(self.denoiser.parameters()).dtype

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor | int, labels: torch.Tensor, guidance_scale: float):
        """Guided noise prediction `eps_uncond + w * (eps_cond - eps_uncond)`.

        Args:
            x_t (`torch.Tensor`): `(batch_size, C, H, W)` noisy samples in the denoiser's space.
            t (`int` or `torch.Tensor`): the timestep, in `[0, num_train_timesteps)`.
            labels (`torch.Tensor`): `(batch_size,)` int64 class ids in `[0, K)`.
            guidance_scale (`float`): `w`; 1 disables guidance (one denoiser call instead of two).

        Returns:
            `torch.Tensor`: `(batch_size, C, H, W)` predicted noise, dtype of `x_t`.
        """
        batch = x_t.shape[0]
        guided = guidance_scale != 1.0
        if guided:
            x_in = torch.cat([x_t, x_t])  # (2B, C, H, W): conditional then unconditional
            y_in = torch.cat([labels, torch.full_like(labels, self.null_class)])
        else:
            x_in, y_in = x_t, labels
        t_in = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(x_in.shape[0])
        x_in = x_in.to(self.dtype)
        if isinstance(self.denoiser, UNet2DModel):
            eps = self.denoiser(x_in, t_in, class_labels=y_in).sample
        else:
            eps = self.denoiser(x_in, timestep=t_in, class_labels=y_in).sample
            eps = eps[:, : x_t.shape[1]]  # DiT learns sigma too: (2B, 2C, H, W) -> (2B, C, H, W)
        eps = eps.to(x_t.dtype)
        if not guided:
            return eps
        cond, uncond = eps[:batch], eps[batch:]
        return uncond + guidance_scale * (cond - uncond)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Map images `(batch_size, C_img, H_img, W_img)` in `[-1, 1]` to the denoiser's space.

        Pixel priors return the images unchanged; latent priors return the VAE posterior mean times the VAE's
        scaling factor (deterministic), shape `(batch_size, *sample_shape)`.
        """
        if self.vae is None:
            return images.float()
        with torch.no_grad():
            posterior = self.vae.encode(images.to(self.device, self.vae.dtype)).latent_dist
        return (posterior.mean * self.vae.config.scaling_factor).float()

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Map clean samples of the denoiser's space to images `(batch_size, C_img, H_img, W_img)` in `[-1, 1]`."""
        if self.vae is not None:
            x0 = self.vae.decode(x0.to(self.vae.dtype) / self.vae.config.scaling_factor).sample.float()
        return x0.float().clamp(-1, 1)


def compile_denoiser(prior: DiffusionPrior) -> bool:
    """`torch.compile` the denoiser in place (`nn.Module.compile`, TorchInductor) when it is on a CUDA device.

    Sampling and NOpt's backward then run the compiled graph; the first batches of each shape pay the compilation.
    On the CPU nothing is compiled: Inductor's fused CPU kernels may round differently from eager PyTorch, and
    dsco-hub's CPU results are kept byte-stable (the scale issue's rule for GPU speed options).

    Returns:
        `bool`: whether the denoiser was compiled (False on the CPU).
    """
    if prior.device.type != "cuda":
        return False
    prior.denoiser.compile()
    return True


def shipped_prior_path() -> Path:
    """Folder of the prior shipped inside the package (trained by `dsco-hub prior train` on Fashion-MNIST)."""
    from importlib import resources

    return Path(str(resources.files("dsco_hub") / "resources" / SHIPPED_PRIOR))


def shipped_prior_id() -> str | None:
    """Which shipped prior this install has, e.g. "prior_fashion_mnist@26c6b4bf4c62" (`prior_digest` of its
    folder), or None when it ships none; recorded by sets made without `--model`.

    Raises:
        ModelError: the shipped folder has a `model_index.json` but no weights or scheduler (`prior_digest`).
    """
    path = shipped_prior_path()
    return f"{SHIPPED_PRIOR}@{prior_digest(path)}" if (path / "model_index.json").exists() else None


def prior_digest(folder: str | Path) -> str:
    """The identity of a local prior: the first 12 hex digits of the SHA-256 of its weights and scheduler config.

    The same weights sampled with another scheduler config (e.g. DDIM's x0 clipping) are another prior. Sets made
    with the shipped prior record it (`shipped_prior` in `dsco_config.json`, the model in the card), so a run saved
    with one shipped prior is never resumed with another, and the benchmarks key their rows by it.

    Every byte of the weights is read (about a second per GB): `facebook/DiT-XL-2-256`'s 2.7 GB take seconds,
    the shipped prior's 4.3 MB milliseconds.

    Args:
        folder (`str` or `Path`): a prior in either layout of `load_prior` (each component's `*.safetensors`, or
            its `*.bin` when it has no safetensors file; `scheduler/`).

    Returns:
        `str`: e.g. "26c6b4bf4c62".

    Raises:
        ModelError: `folder` holds no `*/*.safetensors` or `*/*.bin` weights, or no readable `scheduler/` config.
    """
    folder = Path(folder)
    weights = [  # per component (unet/, transformer/, vae/): what from_pretrained loads, safetensors before .bin
        path
        for part in sorted(p for p in folder.glob("*") if p.is_dir())
        for path in sorted(part.glob("*.safetensors")) or sorted(part.glob("*.bin"))
    ]
    if not weights:
        raise ModelError(
            f"prior {folder} holds no */*.safetensors (or *.bin) weights; pass a folder saved by diffusers."
        )
    digest = hashlib.sha256()
    for path in weights:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    try:
        scheduler = dict(DDIMScheduler.load_config(folder / "scheduler"))
    except (OSError, ValueError):
        message = f"prior {folder} has no readable scheduler/ config; pass a folder saved by diffusers."
        raise ModelError(message) from None
    digest.update(json.dumps({k: v for k, v in scheduler.items() if not k.startswith("_")}, sort_keys=True).encode())
    return digest.hexdigest()[:12]


def model_identity(model: str | None, revision: str | None = None) -> dict[str, str | None]:
    """Which weights a `diffusion` or `dsco` run samples from, as its settings record them (`dsco_config.json`,
    `run_config.json`, the card's `dsco.settings`), so that a resumed or rerun set is never made with two models.

    - no `--model`: `{"shipped_prior": "prior_fashion_mnist@<digest>"}` (`shipped_prior_id`): another dsco-hub
      version may ship another prior;
    - a local folder: `{"model_digest": "<digest>"}` (`prior_digest`: its weights and scheduler config), so a prior
      retrained or replaced in place is another model;
    - a Hub id: `{"model_commit": "<40 hex digits>"}`, the commit `revision` (default: main) resolves to now, read
      from the Hub or, offline, from the local cache (`hf_hub_download` of `model_index.json`: its snapshot folder is
      named by the commit). The run then loads that commit (`load_prior(model, commit)`), so a commit pushed while
      it runs, or before it resumes, cannot mix in.

    Args:
        model (`str`, *optional*): `--model` (None: the shipped prior).
        revision (`str`, *optional*): `--model-revision` (branch, tag or commit) of a Hub id.

    Returns:
        `dict[str, str | None]`: one key, as above; `model_commit` is None when the cache lays files out otherwise
        (nothing to compare then).

    Raises:
        ModelError: a local folder without weights or scheduler config (`prior_digest`), a path that looks local
            but does not exist, or a Hub model that can be neither downloaded nor found in the cache.
    """
    if model is None:
        return {"shipped_prior": shipped_prior_id()}
    path = Path(model).expanduser()
    if path.is_dir():
        load_model_index(model)  # a folder that is no diffusers model: that message, before the weights'
        return {"model_digest": prior_digest(path)}
    index = _model_index_path(model, revision)
    commit = index.parent.name  # <cache>/models--org--name/snapshots/<commit>/model_index.json
    return {"model_commit": commit if is_commit_sha(commit) else None}


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """`--dtype` to a torch dtype: "auto" is float32 on CPU and float16 on CUDA."""
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def load_model_index(model: str, revision: str | None = None) -> dict:
    """The `model_index.json` of a diffusers model (which components it has), read without loading any weight.

    Args:
        model (`str`): a local diffusers folder (`dsco-hub prior train` output) or a Hub model id such as
            `facebook/DiT-XL-2-256`.
        revision (`str`, *optional*): Hub revision (branch, tag or commit); ignored for a local folder.

    Returns:
        `dict`: the parsed JSON, e.g. `{"_class_name": "DiTPipeline", "transformer": [...], "vae": [...], ...}`;
        `load_prior` reads `"transformer"` (DiT + VAE) or `"unet"` from it.

    Raises:
        ModelError: a local folder has no `model_index.json`, a path that looks local does not exist, or the Hub
            file cannot be downloaded (the message names `--model`, the revision and what to check).
    """
    path = Path(model).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if not index.exists():
            raise ModelError(
                f"--model={model!r} has no model_index.json; pass a folder written by `dsco-hub prior train` "
                "or a DiT repo such as facebook/DiT-XL-2-256."
            )
        return json.loads(index.read_text())
    return json.loads(_model_index_path(model, revision).read_text())


def _model_index_path(model: str, revision: str | None) -> Path:
    """Where the `model_index.json` of Hub model `model` is in the local cache (downloaded if not there yet).

    Raises:
        ModelError: `model` looks like a local path but does not exist, or the file cannot be downloaded.
    """
    if model.startswith((".", "/", "~")):
        raise ModelError(f"--model={model!r} does not exist; pass an existing folder or a Hub model id.")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(model, "model_index.json", revision=revision))
    except Exception as err:
        raise ModelError(
            f"--model={model!r} (revision {revision or 'main'}) could not be loaded from the Hub "
            f"({type(err).__name__}); check the id, your network and HF_TOKEN for gated models."
        ) from err


def load_prior(
    model: str, revision: str | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> DiffusionPrior:
    """Load a class-conditional diffusion prior from a Hub id or a local folder.

    Args:
        model (`str`): `facebook/DiT-XL-2-256`-style repo (DiT + VAE) or a `dsco-hub prior train` folder (UNet).
        revision (`str`, *optional*): Hub revision.
        device (`str` or `torch.device`, *optional*, defaults to "cpu").
        dtype (`torch.dtype`, *optional*, defaults to float32): float16/bfloat16 on GPUs; the VAE stays float32.

    Returns:
        `DiffusionPrior` in eval mode with gradients disabled on its weights.

    Raises:
        ModelError: the model is missing, has neither `transformer/` nor `unet/`, is not class-conditional, or
            has no `id2label`.
    """
    index = load_model_index(model, revision)
    kwargs = {"revision": revision} if revision else {}
    vae = None
    if "transformer" in index:
        denoiser = DiTTransformer2DModel.from_pretrained(model, subfolder="transformer", torch_dtype=dtype, **kwargs)
        if denoiser.config.get("num_embeds_ada_norm") is None:
            raise ModelError(
                f"--model={model!r}: the transformer has no class embedding; use a class-conditional DiT."
            )
        vae = AutoencoderKL.from_pretrained(model, subfolder="vae", **kwargs)
    elif "unet" in index:
        denoiser = UNet2DModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype, **kwargs)
        if not denoiser.config.num_class_embeds:
            raise ModelError(
                f"--model={model!r}: the UNet has no class embeddings (num_class_embeds is None); "
                "train a class-conditional prior with `dsco-hub prior train`."
            )
    else:
        raise ModelError(
            f"--model={model!r}: model_index.json lists neither 'transformer' (DiT) nor 'unet'; "
            "dsco-hub needs a class-conditional DiT or UNet2DModel."
        )
    id2label = index.get("id2label")
    if not id2label:
        raise ModelError(f"--model={model!r}: model_index.json has no id2label; add one (class id -> name).")
    id2label = {int(k): str(v) for k, v in id2label.items()}
    scheduler = DDIMScheduler.from_pretrained(model, subfolder="scheduler", **kwargs)
    scheduler = DDIMScheduler.from_config(scheduler.config)
    denoiser.to(device=device).eval().requires_grad_(False)
    if vae is not None:
        vae.to(device=device).eval().requires_grad_(False)
    prior = DiffusionPrior(denoiser=denoiser, scheduler=scheduler, id2label=id2label, vae=vae, name=model)
    if isinstance(denoiser, UNet2DModel) and denoiser.config.num_class_embeds < prior.num_classes:
        raise ModelError(
            f"--model={model!r}: id2label has {prior.num_classes} classes but the UNet embeds only "
            f"{denoiser.config.num_class_embeds}; fix model_index.json."
        )
    return prior


def save_unet_prior(unet: UNet2DModel, scheduler: DDIMScheduler, id2label: dict[int, str], out: str | Path) -> None:
    """Write a UNet prior as `load_prior` reads it: `model_index.json` (+ `id2label`), `unet/`, `scheduler/`."""
    out = Path(out)
    unet.save_pretrained(out / "unet")
    open_file_modes(out / "unet")  # readable as its config.json is (safetensors writes 0600)
    scheduler.save_pretrained(out / "scheduler")
    index = {
        "_class_name": "DDIMPipeline",
        "_diffusers_version": __import__("diffusers").__version__,
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
        "id2label": {str(k): v for k, v in sorted(id2label.items())},
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def check_sampler_args(prior: DiffusionPrior, sampler: SamplerConfig) -> None:
    """Validate sampler settings against the model.

    Args:
        prior (`DiffusionPrior`): the model (its training timesteps and whether it has a null class).
        sampler (`SamplerConfig`): the settings to check.

    Raises:
        ConfigError: `steps` not in `[1, num_train_timesteps]`; an out-of-range setting (`SamplerConfig.validate`:
            unknown scheduler, `eta` outside `[0, 1]`, guidance below 0, ...); guidance other than 1 on a model
            without a null class.
    """
    total = prior.scheduler.config.num_train_timesteps
    if not 1 <= sampler.steps <= total:
        raise ConfigError(
            f"--steps={sampler.steps} must be in [1, {total}] (the model's training timesteps); e.g. --steps 25."
        )
    sampler.validate()
    if sampler.guidance_scale != 1.0 and prior.null_class is None:
        raise ConfigError(
            f"--guidance-scale={sampler.guidance_scale}: {prior.name} has no null class for classifier-free guidance; "
            "pass --guidance-scale 1."
        )


def initial_noise(shape: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
    """Standard normal noise `(len(seeds), *shape)`, image `j` drawn on CPU from its own generator `seeds[j]`.

    CPU generation keeps the noise identical on every device and batch layout (diffusers `randn_tensor` idea).
    """
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def sample(
    prior: DiffusionPrior,
    labels: Sequence[int],
    seeds: Sequence[int],
    sampler: SamplerConfig = SamplerConfig(),
    noise: torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Sample images with guided DDIM, batched over images.

    Image `j` starts from noise drawn with its own generator `seeds[j]` (and, when `eta > 0`, its step noise
    from `derive_seed(seeds[j], "eta")`), so results do not depend on `batch_size` or on the order of images.

    Args:
        prior (`DiffusionPrior`): the model.
        labels (sequence of `int`): class id of each image, in `[0, K)`.
        seeds (sequence of `int`): one seed per image (derive them from `(run seed, class, slot)`).
        sampler (`SamplerConfig`, *optional*, defaults to `SamplerConfig()`): DDIM steps, classifier-free guidance
            scale `w` (1 = off), `eta` (0 = deterministic) and images per denoiser batch (memory only, not
            results); its `dtype` applies when the model is loaded, not here.
        noise (`torch.Tensor`, *optional*): pre-made `x_T` of shape `(len(labels), *prior.sample_shape)`.
        progress (`callable`, *optional*): called with the number of images finished after each batch.

    Returns:
        `torch.Tensor`: `(len(labels), C, H, W)` float32 images in `[-1, 1]` on CPU.

    Raises:
        ConfigError: invalid sampler settings (see `check_sampler_args`) or mismatched lengths.
    """
    check_sampler_args(prior, sampler)
    if len(labels) != len(seeds):
        raise ConfigError(f"labels and seeds must have the same length, got {len(labels)} and {len(seeds)}.")
    bad = [y for y in labels if not 0 <= int(y) < prior.num_classes]
    if bad:
        raise ConfigError(f"class id {bad[0]} is outside [0, {prior.num_classes}) for {prior.name}.")
    if noise is None:
        noise = initial_noise(prior.sample_shape, seeds)
    outputs = []
    for start in range(0, len(labels), sampler.batch_size):
        stop = min(start + sampler.batch_size, len(labels))
        outputs.append(_ddim_batch(prior, noise[start:stop], labels[start:stop], seeds[start:stop], sampler))
        if progress is not None:
            progress(stop - start)
    return torch.cat(outputs)


@torch.no_grad()
def _ddim_batch(prior, x_T, labels, seeds, sampler: SamplerConfig) -> torch.Tensor:
    scheduler = DDIMScheduler.from_config(prior.scheduler.config)  # own copy: set_timesteps mutates state
    scheduler.set_timesteps(sampler.steps)
    device = prior.device
    x = x_T.to(device=device, dtype=torch.float32)
    y = torch.as_tensor([int(v) for v in labels], device=device, dtype=torch.long)
    eta_gens = eta_generators(seeds, sampler.eta)
    for t in scheduler.timesteps:
        eps = prior.predict_noise(x, t.to(device), y, sampler.guidance_scale)
        x = scheduler.step(eps, t, x, eta=sampler.eta, variance_noise=step_noise(eta_gens, x)).prev_sample
    return prior.decode(x).cpu()


def eta_generators(seeds: Sequence[int], eta: float) -> list[torch.Generator] | None:
    """Per-image CPU generators of the DDIM step noise (`eta > 0`), seeded from `derive_seed(seed, "eta")`.

    Returns `None` when `eta == 0` (deterministic DDIM draws no step noise).
    """
    return [torch.Generator().manual_seed(derive_seed(int(s), "eta")) for s in seeds] if eta > 0 else None


def step_noise(generators: list[torch.Generator] | None, x: torch.Tensor) -> torch.Tensor | None:
    """One DDIM step's noise for the batch `x` `(n, C, H, W)`: image j from `generators[j]`; `None` without eta."""
    if generators is None:
        return None
    return torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators]).to(x.device)


def _synonyms(label: str) -> list[str]:
    return [s.strip().lower() for s in label.split(",") if s.strip()]


def read_class_map(path: str | Path) -> dict[str, str]:
    """Read a `--class-map` file: JSON `{"source class": "model label or id", ...}`.

    Raises:
        ConfigError: the file is missing or not a JSON object of strings/integers.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"--class-map={str(path)!r} does not exist; pass a JSON file of source -> model class."
        ) from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"--class-map={str(path)!r} is not valid JSON ({err.msg}, line {err.lineno}).") from None
    if not isinstance(data, dict) or not all(isinstance(v, (str, int)) for v in data.values()):
        raise ConfigError(
            f"--class-map={str(path)!r} must be a JSON object mapping source class names to model labels."
        )
    return {str(k): str(v) for k, v in data.items()}


def check_class_map_keys(class_names: Sequence[str], class_map: dict[str, str]) -> None:
    """Refuse `--class-map` keys that name no source class: a typo would leave its class mapped by its own name.

    Call it only when `class_names` are all the source's classes: with a `--classes` subset a key may name a class
    left out.

    Args:
        class_names (sequence of `str`): the source's class names.
        class_map (`dict[str, str]`): source name -> model label or id (`read_class_map`); keys are matched as
            written, as `map_classes` reads them.

    Raises:
        ModelError: one line listing up to 5 unknown keys, each with the closest class names.
    """
    unknown = [key for key in class_map if key not in class_names]
    if unknown:
        hints = "; ".join(
            f"{k!r} (closest: {', '.join(map(repr, closest(k, list(class_names))))})" for k in unknown[:5]
        )
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ModelError(
            f"--class-map names {len(unknown)} class(es) the source does not have: {hints}{more}; its keys are the "
            "source's class names as written: correct or drop those entries."
        )


def map_classes(class_names: Sequence[str], id2label: dict[int, str], class_map: dict[str, str] | None = None):
    """Map source class names to model class ids.

    A name matches a model class when it equals, case-insensitively, one of the class's comma-separated
    synonyms (DiT's ImageNet labels read "tench, Tinca tinca"). `class_map` entries take precedence; their
    values are model labels (matched the same way) or class ids.

    Args:
        class_names (sequence of `str`): the source's class names, in label order.
        id2label (`dict[int, str]`): the model's classes.
        class_map (`dict[str, str]`, *optional*): explicit source name -> model label or id.

    Returns:
        `list[int]`: the model class id of each source class.

    Raises:
        ModelError: some classes cannot be mapped (the message lists them with the closest model labels), or two map
            to the same model class.
    """
    lookup: dict[str, int] = {}
    for k, label in sorted(id2label.items()):
        for synonym in _synonyms(label):
            lookup.setdefault(synonym, k)
    class_map = class_map or {}
    mapped, missing = [], []
    for name in class_names:
        wanted = class_map.get(name, name)
        if wanted.isdigit() and int(wanted) in id2label and name in class_map:
            mapped.append(int(wanted))
        elif wanted.strip().lower() in lookup:
            mapped.append(lookup[wanted.strip().lower()])
        else:
            missing.append(name)
    if missing:
        labels = list(id2label.values())

        def hint(name: str) -> str:  # a mapped name is shown with its map entry, and the labels closest to that
            wanted = class_map.get(name, name)
            shown = f"{name!r} -> {wanted!r} (--class-map)" if name in class_map else repr(name)
            return f"{shown} (closest: {', '.join(map(repr, closest(wanted.lower(), labels, spellings=_synonyms)))})"

        hints = "; ".join(hint(name) for name in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        fix = (
            "correct those entries of --class-map (model labels, or ids below "
            f"{len(id2label)}) and add the classes it lacks"
            if class_map
            else "pass --class-map FILE (JSON source name -> model label or id)"
        )
        raise ModelError(f"{len(missing)} source classes match no model class: {hints}{more}; {fix}.")
    first: dict[int, str] = {}
    for name, k in zip(class_names, mapped):
        if k in first:  # two classes of the set would be samples of one model class
            raise ModelError(
                f"classes {first[k]!r} and {name!r} both map to model class {k} ({id2label[k]!r}); each class "
                "needs its own model class: drop one, or pass --class-map FILE (JSON source name -> model id)."
            )
        first[k] = name
    return mapped
