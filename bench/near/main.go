// Command near measures the near cache (package nearcache) and prints the
// markdown tables of docs/nearcache.md:
//
//	go run ./bench/near -dsn "$URL"                      # everything
//	go run ./bench/near -dsn "$URL" -suite mechanism     # invalidation latency and write cost
//	go run ./bench/near -dsn "$URL" -suite compare       # hot-key reads against dbcache, Redis, rueidis
//
// The server needs wal_level = logical and a role that may replicate;
// Redis (and rueidis through it) is measured when -redis answers. Every
// figure is relative to others measured in the same run.
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

	"github.com/dbcache/dbcache/bench/internal/nearbench"
)

func main() {
	o := nearbench.Options{Out: os.Stdout, Log: os.Stderr}
	var conc string
	suite := flag.String("suite", "mechanism,compare", "mechanism (invalidation latency, write cost), compare (hot-key reads), or both")
	flag.StringVar(&o.DSN, "dsn", os.Getenv("DBCACHE_TEST_DATABASE_URL"), "PostgreSQL URL with wal_level = logical (default $DBCACHE_TEST_DATABASE_URL)")
	flag.StringVar(&o.RedisAddr, "redis", "127.0.0.1:6379", "Redis address; empty to leave Redis and rueidis out")
	flag.IntVar(&o.RedisDB, "redis-db", 9, "Redis database to fill and flush")
	flag.IntVar(&o.Keys, "keys", 100_000, "key space")
	flag.IntVar(&o.ValueSize, "value", 100, "value size (bytes)")
	flag.Float64Var(&o.ZipfS, "zipf", 1.1, "Zipf exponent of the key choice (compare)")
	flag.IntVar(&o.ReadPercent, "reads", 95, "percentage of gets (compare)")
	flag.StringVar(&conc, "g", "1,16", "goroutine counts")
	flag.DurationVar(&o.Duration, "d", 4*time.Second, "time per system (or side) per cell")
	flag.IntVar(&o.Rounds, "rounds", 4, "interleaved rounds per cell")
	flag.DurationVar(&o.LatencyDuration, "latency-d", 5*time.Second, "how long each invalidation-latency run writes")
	flag.IntVar(&o.LatencyWriters, "latency-writers", 4, "goroutines writing during the latency runs")
	maxConns := flag.Int("conns", 16, "pgx pool size")
	flag.Parse()
	o.MaxConns = int32(*maxConns)
	for _, f := range strings.Split(conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			fmt.Fprintf(os.Stderr, "near: -g: %q is not a number\n", f)
			os.Exit(2)
		}
		o.Concurrency = append(o.Concurrency, n)
	}
	if o.DSN == "" {
		fmt.Fprintln(os.Stderr, "near: -dsn or DBCACHE_TEST_DATABASE_URL is required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	for _, s := range strings.Split(*suite, ",") {
		var err error
		switch s {
		case "mechanism":
			err = nearbench.Mechanisms(ctx, &o)
		case "compare":
			err = nearbench.Compare(ctx, &o)
		default:
			err = fmt.Errorf("unknown suite %q", s)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "near:", err)
			os.Exit(1)
		}
	}
}
