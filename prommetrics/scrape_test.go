package prommetrics_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/prommetrics"
)

// statements records every statement a pool runs, with its arguments.
type statements struct {
	mu  sync.Mutex
	ran []pgx.TraceQueryStartData
}

func (s *statements) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	s.mu.Lock()
	s.ran = append(s.ran, d)
	s.mu.Unlock()
	return ctx
}

func (s *statements) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// rowsRead walks an EXPLAIN (ANALYZE, FORMAT JSON) plan and returns the
// rows each scan of the cache table produced, the largest.
func rowsRead(plan any) float64 {
	var most float64
	switch p := plan.(type) {
	case []any:
		for _, x := range p {
			most = max(most, rowsRead(x))
		}
	case map[string]any:
		if p["Relation Name"] == "dbcache_entries" {
			rows, _ := p["Actual Rows"].(float64)
			loops, _ := p["Actual Loops"].(float64)
			most = max(most, rows*loops)
		}
		for _, v := range p {
			most = max(most, rowsRead(v))
		}
	}
	return most
}

// A scrape's table read is bounded whatever the table's size: on a table
// of 25,000 rows with CountLimit 100, every statement the scrape runs
// reads at most CountLimit + 1 of its rows (each one run again under
// EXPLAIN ANALYZE, with its arguments, to count them), and the rows
// figure is the statistic, not a count.
func TestScrapeReadsBoundedRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	admin := s.Pool(t)
	dbtest.Exec(t, admin, `INSERT INTO dbcache_entries (key, value, expires)
SELECT 'live' || i, 'v'::bytea, now() + interval '1 hour' FROM generate_series(1, 20000) AS i`)
	dbtest.Exec(t, admin, `INSERT INTO dbcache_entries (key, value, expires)
SELECT 'old' || i, 'v'::bytea, now() - interval '1 minute' FROM generate_series(1, 5000) AS i`)
	dbtest.Exec(t, admin, `ANALYZE dbcache_entries`)

	rec := &statements{}
	pc := s.PoolConfig(t)
	pc.ConnConfig.Tracer = rec
	const limit = 100
	_, reg := newCollector(t, &prommetrics.Config{Pool: dbtest.NewPool(t, pc), CountLimit: limit})
	got := scrape(t, reg)
	require.Equal(t, 1.0, got[`dbcache_table_stats_up{}`])
	require.Equal(t, float64(limit), got[`dbcache_table_expired_rows{}`], "capped at the limit")
	require.Greater(t, got[`dbcache_table_rows{}`], float64(limit))

	rec.mu.Lock()
	defer rec.mu.Unlock()
	var checked int
	for _, st := range rec.ran {
		if !strings.HasPrefix(strings.ToUpper(strings.TrimSpace(st.SQL)), "SELECT") &&
			!strings.HasPrefix(strings.ToUpper(strings.TrimSpace(st.SQL)), "WITH") {
			continue
		}
		var plan []byte
		require.NoError(t, admin.QueryRow(ctx, "EXPLAIN (ANALYZE, FORMAT JSON) "+st.SQL, st.Args...).Scan(&plan), st.SQL)
		var tree any
		require.NoError(t, json.Unmarshal(plan, &tree))
		n := rowsRead(tree)
		require.LessOrEqual(t, n, float64(limit+1), "%s read more than CountLimit + 1 rows", st.SQL)
		if n > 0 {
			checked++ // a walk of the table
		}
	}
	require.Positive(t, checked, "no statement read the table")
}

// A scrape whose table read cannot finish (another session holds an
// exclusive lock on the table) ends at TableTimeout: the scrape returns,
// with table_stats_up 0 and everything else.
func TestScrapeBoundedByTableTimeout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	admin := s.Pool(t)
	tx, err := admin.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `LOCK TABLE dbcache_entries IN ACCESS EXCLUSIVE MODE`)
	require.NoError(t, err)

	_, reg := newCollector(t, &prommetrics.Config{Pool: s.Pool(t), TableTimeout: 200 * time.Millisecond, Logger: newLogger(&dbtest.LogBuffer{})})
	done := make(chan map[string]float64, 1)
	go func() { done <- scrape(t, reg) }()
	select {
	case got := <-done:
		require.Equal(t, 0.0, got[`dbcache_table_stats_up{}`])
		require.Contains(t, got, `dbcache_cull_passes_total{result="done"}`)
	case <-time.After(time.Minute):
		t.Fatal("the scrape waited on the lock past TableTimeout")
	}
}
