#!/usr/bin/env bash
# Reproduces the numbers in BENCHMARKS.md: runs every benchmark of this
# package COUNT times (default 6) and compares the variants with benchstat.
#
#   bench/run.sh                      # results in a temporary directory
#   OUT=/tmp/b COUNT=10 bench/run.sh
#   PROFILE=1 bench/run.sh            # also the allocation profiles of ours
#
# The COUNT rounds are separate `go test -count=1` runs, so that the
# variants interleave in time and a burst of load on the machine does not
# land on one variant's samples only. benchstat is installed into $OUT/bin
# from the module proxy, outside this module (it is not a dependency).
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-6}
OUT=${OUT:-$(mktemp -d)}
BENCHSTAT_VERSION=v0.0.0-20260908200009-22c9c6c9d4da # golang.org/x/perf
mkdir -p "$OUT/bin"

if [ ! -x "$OUT/bin/benchstat" ]; then
	(cd "$OUT" && GOFLAGS= GOBIN="$OUT/bin" go install "golang.org/x/perf/cmd/benchstat@$BENCHSTAT_VERSION")
fi
benchstat="$OUT/bin/benchstat"

{
	echo "nproc: $(nproc)"
	echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
	go version
	echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown) (the work tree may differ)"
	echo "controller.go sha256: $(sha256sum controller.go | cut -d' ' -f1)"
	echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/machine.txt"

# The benchmarks (log level info, output discarded; see bench_test.go).
: >"$OUT/bench.txt"
for i in $(seq "$COUNT"); do
	echo "== round $i of $COUNT" >&2
	go test -count=1 -run='^$' -bench=. -benchmem ./bench/ | tee -a "$OUT/bench.txt"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"
if [ "$(sha256sum controller.go | cut -d' ' -f1)" != "$(sed -n 's/^controller.go sha256: //p' "$OUT/machine.txt")" ]; then
	echo "WARNING: controller.go changed during the run; the rounds mix versions: run again" | tee -a "$OUT/machine.txt" >&2
fi

# Every variant side by side; the first column (bare) is the baseline of
# the deltas.
"$benchstat" -col '/impl@(bare upstream ours none)' "$OUT/bench.txt" | tee "$OUT/benchstat-all.txt"

# upstream (baseline) vs ours.
"$benchstat" -filter '/impl:(upstream OR ours)' -col '/impl@(upstream ours)' "$OUT/bench.txt" | tee "$OUT/benchstat-upstream-vs-ours.txt"

# Idle CPU: no waiter (baseline) vs 1000 upstream / ours waiters.
"$benchstat" -filter '.name:IdleWaiters .unit:cpu-ns/s-idle' -col '/impl@(none upstream ours)' "$OUT/bench.txt" | tee "$OUT/benchstat-idle.txt"

if [ -n "${PROFILE:-}" ]; then
	go test -c -o "$OUT/bench.test" ./bench/
	for b in 'Lifecycle/impl=ours' 'NewController/impl=ours' 'FanOut/impl=ours'; do
		f="$OUT/$(echo "$b" | tr '/=' '__').mem"
		(cd bench && "$OUT/bench.test" -test.run='^$' -test.bench="^Benchmark$b\$" -test.benchmem \
			-test.benchtime=200x -test.memprofile="$f" -test.memprofilerate=1 >/dev/null)
		for idx in alloc_space alloc_objects; do
			echo "== $b: $idx by line of the root package (the fake's own allocations left out)"
			go tool pprof -top -cum -lines -sample_index="$idx" -focus='seed-e85c93d5/plugin\.' -ignore=plugintest \
				-nodecount=400 "$OUT/bench.test" "$f" 2>/dev/null | grep -E '^ +flat|controller.go' | sed -n 1,30p
		done
	done | tee "$OUT/profiles.txt"
fi

echo "results in $OUT"
