package culling_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
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

func TestMain(m *testing.M) { dbtest.Main(m) }

// waitTimeout bounds every wait on a signal, so a broken culler fails the
// test instead of hanging it. It is never what a test waits for.
const waitTimeout = 30 * time.Second

type testBundle struct {
	pool   *pgxpool.Pool
	schema *dbtest.Schema
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	return &testBundle{pool: s.Pool(t), schema: s}
}

func newCuller(t *testing.T, pool *pgxpool.Pool, cfg *culling.Config) (*culling.Culler, *dbtest.LogBuffer) {
	t.Helper()
	sink := &dbtest.LogBuffer{}
	if cfg == nil {
		cfg = &culling.Config{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(sink, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if cfg.Citus = citusTestMode(cfg.Citus); cfg.Citus == culling.CitusOn {
		citusStandIns(t, pool)
	}
	c, err := culling.New(pool, cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		require.NoError(t, c.Stop(ctx))
		if out := sink.String(); out != "" {
			t.Log("culler log:\n" + out)
		}
	})
	return c, sink
}

// insert adds n rows named prefix00000001…; expires is an SQL expression
// over g, the row's number (1…n), or "NULL".
func insert(t *testing.T, pool *pgxpool.Pool, prefix string, n int, expires string) {
	t.Helper()
	dbtest.Exec(t, pool, fmt.Sprintf(`INSERT INTO %s (key, value, expires)
		SELECT $1 || lpad(g::text, 8, '0'), '\x00', %s FROM generate_series(1, $2) g`, migrations.Table, expires), prefix, n)
}

func keys(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), "SELECT key FROM "+migrations.Table+" ORDER BY key")
	require.NoError(t, err)
	ks, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return ks
}

func names(prefix string, from, to int) []string {
	out := []string{}
	for i := from; i <= to; i++ {
		out = append(out, fmt.Sprintf("%s%08d", prefix, i))
	}
	return out
}

func runOnce(t *testing.T, c *culling.Culler) *culling.PassResult {
	t.Helper()
	res, err := c.RunOnce(context.Background())
	require.NoError(t, err)
	require.False(t, res.Skipped)
	return res
}

func TestConfig(t *testing.T) {
	t.Parallel()
	pool := dbtest.NewSchema(t).Pool(t)

	c, err := culling.New(pool, nil)
	require.NoError(t, err)
	cfg := c.Config()
	require.Equal(t, culling.BatchSizeDefault, cfg.BatchSize)
	require.Equal(t, culling.CullFrequencyDefault, cfg.CullFrequency)
	require.Equal(t, culling.ExactCountLimitDefault, cfg.ExactCountLimit)
	require.Equal(t, culling.IntervalDefault, cfg.Interval)
	require.Equal(t, culling.MaxEntriesDefault, cfg.MaxEntries)
	require.Equal(t, culling.NudgeEveryDefault, cfg.NudgeEvery)
	require.Equal(t, culling.PassTimeoutDefault, cfg.PassTimeout)
	require.NotNil(t, cfg.Logger)

	_, err = culling.New(nil, nil)
	require.ErrorContains(t, err, "pool is nil")
	pcfg := dbtest.NewSchema(t).PoolConfig(t)
	pcfg.MaxConns = 1
	_, err = culling.New(dbtest.NewPool(t, pcfg), nil)
	require.ErrorContains(t, err, "needs 2")

	for _, tc := range []struct {
		cfg   culling.Config
		field string
	}{
		{culling.Config{BatchSize: -1}, "BatchSize"},
		{culling.Config{CullFrequency: -2}, "CullFrequency"},
		{culling.Config{ExactCountLimit: -2}, "ExactCountLimit"},
		{culling.Config{Interval: -time.Second}, "Interval"},
		{culling.Config{MaxEntries: -2}, "MaxEntries"},
		{culling.Config{NudgeEvery: -2}, "NudgeEvery"},
		{culling.Config{PassTimeout: -2}, "PassTimeout"},
		{culling.Config{Schema: `x"; DROP TABLE y; --`}, "Schema"},
	} {
		_, err := culling.New(pool, &tc.cfg)
		require.ErrorContains(t, err, "Config."+tc.field)
	}
	// The explicit special values are accepted.
	_, err = culling.New(pool, &culling.Config{CullFrequency: culling.CullAll, ExactCountLimit: -1, MaxEntries: culling.NoLimit,
		NudgeEvery: -1, PassTimeout: -1})
	require.NoError(t, err)
}

func TestTableNotFound(t *testing.T) {
	t.Parallel()
	pool := dbtest.NewSchema(t).Pool(t) // not migrated
	c, _ := newCuller(t, pool, nil)
	_, err := c.RunOnce(context.Background())
	require.ErrorIs(t, err, culling.ErrTableNotFound)
	_, err = culling.LastPass(context.Background(), pool, "")
	require.ErrorIs(t, err, culling.ErrTableNotFound)
}

func TestSweepExpired(t *testing.T) {
	t.Parallel()
	b := setup(t)
	insert(t, b.pool, "expired", 2500, "now() - interval '1 second' - g * interval '1 ms'")
	insert(t, b.pool, "live", 100, "now() + interval '1 hour'")
	insert(t, b.pool, "forever", 50, "NULL")
	c, _ := newCuller(t, b.pool, &culling.Config{BatchSize: 1000, MaxEntries: 1000})

	res := runOnce(t, c)
	require.EqualValues(t, 2500, res.ExpiredRemoved)
	require.Zero(t, res.Culled)
	require.EqualValues(t, 150, res.Count)
	require.True(t, res.CountExact)
	require.EqualValues(t, 150, res.Remaining)
	require.Equal(t, append(names("forever", 1, 50), names("live", 1, 100)...), keys(t, b.pool))

	res = runOnce(t, c)
	require.Zero(t, res.ExpiredRemoved+res.Culled)
}

// Over MaxEntries, a pass removes 1/CullFrequency of the entries (Django's
// arithmetic: 31 > 30 removes 31/3 = 10), or everything with CullAll, in
// expiry order.
func TestCullFrequency(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		rows      int
		freq      int
		wantCull  int
		wantRight int // the survivors are the rows numbered wantRight…rows
	}{
		{"default3", 31, 0, 10, 11},
		{"freq1", 31, 1, 31, 32},
		{"freq2", 31, 2, 15, 16},
		{"freq10", 31, 10, 3, 4},
		{"cullAll", 31, culling.CullAll, 31, 32},
		// Far over the limit, 1/3 would leave it over: cut to MaxEntries.
		{"farOver", 49, 3, 19, 20},
		{"atLimit", 30, 3, 0, 1},
		{"atLimitCullAll", 30, culling.CullAll, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			insert(t, b.pool, "k", tc.rows, "now() + g * interval '1 minute'")
			c, _ := newCuller(t, b.pool, &culling.Config{MaxEntries: 30, CullFrequency: tc.freq, BatchSize: 4})
			res := runOnce(t, c)
			require.EqualValues(t, tc.rows, res.Count)
			require.True(t, res.CountExact)
			require.EqualValues(t, tc.wantCull, res.Culled)
			require.EqualValues(t, tc.rows-tc.wantCull, res.Remaining)
			require.Equal(t, names("k", tc.wantRight, tc.rows), keys(t, b.pool), "the soonest to expire go first")
		})
	}
}

func TestNeverExpiringGoLast(t *testing.T) {
	t.Parallel()
	t.Run("mixed", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		insert(t, b.pool, "a-forever", 20, "NULL")
		insert(t, b.pool, "b-timed", 20, "now() + g * interval '1 minute'")
		c, _ := newCuller(t, b.pool, &culling.Config{MaxEntries: 30})
		res := runOnce(t, c)
		require.EqualValues(t, 13, res.Culled) // max(40/3, 40-30)
		// Django's key order would have culled the a-forever keys first.
		require.Equal(t, append(names("a-forever", 1, 20), names("b-timed", 14, 20)...), keys(t, b.pool))
	})
	t.Run("onlyForever", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		insert(t, b.pool, "forever", 40, "NULL")
		c, _ := newCuller(t, b.pool, &culling.Config{MaxEntries: 30})
		res := runOnce(t, c)
		require.EqualValues(t, 13, res.Culled)
		require.Equal(t, 27, dbtest.Count(t, b.pool))
	})
}

// Past ExactCountLimit, the count is PostgreSQL's live-row statistic.
func TestEstimatedCount(t *testing.T) {
	t.Parallel()
	t.Run("statistic", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		// The statistic sees a session's writes when it flushes them; make
		// the inserting session flush now, as it would within ~10 s.
		conn, err := b.pool.Acquire(context.Background())
		require.NoError(t, err)
		_, err = conn.Exec(context.Background(), `INSERT INTO `+migrations.Table+` (key, value, expires)
			SELECT 'k' || lpad(g::text, 8, '0'), '\x00', now() + g * interval '1 second' FROM generate_series(1, 1000) g`)
		require.NoError(t, err)
		_, err = conn.Exec(context.Background(), "SELECT pg_stat_force_next_flush()")
		require.NoError(t, err)
		conn.Release()

		c, _ := newCuller(t, b.pool, &culling.Config{MaxEntries: 500, ExactCountLimit: -1})
		res := runOnce(t, c)
		require.False(t, res.CountExact)
		require.EqualValues(t, 1000, res.Count)
		require.EqualValues(t, 500, res.Culled)
		require.Equal(t, names("k", 501, 1000), keys(t, b.pool))
	})
	t.Run("walkOverflow", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		insert(t, b.pool, "k", 1000, "now() + g * interval '1 second'")
		c, _ := newCuller(t, b.pool, &culling.Config{MaxEntries: 50, ExactCountLimit: 100})
		res := runOnce(t, c)
		// Whether or not the statistic has caught up, the count is at
		// least the walk's 101 and not exact; the cull never passes it.
		require.False(t, res.CountExact)
		require.GreaterOrEqual(t, res.Count, int64(101))
		require.LessOrEqual(t, res.Count, int64(1000))
		require.Equal(t, res.Count-50, res.Culled)
		require.Equal(t, 1000-int(res.Culled), dbtest.Count(t, b.pool))
	})
}

func TestSchemaConfig(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	pcfg := s.PoolConfig(t)
	pcfg.ConnConfig.RuntimeParams["search_path"] = "pg_catalog"
	pool := dbtest.NewPool(t, pcfg)
	inSchema := s.Pool(t)
	insert(t, inSchema, "k", 40, "now() + g * interval '1 second'")

	c, _ := newCuller(t, pool, &culling.Config{MaxEntries: 30, Schema: s.Name})
	res := runOnce(t, c)
	require.EqualValues(t, 13, res.Culled)
	require.Equal(t, 27, dbtest.Count(t, inSchema))
	rec, err := culling.LastPass(context.Background(), pool, s.Name)
	require.NoError(t, err)
	require.EqualValues(t, 13, rec.Culled)

	// With search_path alone the table is not found.
	c2, _ := newCuller(t, pool, nil)
	_, err = c2.RunOnce(context.Background())
	require.ErrorIs(t, err, culling.ErrTableNotFound)
}

func TestLastPass(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	_, err := culling.LastPass(ctx, b.pool, "")
	require.ErrorIs(t, err, culling.ErrNoPass)
	_, err = culling.LastPass(ctx, b.pool, "bad name")
	require.Error(t, err)

	insert(t, b.pool, "old", 5, "now() - interval '1 minute'")
	insert(t, b.pool, "k", 40, "now() + g * interval '1 second'")
	c, _ := newCuller(t, b.pool, &culling.Config{MaxEntries: 30})
	res := runOnce(t, c)

	rec, err := culling.LastPass(ctx, b.pool, "")
	require.NoError(t, err)
	require.EqualValues(t, 5, rec.ExpiredRemoved)
	require.EqualValues(t, 13, rec.Culled)
	require.EqualValues(t, 40, rec.Count)
	require.True(t, rec.CountExact)
	require.EqualValues(t, 27, rec.Remaining)
	require.EqualValues(t, 1, rec.Passes)
	require.True(t, rec.StartedAt.Equal(res.StartedAt))
	require.False(t, rec.FinishedAt.Before(rec.StartedAt))
	require.False(t, rec.LastCullAt.IsZero())
	require.GreaterOrEqual(t, rec.SinceLastPass, time.Duration(0))
	require.Contains(t, rec.Runner, ":")
	firstCull := rec.LastCullAt

	// A pass that culls nothing keeps the time of the last cull.
	runOnce(t, c)
	rec, err = culling.LastPass(ctx, b.pool, "")
	require.NoError(t, err)
	require.EqualValues(t, 2, rec.Passes)
	require.Zero(t, rec.Culled)
	require.True(t, rec.LastCullAt.Equal(firstCull))
	require.EqualValues(t, 13, rec.TotalCulled)
	require.EqualValues(t, 5, rec.TotalExpiredRemoved)
}

// A missing state table (migration 002 not applied) does not stop culling.
func TestWithoutStateTable(t *testing.T) {
	t.Parallel()
	b := setup(t)
	dbtest.Exec(t, b.pool, "DROP TABLE "+culling.StateTable)
	insert(t, b.pool, "k", 40, "NULL")
	c, sink := newCuller(t, b.pool, &culling.Config{MaxEntries: 30})
	require.EqualValues(t, 13, runOnce(t, c).Culled)
	require.Contains(t, sink.String(), "apply the migrations")
}

func TestProgress(t *testing.T) {
	t.Parallel()
	b := setup(t)
	insert(t, b.pool, "old", 25, "now() - interval '1 minute'")
	insert(t, b.pool, "k", 40, "now() + g * interval '1 second'")
	var got []culling.Progress
	c, _ := newCuller(t, b.pool, &culling.Config{MaxEntries: 30, BatchSize: 10,
		OnProgress: func(p culling.Progress) { got = append(got, p) }})
	runOnce(t, c)

	var phases []culling.Phase
	for _, p := range got {
		phases = append(phases, p.Phase)
	}
	require.Equal(t, []culling.Phase{
		culling.PhaseSweep, culling.PhaseSweep, culling.PhaseSweep, // 10, 10, 5
		culling.PhaseCount,
		culling.PhaseCull, culling.PhaseCull, culling.PhaseCull, // start, 10, 3
		culling.PhaseDone,
	}, phases)
	require.EqualValues(t, 25, got[2].ExpiredRemoved)
	require.EqualValues(t, 13, got[4].CullTarget)
	require.EqualValues(t, 40, got[4].Count)
	require.EqualValues(t, 10, got[5].Culled)
	last := got[len(got)-1]
	require.EqualValues(t, 13, last.Culled)
	require.EqualValues(t, 25, last.ExpiredRemoved)
}

func TestLogging(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var buf dbtest.LogBuffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	c, _ := newCuller(t, b.pool, &culling.Config{MaxEntries: 30, Logger: logger})

	runOnce(t, c)
	require.Empty(t, buf.String(), "a pass that removed nothing logs below Info")

	insert(t, b.pool, "k", 40, "NULL")
	runOnce(t, c)
	out := buf.String()
	require.Equal(t, 1, strings.Count(out, "\n"))
	for _, want := range []string{"level=INFO", "culling.Culler: pass done", "expired_removed=0", "culled=13",
		"count=40", "count_exact=true", "remaining=27", "duration="} {
		require.Contains(t, out, want)
	}
}

// Two cullers on one table, in two pools: while one holds the lock the
// other skips; afterwards either can run.
func TestOneCullerAtATime(t *testing.T) {
	t.Parallel()
	b := setup(t)
	insert(t, b.pool, "old", 100, "now() - interval '1 minute'")
	insert(t, b.pool, "k", 40, "now() + g * interval '1 second'")

	inPass, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	a, _ := newCuller(t, b.pool, &culling.Config{MaxEntries: 30, BatchSize: 10, OnProgress: func(p culling.Progress) {
		once.Do(func() { close(inPass); <-release }) // hold the lock mid-sweep
	}})
	other, _ := newCuller(t, b.schema.Pool(t), &culling.Config{MaxEntries: 30})

	done := make(chan *culling.PassResult, 1)
	errA := make(chan error, 1)
	go func() {
		res, err := a.RunOnce(context.Background())
		errA <- err
		done <- res
	}()
	waitFor(t, inPass)
	res, err := other.RunOnce(context.Background())
	require.NoError(t, err)
	require.True(t, res.Skipped)
	require.Zero(t, res.ExpiredRemoved+res.Culled)
	close(release)
	require.NoError(t, <-errA)
	resA := <-done
	require.False(t, resA.Skipped)
	require.EqualValues(t, 100, resA.ExpiredRemoved)
	require.EqualValues(t, 13, resA.Culled)

	res = runOnce(t, other) // the lock was released
	require.Zero(t, res.ExpiredRemoved+res.Culled)
}

// Concurrent passes over the same table never cull twice: the total culled
// is what one pass would have culled.
func TestConcurrentPasses(t *testing.T) {
	t.Parallel()
	b := setup(t)
	insert(t, b.pool, "k", 49, "now() + g * interval '1 second'")
	var cullers []*culling.Culler
	for range 4 {
		c, _ := newCuller(t, b.schema.Pool(t), &culling.Config{MaxEntries: 30})
		cullers = append(cullers, c)
	}
	var wg sync.WaitGroup
	var culled, ran atomic.Int64
	errs := make(chan error, len(cullers)*5)
	for _, c := range cullers {
		wg.Go(func() {
			for range 5 {
				res, err := c.RunOnce(context.Background())
				if err != nil {
					errs <- err
					return
				}
				culled.Add(res.Culled)
				if !res.Skipped {
					ran.Add(1)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.EqualValues(t, 19, culled.Load())
	require.Positive(t, ran.Load())
	require.Equal(t, names("k", 20, 49), keys(t, b.pool))
}

// A worker stopped mid-pass keeps what it removed, logs no error, and
// leaves the lock free for the next culler, which finishes the job.
func TestStopMidPass(t *testing.T) {
	t.Parallel()
	b := setup(t)
	insert(t, b.pool, "old", 500, "now() - interval '1 minute' - g * interval '1 ms'")
	inPass, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	c, sink := newCuller(t, b.pool, &culling.Config{BatchSize: 100, Interval: time.Hour, OnProgress: func(p culling.Progress) {
		once.Do(func() { close(inPass); <-release })
	}})
	require.NoError(t, c.Start(context.Background()))
	waitFor(t, inPass)

	// A Stop that cannot wait still cancels the pass at once; then let
	// the callback return so the pass sees it, and wait for the worker.
	expired, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, c.Stop(expired), context.Canceled)
	close(release)
	ctx, cancel2 := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel2()
	require.NoError(t, c.Stop(ctx))
	left := dbtest.Count(t, b.pool)
	require.Less(t, left, 500, "the first batch stays deleted")
	require.GreaterOrEqual(t, left, 300, "the pass stopped early")
	require.NotContains(t, sink.String(), "level=ERROR")
	require.NotContains(t, sink.String(), "canceled")

	other, _ := newCuller(t, b.schema.Pool(t), nil)
	res := runOnce(t, other)
	require.EqualValues(t, left, res.ExpiredRemoved)
	require.Zero(t, dbtest.Count(t, b.pool))
}

// A pass whose lock transaction dies mid-pass deletes nothing more: the
// lock went with the backend and another culler may have started. Each
// batch checks the lock itself, so this does not wait for a heartbeat.
func TestLockLostMidPass(t *testing.T) {
	t.Parallel()
	b := setup(t)
	insert(t, b.pool, "old", 300, "now() - interval '1 minute' - g * interval '1 ms'")
	app := "culler-lock-lost-" + b.schema.Name
	cfg := b.schema.PoolConfig(t)
	cfg.ConnConfig.RuntimeParams["application_name"] = app
	pool := dbtest.NewPool(t, cfg)
	left := -1
	var once sync.Once
	c, _ := newCuller(t, pool, &culling.Config{BatchSize: 10, OnProgress: func(p culling.Progress) {
		once.Do(func() {
			// The lock transaction idles while the batches run on the other
			// connection: end its backend and wait until it is gone.
			dbtest.Exec(t, b.pool, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
				WHERE application_name = $1 AND state = 'idle in transaction'`, app)
			for dbtest.Exec(t, b.pool, `SELECT 1 FROM pg_stat_activity
				WHERE application_name = $1 AND state = 'idle in transaction'`, app) > 0 {
				time.Sleep(10 * time.Millisecond)
			}
			left = dbtest.Count(t, b.pool)
		})
	}})
	_, err := c.RunOnce(context.Background())
	require.ErrorIs(t, err, culling.ErrLockLost)
	require.Equal(t, 290, left, "one batch ran before the lock was lost")
	require.Equal(t, left, dbtest.Count(t, b.pool), "no batch ran after it")
}

// A pass that fails on a database error releases the lock too.
func TestLockReleasedOnError(t *testing.T) {
	t.Parallel()
	b := setup(t)
	insert(t, b.pool, "old", 50, "now() - interval '1 minute'")
	var once sync.Once
	c, _ := newCuller(t, b.pool, &culling.Config{BatchSize: 10, OnProgress: func(p culling.Progress) {
		// Make the next batch fail: its table is gone.
		once.Do(func() { dbtest.Exec(t, b.pool, "ALTER TABLE "+migrations.Table+" RENAME TO moved") })
	}})
	res, err := c.RunOnce(context.Background())
	require.ErrorContains(t, err, "remove expired rows")
	require.EqualValues(t, 10, res.ExpiredRemoved, "the result holds what was done")
	dbtest.Exec(t, b.pool, "ALTER TABLE moved RENAME TO "+migrations.Table)

	res = runOnce(t, c)
	require.EqualValues(t, 40, res.ExpiredRemoved)

	// So does one whose context is cancelled.
	ctx, cancel := context.WithCancel(context.Background())
	insert(t, b.pool, "old2", 50, "now() - interval '1 minute'")
	c2, _ := newCuller(t, b.pool, &culling.Config{BatchSize: 10, OnProgress: func(culling.Progress) { cancel() }})
	res, err = c2.RunOnce(ctx)
	require.ErrorIs(t, err, context.Canceled)
	require.EqualValues(t, 10, res.ExpiredRemoved)
	res = runOnce(t, c)
	require.EqualValues(t, 40, res.ExpiredRemoved)
}

func TestStartStop(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	passes := make(chan culling.Progress, 100)
	c, _ := newCuller(t, b.pool, &culling.Config{Interval: time.Hour, OnProgress: func(p culling.Progress) {
		if p.Phase == culling.PhaseDone {
			passes <- p
		}
	}})
	require.NoError(t, c.Stop(ctx), "Stop before Start")
	require.NoError(t, c.Start(ctx))
	require.NoError(t, c.Start(ctx), "Start twice")
	waitFor(t, passes) // the first pass runs at once
	require.NoError(t, c.Stop(ctx))
	require.NoError(t, c.Stop(ctx), "Stop twice")

	require.NoError(t, c.Start(ctx), "restart")
	waitFor(t, passes)
	require.NoError(t, c.Stop(ctx))

	// Cancelling Start's context stops the worker too.
	sctx, cancel := context.WithCancel(ctx)
	require.NoError(t, c.Start(sctx))
	waitFor(t, passes)
	cancel()
	require.NoError(t, c.Stop(ctx))

	cancelled, cancel2 := context.WithCancel(ctx)
	cancel2()
	require.ErrorIs(t, c.Start(cancelled), context.Canceled)
}

// Stop returns ctx.Err() when the worker does not end in time.
func TestStopTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t)
	insert(t, b.pool, "old", 20, "now() - interval '1 minute'")
	inPass, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	c, _ := newCuller(t, b.pool, &culling.Config{BatchSize: 10, Interval: time.Hour, OnProgress: func(culling.Progress) {
		once.Do(func() { close(inPass); <-release })
	}})
	require.NoError(t, c.Start(context.Background()))
	waitFor(t, inPass)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, c.Stop(ctx), context.Canceled)
	require.ErrorContains(t, c.Start(context.Background()), "still waiting")
	close(release)
	require.NoError(t, c.Stop(context.Background()))
	require.NoError(t, c.Start(context.Background()), "a stopped culler starts again")
}

// NoteWrites wakes a started worker once NudgeEvery rows have been written.
func TestNudge(t *testing.T) {
	t.Parallel()
	b := setup(t)
	passes := make(chan culling.Progress, 100)
	c, _ := newCuller(t, b.pool, &culling.Config{MaxEntries: 30, NudgeEvery: 50, Interval: time.Hour,
		OnProgress: func(p culling.Progress) {
			if p.Phase == culling.PhaseDone {
				passes <- p
			}
		}})
	c.NoteWrites(1000) // before Start: only counted
	require.NoError(t, c.Start(context.Background()))
	waitFor(t, passes) // the first pass, at Start

	insert(t, b.pool, "k", 40, "NULL")
	c.NoteWrites(20)
	c.NoteWrites(-5)
	c.NoteWrites(0)
	c.NoteWrites(29)
	select {
	case p := <-passes:
		t.Fatalf("a pass ran after 49 noted writes: %+v", p)
	default:
	}
	c.NoteWrites(1) // 50
	p := waitFor(t, passes)
	require.EqualValues(t, 13, p.Culled)
}

// A burst of 100k writes with MaxEntries 10k: the table is at or under the
// limit once the worker has run, and at every moment it is over the limit
// by no more than the rows written since the last completed pass counted
// the table, the overshoot bound docs/culling.md derives.
func TestBurst(t *testing.T) {
	t.Parallel()
	const (
		maxEntries = 10_000
		nudgeEvery = 1000
		total      = 100_000
		perInsert  = 100
		writers    = 2
	)
	b := setup(t)
	ctx := context.Background()

	// started counts rows before their INSERT runs, committed after it
	// returns: every sample compares an upper bound of rows written by the
	// time it was taken with a lower bound of rows written before a pass
	// counted.
	var started, committed atomic.Int64
	var (
		mu        sync.Mutex
		countedAt int64 // committed when the running pass began counting
		lastDone  = int64(0)
		passes    int
	)
	doneCh := make(chan int64, 1000)
	c, _ := newCuller(t, b.pool, &culling.Config{
		MaxEntries: maxEntries, NudgeEvery: nudgeEvery, Interval: 50 * time.Millisecond,
		OnProgress: func(p culling.Progress) {
			mu.Lock()
			defer mu.Unlock()
			switch p.Phase {
			case culling.PhaseCount:
				countedAt = committed.Load()
			case culling.PhaseDone:
				lastDone = countedAt
				passes++
				doneCh <- countedAt
			}
		},
	})
	require.NoError(t, c.Start(ctx))

	stopSampling := make(chan struct{})
	var maxOver, maxBound int64
	sampled := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stopSampling:
				sampled <- nil
				return
			default:
			}
			mu.Lock()
			base := lastDone
			mu.Unlock()
			var n int64
			if err := b.pool.QueryRow(ctx, "SELECT count(*) FROM "+migrations.Table).Scan(&n); err != nil {
				sampled <- err
				return
			}
			upper := started.Load()
			if over := n - maxEntries; over > maxOver {
				maxOver = over
			}
			if bound := upper - base; bound > maxBound {
				maxBound = bound
			}
			if n > maxEntries+(upper-base) {
				sampled <- fmt.Errorf("%d rows: over the limit by %d, more than the %d written since the last pass counted", n, n-maxEntries, upper-base)
				return
			}
		}
	}()

	var wg sync.WaitGroup
	writeErrs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for i := w; i < total/perInsert; i += writers {
				started.Add(perInsert)
				_, err := b.pool.Exec(ctx, `INSERT INTO `+migrations.Table+` (key, value, expires)
					SELECT 'burst' || lpad(($1 + g)::text, 8, '0'), '\x00', now() + interval '1 hour'
					  FROM generate_series(1, $2) g`, i*perInsert, perInsert)
				if err != nil {
					writeErrs <- err
					return
				}
				committed.Add(perInsert)
				c.NoteWrites(perInsert)
			}
		})
	}
	wg.Wait()
	close(stopSampling)
	require.NoError(t, <-sampled)
	close(writeErrs)
	for err := range writeErrs {
		require.NoError(t, err)
	}

	// Wait for a pass that counted after the last write.
	deadline := time.After(waitTimeout)
	for {
		select {
		case at := <-doneCh:
			if at < total {
				continue
			}
		case <-deadline:
			t.Fatal("no pass ran after the burst")
		}
		break
	}
	require.LessOrEqual(t, dbtest.Count(t, b.pool), maxEntries)
	mu.Lock()
	t.Logf("%d passes; largest overshoot seen %d rows (%.1f%% of MaxEntries); largest writes-since-count bound %d",
		passes, maxOver, 100*float64(maxOver)/maxEntries, maxBound)
	mu.Unlock()
}

func waitFor[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitTimeout):
		t.Fatal("timed out waiting for the culler")
	}
	var zero T
	return zero
}

// A pass changes no setting that outlives it on the pool's connections:
// its batches commit asynchronously through a transaction-local setting.
func TestNoSessionStateLeaks(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	cfg := s.PoolConfig(t)
	cfg.MaxConns = 2 // the two connections a pass uses
	pool := dbtest.NewPool(t, cfg)
	insert(t, pool, "old", 30, "now() - interval '1 minute'")
	insert(t, pool, "k", 40, "NULL")
	c, _ := newCuller(t, pool, &culling.Config{MaxEntries: 30, BatchSize: 7})
	res := runOnce(t, c)
	require.EqualValues(t, 30, res.ExpiredRemoved)
	require.EqualValues(t, 13, res.Culled)

	ctx := context.Background()
	var conns []*pgxpool.Conn
	for range 2 {
		conn, err := pool.Acquire(ctx)
		require.NoError(t, err)
		conns = append(conns, conn)
		var sc, idle string
		require.NoError(t, conn.QueryRow(ctx, "SELECT current_setting('synchronous_commit'), current_setting('idle_in_transaction_session_timeout')").Scan(&sc, &idle))
		require.Equal(t, "on", sc)
		require.Equal(t, "0", idle)
		require.EqualValues(t, 'I', conn.Conn().PgConn().TxStatus())
	}
	for _, conn := range conns {
		conn.Release()
	}
}

// Start and Stop from many goroutines at once, for the race detector.
func TestStartStopStress(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, _ := newCuller(t, b.pool, &culling.Config{Interval: time.Hour})
	var wg sync.WaitGroup
	errs := make(chan error, 80)
	for i := range 8 {
		wg.Go(func() {
			for j := range 10 {
				if (i+j)%2 == 0 {
					_ = c.Start(context.Background()) // may report a Stop in flight
				} else {
					errs <- c.Stop(context.Background())
				}
				c.NoteWrites(j)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.NoError(t, c.Stop(context.Background()))
}

// While a pass runs, its lock is held by a transaction that is idle, with
// no transaction ID and no snapshot, so it does not hold back vacuum.
func TestLockTransactionHoldsNoSnapshot(t *testing.T) {
	t.Parallel()
	b := setup(t)
	insert(t, b.pool, "old", 20, "now() - interval '1 minute'")
	inPass, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	c, _ := newCuller(t, b.pool, &culling.Config{BatchSize: 10,
		OnProgress: func(culling.Progress) { once.Do(func() { close(inPass); <-release }) }})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // a failed assertion must not leave the pass blocked
	done := make(chan error, 1)
	go func() { _, err := c.RunOnce(context.Background()); done <- err }()
	waitFor(t, inPass)

	var state string
	var xid, xmin *string
	// The two-int4 advisory key (0x64624343, oid - 2^31) shows in pg_locks
	// as classid and objid, the latter as the int4's unsigned bit pattern.
	require.NoError(t, b.pool.QueryRow(context.Background(), `
		SELECT a.state, a.backend_xid::text, a.backend_xmin::text
		  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
		   AND l.classid = 1684161347
		   AND l.objid = ((to_regclass($1)::oid::int8 + 2147483648) % 4294967296)::text::oid`,
		migrations.Table).Scan(&state, &xid, &xmin))
	require.Equal(t, "idle in transaction", state)
	require.Nil(t, xid)
	require.Nil(t, xmin)
	unblock()
	require.NoError(t, <-done)
}

func TestCacheTableMatchesMigrations(t *testing.T) {
	t.Parallel()
	require.Equal(t, migrations.Table, culling.CacheTable)
}
