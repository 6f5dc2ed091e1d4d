# Certificates (all X.509 v3: rustls refuses v1), the service-account key pair and kubeconfigs.
# shellcheck shell=bash

# new_key FILE
new_key() { [[ -s $1 ]] || openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null; }

ensure_ca() {
  [[ -s $PKI/ca.crt && -s $PKI/ca.key ]] && return 0
  new_key "$PKI/ca.key"
  cat >"$PKI/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = hostlb-e2e-ca
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,digitalSignature,keyEncipherment,keyCertSign,cRLSign
subjectKeyIdentifier = hash
EOF
  openssl req -x509 -new -key "$PKI/ca.key" -config "$PKI/ca.cnf" -extensions v3_ca \
    -days 3650 -sha256 -out "$PKI/ca.crt"
}

# sign NAME SUBJECT USAGE [SANS]: a key and a certificate signed by our CA with an extensions
# file (so v3); USAGE is clientAuth, serverAuth or both (comma-separated).
sign() {
  local name=$1 subject=$2 usage=$3 sans=${4:-}
  [[ -s $PKI/$name.crt && -s $PKI/$name.key ]] && return 0
  new_key "$PKI/$name.key"
  {
    echo "basicConstraints = critical,CA:FALSE"
    echo "keyUsage = critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage = $usage"
    echo "subjectKeyIdentifier = hash"
    echo "authorityKeyIdentifier = keyid,issuer"
    if [[ -n $sans ]]; then echo "subjectAltName = $sans"; fi
  } >"$PKI/$name.ext"
  openssl req -new -key "$PKI/$name.key" -subj "$subject" -out "$PKI/$name.csr"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -sha256 -extfile "$PKI/$name.ext" \
    -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr"
}

# kubeconfig FILE CERT_NAME: a kubeconfig for the API server's node-1 address with that client cert.
kubeconfig() {
  local file=$1 cert=$2
  cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: hostlb-e2e
  cluster:
    server: $API_URL
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $cert
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$cert.crt")
    client-key-data: $(base64 -w0 "$PKI/$cert.key")
contexts:
- name: hostlb-e2e
  context:
    cluster: hostlb-e2e
    user: $cert
current-context: hostlb-e2e
EOF
  mv "$file.tmp" "$file"
}

ensure_pki() {
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  ensure_ca
  if [[ ! -s $PKI/sa.key || ! -s $PKI/sa.pub ]]; then
    new_key "$PKI/sa.key"
    openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
  fi
  sign apiserver "/CN=kube-apiserver" "serverAuth" \
    "IP:$API_IP,IP:10.96.0.1,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
  sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  sign admin "/O=system:masters/CN=hostlb-e2e-admin" clientAuth
  sign kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
  sign kube-scheduler "/CN=system:kube-scheduler" clientAuth
  sign kube-proxy "/CN=system:kube-proxy" clientAuth
  sign "$NODE1_NAME" "/O=system:nodes/CN=system:node:$NODE1_NAME" clientAuth
  sign "$NODE2_NAME" "/O=system:nodes/CN=system:node:$NODE2_NAME" clientAuth

  kubeconfig "$ADMIN_KUBECONFIG" admin
  kubeconfig "$STATE/kube-controller-manager.kubeconfig" kube-controller-manager
  kubeconfig "$STATE/kube-scheduler.kubeconfig" kube-scheduler
  kubeconfig "$STATE/kube-proxy.kubeconfig" kube-proxy
  kubeconfig "$STATE/node1/kubelet.kubeconfig" "$NODE1_NAME"
  kubeconfig "$STATE/node2/kubelet.kubeconfig" "$NODE2_NAME"
}
