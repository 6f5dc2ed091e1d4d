#!/usr/bin/env bash
# `make bench`: measures hostlb beside a baseline taken in the same run, prints a table and
# writes target/bench/results.json (flat keys, numbers only) and target/bench/table.md.
# Not part of `make test`: the figures depend on the machine, so nothing here passes or fails
# on a number. Method and latest figures: docs/BENCHMARKS.md.
#
#   HOSTLB_BENCH_PARTS   which parts to run (default "proxy cluster scale"):
#     proxy    network namespaces only: data path, hostlb-lb init time, image size, memory
#     cluster  the local two-node cluster (cluster.sh up ... down): 30 Services at once, the
#              memory of a proxy pod on its node, and the figures of the tests that roll proxies,
#              upgrade from the previous release and stop a node under traffic; then the node
#              agents: a new Service, a port change, agents restarted under traffic, 1,000 Services
#     scale    its own control plane on loopback with simulated kubelets: 100, 300, 1000 Services
set -euo pipefail

cd "$(dirname "$0")/../.."
HERE=e2e/bench
OUT=target/bench
PARTS="${HOSTLB_BENCH_PARTS:-proxy cluster scale}"
TARGET=x86_64-unknown-linux-gnu
# Every figure comes from this run: an earlier run's parts go first, and a part that fails
# writes no key. goals.tsv lists every key a full run writes; the run names those missing.
rm -rf "$OUT/parts" "$OUT/lags.tsv" "$OUT/ready.tsv" "$OUT/figures.jsonl"
mkdir -p "$OUT/parts"
failed=()

[[ $(id -u) == 0 ]] || { echo "make bench must run as root (network namespaces)" >&2; exit 1; }

# iperf3 is the data path's load, conntrack flushes its tables between runs; gnuplot draws the plots.
deps=(iperf3 conntrack gnuplot-nox jq iptables nftables iproute2)
missing=()
for p in "${deps[@]}"; do
  dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null ||
    { apt-get update -qq </dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null; }
fi

# The images' static binaries are what runs in a cluster, so they are what is measured.
bash images/build.sh
bin="$PWD/target/$TARGET/release"

if [[ " $PARTS " == *" proxy "* ]]; then
  jq -n --argjson bytes "$(stat -c %s _out/images/lb.tar)" '{lb_image_bytes: $bytes}' >"$OUT/parts/image.json"
  HOSTLB_BENCH_OUT="$PWD/$OUT/parts/proxy.json" HOSTLB_LB_BINARY="$bin/hostlb-lb" \
    timeout 20m cargo bench --locked -p hostlb-lb --bench proxy || failed+=(proxy)
fi

if [[ " $PARTS " == *" cluster "* ]]; then
  cargo bench --locked -p hostlb-e2e --bench controller --bench agent --no-run
  # The cluster's state folder is fixed, so runs on one machine take turns: the lock is held
  # from up to down (not inherited by the cluster's daemons), and down runs whatever the bench did.
  exec 8>"${HOSTLB_CLUSTER_LOCK:-/run/hostlb-cluster.lock}"
  flock 8
  status=0
  figures="$OUT/figures.jsonl"
  rm -f "$figures"
  # The tests' own figures, from the tests that assert on them: a proxy roll, a killed proxy
  # pod and a stopped node under traffic, and the upgrade from the previous release.
  { bash e2e/cluster/cluster.sh up &&
    HOSTLB_BENCH_OUT="$PWD/$OUT/parts/controller.json" timeout 15m \
      cargo bench --locked -p hostlb-e2e --bench controller &&
    HOSTLB_FIGURES="$PWD/$figures" timeout 15m cargo test --locked -p hostlb-e2e --test chaos -- \
      --test-threads=1 --nocapture a_proxy_roll a_killed_proxy_pod a_restarted_node &&
    HOSTLB_FIGURES="$PWD/$figures" timeout 25m cargo test --locked -p hostlb-e2e --test upgrade -- \
      --test-threads=1 --nocapture &&
    HOSTLB_FIGURES="$PWD/$figures" timeout 15m cargo test --locked -p hostlb-e2e --test agent -- \
      --test-threads=1 --nocapture a_new_service a_port_change an_agent_restart &&
    HOSTLB_BENCH_OUT="$PWD/$OUT/parts/agent.json" timeout 20m cargo bench --locked -p hostlb-e2e --bench agent &&
    jq -s 'add' "$figures" >"$OUT/parts/tests.json"
  } 8>&- || status=1
  bash e2e/cluster/cluster.sh down 8>&- || status=1
  flock -u 8
  exec 8>&-
  [[ $status == 0 ]] || { failed+=(cluster); rm -f "$OUT/parts/controller.json" "$OUT/parts/tests.json" "$OUT/parts/agent.json"; }
fi

if [[ " $PARTS " == *" scale "* ]]; then
  cargo bench --locked -p hostlb-e2e --bench scale --no-run
  # The state folder holds etcd's data: in memory by default, so that a slow disk's fsyncs
  # cannot set the pace of a run; HOSTLB_BENCH_SCALE_STATE=$PWD/target/bench/scale-state puts
  # it on disk, as a cluster's etcd is.
  scale_state="${HOSTLB_BENCH_SCALE_STATE:-/dev/shm/hostlb-bench-scale}"
  trap 'HOSTLB_BENCH_SCALE_STATE="$scale_state" bash "$HERE/scale-apiserver.sh" down' EXIT
  HOSTLB_BENCH_SCALE_STATE="$scale_state" bash "$HERE/scale-apiserver.sh" up
  HOSTLB_BENCH_OUT="$PWD/$OUT/parts/scale.json" HOSTLB_BENCH_LAGS="$PWD/$OUT/lags.tsv" HOSTLB_BENCH_STATE="$scale_state" \
    HOSTLB_CONTROLLER_BINARY="$bin/hostlb-controller" timeout 40m cargo bench --locked -p hostlb-e2e --bench scale ||
    { failed+=(scale); rm -f "$OUT/parts/scale.json"; }
  # Kept for reading what the controller did; the state folder goes with the API server.
  cp "$scale_state/controller.log" "$OUT/scale-controller.log" 2>/dev/null || true
  cp "$scale_state/controller-restart.log" "$OUT/scale-controller-restart.log" 2>/dev/null || true
  HOSTLB_BENCH_SCALE_STATE="$scale_state" bash "$HERE/scale-apiserver.sh" down
  trap - EXIT
fi

shopt -s nullglob
parts=("$OUT"/parts/*.json)
jq -n '[inputs] | add // {}' "${parts[@]}" >"$OUT/results.json"

if [[ -s $OUT/lags.tsv ]]; then
  jq -r '. as $r | (100, 300, 1000) | "\(.)\t\($r["ctl_ready_s_\(.)"])\t\($r["ctl_pods_ready_s_\(.)"])"' \
    "$OUT/results.json" >"$OUT/ready.tsv"
  gnuplot -e "dir='$OUT'" "$HERE/plot.gp"
fi

# One row per line of goals.tsv: goal, measured (the median where the figure has a spread),
# min and max, baseline and, for raw figures, measured / baseline.
rows() { grep -v '^#' "$HERE/goals.tsv" | grep -v '^$'; }
jq -r --rawfile goals <(rows) '
  . as $r
  | def show: if . == null then "-" elif (. | floor) == . then tostring else (. * 1000 | round / 1000 | tostring) end;
    def met($goal; $value):
      if $goal == "-" or $value == null then "-"
      else ($goal | split(" ")) as [$op, $n] | ($n | tonumber) as $n
        | if ($op == "<=" and $value <= $n) or ($op == ">=" and $value >= $n) then "yes" else "no" end
      end;
  "| key | goal | measured | min - max | baseline | ratio | goal met |",
  "|---|---|---|---|---|---|---|",
  ($goals | split("\n")[] | select(length > 0) | split("\t")
   | . as [$key, $goal, $spread, $base, $what]
   | $r[$key] as $value | (if $base == "-" then null else $r[$base] end) as $b
   | "| `\($key)` (\($what)) | \($goal) | \($value | show) | "
     + (if $spread == "-" then "-" else "\($r[$key + "_min"] | show) - \($r[$key + "_max"] | show)" end) + " | "
     + (if $b == null then "-" else "\($b | show) (`\($base)`)" end) + " | "
     + (if $b == null or $b == 0 or $value == null or ($key | contains("_ratio")) then "-" else ($value / $b | show) end)
     + " | \(met($goal; $value)) |")
' "$OUT/results.json" | tee "$OUT/table.md"
echo "wrote $OUT/results.json and $OUT/table.md"

# Every key goals.tsv names (with _min and _max where it has a spread) that this run did not write.
mapfile -t missing < <(rows | awk -F'\t' '{ print $1; if ($3 != "-") { print $1 "_min"; print $1 "_max" } }' |
  while read -r key; do jq -e --arg key "$key" 'has($key)' "$OUT/results.json" >/dev/null || echo "$key"; done)
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "not measured in this run (part not selected, or it failed): ${missing[*]}" >&2
fi
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "failed parts: ${failed[*]}" >&2
  exit 1
fi
if [[ ${#missing[@]} -gt 0 && $PARTS == "proxy cluster scale" ]]; then
  echo "a full run left keys unwritten" >&2
  exit 1
fi
