package sharded

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

// maglev is Maglev hashing (Eisenbud et al., NSDI 2016), the scheme Rails'
// Solid Cache uses, written here from the paper only to compare with the
// rendezvous ring the package uses: each shard fills a lookup table of
// prime size M in the order of its own permutation, (offset + j*skip) mod
// M, taking turns, and a key's shard is table[hash mod M].
type maglev struct {
	table []int
	names []string
}

const maglevM = 65537 // the paper's default size: prime, ≫ 100 × shards

func newMaglev(names []string) *maglev {
	// The permutations must not depend on the listing order either.
	names = slices.Sorted(slices.Values(names))
	n := len(names)
	offset, skip, next := make([]uint64, n), make([]uint64, n), make([]uint64, n)
	for i, name := range names {
		offset[i] = fmix64(nameSeed(name)^0x9e3779b97f4a7c15) % maglevM
		skip[i] = fmix64(nameSeed(name)^0xc2b2ae3d27d4eb4f)%(maglevM-1) + 1
	}
	table := make([]int, maglevM)
	for i := range table {
		table[i] = -1
	}
	filled := 0
	for filled < maglevM {
		for i := range n {
			for {
				c := (offset[i] + next[i]*skip[i]) % maglevM
				next[i]++
				if table[c] < 0 {
					table[c] = i
					filled++
					break
				}
			}
			if filled == maglevM {
				break
			}
		}
	}
	return &maglev{table: table, names: names}
}

func (m *maglev) place(h uint64) string { return m.names[m.table[h%maglevM]] }

type placer interface{ place(h uint64) string }

type rendezvous struct{ r *ring }

func (r rendezvous) place(h uint64) string { return r.r.names[r.r.pick(h)] }

// ringStats measures one scheme at n shards on hs: the largest and smallest
// shard against the mean, the relative standard deviation of the shards'
// counts, the share of keys that move when a shard is added, and when one
// is removed (the mean over removing each in turn), and the lookup cost.
type ringStats struct {
	max, min, rsd, add, remove float64
	lookup                     time.Duration
}

func measure(build func([]string) placer, n int, hs []uint64) ringStats {
	names := shardNames(n)
	p := build(names)
	start := time.Now()
	before := make([]string, len(hs))
	for i, h := range hs {
		before[i] = p.place(h)
	}
	var st ringStats
	st.lookup = time.Since(start) / time.Duration(len(hs))
	count := map[string]int{}
	for _, s := range before {
		count[s]++
	}
	mean := float64(len(hs)) / float64(n)
	st.min = math.Inf(1)
	var sq float64
	for _, name := range names {
		c := float64(count[name])
		st.max = max(st.max, c/mean)
		st.min = min(st.min, c/mean)
		sq += (c - mean) * (c - mean)
	}
	st.rsd = math.Sqrt(sq/float64(n)) / mean
	moved := func(q placer) float64 {
		m := 0
		for i, h := range hs {
			if q.place(h) != before[i] {
				m++
			}
		}
		return float64(m) / float64(len(hs))
	}
	st.add = moved(build(append(append([]string(nil), names...), fmt.Sprintf("pg%d", n+1))))
	for _, gone := range names {
		rest := slices.DeleteFunc(slices.Clone(names), func(s string) bool { return s == gone })
		st.remove += moved(build(rest)) / float64(n)
	}
	return st
}

// BenchmarkRingTable measures rendezvous hashing (the package's ring)
// beside Maglev on 1M keys (100k with -short) at 2, 3, 5 and 10 shards, and
// logs the table docs/scale-out.md shows:
//
//	go test -run '^$' -bench RingTable -benchtime 1x -v ./sharded/
func BenchmarkRingTable(b *testing.B) {
	keys := 1_000_000
	if testing.Short() {
		keys = 100_000
	}
	hs := ringKeys(keys)
	schemes := []struct {
		name  string
		build func([]string) placer
	}{
		{"rendezvous", func(n []string) placer { return rendezvous{newRing(n)} }},
		{"maglev", func(n []string) placer { return newMaglev(n) }},
	}
	for range b.N {
		var out strings.Builder
		fmt.Fprintf(&out, "\n%d keys\n| shards | scheme | largest / mean | smallest / mean | rel. std. dev. | moved on add (ideal) | moved on remove (ideal) | lookup |\n|---|---|---|---|---|---|---|---|\n", keys)
		for _, n := range []int{2, 3, 5, 10} {
			for _, s := range schemes {
				st := measure(s.build, n, hs)
				fmt.Fprintf(&out, "| %d | %s | %.4f | %.4f | %.3f %% | %.2f %% (%.2f %%) | %.2f %% (%.2f %%) | %s |\n",
					n, s.name, st.max, st.min, 100*st.rsd, 100*st.add, 100/float64(n+1), 100*st.remove, 100/float64(n), st.lookup)
				if n == 3 {
					b.ReportMetric(100*st.add, s.name+"-add-%")
					b.ReportMetric(100*st.remove, s.name+"-remove-%")
					b.ReportMetric(st.max, s.name+"-max/mean")
				}
			}
		}
		b.Log(out.String())
	}
}

// BenchmarkShardOf is the cost of routing one key.
func BenchmarkShardOf(b *testing.B) {
	for _, n := range []int{1, 3, 10} {
		b.Run(fmt.Sprintf("shards=%d", n), func(b *testing.B) {
			s := &state{ring: newRing(shardNames(n)), stem: "myapp:0:", stemOK: true}
			for _, name := range shardNames(n) {
				s.shards = append(s.shards, &shard{name: name})
			}
			c := &Cache{s: s}
			keys := make([]string, 1024)
			for i := range keys {
				keys[i] = fmt.Sprintf("user:%d:profile", i)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				_ = c.shardFor(keys[i%len(keys)])
			}
		})
	}
}
