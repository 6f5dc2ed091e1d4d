#!/usr/bin/env bash
# Prints the commit this tree is, as the binaries report it (HOSTLB_REVISION): its hash, with
# -dirty when tracked files differ from it; unknown when the tree is not a git checkout of its
# own (a tarball, or one extracted inside another checkout, whose commit is not this tree's).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! top=$(git rev-parse --show-toplevel 2>/dev/null) || [[ ! $top -ef . ]]; then
  echo unknown
elif git diff --quiet HEAD --; then
  git rev-parse HEAD
else
  echo "$(git rev-parse HEAD)-dirty"
fi
