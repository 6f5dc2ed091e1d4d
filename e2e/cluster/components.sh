# The cluster's daemons: their configuration, how each is started, and how it is known healthy.
# shellcheck shell=bash

curl_api() { curl -fsS --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$API_URL$1"; }

ensure_etcd() {
  if ! alive etcd; then
    mkdir -p "$STATE/etcd"
    chmod 700 "$STATE/etcd"
    start_daemon etcd "$(readlink -f "$(command -v etcd)")" etcd --name hostlb-e2e --data-dir "$STATE/etcd" \
      --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
      --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
      --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-cluster "hostlb-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
      --listen-metrics-urls "" --log-level warn
  fi
  wait_for "etcd health" 60 curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health"
}

ensure_apiserver() {
  if ! alive kube-apiserver; then
    start_daemon kube-apiserver "$BIN/kube-apiserver" "$BIN/kube-apiserver" \
      --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
      --bind-address="$API_IP" --advertise-address="$API_IP" --secure-port=6443 --insecure-port=0 \
      --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
      --client-ca-file="$PKI/ca.crt" \
      --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
      --service-account-issuer=https://kubernetes.default.svc \
      --service-cluster-ip-range="$SERVICE_CIDR" \
      --authorization-mode=Node,RBAC --allow-privileged=true \
      --enable-admission-plugins=NodeRestriction \
      --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
      --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
      --kubelet-preferred-address-types=InternalIP \
      --feature-gates=MixedProtocolLBService=true,ServiceLBNodePortControl=true \
      --profiling=false --v=1
  fi
  wait_for "kube-apiserver readiness" 120 curl_api /readyz
}

ensure_controller_manager() {
  if ! alive kube-controller-manager; then
    local kc="$STATE/kube-controller-manager.kubeconfig"
    start_daemon kube-controller-manager "$BIN/kube-controller-manager" "$BIN/kube-controller-manager" \
      --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
      --bind-address=127.0.0.1 --port=0 \
      --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
      --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
      --use-service-account-credentials=true --controllers='*,-nodeipam' --leader-elect=false \
      --node-monitor-period=2s --node-monitor-grace-period=16s \
      --kube-api-qps=200 --kube-api-burst=400 \
      --profiling=false --v=1
  fi
}

ensure_scheduler() {
  if ! alive kube-scheduler; then
    local kc="$STATE/kube-scheduler.kubeconfig"
    start_daemon kube-scheduler "$BIN/kube-scheduler" "$BIN/kube-scheduler" \
      --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
      --bind-address=127.0.0.1 --port=0 --leader-elect=false --profiling=false --v=1 \
      --kube-api-qps=200 --kube-api-burst=400
  fi
}

wait_controllers() {
  wait_for "kube-controller-manager health" 60 curl -fsSk --max-time 2 https://127.0.0.1:10257/healthz
  wait_for "kube-scheduler health" 60 curl -fsSk --max-time 2 https://127.0.0.1:10259/healthz
}

# --- containerd ----------------------------------------------------------------------------------

write_containerd_config() {
  local n=$1 d; d=$(node_dir "$n")
  mkdir -p "$d/cni" "$d/cni-ipam" "$d/containerd/root" "$d/containerd/state" "$d/containerd/opt" "$d/runc"
  cat >"$d/containerd.toml" <<EOF
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
oom_score = 0
required_plugins = ["io.containerd.grpc.v1.cri"]
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$(node_sock "$n")"

[ttrpc]
  address = ""

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$d/containerd/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$PAUSE_IMAGE"
    # A negative oom_score_adj cannot be written on these VMs, even by root.
    restrict_oom_score_adj = true
    disable_apparmor = true
    enable_selinux = false
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          Root = "$d/runc"
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "$d/cni"
      max_conf_num = 1
EOF
  cat >"$d/cni/10-hostlb.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "hlb-net$n",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$(node_bridge "$n")",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$d/cni-ipam",
        "ranges": [[{ "subnet": "$(node_pod_cidr "$n")" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
}

ctr_node() { local n=$1; shift; ctr -a "$(node_sock "$n")" -n k8s.io "$@"; }

ensure_containerd() {
  local n=$1
  if ! alive "containerd-node-$n"; then
    write_containerd_config "$n"
    rm -f "$(node_sock "$n")"
    node_prefix "$n" mnt
    start_daemon "containerd-node-$n" "$(readlink -f "$(command -v containerd)")" \
      "${PREFIX[@]}" containerd --config "$(node_dir "$n")/containerd.toml"
  fi
}

wait_containerd() {
  wait_for "containerd of $(node_name "$1")" 30 ctr -a "$(node_sock "$1")" version
}

# node_prefix N [mnt]: sets PREFIX to the command words that run a program in the node's network
# (and with "mnt" its mount) namespace: nsenter execs the program, so the pid stays the same.
node_prefix() {
  local n=$1
  PREFIX=()
  if [[ ${2:-} == mnt ]]; then PREFIX+=("--mount=$(node_mntns "$n")"); fi
  if [[ $n == 2 ]]; then PREFIX+=("--net=/run/netns/$NODE2_NETNS"); fi
  if [[ ${#PREFIX[@]} -gt 0 ]]; then PREFIX=(nsenter "${PREFIX[@]}" --); fi
}

# --- kubelet and kube-proxy -----------------------------------------------------------------------

write_kubelet_config() {
  local n=$1 d address; d=$(node_dir "$n")
  # node-1 shares the root netns with the machine's own interfaces: serve on its address only.
  if [[ $n == 1 ]]; then address=$(node_ip 1); else address=0.0.0.0; fi
  mkdir -p "$d/kubelet" "$d/kubelet-pki" "$d/volume-plugins"
  cat >"$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $address
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: AlwaysAllow
cgroupDriver: cgroupfs
cgroupRoot: /$(node_cgroup "$n")
failSwapOn: false
nodeStatusUpdateFrequency: 4s
nodeStatusReportFrequency: 4s
nodeLeaseDurationSeconds: 12
# The client rate limits of every component are raised (default kubelet 5/s, burst 10;
# controller-manager 20/30; scheduler 50/100) so that a burst of Services measures hostlb and
# the components' work, not their throttles (make bench).
kubeAPIQPS: 200
kubeAPIBurst: 400
evictionHard:
  memory.available: 100Mi
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
  imagefs.inodesFree: "1%"
# Imported images cannot be pulled again: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
volumePluginDir: $d/volume-plugins
resolvConf: /etc/resolv.conf
runtimeRequestTimeout: 2m
# This kubelet sometimes loses a race with its own container cleanup when a pod is deleted
# ("KillContainer ... not found") and finishes the deletion only at the pod's next sync: a
# minute by default. Ten seconds keeps such a pod from lingering through a test's wait.
syncFrequency: 10s
EOF
}

ensure_kubelet() {
  local n=$1 d; d=$(node_dir "$n")
  alive "kubelet-node-$n" && return 0
  ensure_cgroups "$n"
  write_kubelet_config "$n"
  node_prefix "$n" mnt
  start_daemon "kubelet-node-$n" "$BIN/kubelet" "${PREFIX[@]}" "$BIN/kubelet" \
    --config="$d/kubelet.yaml" --kubeconfig="$d/kubelet.kubeconfig" \
    --container-runtime=remote --container-runtime-endpoint="unix://$(node_sock "$n")" \
    --containerd="$(node_sock "$n")" \
    --node-ip="$(node_ip "$n")" --hostname-override="$(node_name "$n")" \
    --root-dir="$d/kubelet" --cert-dir="$d/kubelet-pki" \
    --pod-infra-container-image="$PAUSE_IMAGE" --v=1
}

ensure_kube_proxy() {
  local n=$1 d; d=$(node_dir "$n")
  alive "kube-proxy-node-$n" && return 0
  cat >"$d/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $STATE/kube-proxy.kubeconfig
hostnameOverride: $(node_name "$n")
mode: iptables
clusterCIDR: $CLUSTER_CIDR
iptables:
  # Rules follow a change at once (1.20's default waits up to 1 s after the previous sync).
  minSyncPeriod: 0s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  # 0: leave the host's conntrack sysctls alone.
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
  node_prefix "$n"
  start_daemon "kube-proxy-node-$n" "$BIN/kube-proxy" "${PREFIX[@]}" "$BIN/kube-proxy" \
    --config="$d/kube-proxy.yaml" --v=1
}

# kube-proxy's healthz answers 200 once its first sync is done.
kube_proxy_healthy() {
  node_prefix "$1"
  "${PREFIX[@]}" curl -fsS --max-time 2 http://127.0.0.1:10256/healthz
}

# --- images ----------------------------------------------------------------------------------------

has_image() { local refs; refs=$(ctr_node "$1" images ls -q 2>/dev/null) && grep -qxF "$2" <<<"$refs"; }

# import_image N NAME ARCHIVE: the archive into node N's containerd, named NAME.
import_image() {
  local n=$1 name=$2 tar=$3
  # Importing over an image of the same name and other content fails ("content digest ...
  # not found": the name moves from the index to the manifest and the old blobs are collected
  # in between), so the old name goes first. Running containers keep their snapshots.
  ctr_node "$n" images rm "$name" >/dev/null 2>&1 || true
  if ! ctr_node "$n" images import --index-name "$name" "$tar" >/dev/null; then
    ctr_node "$n" images rm "$name" >/dev/null 2>&1 || true
    ctr_node "$n" images import --index-name "$name" "$tar" >/dev/null
  fi
  has_image "$n" "$name" || die "$name is not in $(node_name "$n")'s containerd after the import"
}

# Imports each archive into both containerds, unless that very archive (by checksum) is in
# already. The names of images that changed under a running cluster go to $STATE/images-changed.
import_images() {
  local short n name tar sum seen changed=()
  mkdir -p "$STATE/images"
  for short in "${IMAGES[@]}"; do
    tar="$IMAGE_DIR/$short.tar"
    name="localhost/hostlb/$short:dev"
    [[ -s $tar ]] || die "no image archive $tar (images/build.sh should have written it)"
    sum=$(sha256sum "$tar" | cut -d' ' -f1)
    for n in 1 2; do
      seen="$STATE/images/$short.node$n"
      if [[ -s $seen && "$(cat "$seen")" == "$sum" ]] && has_image "$n" "$name"; then continue; fi
      import_image "$n" "$name" "$tar"
      [[ -s $seen ]] && changed+=("$short")
      echo "$sum" >"$seen"
    done
  done
  if [[ ${#changed[@]} -gt 0 ]]; then
    log "images changed: $(printf '%s\n' "${changed[@]}" | sort -u | tr '\n' ' ')"
    printf '%s\n' "${changed[@]}" | sort -u >"$STATE/images-changed"
  else
    : >"$STATE/images-changed"
  fi
}
