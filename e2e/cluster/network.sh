# The test network: the client netns and node-2's netns, each joined to the root netns by a veth.
#
#   client netns hostlb-client         root netns = node-1                 netns hostlb-node2 = node-2
#   eth0 10.250.0.2/24  <--veth-->  hlb-client0 10.250.0.1/24, .11/24
#                                   hlb-node2   10.251.0.1/24  <--veth-->  eth0 10.251.0.2/24, .11/24
#                                   hlb-br1 (CNI) 10.88.0.0/16             hlb-br2 (CNI) 10.89.0.0/16
# shellcheck shell=bash

SYSCTLS=(net.ipv4.ip_forward net.ipv4.conf.all.route_localnet vm.overcommit_memory vm.panic_on_oom
  kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

# The root netns' sysctls that we, kubelet or kube-proxy change: saved once, restored by `down`.
save_sysctls() {
  [[ -f $STATE/sysctl.orig ]] && return 0
  local s
  for s in "${SYSCTLS[@]}"; do echo "$s=$(sysctl -n "$s")"; done >"$STATE/sysctl.orig.tmp"
  mv "$STATE/sysctl.orig.tmp" "$STATE/sysctl.orig"
}

restore_sysctls() {
  [[ -f $STATE/sysctl.orig ]] || return 0
  local line
  while IFS= read -r line; do
    if [[ -n $line ]]; then sysctl -q -w "$line" >/dev/null 2>&1 || true; fi
  done <"$STATE/sysctl.orig"
}

have_link() { ip link show dev "$1" >/dev/null 2>&1; }

ensure_veth() {
  local root_side=$1 netns=$2
  if ! have_link "$root_side"; then
    # A leftover eth0 in the netns would clash with the new peer's name.
    ip -n "$netns" link del eth0 2>/dev/null || true
    ip link add "$root_side" type veth peer name eth0 netns "$netns"
  fi
  ip link set "$root_side" up
  ip -n "$netns" link set lo up
  ip -n "$netns" link set eth0 up
}

ensure_network() {
  save_sysctls
  local ns
  for ns in "$CLIENT_NETNS" "$NODE2_NETNS"; do
    [[ -e /run/netns/$ns ]] || ip netns add "$ns"
  done

  ensure_veth "$CLIENT_VETH" "$CLIENT_NETNS"
  ip addr replace "$NODE1_IP/24" dev "$CLIENT_VETH"
  ip addr replace "$NODE1_UNPUBLISHED_IP/24" dev "$CLIENT_VETH"
  ip -n "$CLIENT_NETNS" addr replace "$CLIENT_IP/24" dev eth0
  # The client reaches the node subnets and nothing else: no default route.
  ip -n "$CLIENT_NETNS" route replace 10.251.0.0/24 via "$NODE1_IP"

  ensure_veth "$NODE2_VETH" "$NODE2_NETNS"
  ip addr replace "$NODE2_GW/24" dev "$NODE2_VETH"
  ip -n "$NODE2_NETNS" addr replace "$NODE2_IP/24" dev eth0
  ip -n "$NODE2_NETNS" addr replace "$NODE2_UNPUBLISHED_IP/24" dev eth0
  local ip2; ip2=$(node_ip 2)
  if [[ $ip2 != "$NODE2_IP" ]]; then ip -n "$NODE2_NETNS" addr replace "$ip2/$(prefix_for "$ip2")" dev eth0; fi
  ip -n "$NODE2_NETNS" route replace default via "$NODE2_GW"
  ip route replace "$(node_pod_cidr 2)" via "$NODE2_IP" dev "$NODE2_VETH"

  sysctl -q -w net.ipv4.ip_forward=1
  in_node 2 sysctl -q -w net.ipv4.ip_forward=1

  ensure_forward_chain
}

prefix_for() { case "$1" in 10.250.0.* | 10.251.0.*) echo 24 ;; *) echo 32 ;; esac; }

# Forwarding between our links even where FORWARD's policy is DROP, and none from our links to any
# other interface: no test packet leaves the machine (a ClusterIP without a rule would otherwise
# follow the default route out). Appended, so kube-proxy's own FORWARD rules come first.
ensure_forward_chain() {
  iptables -w -N HLB-FORWARD 2>/dev/null || true
  iptables -w -F HLB-FORWARD
  iptables -w -A HLB-FORWARD -i "$LINK_PREFIX+" -o "$LINK_PREFIX+" -j ACCEPT
  iptables -w -A HLB-FORWARD -i "$LINK_PREFIX+" -j DROP
  iptables -w -A HLB-FORWARD -o "$LINK_PREFIX+" -j DROP
  iptables -w -C FORWARD -j HLB-FORWARD 2>/dev/null || iptables -w -A FORWARD -j HLB-FORWARD
}

# The nodes' cgroup roots (kubelet's cgroupRoot), in every v1 hierarchy (and the unified one of a
# hybrid layout); cpuset needs its cpus and mems filled in before anything can join.
cgroup_mounts() { awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/mounts; }

ensure_cgroups() {
  local n=$1 mnt dir f
  [[ "$(stat -fc %T /sys/fs/cgroup)" == cgroup2fs ]] && die "cgroup v2 only: this harness expects cgroup v1 (kubelet 1.20)"
  for mnt in $(cgroup_mounts); do
    dir="$mnt/$(node_cgroup "$n")"
    mkdir -p "$dir"
    for f in cpuset.cpus cpuset.mems; do
      if [[ -f $mnt/$f && -z "$(cat "$dir/$f")" ]]; then cat "$mnt/$f" >"$dir/$f"; fi
    done
  done
}

# A persistent mount namespace per node (kept as a bind mount of its ns file under $NSDIR, a
# private mount). The node's containerd and kubelet run in it, with /var/log/pods and
# /var/log/containers bound to the node's own folders: kubelets remove the pod log folders of pods
# they do not know, so two kubelets must not share them. Every mount the node makes (kubelet's
# root dir, secret volumes, sandbox shm, container rootfs, CNI netns files) stays in it, and
# vanishes with it on `down`.
mntns_ok() { nsenter --mount="$(node_mntns "$1")" -- true 2>/dev/null; }

ensure_mntns() {
  local n=$1 f d
  f=$(node_mntns "$n")
  d=$(node_dir "$n")
  mkdir -p "$NSDIR" "$d/log/pods" "$d/log/containers"
  if ! mountpoint -q "$NSDIR"; then
    mount --bind "$NSDIR" "$NSDIR"
  fi
  mount --make-private "$NSDIR"
  mntns_ok "$n" && return 0
  umount "$f" 2>/dev/null || true
  touch "$f"
  for dir in /var/log/pods /var/log/containers; do
    if [[ ! -d $dir ]]; then mkdir -p "$dir" && echo "$dir" >>"$STATE/created-dirs"; fi
  done
  unshare --mount="$f" --propagation slave true
  nsenter --mount="$f" -- sh -c "mount --bind '$d/log/pods' /var/log/pods && mount --bind '$d/log/containers' /var/log/containers"
}
