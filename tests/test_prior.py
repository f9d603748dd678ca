"""`dsco-hub prior train`: a tiny prior trains, saves a loadable diffusers folder with a card, and resumes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from conftest import changed_train_split, source_changed
from safetensors.torch import load_file

from dsco_hub import prior as prior_module
from dsco_hub.config import PriorTrainConfig, SamplerConfig, SourceConfig
from dsco_hub.data import fingerprint
from dsco_hub.errors import ConfigError, OutputError
from dsco_hub.models import load_prior, sample


def _cfg(source, out, **kwargs) -> PriorTrainConfig:
    defaults = dict(
        block_out_channels=(8, 16),
        norm_num_groups=8,
        max_steps=4,
        batch_size=8,
        checkpoint_every=2,
        warmup_steps=1,
        mixed_precision="no",
        num_train_timesteps=50,
        sample_steps=2,
    )
    defaults.update(kwargs)
    return PriorTrainConfig(source=SourceConfig(source=str(source)), out=str(out), **defaults)


def _interrupted(tiny_repo, out, monkeypatch, **kwargs):
    """Train `_cfg(tiny_repo, out, **kwargs)` and kill it right after its first checkpoint (a KeyboardInterrupt)."""
    original = prior_module._save_checkpoint

    def crash_after_first(accelerator, ckpt_dir, step, *args):
        original(accelerator, ckpt_dir, step, *args)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(prior_module, "_save_checkpoint", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        prior_module.train_prior(_cfg(tiny_repo, out, **kwargs))
    monkeypatch.setattr(prior_module, "_save_checkpoint", original)


def _weights(folder):
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_train_saves_a_loadable_prior_with_card(tiny_repo, tmp_path):
    out = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p"), command="dsco-hub prior train tiny")
    index = json.loads((out / "model_index.json").read_text())
    assert index["id2label"] == {"0": "circle", "1": "square", "2": "stripe"}
    prior = load_prior(str(out))
    assert (
        prior.num_classes == 3 and prior.null_class == 3 and prior.image_shape == (3, 16, 16)
    )  # the first row is RGB
    assert sample(prior, [2], [0], SamplerConfig(steps=2)).shape == (1, 3, 16, 16)
    assert prior.scheduler.config.clip_sample is False  # clipping x0 in DDIM erased classes under guidance
    card = (out / "README.md").read_text()
    assert "dsco-hub prior train tiny" in card and "Wall time" in card and "license: cc-by-4.0" in card
    assert (out / "samples.png").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]


def test_the_prior_and_its_checkpoints_are_readable_as_the_umask_allows(tiny_repo, tmp_path):
    # safetensors 0.8 writes its files 0600 (safetensors#782): a prior shared on a cluster would not load
    old = os.umask(0o022)
    try:
        out = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p"))
    finally:
        os.umask(old)
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert "unet/diffusion_pytorch_model.safetensors" in modes
    assert any(name.startswith("checkpoints/") and name.endswith(".safetensors") for name in modes)
    assert {name: mode for name, mode in modes.items() if mode != 0o644} == {}


def test_interrupted_training_resumes_to_the_same_weights(tiny_repo, tmp_path, monkeypatch):
    straight = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "straight"))
    _interrupted(tiny_repo, tmp_path / "resumed", monkeypatch)
    assert not (tmp_path / "resumed" / "model_index.json").exists()
    resumed = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "resumed"))
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def _interrupted_at_step_2(tiny_repo, out, monkeypatch) -> Path:
    """Train with a checkpoint every step and kill the run right after step 2's; returns the checkpoints folder."""
    original = prior_module._save_checkpoint

    def crash_at_step_2(accelerator, ckpt_dir, step, *args):
        original(accelerator, ckpt_dir, step, *args)
        if step == 2:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(prior_module, "_save_checkpoint", crash_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        prior_module.train_prior(_cfg(tiny_repo, out, checkpoint_every=1))
    monkeypatch.setattr(prior_module, "_save_checkpoint", original)
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000001", "step-00000002"]
    return checkpoints


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # as by a copy cut short


@pytest.mark.parametrize(
    "damaged", ["model.safetensors", "optimizer.bin", "custom_checkpoint_0.pkl", prior_module.STATE_FILE]
)
def test_a_damaged_checkpoint_falls_back_to_the_one_before_and_ends_at_the_same_weights(
    tiny_repo, tmp_path, monkeypatch, capsys, damaged
):
    straight = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "straight", checkpoint_every=1))
    checkpoints = _interrupted_at_step_2(tiny_repo, tmp_path / "p", monkeypatch)
    _truncate(checkpoints / "step-00000002" / damaged)
    capsys.readouterr()
    resumed = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", checkpoint_every=1))
    printed = capsys.readouterr()
    assert "step-00000002 cannot be read (" in printed.err, printed
    assert "resuming from" in printed.out and "step-00000001 (step 1)" in printed.out
    a, b = _weights(straight), _weights(resumed)
    for key in a:  # resumed from step 1, it still ends where the uninterrupted run ends
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_no_readable_checkpoint_is_one_line_that_names_the_folder(tiny_repo, tmp_path, monkeypatch):
    checkpoints = _interrupted_at_step_2(tiny_repo, tmp_path / "p", monkeypatch)
    for step in ("step-00000001", "step-00000002"):
        _truncate(checkpoints / step / "model.safetensors")
    with pytest.raises(OutputError, match=r"no checkpoint in .*s can be read \(step-00000001, step-00000002\)"):
        prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", checkpoint_every=1))
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000001", "step-00000002"]  # kept as they were


def test_resume_with_other_settings_is_refused(tiny_repo, tmp_path):
    prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", max_steps=2))
    with pytest.raises(OutputError, match="already holds a finished prior; raise --max-steps"):
        prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", max_steps=2))
    with pytest.raises(ConfigError, match=r"different settings \(--batch-size: 8 there, 4 now\)"):
        prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", max_steps=2, batch_size=4))
    with pytest.raises(ConfigError, match=r"different settings \(--max-steps: 2 there, 1 now\)"):
        prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", max_steps=1))


def test_a_larger_max_steps_extends_a_finished_run(tiny_repo, tmp_path):
    out = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", max_steps=2), command="first")
    short = _weights(out)
    prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", max_steps=4), command="second")
    assert json.loads((out / "prior_config.json").read_text())["extended_from"] == [2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    card = (out / "README.md").read_text()
    assert "Command: `second` (the same run extended: it first finished at 2 steps" in card
    assert "Steps: 4 x batch 8" in card
    longer = _weights(out)
    assert any(not torch.equal(short[key], longer[key]) for key in short)


def test_bad_widths_are_refused_before_work(tiny_repo, tmp_path):
    with pytest.raises(ConfigError, match="not divisible by --norm-num-groups=8"):
        prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", block_out_channels=(8, 12)))
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------------------------------------------------------
# --snr-gamma: Min-SNR-gamma loss weighting
# ---------------------------------------------------------------------------------------------------------------


def test_min_snr_weights_cap_the_clean_steps_and_keep_the_noisy_ones():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    t = torch.tensor([0, 100, 400, 600, 999])
    a = scheduler.alphas_cumprod[t].double()
    snr = a / (1 - a)  # alpha_bar / (1 - alpha_bar), in float64
    assert snr[0] > 5 > snr[-1]  # the timesteps span both sides of gamma
    expected = torch.where(snr > 5, 5 / snr, torch.ones_like(snr)).float()
    weights = prior_module.min_snr_weights(scheduler, t, 5.0)
    assert weights.dtype == torch.float32 and weights.shape == (5,)
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=0)
    assert weights[-1] == 1 and weights[0] < 1e-3  # the noisiest step keeps its weight, the cleanest loses it


def test_a_weighted_step_follows_the_weighted_loss(tiny_repo, tmp_path):
    """Weight 1 is the plain loss, and zero weight removes a sample: its gradient is that of the batch without it."""
    from dsco_hub import distributed

    cfg = _cfg(tiny_repo, tmp_path / "p")
    g = torch.Generator().manual_seed(0)
    x_t, noise = torch.randn(4, 3, 16, 16, generator=g), torch.randn(4, 3, 16, 16, generator=g)
    t, y = torch.tensor([3, 10, 20, 40]), torch.tensor([0, 1, 2, 3])

    def step(rows, weights):
        """The loss and the gradient (all parameters, flattened) of one step from the same initial weights."""
        distributed.seed_everything(0)
        accelerator = distributed.make_accelerator("no")
        unet, _, optimizer, lr_scheduler, ema = prior_module.make_training_state(cfg, 3, 3, 16, accelerator)
        grads = []
        accelerator.clip_grad_norm_ = lambda params, norm: grads.extend(p.grad.flatten().clone() for p in params)
        loss = prior_module.train_step(
            accelerator, unet, optimizer, lr_scheduler, ema, x_t[rows], t[rows], y[rows], noise[rows], 1.0, weights
        )
        return loss, torch.cat(grads)

    plain_loss, plain = step([0, 1, 2], None)
    ones_loss, ones = step([0, 1, 2], torch.ones(3))
    masked_loss, masked = step([0, 1, 2, 3], torch.tensor([4 / 3, 4 / 3, 4 / 3, 0.0]))
    full_loss, full = step([0, 1, 2, 3], None)
    scale = plain.abs().max()
    torch.testing.assert_close(ones_loss, plain_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(ones, plain, rtol=0, atol=1e-6 * scale)
    torch.testing.assert_close(masked_loss, plain_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(masked, plain, rtol=0, atol=1e-5 * scale)
    assert (full - plain).abs().max() > 1e-2 * scale  # the fourth sample does move the gradient when it counts


def test_snr_gamma_is_recorded_and_changes_training_and_a_resume_keeps_it(tiny_repo, tmp_path):
    plain = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "plain", max_steps=2))
    weighted = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "snr", max_steps=2, snr_gamma=5.0))
    assert json.loads((weighted / "prior_config.json").read_text())["snr_gamma"] == 5.0
    assert json.loads((plain / "prior_config.json").read_text())["snr_gamma"] is None
    card = (weighted / "README.md").read_text()
    assert "Min-SNR-gamma loss weighting (gamma 5.0, Hang et al. 2023)" in card
    assert "Min-SNR" not in (plain / "README.md").read_text()
    a, b = _weights(plain), _weights(weighted)
    assert any(not torch.equal(a[key], b[key]) for key in a)
    with pytest.raises(ConfigError, match=r"different settings \(--snr-gamma: 5.0 there, None now\)"):
        prior_module.train_prior(_cfg(tiny_repo, tmp_path / "snr", max_steps=2))
    prior_module.train_prior(_cfg(tiny_repo, tmp_path / "snr", max_steps=4, snr_gamma=5.0))  # an extension


def test_a_run_saved_before_snr_gamma_existed_resumes_unweighted(tiny_repo, tmp_path, monkeypatch):
    _interrupted(tiny_repo, tmp_path / "old", monkeypatch)
    saved = tmp_path / "old" / "prior_config.json"
    recorded = json.loads(saved.read_text())
    del recorded["snr_gamma"]  # prior_config.json as versions before --snr-gamma wrote it
    saved.write_text(json.dumps(recorded))
    resumed = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "old"))
    straight = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "straight"))
    a, b = _weights(resumed), _weights(straight)
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_a_non_positive_snr_gamma_is_refused_before_work(tiny_repo, tmp_path):
    with pytest.raises(ConfigError, match=r"--snr-gamma=0.0 must be positive; use 5"):
        prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", snr_gamma=0.0))
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"resolution": 0}, "--resolution=0 must be in [1, 512] pixels"),
        ({"resolution": 100_000}, "--resolution=100000 must be in [1, 512] pixels"),
        ({"block_out_channels": (0, 8, 8)}, "--block-out-channels='0,8,8' must list positive widths"),
        ({"block_out_channels": (-8, 8, 8)}, "--block-out-channels='-8,8,8' must list positive widths"),
        ({"block_out_channels": ()}, "--block-out-channels='' must list positive widths"),
        ({"norm_num_groups": 0}, "--norm-num-groups=0 must be at least 1"),
        ({"layers_per_block": 0}, "--layers-per-block=0 must be at least 1"),
        ({"seed": -1}, "--seed=-1 must be in [0, 2^32)"),
        ({"seed": 2**32}, "--seed=4294967296 must be in [0, 2^32)"),
        ({"lr": float("inf")}, "--lr=inf must be a finite number (the default is 0.001)"),
        ({"lr": float("nan")}, "--lr=nan must be a finite number"),
        ({"snr_gamma": float("inf")}, "--snr-gamma=inf must be a finite number"),
        ({"batch_size": 20}, "--batch-size=20 is larger than the 19 training images of the source; pass --batch"),
    ],
)
def test_prior_settings_it_cannot_train_are_refused_before_anything_is_written(tiny_repo, tmp_path, options, message):
    with pytest.raises(ConfigError) as err:
        prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", **options))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "p").exists()


def test_a_resume_refused_for_several_settings_names_the_first_and_the_others(tiny_repo, tmp_path):
    prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", max_steps=1))
    with pytest.raises(ConfigError, match=r"\(--batch-size: 8 there, 4 now; also --lr, --seed\)"):
        prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", max_steps=1, batch_size=4, lr=0.5, seed=3))


# ---------------------------------------------------------------------------------------------------------------
# Devices: the EMA beside the model, losses read on the host only when logged
# ---------------------------------------------------------------------------------------------------------------


class MovingAccelerator:
    """Stands in for accelerate on a GPU: `prepare` moves the model to another device ("meta" on a CPU machine)."""

    device = torch.device("meta")

    def __init__(self):
        self.registered = []

    def prepare(self, model, optimizer, scheduler):
        return model.to(self.device), optimizer, scheduler

    def unwrap_model(self, model):
        return model

    def register_for_checkpointing(self, obj):
        self.registered.append(obj)


def test_the_ema_is_made_on_the_device_prepare_moved_the_model_to(tiny_repo, tmp_path):
    accelerator = MovingAccelerator()
    cfg = _cfg(tiny_repo, tmp_path / "p")
    unet, _, _, _, ema = prior_module.make_training_state(cfg, 3, 1, 16, accelerator)
    assert {p.device for p in unet.parameters()} == {torch.device("meta")}
    assert {p.device for p in ema.shadow_params} == {torch.device("meta")}  # not left on the CPU (crashed on a GPU)
    assert accelerator.registered == [ema]  # checkpointed with the run


def test_the_ema_stays_beside_the_model_through_a_resume(tiny_repo, tmp_path, monkeypatch):
    seen = []
    step = prior_module.train_step

    def checked_step(accelerator, unet, optimizer, lr_scheduler, ema, *args, **kwargs):
        seen.append({p.device for p in ema.shadow_params} | {p.device for p in unet.parameters()})
        return step(accelerator, unet, optimizer, lr_scheduler, ema, *args, **kwargs)

    monkeypatch.setattr(prior_module, "train_step", checked_step)
    _interrupted(tiny_repo, tmp_path / "p", monkeypatch)
    prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p"))
    assert len(seen) == 4 and all(len(devices) == 1 for devices in seen)  # 2 steps, then 2 resumed steps


def test_losses_are_read_when_logged_and_give_the_per_step_running_loss(tiny_repo, tmp_path, monkeypatch):
    reads = []
    read = prior_module._read_losses

    def counted(accelerator, losses, loss_ema):
        reads.append(len(losses))
        return read(accelerator, losses, loss_ema)

    monkeypatch.setattr(prior_module, "_read_losses", counted)
    monkeypatch.setattr(prior_module, "LOG_EVERY", 3)
    batched = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "batched", max_steps=5, checkpoint_every=5))
    assert reads == [3, 2]  # steps 1-3 at the log, 4-5 at the checkpoint: never once a step
    monkeypatch.setattr(prior_module, "LOG_EVERY", 1)
    every = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "every", max_steps=5, checkpoint_every=5))

    def loss(out):
        return json.loads((out / "checkpoints" / "step-00000005" / prior_module.STATE_FILE).read_text())["loss_ema"]

    assert loss(batched) == loss(every)  # the same running loss, bit for bit
    a, b = _weights(batched), _weights(every)
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


# ---------------------------------------------------------------------------------------------------------------
# --mixed-precision auto: resolved per device, recorded, kept on a resume
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_native_bf16(monkeypatch):
    monkeypatch.setattr(prior_module.distributed, "cpu_has_native_bf16", lambda: False)


def test_auto_trains_in_float32_on_a_cpu_without_native_bf16(tiny_repo, tmp_path, no_native_bf16, capsys):
    auto = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "auto", mixed_precision="auto", max_steps=2))
    assert json.loads((auto / "prior_config.json").read_text())["mixed_precision"] == "no"  # resolved, not "auto"
    assert "mixed precision `no`" in (auto / "README.md").read_text()
    assert "Warning" not in capsys.readouterr().err
    explicit = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "no", mixed_precision="no", max_steps=2))
    a, b = _weights(auto), _weights(explicit)
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_explicit_bf16_on_a_cpu_without_native_bf16_warns_in_one_line(tiny_repo, tmp_path, no_native_bf16, capsys):
    out = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", mixed_precision="bf16", max_steps=1))
    warnings = [line for line in capsys.readouterr().err.splitlines() if "Warning" in line]
    slower = f"{prior_module.distributed.EMULATED_BF16_SLOWDOWN}x slower"
    assert len(warnings) == 1 and "--mixed-precision bf16" in warnings[0] and slower in warnings[0]
    assert json.loads((out / "prior_config.json").read_text())["mixed_precision"] == "bf16"


def test_a_resumed_run_keeps_the_precision_it_started_with(tiny_repo, tmp_path, monkeypatch):
    monkeypatch.setattr(prior_module.distributed, "cpu_has_native_bf16", lambda: False)
    _interrupted(tiny_repo, tmp_path / "p", monkeypatch, mixed_precision="auto")  # started in float32
    monkeypatch.setattr(prior_module.distributed, "cpu_has_native_bf16", lambda: True)  # auto would now be bf16
    resumed = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", mixed_precision="auto"))
    assert json.loads((resumed / "prior_config.json").read_text())["mixed_precision"] == "no"
    straight = prior_module.train_prior(_cfg(tiny_repo, tmp_path / "straight", mixed_precision="no"))
    a, b = _weights(resumed), _weights(straight)
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_a_resume_in_another_precision_is_refused_in_one_line(tiny_repo, tmp_path, monkeypatch, no_native_bf16):
    _interrupted(tiny_repo, tmp_path / "p", monkeypatch, mixed_precision="auto")
    with pytest.raises(ConfigError, match=r"--mixed-precision='bf16' differs .* \('no' there, 'bf16' now\)") as err:
        prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", mixed_precision="bf16"))
    assert "\n" not in str(err.value) and "pass --mixed-precision auto (or no)" in str(err.value)
    saved = tmp_path / "p" / "prior_config.json"
    saved.write_text(saved.read_text().replace('"mixed_precision": "no"', '"mixed_precision": "fp16"'))
    with pytest.raises(ConfigError, match=r"--mixed-precision: .* trains in 'fp16', which cpu cannot run"):
        prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", mixed_precision="auto"))


def test_unknown_mixed_precision_is_refused_before_work(tiny_repo, tmp_path):
    with pytest.raises(ConfigError, match=r"--mixed-precision='fp8' must be 'auto', 'no', 'bf16' or 'fp16'"):
        prior_module.train_prior(_cfg(tiny_repo, tmp_path / "p", mixed_precision="fp8"))
    assert not (tmp_path / "p").exists()


def test_a_resume_or_an_extension_on_changed_source_data_is_refused(tiny_repo, tmp_path, monkeypatch):
    # the run records its source's fingerprint when it starts: resuming (or extending) it on other data would train
    # one prior on a mix of two datasets
    out = tmp_path / "p"
    _interrupted(tiny_repo, out, monkeypatch)
    recorded = json.loads((out / "prior_config.json").read_text())["source_fingerprint"]
    assert recorded == fingerprint(SourceConfig(source=str(tiny_repo))) and recorded["kind"] == "local"
    refused = source_changed(f"the prior run in {out}", recorded, "pass another --out to train a prior on it")
    with changed_train_split(tiny_repo), pytest.raises(ConfigError, match=refused):
        prior_module.train_prior(_cfg(tiny_repo, out))
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]  # nothing trained
    prior_module.train_prior(_cfg(tiny_repo, out))  # the data restored: it resumes and finishes
    with changed_train_split(tiny_repo), pytest.raises(ConfigError, match=refused):
        prior_module.train_prior(_cfg(tiny_repo, out, max_steps=6))  # nor is a finished prior extended on it
    assert json.loads((out / "prior_config.json").read_text())["source_fingerprint"] == recorded
