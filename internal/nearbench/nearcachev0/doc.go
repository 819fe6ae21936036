// Package nearcachev0 is the near cache as it was before its copies were
// checked against their reads' snapshots (nearcache at commit 189b103,
// copied unchanged but for its name), kept only so that bench/near can
// measure before and after in one run, interleaved (docs/nearcache.md,
// "What correctness cost"). Its staleness bound does not hold (issue 21):
// never use it. It is internal, frozen, and goes once the comparison has
// served.
package nearcachev0
