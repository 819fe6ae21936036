package sharded_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/benchpair"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/migrations"
	"github.com/dbcache/dbcache/sharded"
)

const (
	benchKeys  = 10_000 // preloaded entries (1,000 with -short)
	benchBatch = 100    // keys per get_many / set_many
)

// benchOps are the operations both benchmarks run, over any Store.
type benchOp struct {
	name string
	g    []int // goroutines
	op   func(s dbcache.Store, keys []string, batches [][]string, items []map[string][]byte) benchpair.Op
}

var benchOps = []benchOp{
	{"get_hit", []int{1, 16}, func(s dbcache.Store, keys []string, _ [][]string, _ []map[string][]byte) benchpair.Op {
		return func(ctx context.Context, i int) error { _, err := s.Get(ctx, keys[i%len(keys)]); return err }
	}},
	{"set", []int{1, 16}, func(s dbcache.Store, keys []string, _ [][]string, _ []map[string][]byte) benchpair.Op {
		value := []byte(strings.Repeat("v", 100))
		return func(ctx context.Context, i int) error {
			return s.Set(ctx, keys[i%len(keys)], value, dbcache.DefaultTimeout)
		}
	}},
	{"get_many_100", []int{1, 4}, func(s dbcache.Store, _ []string, batches [][]string, _ []map[string][]byte) benchpair.Op {
		return func(ctx context.Context, i int) error {
			m, err := s.GetMany(ctx, batches[i%len(batches)])
			if err == nil && len(m) != benchBatch {
				err = fmt.Errorf("get_many: %d hits", len(m))
			}
			return err
		}
	}},
	{"set_many_100", []int{1, 4}, func(s dbcache.Store, _ []string, _ [][]string, items []map[string][]byte) benchpair.Op {
		return func(ctx context.Context, i int) error {
			_, err := s.SetMany(ctx, items[i%len(items)], dbcache.DefaultTimeout)
			return err
		}
	}},
}

// benchData makes the keys, get_many batches and set_many items, and
// preloads every key through store.
func benchData(b *testing.B, store dbcache.Store) ([]string, [][]string, []map[string][]byte) {
	n := benchKeys
	if testing.Short() {
		n = 1_000
	}
	keys := make([]string, n)
	value := []byte(strings.Repeat("v", 100))
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
	}
	batches := make([][]string, 64)
	items := make([]map[string][]byte, 64)
	for j := range batches {
		items[j] = map[string][]byte{}
		for x := range benchBatch {
			k := keys[(j*benchBatch+x)%n]
			batches[j] = append(batches[j], k)
			items[j][k] = value
		}
	}
	for start := 0; start < n; start += 1000 {
		chunk := map[string][]byte{}
		for _, k := range keys[start:min(start+1000, n)] {
			chunk[k] = value
		}
		if _, err := store.SetMany(context.Background(), chunk, dbcache.Forever); err != nil {
			b.Fatal(err)
		}
	}
	return keys, batches, items
}

func reportLoad(b *testing.B) {
	if l, ok := benchpair.LoadAverage(); ok {
		b.ReportMetric(l, "load1")
	}
}

// BenchmarkRouting is the cost of the sharded layer: a sharded cache of
// one shard beside the single cache it wraps, on one pool, alternating in
// blocks (internal/benchpair). x-single is the single cache's wall time ÷
// the sharded one's: the sharded cache's speed as a fraction of the single
// cache's (target ≥ 0.95); cpu-ns/op and single-cpu-ns/op the client's CPU
// per operation on each side; load1 the machine's load average.
//
//	go test -run '^$' -bench Routing -benchtime 2000x ./sharded/
func BenchmarkRouting(b *testing.B) {
	ctx := context.Background()
	s := dbtest.NewSchema(b)
	s.Migrate(b)
	cfg := s.PoolConfig(b)
	cfg.MaxConns = 16
	pool := dbtest.NewPool(b, cfg)
	single, err := dbcache.New(ctx, pool, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer single.Close()
	one, err := sharded.New(ctx, []sharded.Shard{{Name: "only", Cache: single}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer one.Close()
	keys, batches, items := benchData(b, single)
	for _, op := range benchOps {
		for _, g := range op.g {
			b.Run(fmt.Sprintf("%s/g=%d", op.name, g), func(b *testing.B) {
				r := benchpair.Run(b, g, op.op(one, keys, batches, items), op.op(single, keys, batches, items))
				r.Report(b, "single")
				reportLoad(b)
			})
		}
	}
}

// BenchmarkScale is the sharded cache's throughput over 1, 2 and 3
// servers, reported as ops/s beside the load average. The servers are the
// migrated databases in DBCACHE_BENCH_SHARD_URLS (comma-separated DSNs),
// else three schemas on the test server: then every shard shares one
// server and the figures show the client's cost of spreading, not what
// more servers give. docs/scale-out.md says what the figures on one
// machine can and cannot show.
//
//	DBCACHE_BENCH_SHARD_URLS=postgres://…:5560/db,postgres://…:5561/db,postgres://…:5562/db \
//	  go test -run '^$' -bench Scale -benchtime 5s ./sharded/
func BenchmarkScale(b *testing.B) {
	ctx := context.Background()
	var pools []*pgxpool.Pool
	if urls := os.Getenv("DBCACHE_BENCH_SHARD_URLS"); urls != "" {
		for _, u := range strings.Split(urls, ",") {
			cfg, err := pgxpool.ParseConfig(strings.TrimSpace(u))
			if err != nil {
				b.Fatal(err)
			}
			cfg.MaxConns = 16
			pool := dbtest.NewPool(b, cfg)
			m, err := migrations.New(pool, nil)
			if err != nil {
				b.Fatal(err)
			}
			if err := m.Up(ctx); err != nil {
				b.Fatal(err)
			}
			dbtest.Exec(b, pool, `TRUNCATE dbcache_entries`)
			pools = append(pools, pool)
		}
	} else {
		for range 3 {
			s := dbtest.NewSchema(b)
			s.Migrate(b)
			cfg := s.PoolConfig(b)
			cfg.MaxConns = 16
			pools = append(pools, dbtest.NewPool(b, cfg))
		}
	}
	for n := 1; n <= len(pools); n++ {
		var shards []sharded.Shard
		for i := range n {
			shards = append(shards, sharded.Shard{Name: fmt.Sprintf("s%d", i+1), Pool: pools[i]})
		}
		c, err := sharded.New(ctx, shards, &sharded.Config{Cache: &dbcache.Config{KeyPrefix: fmt.Sprintf("n%d", n)}})
		if err != nil {
			b.Fatal(err)
		}
		keys, batches, items := benchData(b, c)
		for _, op := range benchOps {
			g := op.g[len(op.g)-1]
			b.Run(fmt.Sprintf("%s/g=%d/servers=%d", op.name, g, n), func(b *testing.B) {
				run := op.op(c, keys, batches, items)
				start := time.Now()
				if err := runParallel(ctx, b.N, g, run); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
				reportLoad(b)
			})
		}
		_ = c.Close()
	}
}

// runParallel runs n calls of op on g goroutines.
func runParallel(ctx context.Context, n, g int, op benchpair.Op) error {
	var left, seq atomic.Int64
	left.Store(int64(n))
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
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
	if err := failed.Load(); err != nil {
		return errors.Join(*err)
	}
	return nil
}
