package loadgen

import (
	"math"
	"math/bits"
	"time"
)

// histogram records latencies in log-linear buckets, as HdrHistogram does:
// each power of two is split into subHalf equal buckets, so a reported
// percentile is within 1/subHalf (1.6%) of the true value at any scale, in a
// fixed few kilobytes and with no allocation per sample. Each worker owns one
// per operation, so recording takes no lock; they are merged at the end.
type histogram struct {
	counts   [numBuckets]uint64
	n        uint64
	sum      uint64
	min, max uint64
}

const (
	subBits = 7
	subHalf = 1 << (subBits - 1) // 64 buckets per power of two
	// maxShift caps recorded values at about 2^(maxShift+subBits) ns
	// (about 4.9 hours): longer samples are clamped into the last bucket.
	maxShift   = 37
	numBuckets = (maxShift+1)*subHalf + subHalf
)

func bucketOf(v uint64) int {
	if v < 2*subHalf {
		return int(v)
	}
	shift := bits.Len64(v) - subBits
	if shift > maxShift {
		return numBuckets - 1
	}
	return shift*subHalf + int(v>>uint(shift))
}

// bucketMid is a value representative of bucket i: the middle of the range of
// values that land in it.
func bucketMid(i int) uint64 {
	if i < 2*subHalf {
		return uint64(i)
	}
	shift := i/subHalf - 1
	top := uint64(i - shift*subHalf)
	lo := top << uint(shift)
	hi := (top+1)<<uint(shift) - 1
	return lo + (hi-lo)/2
}

func (h *histogram) record(d time.Duration) {
	v := uint64(max(d, 0))
	h.counts[bucketOf(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += v
}

func (h *histogram) merge(o *histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
	h.sum += o.sum
}

// quantile returns the latency below which a fraction q of samples fall,
// clamped to the exact minimum and maximum seen.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			v := min(max(bucketMid(i), h.min), h.max)
			return time.Duration(v)
		}
	}
	return time.Duration(h.max)
}

func (h *histogram) mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / h.n)
}
