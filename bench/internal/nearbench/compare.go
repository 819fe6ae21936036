package nearbench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/quantile"
	"github.com/dbcache/dbcache/nearcache"
)

// The hot-key comparison: G goroutines, each choosing a key by Zipf (s
// over Keys keys) and a get (ReadPercent) or a set of it, on every system
// in turn, interleaved. Every key exists before the run, so every get of
// every system finds its key.
//
// What is reported for each system: the whole mix's ops/s; get throughput,
// gets per second of the goroutines' time spent in gets (the sets' time,
// measured around each set, taken out); p50 and p99 get latency (every
// 64th get timed); and, for the near cache, its hit ratio.

// system is one store under test.
type system struct {
	name  string
	get   func(ctx context.Context, key string) error
	set   func(ctx context.Context, key string, v []byte) error
	stats func() string
	// finish, when set, runs at the end of each of the system's cells,
	// inside its wall time: the write-behind near cache commits what it
	// queued, so that no cell leaves work to the next system's.
	finish func(ctx context.Context) error
}

type cellStats struct {
	ops, gets      int64
	wall, getsTime time.Duration // getsTime: summed over goroutines
	samples        []time.Duration
	// mixRounds is each round's mix ops/s.
	mixRounds []float64
}

// Compare runs the comparison and prints its table.
func Compare(ctx context.Context, o *Options) error {
	e, err := newEnv(ctx, o, "cmp")
	if err != nil {
		return err
	}
	defer e.close()
	if err := e.fill(ctx, o.Keys, o.ValueSize); err != nil {
		return err
	}
	pool, err := e.pool(ctx, o.MaxConns)
	if err != nil {
		return err
	}
	defer pool.Close()
	plain, err := dbcache.New(ctx, pool, &dbcache.Config{KeyCheck: dbcache.KeyCheckOff})
	if err != nil {
		return err
	}
	fast, err := dbcache.New(ctx, pool, &dbcache.Config{KeyCheck: dbcache.KeyCheckOff, FastCommit: true})
	if err != nil {
		return err
	}
	near, err := nearcache.New(ctx, plain, pool, nil)
	if err != nil {
		return err
	}
	defer near.Close()
	nearFast, err := nearcache.New(ctx, fast, pool, nil)
	if err != nil {
		return err
	}
	defer nearFast.Close()
	nearWB, err := nearcache.New(ctx, plain, pool, &nearcache.Config{WriteBehind: &nearcache.WriteBehind{}})
	if err != nil {
		return err
	}
	defer nearWB.Close()
	ttl := dbcache.ExpiresIn(24 * time.Hour)
	wb := nearSystem("near cache, write-behind", nearWB, ttl)
	wb.finish = nearWB.Flush
	systems := []system{
		{name: "dbcache", get: func(ctx context.Context, k string) error { _, err := plain.Get(ctx, k); return err },
			set: func(ctx context.Context, k string, v []byte) error { return plain.Set(ctx, k, v, ttl) }},
		nearSystem("near cache", near, ttl),
		nearSystem("near cache, FastCommit writes", nearFast, ttl),
		wb,
	}
	if o.RedisAddr != "" {
		rs, closeRedis, err := redisSystems(ctx, o)
		if err != nil {
			o.logf("redis at %s: %v: leaving Redis and rueidis out", o.RedisAddr, err)
		} else {
			defer closeRedis()
			systems = append(systems, rs...)
		}
	}
	value := []byte(strings.Repeat("v", o.ValueSize))
	fmt.Fprintf(o.Out, "### Hot-key reads\n\nZipf s=%.1f over %d keys, %d%% gets and %d%% sets of %d-byte values; %s per system per cell in %d interleaved rounds; pgx pool of %d connections. Gets/s is gets per second of the goroutines' time in gets (the sets' time taken out); mix is every operation per second of wall time (for write-behind, the wall time includes committing what the cell queued); mix ÷ rueidis is the median of the rounds' ratios, each round's systems run back to back.\n\n",
		o.ZipfS, o.Keys, o.ReadPercent, 100-o.ReadPercent, o.ValueSize, o.Duration, o.Rounds, o.MaxConns)
	fmt.Fprintln(o.Out, "| goroutines | system | gets/s | get p50 | get p99 | mix ops/s | mix ÷ rueidis (median of rounds) | ÷ redis (gets/s) | ÷ rueidis (gets/s) | near hit ratio | load avg |")
	fmt.Fprintln(o.Out, "|---|---|---|---|---|---|---|---|---|---|---|")
	// The steady state is measured: every system reads every key once
	// first (the near cache and rueidis fill their local caches, whose
	// budget holds them all), so no figure counts a cold start's misses.
	for _, s := range systems {
		o.logf("warm-up: %s", s.name)
		if err := warm(ctx, s, o.Keys); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	for _, g := range o.Concurrency {
		// Every system's connections open.
		for _, s := range systems {
			if _, err := runCell(ctx, o, s, g, 200*time.Millisecond, 99, value); err != nil {
				return err
			}
			if s.stats != nil {
				s.stats() // the hit ratio counts from here
			}
		}
		res := map[string]*cellStats{}
		rounds := max(o.Rounds, 1)
		for round := range rounds {
			order := slices.Clone(systems)
			for i := range order {
				s := order[(i+round)%len(order)]
				o.logf("g=%d round %d: %s", g, round, s.name)
				r, err := runCell(ctx, o, s, g, o.Duration/time.Duration(rounds), uint64(round), value)
				if err != nil {
					return fmt.Errorf("%s: %w", s.name, err)
				}
				acc := res[s.name]
				if acc == nil {
					acc = &cellStats{}
					res[s.name] = acc
				}
				acc.ops += r.ops
				acc.gets += r.gets
				acc.wall += r.wall
				acc.getsTime += r.getsTime
				acc.samples = append(acc.samples, r.samples...)
				acc.mixRounds = append(acc.mixRounds, float64(r.ops)/r.wall.Seconds())
			}
		}
		rate := func(name string) float64 {
			r := res[name]
			if r == nil || r.getsTime <= 0 {
				return 0
			}
			return float64(r.gets) / r.getsTime.Seconds() * float64(g)
		}
		for _, s := range systems {
			r := res[s.name]
			p50, p99 := quantile.Percentile(r.samples, 50), quantile.Percentile(r.samples, 99)
			ratio := func(other string) string {
				if rate(other) == 0 {
					return "–"
				}
				return fmt.Sprintf("%.1f×", rate(s.name)/rate(other))
			}
			mixRatio := "–"
			if rr := res["rueidis client-side caching"]; rr != nil && len(rr.mixRounds) == len(r.mixRounds) {
				ratios := make([]float64, len(r.mixRounds))
				for i := range ratios {
					ratios[i] = r.mixRounds[i] / rr.mixRounds[i]
				}
				slices.Sort(ratios)
				mixRatio = fmt.Sprintf("%.2f× (%.2f–%.2f)", median(ratios), ratios[0], ratios[len(ratios)-1])
			}
			hit := "–"
			if s.stats != nil {
				hit = s.stats()
			}
			fmt.Fprintf(o.Out, "| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", g, s.name, fmtRate(rate(s.name)), fmtDur(p50), fmtDur(p99),
				fmtRate(float64(r.ops)/r.wall.Seconds()), mixRatio, ratio("redis"), ratio("rueidis client-side caching"), hit, load())
		}
	}
	fmt.Fprintln(o.Out)
	return nil
}

// warm reads every key once, on 16 goroutines.
func warm(ctx context.Context, s system, keys int) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var bad atomic.Pointer[error]
	for range 16 {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(keys); i = next.Add(1) - 1 {
				if err := s.get(ctx, "key"+strconv.FormatInt(i, 10)); err != nil {
					bad.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := bad.Load(); err != nil {
		return *err
	}
	return nil
}

func nearSystem(name string, c *nearcache.Cache, ttl dbcache.Timeout) system {
	var last nearcache.Stats
	return system{
		name: name,
		get:  func(ctx context.Context, k string) error { _, err := c.Get(ctx, k); return err },
		set:  func(ctx context.Context, k string, v []byte) error { return c.Set(ctx, k, v, ttl) },
		stats: func() string {
			s := c.Stats()
			h, m, by := s.Hits-last.Hits, s.Misses-last.Misses, s.Bypassed-last.Bypassed
			ref, unseen := s.FillsRefused-last.FillsRefused, s.FillsUnseen-last.FillsUnseen
			queued, batches, lost := s.WritesQueued-last.WritesQueued, s.WriteBatches-last.WriteBatches, s.WritesLost-last.WritesLost
			committed := s.WritesCommitted - last.WritesCommitted
			last = s
			if h+m == 0 {
				return "–"
			}
			out := fmt.Sprintf("%.3f (%.3f bypassed; fills refused %.3f, unseen %.3f)", float64(h)/float64(h+m), float64(by)/float64(h+m),
				float64(ref)/float64(h+m), float64(unseen)/float64(h+m))
			if queued > 0 {
				out += fmt.Sprintf("; %d sets queued, %d rows committed in %d batches, %d lost", queued, committed, batches, lost)
			}
			return out
		},
	}
}

// redisSystems returns Redis through go-redis, and through rueidis with
// client-side caching (RESP3 tracking: reads cached in process, dropped on
// the server's invalidation), both filled with the same keys.
func redisSystems(ctx context.Context, o *Options) ([]system, func(), error) {
	rdb := redis.NewClient(&redis.Options{Addr: o.RedisAddr, DB: o.RedisDB, PoolSize: 64})
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		_ = rdb.Close()
		return nil, nil, err
	}
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		_ = rdb.Close()
		return nil, nil, err
	}
	v := strings.Repeat("v", o.ValueSize)
	for start := 0; start < o.Keys; start += 1000 {
		if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := start; i < min(start+1000, o.Keys); i++ {
				p.Set(ctx, "key"+strconv.Itoa(i), v, 24*time.Hour)
			}
			return nil
		}); err != nil {
			_ = rdb.Close()
			return nil, nil, err
		}
	}
	rc, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress: []string{o.RedisAddr},
		SelectDB:    o.RedisDB,
		// The near cache's default budget.
		CacheSizeEachConn: nearcache.MaxBytesDefault,
	})
	if err != nil {
		_ = rdb.Close()
		return nil, nil, err
	}
	closeAll := func() { rc.Close(); _ = rdb.Close() }
	return []system{
		{name: "redis",
			get: func(ctx context.Context, k string) error { return rdb.Get(ctx, k).Err() },
			set: func(ctx context.Context, k string, v []byte) error { return rdb.Set(ctx, k, v, 24*time.Hour).Err() }},
		{name: "rueidis client-side caching",
			get: func(ctx context.Context, k string) error {
				return rc.DoCache(ctx, rc.B().Get().Key(k).Cache(), time.Minute).Error()
			},
			set: func(ctx context.Context, k string, v []byte) error {
				return rc.Do(ctx, rc.B().Set().Key(k).Value(rueidis.BinaryString(v)).Ex(24*time.Hour).Build()).Error()
			}},
	}, closeAll, nil
}

// median of sorted xs.
func median(xs []float64) float64 {
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

// setSeq numbers the sets' values.
var setSeq atomic.Uint64

// runCell runs s with g goroutines for d on the Zipf mix.
func runCell(ctx context.Context, o *Options, s system, g int, d time.Duration, seed uint64, value []byte) (*cellStats, error) {
	keys := make([]string, o.Keys)
	for i := range keys {
		keys[i] = "key" + strconv.Itoa(i)
	}
	var (
		mu  sync.Mutex
		out = &cellStats{}
		wg  sync.WaitGroup
		bad atomic.Pointer[error]
	)
	start := time.Now()
	deadline := start.Add(d)
	for w := range g {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(seed, uint64(w)))
			z := rand.NewZipf(r, o.ZipfS, 1, uint64(o.Keys-1))
			var ops, gets int64
			var setTime time.Duration
			var samples []time.Duration
			began := time.Now()
			for n := 0; ; n++ {
				// The clock is read every 64 operations: reading it
				// around every get would cost more than a near hit.
				if n%64 == 0 && time.Now().After(deadline) {
					break
				}
				k := keys[z.Uint64()]
				if r.IntN(100) < o.ReadPercent {
					var t0 time.Time
					timed := gets%64 == 0
					if timed {
						t0 = time.Now()
					}
					if err := s.get(ctx, k); err != nil {
						bad.CompareAndSwap(nil, &err)
						return
					}
					if timed {
						samples = append(samples, time.Since(t0))
					}
					gets++
				} else {
					// Each set writes a value of its own (its first bytes a
					// counter): a read and a write of one key that overlap
					// are then told apart, as in an application.
					v := append([]byte(nil), value...)
					if len(v) >= 8 {
						binary.BigEndian.PutUint64(v, setSeq.Add(1))
					}
					t0 := time.Now()
					if err := s.set(ctx, k, v); err != nil {
						bad.CompareAndSwap(nil, &err)
						return
					}
					setTime += time.Since(t0)
				}
				ops++
			}
			mine := time.Since(began)
			mu.Lock()
			out.ops += ops
			out.gets += gets
			out.getsTime += mine - setTime
			out.samples = append(out.samples, samples...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if s.finish != nil && bad.Load() == nil {
		if err := s.finish(ctx); err != nil {
			return nil, err
		}
	}
	out.wall = time.Since(start)
	if err := bad.Load(); err != nil {
		if errors.Is(*err, dbcache.ErrMiss) {
			return nil, fmt.Errorf("a get missed (the keys were not all filled): %w", *err)
		}
		return nil, *err
	}
	return out, nil
}
