#!/usr/bin/env bash
# benchstat-compare.sh: compare two commits' BenchmarkOps (or any benchmark of
# a package) with benchstat, so a change's cost is visible before it lands.
# Not a CI gate: the figures are only as quiet as the machine.
#
#   bench/benchstat-compare.sh [-n COUNT] [-bench REGEX] [-benchtime T] [-pkg PKG] OLD [NEW]
#
# OLD and NEW are anything git rev-parse takes (NEW defaults to the work
# tree as it is, uncommitted changes included). Each side's test binary is
# built once, from a git worktree of that commit in a temporary directory
# (the work tree itself for NEW when omitted); then the two run COUNT rounds
# interleaved, the order swapped every round, so background load lands on
# both alike. benchstat (golang.org/x/perf, pinned in tools/go.mod) then
# compares every unit the benchmarks report: sec/op, cpu-ns/op (the client's
# CPU per operation), raw-cpu-ns/op and x-raw (dbcache ÷ raw pgx) for
# BenchmarkOps. The raw inputs stay in the printed directory.
#
# Needs DBCACHE_TEST_DATABASE_URL, as the benchmarks do. Defaults: -n 6,
# -bench '^BenchmarkOps$', -benchtime 4000x, -pkg ./dbcache/.
set -euo pipefail

count=6
bench='^BenchmarkOps$'
benchtime=4000x
pkg=./dbcache/
while [[ $# -gt 0 ]]; do
	case $1 in
	-n) count=$2; shift 2 ;;
	-bench) bench=$2; shift 2 ;;
	-benchtime) benchtime=$2; shift 2 ;;
	-pkg) pkg=$2; shift 2 ;;
	-h | --help) sed -n '2,19p' "$0"; exit 0 ;;
	-*) echo "unknown flag $1" >&2; exit 2 ;;
	*) break ;;
	esac
done
if [[ $# -lt 1 || $# -gt 2 ]]; then
	echo "usage: $0 [-n COUNT] [-bench REGEX] [-benchtime T] [-pkg PKG] OLD [NEW]" >&2
	exit 2
fi
: "${DBCACHE_TEST_DATABASE_URL:?set DBCACHE_TEST_DATABASE_URL (see docs/testing.md)}"

root=$(git rev-parse --show-toplevel)
old=$(git rev-parse --verify "$1^{commit}")
new=${2:-}
if [[ -n $new ]]; then
	new=$(git rev-parse --verify "$new^{commit}")
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/benchstat-compare.XXXXXX")
worktrees=()
cleanup() {
	for w in "${worktrees[@]}"; do
		git -C "$root" worktree remove --force "$w" >/dev/null 2>&1 || true
	done
}
trap cleanup EXIT

# build NAME COMMIT-or-empty: the test binary of $pkg at that commit.
build() {
	local name=$1 commit=$2 dir=$root
	if [[ -n $commit ]]; then
		dir=$tmp/src-$name
		git -C "$root" worktree add --detach --quiet "$dir" "$commit"
		worktrees+=("$dir")
	fi
	echo "building $name (${commit:-work tree}) ..." >&2
	(cd "$dir" && go test -c -o "$tmp/$name.test" "$pkg")
	# The benchmarks' package directory, where the test binary runs.
	(cd "$dir" && go list -f '{{.Dir}}' "$pkg") >"$tmp/$name.dir"
}
build old "$old"
build new "$new"

run() {
	local name=$1
	(cd "$(cat "$tmp/$name.dir")" && "$tmp/$name.test" -test.run '^$' -test.bench "$bench" \
		-test.benchtime "$benchtime" -test.count 1) >>"$tmp/$name.txt"
}
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$tmp/load.txt" >&2
for ((i = 1; i <= count; i++)); do
	echo "round $i/$count" >&2
	if ((i % 2)); then
		run old
		run new
	else
		run new
		run old
	fi
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$tmp/load.txt" >&2

echo "old: $old"
echo "new: ${new:-work tree of $(git -C "$root" rev-parse HEAD)}"
cat "$tmp/load.txt"
echo "raw outputs: $tmp/old.txt $tmp/new.txt"
echo
(cd "$root/tools" && GOWORK=off go tool benchstat "old=$tmp/old.txt" "new=$tmp/new.txt")
