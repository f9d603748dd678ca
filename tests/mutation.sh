#!/usr/bin/env bash
# Mutation testing of dsco_hub/kernels.py and dsco_hub/config.py with mutmut 3 (not part of CI's default run).
#
#   pip install mutmut          # 3.x
#   tests/mutation.sh           # both modules, one after the other; or: tests/mutation.sh kernels | config
#
# Each module is mutated in a scratch copy of commit $REV (default HEAD; mutmut writes its mutants/ folder there, never into
# the repository), against the fast tests that cover it; `mutmut results --all true` of each run is written to
# $OUT (default: ./mutation-results/<module>.txt) with the counts. The report of the last run: tests/mutation.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$PWD/mutation-results}
children=${MUTMUT_CHILDREN:-2}
rev=${REV:-HEAD}
mkdir -p "$out"
# one torch thread: mutmut forks a process per mutant, and a forked child waits forever on the parent's OpenMP pool
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

# the fast tests of each module (kernels: its own file, and the two tests of the trained and ensemble feature maps)
declare -A TESTS=(
  [kernels]="tests/test_kernels.py tests/test_quality.py::test_trained_snapshots_are_deterministic_and_learn_the_classes
    tests/test_quality.py::test_feature_maps_of_each_space"
  [config]="tests/test_config.py"
)

run() {
  local module=$1 work
  work=$(mktemp -d)
  git -C "$root" archive "$rev" | tar -xf - -C "$work"  # a commit, not the working tree: the report names it
  cat > "$work/setup.cfg" <<CFG
[mutmut]
source_paths = dsco_hub
only_mutate = dsco_hub/$module.py
pytest_add_cli_args_test_selection =
$(printf '    %s\n' ${TESTS[$module]})
CFG
  (cd "$work" && mutmut run --max-children "$children" >/dev/null 2>&1 || true)
  (cd "$work" && mutmut results --all true) > "$out/$module.txt"
  echo "$module: $(grep -c ': killed' "$out/$module.txt") killed, $(grep -c ': timeout' "$out/$module.txt") timeout," \
    "$(grep -c ': survived' "$out/$module.txt") survived, $(grep -c ': no tests' "$out/$module.txt") no tests" \
    "(of $(grep -c ': ' "$out/$module.txt")); mutants kept in $work"
}

for module in "${@:-kernels config}"; do
  for m in $module; do run "$m"; done
done
