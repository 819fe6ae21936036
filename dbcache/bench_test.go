package dbcache_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/benchpair"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// BenchmarkOps measures each operation beside a raw pgx baseline that runs
// the very same SQL (dbcache.Statements) with keys made in advance: the
// difference is everything dbcache adds (key making and validation, error
// mapping, result handling). The two run in the same benchmark, alternating
// in blocks of benchpair.Block operations with the order swapped every block, so
// load from anything else on the machine lands on both alike.
//
// Each result line reads:
//
//	BenchmarkOps/get_hit/g=16-2  20000  61234 ns/op  60012 raw-ns/op  0.980 x-raw
//
// ns/op is dbcache's wall time per operation (with g goroutines, so 1/ops/s),
// raw-ns/op the baseline's, and x-raw is raw-ns/op ÷ ns/op: dbcache's speed
// as a fraction of raw pgx (the target is ≥ 0.9 for single-key operations).
// cpu-ns/op and raw-cpu-ns/op are the client process's CPU time per
// operation on each side: the overhead dbcache adds, far less moved by
// other load on the machine than wall time.
//
// For dbcache beside Redis, value sizes, 1M-row tables and latency
// percentiles, see bench/ (docs/performance.md).
func BenchmarkOps(b *testing.B) {
	env := newBenchEnv(b, "")
	for _, op := range env.ops() {
		for _, g := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/g=%d", op.name, g), func(b *testing.B) {
				env.runPair(b, g, op)
			})
		}
	}
}

// BenchmarkOpsRepeatableRead is BenchmarkOps with the cache's sessions
// defaulting to repeatable read (default_transaction_isolation), where every
// write runs as BEGIN ISOLATION LEVEL READ COMMITTED; statement; COMMIT in
// one round trip. The raw baseline runs the bare statement on a READ
// COMMITTED pool, so x-raw is the whole cost of keeping the semantics at
// that setting. Reads are never wrapped.
func BenchmarkOpsRepeatableRead(b *testing.B) {
	env := newBenchEnv(b, "repeatable read")
	for _, op := range env.ops() {
		if op.name == "get_hit" || op.name == "get_miss" || op.name == "get_many_100" {
			continue
		}
		for _, g := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/g=%d", op.name, g), func(b *testing.B) {
				env.runPair(b, g, op)
			})
		}
	}
}

const (
	benchKeys      = 10_000 // preloaded entries (testing.Short: benchKeysShort)
	benchKeysShort = 1_000
	benchCounters  = 1_000
	benchValue     = 100 // bytes
	benchBatch     = 100 // keys per get_many / set_many
)

type benchEnv struct {
	pool  *pgxpool.Pool
	cache *dbcache.Cache
	stmts map[string]string
	keys  []string // caller keys
	made  []string // the same keys, made (":1:k")
	value []byte
	ttl   int64 // DefaultTimeout in microseconds, as the cache binds it
	seq   atomic.Int64
}

type benchOp struct {
	name string
	// cache and raw run operation i (i counts up from 0 on each side).
	cache, raw func(ctx context.Context, i int) error
}

// newBenchEnv preloads a schema; with isolation set, the cache's own pool
// has that default_transaction_isolation (the raw side's never does).
func newBenchEnv(b *testing.B, isolation string) *benchEnv {
	b.Helper()
	s := dbtest.NewSchema(b)
	s.Migrate(b)
	cfg := s.PoolConfig(b)
	// One connection per goroutine at the highest concurrency measured, so
	// neither side waits for a connection.
	cfg.MaxConns = 16
	pool := dbtest.NewPool(b, cfg)
	cachePool := pool
	if isolation != "" {
		cc := s.PoolConfig(b)
		cc.MaxConns = 16
		cc.ConnConfig.RuntimeParams["default_transaction_isolation"] = isolation
		cachePool = dbtest.NewPool(b, cc)
	}
	cache, err := dbcache.New(context.Background(), cachePool, &dbcache.Config{OpTimeout: benchOpTimeout})
	if err != nil {
		b.Fatal(err)
	}
	n := benchKeys
	if testing.Short() {
		n = benchKeysShort
	}
	e := &benchEnv{pool: pool, cache: cache, stmts: dbcache.Statements(cache), value: make([]byte, benchValue),
		ttl: dbcache.DefaultTimeoutDefault.Microseconds()}
	for i := range e.value {
		e.value[i] = byte('a' + i%26)
	}
	for i := range n {
		k := "k" + strconv.Itoa(i)
		e.keys = append(e.keys, k)
		e.made = append(e.made, cache.MakeKey(k))
	}
	// Preload in SQL: n entries with 100-byte values, and the counters.
	dbtest.Exec(b, pool, `INSERT INTO dbcache_entries (key, value, expires)
SELECT ':1:k' || i, $1::bytea, now() + interval '1 day' FROM generate_series(0, $2 - 1) AS i`, e.value, n)
	dbtest.Exec(b, pool, `INSERT INTO dbcache_entries (key, value, expires)
SELECT ':1:c' || i, '0', NULL FROM generate_series(0, $1 - 1) AS i`, benchCounters)
	dbtest.Exec(b, pool, `ANALYZE dbcache_entries`)
	return e
}

func (e *benchEnv) ops() []benchOp {
	n := len(e.keys)
	stmt := e.stmts
	scanBytes := func(row pgx.Row) error {
		var v []byte
		return row.Scan(&v)
	}
	// Batches are built in advance: making the caller's map is the caller's
	// work, not the cache's.
	const batches = 64
	manyKeys := make([][]string, batches)
	manyMade := make([][]string, batches)
	manyItems := make([]map[string][]byte, batches)
	manyValues := make([][][]byte, batches)
	for j := range batches {
		manyItems[j] = make(map[string][]byte, benchBatch)
		for x := range benchBatch {
			i := (j*benchBatch + x) % n
			manyKeys[j] = append(manyKeys[j], e.keys[i])
			manyMade[j] = append(manyMade[j], e.made[i])
			manyItems[j][e.keys[i]] = e.value
			manyValues[j] = append(manyValues[j], e.value)
		}
	}
	// set_many's raw side binds sorted keys, as the cache does.
	for j := range batches {
		sorted := append([]string(nil), manyMade[j]...)
		slices.Sort(sorted)
		manyMade[j] = sorted
	}
	counter := func(i int) int { return i % benchCounters }
	return []benchOp{
		{"get_hit",
			func(ctx context.Context, i int) error { _, err := e.cache.Get(ctx, e.keys[i%n]); return err },
			func(ctx context.Context, i int) error {
				return scanBytes(e.pool.QueryRow(ctx, stmt["get"], e.made[i%n]))
			}},
		{"get_miss",
			func(ctx context.Context, i int) error {
				_, err := e.cache.Get(ctx, "miss"+strconv.Itoa(i))
				if errors.Is(err, dbcache.ErrMiss) {
					return nil
				}
				return fmt.Errorf("want a miss: %w", err)
			},
			func(ctx context.Context, i int) error {
				err := scanBytes(e.pool.QueryRow(ctx, stmt["get"], ":1:miss"+strconv.Itoa(i)))
				if errors.Is(err, pgx.ErrNoRows) {
					return nil
				}
				return fmt.Errorf("want a miss: %w", err)
			}},
		{"set",
			func(ctx context.Context, i int) error {
				return e.cache.Set(ctx, e.keys[i%n], e.value, dbcache.DefaultTimeout)
			},
			func(ctx context.Context, i int) error {
				_, err := e.pool.Exec(ctx, stmt["set"], e.made[i%n], e.value, e.ttl)
				return err
			}},
		{"add", // a new key each time: the path that writes
			func(ctx context.Context, i int) error {
				ok, err := e.cache.Add(ctx, "add"+strconv.FormatInt(e.seq.Add(1), 10), e.value, dbcache.DefaultTimeout)
				if err == nil && !ok {
					err = errors.New("add of a new key did not store")
				}
				return err
			},
			func(ctx context.Context, i int) error {
				var ok bool
				return e.pool.QueryRow(ctx, stmt["add"], ":1:add"+strconv.FormatInt(e.seq.Add(1), 10), e.value, e.ttl).Scan(&ok)
			}},
		{"touch",
			func(ctx context.Context, i int) error {
				ok, err := e.cache.Touch(ctx, e.keys[i%n], dbcache.DefaultTimeout)
				if err == nil && !ok {
					err = errors.New("touch missed")
				}
				return err
			},
			func(ctx context.Context, i int) error {
				_, err := e.pool.Exec(ctx, stmt["touch"], e.made[i%n], e.ttl)
				return err
			}},
		{"incr",
			func(ctx context.Context, i int) error {
				_, err := e.cache.Incr(ctx, "c"+strconv.Itoa(counter(i)), 1)
				return err
			},
			func(ctx context.Context, i int) error {
				var v []byte
				if err := e.pool.QueryRow(ctx, stmt["incr"], ":1:c"+strconv.Itoa(counter(i)), "1", int64(i)).Scan(&v); err != nil {
					return err
				}
				_, err := strconv.ParseInt(string(v), 10, 64)
				return err
			}},
		{"get_many_100",
			func(ctx context.Context, i int) error {
				m, err := e.cache.GetMany(ctx, manyKeys[i%batches])
				if err == nil && len(m) != benchBatch {
					err = fmt.Errorf("get_many: %d hits", len(m))
				}
				return err
			},
			func(ctx context.Context, i int) error {
				rows, err := e.pool.Query(ctx, stmt["get_many"], manyMade[i%batches])
				if err != nil {
					return err
				}
				m := make(map[string][]byte, benchBatch)
				var k string
				var v []byte
				_, err = pgx.ForEachRow(rows, []any{&k, &v}, func() error { m[k] = v; return nil })
				return err
			}},
		{"set_many_100",
			func(ctx context.Context, i int) error {
				_, err := e.cache.SetMany(ctx, manyItems[i%batches], dbcache.DefaultTimeout)
				return err
			},
			func(ctx context.Context, i int) error {
				_, err := e.pool.Exec(ctx, stmt["set_many"], manyMade[i%batches], manyValues[i%batches], e.ttl)
				return err
			}},
	}
}

// runPair runs b.N operations on each side with g goroutines, alternating
// sides block by block (benchpair), and reports both sides' wall and
// client CPU time per operation and their ratio, x-raw.
func (e *benchEnv) runPair(b *testing.B, g int, op benchOp) {
	benchpair.Run(b, g, op.cache, op.raw).Report(b, "raw")
}

// benchOpTimeout is Config.OpTimeout for the benchmarks: the default, or
// off with DBCACHE_BENCH_NO_OPTIMEOUT=1, to measure what the bound costs.
var benchOpTimeout = func() time.Duration {
	if os.Getenv("DBCACHE_BENCH_NO_OPTIMEOUT") != "" {
		return -1
	}
	return 0
}()
