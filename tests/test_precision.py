"""Devices and mixed precision: `--mixed-precision auto` per device, the bf16 warning, autocast on the CPU."""

from __future__ import annotations

import pytest
import torch

from dsco_hub import distributed
from dsco_hub.errors import ConfigError

ZEN4_FLAGS = "fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni"  # an AMD Zen 4 core (native bf16)
SKYLAKE_FLAGS = "fpu sse2 avx2 avx512f avx512bw avx512_vnni"  # AVX512 without bf16 instructions


@pytest.fixture
def cpu(monkeypatch):
    """Set what the CPU reports: `cpu(capability, flags, onednn_bf16)`."""

    def set_cpu(capability: str, flags: str, onednn_bf16: bool = True):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(distributed, "cpu_flags", lambda *a: set(flags.split()))
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn_bf16, raising=False)

    return set_cpu


@pytest.fixture
def cuda(monkeypatch):
    """Pretend a CUDA device of the given bf16 support is present: `cuda(bf16)`."""

    def set_cuda(bf16: bool):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Test GPU")

    return set_cuda


def test_cpu_flags_reads_x86_and_arm_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16\nCPU implementer\t: 0x41\n")
    assert distributed.cpu_flags(x86) == {"fpu", "avx2", "avx512_bf16"}
    assert distributed.cpu_flags(arm) == {"fp", "asimd", "sve", "bf16"}
    assert distributed.cpu_flags(tmp_path / "missing") == set()


@pytest.mark.parametrize(
    "capability, flags, onednn, native",
    [
        ("AVX512", ZEN4_FLAGS, True, True),
        ("AVX512", ZEN4_FLAGS + " amx_bf16", True, True),
        ("AVX512", SKYLAKE_FLAGS, True, False),  # AVX512 without its bf16 instructions
        ("AVX2", ZEN4_FLAGS, True, False),  # the flags are there but ATen runs AVX2 kernels (ATEN_CPU_CAPABILITY)
        ("AVX512", ZEN4_FLAGS, False, False),  # oneDNN held below bf16 (ONEDNN_MAX_CPU_ISA)
        ("DEFAULT", "", True, False),  # flags unreadable (macOS, Windows)
        ("SVE256", "fp asimd sve bf16", True, True),  # Arm Neoverse V1
    ],
)
def test_native_bf16_needs_the_flags_and_the_kernels(cpu, capability, flags, onednn, native):
    cpu(capability, flags, onednn)
    assert distributed.cpu_has_native_bf16() is native


def test_auto_is_float32_on_a_cpu_without_native_bf16(cpu):
    cpu("AVX2", "fpu sse2 avx2")
    assert distributed.resolve_mixed_precision("auto", "cpu") == "no"
    assert distributed.resolve_mixed_precision("bf16", "cpu") == "bf16"  # an explicit choice is kept ...
    warning = distributed.mixed_precision_warning("bf16", "cpu")  # ... with one warning line
    assert warning is not None and "\n" not in warning
    assert "--mixed-precision bf16" in warning and f"{distributed.EMULATED_BF16_SLOWDOWN}x slower" in warning
    assert distributed.mixed_precision_warning("no", "cpu") is None
    assert distributed.resolve_mixed_precision("fp16", "cpu") == "no"  # no fp16 training on the CPU (as before)


def test_auto_is_bf16_on_a_cpu_with_native_bf16(cpu):
    cpu("AVX512", ZEN4_FLAGS)
    assert distributed.resolve_mixed_precision("auto", "cpu") == "bf16"
    assert distributed.mixed_precision_warning("bf16", "cpu") is None


def test_auto_on_cuda_is_bf16_where_supported_else_fp16(cuda):
    cuda(bf16=True)
    assert distributed.resolve_mixed_precision("auto", torch.device("cuda", 0)) == "bf16"
    assert distributed.resolve_mixed_precision("no", "cuda") == "no"
    assert distributed.mixed_precision_warning("bf16", "cuda") is None
    assert distributed.eval_precision("cuda") == "bf16"
    assert distributed.describe_device("cuda") == "cuda (NVIDIA Test GPU)"
    cuda(bf16=False)  # e.g. a V100 or a T4: fp16 with a gradient scaler
    assert distributed.resolve_mixed_precision("auto", "cuda") == "fp16"
    assert distributed.resolve_mixed_precision("fp16", "cuda") == "fp16"
    assert distributed.eval_precision("cuda") == "no"  # students stay float32 without bf16


def test_default_device_follows_cuda(cuda):
    assert distributed.default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    cuda(bf16=True)
    assert distributed.default_device() == torch.device("cuda")
    assert distributed.resolve_mixed_precision("auto") == "bf16"  # the device defaults to the default device


def test_evaluation_is_float32_on_every_cpu(cpu):
    cpu("AVX512", ZEN4_FLAGS)  # even with native bf16: CPU accuracies stay those of earlier versions
    assert distributed.eval_precision("cpu") == "no"
    assert distributed.describe_device("cpu") == "cpu"


def test_unknown_precision_names_the_option():
    with pytest.raises(ConfigError, match=r"--mixed-precision='fp8' is unknown; use one of auto, no, bf16, fp16"):
        distributed.resolve_mixed_precision("fp8", "cpu")


def test_autocast_context_per_precision():
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with distributed.autocast("cpu", "no"):
        assert layer(x).dtype == torch.float32
    with distributed.autocast("cpu", "bf16"):
        assert layer(x).dtype == torch.bfloat16


def test_one_process_can_make_accelerators_of_two_precisions():
    assert distributed.make_accelerator("no").mixed_precision == "no"
    assert distributed.make_accelerator("bf16").mixed_precision == "bf16"  # accelerate alone would refuse it
    assert distributed.make_accelerator("fp16").mixed_precision == ("fp16" if torch.cuda.is_available() else "no")
