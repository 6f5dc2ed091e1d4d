# `down`: an ordered teardown, then a check that nothing of ours is left.
# shellcheck shell=bash

containerd_up() { alive "containerd-node-$1" && ctr -a "$(node_sock "$1")" version >/dev/null 2>&1; }

# No task left in the containerd of any node whose kubelet runs (a stopped kubelet stops nothing).
no_tasks() {
  local n
  for n in 1 2; do
    alive "kubelet-node-$n" || continue
    if containerd_up "$n" && [[ -n "$(ctr_node "$n" tasks ls -q 2>/dev/null)" ]]; then return 1; fi
  done
}

# Pods are deleted while kubelets and containerds still run, so that kubelet stops every sandbox
# through CRI: CNI DEL (portmap and bridge rules, IPAM), sandbox netns and shm go with it. The
# controllers are stopped first so that nothing makes new pods.
drain_workloads() {
  local n any=0
  for n in 1 2; do alive "kubelet-node-$n" && containerd_up "$n" && any=1; done
  ((any)) || return 0
  alive kube-apiserver && curl_api /readyz >/dev/null 2>&1 || return 0
  stop_daemon kube-controller-manager
  stop_daemon kube-scheduler
  log "deleting all pods so that kubelet stops their sandboxes"
  k delete pods --all --all-namespaces --force --grace-period=0 --wait=false >/dev/null 2>&1 || true
  wait_for "kubelets to stop every pod sandbox" 45 no_tasks || true
}

# What kubelet did not stop: killed and deleted through containerd directly.
kill_tasks() {
  local n id
  for n in 1 2; do
    containerd_up "$n" || continue
    for id in $(ctr_node "$n" tasks ls -q 2>/dev/null); do
      ctr_node "$n" tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    for _ in $(seq 1 20); do
      for id in $(ctr_node "$n" tasks ls -q 2>/dev/null); do
        ctr_node "$n" tasks delete -f "$id" >/dev/null 2>&1 || true
      done
      [[ -z "$(ctr_node "$n" tasks ls -q 2>/dev/null)" ]] && break
      sleep 0.25
    done
  done
}

# Shims of our containerds (their -address is our socket), killed after containerd; with their
# socket files, which a killed shim cannot remove (/run/containerd/s/sha256(address/ns/id)).
kill_shims() {
  local p cmd ns id addr sock i
  for p in $(our_stray_pids); do
    [[ "$(readlink "/proc/$p/exe" 2>/dev/null)" == *containerd-shim* ]] || continue
    mapfile -d '' -t cmd <"/proc/$p/cmdline" 2>/dev/null || continue
    ns="" id="" addr=""
    for ((i = 0; i < ${#cmd[@]}; i++)); do
      case "${cmd[i]}" in
        -namespace) ns=${cmd[i + 1]:-} ;;
        -id) id=${cmd[i + 1]:-} ;;
        -address) addr=${cmd[i + 1]:-} ;;
      esac
    done
    [[ $addr == "$STATE/"* ]] || continue
    kill -KILL "$p" 2>/dev/null || true
    if [[ -n $ns && -n $id ]]; then
      sock="/run/containerd/s/$(printf '%s' "$addr/$ns/$id" | sha256sum | cut -d' ' -f1)"
      rm -f "$sock"
    fi
  done
}

# Container processes left in our nodes' cgroups (their shim gone) are ours.
kill_cgroup_procs() {
  local mnt n procs
  for mnt in $(cgroup_mounts); do
    for n in 1 2; do
      [[ -d $mnt/$(node_cgroup "$n") ]] || continue
      procs=$(find "$mnt/$(node_cgroup "$n")" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
      # shellcheck disable=SC2086 # a list of pids
      if [[ -n $procs ]]; then kill -KILL $procs 2>/dev/null || true; fi
    done
  done
}

remove_cgroups() {
  local mnt n dir
  for _ in $(seq 1 20); do
    local left=0
    for mnt in $(cgroup_mounts); do
      for n in 1 2; do
        dir="$mnt/$(node_cgroup "$n")"
        [[ -d $dir ]] || continue
        find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
        [[ -d $dir ]] && left=1
      done
    done
    ((left)) || return 0
    kill_cgroup_procs
    sleep 0.25
  done
}

# Mount points under DIR (octal escapes of /proc/self/mountinfo decoded), deepest first.
mounts_under() {
  awk -v d="$1" '{ m = $5; gsub(/\\040/, " ", m); if (m == d || index(m, d "/") == 1) print length(m) " " m }' \
    /proc/self/mountinfo | sort -rn | cut -d' ' -f2- | uniq
}

unmount_ours() {
  local n m
  # The nodes' mount namespaces first: every mount a node made goes with its namespace.
  for n in 1 2; do
    if [[ -e $(node_mntns "$n") ]]; then umount "$(node_mntns "$n")" 2>/dev/null || true; fi
  done
  for _ in 1 2 3; do
    while IFS= read -r m; do
      [[ -n $m ]] || continue
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done < <(mounts_under "$STATE")
    [[ -z "$(mounts_under "$STATE")" ]] && break
  done
}

preexisting_netns() { cat "$STATE/netns.before" 2>/dev/null || true; }

remove_network() {
  local ns l
  # cni-* netns are made by containerds; ours live in the nodes' mount namespaces and are gone
  # with them. Any visible here that was not there before our first containerd started is ours.
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^cni-' || true); do
    grep -qxF "$ns" <(preexisting_netns) || ip netns del "$ns" 2>/dev/null || true
  done
  for ns in "$CLIENT_NETNS" "$NODE2_NETNS"; do
    if [[ -e /run/netns/$ns ]]; then ip netns del "$ns" 2>/dev/null || true; fi
  done
  for l in $(our_links); do ip link del "$l" 2>/dev/null || true; done
  rm -f /var/lib/cni/results/hlb-net1-* /var/lib/cni/results/hlb-net2-* 2>/dev/null || true
}

our_links() { ip -o link show 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1 | grep "^$LINK_PREFIX" || true; }

# Chains whose names kube-proxy, kubelet, CNI's bridge and portmap plugins, and this harness use.
OUR_CHAINS='^(KUBE-|CNI-|HLB-)'

our_chains() {
  local cmd table
  for cmd in iptables ip6tables; do
    for table in filter nat mangle raw; do
      "$cmd-save" -t "$table" 2>/dev/null | awk -v c="$cmd" -v t="$table" '/^:/ { sub(/^:/, "", $1); print c " " t " " $1 }' |
        awk -v re="$OUR_CHAINS" '$3 ~ re'
    done
  done
}

# Removes the jumps into our chains from the other chains, then flushes and deletes ours.
flush_chains() {
  local cmd table saved script
  for cmd in iptables ip6tables; do
    for table in filter nat mangle raw; do
      saved=$("$cmd-save" -t "$table" 2>/dev/null) || continue
      grep -qE "^:(KUBE-|CNI-|HLB-)" <<<"$saved" || continue
      script=$(
        echo "*$table"
        awk -v re="$OUR_CHAINS" '/^-A / && $2 !~ re && / -[jg] (KUBE-|CNI-|HLB-)/ { sub(/^-A /, "-D "); print }' <<<"$saved"
        awk -v re="$OUR_CHAINS" '/^:/ { n = substr($1, 2); if (n ~ re) print "-F " n }' <<<"$saved"
        awk -v re="$OUR_CHAINS" '/^:/ { n = substr($1, 2); if (n ~ re) print "-X " n }' <<<"$saved"
        echo COMMIT
      )
      if ! "$cmd-restore" -w --noflush <<<"$script" 2>/dev/null; then
        # One rule at a time, so that one odd rule does not keep the rest.
        while IFS= read -r line; do
          [[ $line == -* ]] || continue
          eval "$cmd -w -t $table $line" 2>/dev/null || true
        done <<<"$script"
      fi
    done
  done
}

# The node agents' tables in node-1's namespace, which is this machine's own: the pods were
# force-deleted with their DaemonSet still there, which agents take for a restart, not an uninstall.
# node-2's go with its namespace.
AGENT_TABLES=("ip hostlb" "ip6 hostlb")

remove_agent_tables() {
  local table
  for table in "${AGENT_TABLES[@]}"; do
    # shellcheck disable=SC2086 # family and name are two words
    nft delete table $table 2>/dev/null || true
  done
}

agent_tables_left() {
  local table
  for table in "${AGENT_TABLES[@]}"; do
    # shellcheck disable=SC2086 # family and name are two words
    if nft list table $table >/dev/null 2>&1; then echo "nftables table: $table"; fi
  done
}

cleanup_iptables() {
  if [[ -x $BIN/kube-proxy ]] && [[ -n "$(our_chains | grep ' KUBE-' || true)" ]]; then
    "$BIN/kube-proxy" --cleanup >>"$LOGS/kube-proxy-cleanup.log" 2>&1 </dev/null || true
  fi
  flush_chains
  flush_chains
}

remove_created_dirs() {
  local d
  [[ -f $STATE/created-dirs ]] || return 0
  # Deepest first; only if empty.
  sort -r "$STATE/created-dirs" | uniq | while IFS= read -r d; do rmdir "$d" 2>/dev/null || true; done
}

# Everything of ours still on the machine, one line each; nothing printed means clean.
leftovers() {
  local p m n mnt
  for name in "${DAEMONS[@]}"; do
    if p=$(daemon_pid "$name"); then echo "process: $name (pid $p)"; fi
  done
  for p in $(our_stray_pids); do echo "process: pid $p: $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-150)"; done
  while IFS= read -r m; do [[ -n $m ]] && echo "mount: $m"; done < <(mounts_under "$STATE")
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    case "$ns" in
      "$CLIENT_NETNS" | "$NODE2_NETNS") echo "netns: $ns" ;;
      cni-*) grep -qxF "$ns" <(preexisting_netns) || echo "netns: $ns" ;;
    esac
  done
  for l in $(our_links); do echo "link: $l"; done
  our_chains | sed 's/^/chain: /'
  agent_tables_left
  for mnt in $(cgroup_mounts); do
    for n in 1 2; do [[ -d $mnt/$(node_cgroup "$n") ]] && echo "cgroup: $mnt/$(node_cgroup "$n")"; done
  done
  find /var/lib/cni/results -maxdepth 1 -name 'hlb-net*' 2>/dev/null | sed 's/^/file: /'
  true
}

do_down() {
  local started=$SECONDS
  if [[ ! -d $STATE ]] && [[ -z "$(leftovers)" ]]; then
    log "nothing to take down"
    return 0
  fi
  mkdir -p "$LOGS" "$PIDS"
  rm -f "$ENV_FILE"
  drain_workloads
  stop_daemon kubelet-node-1 &
  stop_daemon kubelet-node-2 &
  wait
  kill_tasks
  stop_daemon kube-proxy-node-1 &
  stop_daemon kube-proxy-node-2 &
  stop_daemon kube-controller-manager &
  stop_daemon kube-scheduler &
  wait
  stop_daemon kube-apiserver
  stop_daemon etcd
  stop_daemon containerd-node-1 &
  stop_daemon containerd-node-2 &
  wait
  kill_shims
  kill_cgroup_procs
  local strays
  strays=$(our_stray_pids)
  if [[ -n $strays ]]; then
    log "killing processes of ours without a pid file: $strays"
    # shellcheck disable=SC2086 # a list of pids
    kill -KILL $strays 2>/dev/null || true
    sleep 0.5
  fi
  unmount_ours
  remove_network
  cleanup_iptables
  remove_agent_tables
  remove_cgroups
  remove_created_dirs
  restore_sysctls
  if mountpoint -q "$NSDIR" 2>/dev/null; then umount "$NSDIR" 2>/dev/null || true; fi

  local left
  left=$(leftovers)
  if [[ -n $left ]]; then
    log "down left these behind:"
    # shellcheck disable=SC2001 # indents each line of a multi-line list, which ${//} cannot anchor
    echo "$left" | sed 's/^/  /' >&2
    log "the state dir $STATE is kept (pid files, logs); run 'down' again after looking"
    return 1
  fi
  if [[ -d $LOGS ]]; then
    rm -rf "$LAST_LOGS"
    cp -r "$LOGS" "$LAST_LOGS" 2>/dev/null || true
  fi
  rm -rf "$STATE"
  log "down: nothing left ($((SECONDS - started))s; last logs in $LAST_LOGS)"
}
