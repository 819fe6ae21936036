package benchcmp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/loadgen"
	"github.com/dbcache/dbcache/internal/quantile"
)

// FloorWrites measures FastCommit sets and incrs against pgbench running
// the same single-row statement with FastCommit, one statement per write:
// dbcache with write coalescing off, with its default under FastCommit,
// and with o.CoalesceWrites slots, interleaved round by round. Each ratio
// is the median over the rounds of that round's dbcache ÷ pgbench.
//
//	go run ./bench -suite floor-writes -rounds 5 -d 10s
func FloorWrites(ctx context.Context, o *Options) error {
	pgbench, err := exec.LookPath("pgbench")
	if err != nil {
		return errors.New("floor-writes: pgbench is not on PATH (Debian: apt-get install postgresql-client, or /usr/lib/postgresql/*/bin)")
	}
	env, err := NewEnv(ctx, o.DSN, "floorw", o.MaxConns, 0)
	if err != nil {
		return err
	}
	defer env.Close()
	const rows = 10_000
	base := loadgen.Config{KeySpace: rows, BatchSize: batchKeys, KeyPrefix: "k:", ValueSize: 100}
	if err := env.Fill(ctx, &base, rows, 100, counterKeys); err != nil {
		return err
	}
	slots := o.CoalesceWrites
	if slots <= 0 {
		slots = 4
	}
	newCache := func(sets, incrs int) (*dbcache.Cache, error) {
		return dbcache.New(ctx, env.Pool, &dbcache.Config{KeyCheck: dbcache.KeyCheckOff, FastCommit: true,
			CoalesceSets: sets, CoalesceIncrs: incrs})
	}
	off, err := newCache(-1, -1)
	if err != nil {
		return err
	}
	def, err := newCache(0, 0)
	if err != nil {
		return err
	}
	more, err := newCache(slots, slots)
	if err != nil {
		return err
	}
	const (
		nameOff  = "coalescing off"
		nameDef  = "default"
		nameMore = "more slots"
	)
	systems := []System{CacheSystem(nameOff, off), CacheSystem(nameDef, def), CacheSystem(nameMore, more)}

	dir, err := os.MkdirTemp("", "dbcache-floor-writes-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	value := "'\\x" + strings.Repeat("76", 100) + "'::bytea"
	// pgbench takes every :name, even inside a string literal, for a
	// variable: spell the colons of the made keys as escapes.
	key := `(E'\x3a1\x3ak\x3a' || (:n)::int)`
	counter := `(E'\x3a1\x3ak\x3a' || (:n)::int || E'\x3an')`
	st := CacheStatements()
	incrFast := strings.Replace(st.Incr, "\nWHERE key = $1", "\nFROM (SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit\nWHERE key = $1", 1)
	if incrFast == st.Incr {
		return errors.New("floor-writes: the incr statement changed shape; update its FastCommit form here")
	}
	scripts := []struct{ op, name, sql string }{
		{OpSet, "set, FastCommit", strings.NewReplacer("$1", key, "$2", value, "$3", "300000000").Replace(fastSet())},
		{OpIncr, "incr, FastCommit", strings.NewReplacer("$1", counter, "$2", "1", "$3", ":t").Replace(incrFast)},
	}
	fmt.Fprintf(o.Out, "FastCommit writes: pgbench (C, prepared, one statement per write) running dbcache's own statement on a 10k-row table, "+
		"beside dbcache with coalescing off, at its default (CoalesceSets and CoalesceIncrs 0: %d slots with FastCommit) and at %d slots; "+
		"%s per system per cell in %d interleaved rounds; ratios are medians of the rounds' dbcache ÷ pgbench.\n\n",
		dbcache.CoalesceWritesFastDefault, slots, o.Duration, o.Rounds)
	fmt.Fprintln(o.Out, "| op | g | pgbench | off | off ÷ pgbench | default | default ÷ pgbench | "+strconv.Itoa(slots)+" slots | "+strconv.Itoa(slots)+" slots ÷ pgbench |")
	fmt.Fprintln(o.Out, "|---|---|---|---|---|---|---|---|---|")
	per := o.Duration / time.Duration(max(o.Rounds, 1))
	for _, s := range scripts {
		f := filepath.Join(dir, s.op+".sql")
		script := "\\set n random(0, " + strconv.Itoa(rows-1) + ")\n\\set t random(1, 1000000000)\n" + strings.ReplaceAll(s.sql, "\n", " ") + ";\n"
		if err := os.WriteFile(f, []byte(script), 0o644); err != nil {
			return err
		}
		// pgbench's keys must be dbcache's: one transaction of the script
		// adds no row, and an incr adds to a counter.
		var before, after [2]int64
		check := `SELECT count(*), coalesce(sum(convert_from(value, 'UTF8')::bigint) FILTER (WHERE key LIKE '%:n'), 0) FROM dbcache_entries`
		if err := env.Pool.QueryRow(ctx, check).Scan(&before[0], &before[1]); err != nil {
			return err
		}
		if out, err := runPgbench(ctx, pgbench, o.DSN, env.Schema, "-n", "-M", "prepared", "-t", "20", "-f", f); err != nil {
			return fmt.Errorf("pgbench: %w: %s", err, out)
		}
		if err := env.Pool.QueryRow(ctx, check).Scan(&after[0], &after[1]); err != nil {
			return err
		}
		if after[0] != before[0] || (s.op == OpIncr) != (after[1] > before[1]) {
			return fmt.Errorf("floor-writes: pgbench's %s script misses dbcache's keys (rows %d -> %d, counters %d -> %d)", s.op, before[0], after[0], before[1], after[1])
		}
		for _, g := range o.Concurrency {
			var pgb []float64
			ops := map[string][]float64{}
			ratios := map[string][]float64{}
			for round := range max(o.Rounds, 1) {
				secs := max(1, int(per.Seconds()+0.5))
				a := []string{"-n", "-M", "prepared", "-c", strconv.Itoa(g), "-j", strconv.Itoa(min(g, 2)), "-T", strconv.Itoa(secs), "-f", f}
				out, err := runPgbenchRetry(ctx, pgbench, o.DSN, env.Schema, a...)
				if err != nil {
					return fmt.Errorf("pgbench %s: %w: %s", strings.Join(a, " "), err, out)
				}
				tps, err := parseTPS(out)
				if err != nil {
					return err
				}
				pgb = append(pgb, tps)
				lcfg := base
				lcfg.Concurrency = g
				oneRound := *o
				oneRound.Rounds = 1
				oneRound.Duration = per
				// Rotate which system goes first, round by round.
				rot := append(append([]System{}, systems[round%len(systems):]...), systems[:round%len(systems)]...)
				res, err := cell(ctx, &oneRound, rot, s.op, lcfg)
				if err != nil {
					return err
				}
				for _, sys := range systems {
					r := res[sys.Name]
					if r == nil || r.firstErr != "" && r.requests == 0 {
						return fmt.Errorf("floor-writes: %s %s: %v", s.op, sys.Name, r)
					}
					v := r.opsPerSec()
					ops[sys.Name] = append(ops[sys.Name], v)
					ratios[sys.Name] = append(ratios[sys.Name], v/tps)
				}
			}
			row := fmt.Sprintf("| %s | %d | %s |", s.name, g, human(int(quantile.Percentile(pgb, 50))))
			for _, sys := range systems {
				row += fmt.Sprintf(" %s | %.2f× |", human(int(quantile.Percentile(ops[sys.Name], 50))), quantile.Percentile(ratios[sys.Name], 50))
			}
			fmt.Fprintln(o.Out, row)
		}
	}
	fmt.Fprintln(o.Out)
	return nil
}

// runPgbenchRetry is runPgbench, tried again a few times while the server
// has no connection slot to spare (a shared server).
func runPgbenchRetry(ctx context.Context, pgbench, dsn, schema string, args ...string) (string, error) {
	for attempt := 0; ; attempt++ {
		out, err := runPgbench(ctx, pgbench, dsn, schema, args...)
		if err == nil || attempt == 10 || !strings.Contains(out, "too many clients") {
			return out, err
		}
		select {
		case <-ctx.Done():
			return out, err
		case <-time.After(2 * time.Second):
		}
	}
}
