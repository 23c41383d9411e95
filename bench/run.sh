#!/usr/bin/env bash
# Reproduces the numbers in BENCHMARKS.md: runs every benchmark of this
# package COUNT times (default 6) at each of two log levels, LEVELS
# (default "info warn"), and compares the variants with benchstat, level by
# level, and each variant across levels.
#
#   bench/run.sh                      # results in a temporary directory
#   OUT=/tmp/b COUNT=10 bench/run.sh
#   PROFILE=1 bench/run.sh            # also the allocation profiles of ours
#   BENCHTIME=3x COUNT=2 bench/run.sh # a smoke test of this script only
#
# info is a daemon's default level: ours writes three info lines per task
# lifecycle (plugin pulled, enabled, removed), upstream none. At warn
# neither writes a line, so the difference is the controller logic alone.
# BenchmarkInfoLine measures one such line with no controller around it;
# overhead.txt sets three of them against target (a)'s limit.
# BENCH_LOG_LEVEL (see bench_test.go) selects the level of each run.
#
# Each round is one separate `go test -count=1` run per level, and the
# order of the levels alternates from round to round (info warn, warn info,
# ...), so that levels, variants and rounds interleave in time and a burst
# of load on the machine does not land on one level's or one variant's
# samples only. benchstat is installed into $OUT/bin from the module proxy,
# outside this module (it is not a dependency).
#
# Output, in $OUT: bench-<level>.txt (raw, per level), bench.txt (all runs,
# each preceded by a "loglevel: <level>" configuration line, for the
# cross-level comparisons), benchstat-*.txt, overhead.txt (medians and
# lifecycle minus bare), machine.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-6}
LEVELS=${LEVELS:-info warn}
OUT=${OUT:-$(mktemp -d)}
BENCHSTAT_VERSION=v0.0.0-20260908200009-22c9c6c9d4da # golang.org/x/perf
mkdir -p "$OUT/bin"
read -r -a levels <<<"$LEVELS"

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
	echo "bench_test.go sha256: $(sha256sum bench/bench_test.go | cut -d' ' -f1)"
	echo "levels: ${levels[*]}; rounds: $COUNT"
	echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "started: $(date -u +%FT%TZ)"
} | tee "$OUT/machine.txt"

# Compile once, so that every run measures the same binary.
go test -c -o "$OUT/bench.test" ./bench/

: >"$OUT/bench.txt"
for l in "${levels[@]}"; do : >"$OUT/bench-$l.txt"; done
for i in $(seq "$COUNT"); do
	# Alternate the order of the levels: forward in odd rounds, reversed in
	# even ones.
	order=("${levels[@]}")
	if [ $((i % 2)) -eq 0 ]; then
		order=()
		for ((j = ${#levels[@]} - 1; j >= 0; j--)); do order+=("${levels[j]}"); done
	fi
	for l in "${order[@]}"; do
		echo "== round $i of $COUNT, log level $l (load $(cut -d' ' -f1 /proc/loadavg))" >&2
		(cd bench && BENCH_LOG_LEVEL=$l "$OUT/bench.test" -test.count=1 -test.run='^$' -test.bench=. -test.benchmem ${BENCHTIME:+-test.benchtime=$BENCHTIME}) |
			tee -a "$OUT/bench-$l.txt" |
			{ echo "loglevel: $l"; cat; } >>"$OUT/bench.txt"
	done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"
echo "finished: $(date -u +%FT%TZ)" | tee -a "$OUT/machine.txt"
if [ "$(sha256sum controller.go | cut -d' ' -f1)" != "$(sed -n 's/^controller.go sha256: //p' "$OUT/machine.txt")" ]; then
	echo "WARNING: controller.go changed during the run (the binary did not, but it no longer matches the tree)" | tee -a "$OUT/machine.txt" >&2
fi

for l in "${levels[@]}"; do
	f="$OUT/bench-$l.txt"
	{
		echo "######## log level $l"
		# Every variant side by side; the first column (bare) is the
		# baseline of the deltas.
		"$benchstat" -col '/impl@(bare upstream ours ours-uncached none)' "$f"
	} | tee "$OUT/benchstat-$l-all.txt"
	{
		echo "######## log level $l: upstream (baseline) vs ours"
		"$benchstat" -filter '/impl:(upstream OR ours OR ours-uncached)' -col '/impl@(upstream ours ours-uncached)' "$f"
	} | tee "$OUT/benchstat-$l-upstream-vs-ours.txt"
	{
		echo "######## log level $l: idle CPU, no waiter (baseline) vs 1000 upstream / ours waiters"
		"$benchstat" -filter '.name:IdleWaiters .unit:cpu-ns/s-idle' -col '/impl@(none upstream ours)' "$f"
	} | tee "$OUT/benchstat-$l-idle.txt"
done

# Each variant across levels: the first level is the baseline. For ours,
# the difference at the lifecycle is the cost of its info lines.
{
	echo "######## each variant, ${levels[*]} (baseline first)"
	"$benchstat" -filter '.name:(Lifecycle OR NewController OR FanOut)' -col "loglevel@(${levels[*]})" "$OUT/bench.txt"
} | tee "$OUT/benchstat-levels.txt"

# Medians, and each variant's lifecycle minus bare's (the controller's own
# overhead), per level, from the raw samples.
awk '
	/^loglevel: / { level = $2; next }
	/^Benchmark/ {
		name = $1; sub(/-[0-9]+$/, "", name)
		for (k = 3; k < NF; k += 2) { key = level SUBSEP name SUBSEP $(k + 1); v[key, ++n[key]] = $k }
	}
	function median(key,   m, i, j, t, a) {
		m = n[key]
		for (i = 1; i <= m; i++) a[i] = v[key, i]
		for (i = 2; i <= m; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
		return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
	}
	END {
		split("ns/op B/op allocs/op", units, " ")
		split("bare upstream ours ours-uncached", impls, " ")
		nl = split(LEVELS, lv, " ")
		for (x = 1; x <= nl; x++) {
			printf "log level %s: BenchmarkLifecycle medians of %d runs, and minus bare\n", lv[x], n[lv[x], "BenchmarkLifecycle/impl=bare", "ns/op"]
			printf "  %-14s %12s %10s %10s | %12s %10s %10s\n", "impl", "ns/op", "B/op", "allocs/op", "-bare ns", "-bare B", "-bare allocs"
			for (y = 1; y <= 4; y++) {
				row = sprintf("  %-14s", impls[y]); diff = ""
				for (u = 1; u <= 3; u++) {
					key = lv[x] SUBSEP "BenchmarkLifecycle/impl=" impls[y] SUBSEP units[u]
					base = lv[x] SUBSEP "BenchmarkLifecycle/impl=bare" SUBSEP units[u]
					if (!(key in n)) { row = row sprintf(" %10s", "-"); diff = diff sprintf(" %10s", "-"); continue }
					row = row sprintf(u == 1 ? " %12.0f" : " %10.0f", median(key))
					diff = diff sprintf(u == 1 ? " %12.0f" : " %10.0f", median(key) - median(base))
				}
				print row " |" diff
			}
			# The floor under any controller that writes three info lines
			# per lifecycle (BenchmarkInfoLine), against the limit of
			# target (a): half of the overhead of upstream.
			printf "  %-14s", "limit (a)"
			for (u = 1; u <= 3; u++) {
				key = lv[x] SUBSEP "BenchmarkLifecycle/impl=upstream" SUBSEP units[u]
				base = lv[x] SUBSEP "BenchmarkLifecycle/impl=bare" SUBSEP units[u]
				printf(u == 1 ? " %12s" : " %10s", u == 1 ? "-" : sprintf("%.1f", (median(key) - median(base)) / 2))
			}
			print "   (half of upstream-bare)"
			split("fields=none fields=task", lf, " ")
			for (y = 1; y <= 2; y++) {
				row = sprintf("  3 lines, %-4s", substr(lf[y], 8))
				for (u = 1; u <= 3; u++) {
					key = lv[x] SUBSEP "BenchmarkInfoLine/" lf[y] SUBSEP units[u]
					row = row (key in n ? sprintf(u == 1 ? " %12.0f" : " %10.0f", 3 * median(key)) : sprintf(" %10s", "-"))
				}
				print row "   (3 x BenchmarkInfoLine/" lf[y] ")"
			}
		}
	}' LEVELS="${levels[*]}" "$OUT/bench.txt" | tee "$OUT/overhead.txt"

if [ -n "${PROFILE:-}" ]; then
	for b in 'Lifecycle/impl=ours' 'NewController/impl=ours' 'FanOut/impl=ours'; do
		f="$OUT/$(echo "$b" | tr '/=' '__').mem"
		(cd bench && BENCH_LOG_LEVEL=info "$OUT/bench.test" -test.run='^$' -test.bench="^Benchmark$b\$" -test.benchmem \
			-test.benchtime=200x -test.memprofile="$f" -test.memprofilerate=1 >/dev/null)
		for idx in alloc_space alloc_objects; do
			echo "== $b: $idx by line of the root package (the fake's own allocations left out)"
			go tool pprof -top -cum -lines -sample_index="$idx" -focus='seed-e85c93d5/plugin\.' -ignore=plugintest \
				-nodecount=400 "$OUT/bench.test" "$f" 2>/dev/null | grep -E '^ +flat|controller.go' | sed -n 1,30p
		done
	done | tee "$OUT/profiles.txt"
fi

echo "results in $OUT"
