package benchcmp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/loadgen"
	"github.com/dbcache/dbcache/internal/quantile"
)

// Floor measures what the server itself allows, beside dbcache and Redis in
// the same run: pgbench, a C client, running dbcache's own statements
// (prepared, as pgx runs them) on the same table, and pgbench's built-in
// select-only test (-S) on its own tables. The gap between dbcache and
// pgbench is everything the Go side (pgx, dbcache) adds; the gap between
// pgbench and Redis is PostgreSQL's.
//
//	go run ./bench -suite floor
func Floor(ctx context.Context, o *Options) error {
	pgbench, err := exec.LookPath("pgbench")
	if err != nil {
		return errors.New("floor: pgbench is not on PATH (Debian: apt-get install postgresql-client, or /usr/lib/postgresql/*/bin)")
	}
	rdb := redisClient(ctx, o)
	if rdb != nil {
		defer rdb.Close()
	}
	env, err := NewEnv(ctx, o.DSN, "floor", o.MaxConns, 0)
	if err != nil {
		return err
	}
	defer env.Close()
	const rows = 10_000
	base := loadgen.Config{KeySpace: rows, BatchSize: batchKeys, KeyPrefix: "k:", ValueSize: 100}
	if err := env.Fill(ctx, &base, rows, 100, counterKeys); err != nil {
		return err
	}
	if rdb != nil {
		if err := redisFill(ctx, rdb, &base, rows, 100, counterKeys); err != nil {
			return err
		}
	}
	plain, err := dbcache.New(ctx, env.Pool, &dbcache.Config{KeyCheck: dbcache.KeyCheckOff})
	if err != nil {
		return err
	}
	fast, err := dbcache.New(ctx, env.Pool, &dbcache.Config{KeyCheck: dbcache.KeyCheckOff, FastCommit: true})
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "dbcache-floor-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// pgbench's own select-only test needs its tables: scale 1, in a schema
	// of their own.
	pgbSchema := env.Schema + "_pgbench"
	if err := env.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{pgbSchema}.Sanitize()); err != nil {
		return err
	}
	defer func() {
		_ = env.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{pgbSchema}.Sanitize()+" CASCADE")
	}()
	if out, err := runPgbench(ctx, pgbench, o.DSN, pgbSchema, "-i", "-q", "-s", "1"); err != nil {
		return fmt.Errorf("pgbench -i: %w: %s", err, out)
	}

	value := "'\\x" + strings.Repeat("76", 100) + "'::bytea"
	// pgbench takes every :name, even inside a string literal, for a
	// variable: spell the key prefix's colons as escapes.
	key := `(E'\x3a1\x3ak\x3a' || (:n)::int)`
	st := CacheStatements()
	type row struct {
		op, script string
		builtin    []string // instead of a script
		systems    []System
	}
	setFast := fastSet()
	rowsToRun := []row{
		{op: "get (dbcache's statement)", script: strings.ReplaceAll(strings.ReplaceAll(st.Get, "$1", key), "\"dbcache_entries\"", "dbcache_entries"),
			systems: []System{CacheSystem(sysCache, plain)}},
		{op: "select-only (pgbench -S)", builtin: []string{"-S"}},
		{op: "set, durable (dbcache's statement)", script: strings.NewReplacer("$1", key, "$2", value, "$3", "300000000").Replace(st.Set),
			systems: []System{CacheSystem(sysCache, plain)}},
		{op: "set, FastCommit (dbcache's statement)", script: strings.NewReplacer("$1", key, "$2", value, "$3", "300000000").Replace(setFast),
			systems: []System{CacheSystem(sysFast, fast)}},
	}
	fmt.Fprintf(o.Out, "The floor: pgbench (C, prepared statements) running dbcache's own statements on the same 10k-row table, "+
		"beside dbcache and Redis in the same run; %s per system per cell in %d rounds.\n\n", o.Duration, o.Rounds)
	fmt.Fprintln(o.Out, "| op | g | pgbench | dbcache | redis | dbcache ÷ pgbench | dbcache ÷ redis | pgbench ÷ redis |")
	fmt.Fprintln(o.Out, "|---|---|---|---|---|---|---|---|")
	for _, r := range rowsToRun {
		var args []string
		if r.builtin != nil {
			args = r.builtin
		} else {
			f := filepath.Join(dir, fmt.Sprintf("script%d.sql", len(r.op)))
			script := "\\set n random(0, " + strconv.Itoa(rows-1) + ")\n" + strings.ReplaceAll(r.script, "\n", " ") + ";\n"
			if err := os.WriteFile(f, []byte(script), 0o644); err != nil {
				return err
			}
			args = []string{"-f", f}
		}
		for _, g := range o.Concurrency {
			per := o.Duration / time.Duration(o.Rounds)
			var pgbTPS []float64
			var cache *cellResult
			redisRes := &cellResult{}
			var cacheName string
			for range o.Rounds {
				secs := max(1, int(per.Seconds()+0.5))
				a := append([]string{"-n", "-M", "prepared", "-c", strconv.Itoa(g), "-j", strconv.Itoa(min(g, 2)), "-T", strconv.Itoa(secs)}, args...)
				if r.builtin != nil {
					a = append([]string{"-n", "-M", "prepared", "-c", strconv.Itoa(g), "-j", strconv.Itoa(min(g, 2)), "-T", strconv.Itoa(secs)}, r.builtin...)
				}
				schema := env.Schema
				if r.builtin != nil {
					schema = pgbSchema
				}
				out, err := runPgbench(ctx, pgbench, o.DSN, schema, a...)
				if err != nil {
					return fmt.Errorf("pgbench %s: %w: %s", strings.Join(a, " "), err, out)
				}
				tps, err := parseTPS(out)
				if err != nil {
					return err
				}
				pgbTPS = append(pgbTPS, tps)
				if len(r.systems) == 0 {
					continue
				}
				systems := r.systems
				opName := OpGetHit
				if strings.HasPrefix(r.op, "set") {
					opName = OpSet
				}
				if rdb != nil {
					systems = append(systems, RedisSystem(sysRedis, rdb))
				}
				lcfg := base
				lcfg.Concurrency = g
				oneRound := *o
				oneRound.Rounds = 1
				oneRound.Duration = per
				res, err := cell(ctx, &oneRound, systems, opName, lcfg)
				if err != nil {
					return err
				}
				cacheName = r.systems[0].Name
				if cache == nil {
					cache = &cellResult{}
				}
				merge(cache, res[cacheName])
				merge(redisRes, res[sysRedis])
			}
			pg := quantile.Percentile(pgbTPS, 50)
			cacheOps, redisOps := 0.0, 0.0
			if cache != nil {
				cacheOps = cache.opsPerSec()
			}
			if rdb != nil && redisRes.elapsed > 0 {
				redisOps = redisRes.opsPerSec()
			}
			fmt.Fprintf(o.Out, "| %s | %d | %s | %s | %s | %s | %s | %s |\n", r.op, g, human(int(pg)),
				orDash(cacheOps), orDash(redisOps), ratioF(cacheOps, pg), ratioF(cacheOps, redisOps), ratioF(pg, redisOps))
		}
	}
	fmt.Fprintln(o.Out)
	return nil
}

// fastSet is the FastCommit set statement on the search_path table.
func fastSet() string {
	c := CacheStatements()
	return strings.Replace(c.Set, "VALUES ($1, $2, statement_timestamp() + $3::bigint * interval '1 microsecond')",
		"SELECT $1::text, $2::bytea, statement_timestamp() + $3::bigint * interval '1 microsecond' FROM (SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit", 1)
}

func runPgbench(ctx context.Context, pgbench, dsn, schema string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, pgbench, append(args, dsn)...)
	cmd.Env = append(os.Environ(), "PGOPTIONS=-c search_path="+schema)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

var tpsRE = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

func parseTPS(out string) (float64, error) {
	m := tpsRE.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("pgbench printed no tps: %s", out)
	}
	return strconv.ParseFloat(m[1], 64)
}

func merge(into, r *cellResult) {
	if r == nil {
		return
	}
	into.requests += r.requests
	into.errors += r.errors
	into.elapsed += r.elapsed
	into.p50 = append(into.p50, r.p50...)
	into.p99 = append(into.p99, r.p99...)
}

func orDash(v float64) string {
	if v == 0 {
		return "–"
	}
	return human(int(v))
}

func ratioF(a, b float64) string {
	if a == 0 || b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}
