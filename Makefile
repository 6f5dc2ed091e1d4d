# The two commands of the README: `make demo` and `make test`. The rest are their parts.
.PHONY: demo test bench up down status logs images unit release

demo:
	bash e2e/demo.sh

test:
	bash e2e/test-all.sh

# Measurements beside baselines; not part of `make test` (see docs/BENCHMARKS.md).
bench:
	bash e2e/bench/bench.sh

unit:
	cargo test --workspace --exclude hostlb-e2e

up:
	bash e2e/cluster/cluster.sh up

down:
	bash e2e/cluster/cluster.sh down

status:
	bash e2e/cluster/cluster.sh status

logs:
	bash e2e/cluster/cluster.sh logs

images:
	bash images/build.sh

# Versioned image archives, the rendered manifest, the packaged chart and checksums in
# _out/release/VERSION (see images/release.sh).
release:
	bash images/release.sh $(VERSION)
