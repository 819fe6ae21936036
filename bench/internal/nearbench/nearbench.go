// Package nearbench measures the near cache (package nearcache): how soon
// another process's write reaches a process's copies through each
// invalidation mechanism, what each mechanism costs the writers, and
// hot-key reads through the near cache against plain dbcache, Redis and
// rueidis with client-side caching, in one run on one machine. Run it with
// `go run ./bench/near` (see bench/near/main.go for the flags); the figures
// in docs/nearcache.md come from it.
//
// Every comparison interleaves its sides round by round, so that load from
// anything else on the machine lands on all of them alike, and prints the
// machine's load average beside each table.
//
// The package is internal and its API may change. It is the only importer
// of rueidis; nothing in the library imports it.
package nearbench

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/internal/benchpair"
	"github.com/dbcache/dbcache/migrations"
	"github.com/dbcache/dbcache/nearcache"
)

// Options configures a run.
type Options struct {
	// DSN is a PostgreSQL server with wal_level = logical, reachable by a
	// role that may replicate (a superuser on a test server).
	DSN string
	// RedisAddr is the Redis server for the comparison; "" or an
	// unreachable one leaves Redis and rueidis out.
	RedisAddr string
	// RedisDB is the Redis database the run fills and flushes.
	RedisDB int
	// Keys, ValueSize, ZipfS and ReadPercent describe the hot-key
	// workload.
	Keys, ValueSize int
	ZipfS           float64
	ReadPercent     int
	// Concurrency are the goroutine counts.
	Concurrency []int
	// Duration is each side's time per cell, split over Rounds.
	Duration time.Duration
	Rounds   int
	// LatencyDuration is how long the invalidation-latency runs write;
	// LatencyWriters how many goroutines write meanwhile.
	LatencyDuration time.Duration
	LatencyWriters  int
	// MaxConns is each pgx pool's size.
	MaxConns int32
	// Out receives the report (markdown); Log progress lines.
	Out, Log io.Writer
}

func (o *Options) logf(format string, args ...any) {
	if o.Log != nil {
		fmt.Fprintf(o.Log, format+"\n", args...)
	}
}

// load is the machine's load average, for the report.
func load() string {
	l, ok := benchpair.LoadAverage()
	if !ok {
		return "?"
	}
	return fmt.Sprintf("%.1f", l)
}

// env is a fresh schema with the cache table, published for the feed.
type env struct {
	dsn    string
	schema string
	admin  *pgxpool.Pool
}

func newEnv(ctx context.Context, o *Options, name string) (*env, error) {
	admin, err := pgxpool.New(ctx, o.DSN)
	if err != nil {
		return nil, err
	}
	e := &env{dsn: o.DSN, schema: fmt.Sprintf("dbcache_nearbench_%s_%d", name, os.Getpid()), admin: admin}
	e.drop(ctx)
	ccfg, err := pgx.ParseConfig(o.DSN)
	if err != nil {
		admin.Close()
		return nil, err
	}
	m, err := migrations.NewFromConnConfig(ccfg, &migrations.Config{Schema: e.schema})
	if err != nil {
		admin.Close()
		return nil, err
	}
	if err := m.Up(ctx); err != nil {
		admin.Close()
		return nil, fmt.Errorf("migrate %s: %w", e.schema, err)
	}
	if err := nearcache.Setup(ctx, admin, &nearcache.SetupConfig{Schema: e.schema}); err != nil {
		e.close()
		return nil, err
	}
	return e, nil
}

func (e *env) drop(ctx context.Context) {
	_, _ = e.admin.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pgx.Identifier{nearcache.PublicationName(e.schema)}.Sanitize())
	_, _ = e.admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{e.schema}.Sanitize()+" CASCADE")
}

func (e *env) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e.drop(ctx)
	e.admin.Close()
}

// pool opens a pool on the env's schema.
func (e *env) pool(ctx context.Context, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(e.dsn)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = maxConns
	cfg.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{e.schema}.Sanitize()
	return pgxpool.NewWithConfig(ctx, cfg)
}

// fill loads keys entries key0…key(n-1) of size-byte values expiring in
// a day, made as a default dbcache.Config makes them.
func (e *env) fill(ctx context.Context, n, size int) error {
	_, err := e.admin.Exec(ctx, `INSERT INTO `+pgx.Identifier{e.schema, "dbcache_entries"}.Sanitize()+` (key, value, expires)
SELECT ':1:key' || i, convert_to(repeat('v', $1), 'UTF8'), now() + interval '1 day' FROM generate_series(0, $2 - 1) AS i
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires`, size, n)
	if err != nil {
		return err
	}
	_, err = e.admin.Exec(ctx, `VACUUM ANALYZE `+pgx.Identifier{e.schema, "dbcache_entries"}.Sanitize())
	return err
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	}
}

func fmtRate(r float64) string {
	switch {
	case r >= 1e6:
		return fmt.Sprintf("%.2fM", r/1e6)
	case r >= 1e3:
		return fmt.Sprintf("%.1fk", r/1e3)
	default:
		return fmt.Sprintf("%.0f", r)
	}
}
