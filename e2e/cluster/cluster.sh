#!/usr/bin/env bash
# The local two-node Kubernetes cluster of the end-to-end tests, with hostlb installed.
#
#   cluster.sh up                    bring it up (idempotent; finishes or redoes a half-started one)
#   cluster.sh down                  ordered teardown; fails, listing them, if any of our
#                                    processes, mounts, netns, links, chains or cgroups remain
#   cluster.sh status                nodes, pods and our daemons
#   cluster.sh logs                  the tail of every component's log
#   cluster.sh kubelet stop|start NODE
#   cluster.sh set-node-ip NODE IP   the node's kubelet reports IP as its InternalIP from now on
#   cluster.sh restart-control-plane stop kube-apiserver and etcd, then start them again
#   cluster.sh hang-apiserver SECONDS  SIGSTOP to kube-apiserver, SIGCONT that many seconds later
#   cluster.sh hang-kubelets SECONDS   the same to both nodes' kubelets (no node Lease renewed)
#   cluster.sh install               apply the install of this tree again, as an upgrade does
#   cluster.sh import-release DIR TAG  DIR's controller and lb archives as localhost/hostlb/*:TAG
#   cluster.sh node stop|start NODE  the node's kubelet and containerd (its containers keep running)
#   cluster.sh kill-container NODE ID    SIGKILL to a container of the node, through its containerd
#   cluster.sh pause-container NODE ID   freeze a container of the node, through its containerd
#   cluster.sh resume-container NODE ID  thaw a frozen container
#
# Topology, names and addresses: lib.sh and network.sh. When up, $HOSTLB_E2E_STATE/cluster.env
# (default /var/lib/hostlb-e2e) describes the cluster to the Rust suite.
#
# Knobs: HOSTLB_E2E_STATE, HOSTLB_CACHE_DIR, HOSTLB_IMAGE_DIR (image archives),
# HOSTLB_E2E_SKIP_IMAGE_BUILD=1 (import the archives in HOSTLB_IMAGE_DIR without images/build.sh).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$HERE/cluster.sh"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
# shellcheck source=pki.sh
source "$HERE/pki.sh"
# shellcheck source=network.sh
source "$HERE/network.sh"
# shellcheck source=components.sh
source "$HERE/components.sh"
# shellcheck source=teardown.sh
source "$HERE/teardown.sh"

[[ $(id -u) == 0 ]] || die "must run as root (network namespaces, mounts, cgroups)"

# One cluster.sh at a time changes the cluster (a lock on this folder: nothing to leave behind).
lock() {
  exec 9<"$HERE"
  flock -w 900 9 || die "another cluster.sh holds the lock for 15 min"
}

DEPS=(etcd-server containerd runc containernetworking-plugins iptables nftables iproute2 conntrack
  golang-go openssl rsync jq socat golang-github-modern-go-reflect2-dev dpkg-dev curl util-linux procps)

ensure_deps() {
  local installed missing=() p
  # dpkg-query fails when a package is unknown to it (never installed): that is an answer too.
  installed=$({ dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${DEPS[@]}" 2>/dev/null || true; } | awk '$2 == "ii" { print $1 }')
  for p in "${DEPS[@]}"; do grep -qxF "$p" <<<"$installed" || missing+=("$p"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null ||
    { apt-get update -qq </dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null; }
}

# --- up ---------------------------------------------------------------------------------------------

TIMINGS=()
phase() {
  local name=$1 t=$SECONDS; shift
  log "== $name"
  "$@"
  TIMINGS+=("$name=$((SECONDS - t))")
}

print_timings() {
  local total=0 item
  # The phases the calling `up` ran before this attempt come first.
  if [[ -n ${HOSTLB_UP_TIMINGS:-} ]]; then read -r -a item <<<"$HOSTLB_UP_TIMINGS"; TIMINGS=("${item[@]}" "${TIMINGS[@]}"); fi
  for item in "${TIMINGS[@]}"; do total=$((total + ${item#*=})); done
  echo "[cluster] timing (s): ${TIMINGS[*]} total=$total" >&2
}

IMAGE_BUILD_PID=""
start_image_build() {
  if [[ ${HOSTLB_E2E_SKIP_IMAGE_BUILD:-0} == 1 ]]; then
    log "HOSTLB_E2E_SKIP_IMAGE_BUILD=1: importing the archives in $IMAGE_DIR as they are"
    return 0
  fi
  [[ -f $REPO/images/build.sh ]] || die "$REPO/images/build.sh is missing"
  # Beside the control plane's start; its own session, so that a failed up can stop all of it.
  # Tagged dev, not the version: the upgrade test imports the previous release by its version,
  # and an archive's own name is imported too.
  (cd "$REPO" && HOSTLB_IMAGE_TAG=dev exec setsid bash images/build.sh) </dev/null >"$LOGS/images-build.log" 2>&1 9<&- &
  IMAGE_BUILD_PID=$!
}

stop_image_build() {
  if [[ -n $IMAGE_BUILD_PID ]]; then kill -TERM -- "-$IMAGE_BUILD_PID" 2>/dev/null || true; fi
}

wait_image_build() {
  [[ -n $IMAGE_BUILD_PID ]] || return 0
  local rc=0
  wait "$IMAGE_BUILD_PID" || rc=$?
  IMAGE_BUILD_PID=""
  if [[ $rc -ne 0 ]]; then
    log "images/build.sh failed (exit $rc); the end of its output:"
    tail -n 40 "$LOGS/images-build.log" >&2
    return 1
  fi
  grep -E '^localhost/' "$LOGS/images-build.log" | sed 's/^/[cluster]   /' >&2 || true
}

record_created_dirs() {
  local d
  for d in /run/containerd /run/containerd/s /var/log/pods /var/log/containers /var/lib/cni /var/lib/cni/results; do
    [[ -e $d ]] || echo "$d" >>"$STATE/created-dirs"
  done
  [[ -f $STATE/netns.before ]] || { ip netns list 2>/dev/null | awk '{print $1}' | grep '^cni-' || true; } >"$STATE/netns.before"
}

control_plane() {
  ensure_etcd
  ensure_apiserver
  ensure_controller_manager
  ensure_scheduler
  wait_controllers
}

containerds() {
  record_created_dirs
  local n
  for n in 1 2; do
    if ! mntns_ok "$n" && alive "containerd-node-$n"; then
      # A node's daemons without their mount namespace: restart them in a new one.
      stop_daemon "kubelet-node-$n"
      stop_daemon "containerd-node-$n"
    fi
    ensure_mntns "$n"
    ensure_containerd "$n"
  done
  wait_containerd 1
  wait_containerd 2
}

images() {
  wait_image_build
  import_images
}

nodes_ready() {
  local ready
  ready=$(k get nodes -o jsonpath='{range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null) || return 1
  grep -qx "$NODE1_NAME=True" <<<"$ready" && grep -qx "$NODE2_NAME=True" <<<"$ready"
}

nodes_registered() { k get node "$NODE1_NAME" "$NODE2_NAME" >/dev/null 2>&1; }

nodes() {
  local n
  for n in 1 2; do ensure_kubelet "$n"; done
  # kube-proxy reads its node's address from the Node object at start.
  wait_for "both nodes registered" 60 nodes_registered || true
  for n in 1 2; do ensure_kube_proxy "$n"; done
  for n in 1 2; do wait_for "kube-proxy of $(node_name "$n")" 60 kube_proxy_healthy "$n"; done
  if ! wait_for "both nodes Ready" 120 nodes_ready; then
    k get nodes -o wide >&2 || true
    return 1
  fi
}

hostlb_diagnostics() {
  local pod
  k -n hostlb-system get deploy,rs,pods -o wide >&2 || true
  for pod in $(k -n hostlb-system get pods -l app.kubernetes.io/component=controller -o name 2>/dev/null); do
    k -n hostlb-system describe "$pod" >&2 || true
    k -n hostlb-system logs "$pod" --all-containers --tail=100 >&2 || true
    k -n hostlb-system logs "$pod" --all-containers --previous --tail=50 >&2 2>/dev/null || true
  done
}

# install_hostlb after-import|again: after-import restarts the controller when `up` imported a new
# controller image under the same name.
install_hostlb() {
  # Built as users build it, with a current kustomize (kubectl 1.20's own is v2); applied as is.
  local tools manifest
  tools=$(bash "$REPO/e2e/chart/tools.sh")
  manifest=$("$tools/kubectl" kustomize "$HERE/install/")
  k apply -f - <<<"$manifest" >&2
  if [[ $1 == after-import ]] && grep -qx controller "$STATE/images-changed" 2>/dev/null; then
    log "the controller image changed: restarting the controller and any node agents"
    k -n hostlb-system rollout restart deployment/hostlb-controller >&2
    if k -n hostlb-system get daemonset/hostlb-agent >/dev/null 2>&1; then
      k -n hostlb-system rollout restart daemonset/hostlb-agent >&2
    fi
  fi
  if ! k -n hostlb-system rollout status deployment/hostlb-controller --timeout=180s >&2 ||
    ! k -n hostlb-system wait --for=condition=Available deployment/hostlb-controller --timeout=30s >&2; then
    log "hostlb-controller is not Available"
    hostlb_diagnostics
    return 1
  fi
}

write_env() {
  local name
  {
    echo "KUBECONFIG=$ADMIN_KUBECONFIG"
    for name in KUBECTL CLIENT_NETNS CLIENT_IP NODE1_NAME NODE1_IP NODE1_UNPUBLISHED_IP NODE1_POD_GATEWAY NODE2_NAME \
      NODE2_IP NODE2_UNPUBLISHED_IP NODE2_ALT_IP NODE2_NETNS ECHO_IMAGE; do
      echo "$name=${!name}"
    done
  } >"$ENV_FILE.tmp"
  mv "$ENV_FILE.tmp" "$ENV_FILE"
}

# One attempt at bringing everything up, in its own process (so that `set -e` holds throughout).
up_attempt() {
  mkdir -p "$STATE" "$PIDS" "$LOGS" "$STATE/node1" "$STATE/node2"
  chmod 755 "$STATE"
  rm -f "$ENV_FILE"
  # On failure too: the phases done so far and how long they took.
  trap 'stop_image_build; print_timings' EXIT
  start_image_build
  phase pki ensure_pki
  phase network ensure_network
  phase control-plane control_plane
  phase containerd containerds
  phase images images
  phase nodes nodes
  phase hostlb install_hostlb after-import
  write_env
  trap - EXIT
  print_timings
  log "up: $(tr '\n' ' ' <"$ENV_FILE" | cut -c1-60)... in $ENV_FILE"
}

cmd_up() {
  lock
  local started=$SECONDS recovering=0
  phase apt ensure_deps
  phase kubernetes bash "$HERE/build-kubernetes.sh"
  [[ -d $STATE ]] && recovering=1
  export HOSTLB_UP_TIMINGS="${TIMINGS[*]}"
  if bash "$SELF" __up-attempt; then
    log "cluster up in $((SECONDS - started))s"
    return 0
  fi
  if ((recovering)); then
    log "finishing the existing cluster failed: taking it down and starting again"
    bash "$SELF" __down
    if bash "$SELF" __up-attempt; then
      log "cluster up in $((SECONDS - started))s"
      return 0
    fi
  fi
  log "up failed; 'cluster.sh logs' shows the components' logs"
  return 1
}

# --- the rest ------------------------------------------------------------------------------------------

cmd_status() {
  local name pid
  for name in "${DAEMONS[@]}"; do
    if pid=$(daemon_pid "$name"); then
      printf '%-26s running (pid %s)\n' "$name" "$pid"
    elif [[ -f $PIDS/$name.pid ]]; then
      printf '%-26s DEAD\n' "$name"
    else
      printf '%-26s not started\n' "$name"
    fi
  done
  [[ -f $ENV_FILE ]] && echo "cluster.env: $ENV_FILE" || echo "cluster.env: none (not up)"
  if alive kube-apiserver; then
    k get nodes -o wide || true
    k get pods --all-namespaces -o wide || true
  fi
}

cmd_logs() {
  local f dir=$LOGS
  [[ -d $dir ]] || dir=$LAST_LOGS
  [[ -d $dir ]] || { log "no logs (nothing was brought up)"; return 0; }
  for f in "$dir"/*.log; do
    [[ -f $f ]] || continue
    echo "===== $(basename "$f" .log) (last 60 lines of $f)"
    tail -n 60 "$f"
  done
}

# `kubelet stop|start NODE` or `node stop|start NODE` (its kubelet and containerd).
cmd_node_daemons() {
  local scope=$1 action=${2:-} n
  [[ $# -eq 3 && $action =~ ^(stop|start)$ ]] || die "usage: cluster.sh $scope stop|start NODE"
  n=$(node_index "$3")
  [[ -d $STATE ]] || die "no cluster ($STATE is missing)"
  lock
  if [[ $action == stop ]]; then
    stop_daemon "kubelet-node-$n" 30
    if [[ $scope == node ]]; then stop_daemon "containerd-node-$n" 30; fi
  else
    if [[ $scope == node ]]; then
      ensure_containerd "$n"
      wait_containerd "$n"
    fi
    ensure_kubelet "$n"
  fi
}

cmd_set_node_ip() {
  [[ $# -eq 2 ]] || die "usage: cluster.sh set-node-ip NODE IP"
  local n ip=$2 dev
  n=$(node_index "$1")
  [[ $ip =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "'$ip' is not an IPv4 address"
  [[ -d $STATE ]] || die "no cluster ($STATE is missing)"
  lock
  if [[ $n == 1 ]]; then dev=$CLIENT_VETH; else dev=eth0; fi
  # (grep reads all: with pipefail, an early exit of grep -q would fail the pipeline.)
  if ! in_node "$n" ip -o -4 addr show dev "$dev" | grep -c " $ip/" >/dev/null; then
    in_node "$n" ip addr add "$ip/$(prefix_for "$ip")" dev "$dev"
  fi
  echo "$ip" >"$(node_dir "$n")/node-ip"
  stop_daemon "kubelet-node-$n" 30
  ensure_kubelet "$n"
}

cmd_restart_control_plane() {
  [[ $# -eq 0 ]] || die "usage: cluster.sh restart-control-plane"
  [[ -d $STATE ]] || die "no cluster ($STATE is missing)"
  lock
  local started=$SECONDS
  # A crash more than a shutdown: the API server would wait up to a minute for its watches.
  stop_daemon kube-apiserver 3
  stop_daemon etcd 30
  ensure_etcd
  ensure_apiserver
  log "kube-apiserver and etcd restarted; the API was away for $((SECONDS - started))s"
}

# `hang-apiserver SECONDS` or `hang-kubelets SECONDS`: SIGSTOP to the daemons, SIGCONT that many
# seconds later.
cmd_hang() {
  local what=$1 daemons=() pids=() daemon pid
  shift
  [[ $# -eq 1 && $1 =~ ^[0-9]+$ ]] || die "usage: cluster.sh hang-$what SECONDS"
  case $what in
    apiserver) daemons=(kube-apiserver) ;;
    kubelets) daemons=(kubelet-node-1 kubelet-node-2) ;;
  esac
  for daemon in "${daemons[@]}"; do
    pid=$(daemon_pid "$daemon") || die "$daemon is not running"
    pids+=("$pid")
  done
  # Connections stay open and nothing answers, as when a process is wedged; they go on however
  # this script ends (the pids are expanded now: the trap runs after this function returned).
  # shellcheck disable=SC2064
  trap "kill -CONT ${pids[*]} 2>/dev/null || true" EXIT
  kill -STOP "${pids[@]}"
  log "${daemons[*]} (pids ${pids[*]}) stopped for $1s"
  sleep "$1"
  kill -CONT "${pids[@]}"
  log "${daemons[*]} (pids ${pids[*]}) answer again"
}

cmd_install() {
  [[ $# -eq 0 ]] || die "usage: cluster.sh install"
  [[ -f $ENV_FILE ]] || die "no cluster up ($ENV_FILE is missing)"
  lock
  install_hostlb again
}

# An earlier release's images beside this tree's, for the upgrade test.
cmd_import_release() {
  [[ $# -eq 2 && $2 =~ ^[A-Za-z0-9._-]+$ && $2 != dev ]] || die "usage: cluster.sh import-release DIR TAG (not dev)"
  [[ -f $ENV_FILE ]] || die "no cluster up ($ENV_FILE is missing)"
  lock
  local short n
  for short in controller lb; do
    [[ -s $1/$short.tar ]] || die "no image archive $1/$short.tar"
    for n in 1 2; do import_image "$n" "localhost/hostlb/$short:$2" "$1/$short.tar"; done
  done
  log "imported $1/{controller,lb}.tar as localhost/hostlb/{controller,lb}:$2 on both nodes"
}

# `kill-container`, `pause-container` or `resume-container NODE CONTAINER_ID`.
cmd_container() {
  local action=$1
  shift
  [[ $# -eq 2 ]] || die "usage: cluster.sh $action-container NODE CONTAINER_ID"
  local n id=${2#containerd://}
  n=$(node_index "$1")
  [[ $id =~ ^[0-9a-f]{64}$ ]] || die "'$2' is not a containerd container id"
  case $action in
    kill) ctr_node "$n" tasks kill --signal SIGKILL "$id" ;;
    pause) ctr_node "$n" tasks pause "$id" ;;
    resume) ctr_node "$n" tasks resume "$id" ;;
  esac
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    up) cmd_up ;;
    down) lock; do_down ;;
    status) cmd_status ;;
    logs) cmd_logs ;;
    kubelet | node) cmd_node_daemons "$cmd" "$@" ;;
    set-node-ip) cmd_set_node_ip "$@" ;;
    restart-control-plane) cmd_restart_control_plane "$@" ;;
    hang-apiserver | hang-kubelets) cmd_hang "${cmd#hang-}" "$@" ;;
    install) cmd_install "$@" ;;
    import-release) cmd_import_release "$@" ;;
    kill-container | pause-container | resume-container) cmd_container "${cmd%-container}" "$@" ;;
    __up-attempt) up_attempt ;;
    __down) do_down ;;
    *)
      sed -n '2,25p' "$SELF" | sed 's/^# \{0,1\}//' >&2
      exit 2
      ;;
  esac
}

main "$@"
