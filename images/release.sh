#!/usr/bin/env bash
# `make release VERSION=x.y.z`: everything a release publishes, in _out/release/VERSION/:
#   controller.tar, lb.tar        OCI image archives localhost/hostlb/{controller,lb}:VERSION,
#                                 annotated with the version, the commit and the source
#   hostlb.yaml                   the kustomize base rendered for those images, one manifest to
#                                 `kubectl apply -f` (Kubernetes 1.20 and later; no
#                                 PodDisruptionBudget, see docs/install.md)
#   hostlb-VERSION.tgz            the Helm chart, versioned
#   kubectl-hostlb_VERSION_linux_amd64.tar.gz, krew-hostlb.yaml
#                                 the kubectl plugin and its krew manifest (HOSTLB_RELEASE_URL:
#                                 where the files will be published)
#   SHA256SUMS                    of all of the above
# Every binary reports VERSION and the commit (images/revision.sh) with --version.
# amd64 only; it says why arm64 cannot be built when the toolchain for it is missing.
set -euo pipefail

cd "$(dirname "$0")/.."
VERSION=${1:-}
SEMVER='^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$'
[[ $VERSION =~ $SEMVER ]] || { echo "usage: make release VERSION=x.y.z (SemVer), not '$VERSION'" >&2; exit 2; }
OUT="$PWD/_out/release/$VERSION"
REVISION=$(bash images/revision.sh)
# The version and commit every binary reports (hostlb-contract's build script reads them).
export HOSTLB_VERSION="$VERSION" HOSTLB_REVISION="$REVISION"
SOURCE=$(git remote get-url origin 2>/dev/null || echo "file://$PWD")
# Where the release's files will be downloadable from, for the krew manifest.
RELEASE_URL=${HOSTLB_RELEASE_URL:-https://hostlb.invalid/releases/$VERSION}
tools=$(bash e2e/chart/tools.sh)

rm -rf "$OUT"
mkdir -p "$OUT"
# Inside the checkout: kustomize takes only relative paths to bases.
work=$(mktemp -d "$PWD/_out/release/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

HOSTLB_IMAGE_TAG="$VERSION" HOSTLB_IMAGE_DIR="$work/images" \
  HOSTLB_IMAGE_ANNOTATIONS=$(jq -n --arg v "$VERSION" --arg r "$REVISION" --arg s "$SOURCE" '{
    "org.opencontainers.image.version": $v,
    "org.opencontainers.image.revision": $r,
    "org.opencontainers.image.source": $s,
    "org.opencontainers.image.licenses": "Apache-2.0"
  }') bash images/build.sh
cp "$work/images/controller.tar" "$work/images/lb.tar" "$OUT/"

cat >"$work/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../../manifests
images:
  - name: localhost/hostlb/controller
    newTag: "$VERSION"
  - name: localhost/hostlb/lb
    newTag: "$VERSION"
YAML
{
  echo "# hostlb $VERSION ($REVISION): kubectl apply -f hostlb.yaml"
  "$tools/kubectl" kustomize "$work"
} >"$OUT/hostlb.yaml"

# The kubectl plugin, static like the images, and its krew manifest.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target x86_64-unknown-linux-gnu -p kubectl-hostlb
plugin="kubectl-hostlb_${VERSION}_linux_amd64.tar.gz"
mkdir -p "$work/plugin"
cp "${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/kubectl-hostlb" LICENSE "$work/plugin/"
tar --create --gzip --file "$OUT/$plugin" --directory "$work/plugin" \
  --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner kubectl-hostlb LICENSE
plugin_sha=$(sha256sum "$OUT/$plugin" | cut -d' ' -f1)
sed -e "s|@VERSION@|$VERSION|g" -e "s|@SHA256@|$plugin_sha|" -e "s|@RELEASE_URL@|$RELEASE_URL|g" \
  kubectl-hostlb/krew.yaml >"$OUT/krew-hostlb.yaml"

"$tools/helm" lint --strict charts/hostlb >/dev/null
"$tools/helm" package charts/hostlb --version "$VERSION" --app-version "$VERSION" --destination "$OUT" >/dev/null

(cd "$OUT" && sha256sum controller.tar lb.tar hostlb.yaml "hostlb-$VERSION.tgz" "$plugin" krew-hostlb.yaml >SHA256SUMS)

missing=()
rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu ||
  missing+=("Rust's aarch64-unknown-linux-gnu standard library (rustup target add aarch64-unknown-linux-gnu)")
command -v aarch64-linux-gnu-gcc >/dev/null ||
  missing+=("a cross linker (Debian's gcc-aarch64-linux-gnu)")
[[ -f /usr/aarch64-linux-gnu/lib/libc.a ]] ||
  missing+=("a static arm64 glibc (Debian's libc6-dev-arm64-cross)")
if [[ ${#missing[@]} -gt 0 ]]; then
  printf 'no arm64 images; missing here:\n' >&2
  printf '  %s\n' "${missing[@]}" >&2
fi
ls -l "$OUT"
