package culling_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/migrations"
)

// holdSnapshot opens a REPEATABLE READ transaction on a connection of its
// own and keeps its snapshot until the test ends. While it lives, no row
// deleted after it began can be pruned, nor its index entries marked dead,
// anywhere in the database: the situation a long report query or a
// forgotten BEGIN in another application creates.
func holdSnapshot(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "SELECT 1 FROM "+migrations.Table+" LIMIT 1")
	require.NoError(t, err)
	var xmin *string
	require.NoError(t, pool.QueryRow(ctx, `SELECT backend_xmin::text FROM pg_stat_activity WHERE pid = $1`,
		conn.Conn().PgConn().PID()).Scan(&xmin))
	require.NotNil(t, xmin, "the snapshot is held")
	t.Cleanup(func() {
		_ = tx.Rollback(context.Background())
		conn.Release()
	})
}

// indexReads is the number of index entries every index of the cache table
// but its primary key has returned to scans (pg_stat_user_indexes), as the
// statistics have it once every session has flushed.
func indexReads(t *testing.T, pool *pgxpool.Pool) int64 {
	t.Helper()
	var n int64
	require.NoError(t, pool.QueryRow(context.Background(), `
		SELECT coalesce(sum(idx_tup_read), 0)::int8 FROM pg_stat_user_indexes
		 WHERE relid = to_regclass($1) AND indexrelname <> $2`,
		migrations.Table, migrations.Table+"_pkey").Scan(&n))
	return n
}

// A pass removes what it removes at a constant cost per row even while
// another transaction holds an old snapshot: each batch resumes after the
// last row the previous one removed, instead of walking again over the
// index entries of every row removed so far (which the snapshot keeps from
// being marked dead). Measured in index entries read per removed row, not
// in time. Half the rows share one expiry, as a SetMany or a bulk INSERT
// writes them, so the resume point must tell ties apart.
func TestPassCostWithHeldSnapshot(t *testing.T) {
	t.Parallel()
	t.Run("sweep", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		holdSnapshot(t, b.pool)
		insert(t, b.pool, "tie", 20_000, "now() - interval '1 hour'")
		insert(t, b.pool, "seq", 20_000, "now() - interval '30 minutes' + g * interval '1 ms'")
		insert(t, b.pool, "live", 100, "now() + interval '1 hour'")
		c, _ := newCuller(t, b.pool, &culling.Config{ExactCountLimit: -1, MaxEntries: 1_000_000})

		before := indexReads(t, b.pool)
		res := runOnce(t, c)
		require.EqualValues(t, 40_000, res.ExpiredRemoved)
		perRow := float64(indexReads(t, b.pool)-before) / float64(res.ExpiredRemoved)
		t.Logf("index entries read per removed row: %.2f", perRow)
		require.Less(t, perRow, 2.0)
		require.Equal(t, names("live", 1, 100), keys(t, b.pool))
	})
	t.Run("cull", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		holdSnapshot(t, b.pool)
		insert(t, b.pool, "tie", 20_000, "now() + interval '1 hour'")
		insert(t, b.pool, "seq", 20_000, "now() + interval '2 hours' + g * interval '1 ms'")
		insert(t, b.pool, "zforever", 10_000, "NULL")
		// Over the limit by 45,000: the cull crosses the tie, the distinct
		// expiries and half of the never-expiring rows.
		c, _ := newCuller(t, b.pool, &culling.Config{MaxEntries: 5000})

		before := indexReads(t, b.pool)
		res := runOnce(t, c)
		require.EqualValues(t, 50_000, res.Count)
		require.True(t, res.CountExact)
		require.EqualValues(t, 45_000, res.Culled)
		perRow := float64(indexReads(t, b.pool)-before) / float64(res.Culled)
		t.Logf("index entries read per culled row: %.2f", perRow)
		require.Less(t, perRow, 2.0)
		// Never-expiring rows go last, in key order among themselves.
		require.Equal(t, names("zforever", 5001, 10_000), keys(t, b.pool))
	})
}

// staleEstimate leaves PostgreSQL's live-row statistic for the cache table
// at `inserted` while the table holds inserted-deleted rows: a session
// deletes rows and keeps its statistics unflushed, as any session does for
// up to a second after its last flush (longer inside a transaction).
func staleEstimate(t *testing.T, pool *pgxpool.Pool, inserted, deleted int) {
	t.Helper()
	ctx := context.Background()
	// No autovacuum or autoanalyze may refresh the statistic meanwhile.
	dbtest.Exec(t, pool, "ALTER TABLE "+migrations.Table+" SET (autovacuum_enabled = off)")
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = conn.Exec(context.Background(), "ROLLBACK")
		conn.Release()
	})
	_, err = conn.Exec(ctx, `INSERT INTO `+migrations.Table+` (key, value, expires)
		SELECT 'k' || lpad(g::text, 8, '0'), '\x00', now() + interval '1 hour' + g * interval '1 ms'
		  FROM generate_series(1, $1) g`, inserted)
	require.NoError(t, err)
	// Flush the insert now; the session then flushes again no sooner than
	// a second later, and never while a transaction is open.
	_, err = conn.Exec(ctx, "SELECT pg_stat_force_next_flush()")
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "DELETE FROM "+migrations.Table+" WHERE key <= $1", fmt.Sprintf("k%08d", deleted))
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "BEGIN")
	require.NoError(t, err)
	var est int64
	require.NoError(t, pool.QueryRow(ctx, "SELECT pg_stat_get_live_tuples(to_regclass($1))", migrations.Table).Scan(&est))
	require.EqualValues(t, inserted, est, "the statistic is stale")
	require.Equal(t, inserted-deleted, dbtest.Count(t, pool))
}

// A pass never removes live entries while the table is under MaxEntries,
// whatever the statistic says, and on an estimate removes no more than the
// table's real excess.
func TestStaleEstimate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name              string
		inserted, deleted int
		exactCountLimit   int
		wantCulled        int
	}{
		// The statistic says 25,000 in a table of 9,000 with a limit of
		// 10,000: nothing goes.
		{"underNeverWalk", 25_000, 16_000, -1, 0},
		// The same with a walk that gives up at 1,001 rows, as the
		// default configuration does on any table over ExactCountLimit.
		{"underWalkOverflow", 25_000, 16_000, 1000, 0},
		// 12,000 rows against a statistic of 40,000: the pass removes
		// the 2,000 over the limit, not the 30,000 the statistic implies.
		{"overNeverWalk", 40_000, 28_000, -1, 2000},
		{"overWalkOverflow", 40_000, 28_000, 1000, 2000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			staleEstimate(t, b.pool, tc.inserted, tc.deleted)
			c, _ := newCuller(t, b.pool, &culling.Config{MaxEntries: 10_000, ExactCountLimit: tc.exactCountLimit})
			res := runOnce(t, c)
			require.EqualValues(t, tc.wantCulled, res.Culled)
			left := tc.inserted - tc.deleted - tc.wantCulled
			require.Equal(t, left, dbtest.Count(t, b.pool))
			// The survivors are the latest to expire.
			require.Equal(t, names("k", tc.inserted-left+1, tc.inserted), keys(t, b.pool))
		})
	}
}

// Start checks at once that the cache table is there and usable, and says
// what is wrong, instead of starting a worker that fails every Interval.
func TestStartChecks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	t.Run("notMigrated", func(t *testing.T) {
		t.Parallel()
		s := dbtest.NewSchema(t)
		c, _ := newCuller(t, s.Pool(t), nil)
		err := c.Start(ctx)
		require.ErrorIs(t, err, culling.ErrTableNotFound)
		require.ErrorContains(t, err, culling.CacheTable)
		require.False(t, c.Health().Running)
	})
	t.Run("noSuchSchema", func(t *testing.T) {
		t.Parallel()
		s := dbtest.NewSchema(t)
		c, _ := newCuller(t, s.Pool(t), &culling.Config{Schema: "no_such_schema"})
		err := c.Start(ctx)
		require.ErrorIs(t, err, culling.ErrTableNotFound)
		require.ErrorContains(t, err, "no_such_schema")
	})
	t.Run("migrated", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		c, _ := newCuller(t, b.pool, &culling.Config{Interval: time.Hour})
		require.NoError(t, c.Start(ctx))
		require.True(t, c.Health().Running)
	})
	t.Run("timeout", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		c, _ := newCuller(t, b.pool, nil)
		expired, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
		defer cancel()
		require.ErrorIs(t, c.Start(expired), context.DeadlineExceeded)
		require.False(t, c.Health().Running)
	})
}

// newRole creates a login role for the test with the given grants on the
// test's schema and returns a pool that connects as it.
func newRole(t *testing.T, s *dbtest.Schema, grants ...string) *pgxpool.Pool {
	t.Helper()
	admin := s.Pool(t)
	role := "culling_role_" + s.Name
	if len(role) > 63 {
		role = role[:63]
	}
	ident := pgx.Identifier{role}.Sanitize()
	dbtest.Exec(t, admin, "CREATE ROLE "+ident+" LOGIN")
	t.Cleanup(func() {
		dbtest.Exec(t, admin, "DROP OWNED BY "+ident)
		dbtest.Exec(t, admin, "DROP ROLE "+ident)
	})
	for _, g := range grants {
		dbtest.Exec(t, admin, fmt.Sprintf(g, pgx.Identifier{s.Name}.Sanitize(), ident))
	}
	cfg := s.PoolConfig(t)
	cfg.ConnConfig.User = role
	cfg.ConnConfig.Password = ""
	return dbtest.NewPool(t, cfg)
}

// A role that cannot delete from the table, or cannot use its schema, is
// told so by Start, by name, not sent to run migrations.
func TestStartChecksPrivileges(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		grants  []string
		schema  bool // name the schema in Config.Schema instead of the search_path
		missing string
	}{
		{"selectOnly", []string{"GRANT USAGE ON SCHEMA %[1]s TO %[2]s", "GRANT SELECT ON %[1]s.dbcache_entries TO %[2]s"}, false, "DELETE"},
		{"noUpdate", []string{"GRANT USAGE ON SCHEMA %[1]s TO %[2]s", "GRANT SELECT, DELETE ON %[1]s.dbcache_entries TO %[2]s"}, false, "UPDATE"},
		{"noUsage", []string{"GRANT SELECT, UPDATE, DELETE ON %[1]s.dbcache_entries TO %[2]s"}, false, "USAGE"},
		{"noUsageNamed", []string{"GRANT SELECT, UPDATE, DELETE ON %[1]s.dbcache_entries TO %[2]s"}, true, "USAGE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := dbtest.NewSchema(t)
			s.Migrate(t)
			pool := newRole(t, s, tc.grants...)
			cfg := &culling.Config{Interval: time.Hour}
			if tc.schema {
				cfg.Schema = s.Name
			}
			c, _ := newCuller(t, pool, cfg)
			err := c.Start(context.Background())
			require.ErrorIs(t, err, culling.ErrNoPrivilege)
			require.NotErrorIs(t, err, culling.ErrTableNotFound)
			require.ErrorContains(t, err, tc.missing)
			require.False(t, c.Health().Running)
		})
	}
	t.Run("enough", func(t *testing.T) {
		t.Parallel()
		s := dbtest.NewSchema(t)
		s.Migrate(t)
		pool := newRole(t, s, "GRANT USAGE ON SCHEMA %[1]s TO %[2]s",
			"GRANT SELECT, UPDATE, DELETE ON %[1]s.dbcache_entries TO %[2]s")
		insert(t, s.Pool(t), "old", 10, "now() - interval '1 minute'")
		passes := make(chan culling.Progress, 10)
		c, _ := newCuller(t, pool, &culling.Config{Interval: time.Hour, OnProgress: func(p culling.Progress) {
			if p.Phase == culling.PhaseDone {
				passes <- p
			}
		}})
		require.NoError(t, c.Start(context.Background()))
		require.EqualValues(t, 10, waitFor(t, passes).ExpiredRemoved)
		require.Zero(t, dbtest.Count(t, s.Pool(t)))
	})
}

// Stop returns only once the pass has ended and its lock is released: a
// culler stopped and started again and again, followed at once by another
// culler's pass, never finds the lock still held.
func TestStopReleasesTheLock(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	insert(t, b.pool, "old", 3000, "now() - interval '1 minute' - g * interval '1 ms'")
	a, _ := newCuller(t, b.pool, &culling.Config{Interval: time.Hour, BatchSize: 50})
	other, _ := newCuller(t, b.schema.Pool(t), nil)
	// Stop lands at varying points of the pass: before it begins, on its
	// lock, in a batch.
	pause := func(i int) { time.Sleep(time.Duration(i%7) * 500 * time.Microsecond) }
	for i := range 40 {
		require.NoError(t, a.Start(ctx))
		pause(i)
		require.NoError(t, a.Stop(ctx))
		require.NoError(t, a.Start(ctx))
		pause(i + 3)
		require.NoError(t, a.Stop(ctx))
		res, err := other.RunOnce(ctx)
		require.NoError(t, err)
		require.False(t, res.Skipped, "iteration %d: the stopped culler still held the lock", i)
		if i%10 == 9 {
			insert(t, b.pool, fmt.Sprintf("old%d_", i), 3000, "now() - interval '1 minute' - g * interval '1 ms'")
		}
	}
}

// With a default isolation level above READ COMMITTED on the role or the
// database, a pass still runs every statement at READ COMMITTED: its
// batches do not fail with serialization errors when writers update rows it
// is removing, and its lock transaction holds no snapshot.
func TestIsolationDefault(t *testing.T) {
	t.Parallel()
	for _, level := range []string{"repeatable read", "serializable"} {
		t.Run(level, func(t *testing.T) {
			t.Parallel()
			s := dbtest.NewSchema(t)
			s.Migrate(t)
			cfg := s.PoolConfig(t)
			cfg.ConnConfig.RuntimeParams["default_transaction_isolation"] = level
			pool := dbtest.NewPool(t, cfg)
			var got string
			require.NoError(t, pool.QueryRow(context.Background(), "SHOW transaction_isolation").Scan(&got))
			require.Equal(t, level, got)

			t.Run("noSnapshot", func(t *testing.T) {
				insert(t, pool, "old", 20, "now() - interval '1 minute'")
				inPass, release := make(chan struct{}), make(chan struct{})
				var once sync.Once
				c, _ := newCuller(t, pool, &culling.Config{BatchSize: 10,
					OnProgress: func(culling.Progress) { once.Do(func() { close(inPass); <-release }) }})
				var releaseOnce sync.Once
				unblock := func() { releaseOnce.Do(func() { close(release) }) }
				defer unblock()
				done := make(chan error, 1)
				go func() { _, err := c.RunOnce(context.Background()); done <- err }()
				waitFor(t, inPass)
				var xmin *string
				require.NoError(t, s.Pool(t).QueryRow(context.Background(), `
					SELECT a.backend_xmin::text
					  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
					 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = 1684161347
					   AND l.objid = ((to_regclass($1)::oid::int8 + 2147483648) % 4294967296)::text::oid`,
					migrations.Table).Scan(&xmin))
				require.Nil(t, xmin, "the lock transaction holds a snapshot")
				unblock()
				require.NoError(t, <-done)
			})

			t.Run("concurrentWriters", func(t *testing.T) {
				// Writers keep rewriting rows the pass is removing (a Set
				// over an expired entry), with rows expired and live mixed.
				const rows = 20_000
				insert(t, pool, "w", rows, "now() - interval '1 minute' - g * interval '1 ms'")
				c, _ := newCuller(t, pool, &culling.Config{BatchSize: 20, MaxEntries: 1000})
				writers := readCommitted(t, s) // as the cache's writes run, whatever the database's default
				stop := make(chan struct{})
				var wg sync.WaitGroup
				var writes atomic.Int64
				writeErr := make(chan error, 4)
				for w := range 4 {
					wg.Go(func() {
						for i := 0; ; i++ {
							select {
							case <-stop:
								return
							default:
							}
							key := fmt.Sprintf("w%08d", 1+(i*4+w)%rows)
							_, err := writers.Exec(context.Background(), `INSERT INTO `+migrations.Table+` (key, value, expires)
								VALUES ($1, '\x01', now() + interval '1 hour')
								ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires`, key)
							if err != nil {
								writeErr <- err
								return
							}
							writes.Add(1)
						}
					})
				}
				var passErr error
				for range 5 {
					if _, passErr = c.RunOnce(context.Background()); passErr != nil {
						break
					}
				}
				close(stop)
				wg.Wait()
				close(writeErr)
				for err := range writeErr {
					require.NoError(t, err)
				}
				var pgErr *pgconn.PgError
				if errors.As(passErr, &pgErr) {
					t.Fatalf("pass failed with SQLSTATE %s: %v", pgErr.Code, passErr)
				}
				require.NoError(t, passErr)
				t.Logf("%d concurrent writes", writes.Load())
			})
		})
	}
}

// NoLimit: passes remove expired entries and never live ones.
func TestNoLimit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	insert(t, b.pool, "old", 5, "now() - interval '1 minute'")
	insert(t, b.pool, "k", 40, "now() + g * interval '1 minute'")
	insert(t, b.pool, "z", 10, "NULL")
	c, _ := newCuller(t, b.pool, &culling.Config{MaxEntries: culling.NoLimit})
	res := runOnce(t, c)
	require.EqualValues(t, 5, res.ExpiredRemoved)
	require.Zero(t, res.Culled)
	require.EqualValues(t, 50, res.Remaining)
	require.Equal(t, 50, dbtest.Count(t, b.pool))
	dry, err := c.DryRun(context.Background())
	require.NoError(t, err)
	require.Zero(t, dry.ExpiredRemoved+dry.Culled)
}

// DryRun reports what the next pass removes, and removes nothing.
func TestDryRun(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  culling.Config
	}{
		// The boundary has an expiry.
		{"timedBoundary", culling.Config{MaxEntries: 30}},
		// The boundary never expires: every timed row and some
		// never-expiring ones go.
		{"nullBoundary", culling.Config{MaxEntries: 12}},
		{"cullAll", culling.Config{MaxEntries: 30, CullFrequency: culling.CullAll}},
		{"under", culling.Config{MaxEntries: 1000}},
		{"estimate", culling.Config{MaxEntries: 30, ExactCountLimit: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			insert(t, b.pool, "old", 7, "now() - interval '1 minute'")
			insert(t, b.pool, "k", 30, "now() + interval '1 hour' + g * interval '1 minute'")
			insert(t, b.pool, "tie", 10, "now() + interval '30 minutes'")
			insert(t, b.pool, "z", 20, "NULL")
			dbtest.Exec(t, b.pool, "ANALYZE "+migrations.Table) // the estimate's figure
			cfg := tc.cfg
			c, _ := newCuller(t, b.pool, &cfg)
			before := keys(t, b.pool)

			dry, err := c.DryRun(context.Background())
			require.NoError(t, err)
			require.True(t, dry.DryRun)
			require.Equal(t, before, keys(t, b.pool), "a dry run removes nothing")
			require.Zero(t, c.Health().LastPassAt, "a dry run is not a pass")

			res := runOnce(t, c)
			require.False(t, res.DryRun)
			require.Equal(t, res.ExpiredRemoved, dry.ExpiredRemoved)
			require.Equal(t, res.Culled, dry.Culled)
			require.Equal(t, res.Remaining, dry.Remaining)
			require.Equal(t, int(res.Remaining), dbtest.Count(t, b.pool))
			t.Logf("expired %d, culled %d, remaining %d", res.ExpiredRemoved, res.Culled, res.Remaining)
		})
	}
}

// Health reports what the culler did, without a query.
func TestHealth(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	inPass, release := make(chan struct{}), make(chan struct{})
	var block atomic.Bool
	c, _ := newCuller(t, b.pool, &culling.Config{Interval: time.Hour, OnProgress: func(p culling.Progress) {
		if p.Phase == culling.PhaseCount && block.CompareAndSwap(true, false) {
			close(inPass)
			<-release
		}
	}})
	h := c.Health()
	require.False(t, h.Running)
	require.False(t, h.InPass)
	require.Nil(t, h.LastPass)
	require.True(t, h.LastSuccessAt.IsZero())

	insert(t, b.pool, "old", 3, "now() - interval '1 minute'")
	res := runOnce(t, c)
	h = c.Health()
	require.Equal(t, *res, *h.LastPass)
	require.False(t, h.LastSuccessAt.IsZero())
	require.Equal(t, h.LastPassAt, h.LastSuccessAt)
	require.NoError(t, h.LastError)
	require.Zero(t, h.ConsecutiveFailures)

	// A failing pass, twice.
	dbtest.Exec(t, b.pool, "ALTER TABLE "+migrations.Table+" RENAME TO moved")
	for range 2 {
		_, err := c.RunOnce(ctx)
		require.ErrorIs(t, err, culling.ErrTableNotFound)
	}
	h = c.Health()
	require.ErrorIs(t, h.LastError, culling.ErrTableNotFound)
	require.Equal(t, 2, h.ConsecutiveFailures)
	require.Equal(t, h.LastPassAt, h.LastErrorAt)
	require.True(t, h.LastSuccessAt.Before(h.LastErrorAt))
	dbtest.Exec(t, b.pool, "ALTER TABLE moved RENAME TO "+migrations.Table)

	// A started worker, caught in a pass.
	block.Store(true)
	require.NoError(t, c.Start(ctx))
	waitFor(t, inPass)
	h = c.Health()
	require.True(t, h.Running)
	require.True(t, h.InPass)
	close(release)
	require.Eventually(t, func() bool { return c.Health().ConsecutiveFailures == 0 }, waitTimeout, time.Millisecond)
	h = c.Health()
	require.ErrorIs(t, h.LastError, culling.ErrTableNotFound, "the last error stays for the record")
	require.True(t, h.LastSuccessAt.After(h.LastErrorAt))
	require.NoError(t, c.Stop(ctx))
	h = c.Health()
	require.False(t, h.Running)
	require.False(t, h.InPass)

	// A pass its caller cancels is not a failure.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err := c.RunOnce(cctx)
	require.ErrorIs(t, err, context.Canceled)
	require.Zero(t, c.Health().ConsecutiveFailures)
}

// A batch stuck on the server when the culler is stopped is cancelled on
// the server after the grace period; Stop then returns with the lock
// released and no statement of the pass left running. The batch is stuck
// in a trigger that sleeps, not on a lock: a batch waiting on a lock gives
// up on its own after its lock_timeout.
func TestStopCancelsAStuckBatch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	insert(t, b.pool, "old", 100, "now() - interval '1 minute' - g * interval '1 ms'")
	app := "culler-stuck-" + b.schema.Name
	cfg := b.schema.PoolConfig(t)
	cfg.ConnConfig.RuntimeParams["application_name"] = app
	pool := dbtest.NewPool(t, cfg)

	// After the first batch, every deleted row sleeps for an hour.
	var once sync.Once
	c, _ := newCuller(t, pool, &culling.Config{BatchSize: 10, Interval: time.Hour, OnProgress: func(culling.Progress) {
		once.Do(func() {
			dbtest.Exec(t, b.pool, `CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS
				$$ BEGIN PERFORM pg_sleep(3600); RETURN OLD; END $$`)
			dbtest.Exec(t, b.pool, "CREATE TRIGGER slow BEFORE DELETE ON "+migrations.Table+" FOR EACH ROW EXECUTE FUNCTION slow()")
		})
	}})
	require.NoError(t, c.Start(ctx))
	var stuckPID int32
	require.Eventually(t, func() bool {
		err := b.pool.QueryRow(ctx, `SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event = 'PgSleep'`, app).Scan(&stuckPID)
		return err == nil
	}, waitTimeout, 5*time.Millisecond, "the batch is stuck in the trigger")

	sctx, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	require.NoError(t, c.Stop(sctx))
	require.Zero(t, dbtest.Exec(t, b.pool, `SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND state <> 'idle'`, app),
		"no statement of the pass is left running")
	require.Eventually(t, func() bool {
		return dbtest.Exec(t, b.pool, `SELECT 1 FROM pg_stat_activity WHERE pid = $1`, stuckPID) == 0
	}, waitTimeout, 5*time.Millisecond, "the connection that had a cancel request was closed, not returned to the pool")
	require.Zero(t, c.Health().ConsecutiveFailures, "a stopped pass is not a failure")
	dbtest.Exec(t, b.pool, "DROP TRIGGER slow ON "+migrations.Table)
	other, _ := newCuller(t, b.schema.Pool(t), nil)
	res := runOnce(t, other)
	require.EqualValues(t, 90, res.ExpiredRemoved, "the stuck batch removed nothing")
}
