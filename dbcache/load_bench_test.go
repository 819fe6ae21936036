package dbcache_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/quantile"
)

// BenchmarkGetOrSetFuncCold measures a stampede: every caller misses one
// cold key at once, and the loader takes 50 ms. Each iteration is a new
// key. Reported per iteration: loader runs (1 is the goal), the callers'
// p50 and p99 latency, and the most pool connections in use at once across
// the processes. "4x50" is four processes (four pools of 4 connections)
// with 50 goroutines each.
//
//	go test -run '^$' -bench GetOrSetFuncCold -benchtime 10x ./dbcache/
func BenchmarkGetOrSetFuncCold(b *testing.B) {
	for _, sc := range []struct {
		name         string
		procs, per   int
		conns        int32
		loaderPeriod time.Duration
	}{
		{"g=1", 1, 1, 4, 50 * time.Millisecond},
		{"g=16", 1, 16, 4, 50 * time.Millisecond},
		{"g=4x50", 4, 50, 4, 50 * time.Millisecond},
	} {
		b.Run(sc.name, func(b *testing.B) {
			s := dbtest.NewSchema(b)
			s.Migrate(b)
			caches := make([]*dbcache.Cache, sc.procs)
			pools := make([]*pgxpool.Pool, sc.procs)
			for i := range caches {
				pc := s.PoolConfig(b)
				pc.MaxConns = sc.conns
				pool := dbtest.NewPool(b, pc)
				c, err := dbcache.New(context.Background(), pool, nil)
				if err != nil {
					b.Fatal(err)
				}
				caches[i] = c
				pools[i] = pool
			}
			var (
				runs     atomic.Int64
				lat      []time.Duration
				latMu    sync.Mutex
				maxConns int32
			)
			load := func(context.Context) ([]byte, error) {
				runs.Add(1)
				time.Sleep(sc.loaderPeriod)
				return []byte("value"), nil
			}
			b.ResetTimer()
			for i := range b.N {
				key := fmt.Sprintf("cold-%d-%d", i, time.Now().UnixNano())
				stop := make(chan struct{})
				sampled := make(chan int32)
				go func() { // the most connections in use at once, sampled
					var peak int32
					for {
						var n int32
						for _, p := range pools {
							n += p.Stat().AcquiredConns()
						}
						peak = max(peak, n)
						select {
						case <-stop:
							sampled <- peak
							return
						case <-time.After(time.Millisecond):
						}
					}
				}()
				var wg sync.WaitGroup
				start := make(chan struct{})
				for _, c := range caches {
					for range sc.per {
						wg.Go(func() {
							<-start
							t0 := time.Now()
							if _, err := c.GetOrSetFunc(context.Background(), key, load, dbcache.DefaultTimeout); err != nil {
								b.Error(err)
							}
							d := time.Since(t0)
							latMu.Lock()
							lat = append(lat, d)
							latMu.Unlock()
						})
					}
				}
				close(start)
				wg.Wait()
				close(stop)
				maxConns = max(maxConns, <-sampled)
			}
			b.StopTimer()
			pct := func(p int) float64 {
				return float64(quantile.Percentile(lat, p).Microseconds()) / 1000
			}
			b.ReportMetric(float64(runs.Load())/float64(b.N), "loads/key")
			b.ReportMetric(pct(50), "p50-ms")
			b.ReportMetric(pct(99), "p99-ms")
			b.ReportMetric(float64(maxConns), "max-conns")
		})
	}
}

// BenchmarkGetOrSetFuncHit is GetOrSetFunc on a key that is there, beside a
// plain Get of it in the same run: the hit path is one Get. Here the "raw"
// side is Get, so x-raw is Get's time ÷ GetOrSetFunc's (the target is ≥ 0.95).
func BenchmarkGetOrSetFuncHit(b *testing.B) {
	env := newBenchEnv(b, "")
	n := len(env.keys)
	load := func(context.Context) ([]byte, error) { return nil, fmt.Errorf("a hit never loads") }
	op := benchOp{"get_or_set_hit",
		func(ctx context.Context, i int) error {
			_, err := env.cache.GetOrSetFunc(ctx, env.keys[i%n], load, dbcache.DefaultTimeout)
			return err
		},
		func(ctx context.Context, i int) error { _, err := env.cache.Get(ctx, env.keys[i%n]); return err },
	}
	for _, g := range []int{1, 16} {
		b.Run(fmt.Sprintf("g=%d", g), func(b *testing.B) { env.runPair(b, g, op) })
	}
}

// BenchmarkCoalesceSets is Set with Config.CoalesceSets beside raw pgx
// running the single-row statement, durable and with FastCommit, at 1 and 16
// goroutines: x-raw above 1 is what sharing statements (and commits) buys.
//
//	go test -run '^$' -bench CoalesceSets -benchtime 4000x ./dbcache/
func BenchmarkCoalesceSets(b *testing.B) {
	for _, fast := range []bool{false, true} {
		env := newBenchEnv(b, "")
		c, err := dbcache.New(context.Background(), env.pool, &dbcache.Config{CoalesceSets: benchCoalesceSets(), FastCommit: fast, OpTimeout: benchOpTimeout})
		if err != nil {
			b.Fatal(err)
		}
		setSQL := dbcache.Statements(c)["set"]
		n := len(env.keys)
		op := benchOp{"set",
			func(ctx context.Context, i int) error {
				return c.Set(ctx, env.keys[i%n], env.value, dbcache.DefaultTimeout)
			},
			func(ctx context.Context, i int) error {
				_, err := env.pool.Exec(ctx, setSQL, env.made[i%n], env.value, env.ttl)
				return err
			},
		}
		for _, g := range []int{1, 16} {
			b.Run(fmt.Sprintf("fast=%v/g=%d", fast, g), func(b *testing.B) { env.runPair(b, g, op) })
		}
	}
}

// BenchmarkCoalesceIncrs is Incr with Config.CoalesceIncrs beside raw pgx
// running the single statement, with FastCommit, at 1 and 16 goroutines,
// over the benchmark's counters.
//
//	go test -run '^$' -bench CoalesceIncrs -benchtime 4000x ./dbcache/
func BenchmarkCoalesceIncrs(b *testing.B) {
	env := newBenchEnv(b, "")
	c, err := dbcache.New(context.Background(), env.pool, &dbcache.Config{CoalesceIncrs: benchCoalesceSets(), FastCommit: true, OpTimeout: benchOpTimeout})
	if err != nil {
		b.Fatal(err)
	}
	incrSQL := dbcache.Statements(c)["incr"]
	op := benchOp{"incr",
		func(ctx context.Context, i int) error {
			_, err := c.Incr(ctx, "c"+strconv.Itoa(i%benchCounters), 1)
			return err
		},
		func(ctx context.Context, i int) error {
			var v []byte
			return env.pool.QueryRow(ctx, incrSQL, ":1:c"+strconv.Itoa(i%benchCounters), "1", int64(i)).Scan(&v)
		},
	}
	for _, g := range []int{1, 16} {
		b.Run(fmt.Sprintf("fast=true/g=%d", g), func(b *testing.B) { env.runPair(b, g, op) })
	}
}

// BenchmarkCoalesceWritesDefault is Set and Incr with FastCommit at the
// default write coalescing beside the same with coalescing off
// (CoalesceSets and CoalesceIncrs -1), in alternating blocks, at 1 and 16
// goroutines: x-raw is off's time ÷ the default's, so above 1 the default
// is faster; at 1 goroutine it is what a lone writer pays for the
// coalescer's bookkeeping.
//
//	go test -run '^$' -bench CoalesceWritesDefault -benchtime 20000x ./dbcache/
func BenchmarkCoalesceWritesDefault(b *testing.B) {
	env := newBenchEnv(b, "")
	def, err := dbcache.New(context.Background(), env.pool, &dbcache.Config{FastCommit: true, OpTimeout: benchOpTimeout})
	if err != nil {
		b.Fatal(err)
	}
	off, err := dbcache.New(context.Background(), env.pool, &dbcache.Config{FastCommit: true, CoalesceSets: -1, CoalesceIncrs: -1, OpTimeout: benchOpTimeout})
	if err != nil {
		b.Fatal(err)
	}
	n := len(env.keys)
	set := func(c *dbcache.Cache) func(ctx context.Context, i int) error {
		return func(ctx context.Context, i int) error {
			return c.Set(ctx, env.keys[i%n], env.value, dbcache.DefaultTimeout)
		}
	}
	incr := func(c *dbcache.Cache) func(ctx context.Context, i int) error {
		return func(ctx context.Context, i int) error {
			_, err := c.Incr(ctx, "c"+strconv.Itoa(i%benchCounters), 1)
			return err
		}
	}
	for _, op := range []benchOp{{"set", set(def), set(off)}, {"incr", incr(def), incr(off)}} {
		for _, g := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/g=%d", op.name, g), func(b *testing.B) { env.runPair(b, g, op) })
		}
	}
}

// benchCoalesceSets is the slot count BenchmarkCoalesceSets and
// BenchmarkCoalesceIncrs measure:
// DBCACHE_BENCH_COALESCE_SETS, default 4.
func benchCoalesceSets() int {
	if n, err := strconv.Atoi(os.Getenv("DBCACHE_BENCH_COALESCE_SETS")); err == nil {
		return n
	}
	return 4
}

// BenchmarkCoalesceGetsDefault is Get with the default configuration
// (coalescing at the smaller of the pool's MaxConns and max(4, NumCPU))
// beside Get with coalescing off, on a pool of 16 and of 4, at 1, 4, 8, 16
// and 64 goroutines: x-raw is off's time ÷
// the default's, so above 1 the default is faster. At 1 goroutine it is the
// cost a lone caller pays for the coalescer's bookkeeping (target: at most
// 3%).
//
//	go test -run '^$' -bench CoalesceGetsDefault -benchtime 20000x ./dbcache/
func BenchmarkCoalesceGetsDefault(b *testing.B) {
	for _, conns := range []int32{16, 4} {
		env := newBenchEnv(b, "")
		pc := env.pool.Config()
		pc.MaxConns = conns
		pool, err := pgxpool.NewWithConfig(context.Background(), pc)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(pool.Close)
		def, err := dbcache.New(context.Background(), pool, &dbcache.Config{OpTimeout: benchOpTimeout})
		if err != nil {
			b.Fatal(err)
		}
		off, err := dbcache.New(context.Background(), pool, &dbcache.Config{CoalesceGets: -1, OpTimeout: benchOpTimeout})
		if err != nil {
			b.Fatal(err)
		}
		n := len(env.keys)
		op := benchOp{"get_hit",
			func(ctx context.Context, i int) error { _, err := def.Get(ctx, env.keys[i%n]); return err },
			func(ctx context.Context, i int) error { _, err := off.Get(ctx, env.keys[i%n]); return err },
		}
		for _, g := range []int{1, 4, 8, 16, 64} {
			b.Run(fmt.Sprintf("conns=%d/g=%d", conns, g), func(b *testing.B) { env.runPair(b, g, op) })
		}
	}
}
