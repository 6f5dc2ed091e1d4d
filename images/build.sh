#!/usr/bin/env bash
# Builds every image hostlb and its end-to-end cluster use, as OCI archives in _out/images/:
#   controller  localhost/hostlb/controller:TAG  the controller
#   lb          localhost/hostlb/lb:TAG          the proxy pods' binary
#   e2e-echo    localhost/hostlb/e2e-echo:TAG    the test backend
#   pause       localhost/hostlb/pause:TAG       the pod sandbox holder
# The binaries are static (glibc linked in), so each image is that one file and nothing else.
#
# HOSTLB_VERSION, the version the binaries report, defaults to the chart's appVersion, and TAG
# (HOSTLB_IMAGE_TAG) to HOSTLB_VERSION: the images the chart and the kustomize base name by
# default. HOSTLB_REVISION, the commit they report, defaults to what images/revision.sh says.
set -euo pipefail

cd "$(dirname "$0")/.."
HOSTLB_VERSION="${HOSTLB_VERSION:-$(sed -nE 's/^appVersion: *"?([^"]*)"? *$/\1/p' charts/hostlb/Chart.yaml)}"
[[ -n $HOSTLB_VERSION ]] || { echo "$0: no appVersion in charts/hostlb/Chart.yaml" >&2; exit 2; }
HOSTLB_REVISION="${HOSTLB_REVISION:-$(bash images/revision.sh)}"
# Read by hostlb-contract's build script.
export HOSTLB_VERSION HOSTLB_REVISION
REGISTRY="${HOSTLB_IMAGE_PREFIX:-localhost/hostlb}"
TAG="${HOSTLB_IMAGE_TAG:-$HOSTLB_VERSION}"
OUT="${HOSTLB_IMAGE_DIR:-$PWD/_out/images}"
TARGET=x86_64-unknown-linux-gnu

# The target is named explicitly so that build scripts and proc-macros, which cannot be static,
# are built for the host without the flag.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$TARGET" \
  -p hostlb-controller -p hostlb-lb -p hostlb-testbins
bin="${CARGO_TARGET_DIR:-target}/$TARGET/release"
for b in hostlb-controller hostlb-lb echo-server pause; do
  if readelf --program-headers "$bin/$b" | grep -q 'program interpreter'; then
    echo "$bin/$b needs a dynamic loader; an image with nothing else in it could not run it" >&2
    exit 1
  fi
done

pack() { bash images/oci-archive.sh "$REGISTRY/$1:$TAG" "$bin/$2" "$OUT/$1.tar" "${3:-}"; }
pack controller hostlb-controller 65534
pack lb hostlb-lb
pack e2e-echo echo-server 65534
pack pause pause 65534
