"""CUDA: `prior train` (EMA, fp16 and bf16, resumes across devices), evaluation and `concentrate` on the GPU.

Marked `gpu` and skipped without CUDA; `bench/gpu_check.sh` runs them on a GPU machine (`pytest -m gpu`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import DatasetCard

from dsco_hub import distributed, pipeline
from dsco_hub import evaluate as evaluate_module
from dsco_hub import prior as prior_module
from dsco_hub.config import ConcentrateConfig, EvalConfig, NOptConfig, PriorTrainConfig, SamplerConfig, SourceConfig
from dsco_hub.models import load_prior, sample

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

REPO = Path(__file__).resolve().parents[1]


def _prior_cfg(source, out, **kwargs) -> PriorTrainConfig:
    """A tiny prior run (as `tests/test_prior.py`'s), on whatever device this process has."""
    defaults = dict(
        block_out_channels=(8, 16),
        norm_num_groups=8,
        max_steps=4,
        batch_size=8,
        checkpoint_every=2,
        warmup_steps=1,
        num_train_timesteps=50,
        sample_steps=2,
    )
    return PriorTrainConfig(source=SourceConfig(source=str(source)), out=str(out), **{**defaults, **kwargs})


def _on_cpu(*args: str) -> subprocess.CompletedProcess:
    """`python -m dsco_hub ARGS` with CUDA hidden: the same machine as a CPU-only one."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    return subprocess.run([sys.executable, "-m", "dsco_hub", *args], env=env, capture_output=True, text=True)


def test_prior_trains_on_cuda_with_the_ema_beside_the_model(tiny_repo, tmp_path, monkeypatch):
    devices = []
    step = prior_module.train_step

    def checked(accelerator, unet, optimizer, lr_scheduler, ema, *args, **kwargs):
        devices.append({p.device.type for p in ema.shadow_params} | {p.device.type for p in unet.parameters()})
        return step(accelerator, unet, optimizer, lr_scheduler, ema, *args, **kwargs)

    monkeypatch.setattr(prior_module, "train_step", checked)
    out = prior_module.train_prior(_prior_cfg(tiny_repo, tmp_path / "p"))
    assert devices == [{"cuda"}] * 4
    saved = json.loads((out / "prior_config.json").read_text())
    assert saved["mixed_precision"] == distributed.resolve_mixed_precision("auto", "cuda")  # bf16 on an H200
    assert f"mixed precision `{saved['mixed_precision']}`" in (out / "README.md").read_text()
    prior = load_prior(str(out), device="cuda")
    assert sample(prior, [0, 1], [0, 1], SamplerConfig(steps=2)).shape == (2, *prior.image_shape)


def test_prior_trains_in_fp16_with_a_gradient_scaler(tiny_repo, tmp_path):
    out = prior_module.train_prior(_prior_cfg(tiny_repo, tmp_path / "p", mixed_precision="fp16"))
    assert json.loads((out / "prior_config.json").read_text())["mixed_precision"] == "fp16"
    assert (out / "checkpoints" / "step-00000004" / "scaler.pt").exists()


def test_a_cuda_run_resumes_on_the_cpu_and_a_cpu_run_on_cuda(tiny_repo, tmp_path):
    def cfg(out, max_steps):  # only options the command line has, so that it can resume the run
        return PriorTrainConfig(
            source=SourceConfig(source=str(tiny_repo)),
            out=str(out),
            block_out_channels=(8, 16),
            norm_num_groups=8,
            batch_size=8,
            checkpoint_every=2,
            max_steps=max_steps,
        )

    def on_cpu(out, max_steps):
        args = ["prior", "train", str(tiny_repo), "--block-out-channels", "8,16", "--norm-num-groups", "8"]
        return _on_cpu(
            *args, "--batch-size", "8", "--checkpoint-every", "2", "--out", str(out), "--max-steps", max_steps
        )

    def saved(out):
        return json.loads((out / "prior_config.json").read_text())

    # GPU -> CPU: 2 steps on CUDA, then the same run extended to 4 steps by a process that sees no GPU
    gpu_first = tmp_path / "gpu-first"
    prior_module.train_prior(cfg(gpu_first, 2))
    precision = saved(gpu_first)["mixed_precision"]
    extended = on_cpu(gpu_first, "4")
    assert extended.returncode == 0, extended.stderr
    assert "resuming from" in extended.stdout + extended.stderr
    assert saved(gpu_first)["mixed_precision"] == precision and saved(gpu_first)["extended_from"] == [2]

    # CPU -> GPU: 2 steps without a GPU, then extended to 4 steps on CUDA in this process
    cpu_first = tmp_path / "cpu-first"
    started = on_cpu(cpu_first, "2")
    assert started.returncode == 0, started.stderr
    cpu_precision = saved(cpu_first)["mixed_precision"]
    prior_module.train_prior(cfg(cpu_first, 4))
    assert saved(cpu_first)["mixed_precision"] == cpu_precision and saved(cpu_first)["extended_from"] == [2]
    assert load_prior(str(cpu_first), device="cuda").device.type == "cuda"


def test_the_ema_is_made_on_cuda_after_prepare(tiny_repo, tmp_path):
    accelerator = distributed.make_accelerator(distributed.resolve_mixed_precision("auto", "cuda"))
    cfg = _prior_cfg(tiny_repo, tmp_path / "p")
    unet, _, optimizer, _, ema = prior_module.make_training_state(cfg, 3, 1, 16, accelerator)
    assert {p.device.type for p in unet.parameters()} == {"cuda"}
    assert {p.device.type for p in ema.shadow_params} == {"cuda"}


def test_evaluation_trains_students_on_cuda(monkeypatch):
    from test_evaluate import halves_dataset, tiny_cfg

    devices = []
    build = evaluate_module.build_student

    def recorded(*args):
        model = build(*args)
        model.register_forward_pre_hook(lambda module, inputs: devices.append(inputs[0].device.type))
        return model

    monkeypatch.setattr(evaluate_module, "build_student", recorded)
    train_images, train_labels = halves_dataset(per_class=8, seed=0, size=12)
    test_images, test_labels = halves_dataset(per_class=20, seed=1, size=12)
    result = evaluate_module.evaluate_images(
        train_images, train_labels, test_images, test_labels, 2, tiny_cfg(epochs=5, runs=2)
    )
    assert set(devices) == {"cuda"}
    assert result.mean > 0.8  # it learns the toy problem under bf16 autocast (the CPU test asks 0.9 of one run)


def test_concentrate_dsco_on_cuda_records_the_evaluation_device(tiny_repo, tiny_prior, tmp_path):
    cfg = ConcentrateConfig(
        source=SourceConfig(source=str(tiny_repo)),
        out=str(tmp_path / "set"),
        model=str(tiny_prior),
        method="dsco",
        ipc=2,
        steps=4,
        nopt=NOptConfig(window=0.5, iters=1, targets=4),
        eval=EvalConfig(runs=1, epochs=2),
    )
    pipeline.concentrate(cfg)
    protocol = DatasetCard.load(tmp_path / "set" / "README.md").data.to_dict()["dsco"]["eval"]["protocol"]
    assert protocol["device"] == f"cuda ({torch.cuda.get_device_name(0)})"
    assert protocol["precision"] == ("bf16 autocast" if distributed.cuda_has_bf16() else "float32")
