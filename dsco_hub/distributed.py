"""Everything dsco-hub does with several processes lives here; this is the only module importing accelerate.

Launch lines (model: nanoGPT `train.py`):

    # GPUs, one node
    accelerate launch --num_processes 4 -m dsco_hub prior train SOURCE --out DIR
    # several processes on a CPU-only machine (accelerate 1.15's `launch --cpu` starts only one)
    torchrun --nproc_per_node 2 -m dsco_hub prior train SOURCE --out DIR
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
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
