#!/usr/bin/env bash
# Prepare .gpu_carry/ (git-ignored) for bench/gpu_check.sh on a GPU machine without network:
#   .gpu_carry/wheels/        the packages that machine lacks, at the versions installed here (Python 3.12 wheels)
#   .gpu_carry/fashion_mnist  the full Fashion-MNIST (parquet), copied from $1 (default ../shared/data/fashion_mnist)
# The working tree plus .gpu_carry must stay under the device tool's 64 MiB; this prints the total.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data/fashion_mnist}"
PY_VERSION="${GPU_PYTHON_VERSION:-3.12}"  # the GPU machine's python3 (device/KINDS.md: 3.12.3)
PACKAGES=(diffusers datasets dill multiprocess importlib_metadata lazy-importer zipp fsspec)
mkdir -p .gpu_carry/wheels
rm -f .gpu_carry/wheels/*.whl
pins=()
for name in "${PACKAGES[@]}"; do
    pins+=("$name==$(python3 -c "import importlib.metadata as m; print(m.version('$name'))")")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu_carry/wheels "${pins[@]}"
rm -rf .gpu_carry/fashion_mnist
cp -r "$DATA" .gpu_carry/fashion_mnist
chmod -R u+w .gpu_carry/fashion_mnist
tree_bytes=$( (git ls-files -z; git ls-files -z -o --exclude-standard) | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
carry_bytes=$(du -sb .gpu_carry | cut -f1)
echo "wheels: ${pins[*]}"
echo "working tree $((tree_bytes / 1048576)) MiB + .gpu_carry $((carry_bytes / 1048576)) MiB (limit 64 MiB)"
