#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut 3 (not part of CI's default run).
#
#   pip install mutmut          # 3.x
#   tests/mutation.sh           # every module below, one after the other; or: tests/mutation.sh nopt writer ...
#   MUTANTS='dsco_hub.evaluate.x_apply_augment*' tests/mutation.sh evaluate   # only these mutants (mutmut's names)
#   SELECT='tests/test_x.py::test_y' tests/mutation.sh writer                 # other tests than the table's
#   MUTMUT_CHILDREN=1 ...       # mutants run at once (default 2)
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

# the fast tests of each module (kernels: its own file, and the two tests of the trained and ensemble feature maps;
# nopt: its own file and the feature-map and selection tests; evaluate: its own file but the two-process launch,
# whose children import the package outside mutmut's copy, and the soft-label loss; hub_errors, hub, card: the tests of
# tests/test_hub.py against the fake Hub but the two that run dsco-hub only in a subprocess, for the same reason, and
# for card also tests/test_card_refs.py)
declare -A TESTS=(
  [kernels]="tests/test_kernels.py tests/test_quality.py::test_trained_snapshots_are_deterministic_and_learn_the_classes
    tests/test_quality.py::test_feature_maps_of_each_space"
  [config]="tests/test_config.py"
  [nopt]="tests/test_nopt.py tests/test_quality.py::test_feature_maps_of_each_space
    tests/test_quality.py::test_select_synthetic_keeps_the_candidates_that_match_the_targets"
  [doping]="tests/test_doping.py"
  [writer]="tests/test_writer.py tests/test_scale.py::test_shards_round_trip_and_refuse_garbage"
  [evaluate]="EVALUATE"
  [hub_errors]="HUB"
  [hub]="HUB"
  [card]="tests/test_card_refs.py HUB"
)
MODULES="kernels config nopt doping writer evaluate hub_errors hub card"

run() {
  local module=$1 work tests
  work=$(mktemp -d)
  git -C "$root" archive "$rev" | tar -xf - -C "$work"  # a commit, not the working tree: the report names it
  tests=${SELECT:-${TESTS[$module]}}
  if [ "$tests" = EVALUATE ]; then  # every test of tests/test_evaluate.py but the two-process launch
    tests=$(cd "$work" && grep -o '^def test_[a-z0-9_]*' tests/test_evaluate.py | sed 's/^def /tests\/test_evaluate.py::/' |
      grep -v two_processes)
    tests="$tests tests/test_teacher.py::test_soft_label_loss_is_kl_times_t_squared"
  fi
  if [[ " $tests " == *" HUB "* ]]; then  # every test of tests/test_hub.py but the two subprocess-only ones
    tests="${tests/HUB/$(cd "$work" && grep -o '^def test_[a-z0-9_]*' tests/test_hub.py |
      sed 's/^def /tests\/test_hub.py::/' | grep -v -e concentrate_push_from_the_command_line -e update_card_create_pr)}"
  fi
  # cards/: the card templates, which the pipeline tests (doping's "before" run) render; docs/, README.md and
  # pyproject.toml: what tests/test_card_refs.py checks the cards' references against
  cat > "$work/setup.cfg" <<CFG
[mutmut]
source_paths = dsco_hub
only_mutate = dsco_hub/$module.py
also_copy =
    cards
    docs
    README.md
    pyproject.toml
pytest_add_cli_args_test_selection =
$(printf '    %s\n' $tests)
CFG
  # shellcheck disable=SC2086  # MUTANTS: mutmut's name patterns, split on spaces
  (cd "$work" && mutmut run --max-children "$children" ${MUTANTS:-} > "$out/$module.log" 2>&1 || true)
  (cd "$work" && mutmut results --all true) > "$out/$module.txt"
  echo "$module: $(grep -c ': killed' "$out/$module.txt") killed, $(grep -c ': timeout' "$out/$module.txt") timeout," \
    "$(grep -c ': survived' "$out/$module.txt") survived, $(grep -c ': no tests' "$out/$module.txt") no tests" \
    "(of $(grep -c ': ' "$out/$module.txt")); mutants kept in $work"
}

for module in "${@:-$MODULES}"; do
  for m in $module; do run "$m"; done
done
