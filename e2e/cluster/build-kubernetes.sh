#!/usr/bin/env bash
# Builds the Kubernetes server binaries (and a matching kubectl) from Debian's source package,
# caching them outside the checkout, keyed by version, so later runs take seconds.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.20.2}"
CACHE_DIR="${HOSTLB_CACHE_DIR:-/var/cache/hostlb-e2e}"
BIN_DIR="$CACHE_DIR/kubernetes-$K8S_VERSION/bin"
WANTED=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

all_built() {
  local b
  for b in "${WANTED[@]}"; do [[ -x "$BIN_DIR/$b" ]] || return 1; done
}

if all_built; then
  echo "kubernetes $K8S_VERSION binaries cached in $BIN_DIR"
  exit 0
fi

# Debian ships the sources list in deb822 form; a deb-src twin of it (same mirrors, same key)
# lets apt fetch the source package without naming any host here.
enable_deb_src() {
  local src=/etc/apt/sources.list.d/debian.sources
  local twin=/etc/apt/sources.list.d/hostlb-deb-src.sources
  [[ -f "$twin" ]] && return 0
  [[ -f "$src" ]] || { echo "no $src to derive a deb-src entry from" >&2; exit 1; }
  sed 's/^Types: deb$/Types: deb-src/' "$src" > "$twin"
  apt-get update -qq
}

# The first upstream tarball in the current directory, if there is one.
first_orig() {
  local f
  for f in kubernetes_*.orig.tar.*; do
    if [[ -e $f ]]; then echo "$f"; return 0; fi
  done
  return 1
}

WORK="$CACHE_DIR/kubernetes-$K8S_VERSION/work"
mkdir -p "$WORK" "$BIN_DIR"
cd "$WORK"

if [[ ! -d src ]]; then
  enable_deb_src
  orig=$(first_orig || true)
  if [[ -z "$orig" ]]; then
    apt-get source --download-only "kubernetes=${K8S_VERSION}*" || apt-get source --download-only kubernetes
    orig=$(first_orig) || { echo "apt-get source left no kubernetes_*.orig.tar.* in $WORK" >&2; exit 1; }
  fi
  rm -rf src.partial && mkdir src.partial
  tar -xf "$orig" -C src.partial --strip-components=1
  # The vendored reflect2 v1.0.1 faults at run time under Go >= 1.18; Debian's v1.0.2 does not.
  rm -rf src.partial/vendor/github.com/modern-go/reflect2
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 src.partial/vendor/github.com/modern-go/reflect2
  rm -f src.partial/vendor/github.com/modern-go/reflect2/go.mod
  mv src.partial src
fi

cd src
export GOPATH="$WORK/gopath" GOCACHE="$WORK/gocache" GOFLAGS="" GO111MODULE=auto
mkdir -p "$GOPATH" "$GOCACHE"
if [[ ! -f .generated-files-done ]]; then
  make generated_files
  touch .generated-files-done
fi
make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy cmd/kubectl"
for b in "${WANTED[@]}"; do install -m 0755 "_output/bin/$b" "$BIN_DIR/$b"; done
echo "kubernetes $K8S_VERSION binaries built into $BIN_DIR"
