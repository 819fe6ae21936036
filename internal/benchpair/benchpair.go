// Package benchpair runs two sides of a benchmark (with and without a
// feature, typed and raw) in one run: alternating in blocks of operations,
// the order swapped every block, so that load from anything else on the
// machine lands on both alike, as dbcache's BenchmarkOps does. It reports
// each side's wall time and the client process's CPU time per operation.
// For benchmarks only.
package benchpair

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Block is how many operations one side runs before the other's turn.
const Block = 200

// Op runs operation i of a side (i counts up from 0 on each side).
type Op func(ctx context.Context, i int) error

// Result is what Run measured for each side, per operation.
type Result struct {
	A, B       time.Duration // wall time
	ACPU, BCPU time.Duration // client CPU (0 where the OS gives none)
}

// Run runs b.N operations of each side on g goroutines, alternating, and
// returns each side's wall and CPU time per operation (see Report). Each
// side is warmed up first, 2g operations, so one-off costs (preparing a
// statement on each connection) are charged to neither.
func Run(b *testing.B, g int, a, bOp Op) Result {
	ctx := context.Background()
	var aT, bT, aCPU, bCPU time.Duration
	var aN, bN atomic.Int64
	run(b, ctx, g, 2*g, &aN, a)
	run(b, ctx, g, 2*g, &bN, bOp)
	b.ResetTimer()
	for done, round := 0, 0; done < b.N; round++ {
		n := min(Block, b.N-done)
		sides := []func(){
			func() {
				c := ProcessCPU()
				aT += run(b, ctx, g, n, &aN, a)
				aCPU += ProcessCPU() - c
			},
			func() {
				c := ProcessCPU()
				bT += run(b, ctx, g, n, &bN, bOp)
				bCPU += ProcessCPU() - c
			},
		}
		if round%2 == 1 {
			sides[0], sides[1] = sides[1], sides[0]
		}
		sides[0]()
		sides[1]()
		done += n
	}
	b.StopTimer()
	per := func(d time.Duration) time.Duration { return d / time.Duration(b.N) }
	return Result{A: per(aT), B: per(bT), ACPU: per(aCPU), BCPU: per(bCPU)}
}

// Report reports r as metrics: ns/op and cpu-ns/op for side a, the same
// prefixed with bName for side b, and "x-"+bName, b's wall time ÷ a's: a's
// speed as a fraction of b's (1 means a costs nothing more than b).
func (r Result) Report(b *testing.B, bName string) {
	b.ReportMetric(float64(r.A.Nanoseconds()), "ns/op")
	b.ReportMetric(float64(r.B.Nanoseconds()), bName+"-ns/op")
	b.ReportMetric(float64(r.B)/float64(r.A), "x-"+bName)
	b.ReportMetric(float64(r.ACPU.Nanoseconds()), "cpu-ns/op")
	b.ReportMetric(float64(r.BCPU.Nanoseconds()), bName+"-cpu-ns/op")
}

func run(b *testing.B, ctx context.Context, g, n int, seq *atomic.Int64, op Op) time.Duration {
	var left atomic.Int64
	left.Store(int64(n))
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	start := time.Now()
	for range min(g, n) {
		wg.Go(func() {
			for left.Add(-1) >= 0 {
				if err := op(ctx, int(seq.Add(1)-1)); err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	d := time.Since(start)
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
	return d
}

// LoadAverage returns the machine's 1-minute load average (from
// /proc/loadavg), to be reported beside timings: on a shared machine it
// says how much of a figure is the machine's.
func LoadAverage() (float64, bool) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, false
	}
	l, err := strconv.ParseFloat(f[0], 64)
	return l, err == nil
}
