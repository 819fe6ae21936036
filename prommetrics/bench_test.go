package prommetrics_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/benchpair"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/prommetrics"
)

// BenchmarkOverhead runs each operation on two caches over one pool, one
// with the Prometheus collector as its Tracer and one with no Tracer,
// alternating in blocks (internal/benchpair), and reports:
//
//	ns/op, cpu-ns/op          with the collector: wall and client CPU per op
//	off-ns/op, off-cpu-ns/op  without a Tracer
//	x-off                     off-ns/op ÷ ns/op: the speed with metrics as a
//	                          fraction of the speed without (target ≥ 0.95)
//
//	go test -run '^$' -bench Overhead -benchtime 4000x ./prommetrics/
func BenchmarkOverhead(b *testing.B) {
	ctx := context.Background()
	s := dbtest.NewSchema(b)
	s.Migrate(b)
	cfg := s.PoolConfig(b)
	cfg.MaxConns = 16
	pool := dbtest.NewPool(b, cfg)
	m, err := prommetrics.New(nil)
	if err != nil {
		b.Fatal(err)
	}
	prometheus.NewRegistry().MustRegister(m)
	on, err := dbcache.New(ctx, pool, &dbcache.Config{Tracer: m})
	if err != nil {
		b.Fatal(err)
	}
	defer on.Close()
	off, err := dbcache.New(ctx, pool, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer off.Close()
	n := 10_000
	if testing.Short() {
		n = 1_000
	}
	value := make([]byte, 100)
	dbtest.Exec(b, pool, `INSERT INTO dbcache_entries (key, value, expires)
SELECT ':1:k' || i, $1::bytea, now() + interval '1 day' FROM generate_series(0, $2 - 1) AS i`, value, n)
	dbtest.Exec(b, pool, `ANALYZE dbcache_entries`)
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
	}
	batches := make([][]string, 64)
	for j := range batches {
		for x := range 100 {
			batches[j] = append(batches[j], keys[(j*100+x)%n])
		}
	}
	ops := []struct {
		name string
		op   func(c *dbcache.Cache) benchpair.Op
	}{
		{"get_hit", func(c *dbcache.Cache) benchpair.Op {
			return func(ctx context.Context, i int) error { _, err := c.Get(ctx, keys[i%n]); return err }
		}},
		{"get_miss", func(c *dbcache.Cache) benchpair.Op {
			return func(ctx context.Context, i int) error {
				_, err := c.Get(ctx, "miss"+strconv.Itoa(i))
				if errors.Is(err, dbcache.ErrMiss) {
					return nil
				}
				return fmt.Errorf("want a miss: %w", err)
			}
		}},
		{"set", func(c *dbcache.Cache) benchpair.Op {
			return func(ctx context.Context, i int) error {
				return c.Set(ctx, keys[i%n], value, dbcache.ExpiresIn(time.Hour))
			}
		}},
		{"get_many_100", func(c *dbcache.Cache) benchpair.Op {
			return func(ctx context.Context, i int) error { _, err := c.GetMany(ctx, batches[i%len(batches)]); return err }
		}},
	}
	for _, op := range ops {
		for _, g := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/g=%d", op.name, g), func(b *testing.B) {
				r := benchpair.Run(b, g, op.op(on), op.op(off))
				r.Report(b, "off")
				if l, ok := benchpair.LoadAverage(); ok {
					b.ReportMetric(l, "load1")
				}
			})
		}
	}
}

// BenchmarkTraceOpEnd is the collector's own cost per operation, without a
// database: what TraceOpStart and TraceOpEnd add to each call.
func BenchmarkTraceOpEnd(b *testing.B) {
	m, err := prommetrics.New(nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	e := dbcache.OpEnd{OpStart: dbcache.OpStart{Op: dbcache.OpGet, Keys: 1}, Hits: 1, Duration: 300 * time.Microsecond}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.TraceOpEnd(m.TraceOpStart(ctx, e.OpStart), e)
		}
	})
}
