package prommetrics_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/prommetrics"
	"github.com/dbcache/dbcache/ratelimit"
)

// A limiter's checks are counted by result, rejections included, under
// the limiter's name; no series names a key, and a failed check counts as
// an error.
func TestRateLimitChecks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := dbtest.Pool(t)
	m, reg := newCollector(t, &prommetrics.Config{ConstLabels: prometheus.Labels{"cache": "test"}})
	logins, err := ratelimit.New(ctx, pool, &ratelimit.Config{Name: "login", Tracer: m})
	require.NoError(t, err)
	api, err := ratelimit.New(ctx, pool, &ratelimit.Config{Name: "api", Tracer: m, KeyPrefix: "api:"})
	require.NoError(t, err)

	const key = "alice@example.com"
	limit := ratelimit.Limit{Rate: 2, Period: time.Hour}
	for range 5 {
		_, err := logins.Allow(ctx, key, limit)
		require.NoError(t, err)
	}
	_, err = api.Allow(ctx, key, limit)
	require.NoError(t, err)
	dbtest.Exec(t, pool, `INSERT INTO dbcache_rate_limits VALUES ('api:crafted', 9223372036854775000)`)
	_, err = api.Allow(ctx, "crafted", limit)
	require.Error(t, err)
	// Refused input never reaches the database and is not counted.
	_, err = api.Allow(ctx, "", limit)
	require.ErrorIs(t, err, ratelimit.ErrInvalidKey)

	got := scrape(t, reg)
	for series, want := range map[string]float64{
		`dbcache_ratelimit_checks_total{cache="test",limiter="login",result="allowed"}`:  2,
		`dbcache_ratelimit_checks_total{cache="test",limiter="login",result="rejected"}`: 3,
		`dbcache_ratelimit_checks_total{cache="test",limiter="api",result="allowed"}`:    1,
		`dbcache_ratelimit_checks_total{cache="test",limiter="api",result="error"}`:      1,
		`dbcache_ratelimit_check_duration_seconds_count{cache="test",limiter="login"}`:   5,
		`dbcache_ratelimit_check_duration_seconds_count{cache="test",limiter="api"}`:     2,
	} {
		require.Equal(t, want, got[series], series)
	}
	for series := range got {
		require.False(t, strings.Contains(series, "alice") || strings.Contains(series, "crafted"), "a series names a key: %s", series)
	}
}
