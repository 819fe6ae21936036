package culling_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/migrations"
)

// insertIn is insert for a pool without search_path (one through
// PgBouncer, say): the table is named with its schema.
func insertIn(t *testing.T, pool *pgxpool.Pool, schema, prefix string, n int, expires string) {
	t.Helper()
	dbtest.Exec(t, pool, fmt.Sprintf(`INSERT INTO %s (key, value, expires)
		SELECT $1 || lpad(g::text, 8, '0'), '\x00', %s FROM generate_series(1, $2) g`,
		pgx.Identifier{schema, migrations.Table}.Sanitize(), expires), prefix, n)
}

// Behind PgBouncer in transaction pooling the PID a client is given is
// PgBouncer's cancel key, not a backend's: a culler that checked its lock
// against it deleted nothing (every batch failed to encode the key as an
// int4, or found "its" lock missing). A pass reads its lock backend's PID
// from the server, in the lock's own transaction, so through PgBouncer
// RunOnce removes what is due (expired rows and a cull), pass after pass,
// and so does a DryRun report it.
func TestPgBouncerRunOnce(t *testing.T) {
	t.Parallel()
	bouncer := dbtest.NewPgBouncer(t, nil)
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	direct := s.Pool(t)
	pool := bouncer.Pool(t, s)
	c, _ := newCuller(t, pool, &culling.Config{Schema: s.Name, BatchSize: 250, MaxEntries: 2000, CullFrequency: 100})

	insertIn(t, direct, s.Name, "old", 8000, "now() - interval '1 minute' - g * interval '1 ms'")
	insertIn(t, direct, s.Name, "live", 3000, "now() + interval '1 hour' + g * interval '1 ms'")
	dry, err := c.DryRun(context.Background())
	require.NoError(t, err)
	require.EqualValues(t, 8000, dry.ExpiredRemoved)
	require.EqualValues(t, 1000, dry.Culled)

	res := runOnce(t, c)
	require.EqualValues(t, 8000, res.ExpiredRemoved)
	require.EqualValues(t, 1000, res.Culled)
	require.Equal(t, 2000, dbtest.Count(t, direct))
	require.Equal(t, names("live", 1001, 3000), keys(t, direct), "the latest-expiring stay")

	for i := range 7 {
		insertIn(t, direct, s.Name, fmt.Sprintf("old%d_", i), 1000, "now() - interval '1 minute'")
		res := runOnce(t, c)
		require.EqualValues(t, 1000, res.ExpiredRemoved, "pass %d", i+2)
		require.Zero(t, res.Culled)
	}
	require.Equal(t, 2000, dbtest.Count(t, direct))
	h := c.Health()
	require.Zero(t, h.ConsecutiveFailures)
	require.Nil(t, h.LastError)
}

// Two started cullers through PgBouncer, as two `dbcache cull --every`
// processes would run, take turns on the lock and remove every expired row
// written while they run; their passes never overlap, and neither fails.
func TestPgBouncerTwoCullers(t *testing.T) {
	t.Parallel()
	bouncer := dbtest.NewPgBouncer(t, nil)
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	direct := s.Pool(t)

	var (
		active, overlaps atomic.Int32
		passes           atomic.Int64
	)
	var cullers []*culling.Culler
	for range 2 {
		// A pass is in progress from its first report to PhaseDone.
		var inPass bool
		var mu sync.Mutex
		c, _ := newCuller(t, bouncer.Pool(t, s), &culling.Config{Schema: s.Name, BatchSize: 100, Interval: 20 * time.Millisecond,
			MaxEntries: culling.NoLimit, OnProgress: func(p culling.Progress) {
				mu.Lock()
				defer mu.Unlock()
				if !inPass {
					inPass = true
					if active.Add(1) > 1 {
						overlaps.Add(1)
					}
				}
				if p.Phase == culling.PhaseDone {
					inPass = false
					active.Add(-1)
					passes.Add(1)
				}
			}})
		cullers = append(cullers, c)
	}
	for _, c := range cullers {
		require.NoError(t, c.Start(context.Background()))
	}
	for i := range 8 {
		insertIn(t, direct, s.Name, fmt.Sprintf("old%d_", i), 1000, "now() - interval '1 minute' - g * interval '1 ms'")
		require.Eventually(t, func() bool { return dbtest.Count(t, direct) == 0 }, waitTimeout, 10*time.Millisecond,
			"round %d: the cullers never removed the expired rows", i)
	}
	for _, c := range cullers {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		require.NoError(t, c.Stop(ctx))
		cancel()
		h := c.Health()
		require.Zero(t, h.ConsecutiveFailures, "last error: %v", h.LastError)
		require.Nil(t, h.LastError)
	}
	require.Positive(t, passes.Load())
	require.Zero(t, overlaps.Load(), "two passes held the lock at once")
}
