# Shared by cluster.sh's subcommands: names and addresses, daemon bookkeeping, small helpers.
# shellcheck shell=bash

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

STATE="${HOSTLB_E2E_STATE:-/var/lib/hostlb-e2e}"
STATE="${STATE%/}"
K8S_VERSION="${K8S_VERSION:-1.20.2}"
CACHE_DIR="${HOSTLB_CACHE_DIR:-/var/cache/hostlb-e2e}"
BIN="$CACHE_DIR/kubernetes-$K8S_VERSION/bin"
KUBECTL="$BIN/kubectl"
# shellcheck disable=SC2034 # read by the scripts that source this file
IMAGE_DIR="${HOSTLB_IMAGE_DIR:-$REPO/_out/images}"

# kubelet 1.20's in-tree AWS credential provider asks the EC2 metadata address (169.254.169.254)
# for credentials at start: traffic to a host that is not ours, and 5 s lost per kubelet start.
export AWS_EC2_METADATA_DISABLED=true

# shellcheck disable=SC2034 # read by the scripts that source this file
PKI="$STATE/pki"
PIDS="$STATE/pids"
LOGS="$STATE/logs"
NSDIR="$STATE/mntns"          # a private mount holding the two nodes' persistent mount namespaces
# shellcheck disable=SC2034 # read by the scripts that source this file
ENV_FILE="$STATE/cluster.env"
ADMIN_KUBECONFIG="$STATE/admin.kubeconfig"
# Logs of the last cluster, kept by `down` after it removes the state dir.
# shellcheck disable=SC2034 # read by the scripts that source this file
LAST_LOGS="${HOSTLB_E2E_LAST_LOGS:-/tmp/hostlb-e2e-last-logs}"

API_IP=10.250.0.1
# shellcheck disable=SC2034 # read by the scripts that source this file
API_URL="https://$API_IP:6443"
# shellcheck disable=SC2034 # read by the scripts that source this file
ETCD_CLIENT_PORT=12379
# shellcheck disable=SC2034 # read by the scripts that source this file
ETCD_PEER_PORT=12380
# shellcheck disable=SC2034 # read by the scripts that source this file
SERVICE_CIDR=10.96.0.0/16
# shellcheck disable=SC2034 # read by the scripts that source this file
CLUSTER_CIDR=10.88.0.0/15

# shellcheck disable=SC2034 # read by the scripts that source this file
CLIENT_NETNS=hostlb-client
# shellcheck disable=SC2034 # read by the scripts that source this file
CLIENT_IP=10.250.0.2
# shellcheck disable=SC2034 # read by the scripts that source this file
CLIENT_VETH=hlb-client0        # root side of the client's veth; node-1's addresses live on it
NODE1_NAME=node-1
NODE1_IP=10.250.0.1
# shellcheck disable=SC2034 # read by the scripts that source this file
NODE1_UNPUBLISHED_IP=10.250.0.11
# shellcheck disable=SC2034 # read by the scripts that source this file
NODE1_POD_GATEWAY=10.88.0.1    # node-1's own address on its pod network (the CNI bridge's)
NODE2_NAME=node-2
NODE2_IP=10.251.0.2
# shellcheck disable=SC2034 # read by the scripts that source this file
NODE2_UNPUBLISHED_IP=10.251.0.11
# shellcheck disable=SC2034 # read by the scripts that source this file
NODE2_ALT_IP=10.251.0.3
NODE2_NETNS=hostlb-node2
# shellcheck disable=SC2034 # read by the scripts that source this file
NODE2_VETH=hlb-node2           # root side of node-2's veth (10.251.0.1); eth0 inside the netns
# shellcheck disable=SC2034 # read by the scripts that source this file
NODE2_GW=10.251.0.1
# shellcheck disable=SC2034 # read by the scripts that source this file
LINK_PREFIX=hlb-               # every link this harness makes in the root netns starts so

# shellcheck disable=SC2034 # read by the scripts that source this file
PAUSE_IMAGE=localhost/hostlb/pause:dev
# shellcheck disable=SC2034 # read by the scripts that source this file
ECHO_IMAGE=localhost/hostlb/e2e-echo:dev
# shellcheck disable=SC2034 # read by the scripts that source this file
IMAGES=(controller lb e2e-echo pause)

# Per node (1 or 2).
node_name() { if [[ $1 == 1 ]]; then echo "$NODE1_NAME"; else echo "$NODE2_NAME"; fi; }
node_dir() { echo "$STATE/node$1"; }
node_sock() { echo "$STATE/node$1/containerd.sock"; }
node_bridge() { echo "hlb-br$1"; }
node_pod_cidr() { if [[ $1 == 1 ]]; then echo 10.88.0.0/16; else echo 10.89.0.0/16; fi; }
node_cgroup() { echo "hostlb-node$1"; }
node_mntns() { echo "$NSDIR/node$1"; }
node_default_ip() { if [[ $1 == 1 ]]; then echo "$NODE1_IP"; else echo "$NODE2_IP"; fi; }
# The address the node's kubelet reports (changed by set-node-ip).
node_ip() {
  local f; f="$(node_dir "$1")/node-ip"
  if [[ -s $f ]]; then cat "$f"; else node_default_ip "$1"; fi
}
node_index() {
  case "$1" in
    "$NODE1_NAME" | 1) echo 1 ;;
    "$NODE2_NAME" | 2) echo 2 ;;
    *) die "unknown node '$1' (expected $NODE1_NAME or $NODE2_NAME)" ;;
  esac
}
# Runs a command in a node's network (and, with "mnt", also its mount) namespace.
in_node() {
  local n=$1; shift
  local args=()
  if [[ ${1:-} == mnt ]]; then args+=("--mount=$(node_mntns "$n")"); shift; fi
  if [[ $n == 2 ]]; then args+=("--net=/run/netns/$NODE2_NETNS"); fi
  if [[ ${#args[@]} -eq 0 ]]; then "$@"; else nsenter "${args[@]}" -- "$@"; fi
}

# All daemons, in start order.
# shellcheck disable=SC2034 # read by the scripts that source this file
DAEMONS=(etcd kube-apiserver kube-controller-manager kube-scheduler
  containerd-node-1 containerd-node-2 kubelet-node-1 kubelet-node-2 kube-proxy-node-1 kube-proxy-node-2)

log() { echo "[cluster] $*" >&2; }
die() { echo "[cluster] error: $*" >&2; exit 1; }

# Polls CMD every half second until it succeeds or TIMEOUT seconds pass.
wait_for() {
  local what=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${timeout}s waiting for $what"
      return 1
    fi
    sleep 0.5
  done
}

k() { KUBECONFIG="$ADMIN_KUBECONFIG" "$KUBECTL" --request-timeout=20s "$@"; }

# --- daemons -----------------------------------------------------------------------------------
# Each daemon runs in its own session, stdin from /dev/null and output to its log, with every
# other inherited descriptor closed: nothing of the caller's (a CI pipe, our lock) stays open.
# The pid file holds "PID STARTTIME", so a reused pid is never taken for ours.

# Field 22 of /proc/PID/stat (the 20th after the command name, which may hold spaces).
proc_starttime() {
  local s fields
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  read -r -a fields <<<"${s##*) }"
  echo "${fields[19]}"
}

daemon_pid() {
  local f="$PIDS/$1.pid" pid start
  [[ -s $f ]] || return 1
  read -r pid start <"$f" || return 1
  [[ -n $pid && -n $start ]] || return 1
  [[ "$(proc_starttime "$pid")" == "$start" ]] || return 1
  # A zombie is not alive.
  [[ "$(awk '/^State:/{print $2}' "/proc/$pid/status" 2>/dev/null)" != Z ]] || return 1
  echo "$pid"
}
alive() { daemon_pid "$1" >/dev/null; }

# start_daemon NAME EXPECTED_EXE CMD... : EXPECTED_EXE is the program that ends up running
# (after setsid and nsenter have exec'd into it); it is checked so that the recorded pid is the
# daemon's own.
start_daemon() {
  local name=$1 exe=$2; shift 2
  local logf="$LOGS/$name.log"
  mkdir -p "$PIDS" "$LOGS"
  echo "--- $(date -Is) cluster.sh starts: $*" >>"$logf"
  (
    for fd in "/proc/$BASHPID/fd/"*; do
      fd=${fd##*/}
      if [[ $fd =~ ^[0-9]+$ ]] && ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    # Not a process-group leader (no job control here), so setsid(1) does not fork: $! below is
    # the daemon's pid once the execs are done.
    exec setsid "$@"
  ) </dev/null >>"$logf" 2>&1 &
  local pid=$! start
  for _ in $(seq 1 40); do
    if [[ ! -d /proc/$pid ]]; then break; fi
    if [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$exe" ]]; then
      start=$(proc_starttime "$pid") || break
      echo "$pid $start" >"$PIDS/$name.pid"
      return 0
    fi
    sleep 0.05
  done
  log "$name did not start (pid $pid, exe $(readlink "/proc/$pid/exe" 2>/dev/null || echo gone)); its log:"
  tail -n 30 "$logf" >&2
  return 1
}

# stop_daemon NAME [TIMEOUT]: SIGTERM, wait, then SIGKILL. Only the recorded pid is signalled.
stop_daemon() {
  local name=$1 timeout=${2:-15} pid
  if pid=$(daemon_pid "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + timeout))
    while alive "$name" && ((SECONDS < deadline)); do sleep 0.2; done
    if alive "$name"; then
      log "$name (pid $pid) ignored SIGTERM for ${timeout}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do alive "$name" || break; sleep 0.1; done
    fi
  fi
  rm -f "$PIDS/$name.pid"
}

# Processes that belong to this harness even if their pid file is lost: one of our daemons'
# programs, with our state dir in its command line (containerd shims name our containerd's socket).
our_stray_pids() {
  local p cmd exe
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    exe=$(readlink "/proc/$p/exe" 2>/dev/null) || continue
    case "${exe##*/}" in
      etcd | kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kube-proxy | containerd | containerd-shim*) ;;
      *) continue ;;
    esac
    cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) || continue
    case "$cmd" in
      *"$STATE/"*) echo "$p" ;;
    esac
  done
}
