#!/usr/bin/env bash
# Builds every image hostlb and its end-to-end cluster use, as OCI archives in _out/images/:
#   controller  localhost/hostlb/controller:dev  the controller
#   lb          localhost/hostlb/lb:dev          the proxy pods' binary
#   e2e-echo    localhost/hostlb/e2e-echo:dev    the test backend
#   pause       localhost/hostlb/pause:dev       the pod sandbox holder
# The binaries are static (glibc linked in), so each image is that one file and nothing else.
set -euo pipefail

cd "$(dirname "$0")/.."
REGISTRY="${HOSTLB_IMAGE_PREFIX:-localhost/hostlb}"
TAG="${HOSTLB_IMAGE_TAG:-dev}"
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
