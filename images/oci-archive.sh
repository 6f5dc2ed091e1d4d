#!/usr/bin/env bash
# Packs one static binary into an OCI image-layout archive: a single uncompressed layer holding
# the binary at the root, run as its entrypoint. No container engine is needed to build it, and
# `ctr images import` loads it. The archive is byte-for-byte reproducible from the binary.
#
#   oci-archive.sh IMAGE_NAME BINARY OUTPUT.tar [USER]
#
# HOSTLB_IMAGE_ANNOTATIONS, a JSON object of strings, is added to the image manifest's
# annotations (the release sets org.opencontainers.image.version, .revision and .source).
set -euo pipefail

if [[ $# -lt 3 || $# -gt 4 ]]; then
  echo "usage: $0 IMAGE_NAME BINARY OUTPUT.tar [USER]" >&2
  exit 2
fi
name=$1 binary=$2 output=$3 user=${4:-}
[[ -f "$binary" ]] || { echo "$0: no binary at $binary" >&2; exit 2; }
command -v jq >/dev/null || { echo "$0: jq is needed" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs" "$work/layout/blobs/sha256"
entry="/$(basename "$binary")"
install -m 0755 "$binary" "$work/rootfs$entry"

# Stores a file as a blob and prints its digest and size.
add_blob() {
  local digest
  digest=$(sha256sum "$1" | cut -d' ' -f1)
  cp "$1" "$work/layout/blobs/sha256/$digest"
  echo "sha256:$digest $(stat -c %s "$1")"
}

tar --create --file "$work/layer.tar" --directory "$work/rootfs" \
  --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime .
read -r layer_digest layer_size < <(add_blob "$work/layer.tar")

jq -n --arg entry "$entry" --arg user "$user" --arg diff "$layer_digest" '{
  architecture: "amd64",
  os: "linux",
  config: ({Entrypoint: [$entry]} + (if $user == "" then {} else {User: $user} end)),
  rootfs: {type: "layers", diff_ids: [$diff]}
}' > "$work/config.json"
read -r config_digest config_size < <(add_blob "$work/config.json")

jq -n --arg cd "$config_digest" --argjson cs "$config_size" --arg ld "$layer_digest" --argjson ls "$layer_size" \
  --argjson annotations "${HOSTLB_IMAGE_ANNOTATIONS:-{\}}" '{
  schemaVersion: 2,
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs},
  layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $ld, size: $ls}]
} + (if $annotations == {} then {} else {annotations: $annotations} end)' > "$work/manifest.json"
read -r manifest_digest manifest_size < <(add_blob "$work/manifest.json")

jq -n --arg md "$manifest_digest" --argjson ms "$manifest_size" --arg name "$name" '{
  schemaVersion: 2,
  manifests: [{
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    digest: $md,
    size: $ms,
    platform: {architecture: "amd64", os: "linux"},
    annotations: {"io.containerd.image.name": $name, "org.opencontainers.image.ref.name": $name}
  }]
}' > "$work/layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/layout/oci-layout"

mkdir -p "$(dirname "$output")"
tar --create --file "$output.partial" --directory "$work/layout" \
  --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner .
mv "$output.partial" "$output"
echo "$name: $output ($layer_size byte layer, manifest $manifest_digest)"
