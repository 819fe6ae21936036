package compression_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dbcache/dbcache/codec"
	"github.com/dbcache/dbcache/compression"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/benchpair"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/typed"
)

// BenchmarkStorage measures where compression pays: client-side zstd and
// S2 (this package, above MinSize) against PostgreSQL's own TOAST
// compression, pglz (the default) and lz4 (per column), on JSON of about
// 1, 10 and 100 KB and on 10 KB that is already compressed. Each
// sub-benchmark writes b.N entries (distinct keys, 64 distinct values
// cycled) into an empty table on one connection, then reads them all
// back, and reports per entry:
//
//	value-B         the value's size before any compression
//	stored-B        pg_column_size(value): what the row holds (compressed
//	                inline or the TOAST pointer's target, as stored)
//	rel-B           pg_total_relation_size (heap, TOAST, indexes) ÷ entries
//	wal-B           WAL written by the sets (pg_current_wal_lsn difference)
//	set-us, get-us  wall time per Set and per Get
//	set-cpu-us, get-cpu-us          this process's CPU per operation
//	srv-set-cpu-us, srv-get-cpu-us  the server backend's CPU per operation
//	                (its /proc/PID/schedstat; absent when the server is
//	                not on this machine or not readable)
//	load1           the machine's 1-minute load average at the end
//
// Reproduce the figures of docs/compression.md with
//
//	go test -run '^$' -bench Storage -benchtime 400x ./compression/
func BenchmarkStorage(b *testing.B) {
	type valueKind struct {
		name string
		make func(seed uint64) []byte
	}
	kinds := []valueKind{
		{"json-1k", func(s uint64) []byte { return jsonValue(1<<10, s) }},
		{"json-10k", func(s uint64) []byte { return jsonValue(10<<10, s) }},
		{"json-100k", func(s uint64) []byte { return jsonValue(100<<10, s) }},
		{"compressed-10k", func(s uint64) []byte { return randomValue(10<<10, s) }},
	}
	type variant struct {
		name   string
		client compression.Algorithm // 0: none
		column string                // the value column's compression: pglz or lz4
	}
	variants := []variant{
		{"none+pglz", 0, "pglz"},
		{"none+lz4", 0, "lz4"},
		{"s2+pglz", compression.S2, "pglz"},
		{"zstd+pglz", compression.Zstd, "pglz"},
	}
	for _, k := range kinds {
		values := make([][]byte, 64)
		for i := range values {
			values[i] = k.make(uint64(i + 1))
		}
		for _, v := range variants {
			b.Run(k.name+"/"+v.name, func(b *testing.B) {
				runStorage(b, values, v.client, v.column)
			})
		}
	}
}

func runStorage(b *testing.B, values [][]byte, alg compression.Algorithm, column string) {
	ctx := context.Background()
	s := dbtest.NewSchema(b)
	s.Migrate(b)
	cfg := s.PoolConfig(b)
	cfg.MaxConns = 1 // one backend, so its CPU is the operations'
	pool := dbtest.NewPool(b, cfg)
	dbtest.Exec(b, pool, `ALTER TABLE dbcache_entries ALTER COLUMN value SET COMPRESSION `+column)
	store, err := dbcache.New(ctx, pool, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	c := codec.Bytes()
	if alg != 0 {
		comp, err := compression.New(&compression.Config{Algorithm: alg})
		if err != nil {
			b.Fatal(err)
		}
		c = compression.Wrap(c, comp)
	}
	cache, err := typed.New[[]byte](store, &typed.Config[[]byte]{Codec: c})
	if err != nil {
		b.Fatal(err)
	}
	var pid int
	if err := pool.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		b.Fatal(err)
	}
	key := func(i int) string { return "k" + strconv.Itoa(i) }
	// Warm up: the statements get prepared on the connection.
	for i := range 4 {
		if err := cache.Set(ctx, "warm"+strconv.Itoa(i), values[i], dbcache.DefaultTimeout); err != nil {
			b.Fatal(err)
		}
		if _, err := cache.Get(ctx, "warm"+strconv.Itoa(i)); err != nil {
			b.Fatal(err)
		}
	}
	dbtest.Exec(b, pool, `TRUNCATE dbcache_entries`)
	lsn := func() string {
		var l string
		if err := pool.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&l); err != nil {
			b.Fatal(err)
		}
		return l
	}

	b.ResetTimer()
	lsn0, srv0, cpu0, t0 := lsn(), backendCPU(pid), benchpair.ProcessCPU(), time.Now()
	for i := range b.N {
		if err := cache.Set(ctx, key(i), values[i%len(values)], dbcache.ExpiresIn(time.Hour)); err != nil {
			b.Fatal(err)
		}
	}
	setT, setCPU, setSrv := time.Since(t0), benchpair.ProcessCPU()-cpu0, backendCPU(pid)-srv0
	lsn1 := lsn()
	srv1, cpu1, t1 := backendCPU(pid), benchpair.ProcessCPU(), time.Now()
	for i := range b.N {
		v, err := cache.Get(ctx, key(i))
		if err != nil {
			b.Fatal(err)
		}
		if len(v) != len(values[i%len(values)]) {
			b.Fatalf("get %d: %d bytes, want %d", i, len(v), len(values[i%len(values)]))
		}
	}
	getT, getCPU, getSrv := time.Since(t1), benchpair.ProcessCPU()-cpu1, backendCPU(pid)-srv1
	b.StopTimer()

	var wal, rel int64
	var stored, raw float64
	if err := pool.QueryRow(ctx, `SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::bigint`, lsn1, lsn0).Scan(&wal); err != nil {
		b.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT avg(pg_column_size(value)), pg_total_relation_size('dbcache_entries') FROM dbcache_entries`).Scan(&stored, &rel); err != nil {
		b.Fatal(err)
	}
	for i := range b.N {
		raw += float64(len(values[i%len(values)]))
	}
	n := float64(b.N)
	us := func(d time.Duration) float64 { return float64(d.Microseconds()) / n }
	b.ReportMetric(raw/n, "value-B")
	b.ReportMetric(stored, "stored-B")
	b.ReportMetric(float64(rel)/n, "rel-B")
	b.ReportMetric(float64(wal)/n, "wal-B")
	b.ReportMetric(us(setT), "set-us")
	b.ReportMetric(us(getT), "get-us")
	b.ReportMetric(us(setCPU), "set-cpu-us")
	b.ReportMetric(us(getCPU), "get-cpu-us")
	if l, ok := benchpair.LoadAverage(); ok {
		b.ReportMetric(l, "load1")
	}
	if setSrv >= 0 && getSrv >= 0 && srv0 >= 0 {
		b.ReportMetric(us(setSrv), "srv-set-cpu-us")
		b.ReportMetric(us(getSrv), "srv-get-cpu-us")
	}
}

// backendCPU is the CPU time a server process has used, from
// /proc/PID/schedstat (nanoseconds on the CPU), or -1 when it cannot be
// read (the server is elsewhere, or another user's /proc is hidden).
func backendCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	ns, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return -1
	}
	return time.Duration(ns)
}
