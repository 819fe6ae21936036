package prommetrics_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/lock"
	"github.com/dbcache/dbcache/prommetrics"
)

// A watched lock client's counters are exported at each scrape, and no
// series names a lock.
func TestLocks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := dbtest.Pool(t)
	m, reg := newCollector(t, &prommetrics.Config{})
	locks, err := lock.New(ctx, pool, nil)
	require.NoError(t, err)
	defer locks.Close()
	m.WatchLocks(locks)

	l, err := locks.TryAcquire(ctx, "secret-job", 50*time.Millisecond)
	require.NoError(t, err)
	_, err = locks.TryAcquire(ctx, "secret-job", time.Minute)
	require.ErrorIs(t, err, lock.ErrLocked)
	next, err := locks.Acquire(ctx, "secret-job", time.Minute)
	require.NoError(t, err)
	require.ErrorIs(t, l.Release(ctx), lock.ErrNotHeld)
	freed, err := locks.ForceRelease(ctx, "secret-job")
	require.NoError(t, err)
	require.True(t, freed)
	require.ErrorIs(t, next.Release(ctx), lock.ErrNotHeld)

	st := locks.Stats()
	got := scrape(t, reg)
	for series, want := range map[string]int64{
		"dbcache_lock_grants_total{}":          st.Grants,
		"dbcache_lock_waits_total{}":           st.Waits,
		"dbcache_lock_refusals_total{}":        st.Refusals,
		"dbcache_lock_expiries_total{}":        st.Expiries,
		"dbcache_lock_forced_releases_total{}": st.ForcedReleases,
	} {
		require.Equal(t, float64(want), got[series], series)
	}
	require.EqualValues(t, 2, st.Grants)
	require.EqualValues(t, 1, st.Waits)
	require.GreaterOrEqual(t, st.Refusals, int64(2))
	require.EqualValues(t, 2, st.Expiries)
	require.EqualValues(t, 1, st.ForcedReleases)
	for series := range got {
		require.NotContains(t, series, "secret", "a series names a lock")
	}
}
