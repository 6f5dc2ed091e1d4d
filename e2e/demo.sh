#!/usr/bin/env bash
# Brings up the local two-node cluster with hostlb installed, creates a LoadBalancer Service on
# port 80 for a small echo backend, shows its EXTERNAL-IP and sends a request through it from the
# client network namespace. The cluster stays up; `make down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."

bash e2e/cluster/cluster.sh up
# shellcheck disable=SC1091
source "${HOSTLB_E2E_STATE:-/var/lib/hostlb-e2e}/cluster.env"
export KUBECONFIG
k() { "$KUBECTL" "$@"; }

k apply -f - <<YAML
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
  namespace: demo
spec:
  replicas: 2
  selector:
    matchLabels: {app: echo}
  template:
    metadata:
      labels: {app: echo}
    spec:
      containers:
        - name: echo
          image: $ECHO_IMAGE
          imagePullPolicy: IfNotPresent
          env:
            - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
            - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
          ports:
            - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: demo
spec:
  type: LoadBalancer
  selector: {app: echo}
  ports:
    - name: http
      port: 80
      targetPort: 8080
YAML

echo "waiting for an EXTERNAL-IP on both nodes..."
ingress() { k -n demo get service echo -o jsonpath='{range .status.loadBalancer.ingress[*]}{.ip}{"\n"}{end}'; }
for _ in $(seq 1 120); do
  [[ $(ingress | grep -c .) -ge 2 ]] && break
  sleep 1
done
k -n demo get service echo
ip=$(ingress | head -n 1)
[[ -n "$ip" ]] || { echo "no EXTERNAL-IP after 120 s" >&2; k -n hostlb-system get pods -o wide; exit 1; }

# kube-proxy programs a newly published address within a second or two: retry quietly until then.
echo
echo "\$ ip netns exec $CLIENT_NETNS curl http://$ip/"
for _ in $(seq 1 30); do
  if ip netns exec "$CLIENT_NETNS" curl -s --max-time 3 "http://$ip/"; then
    echo
    echo "The cluster stays up: KUBECONFIG=$KUBECONFIG $KUBECTL get svc -A; 'make down' removes it."
    exit 0
  fi
  sleep 1
done
ip netns exec "$CLIENT_NETNS" curl -sS --max-time 3 "http://$ip/" || true
echo "no answer from http://$ip/ after 30 s" >&2
exit 1
