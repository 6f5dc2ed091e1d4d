#!/usr/bin/env bash
# A control plane on loopback for the scale bench, apart from the local cluster: etcd,
# kube-apiserver (127.0.0.1, every request allowed, an audit log of writes),
# kube-controller-manager with its DaemonSet controller only, and kube-scheduler, which binds
# the proxy pods and so holds each node to its pod budget. There is no kubelet: the bench
# creates Node objects and their Leases and plays the kubelets.
#
#   scale-apiserver.sh up     start it; writes kubeconfigs to the state folder: admin (the
#                             bench), controller (hostlb-controller) and scheduler, so that the
#                             audit log tells their writes apart
#   scale-apiserver.sh down   stop exactly the processes `up` started, remove the state folder
set -euo pipefail

HOSTLB_E2E_STATE="${HOSTLB_BENCH_SCALE_STATE:-/dev/shm/hostlb-bench-scale}"
export HOSTLB_E2E_STATE
# shellcheck source=../cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../cluster/lib.sh"
# shellcheck source=../cluster/pki.sh
source "$(dirname "${BASH_SOURCE[0]}")/../cluster/pki.sh"

# Ports of their own, so that it runs beside the local cluster.
ETCD_PORT=22379
API_PORT=18443
API_URL="https://127.0.0.1:$API_PORT"
# Rate limits high enough that they are not what is measured (see docs/BENCHMARKS.md).
QPS=1000
BURST=2000

up() {
  mkdir -p "$STATE/etcd" "$PKI"
  chmod 700 "$STATE/etcd" "$PKI"
  ensure_ca
  new_key "$PKI/sa.key"
  sign apiserver "/CN=kube-apiserver" serverAuth "IP:127.0.0.1"
  sign admin "/O=system:masters/CN=hostlb-bench" clientAuth
  sign controller "/O=system:masters/CN=hostlb-controller" clientAuth
  sign scheduler "/O=system:masters/CN=hostlb-bench-scheduler" clientAuth
  kubeconfig "$STATE/admin.kubeconfig" admin
  kubeconfig "$STATE/controller.kubeconfig" controller
  kubeconfig "$STATE/scheduler.kubeconfig" scheduler
  cat >"$STATE/audit.yaml" <<YAML
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
YAML
  start_daemon etcd "$(readlink -f "$(command -v etcd)")" etcd --name hostlb-bench --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls http://127.0.0.1:22380 --initial-advertise-peer-urls http://127.0.0.1:22380 \
    --initial-cluster hostlb-bench=http://127.0.0.1:22380
  wait_for "etcd health" 60 curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"
  # No endpoint reconciler: it would refuse the loopback address as the API server's own.
  start_daemon kube-apiserver "$BIN/kube-apiserver" "$BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" --secure-port="$API_PORT" --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 --endpoint-reconciler-type=none \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" --authorization-mode=AlwaysAllow --allow-privileged=true \
    --disable-admission-plugins=ServiceAccount --service-cluster-ip-range=10.97.0.0/16 \
    --service-account-key-file="$PKI/sa.key" --service-account-signing-key-file="$PKI/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc \
    --max-requests-inflight=2000 --max-mutating-requests-inflight=1000 \
    --audit-policy-file="$STATE/audit.yaml" --audit-log-path="$STATE/audit.log" --audit-log-format=json \
    --profiling=false --v=1
  wait_for "kube-apiserver readiness" 120 curl -fsS --max-time 2 --cacert "$PKI/ca.crt" \
    --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$API_URL/readyz"
  start_daemon kube-controller-manager "$BIN/kube-controller-manager" "$BIN/kube-controller-manager" \
    --kubeconfig="$STATE/admin.kubeconfig" --controllers=daemonset --leader-elect=false \
    --port=0 --secure-port=0 --kube-api-qps="$QPS" --kube-api-burst="$BURST" \
    --profiling=false --v=1
  # No serving ports (the local cluster's scheduler has the default ones); the bench waits for
  # its pods to be bound, which tells that it runs.
  start_daemon kube-scheduler "$BIN/kube-scheduler" "$BIN/kube-scheduler" \
    --kubeconfig="$STATE/scheduler.kubeconfig" --leader-elect=false \
    --port=0 --secure-port=0 --kube-api-qps="$QPS" --kube-api-burst="$BURST" \
    --profiling=false --v=1
}

down() {
  for daemon in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_daemon "$daemon"; done
  rm -rf "$STATE"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
