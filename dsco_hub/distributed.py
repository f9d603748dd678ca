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

import datetime
import os
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration, set_seed


def make_accelerator(mixed_precision: str = "no", project_dir: str | None = None) -> Accelerator:
    """An `Accelerator` for the current launch (single process, torchrun or `accelerate launch`).

    On a machine without CUDA it joins the gloo group on CPU (`cpu=True`) and uses bf16 autocast only when
    asked. `fp16` needs CUDA: on CPU it falls back to "no" (fp16 autocast is not supported there).

    Args:
        mixed_precision (`str`, *optional*, defaults to "no"): "no", "bf16" or "fp16".
        project_dir (`str`, *optional*): where `save_state` writes checkpoints.
    """
    cpu = not torch.cuda.is_available()
    if cpu and mixed_precision == "fp16":
        mixed_precision = "no"
    config = ProjectConfiguration(project_dir=project_dir, automatic_checkpoint_naming=False) if project_dir else None
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
    device: torch.device = field(
        default_factory=lambda: torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )  # this process's device: its own GPU under a launcher

    @property
    def is_main(self) -> bool:
        """Whether this is the process that assembles, writes the card, evaluates and pushes."""
        return self.rank == 0

    def wait_for_everyone(self) -> None:
        """Block until every process reaches this point (a no-op with one process)."""
        if self.world_size > 1:
            PartialState().wait_for_everyone()


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
