package benchcmp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/loadgen"
	"github.com/dbcache/dbcache/internal/quantile"
)

// Tuning runs the experiments behind docs/performance.md's decisions (`go
// run ./bench -suite tuning`, -steps to pick some), each a markdown table
// measured beside its alternative in the same run:
//
//   - query-exec-modes: pgx's statement cache against describe-exec and the
//     simple protocol (why the cache keeps pgx's default);
//   - pgbouncer: the same operations through PgBouncer in transaction
//     pooling (pgbouncerDSN, in front of o.DSN's database; skipped unset);
//   - durability, group-commit: FastCommit's asynchronous commit against
//     commit_delay and commit_siblings;
//   - index-and-fillfactor: the culler's row-finding queries with and
//     without the expires index, and the table's fillfactor;
//   - pool-size: throughput against pool size on this machine;
//   - bulk-paths: GetMany and SetMany against one statement per key;
//   - coalescing: CoalesceGets against plain gets;
//   - scale-and-culling-memory: a million entries and the culler's memory.
//
// It lives with the benchmarks (the bench module), not in the library: a
// consumer of dbcache never compiles it.
func Tuning(ctx context.Context, o *Options, pgbouncerDSN string) error {
	steps := []struct {
		name string
		run  func(context.Context, *Options) error
	}{
		{"query exec modes", tuneModes},
		{"pgbouncer", func(ctx context.Context, o *Options) error { return tunePgBouncer(ctx, o, pgbouncerDSN) }},
		{"durability", tuneDurability},
		{"group commit", tuneGroupCommit},
		{"index and fillfactor", tuneIndex},
		{"pool size", tunePool},
		{"bulk paths", tuneBulk},
		{"coalescing", tuneCoalesce},
		{"scale and culling memory", tuneScale},
	}
	for _, s := range steps {
		if len(o.TuningSteps) > 0 && !slices.Contains(o.TuningSteps, strings.ReplaceAll(s.name, " ", "-")) {
			continue
		}
		o.logf("tuning: %s", s.name)
		if err := s.run(ctx, o); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return nil
}

const (
	tuneKeys = 10_000
	// multiPoolConns sizes each pool where an experiment holds several at
	// once: PostgreSQL's 100 connections are shared with whatever else runs,
	// and on 2 cores 4 busy connections already saturate the server (see the
	// pool-size experiment).
	multiPoolConns = 4
)

// table runs ops × goroutines over systems, interleaved, and prints ops/s
// (p50 / p99) per system with each system's ratio to the first.
func table(ctx context.Context, o *Options, title string, systems []System, ops []string, gs []int, lcfg loadgen.Config) error {
	fmt.Fprintf(o.Out, "#### %s\n\n| op | g |", title)
	for _, s := range systems {
		fmt.Fprintf(o.Out, " %s |", s.Name)
	}
	fmt.Fprintf(o.Out, "\n|---|---|%s\n", strings.Repeat("---|", len(systems)))
	for _, op := range ops {
		for _, g := range gs {
			c := lcfg
			c.Concurrency = g
			res, err := cell(ctx, o, systems, op, c)
			if err != nil {
				return err
			}
			first := res[systems[0].Name]
			fmt.Fprintf(o.Out, "| %s | %d |", op, g)
			for i, s := range systems {
				r := res[s.Name]
				txt := fmtCell(r)
				if i > 0 && r != nil && r.requests > 0 {
					txt += " " + ratio(r, first)
				}
				if r != nil && r.requests == 0 && r.firstErr != "" {
					txt = "fails: " + shorten(r.firstErr)
				}
				fmt.Fprintf(o.Out, " %s |", txt)
			}
			fmt.Fprintln(o.Out)
		}
	}
	fmt.Fprintln(o.Out)
	return nil
}

func shorten(s string) string {
	if len(s) > 90 {
		return s[:90] + "…"
	}
	return s
}

func tuneEnv(ctx context.Context, o *Options, name string, rows int) (*Env, loadgen.Config, error) {
	env, err := NewEnv(ctx, o.DSN, name, o.MaxConns, 0)
	if err != nil {
		return nil, loadgen.Config{}, err
	}
	lcfg := loadgen.Config{KeySpace: rows, BatchSize: batchKeys, KeyPrefix: "k:", ValueSize: 100}
	if err := env.Fill(ctx, &lcfg, rows, 100, min(rows, counterKeys)); err != nil {
		env.Close()
		return nil, lcfg, err
	}
	return env, lcfg, nil
}

func newCache(ctx context.Context, pool *pgxpool.Pool, cfg dbcache.Config) (*dbcache.Cache, error) {
	cfg.KeyCheck = dbcache.KeyCheckOff
	return dbcache.New(ctx, pool, &cfg)
}

var modes = []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe,
	pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol}

// tuneModes: the same cache over pools in each pgx query mode. Writes use
// FastCommit so the WAL flush does not drown the difference.
func tuneModes(ctx context.Context, o *Options) error {
	env, lcfg, err := tuneEnv(ctx, o, "modes", tuneKeys)
	if err != nil {
		return err
	}
	defer env.Close()
	var systems []System
	for _, m := range modes {
		pool, err := PoolOn(ctx, o.DSN, env.Schema, multiPoolConns, m)
		if err != nil {
			return err
		}
		defer pool.Close()
		c, err := newCache(ctx, pool, dbcache.Config{FastCommit: true})
		if err != nil {
			return err
		}
		systems = append(systems, CacheSystem(m.String(), c))
	}
	return table(ctx, o, fmt.Sprintf("pgx query exec mode (dbcache, FastCommit, pools of %d; ratio to CacheStatement, pgx's default)", multiPoolConns), systems,
		[]string{OpGetHit, OpSet, OpIncr, OpGetMany}, o.Concurrency, lcfg)
}

// tunePgBouncer: the cache through PgBouncer in transaction pooling, in the
// modes that can work there, beside the direct connection.
func tunePgBouncer(ctx context.Context, o *Options, dsn string) error {
	if dsn == "" {
		fmt.Fprintf(o.Out, "#### PgBouncer\n\nSkipped: no -pgbouncer URL.\n\n")
		return nil
	}
	env, lcfg, err := tuneEnv(ctx, o, "pgbouncer", tuneKeys)
	if err != nil {
		return err
	}
	defer env.Close()
	direct, err := PoolOn(ctx, o.DSN, env.Schema, multiPoolConns, pgx.QueryExecModeCacheStatement)
	if err != nil {
		return err
	}
	defer direct.Close()
	dc, err := newCache(ctx, direct, dbcache.Config{FastCommit: true})
	if err != nil {
		return err
	}
	systems := []System{CacheSystem("direct CacheStatement", dc)}
	for _, m := range modes {
		// No search_path: PgBouncer would refuse it as a startup
		// parameter, and a SET would leak across clients. Config.Schema
		// qualifies the table instead.
		cfg, err := pgxpool.ParseConfig(dsn)
		if err != nil {
			return err
		}
		cfg.MaxConns = multiPoolConns
		cfg.ConnConfig.DefaultQueryExecMode = m
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			return err
		}
		defer pool.Close()
		c, err := newCache(ctx, pool, dbcache.Config{FastCommit: true, Schema: env.Schema})
		if err != nil {
			return err
		}
		systems = append(systems, CacheSystem("pgbouncer "+m.String(), c))
	}
	return table(ctx, o, fmt.Sprintf("PgBouncer 1.18, pool_mode=transaction (dbcache, FastCommit, pools of %d; ratio to direct)", multiPoolConns), systems,
		[]string{OpGetHit, OpSet, OpIncr, OpGetMany, OpSetMany}, o.Concurrency, lcfg)
}

// tuneDurability: logged vs UNLOGGED, with and without FastCommit, and Redis.
func tuneDurability(ctx context.Context, o *Options) error {
	logged, lcfg, err := tuneEnv(ctx, o, "logged", tuneKeys)
	if err != nil {
		return err
	}
	defer logged.Close()
	unlogged, _, err := tuneEnv(ctx, o, "unlogged", tuneKeys)
	if err != nil {
		return err
	}
	defer unlogged.Close()
	if err := unlogged.Exec(ctx, `ALTER TABLE dbcache_entries SET UNLOGGED`); err != nil {
		return err
	}
	var systems []System
	for _, v := range []struct {
		name string
		env  *Env
		fast bool
	}{{"logged", logged, false}, {"logged FastCommit", logged, true}, {"UNLOGGED", unlogged, false}, {"UNLOGGED FastCommit", unlogged, true}} {
		c, err := newCache(ctx, v.env.Pool, dbcache.Config{FastCommit: v.fast})
		if err != nil {
			return err
		}
		systems = append(systems, CacheSystem(v.name, c))
	}
	if rdb := redisClient(ctx, o); rdb != nil {
		defer rdb.Close()
		if err := redisFill(ctx, rdb, &lcfg, tuneKeys, 100, counterKeys); err != nil {
			return err
		}
		systems = append(systems, RedisSystem("redis (no persistence)", rdb))
	}
	return table(ctx, o, "durability (ratio to logged, synchronous_commit on)", systems,
		[]string{OpSet, OpAdd, OpIncr, OpSetMany}, o.Concurrency, lcfg)
}

// tuneGroupCommit: what durable (default) sets gain at 16 goroutines from
// PostgreSQL's group commit settings (commit_delay, commit_siblings: a
// committing backend waits commit_delay µs for others when at least
// commit_siblings transactions are open, so one WAL flush serves several),
// and from coalescing the sets themselves (Config.CoalesceSets), beside
// FastCommit. commit_delay is set per session (it needs superuser, as on a
// test server; an admin sets it in postgresql.conf).
func tuneGroupCommit(ctx context.Context, o *Options) error {
	env, lcfg, err := tuneEnv(ctx, o, "groupcommit", tuneKeys)
	if err != nil {
		return err
	}
	defer env.Close()
	var systems []System
	for _, v := range []struct {
		name     string
		delay    string
		coalesce int
		fast     bool
	}{
		{"durable", "", 0, false},
		{"commit_delay 100µs", "100", 0, false},
		{"commit_delay 1ms", "1000", 0, false},
		{"CoalesceSets 4", "", 4, false},
		{"FastCommit", "", 0, true},
		{"FastCommit + CoalesceSets 2", "", 2, true},
		{"FastCommit + CoalesceSets 4", "", 4, true},
	} {
		pool := env.Pool
		if v.delay != "" {
			cfg, err := pgxpool.ParseConfig(o.DSN)
			if err != nil {
				return err
			}
			cfg.MaxConns = o.MaxConns
			cfg.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{env.Schema}.Sanitize()
			cfg.ConnConfig.RuntimeParams["commit_delay"] = v.delay
			cfg.ConnConfig.RuntimeParams["commit_siblings"] = "5"
			p, err := pgxpool.NewWithConfig(ctx, cfg)
			if err != nil {
				return err
			}
			defer p.Close()
			pool = p
		}
		c, err := newCache(ctx, pool, dbcache.Config{CoalesceSets: v.coalesce, FastCommit: v.fast})
		if err != nil {
			return err
		}
		systems = append(systems, CacheSystem(v.name, c))
	}
	if rdb := redisClient(ctx, o); rdb != nil {
		defer rdb.Close()
		if err := redisFill(ctx, rdb, &lcfg, tuneKeys, 100, counterKeys); err != nil {
			return err
		}
		systems = append(systems, RedisSystem("redis (no persistence)", rdb))
	}
	return table(ctx, o, "group commit and coalesced sets (ratio to durable, synchronous_commit on)", systems,
		[]string{OpSet}, o.Concurrency, lcfg)
}

// tuneIndex: what the expires index and fillfactor cost writes, with the HOT
// share of updates, and what the index saves the culler.
func tuneIndex(ctx context.Context, o *Options) error {
	type variant struct {
		name, setup string
		env         *Env
	}
	vs := []*variant{
		{name: "index, ff 100"},
		{name: "index, ff 70", setup: `ALTER TABLE dbcache_entries SET (fillfactor = 70)`},
		{name: "no index, ff 100", setup: `DROP INDEX dbcache_entries_expires_key_idx`},
		{name: "no index, ff 70", setup: `DROP INDEX dbcache_entries_expires_key_idx; ALTER TABLE dbcache_entries SET (fillfactor = 70)`},
	}
	var systems []System
	var lcfg loadgen.Config
	for i, v := range vs {
		env, err := NewEnv(ctx, o.DSN, fmt.Sprint("idx", i), o.MaxConns, 0)
		if err != nil {
			return err
		}
		defer env.Close()
		v.env = env
		// The fill comes after the fillfactor, so pages keep their free space.
		if v.setup != "" {
			if err := env.Exec(ctx, v.setup); err != nil {
				return err
			}
		}
		lcfg = loadgen.Config{KeySpace: tuneKeys, BatchSize: batchKeys, KeyPrefix: "k:", ValueSize: 100}
		if err := env.Fill(ctx, &lcfg, tuneKeys, 100, counterKeys); err != nil {
			return err
		}
		c, err := newCache(ctx, env.Pool, dbcache.Config{FastCommit: true})
		if err != nil {
			return err
		}
		systems = append(systems, CacheSystem(v.name, c))
	}
	for _, op := range []string{OpSet, OpTouch, OpIncr} {
		// A fresh table for each operation: the previous one's non-HOT
		// updates fill the pages' free space and would decide this one's
		// HOT share.
		for _, v := range vs {
			if err := v.env.Fill(ctx, &lcfg, tuneKeys, 100, counterKeys); err != nil {
				return err
			}
			if err := v.env.Exec(ctx, `SELECT pg_stat_reset_single_table_counters('dbcache_entries'::regclass)`); err != nil {
				return err
			}
		}
		if err := table(ctx, o, "expires index and fillfactor: "+op+" (FastCommit; ratio to the shipped schema)", systems,
			[]string{op}, o.Concurrency, lcfg); err != nil {
			return err
		}
		time.Sleep(1500 * time.Millisecond) // backends flush their statistics at most once a second
		fmt.Fprintf(o.Out, "HOT share of %s's updates:", op)
		for _, v := range vs {
			var upd, hot int64
			if err := v.env.Pool.QueryRow(ctx, `SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = 'dbcache_entries'::regclass`).Scan(&upd, &hot); err != nil {
				return err
			}
			fmt.Fprintf(o.Out, " %s %.0f%% of %d;", v.name, 100*float64(hot)/float64(max(upd, 1)), upd)
		}
		fmt.Fprint(o.Out, "\n\n")
	}
	return tuneSweep(ctx, o)
}

// tuneSweep times the culler's row-finding queries on 1M rows (10% expired)
// with and without the expires index.
func tuneSweep(ctx context.Context, o *Options) error {
	const rows = 1_000_000
	env, err := NewEnv(ctx, o.DSN, "sweep", o.MaxConns, 0)
	if err != nil {
		return err
	}
	defer env.Close()
	if err := env.Exec(ctx, `INSERT INTO dbcache_entries (key, value, expires)
SELECT 'k' || i, '\x00', CASE WHEN i % 10 = 0 THEN now() - interval '1 hour' ELSE now() + (i % 3600) * interval '1 second' END
FROM generate_series(1, $1) AS i`, rows); err != nil {
		return err
	}
	if err := env.Exec(ctx, `VACUUM ANALYZE dbcache_entries`); err != nil {
		return err
	}
	queries := []struct{ name, sql string }{
		{"sweep: 1000 expired rows", `SELECT ctid FROM dbcache_entries WHERE expires <= now() ORDER BY expires LIMIT 1000`},
		{"cull: 1000 soonest-expiring rows", `SELECT ctid FROM dbcache_entries ORDER BY expires LIMIT 1000`},
	}
	timeIt := func(sql string) (time.Duration, error) {
		var ds []time.Duration
		for range 5 {
			start := time.Now()
			rows, err := env.Pool.Query(ctx, sql)
			if err != nil {
				return 0, err
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return 0, err
			}
			ds = append(ds, time.Since(start))
		}
		return quantile.Percentile(ds, 50), nil
	}
	fmt.Fprintf(o.Out, "#### The culler's row-finding queries on %s rows (10%% expired), median of 5\n\n| query | with expires index | without |\n|---|---|---|\n", human(rows))
	with := make([]time.Duration, len(queries))
	for i, q := range queries {
		if with[i], err = timeIt(q.sql); err != nil {
			return err
		}
	}
	if err := env.Exec(ctx, `DROP INDEX dbcache_entries_expires_key_idx`); err != nil {
		return err
	}
	for i, q := range queries {
		without, err := timeIt(q.sql)
		if err != nil {
			return err
		}
		fmt.Fprintf(o.Out, "| %s | %s | %s |\n", q.name, dur(with[i]), dur(without))
	}
	fmt.Fprintln(o.Out)
	return nil
}

// tunePool: one cache per pool size, same table, at the run's goroutines.
func tunePool(ctx context.Context, o *Options) error {
	env, lcfg, err := tuneEnv(ctx, o, "pool", tuneKeys)
	if err != nil {
		return err
	}
	defer env.Close()
	var systems []System
	for _, n := range []int32{16, 2, 4, 8} {
		pool, err := PoolOn(ctx, o.DSN, env.Schema, n, 0)
		if err != nil {
			return err
		}
		defer pool.Close()
		c, err := newCache(ctx, pool, dbcache.Config{FastCommit: true})
		if err != nil {
			return err
		}
		systems = append(systems, CacheSystem(fmt.Sprintf("MaxConns %d", n), c))
	}
	return table(ctx, o, "pool size at 16 goroutines (FastCommit; ratio to 16 connections)", systems,
		[]string{OpGetHit, OpSet, OpIncr}, []int{16}, lcfg)
}

// tuneBulk: set_many as one unnest statement (dbcache), as a pipeline of 100
// single upserts, and as COPY into a temporary table plus one upsert;
// get_many as = ANY (dbcache) and as a pipeline of 100 gets.
func tuneBulk(ctx context.Context, o *Options) error {
	env, lcfg, err := tuneEnv(ctx, o, "bulk", tuneKeys)
	if err != nil {
		return err
	}
	defer env.Close()
	c, err := newCache(ctx, env.Pool, dbcache.Config{})
	if err != nil {
		return err
	}
	st := CacheStatements()
	us := ttl.Microseconds()
	made := func(keys []string) []string {
		out := make([]string, len(keys))
		for i, k := range keys {
			out[i] = madeKey(k)
		}
		sortStrings(out)
		return out
	}
	pipelineSet := func(ctx context.Context, r *loadgen.Request) error {
		b := &pgx.Batch{}
		for _, k := range made(r.Keys) {
			b.Queue(st.Set, k, r.Value, us)
		}
		return env.Pool.SendBatch(ctx, b).Close()
	}
	copySet := func(ctx context.Context, r *loadgen.Request) error {
		return pgx.BeginFunc(ctx, env.Pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `CREATE TEMP TABLE IF NOT EXISTS bulk_in (key text COLLATE "C", value bytea) ON COMMIT DELETE ROWS`); err != nil {
				return err
			}
			keys := made(r.Keys)
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{"bulk_in"}, []string{"key", "value"}, pgx.CopyFromSlice(len(keys), func(i int) ([]any, error) {
				return []any{keys[i], r.Value}, nil
			})); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO dbcache_entries AS t (key, value, expires)
SELECT key, value, statement_timestamp() + $1::bigint * interval '1 microsecond' FROM bulk_in ORDER BY key
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires`, us)
			return err
		})
	}
	pipelineGet := func(ctx context.Context, r *loadgen.Request) error {
		b := &pgx.Batch{}
		for _, k := range r.Keys {
			b.Queue(st.Get, madeKey(k)).QueryRow(func(row pgx.Row) error {
				var v []byte
				err := row.Scan(&v)
				if errors.Is(err, pgx.ErrNoRows) {
					return nil
				}
				return err
			})
		}
		return env.Pool.SendBatch(ctx, b).Close()
	}
	dc := CacheSystem("dbcache SetMany (unnest arrays, 1 statement)", c)
	setSystems := []System{
		{Name: dc.Name, Ops: map[string]loadgen.OpFunc{OpSetMany: dc.Ops[OpSetMany]}},
		{Name: "pipeline of 100 upserts", Ops: map[string]loadgen.OpFunc{OpSetMany: pipelineSet}},
		{Name: "COPY + upsert (4 statements, 1 tx)", Ops: map[string]loadgen.OpFunc{OpSetMany: copySet}},
	}
	if err := table(ctx, o, "set_many(100) paths (ratio to dbcache)", setSystems, []string{OpSetMany}, o.Concurrency, lcfg); err != nil {
		return err
	}
	// Statement shapes for get_many, raw pgx, each mapping rows back to
	// the caller's keys as GetMany must: = ANY returning the key (what
	// dbcache runs), and a join on unnest WITH ORDINALITY returning the
	// position instead of the key (less to send back, an index to map by).
	anyKey := func(ctx context.Context, r *loadgen.Request) error {
		keys := made(r.Keys)
		back := make(map[string]string, len(keys))
		for i, k := range r.Keys {
			back[madeKey(k)] = r.Keys[i]
		}
		rows, err := env.Pool.Query(ctx, st.GetMany, keys)
		if err != nil {
			return err
		}
		out := make(map[string][]byte, len(keys))
		var k string
		var v []byte
		_, err = pgx.ForEachRow(rows, []any{&k, &v}, func() error { out[back[k]] = v; return nil })
		return err
	}
	const unnestOrd = `SELECT u.i::int4, e.value FROM unnest($1::text[]) WITH ORDINALITY AS u(k, i)
JOIN dbcache_entries e ON e.key = u.k WHERE (e.expires IS NULL OR e.expires > statement_timestamp())`
	unnestOrdinal := func(ctx context.Context, r *loadgen.Request) error {
		keys := make([]string, len(r.Keys))
		for i, k := range r.Keys {
			keys[i] = madeKey(k)
		}
		rows, err := env.Pool.Query(ctx, unnestOrd, keys)
		if err != nil {
			return err
		}
		out := make(map[string][]byte, len(keys))
		var i int32
		var v []byte
		_, err = pgx.ForEachRow(rows, []any{&i, &v}, func() error { out[r.Keys[i-1]] = v; return nil })
		return err
	}
	getSystems := []System{
		{Name: "dbcache GetMany (= ANY, 1 statement)", Ops: map[string]loadgen.OpFunc{OpGetMany: CacheSystem("", c).Ops[OpGetMany]}},
		{Name: "raw = ANY, key back", Ops: map[string]loadgen.OpFunc{OpGetMany: anyKey}},
		{Name: "raw unnest WITH ORDINALITY, position back", Ops: map[string]loadgen.OpFunc{OpGetMany: unnestOrdinal}},
		{Name: "pipeline of 100 gets", Ops: map[string]loadgen.OpFunc{OpGetMany: pipelineGet}},
	}
	if err := table(ctx, o, "get_many(100) paths (ratio to dbcache)", getSystems, []string{OpGetMany}, o.Concurrency, lcfg); err != nil {
		return err
	}
	// Keys per second by batch size, at one goroutine.
	fmt.Fprintf(o.Out, "#### get_many keys/s by batch size, 1 goroutine (ratio to single gets)\n\n| keys per call | calls/s | keys/s | ratio |\n|---|---|---|---|\n")
	var single float64
	for _, n := range []int{1, 10, 100, 1000} {
		c2 := lcfg
		c2.BatchSize = n
		c2.Concurrency = 1
		op := OpGetMany
		sys := System{Name: "x", Ops: map[string]loadgen.OpFunc{op: CacheSystem("", c).Ops[OpGetMany]}}
		if n == 1 {
			op = OpGetHit
			sys.Ops = map[string]loadgen.OpFunc{op: CacheSystem("", c).Ops[OpGetHit]}
		}
		res, err := cell(ctx, o, []System{sys}, op, c2)
		if err != nil {
			return err
		}
		r := res["x"]
		keys := r.opsPerSec() * float64(n)
		if n == 1 {
			single = keys
		}
		fmt.Fprintf(o.Out, "| %d | %s | %s | %.1f× |\n", n, human(int(r.opsPerSec())), human(int(keys)), keys/single)
	}
	fmt.Fprintln(o.Out)
	return nil
}

// tuneCoalesce: Gets with CoalesceGets off and at several limits, across
// goroutine counts.
func tuneCoalesce(ctx context.Context, o *Options) error {
	env, lcfg, err := tuneEnv(ctx, o, "coalesce", tuneKeys)
	if err != nil {
		return err
	}
	defer env.Close()
	var systems []System
	for _, n := range []int{0, 1, 2, 4, 8} {
		c, err := newCache(ctx, env.Pool, dbcache.Config{CoalesceGets: n})
		if err != nil {
			return err
		}
		name := fmt.Sprintf("CoalesceGets %d", n)
		if n == 0 {
			name = "off"
		}
		systems = append(systems, CacheSystem(name, c))
	}
	return table(ctx, o, fmt.Sprintf("get coalescing (pool of %d; ratio to off)", o.MaxConns), systems,
		[]string{OpGetHit}, []int{1, 4, 16, 64}, lcfg)
}

// tuneScale: get and set latency at 10k and 1M entries, and this process's
// memory while the culler removes 1M expired rows.
func tuneScale(ctx context.Context, o *Options) error {
	small, lcfg, err := tuneEnv(ctx, o, "scale10k", tuneKeys)
	if err != nil {
		return err
	}
	defer small.Close()
	o.logf("tuning: filling 1M")
	big, bigCfg, err := tuneEnv(ctx, o, "scale1m", 1_000_000)
	if err != nil {
		return err
	}
	defer big.Close()
	cs, err := newCache(ctx, small.Pool, dbcache.Config{})
	if err != nil {
		return err
	}
	cb, err := newCache(ctx, big.Pool, dbcache.Config{})
	if err != nil {
		return err
	}
	// The systems see different key spaces, so they cannot share one
	// loadgen config: wrap the big one's ops to draw from the 1M keys.
	bigSys := CacheSystem("1M entries", cb)
	var n atomic.Uint64
	for name, f := range bigSys.Ops {
		bigSys.Ops[name] = func(ctx context.Context, r *loadgen.Request) error {
			r2 := *r
			r2.Key = bigCfg.Key(int(n.Add(0x9E3779B1) % uint64(bigCfg.KeySpace)))
			return f(ctx, &r2)
		}
	}
	if err := table(ctx, o, "10k vs 1M entries (ratio to 10k)", []System{CacheSystem("10k entries", cs), bigSys},
		[]string{OpGetHit, OpSet}, o.Concurrency, lcfg); err != nil {
		return err
	}

	// Culling 1M expired rows: peak RSS of this process during the pass.
	if err := big.Exec(ctx, `UPDATE dbcache_entries SET expires = now() - interval '1 minute'`); err != nil {
		return err
	}
	if err := big.Exec(ctx, `VACUUM ANALYZE dbcache_entries`); err != nil {
		return err
	}
	culler, err := culling.New(big.Pool, &culling.Config{Schema: big.Schema})
	if err != nil {
		return err
	}
	runtime.GC()
	before := rssKB()
	peak := atomic.Int64{}
	peak.Store(before)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if r := rssKB(); r > peak.Load() {
					peak.Store(r)
				}
			}
		}
	}()
	start := time.Now()
	res, err := culler.RunOnce(ctx)
	elapsed := time.Since(start)
	close(stop)
	<-done
	if err != nil {
		return err
	}
	var left int
	if err := big.Pool.QueryRow(ctx, `SELECT count(*) FROM dbcache_entries`).Scan(&left); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "#### Culling 1M expired rows (culling.Culler.RunOnce)\n\n%+v\n\nrows left %d; took %s; this process's RSS %d MB before, peak %d MB during (sampled every 20 ms).\n\n",
		*res, left, elapsed.Round(time.Millisecond), before/1024, peak.Load()/1024)
	return nil
}

// rssKB is the process's resident set size from /proc/self/status.
func rssKB() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			fs := strings.Fields(rest)
			if len(fs) > 0 {
				n, _ := strconv.ParseInt(fs[0], 10, 64)
				return n
			}
		}
	}
	return 0
}
