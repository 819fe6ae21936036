package culling_test

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/migrations"
)

// An OnProgress that panics cannot crash the process from the started
// culler's goroutine: the pass fails with ErrHookPanicked, releases its
// lock, keeps what it removed, and the worker carries on. RunOnce returns
// the same error to its caller instead of panicking.
func TestOnProgressPanics(t *testing.T) {
	t.Parallel()
	b := setup(t)
	insert(t, b.pool, "old", 300, "now() - interval '1 minute' - g * interval '1 ms'")
	var calls atomic.Int64
	c, _ := newCuller(t, b.pool, &culling.Config{BatchSize: 100, Interval: 10 * time.Millisecond, OnProgress: func(culling.Progress) {
		if calls.Add(1)%2 == 0 {
			panic("a progress bar broke")
		}
	}})
	require.NoError(t, c.Start(context.Background()))
	require.Eventually(t, func() bool { return c.Health().ConsecutiveFailures >= 3 }, waitTimeout, 5*time.Millisecond)
	h := c.Health()
	require.ErrorIs(t, h.LastError, culling.ErrHookPanicked)
	require.ErrorContains(t, h.LastError, "a progress bar broke")
	require.True(t, h.Running, "the worker carries on")
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	require.NoError(t, c.Stop(ctx))

	other, _ := newCuller(t, b.schema.Pool(t), nil)
	res := runOnce(t, other) // not skipped: the lock was released
	require.Zero(t, dbtest.Count(t, b.pool))
	require.Less(t, res.ExpiredRemoved, int64(300), "the failed passes kept what they removed")

	insert(t, b.pool, "again", 10, "now() - interval '1 minute'")
	once, _ := newCuller(t, b.pool, &culling.Config{OnProgress: func(culling.Progress) { panic("boom") }})
	_, err := once.RunOnce(context.Background())
	require.ErrorIs(t, err, culling.ErrHookPanicked)
	runOnce(t, other)
}

// panicHandler is a slog.Handler whose Handle panics.
type panicHandler struct{ slog.Handler }

func (panicHandler) Enabled(context.Context, slog.Level) bool  { return true }
func (panicHandler) Handle(context.Context, slog.Record) error { panic("the log sink broke") }

// A Logger whose handler panics cannot crash the process either: the
// culler loses its log lines and goes on culling, its failed passes
// included (their errors are logged too).
func TestLoggerPanics(t *testing.T) {
	t.Parallel()
	b := setup(t)
	logger := slog.New(panicHandler{})
	c, _ := newCuller(t, b.pool, &culling.Config{Logger: logger, Interval: 10 * time.Millisecond, MaxEntries: 10})
	require.NoError(t, c.Start(context.Background()))
	for i := range 3 {
		insert(t, b.pool, "old"+strings.Repeat("x", i), 50, "now() - interval '1 minute' - g * interval '1 ms'")
		require.Eventually(t, func() bool { return dbtest.Count(t, b.pool) == 0 }, waitTimeout, 5*time.Millisecond)
	}
	// A failing pass logs its error: the table is gone for a while.
	dbtest.Exec(t, b.pool, "ALTER TABLE "+migrations.Table+" RENAME TO moved")
	require.Eventually(t, func() bool { return c.Health().ConsecutiveFailures > 0 }, waitTimeout, 5*time.Millisecond)
	dbtest.Exec(t, b.pool, "ALTER TABLE moved RENAME TO "+migrations.Table)
	insert(t, b.pool, "late", 50, "now() - interval '1 minute'")
	require.Eventually(t, func() bool { return dbtest.Count(t, b.pool) == 0 }, waitTimeout, 5*time.Millisecond)
	require.True(t, c.Health().Running)
}

// No key or value reaches the culler's logs, at any level, whatever its
// passes meet: rows swept and culled, a pass that fails, a pass whose lock
// is lost, a dry run.
func TestLogsHoldNoKeys(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const secret = "s3cr3t-token"
	sink := &dbtest.LogBuffer{}
	logger := slog.New(slog.NewTextHandler(sink, &slog.HandlerOptions{Level: slog.LevelDebug}))
	fill := func() {
		dbtest.Exec(t, b.pool, `INSERT INTO `+migrations.Table+` (key, value, expires)
			SELECT 'user:`+secret+`:' || g, convert_to('`+secret+`', 'UTF8'),
			       CASE WHEN g % 2 = 0 THEN now() - interval '1 minute' ELSE now() + g * interval '1 second' END
			  FROM generate_series(1, 200) g ON CONFLICT DO NOTHING`)
	}
	fill()
	c, _ := newCuller(t, b.pool, &culling.Config{Logger: logger, BatchSize: 10, MaxEntries: 20})
	_, err := c.DryRun(context.Background())
	require.NoError(t, err)
	runOnce(t, c)

	// A pass that fails mid-way.
	fill()
	var renamed atomic.Bool
	failing, _ := newCuller(t, b.pool, &culling.Config{Logger: logger, BatchSize: 10, MaxEntries: 20, OnProgress: func(culling.Progress) {
		if renamed.CompareAndSwap(false, true) {
			dbtest.Exec(t, b.pool, "ALTER TABLE "+migrations.Table+" RENAME TO moved")
		}
	}})
	_, err = failing.RunOnce(context.Background())
	require.Error(t, err)
	dbtest.Exec(t, b.pool, "ALTER TABLE moved RENAME TO "+migrations.Table)

	// A started worker whose passes fail and log.
	fill()
	w, _ := newCuller(t, b.pool, &culling.Config{Logger: logger, BatchSize: 10, MaxEntries: 20, Interval: 10 * time.Millisecond})
	require.NoError(t, w.Start(context.Background()))
	dbtest.Exec(t, b.pool, "ALTER TABLE "+migrations.Table+" RENAME TO moved")
	require.Eventually(t, func() bool { return w.Health().ConsecutiveFailures > 0 }, waitTimeout, 5*time.Millisecond)
	dbtest.Exec(t, b.pool, "ALTER TABLE moved RENAME TO "+migrations.Table)
	require.Eventually(t, func() bool { return w.Health().ConsecutiveFailures == 0 }, waitTimeout, 5*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	require.NoError(t, w.Stop(ctx))

	logged := sink.String()
	require.Contains(t, logged, "pass done", "the passes logged")
	require.Contains(t, logged, "pass failed", "the failures logged")
	require.NotContains(t, logged, secret)
	require.NotContains(t, logged, "user:")
}
