#!/usr/bin/env bash
# Mutation testing of the formula code (docs/testing.md). Not part of CI: it takes tens of minutes.
#
#   tools/mutation.sh [TARGET ...]     TARGET: kl layers pruning metrics blob ivon temp laplace (default: all)
#
# mutmut 3 imports mutants from ./mutants/src, so the modules under test are staged in a scratch
# directory as src/lrvd and src/lrvd_baselines next to a copy of tests/; one mutmut run per target
# keeps each run's test selection to the fast tests that exercise that file.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${MUTATION_DIR:-$root/.mutation}"
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mutmut=(uv run --project "$root" --with "mutmut==3.8.1" mutmut)
python=(uv run --project "$root" --with "mutmut==3.8.1" python)

# target -> "module file|tests"
declare -A TARGETS=(
  [kl]="lrvd/kl.py|tests/core/test_kl.py"
  [layers]="lrvd/layers.py|tests/core/test_layers.py tests/core/test_kl.py tests/core/test_pruning.py"
  [pruning]="lrvd/pruning.py|tests/core/test_pruning.py"
  [metrics]="lrvd/metrics.py|tests/core/test_metrics.py"
  [blob]="lrvd_baselines/blob.py|tests/baselines/test_blob.py"
  [ivon]="lrvd_baselines/adalora_ivon.py|tests/baselines/test_adalora.py tests/baselines/test_adalora_ivon.py tests/baselines/test_methods.py::test_ivon_criteria_match_hand_formula"
  [temp]="lrvd_baselines/lora_temp_scaling.py|tests/baselines/test_temperature_scaling.py"
  [laplace]="lrvd_baselines/laplace_lora.py|tests/baselines/test_laplace_lora.py tests/baselines/test_laplace_lora_parts.py"
)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(kl layers pruning metrics blob ivon temp laplace)

for t in "${targets[@]}"; do
  spec="${TARGETS[$t]:?unknown target $t; valid: ${!TARGETS[*]}}"
  file="${spec%%|*}"; tests="${spec#*|}"
  dir="$work/$t"
  rm -rf "$dir" && mkdir -p "$dir/src"
  cp -r "$root/packages/lrvd-core/src/lrvd" "$root/packages/baselines/src/lrvd_baselines" "$dir/src/"
  cp -r "$root/tests" "$dir/tests"
  find "$dir" -name __pycache__ -prune -exec rm -rf {} +
  selection=$(printf '"%s", ' $tests)
  cat > "$dir/pyproject.toml" <<TOML
[tool.pytest.ini_options]
addopts = "-p no:cacheprovider"
filterwarnings = ["ignore::DeprecationWarning"]

[tool.mutmut]
source_paths = ["src/"]
only_mutate = ["src/$file"]
pytest_add_cli_args_test_selection = [${selection%, }]
pytest_add_cli_args = ["-x", "-q"]
TOML
  echo "== $t: mutating $file against $tests"
  (cd "$dir" && "${mutmut[@]}" run --max-children "${MUTATION_JOBS:-2}" >"$dir/run.log" 2>&1 || true)
  (cd "$dir" && "${mutmut[@]}" results --all true >"$dir/results.txt" 2>&1 || true)
  grep "__mutmut_" "$dir/results.txt" >"$dir/status.txt" || true
  killed=$(grep -c ": killed$" "$dir/status.txt" || true)
  survived=$(grep -c ": survived$" "$dir/status.txt" || true)
  total=$(wc -l <"$dir/status.txt")
  # every surviving mutant's diff, in one process (a `mutmut show` per mutant costs seconds each)
  (cd "$dir" && "${python[@]}" - >"$dir/survivors.diff" 2>/dev/null <<'PY') || true
from mutmut.__main__ import show
for line in open("status.txt"):
    name, _, status = line.strip().rpartition(": ")
    if status == "survived":
        show.callback(name)
PY
  echo "$t: $total mutants, killed $killed, survived $survived (others: timeout / suspicious / no tests)"
  echo "   statuses: $dir/status.txt, surviving diffs: $dir/survivors.diff"
done
