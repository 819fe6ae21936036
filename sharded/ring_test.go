package sharded

import (
	"fmt"
	"math"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// ringKeys are the keys the ring's properties are checked on: made keys of
// the default KeyFunc, as the cache hashes them.
func ringKeys(n int) []uint64 {
	hs := make([]uint64, n)
	for i := range hs {
		hs[i] = keyHash("myapp:0:user:" + strconv.Itoa(i))
	}
	return hs
}

func shardNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("pg%d", i+1)
	}
	return names
}

// placeAll places every key and returns each key's shard name.
func placeAll(r *ring, hs []uint64) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = r.names[r.pick(h)]
	}
	return out
}

// The placement is a function of the set of names: listing the shards in
// another order places every key alike.
func TestRingIgnoresOrder(t *testing.T) {
	t.Parallel()
	hs := ringKeys(20_000)
	names := []string{"a", "b", "c", "d", "e"}
	want := placeAll(newRing(names), hs)
	reversed := []string{"e", "d", "c", "b", "a"}
	require.Equal(t, want, placeAll(newRing(reversed), hs))
	shuffled := []string{"c", "a", "e", "b", "d"}
	require.Equal(t, want, placeAll(newRing(shuffled), hs))
}

// Adding a shard moves only the keys the new shard wins, and removing one
// moves only the keys it held: the least any placement can move. Each
// shard holds close to 1/N of the keys.
func TestRingMovesTheMinimum(t *testing.T) {
	t.Parallel()
	const keys = 200_000
	hs := ringKeys(keys)
	for n := 1; n <= 10; n++ {
		names := shardNames(n)
		before := placeAll(newRing(names), hs)
		count := map[string]int{}
		for _, s := range before {
			count[s]++
		}
		require.Len(t, count, n)
		mean := float64(keys) / float64(n)
		for name, c := range count {
			// 5 standard deviations of a binomial count: the hash is fixed,
			// so this is a property of these keys, not a flaky bound.
			sd := math.Sqrt(float64(keys) * (1 / float64(n)) * (1 - 1/float64(n)))
			require.InDelta(t, mean, float64(c), 5*sd+1, "n=%d shard %s", n, name)
		}

		// Add one.
		added := fmt.Sprintf("pg%d", n+1)
		after := placeAll(newRing(append(append([]string(nil), names...), added)), hs)
		moved := 0
		for i := range hs {
			if after[i] != before[i] {
				require.Equal(t, added, after[i], "a key moved between shards that stayed")
				moved++
			}
		}
		share := float64(moved) / keys
		require.InDelta(t, 1/float64(n+1), share, 0.01, "n=%d add", n)

		// Remove one (each in turn, for small n).
		if n == 1 {
			continue
		}
		for _, gone := range []string{names[0], names[n-1]} {
			var rest []string
			for _, name := range names {
				if name != gone {
					rest = append(rest, name)
				}
			}
			after := placeAll(newRing(rest), hs)
			moved := 0
			for i := range hs {
				if after[i] != before[i] {
					require.Equal(t, gone, before[i], "a key of a shard that stayed moved")
					moved++
				}
			}
			require.Equal(t, count[gone], moved)
		}
	}
}

// The hash over the stem and the key in two steps is the hash of the two
// joined, so routing need not join them.
func TestHashInTwoSteps(t *testing.T) {
	t.Parallel()
	for _, k := range []string{"", "k", "user:42", "\u00e9\U0010FFFF"} {
		require.Equal(t, keyHash("myapp:0:"+k), fmix64(fnvString(fnvString(fnvOffset, "myapp:0:"), k)))
	}
}
