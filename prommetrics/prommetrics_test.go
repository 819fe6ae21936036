package prommetrics_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/prommetrics"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

// scrape gathers reg and returns every sample as `name{k="v",…}` → value
// (a histogram's count as name_count), labels sorted.
func scrape(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			sort.Strings(labels)
			name := mf.GetName()
			var v float64
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				v = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				v = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				name += "_count"
				v = float64(m.GetHistogram().GetSampleCount())
			}
			out[name+"{"+strings.Join(labels, ",")+"}"] = v
		}
	}
	return out
}

func newCollector(t *testing.T, cfg *prommetrics.Config) (*prommetrics.Collector, *prometheus.Registry) {
	t.Helper()
	c, err := prommetrics.New(cfg)
	require.NoError(t, err)
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(c))
	return c, reg
}

func TestOperations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := dbtest.Pool(t)
	m, reg := newCollector(t, &prommetrics.Config{ConstLabels: prometheus.Labels{"cache": "test"}})
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{Tracer: m})
	require.NoError(t, err)

	require.NoError(t, cache.Set(ctx, "a", []byte("1"), dbcache.DefaultTimeout))
	_, err = cache.Get(ctx, "a")
	require.NoError(t, err)
	_, err = cache.Get(ctx, "nope")
	require.ErrorIs(t, err, dbcache.ErrMiss)
	_, err = cache.Add(ctx, "a", nil, dbcache.DefaultTimeout)
	require.NoError(t, err)
	_, err = cache.GetMany(ctx, []string{"a", "x", "y"})
	require.NoError(t, err)
	_, err = cache.Get(ctx, "bad\x00key")
	require.ErrorIs(t, err, dbcache.ErrInvalidKey)
	require.NoError(t, cache.Set(ctx, "word", []byte("hello"), dbcache.DefaultTimeout))
	_, err = cache.Incr(ctx, "word", 1)
	require.ErrorIs(t, err, dbcache.ErrNotInteger)
	_, err = cache.GetOrSetFunc(ctx, "g", func(context.Context) ([]byte, error) { return []byte("v"), nil }, dbcache.DefaultTimeout)
	require.NoError(t, err)
	_, err = cache.GetOrSetFunc(ctx, "h", func(context.Context) ([]byte, error) { return nil, errors.New("backend") }, dbcache.DefaultTimeout)
	require.Error(t, err)
	_, err = cache.GetOrSetFunc(ctx, "p", func(context.Context) ([]byte, error) { panic("boom") }, dbcache.DefaultTimeout)
	require.Error(t, err)
	require.NoError(t, cache.Close())
	_, err = cache.Get(ctx, "a")
	require.ErrorIs(t, err, dbcache.ErrClosed)

	got := scrape(t, reg)
	l := func(s string) string { return strings.ReplaceAll(s, "'", `"`) }
	for series, want := range map[string]float64{
		l(`dbcache_operations_total{cache='test',op='get',result='ok'}`):              2,
		l(`dbcache_operations_total{cache='test',op='get',result='error'}`):           1,
		l(`dbcache_operation_keys_total{cache='test',op='get',outcome='hit'}`):        1,
		l(`dbcache_operation_keys_total{cache='test',op='get',outcome='miss'}`):       1,
		l(`dbcache_operation_keys_total{cache='test',op='set',outcome='stored'}`):     2,
		l(`dbcache_operation_keys_total{cache='test',op='add',outcome='not_stored'}`): 1,
		l(`dbcache_operation_keys_total{cache='test',op='get_many',outcome='hit'}`):   1,
		l(`dbcache_operation_keys_total{cache='test',op='get_many',outcome='miss'}`):  2,
		// A refused key is not traced: no series counts it.
		l(`dbcache_operation_errors_total{cache='test',kind='invalid_key',op='get'}`):         0,
		l(`dbcache_operation_errors_total{cache='test',kind='closed',op='get'}`):              1,
		l(`dbcache_operation_errors_total{cache='test',kind='not_integer',op='incr'}`):        1,
		l(`dbcache_operation_errors_total{cache='test',kind='loader',op='get_or_set'}`):       1,
		l(`dbcache_operation_errors_total{cache='test',kind='loader_panic',op='get_or_set'}`): 1,
		l(`dbcache_operation_duration_seconds_count{cache='test',op='get'}`):                  3,
		l(`dbcache_loads_total{cache='test',result='ok',trigger='miss'}`):                     1,
		l(`dbcache_loads_total{cache='test',result='error',trigger='miss'}`):                  1,
		l(`dbcache_loads_total{cache='test',result='panic',trigger='miss'}`):                  1,
		l(`dbcache_load_duration_seconds_count{cache='test',trigger='miss'}`):                 3,
	} {
		require.Equal(t, want, got[series], series)
	}
}

// A transient failure that FailOpen swallowed is counted as fail_open,
// not as ok or error.
func TestFailOpen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := dbtest.Pool(t)
	m, reg := newCollector(t, nil)
	// New gets a deadline of its own, so the short OpTimeout meant for the
	// operations does not bound it on a loaded machine.
	newCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cache, err := dbcache.New(newCtx, pool, &dbcache.Config{Tracer: m, FailOpen: true, OpTimeout: 200 * time.Millisecond})
	require.NoError(t, err)
	defer cache.Close()
	require.NoError(t, cache.Set(ctx, "k", nil, dbcache.DefaultTimeout))
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `SELECT 1 FROM dbcache_entries WHERE key = ':1:k' FOR UPDATE`)
	require.NoError(t, err)
	// The row is locked: the Set waits past OpTimeout, a transient timeout.
	require.NoError(t, cache.Set(context.Background(), "k", []byte("v"), dbcache.DefaultTimeout))
	got := scrape(t, reg)
	require.Equal(t, 1.0, got[`dbcache_operations_total{op="set",result="fail_open"}`])
	require.Equal(t, 1.0, got[`dbcache_operations_total{op="set",result="ok"}`])
	require.Equal(t, 1.0, got[`dbcache_operation_keys_total{op="set",outcome="not_stored"}`])
}

func TestErrorKind(t *testing.T) {
	t.Parallel()
	for err, want := range map[error]string{
		context.Canceled: "canceled",
		fmt.Errorf("x: %w", context.DeadlineExceeded):       "timeout",
		fmt.Errorf("x: %w", dbcache.ErrInvalidKey):          "invalid_key",
		dbcache.ErrNotInteger:                               "not_integer",
		dbcache.ErrOverflow:                                 "overflow",
		dbcache.ErrClosed:                                   "closed",
		dbcache.ErrNotMigrated:                              "not_migrated",
		dbcache.ErrPrefixUnsupported:                        "prefix_unsupported",
		&dbcache.LoaderPanicError{Value: 1}:                 "loader_panic",
		&dbcache.HookPanicError{Value: 1}:                   "hook_panic",
		&dbcache.LoaderError{Err: errors.New("backend")}:    "loader",
		&pgconn.PgError{Code: "57P01"}:                      "transient",
		&pgconn.PgError{Code: "40P01"}:                      "transient",
		fmt.Errorf("x: %w", &pgconn.PgError{Code: "42501"}): "database",
		errors.New("backend down"):                          "other",
	} {
		require.Equal(t, want, prommetrics.ErrorKind(err), "%v", err)
	}
}

func TestCulling(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	pool := s.Pool(t)
	m, reg := newCollector(t, &prommetrics.Config{Pool: pool})
	dbtest.Exec(t, pool, `INSERT INTO dbcache_entries (key, value, expires)
SELECT 'old' || i, 'v', now() - interval '1 minute' FROM generate_series(1, 5) i`)
	dbtest.Exec(t, pool, `INSERT INTO dbcache_entries (key, value, expires)
SELECT 'live' || i, 'v', now() + interval '1 hour' FROM generate_series(1, 10) i`)

	got := scrape(t, reg)
	require.Equal(t, 1.0, got[`dbcache_table_stats_up{}`])
	require.Equal(t, 15.0, got[`dbcache_table_rows{}`])
	require.Equal(t, 5.0, got[`dbcache_table_expired_rows{}`])
	require.Positive(t, got[`dbcache_table_bytes{part="table"}`])
	require.Positive(t, got[`dbcache_table_bytes{part="indexes"}`])
	_, ok := got[`dbcache_cull_last_pass_timestamp_seconds{}`]
	require.False(t, ok, "no pass recorded yet: no series")

	// A started culler reports through OnProgress.
	var seen int
	culler, err := culling.New(pool, &culling.Config{MaxEntries: 8, OnProgress: m.OnProgress(func(culling.Progress) { seen++ })})
	require.NoError(t, err)
	res, err := culler.RunOnce(ctx)
	require.NoError(t, err)
	require.Positive(t, seen, "the next hook still runs")
	got = scrape(t, reg)
	require.Equal(t, 1.0, got[`dbcache_cull_passes_total{result="done"}`])
	require.Equal(t, 5.0, got[`dbcache_cull_rows_removed_total{reason="expired"}`])
	require.Equal(t, float64(res.Culled), got[`dbcache_cull_rows_removed_total{reason="culled"}`])
	require.Equal(t, 3.0, got[`dbcache_cull_rows_removed_total{reason="culled"}`], "10 over 8: a third")
	require.Equal(t, 1.0, got[`dbcache_cull_pass_duration_seconds_count{}`])
	require.Equal(t, 7.0, got[`dbcache_table_rows{}`])
	require.Zero(t, got[`dbcache_table_expired_rows{}`])
	ts := got[`dbcache_cull_last_pass_timestamp_seconds{}`]
	require.InDelta(t, float64(time.Now().Unix()), ts, 300)

	// Its Health, once watched.
	_, ok = got[`dbcache_culler_running{}`]
	require.False(t, ok, "no culler watched yet")
	m.WatchCuller(culler)
	got = scrape(t, reg)
	require.Equal(t, 0.0, got[`dbcache_culler_running{}`], "RunOnce only: no worker")
	require.Equal(t, 0.0, got[`dbcache_culler_in_pass{}`])
	require.Equal(t, 0.0, got[`dbcache_culler_consecutive_failures{}`])
	require.InDelta(t, float64(time.Now().Unix()), got[`dbcache_culler_last_success_timestamp_seconds{}`], 300)
	_, ok = got[`dbcache_culler_last_error_timestamp_seconds{}`]
	require.False(t, ok, "no pass failed")

	// A culler whose passes fail (no table in its schema).
	empty := dbtest.NewSchema(t)
	failing, err := culling.New(empty.Pool(t), nil)
	require.NoError(t, err)
	_, err = failing.RunOnce(ctx)
	require.Error(t, err)
	m.WatchCuller(failing)
	got = scrape(t, reg)
	require.Equal(t, 1.0, got[`dbcache_culler_consecutive_failures{}`])
	require.InDelta(t, float64(time.Now().Unix()), got[`dbcache_culler_last_error_timestamp_seconds{}`], 300)

	// RunOnce's callers report each result, skipped and failed ones too;
	// dry runs removed nothing and are not counted.
	m2, reg2 := newCollector(t, nil)
	m2.ObservePass(&culling.PassResult{ExpiredRemoved: 3, AgedOut: 2, CulledBytes: 1000, Duration: time.Millisecond}, nil)
	m2.ObservePass(&culling.PassResult{Skipped: true}, nil)
	m2.ObservePass(&culling.PassResult{Culled: 4}, errors.New("timeout"))
	m2.ObservePass(nil, errors.New("connect"))
	m2.ObservePass(&culling.PassResult{DryRun: true, ExpiredRemoved: 50}, nil)
	got = scrape(t, reg2)
	require.Equal(t, 1.0, got[`dbcache_cull_passes_total{result="done"}`])
	require.Equal(t, 1.0, got[`dbcache_cull_passes_total{result="skipped"}`])
	require.Equal(t, 2.0, got[`dbcache_cull_passes_total{result="error"}`])
	require.Equal(t, 3.0, got[`dbcache_cull_rows_removed_total{reason="expired"}`])
	require.Equal(t, 4.0, got[`dbcache_cull_rows_removed_total{reason="culled"}`])
	require.Equal(t, 2.0, got[`dbcache_cull_rows_removed_total{reason="aged_out"}`])
	require.Equal(t, 1000.0, got[`dbcache_cull_bytes_culled_total{}`])
	require.Equal(t, 3.0, got[`dbcache_cull_pass_duration_seconds_count{}`])
}

// A table that cannot be read makes table_stats_up 0; the scrape still
// succeeds with everything else.
func TestTableUnreadable(t *testing.T) {
	t.Parallel()
	empty := dbtest.NewSchema(t) // not migrated
	logs := &dbtest.LogBuffer{}
	_, reg := newCollector(t, &prommetrics.Config{Pool: empty.Pool(t), Logger: newLogger(logs)})
	got := scrape(t, reg)
	require.Equal(t, 0.0, got[`dbcache_table_stats_up{}`])
	_, ok := got[`dbcache_table_rows{}`]
	require.False(t, ok)
	require.Contains(t, got, `dbcache_cull_passes_total{result="done"}`)
	scrape(t, reg)
	require.Equal(t, 1, strings.Count(logs.String(), "statistics failed"), "logged once a minute, not per scrape")
}

func TestConfig(t *testing.T) {
	t.Parallel()
	for _, cfg := range []prommetrics.Config{
		{TableTimeout: -time.Second},
		{CountLimit: -1},
		{OpBuckets: []float64{1, 0.5}},
	} {
		_, err := prommetrics.New(&cfg)
		require.Error(t, err, "%+v", cfg)
	}
	// Two collectors with different labels register side by side.
	reg := prometheus.NewRegistry()
	for _, name := range []string{"a", "b"} {
		c, err := prommetrics.New(&prommetrics.Config{ConstLabels: prometheus.Labels{"cache": name}})
		require.NoError(t, err)
		require.NoError(t, reg.Register(c))
	}
}

func TestServer(t *testing.T) {
	t.Parallel()
	m, reg := newCollector(t, nil)
	m.ObservePass(&culling.PassResult{ExpiredRemoved: 2}, nil)
	srv, err := prommetrics.Listen("127.0.0.1:0", reg)
	require.NoError(t, err)
	resp, err := http.Get("http://" + srv.Addr().String() + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, string(body), `dbcache_cull_rows_removed_total{reason="expired"} 2`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, srv.Close(ctx))
	require.NoError(t, srv.Close(ctx))
	_, err = http.Get("http://" + srv.Addr().String() + "/metrics")
	require.Error(t, err, "closed")

	// A port in use is Listen's error.
	busy, err := prommetrics.Listen("127.0.0.1:0", reg)
	require.NoError(t, err)
	defer busy.Close(ctx)
	_, err = prommetrics.Listen(busy.Addr().String(), reg)
	require.Error(t, err)
	_, err = prommetrics.Listen("127.0.0.1:0", nil)
	require.Error(t, err)
}

// The loaders' coordination events are exported by name: a caller that
// joins a load in flight, a load that waits for another process's lease,
// a refresh that fails and the stale hits that then back off.
func TestLoadEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	m, reg := newCollector(t, nil)
	cache, err := dbcache.New(ctx, s.Pool(t), &dbcache.Config{Tracer: m, RefreshRetry: time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cache.Close() })
	other, err := dbcache.New(ctx, s.Pool(t), nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = other.Close() })

	// Another process holds k's lease: the load waits for its value.
	lease, err := other.AcquireLease(ctx, "k", time.Minute)
	require.NoError(t, err)
	joined := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := cache.GetOrSetFunc(ctx, "k", func(context.Context) ([]byte, error) { return []byte("mine"), nil }, dbcache.Forever)
			joined <- err
		}()
	}
	require.Eventually(t, func() bool { return cache.Stats().JoinedWaits == 1 && cache.Stats().LoadWaits == 1 }, time.Minute, 5*time.Millisecond)
	require.NoError(t, other.Set(ctx, "k", []byte("theirs"), dbcache.Forever))
	require.NoError(t, <-joined)
	require.NoError(t, <-joined)
	_, err = other.ReleaseLease(ctx, "k", lease.Token)
	require.NoError(t, err)

	// A failing refresh, then stale hits that back off.
	_, err = cache.GetOrRevalidate(ctx, "r", func(context.Context) ([]byte, error) { return []byte("v"), nil }, 0, time.Hour)
	require.NoError(t, err)
	failing := func(context.Context) ([]byte, error) { return nil, errors.New("backend down") }
	_, err = cache.GetOrRevalidate(ctx, "r", failing, 0, time.Hour)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return cache.Stats().RefreshFailures == 1 }, time.Minute, 5*time.Millisecond)
	_, err = cache.GetOrRevalidate(ctx, "r", failing, 0, time.Hour)
	require.NoError(t, err)

	got := scrape(t, reg)
	for series, want := range map[string]float64{
		`dbcache_load_events_total{event="joined"}`:          1,
		`dbcache_load_events_total{event="lease_wait"}`:      1,
		`dbcache_load_events_total{event="lease_expired"}`:   0,
		`dbcache_load_events_total{event="refresh_failed"}`:  1,
		`dbcache_load_events_total{event="refresh_backoff"}`: 1,
	} {
		require.Equal(t, want, got[series], series)
	}
}
