package prommetrics_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/prommetrics"
)

func ExampleCollector() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	defer pool.Close()

	// Pool adds the table's rows and bytes, read at each scrape.
	metrics, err := prommetrics.New(&prommetrics.Config{Pool: pool, ConstLabels: prometheus.Labels{"cache": "example"}})
	if err != nil {
		panic(err)
	}
	reg := prometheus.NewRegistry() // or prometheus.MustRegister(metrics)
	reg.MustRegister(metrics)
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "example-metrics", Tracer: metrics})
	if err != nil {
		panic(err)
	}
	defer cache.Close()

	_ = cache.Set(ctx, "a", []byte("1"), dbcache.DefaultTimeout)
	_, _ = cache.GetMany(ctx, []string{"a", "b", "c"})

	// A program with an HTTP server mounts promhttp.HandlerFor(reg, …);
	// one without (a job) can use Listen.
	srv, err := prommetrics.Listen("127.0.0.1:0", reg)
	if err != nil {
		panic(err)
	}
	defer srv.Close(ctx)
	resp, err := http.Get("http://" + srv.Addr().String() + "/metrics")
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "dbcache_operation_keys_total") && !strings.HasSuffix(sc.Text(), " 0") {
			fmt.Println(sc.Text())
		}
	}
	// Output:
	// dbcache_operation_keys_total{cache="example",op="get_many",outcome="hit"} 1
	// dbcache_operation_keys_total{cache="example",op="get_many",outcome="miss"} 2
	// dbcache_operation_keys_total{cache="example",op="set",outcome="stored"} 1
}
