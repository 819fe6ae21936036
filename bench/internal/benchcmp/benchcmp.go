// Package benchcmp measures dbcache beside raw pgx running the same SQL and
// beside Redis through go-redis, in one run on one machine, and runs the
// tuning experiments behind docs/performance.md. Run it with
// `go run ./bench` (see bench/main.go for the flags).
//
// Every comparison interleaves the systems: each cell (operation, goroutines,
// value size, table size) runs every system for Duration/Rounds in turn, the
// order rotating round by round, so background load on a shared machine lands
// on all of them alike. Compare ratios within one run, never absolute figures
// across runs.
//
// The package is internal and its API may change.
package benchcmp

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/loadgen"
	"github.com/dbcache/dbcache/internal/quantile"
	"github.com/dbcache/dbcache/migrations"
)

// Options configures a run.
type Options struct {
	// DSN is the PostgreSQL server. Each table size gets a fresh schema,
	// dropped at the end.
	DSN string
	// RedisAddr is the Redis server; "" or an unreachable one leaves Redis
	// out.
	RedisAddr string
	// RedisDB is the Redis database the run fills and flushes.
	RedisDB int
	// Tables are the table sizes (entries) to measure at.
	Tables []int
	// ValueSizes are the value sizes in bytes.
	ValueSizes []int
	// Concurrency are the goroutine counts.
	Concurrency []int
	// TuningSteps picks tuning experiments by name (spaces as dashes:
	// "durability", "group-commit"); empty runs them all.
	TuningSteps []string
	// Ops are the operations (AllOps when empty).
	Ops []string
	// Duration is each system's time per cell, split over Rounds.
	Duration time.Duration
	// Rounds is how many times the systems alternate within a cell.
	Rounds int
	// MaxConns is the pgx pool size.
	MaxConns int32
	// CoalesceGets is the Config.CoalesceGets of the coalescing cache.
	CoalesceGets int
	// CoalesceWrites is the CoalesceSets and CoalesceIncrs of the floor
	// writes' last column (4 when 0).
	CoalesceWrites int
	// Out receives the report (markdown); Log progress lines.
	Out io.Writer
	Log io.Writer
}

func (o *Options) logf(format string, args ...any) {
	if o.Log != nil {
		fmt.Fprintf(o.Log, format+"\n", args...)
	}
}

// cellResult is one system's figures for one cell, over every round.
type cellResult struct {
	requests, errors int64
	elapsed          time.Duration
	p50, p99         []time.Duration
	firstErr         string
}

func (r *cellResult) add(res *loadgen.OpResult, elapsed time.Duration, firstErr string) {
	r.requests += res.Requests
	r.errors += res.Errors
	r.elapsed += elapsed
	r.p50 = append(r.p50, res.P50)
	r.p99 = append(r.p99, res.P99)
	if r.firstErr == "" {
		r.firstErr = firstErr
	}
}

func (r *cellResult) opsPerSec() float64 {
	if r == nil || r.elapsed <= 0 {
		return 0
	}
	return float64(r.requests) / r.elapsed.Seconds()
}

// P50 and P99 are the median over rounds of each round's percentile.
func (r *cellResult) P50() time.Duration { return quantile.Percentile(r.p50, 50) }
func (r *cellResult) P99() time.Duration { return quantile.Percentile(r.p99, 50) }

// cell runs op on every system that has it, interleaved, and returns the
// figures by system name.
func cell(ctx context.Context, o *Options, systems []System, op string, lcfg loadgen.Config) (map[string]*cellResult, error) {
	out := map[string]*cellResult{}
	var have []System
	for _, s := range systems {
		if s.Ops[op] != nil {
			have = append(have, s)
		}
	}
	rounds := max(o.Rounds, 1)
	per := o.Duration / time.Duration(rounds)
	for round := range rounds {
		for i := range have {
			s := have[(i+round)%len(have)]
			c := lcfg
			c.Ops = []loadgen.Op{{Name: op, Run: s.Ops[op], Batch: op == OpGetMany || op == OpSetMany, Weight: 1}}
			c.Duration = per
			c.MaxErrors = 20
			c.Seed = uint64(round)
			res, err := loadgen.Run(ctx, &c)
			r := out[s.Name]
			if r == nil {
				r = &cellResult{}
				out[s.Name] = r
			}
			if res == nil {
				if err == nil {
					err = fmt.Errorf("no result")
				}
				r.firstErr = err.Error()
				continue
			}
			r.add(&res.Ops[0], res.Elapsed, res.FirstError)
		}
	}
	return out, nil
}

// Env is one schema with its table filled, and the systems over it.
type Env struct {
	Schema string
	Pool   *pgxpool.Pool
	admin  *pgxpool.Pool
}

// NewEnv makes a fresh migrated schema and a pool on it; mode, when not
// zero, is the pool's query exec mode.
func NewEnv(ctx context.Context, dsn, name string, maxConns int32, mode pgx.QueryExecMode) (*Env, error) {
	admin, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, err
	}
	schema := fmt.Sprintf("dbcache_bench_%s_%d", name, os.Getpid())
	if _, err := admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
		admin.Close()
		return nil, err
	}
	ccfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		admin.Close()
		return nil, err
	}
	m, err := migrations.NewFromConnConfig(ccfg, &migrations.Config{Schema: schema})
	if err != nil {
		admin.Close()
		return nil, err
	}
	if err := m.Up(ctx); err != nil {
		admin.Close()
		return nil, fmt.Errorf("migrate %s: %w", schema, err)
	}
	pool, err := PoolOn(ctx, dsn, schema, maxConns, mode)
	if err != nil {
		admin.Close()
		return nil, err
	}
	return &Env{Schema: schema, Pool: pool, admin: admin}, nil
}

// PoolOn opens a pool whose search_path is schema.
func PoolOn(ctx context.Context, dsn, schema string, maxConns int32, mode pgx.QueryExecMode) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = maxConns
	if schema != "" {
		cfg.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{schema}.Sanitize()
	}
	if mode != 0 {
		cfg.ConnConfig.DefaultQueryExecMode = mode
	}
	return pgxpool.NewWithConfig(ctx, cfg)
}

// Close drops the schema.
func (e *Env) Close() {
	e.Pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, _ = e.admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{e.Schema}.Sanitize()+" CASCADE")
	e.admin.Close()
}

// Exec runs sql on the env's pool.
func (e *Env) Exec(ctx context.Context, sql string, args ...any) error {
	_, err := e.Pool.Exec(ctx, sql, args...)
	return err
}

// Fill loads n entries with keys made from lcfg's key space (made as a
// Config{} cache makes them) and size-byte values expiring in a day, plus a
// counter "0" for each of the first counters keys and the hot counter.
func (e *Env) Fill(ctx context.Context, lcfg *loadgen.Config, n, size, counters int) error {
	if err := e.Exec(ctx, `TRUNCATE dbcache_entries`); err != nil {
		return err
	}
	prefix := madeKey(lcfg.KeyPrefix)
	if err := e.Exec(ctx, `INSERT INTO dbcache_entries (key, value, expires)
SELECT $1 || i, convert_to(repeat('v', $2), 'UTF8'), now() + interval '1 day' FROM generate_series(0, $3 - 1) AS i`, prefix, size, n); err != nil {
		return err
	}
	if err := e.Exec(ctx, `INSERT INTO dbcache_entries (key, value, expires)
SELECT $1 || i || $2, '0'::bytea, NULL::timestamptz FROM generate_series(0, $3 - 1) AS i UNION ALL SELECT $4, '0', NULL`,
		prefix, counterSufx, counters, madeKey(hotCounter)); err != nil {
		return err
	}
	return e.Exec(ctx, `VACUUM ANALYZE dbcache_entries`)
}

// Resize rewrites the values of the first n keys to size bytes.
func (e *Env) Resize(ctx context.Context, lcfg *loadgen.Config, n, size int) error {
	prefix := madeKey(lcfg.KeyPrefix)
	return e.Exec(ctx, `UPDATE dbcache_entries SET value = convert_to(repeat('v', $2), 'UTF8')
WHERE key = ANY (ARRAY(SELECT $1 || i FROM generate_series(0, $3 - 1) AS i))`, prefix, size, n)
}

// redisClient connects, or returns nil when Redis does not answer.
func redisClient(ctx context.Context, o *Options) *redis.Client {
	if o.RedisAddr == "" {
		return nil
	}
	rdb := redis.NewClient(&redis.Options{Addr: o.RedisAddr, DB: o.RedisDB, PoolSize: 64})
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		o.logf("redis at %s does not answer (%v): leaving it out", o.RedisAddr, err)
		_ = rdb.Close()
		return nil
	}
	return rdb
}

func redisFill(ctx context.Context, rdb *redis.Client, lcfg *loadgen.Config, n, size, counters int) error {
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		return err
	}
	return redisResize(ctx, rdb, lcfg, n, size, counters)
}

func redisResize(ctx context.Context, rdb *redis.Client, lcfg *loadgen.Config, n, size, counters int) error {
	v := strings.Repeat("v", size)
	for start := 0; start < max(n, counters); start += 1000 {
		_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := start; i < min(start+1000, max(n, counters)); i++ {
				if i < n {
					p.Set(ctx, lcfg.Key(i), v, 24*time.Hour)
				}
				if i < counters {
					p.Set(ctx, lcfg.Key(i)+counterSufx, "0", 0)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return rdb.Set(ctx, hotCounter, "0", 0).Err()
}

// Compare runs the main table: every operation on dbcache, raw pgx and
// Redis, plus dbcache with FastCommit (writes) and CoalesceGets (gets).
func Compare(ctx context.Context, o *Options) error {
	ops := o.Ops
	if len(ops) == 0 {
		ops = AllOps
	}
	rdb := redisClient(ctx, o)
	if rdb != nil {
		defer rdb.Close()
	}
	fmt.Fprintf(o.Out, "Each cell: ops/s, then p50 / p99 latency. %s per system per cell in %d interleaved rounds; pgx pool of %d connections; CoalesceGets %d.\n\n",
		o.Duration, o.Rounds, o.MaxConns, o.CoalesceGets)
	for _, table := range o.Tables {
		env, err := NewEnv(ctx, o.DSN, fmt.Sprint(table), o.MaxConns, 0)
		if err != nil {
			return err
		}
		err = compareTable(ctx, o, env, rdb, table, ops)
		env.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

const (
	sysCache    = "dbcache"
	sysRaw      = "raw pgx"
	sysRedis    = "redis"
	sysFast     = "dbcache FastCommit"
	sysCoalesce = "dbcache CoalesceGets"
	counterKeys = 10_000
)

func compareTable(ctx context.Context, o *Options, env *Env, rdb *redis.Client, table int, ops []string) error {
	plain, err := dbcache.New(ctx, env.Pool, &dbcache.Config{KeyCheck: dbcache.KeyCheckOff})
	if err != nil {
		return err
	}
	fast, err := dbcache.New(ctx, env.Pool, &dbcache.Config{KeyCheck: dbcache.KeyCheckOff, FastCommit: true})
	if err != nil {
		return err
	}
	coal, err := dbcache.New(ctx, env.Pool, &dbcache.Config{KeyCheck: dbcache.KeyCheckOff, CoalesceGets: o.CoalesceGets})
	if err != nil {
		return err
	}
	systems := []System{CacheSystem(sysCache, plain), RawSystem(sysRaw, env.Pool, CacheStatements())}
	if rdb != nil {
		systems = append(systems, RedisSystem(sysRedis, rdb))
	}
	fastSys := CacheSystem(sysFast, fast)
	for _, op := range []string{OpGetHit, OpGetMiss, OpGetMany, OpTouch} {
		delete(fastSys.Ops, op) // reads gain nothing; touch is shown plain
	}
	coalSys := CacheSystem(sysCoalesce, coal)
	for op := range coalSys.Ops {
		if op != OpGetHit && op != OpGetMiss {
			delete(coalSys.Ops, op)
		}
	}
	systems = append(systems, fastSys, coalSys)

	base := loadgen.Config{KeySpace: table, BatchSize: batchKeys, KeyPrefix: "k:"}
	o.logf("table %d: filling", table)
	if err := env.Fill(ctx, &base, table, 100, counterKeys); err != nil {
		return err
	}
	if rdb != nil {
		if err := redisFill(ctx, rdb, &base, table, 100, counterKeys); err != nil {
			return err
		}
	}
	for _, size := range o.ValueSizes {
		lcfg := base
		lcfg.ValueSize = size
		if size != 100 {
			// Large values only on the first 10k keys: 1M × 10 KB would
			// be 10 GB. The table keeps its size; the runs touch 10k keys.
			lcfg.KeySpace = min(table, counterKeys)
			if err := env.Resize(ctx, &base, lcfg.KeySpace, size); err != nil {
				return err
			}
			if rdb != nil {
				if err := redisResize(ctx, rdb, &base, lcfg.KeySpace, size, 0); err != nil {
					return err
				}
			}
		}
		fmt.Fprintf(o.Out, "### %s entries, %s values (key space %s)\n\n", human(table), bytesHuman(size), human(lcfg.KeySpace))
		names := []string{sysCache, sysRaw}
		if rdb != nil {
			names = append(names, sysRedis)
		}
		names = append(names, sysFast, sysCoalesce)
		fmt.Fprintf(o.Out, "| op | g | %s | dbcache ÷ raw | dbcache ÷ redis | FastCommit ÷ redis | Coalesce ÷ dbcache |\n", strings.Join(names, " | "))
		fmt.Fprintf(o.Out, "|---|---|%s---|---|---|---|\n", strings.Repeat("---|", len(names)))
		for _, op := range ops {
			for _, g := range o.Concurrency {
				c := lcfg
				c.Concurrency = g
				if op == OpIncr || op == OpIncrHot {
					c.KeySpace = min(c.KeySpace, counterKeys)
				}
				o.logf("table %d value %d: %s g=%d", table, size, op, g)
				res, err := cell(ctx, o, systems, op, c)
				if err != nil {
					return err
				}
				row := []string{op, fmt.Sprint(g)}
				for _, n := range names {
					row = append(row, fmtCell(res[n]))
				}
				row = append(row, ratio(res[sysCache], res[sysRaw]), ratio(res[sysCache], res[sysRedis]),
					ratio(res[sysFast], res[sysRedis]), ratio(res[sysCoalesce], res[sysCache]))
				fmt.Fprintf(o.Out, "| %s |\n", strings.Join(row, " | "))
				for _, n := range names {
					if r := res[n]; r != nil && r.firstErr != "" {
						o.logf("  %s: %d errors, first: %s", n, r.errors, r.firstErr)
					}
				}
			}
		}
		fmt.Fprintln(o.Out)
	}
	return nil
}

func fmtCell(r *cellResult) string {
	if r == nil || r.requests == 0 {
		return "–"
	}
	s := fmt.Sprintf("%s (%s / %s)", human(int(r.opsPerSec())), dur(r.P50()), dur(r.P99()))
	if r.errors > 0 {
		s += fmt.Sprintf(" [%d err]", r.errors)
	}
	return s
}

func ratio(a, b *cellResult) string {
	if a == nil || b == nil || a.opsPerSec() == 0 || b.opsPerSec() == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a.opsPerSec()/b.opsPerSec())
}

func dur(d time.Duration) string {
	switch {
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.0fms", d.Seconds()*1e3)
	case d >= time.Millisecond:
		return fmt.Sprintf("%.1fms", d.Seconds()*1e3)
	default:
		return fmt.Sprintf("%dµs", d.Microseconds())
	}
}

func human(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 10_000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	case n >= 1000:
		return fmt.Sprintf("%.1fk", float64(n)/1000)
	default:
		return fmt.Sprint(n)
	}
}

func bytesHuman(n int) string {
	if n >= 1024 && n%1024 == 0 {
		return fmt.Sprintf("%d KB", n/1024)
	}
	return fmt.Sprintf("%d B", n)
}
