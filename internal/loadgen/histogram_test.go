package loadgen

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestBucketsAreContinuousAndMonotonic(t *testing.T) {
	t.Parallel()
	prev := -1
	for v := uint64(0); v < 1<<20; v++ {
		b := bucketOf(v)
		require.True(t, b == prev || b == prev+1, "value %d: bucket %d after %d", v, b, prev)
		prev = b
	}
	require.Equal(t, numBuckets-1, bucketOf(1<<63))
}

func TestQuantileAccuracy(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	var h histogram
	var exact []time.Duration
	for range 100_000 {
		// Log-uniform from 10 µs to 1 s: every scale gets samples.
		d := time.Duration(10_000 * math.Pow(100_000, rng.Float64()))
		exact = append(exact, d)
		h.record(d)
	}
	slices.Sort(exact)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		want := exact[int(q*float64(len(exact)))-1]
		got := h.quantile(q)
		require.InEpsilon(t, float64(want), float64(got), 0.02, "q=%v", q)
	}
	require.Equal(t, exact[0], time.Duration(h.min))
	require.Equal(t, exact[len(exact)-1], h.quantile(1))

	var a, b histogram
	a.record(time.Millisecond)
	b.record(3 * time.Millisecond)
	a.merge(&b)
	require.EqualValues(t, 2, a.n)
	require.Equal(t, 2*time.Millisecond, a.mean())
	require.Equal(t, time.Millisecond, time.Duration(a.min))
	require.Equal(t, 3*time.Millisecond, time.Duration(a.max))
}
