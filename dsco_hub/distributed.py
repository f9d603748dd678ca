"""Everything dsco-hub does with several processes lives here; this is the only module importing accelerate.

Launch lines (model: nanoGPT `train.py`):

    # GPUs, one node
    accelerate launch --num_processes 4 -m dsco_hub prior train SOURCE --out DIR
    # several processes on a CPU-only machine (accelerate 1.15's `launch --cpu` starts only one)
    torchrun --nproc_per_node 2 -m dsco_hub prior train SOURCE --out DIR
    # concentration: each process computes its units (see `plan_units`), rank 0 assembles
    accelerate launch --num_processes 8 -m dsco_hub concentrate imagenet-1k --ipc 50 --out DIR
    torchrun --nproc_per_node 2 -m dsco_hub concentrate --ipc 10 --out DIR   # CPU
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration, set_seed

from dsco_hub.errors import ConfigError

# ---------------------------------------------------------------------------------------------------------------
# Devices and mixed precision
# ---------------------------------------------------------------------------------------------------------------

MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")  # what --mixed-precision accepts; "auto" is resolved per device
# CPU flags of native bf16 arithmetic (Linux /proc/cpuinfo): x86 AVX512-BF16 or AMX-BF16, Arm's BF16 extension
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# bf16 autocast over float32 on a CPU without native bf16, a training step of the shipped prior's UNet (32,64,64 x1,
# batch 128, one thread): 10x, measured with ATen and oneDNN held to AVX2 (bench/results/prior_precision.md); the
# issue that asked for `auto` measured about 12x (31.5 against 2.7 s) on a CPU without AVX512-BF16
EMULATED_BF16_SLOWDOWN = 10


def default_device() -> torch.device:
    """The device this process computes on when no launcher says otherwise: `cuda` when CUDA is available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags as Linux reports them (`flags` on x86, `Features` on Arm); empty elsewhere."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 arithmetic natively, so that bf16 autocast is faster than float32 there.

    Both must hold: the CPU reports a bf16 instruction set (`CPU_BF16_FLAGS`: AVX512-BF16, AMX-BF16 or Arm BF16),
    and torch dispatches to kernels that can use it (`torch.backends.cpu.get_cpu_capability()` is AVX512 on x86 or
    SVE on Arm, and oneDNN reports bf16 support). Without them, autocast emulates bf16 in software: about
    `EMULATED_BF16_SLOWDOWN` times slower than float32 for the prior's training step.

    Returns:
        `bool`: True on e.g. AMD Zen 4 or Intel Sapphire Rapids (unless `ATEN_CPU_CAPABILITY` lowers the kernels),
        False on AVX2-only CPUs and wherever the flags cannot be read (macOS, Windows).
    """
    capability = torch.backends.cpu.get_cpu_capability()
    if not (capability.startswith("AVX512") or capability.startswith("SVE")):
        return False
    if not cpu_flags() & set(CPU_BF16_FLAGS):
        return False
    onednn_check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # honours ONEDNN_MAX_CPU_ISA
    return bool(onednn_check()) if onednn_check is not None and torch.backends.mkldnn.is_available() else True


def cuda_has_bf16(device: torch.device | str | None = None) -> bool:
    """Whether a CUDA device computes in bf16 natively (compute capability 8.0 and up: A100, H100, L4, ...)."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 has no `including_emulation`
        return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_mixed_precision(requested: str, device: torch.device | str | None = None) -> str:
    """The autocast precision a run uses on `device`: `--mixed-precision` with "auto" resolved.

    - "auto": "bf16" on CUDA devices with native bf16, "fp16" (with a gradient scaler) on older GPUs, and on the
      CPU "bf16" only with native bf16 (`cpu_has_native_bf16`), else "no" (float32).
    - "fp16" on the CPU is "no": CPU autocast has no fp16 training path worth taking (as before `auto`).
    - any other value is kept, including "bf16" on a CPU without native bf16 (see `mixed_precision_warning`).

    Args:
        requested (`str`): one of `MIXED_PRECISIONS`.
        device (`torch.device` or `str`, *optional*): the training device; defaults to `default_device()`.

    Returns:
        `str`: "no", "bf16" or "fp16", as accelerate's `Accelerator(mixed_precision=...)` takes it.

    Raises:
        ConfigError: `requested` is not one of `MIXED_PRECISIONS`.
    """
    if requested not in MIXED_PRECISIONS:
        raise ConfigError(
            f"--mixed-precision={requested!r} is unknown; use one of {', '.join(MIXED_PRECISIONS)} "
            "(auto picks the fastest the device supports)."
        )
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        if requested == "auto":
            return "bf16" if cuda_has_bf16(device) else "fp16"
        return requested
    if requested == "auto":
        return "bf16" if cpu_has_native_bf16() else "no"
    return "no" if requested == "fp16" else requested


def mixed_precision_warning(precision: str, device: torch.device | str | None = None) -> str | None:
    """One warning line when `precision` is "bf16" on a CPU without native bf16, else None.

    Args:
        precision (`str`): a resolved precision ("no", "bf16" or "fp16").
        device (`torch.device` or `str`, *optional*): the training device; defaults to `default_device()`.
    """
    device = torch.device(device) if device is not None else default_device()
    if precision != "bf16" or device.type != "cpu" or cpu_has_native_bf16():
        return None
    return (
        f"Warning: --mixed-precision bf16 on a CPU without native bf16 (no AVX512-BF16 or AMX): autocast emulates it, "
        f"about {EMULATED_BF16_SLOWDOWN}x slower a step than float32 (bench/results/prior_precision.md); "
        "pass --mixed-precision auto (or no) to train in float32."
    )


def eval_precision(device: torch.device | str) -> str:
    """The autocast precision of the evaluation's students: "bf16" on CUDA with native bf16, else "no" (float32).

    The CPU always trains students in float32, so CPU accuracies stay what they were before GPUs were supported;
    fp16 is not used (students would need a gradient scaler for little gain over float32 on pre-bf16 GPUs).
    """
    device = torch.device(device)
    return "bf16" if device.type == "cuda" and cuda_has_bf16(device) else "no"


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """`torch.autocast` for a resolved precision ("bf16", "fp16"), or a no-op context for "no"."""
    device = torch.device(device)
    if precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def describe_device(device: torch.device | str) -> str:
    """A device as a card records it: "cpu", or "cuda (NVIDIA H200)" with the GPU's name."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def make_accelerator(mixed_precision: str = "no", project_dir: str | None = None) -> Accelerator:
    """An `Accelerator` for the current launch (single process, torchrun or `accelerate launch`).

    On a machine without CUDA it joins the gloo group on CPU (`cpu=True`). Pass a precision resolved by
    `resolve_mixed_precision`; "fp16" on the CPU falls back to "no" (CPU autocast has no fp16 training path).
    The process-wide `AcceleratorState` is reset first (the process group is kept), so one process can train with
    one precision, then another (accelerate otherwise refuses a second precision).

    Args:
        mixed_precision (`str`, *optional*, defaults to "no"): "no", "bf16" or "fp16".
        project_dir (`str`, *optional*): where `save_state` writes checkpoints.

    Returns:
        `Accelerator`: on this process's device (`accelerator.device`), with a gradient scaler for "fp16" on CUDA.
    """
    cpu = not torch.cuda.is_available()
    if cpu and mixed_precision == "fp16":
        mixed_precision = "no"
    config = ProjectConfiguration(project_dir=project_dir, automatic_checkpoint_naming=False) if project_dir else None
    # accelerate has no public reset; its own messages and test utilities name this one
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision, project_config=config)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) in this process."""
    set_seed(seed)


def world() -> tuple[int, int]:
    """`(rank, world_size)` of this process from the launcher's environment, `(0, 1)` when not launched."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


# ---------------------------------------------------------------------------------------------------------------
# Work units of `concentrate`: explicit, defined by the settings only, assigned round-robin to processes
# ---------------------------------------------------------------------------------------------------------------

DIFFUSION_BLOCK = 64  # slots per unit for plain sampling (images are independent); fixed, never the process count
MIN_DSCO_UNITS = 32  # a dsco run with at least this many classes keeps at least this many units (processes to feed)
BARRIER_TIMEOUT = datetime.timedelta(hours=48)  # ranks that finish early wait at most this long for the others


@dataclass(frozen=True)
class Unit:
    """One unit of work of `concentrate`: the slots `[start, stop)` of the flat slot order.

    Slot `s` is image `s % ipc` of class `s // ipc` (class-major, the output row order). A unit is written as
    one shard; the output is the units' rows concatenated in unit order.

    Attributes:
        index (`int`): position in the plan, from 0.
        start (`int`): first flat slot.
        stop (`int`): one past the last flat slot.
        ipc (`int`): images per class (to turn slots into `(class, slot)` pairs).
    """

    index: int
    start: int
    stop: int
    ipc: int

    @property
    def classes(self) -> list[int]:
        """The classes this unit touches, in order."""
        return list(range(self.start // self.ipc, (self.stop - 1) // self.ipc + 1))

    def slots(self) -> list[tuple[int, int]]:
        """`(class k, slot j)` of each image of the unit, in output order."""
        return [divmod(s, self.ipc) for s in range(self.start, self.stop)]


def classes_per_unit(ipc: int, num_classes: int, block: int = DIFFUSION_BLOCK) -> int:
    """Classes in one `dsco` unit: `max(1, min(block // ipc, num_classes // MIN_DSCO_UNITS))`, in `[1, K]`.

    NOpt samples a unit's classes in shared denoiser batches (`nopt.nopt_sample_classes`), so at small IPC a GPU
    sees up to `block` images per call instead of IPC; the second bound keeps at least `MIN_DSCO_UNITS` units for
    the processes to share. Below 64 classes (Fashion-MNIST, Imagenette, ImageWoof) a unit is one class; on
    ImageNet-1k it is 31 classes at IPC 1, 6 at IPC 10 and 1 at IPC 50.
    """
    return max(1, min(block // ipc, num_classes // MIN_DSCO_UNITS))


def plan_units(method: str, ipc: int, num_classes: int, block: int = DIFFUSION_BLOCK) -> list[Unit]:
    """The work units of a run; they depend only on the settings, never on the number of processes.

    - `dsco`: whole classes, `classes_per_unit(ipc, num_classes)` of them per unit. NOpt optimizes a class's
      synthetic images jointly (the MMD of the set) and doping by herding depends on them, so a class cannot be
      split; a unit's classes share the denoiser's batches.
    - `diffusion`: blocks of `block` consecutive slots (classes mixed), since images are independent.
    - `random` / `herding`: one unit per class.

    Args:
        method (`str`): "dsco", "diffusion", "random" or "herding".
        ipc (`int`): images per class, >= 1.
        num_classes (`int`): K, >= 1.
        block (`int`, *optional*, defaults to `DIFFUSION_BLOCK`): slots per unit for `diffusion`.

    Returns:
        `list[Unit]`: the units covering slots `[0, K * ipc)` in order.
    """
    total = ipc * num_classes
    if method == "diffusion":
        size = block
    else:
        size = ipc * (classes_per_unit(ipc, num_classes, block) if method == "dsco" else 1)
    return [Unit(i, start, min(start + size, total), ipc) for i, start in enumerate(range(0, total, size))]


def assign(units: list[Unit], rank: int, world_size: int) -> list[Unit]:
    """The units process `rank` computes: `rank, rank + W, rank + 2W, ...` (no padding, no duplicate).

    With more processes than units, the extra processes get none and just wait for the others.
    """
    return units[rank::world_size]


@dataclass
class ProcessState:
    """This process in the launch: `rank` in `[0, world_size)`; rank 0 is the main process."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=default_device)  # this process's device: its own GPU under a launcher

    @property
    def is_main(self) -> bool:
        """Whether this is the process that assembles, writes the card, evaluates and pushes."""
        return self.rank == 0

    def wait_for_everyone(self) -> None:
        """Block until every process reaches this point (a no-op with one process)."""
        if self.world_size > 1:
            PartialState().wait_for_everyone()

    def main_first(self) -> contextlib.AbstractContextManager:
        """A block the main process runs first and the others after it (accelerate's `main_process_first`), for
        work whose first run leaves files the others reuse (a streamed split's saved rows). A no-op with one process.
        """
        return PartialState().main_process_first() if self.world_size > 1 else contextlib.nullcontext()

    def gather(self, items: list) -> list:
        """Every process's `items` (picklable), concatenated in rank order, on every process.

        A collective: all processes of the launch must call it. With one process it returns `items` unchanged.

        Args:
            items (`list`): this process's part, e.g. `[(run, accuracy), ...]`.

        Returns:
            `list`: rank 0's items, then rank 1's, and so on.
        """
        if self.world_size <= 1:
            return list(items)
        parts: list = [None] * self.world_size
        torch.distributed.all_gather_object(parts, list(items))
        return [item for part in parts for item in part]


def process_state() -> ProcessState:
    """Join the launch's process group, if any (torchrun or `accelerate launch`); one process otherwise.

    On a machine without CUDA the group is gloo on CPU (`PartialState(cpu=True)`); with CUDA each process takes
    its own GPU. Barriers wait up to `BARRIER_TIMEOUT` (a long run's ranks can finish hours apart).
    """
    _, world_size = world()
    if world_size <= 1:
        return ProcessState()
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)
    return ProcessState(rank=state.process_index, world_size=state.num_processes, device=state.device)


def finish() -> None:
    """End a command under a launcher: wait until every process is done, leave the group, exit with code 0.

    Call it at the end of a command that succeeded on this process (`cli.main` does). With one process, or when no
    group was started, it returns at once and does nothing. Otherwise it does not return:

    - the barrier keeps a process that is done from exiting while another still writes or pushes (a launcher stops
      every process when one of them exits non-zero);
    - the group is destroyed and Python's exit handlers run (output flushed, temporary folders removed);
    - the process then ends with `os._exit(0)`, skipping the interpreter's teardown: there, gloo's threads abort a
      finished process now and then with SIGABRT ("terminate called without an active exception", no Python frame;
      3 of about 40 runs of `tests/test_evaluate.py`'s two-process script with torch 2.13 on a 2-core CPU, even after
      `destroy_process_group`), which the launcher reports as a failed run.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    atexit._run_exitfuncs()  # what a normal exit runs first: logging, flushed consoles, `datasets`' temporary folders
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
