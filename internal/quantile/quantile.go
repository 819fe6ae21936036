// Package quantile is the one percentile helper of dbcache's tests,
// benchmarks and tools (the CLI's load generator keeps a histogram of its
// own, which never holds the samples).
package quantile

import (
	"cmp"
	"slices"
)

// Percentile returns the p-th percentile (0 <= p <= 100) of v by the
// nearest-rank method: the element at index len(v)*p/100 of v sorted, the
// last for p = 100; the median is Percentile(v, 50). It sorts a copy, so v
// is left as it was, and returns the zero value for an empty v.
func Percentile[T cmp.Ordered](v []T, p int) T {
	var zero T
	if len(v) == 0 {
		return zero
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[min(len(s)-1, max(len(s)*p/100, 0))]
}
