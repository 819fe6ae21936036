// Command bench measures dbcache beside raw pgx and Redis and runs the tuning
// experiments of docs/performance.md, printing markdown tables:
//
//	go run ./bench -dsn "$DBCACHE_TEST_DATABASE_URL"               # the comparison
//	go run ./bench -suite tuning -pgbouncer 'postgres://…:6432/…'  # the experiments
//
// Redis is measured when -redis answers. Every figure is relative to others
// measured in the same run; see docs/performance.md for how to read them.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"github.com/dbcache/dbcache/bench/internal/benchcmp"
)

func main() {
	o := benchcmp.Options{Out: os.Stdout, Log: os.Stderr}
	var tables, sizes, conc, ops string
	suite := flag.String("suite", "compare", "compare (dbcache vs raw pgx vs Redis), tuning (the experiments), floor (pgbench running the same statements, then floor-writes), floor-writes (FastCommit sets and incrs, coalescing off/default/-coalesce-writes, against pgbench), reads (the read path's targets: gets beside raw pgx and pgbench, get_many beside raw pgx's forms and MGET), or several: compare,floor")
	flag.StringVar(&o.DSN, "dsn", os.Getenv("DBCACHE_TEST_DATABASE_URL"), "PostgreSQL URL (default $DBCACHE_TEST_DATABASE_URL)")
	flag.StringVar(&o.RedisAddr, "redis", "127.0.0.1:6379", "Redis address; empty to leave Redis out")
	flag.IntVar(&o.RedisDB, "redis-db", 9, "Redis database to fill and flush")
	flag.StringVar(&tables, "tables", "10000,1000000", "table sizes (entries)")
	flag.StringVar(&sizes, "values", "100,10240", "value sizes (bytes)")
	flag.StringVar(&conc, "g", "1,16", "goroutine counts")
	flag.StringVar(&ops, "ops", "", "operations (default all: "+strings.Join(benchcmp.AllOps, ",")+")")
	flag.DurationVar(&o.Duration, "d", time.Second, "time per system per cell")
	flag.IntVar(&o.Rounds, "rounds", 2, "interleaved rounds per cell")
	maxConns := flag.Int("conns", 16, "pgx pool size")
	flag.IntVar(&o.CoalesceGets, "coalesce", 4, "Config.CoalesceGets of the coalescing cache")
	flag.IntVar(&o.CoalesceWrites, "coalesce-writes", 4, "floor-writes: Config.CoalesceSets and CoalesceIncrs of its last column")
	steps := flag.String("steps", "", "tuning: only these experiments (query-exec-modes, pgbouncer, durability, group-commit, index-and-fillfactor, pool-size, bulk-paths, coalescing, scale-and-culling-memory)")
	pgbouncer := flag.String("pgbouncer", "", "tuning: a PgBouncer (pool_mode=transaction) URL in front of -dsn's database")
	flag.Parse()
	o.MaxConns = int32(*maxConns)
	o.Tables = ints(tables)
	o.ValueSizes = ints(sizes)
	o.Concurrency = ints(conc)
	if *steps != "" {
		o.TuningSteps = strings.Split(*steps, ",")
	}
	if ops != "" {
		o.Ops = strings.Split(ops, ",")
	}
	if o.DSN == "" {
		fmt.Fprintln(os.Stderr, "bench: -dsn or DBCACHE_TEST_DATABASE_URL is required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	for _, s := range strings.Split(*suite, ",") {
		var err error
		switch s {
		case "compare":
			err = benchcmp.Compare(ctx, &o)
		case "tuning":
			err = benchcmp.Tuning(ctx, &o, *pgbouncer)
		case "floor":
			err = benchcmp.Floor(ctx, &o)
			if err == nil {
				err = benchcmp.FloorWrites(ctx, &o)
			}
		case "floor-writes":
			err = benchcmp.FloorWrites(ctx, &o)
		case "reads":
			err = benchcmp.Reads(ctx, &o)
		default:
			err = fmt.Errorf("unknown suite %q", s)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
	}
}

func ints(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: %q is not a number\n", f)
			os.Exit(2)
		}
		out = append(out, n)
	}
	return out
}
