#!/usr/bin/env bash
# Builds the release e2e/upgrade/previous-release names for DATAPLANE ("DATAPLANE VERSION COMMIT")
# from its commit, for the upgrade tests: its images as archives in OUT/images, named
# localhost/hostlb/*:VERSION, and the install its own harness applied, rendered to
# OUT/install.yaml. Prints VERSION.
#
#   previous.sh OUT DATAPLANE
#
# The commit must be in this clone (a clone may carry no tags, so the file names it by hash).
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: previous.sh OUT DATAPLANE" >&2; exit 2; }
cd "$(dirname "$0")/../.."
repo=$PWD
mkdir -p "$1"
out=$(cd "$1" && pwd)
read -r _ version commit < <(grep "^$2 " e2e/upgrade/previous-release)
[[ -n ${commit:-} ]] || { echo "e2e/upgrade/previous-release names no release for $2" >&2; exit 1; }
if ! git cat-file -e "$commit^{commit}" 2>/dev/null && [[ $(git rev-parse --is-shallow-repository) == true ]]; then
  # A shallow clone: the rest of the history from where it came.
  timeout 300 git fetch --quiet --unshallow >&2 || true
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
  echo "commit $commit of $version is not in this clone, and fetching it failed" >&2
  exit 1
fi
source="$out/source-$version"
rm -rf "$source"
mkdir -p "$source"
git archive "$commit" | tar -x -C "$source"
# A build cache of its own: two trees of one workspace name their units alike, so a shared one
# would hand one tree's binaries to the other. It starts as a copy of this tree's release
# builds without hostlb's own units: the dependencies are the same versions, built once.
target="$out/target"
if [[ ! -d $target ]]; then
  current=$(realpath -m "${CARGO_TARGET_DIR:-$repo/target}")
  rm -rf "$target.partial"
  mkdir -p "$target.partial/x86_64-unknown-linux-gnu"
  for dir in release x86_64-unknown-linux-gnu/release; do
    if [[ -d $current/$dir ]]; then cp -a "$current/$dir" "$target.partial/$(dirname "$dir")/"; fi
  done
  find "$target.partial" -depth \( -name 'hostlb*' -o -name 'libhostlb*' -o -name 'echo-server*' \
    -o -name 'echo_server*' -o -name pause -o -name 'pause-*' \) -exec rm -rf {} +
  mv "$target.partial" "$target"
fi
# 0.1.0's build reads its binaries from ./target whatever CARGO_TARGET_DIR says. The extracted
# tree is no checkout of its own, so its build is told the version and commit to report.
ln -s "$target" "$source/target"
(cd "$source" && env -u CARGO_TARGET_DIR HOSTLB_IMAGE_TAG="$version" HOSTLB_IMAGE_DIR="$out/images" \
  HOSTLB_VERSION="$version" HOSTLB_REVISION="$commit" bash images/build.sh >&2)
# The release named its images by the tag dev, which is this tree's: in its base, or in its
# harness's overlay.
for kustomization in "$source/manifests/kustomization.yaml" "$source/e2e/cluster/install/kustomization.yaml"; do
  if [[ -f $kustomization ]]; then sed -i "s/newTag: dev\$/newTag: $version/; s/:dev\$/:$version/" "$kustomization"; fi
done
tools=$(bash e2e/chart/tools.sh)
# As that release's harness applied it: Kubernetes 1.20 serves PodDisruptionBudgets only as
# policy/v1beta1.
"$tools/kubectl" kustomize "$source/e2e/cluster/install/" |
  sed 's#^apiVersion: policy/v1$#apiVersion: policy/v1beta1#' >"$out/install.yaml"
grep -q "localhost/hostlb/controller:$version" "$out/install.yaml" ||
  { echo "the rendered install of $version does not name its controller image" >&2; exit 1; }
echo "$version"
