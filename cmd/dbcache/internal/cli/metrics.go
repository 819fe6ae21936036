package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/prommetrics"
)

// metricsAddrHelp is --metrics-addr's help.
const metricsAddrHelp = "with --every, serve Prometheus metrics at http://ADDR/metrics (passes, rows removed, the table's rows and bytes), e.g. :9187"

// serveMetrics serves `cull --every`'s metrics on addr, when set: the
// passes this command runs (ObservePass), the culler's health, the table's
// figures at each scrape, and the process's. It says where on stderr (the port may have
// been 0) and returns the function that stops the server.
func (r *cullRun) serveMetrics(addr string, every time.Duration, pool *pgxpool.Pool, culler *culling.Culler) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	if every == 0 {
		return nil, usagef("--metrics-addr needs --every: a single pass ends before anything could scrape it")
	}
	m, err := prommetrics.New(&prommetrics.Config{Pool: pool, Schema: r.a.g.schema, Logger: r.a.log})
	if err != nil {
		return nil, err
	}
	m.WatchCuller(culler)
	reg := prometheus.NewRegistry()
	reg.MustRegister(m, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv, err := prommetrics.Listen(addr, reg)
	if err != nil {
		return nil, err
	}
	r.metrics = m
	url := fmt.Sprintf("http://%s/metrics", srv.Addr())
	if r.a.g.json {
		line, _ := json.Marshal(map[string]string{"msg": "serving metrics", "url": url})
		fmt.Fprintf(r.a.errw, "%s\n", line)
	} else {
		fmt.Fprintf(r.a.errw, "dbcache: serving metrics at %s\n", url)
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Close(ctx)
	}, nil
}

// observe hands a pass's result to the metrics, if served.
func (r *cullRun) observe(res *culling.PassResult, err error) {
	if r.metrics != nil {
		r.metrics.ObservePass(res, err)
	}
}
