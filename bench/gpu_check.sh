#!/usr/bin/env bash
# GPU check of issue 14 in one command (under 8 minutes on one H200), from the repository root:
#
#   bash bench/make_gpu_carry.sh                # here, once: .gpu_carry/ (wheels + Fashion-MNIST, git-ignored)
#   bash bench/gpu_check.sh [DRIVER OPTIONS]    # on the GPU machine; results in $OUT (default gpu-check-out/)
#   GPU_CHECK_SMOKE=1 bash bench/gpu_check.sh   # anywhere: every stage with tiny settings
#
# With the device tool: run(command="bash bench/gpu_check.sh", carry=[".gpu_carry"], timeout_s=540).
# The GPU machine has torch with CUDA but not diffusers, datasets, dill, multiprocess, importlib_metadata, nor an
# fsspec that datasets accepts: the wheels carried in .gpu_carry/wheels are installed into /tmp/dsco_site (no
# network, the machine's own packages untouched), and the package runs from this checkout (PYTHONPATH, no build).
# Everything runs in the foreground: bench/gpu_check.py waits for (or ends) every process it starts.
set -uo pipefail
cd "$(dirname "$0")/.."
export GPU_CHECK_STARTED="${GPU_CHECK_STARTED:-$(date +%s)}"
OUT="${OUT:-gpu-check-out}"
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c "import diffusers, datasets" 2>/dev/null; then
    if ! ls .gpu_carry/wheels/*.whl >/dev/null 2>&1; then
        echo "diffusers/datasets are missing and .gpu_carry/wheels holds no wheels: run bench/make_gpu_carry.sh here first" >&2
        exit 1
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/dsco_site .gpu_carry/wheels/*.whl || exit 1
    export PYTHONPATH="/tmp/dsco_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" - <<'PY' 2>&1 | tee "$OUT/versions.txt"
import importlib.metadata as m, platform
import torch
names = ["torch", "diffusers", "datasets", "accelerate", "huggingface_hub", "fsspec", "pyarrow", "dill", "multiprocess"]
print(platform.python_version(), "|", ", ".join(f"{n} {m.version(n)}" for n in names))
print("CUDA:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY

DATA=".gpu_carry/fashion_mnist"
SMOKE=()
if [ "${GPU_CHECK_SMOKE:-0}" = "1" ]; then
    SMOKE=(--smoke)
    DATA="dsco_hub/resources/fashion_mnist_subset"  # the embedded subset (500 / 100 images per class)
fi
"$PYTHON" bench/gpu_check.py --out "$OUT" --data "$DATA" "${SMOKE[@]}" "$@" 2>&1 | tee "$OUT/gpu_check.log"
status=${PIPESTATUS[0]}
echo "gpu_check: exit $status after $(( $(date +%s) - GPU_CHECK_STARTED )) s; report: $OUT/gpu_check.md"
exit "$status"
