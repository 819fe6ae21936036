package benchcmp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/loadgen"
	"github.com/dbcache/dbcache/internal/quantile"
)

// Reads measures the read path's targets (docs/performance.md, Targets) in
// one run: gets of dbcache's default configuration beside raw pgx running
// one query per get, pgbench (C, prepared) running the same statement and
// Redis; and get_many(100) beside raw pgx's forms of the same read and
// Redis's MGET. Every system runs once per round, the order rotating, and
// each figure is the median over rounds of that round's ops/s; the ratios
// are between those medians.
//
//	go run ./bench -suite reads -rounds 5 -d 10s
func Reads(ctx context.Context, o *Options) error {
	pgbench, _ := exec.LookPath("pgbench") // left out when absent
	rdb := redisClient(ctx, o)
	if rdb != nil {
		defer rdb.Close()
	}
	env, err := NewEnv(ctx, o.DSN, "reads", o.MaxConns, 0)
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
	def, err := dbcache.New(ctx, env.Pool, nil)
	if err != nil {
		return err
	}
	st := CacheStatements()
	raw := RawSystem(sysRaw, env.Pool, st)
	best := rawGetManyPositions(env.Pool)
	systems := []System{CacheSystem("dbcache", def)}
	if o.CoalesceGets != 0 {
		c, err := dbcache.New(ctx, env.Pool, &dbcache.Config{CoalesceGets: o.CoalesceGets})
		if err != nil {
			return err
		}
		systems = append(systems, CacheSystem(fmt.Sprintf("dbcache CoalesceGets %d", o.CoalesceGets), c))
	}
	systems = append(systems, raw, best)
	if rdb != nil {
		systems = append(systems, RedisSystem(sysRedis, rdb))
	}

	var script string
	if pgbench != "" {
		dir, err := os.MkdirTemp("", "dbcache-reads-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		// pgbench takes every :name for a variable, even in a string.
		key := `(E'\\x3a1\\x3ak\\x3a' || (:n)::int)`
		script = filepath.Join(dir, "get.sql")
		get := strings.ReplaceAll(strings.ReplaceAll(st.Get, "$1", key), "\"dbcache_entries\"", "dbcache_entries")
		if err := os.WriteFile(script, []byte("\\set n random(0, "+strconv.Itoa(rows-1)+")\n"+get+";\n"), 0o644); err != nil {
			return err
		}
	}

	rounds := max(o.Rounds, 1)
	per := o.Duration / time.Duration(rounds)
	fmt.Fprintf(o.Out, "The read path: 10k rows of 100 B, pool of %d, %s per system per cell in %d rounds; "+
		"each figure the median of the rounds' ops/s (load average %s).\n\n", o.MaxConns, per, rounds, loadAvg())
	names := make([]string, 0, len(systems)+1)
	for _, s := range systems {
		names = append(names, s.Name)
	}
	for _, op := range []string{OpGetHit, OpGetMany} {
		cols := names
		if op == OpGetHit && script != "" {
			cols = append(slices.Clone(names), "pgbench")
		}
		fmt.Fprintf(o.Out, "| op | g | %s | ratios |\n|---|---|%s---|\n", strings.Join(cols, " | "), strings.Repeat("---|", len(cols)))
		for _, g := range o.Concurrency {
			perRound := map[string][]float64{}
			for round := range rounds {
				// pgbench first on even rounds, last on odd ones; the Go
				// systems rotate.
				if script != "" && op == OpGetHit && round%2 == 0 {
					if err := pgbenchRound(ctx, pgbench, o.DSN, env.Schema, script, g, per, perRound); err != nil {
						return err
					}
				}
				for i := range systems {
					s := systems[(i+round)%len(systems)]
					if s.Ops[op] == nil {
						continue
					}
					one := *o
					one.Rounds, one.Duration = 1, per
					c := base
					c.Concurrency = g
					res, err := cell(ctx, &one, []System{s}, op, c)
					if err != nil {
						return err
					}
					if r := res[s.Name]; r != nil && r.requests > 0 && r.errors == 0 {
						perRound[s.Name] = append(perRound[s.Name], r.opsPerSec())
					} else if r != nil && r.firstErr != "" {
						return fmt.Errorf("%s %s: %s", s.Name, op, r.firstErr)
					}
				}
				if script != "" && op == OpGetHit && round%2 == 1 {
					if err := pgbenchRound(ctx, pgbench, o.DSN, env.Schema, script, g, per, perRound); err != nil {
						return err
					}
				}
			}
			med := map[string]float64{}
			fmt.Fprintf(o.Out, "| %s | %d |", op, g)
			for _, n := range cols {
				if v := perRound[n]; len(v) > 0 {
					med[n] = quantile.Percentile(v, 50)
				}
				fmt.Fprintf(o.Out, " %s |", orDash(med[n]))
			}
			var ratios []string
			add := func(a, b string) {
				if med[a] > 0 && med[b] > 0 {
					ratios = append(ratios, fmt.Sprintf("%s ÷ %s %.2f×", a, b, med[a]/med[b]))
				}
			}
			for _, n := range names {
				if !strings.HasPrefix(n, "dbcache") {
					continue
				}
				if op == OpGetHit {
					add(n, sysRaw)
					add(n, "pgbench")
				} else {
					add(n, sysRaw)
					add(n, best.Name)
				}
				add(n, sysRedis)
			}
			if op == OpGetHit {
				add(sysRaw, "pgbench")
			} else {
				add(best.Name, sysRedis)
			}
			fmt.Fprintf(o.Out, " %s |\n", strings.Join(ratios, ", "))
		}
		fmt.Fprintln(o.Out)
	}
	fmt.Fprintf(o.Out, "(load average at the end %s)\n\n", loadAvg())
	return nil
}

func pgbenchRound(ctx context.Context, pgbench, dsn, schema, script string, g int, per time.Duration, into map[string][]float64) error {
	secs := max(1, int(per.Seconds()+0.5))
	a := []string{"-n", "-M", "prepared", "-c", strconv.Itoa(g), "-j", strconv.Itoa(min(g, 2)), "-T", strconv.Itoa(secs), "-f", script}
	out, err := runPgbench(ctx, pgbench, dsn, schema, a...)
	if err != nil {
		return fmt.Errorf("pgbench %s: %w: %s", strings.Join(a, " "), err, out)
	}
	tps, err := parseTPS(out)
	if err != nil {
		return err
	}
	into["pgbench"] = append(into["pgbench"], tps)
	return nil
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// qGetManyPositions is the leanest form of get_many measured: the keys'
// positions (int4, binary) instead of the keys, so the client matches
// results to its keys by index, with no map of keys and no key strings
// decoded.
const qGetManyPositions = `SELECT q.i::int4, t.value FROM unnest($1::text[]) WITH ORDINALITY AS q(k, i) JOIN "dbcache_entries" t ON t.key = q.k WHERE t.expires IS NULL OR t.expires > statement_timestamp()`

// rawGetManyPositions is raw pgx's best get_many: qGetManyPositions, read
// through RawValues (no per-column decoding into interfaces), each value
// copied out once into a slice by position.
func rawGetManyPositions(pool *pgxpool.Pool) System {
	return System{Name: "raw pgx positions", Ops: map[string]loadgen.OpFunc{
		OpGetMany: func(ctx context.Context, r *loadgen.Request) error {
			keys := make([]string, len(r.Keys))
			for i, k := range r.Keys {
				keys[i] = madeKey(k)
			}
			rows, err := pool.Query(ctx, qGetManyPositions, keys)
			if err != nil {
				return err
			}
			defer rows.Close()
			out := make([][]byte, len(keys))
			for rows.Next() {
				rv := rows.RawValues()
				if len(rv) != 2 || len(rv[0]) != 4 {
					return errors.New("get_many positions: unexpected row shape")
				}
				i := int(binary.BigEndian.Uint32(rv[0])) - 1
				if i < 0 || i >= len(out) {
					return errors.New("get_many positions: position out of range")
				}
				out[i] = append([]byte{}, rv[1]...)
			}
			return rows.Err()
		},
	}}
}
