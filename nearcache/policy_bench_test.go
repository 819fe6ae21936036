package nearcache

import (
	"container/list"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Which local store: the layer's (otter's W-TinyLFU behind the fill
// protocol) against a hand-written LRU, on a Zipf trace
// (s = 1.1 over 100k keys, 100-byte values), each as a cache-aside: a get,
// and on a miss a set. It reports the hit ratio and ns per access, at a
// budget of 1% and 10% of the key space's bytes. The LRU lives here only:
// the library imports otter alone. (ristretto is compared in the bench
// module, bench/internal/nearbench's BenchmarkPolicy, which keeps it out
// of a nearcache user's module graph.)

const (
	traceKeys  = 100_000
	traceValue = 100
)

var (
	traceOnce sync.Once
	trace     []string
	// traceLen is the trace's length: a million accesses, or 64k with
	// -short (CI runs every benchmark once, to keep them working).
	traceLen int
)

func zipfTrace() []string {
	traceOnce.Do(func() {
		traceLen = 1 << 20
		if testing.Short() {
			traceLen = 1 << 16
		}
		r := rand.New(rand.NewPCG(1, 2))
		z := rand.NewZipf(r, 1.1, 1, traceKeys-1)
		names := make([]string, traceKeys)
		for i := range names {
			names[i] = fmt.Sprintf(":1:user:%d", i)
		}
		trace = make([]string, traceLen)
		for i := range trace {
			trace[i] = names[z.Uint64()]
		}
	})
	return trace
}

// policy is a local store under test.
type policy interface {
	get(k string) bool
	set(k string, v []byte)
}

type otterPolicy struct{ l *local }

func (p otterPolicy) get(k string) bool {
	_, ok := p.l.get(k, time.Now())
	return ok
}

func (p otterPolicy) set(k string, v []byte) {
	keepFill(p.l, k, v)
}

// lruPolicy is the hand-written baseline: a map and a list under one lock,
// weight-bounded like the others.
type lruPolicy struct {
	mu     sync.Mutex
	max    int
	weight int
	ll     *list.List
	items  map[string]*list.Element
}

type lruItem struct {
	k string
	v []byte
}

func (p *lruPolicy) get(k string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.items[k]
	if ok {
		p.ll.MoveToFront(e)
	}
	return ok
}

func (p *lruPolicy) set(k string, v []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.items[k]; ok {
		p.ll.MoveToFront(e)
		return
	}
	p.items[k] = p.ll.PushFront(&lruItem{k, v})
	p.weight += len(k) + len(v) + entryOverhead
	for p.weight > p.max {
		old := p.ll.Remove(p.ll.Back()).(*lruItem)
		delete(p.items, old.k)
		p.weight -= len(old.k) + len(old.v) + entryOverhead
	}
}

func newPolicy(tb testing.TB, name string, budget int) policy {
	switch name {
	case "otter":
		l, err := newLocal(int64(budget), budget)
		if err != nil {
			tb.Fatal(err)
		}
		l.setFeed(true)
		tb.Cleanup(l.close)
		return otterPolicy{l}
	default:
		return &lruPolicy{max: budget, ll: list.New(), items: map[string]*list.Element{}}
	}
}

// BenchmarkPolicy: hit ratio and ns per access of each local store, at 1
// and 16 goroutines. Reproduce: go test -run '^$' -bench Policy ./nearcache/
func BenchmarkPolicy(b *testing.B) {
	tr := zipfTrace()
	full := traceKeys * (len(":1:user:99999") + traceValue + entryOverhead)
	value := make([]byte, traceValue)
	for _, pct := range []int{1, 10, 100} {
		for _, name := range []string{"otter", "lru"} {
			for _, g := range []int{1, 16} {
				b.Run(fmt.Sprintf("budget=%d%%/%s/g=%d", pct, name, g), func(b *testing.B) {
					p := newPolicy(b, name, full*pct/100)
					// Warm up on the first half of the trace, so the ratio
					// is the steady state's.
					for _, k := range tr[:traceLen/2] {
						if !p.get(k) {
							p.set(k, value)
						}
					}
					var hits, n atomic.Int64
					var next atomic.Int64
					b.ResetTimer()
					if g == 1 {
						for i := range b.N {
							k := tr[traceLen/2+i%(traceLen/2)]
							if p.get(k) {
								hits.Add(1)
							} else {
								p.set(k, value)
							}
						}
						b.ReportMetric(float64(hits.Load())/float64(b.N), "hit-ratio")
						return
					}
					b.SetParallelism(max(g/runtime.GOMAXPROCS(0), 1))
					b.RunParallel(func(pb *testing.PB) {
						var h, c int64
						for pb.Next() {
							k := tr[traceLen/2+int(next.Add(1))%(traceLen/2)]
							if p.get(k) {
								h++
							} else {
								p.set(k, value)
							}
							c++
						}
						hits.Add(h)
						n.Add(c)
					})
					b.ReportMetric(float64(hits.Load())/float64(n.Load()), "hit-ratio")
				})
			}
		}
	}
}
