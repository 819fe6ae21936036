package ratelimit_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/ratelimit"
)

// The bound under the settings production runs with: a repeatable-read
// and a serializable session default (where an upsert racing another fails
// with 40001 unless it runs at READ COMMITTED), an ICU collation, and
// PgBouncer in transaction pooling (no session state, no search_path, no
// prepared statements), the last on a repeatable-read database too. Three
// limiters with a pool each race on one key; every check must answer (no
// error) and the admissions must meet the bound.
func TestBoundUnderProductionSettings(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name      string
		profile   dbtest.Profile
		pgbouncer bool
	}{
		{"repeatable-read", dbtest.Profile{Collation: dbtest.CollationC, Isolation: "repeatable read"}, false},
		{"serializable", dbtest.Profile{Collation: dbtest.CollationC, Isolation: "serializable"}, false},
		{"icu", dbtest.Profile{Collation: dbtest.CollationLinguistic}, false},
		{"pgbouncer", dbtest.Profile{Collation: dbtest.CollationC}, true},
		{"pgbouncer-repeatable-read", dbtest.Profile{Collation: dbtest.CollationC, Isolation: "repeatable read"}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			s := dbtest.SchemaWith(t, c.profile)
			s.Migrate(t)
			var bouncer *dbtest.PgBouncer
			if c.pgbouncer {
				bouncer = dbtest.NewPgBouncer(t, nil)
			}
			pool := func() *pgxpool.Pool {
				if bouncer != nil {
					cfg := bouncer.PoolConfig(t, s)
					cfg.MaxConns = 4
					return dbtest.NewPool(t, cfg)
				}
				cfg := s.PoolConfig(t)
				cfg.MaxConns = 4
				return dbtest.NewPool(t, cfg)
			}
			limit := ratelimit.Limit{Rate: 200, Period: time.Second, Burst: 10}
			start := make(chan struct{})
			results := make(chan hammerResult, 3)
			for i := range 3 {
				lim := setupOn(t, pool(), &ratelimit.Config{Schema: s.Name}).lim
				require.Equal(t, c.profile.Isolation != "", ratelimit.WritesWrapped(lim), "writes run at READ COMMITTED")
				go func() {
					results <- hammer(ctxT(t), lim, hammerJob{Key: "k", Limit: limit, Goroutines: 6, Rounds: 120, MaxN: 2, Seed: uint64(i), Sweep: i == 0}, start)
				}()
			}
			close(start)
			var all hammerResult
			for range 3 {
				r := <-results
				all.Admitted = append(all.Admitted, r.Admitted...)
				all.Denied += r.Denied
				all.Lost += r.Lost
				all.Errors = append(all.Errors, r.Errors...)
			}
			requireBound(t, all, limit)
		})
	}
}

// A connection whose default isolation differs from the one New saw (a
// role's setting, a PgBouncer pool to another database) gets 40001 on a
// racing admission; the limiter then switches to READ COMMITTED writes and
// runs the check again, which is safe because the failed statement
// changed nothing.
func TestSerializationFailureSwitchesToReadCommitted(t *testing.T) {
	t.Parallel()
	// A database whose default is READ COMMITTED, whatever the run's
	// profile: New sees that default.
	s := dbtest.SchemaWith(t, dbtest.Profile{Collation: dbtest.CollationC})
	s.Migrate(t)
	cfg := s.PoolConfig(t)
	cfg.MaxConns = 4
	lim := setupOn(t, dbtest.NewPool(t, cfg), nil).lim
	require.False(t, ratelimit.WritesWrapped(lim))
	// The same pool's connections now start at repeatable read.
	cfg = s.PoolConfig(t)
	cfg.MaxConns = 4
	cfg.ConnConfig.RuntimeParams["default_transaction_isolation"] = "repeatable read"
	rr := dbtest.NewPool(t, cfg)
	lim = ratelimit.WithPool(lim, rr)
	limit := ratelimit.Limit{Rate: 1000, Period: time.Second, Burst: 50}
	start := make(chan struct{})
	close(start)
	res := hammer(ctxT(t), lim, hammerJob{Key: "k", Limit: limit, Goroutines: 8, Rounds: 60, MaxN: 1}, start)
	requireBound(t, res, limit)
	require.True(t, ratelimit.WritesWrapped(lim), "a 40001 switched the writes to READ COMMITTED")
}

// Keys that an ICU collation folds close together ("a" < "A" < "b" < "B")
// or a case-insensitive one would equate are separate keys, compared as
// bytes; and Sweep's walk, in the key column's byte order, finds every
// stale row in a table larger than one batch, mixed-case keys and all.
func TestKeysAndSweepAnyCollation(t *testing.T) {
	t.Parallel()
	for _, coll := range dbtest.Collations {
		t.Run(string(coll), func(t *testing.T) {
			t.Parallel()
			ctx := ctxT(t)
			s := dbtest.SchemaIn(t, coll)
			s.Migrate(t)
			b := setupOn(t, s.Pool(t), nil)
			limit := ratelimit.Limit{Rate: 1, Period: time.Hour}
			for _, k := range []string{"a", "A", "b", "B", "ab", "aB", "Ab"} {
				res, err := b.lim.Allow(ctx, k, limit)
				require.NoError(t, err)
				require.True(t, res.Allowed, "%q has a state of its own", k)
			}
			dbtest.Exec(t, b.pool, `INSERT INTO dbcache_rate_limits (key, tat)
				SELECT (ARRAY['a','B','aa','Ab','b','C','ab','Ba'])[1 + g % 8] || g, 0 FROM generate_series(1, 2500) AS g`)
			n, err := b.lim.Sweep(ctx, 0)
			require.NoError(t, err)
			require.EqualValues(t, 2500, n, "every stale row, across three batches")
			require.Equal(t, 7, rows(t, b.pool), "the live ones stay")
		})
	}
}

func TestSweep(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	b := setup(t, &ratelimit.Config{KeyPrefix: "x:"})
	limit := ratelimit.Limit{Rate: 1, Period: time.Minute}
	for i := range 5 {
		_, err := b.lim.Allow(ctx, fmt.Sprint("k", i), limit)
		require.NoError(t, err)
	}
	// k0 passed 2 hours ago, k1 30 minutes ago (within the default grace),
	// k2 2 hours ago but held by an admission in progress.
	dbtest.Exec(t, b.pool, `UPDATE dbcache_rate_limits SET tat = tat - $1::bigint WHERE key = 'x:k0' OR key = 'x:k2'`, int64(2*time.Hour+time.Minute))
	dbtest.Exec(t, b.pool, `UPDATE dbcache_rate_limits SET tat = tat - $1::bigint WHERE key = 'x:k1'`, int64(30*time.Minute+time.Minute))
	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `SELECT 1 FROM dbcache_rate_limits WHERE key = 'x:k2' FOR UPDATE`)
	require.NoError(t, err)

	n, err := b.lim.Sweep(ctx, 0)
	require.NoError(t, err, "a held row is skipped, not waited for")
	require.EqualValues(t, 1, n)
	require.Equal(t, 4, rows(t, b.pool))
	require.NoError(t, tx.Rollback(ctx))

	n, err = b.lim.Sweep(ctx, 20*time.Minute)
	require.NoError(t, err)
	require.EqualValues(t, 2, n, "k1 within a shorter grace, and k2 once let go")
	require.Equal(t, 2, rows(t, b.pool))

	_, err = b.lim.Sweep(ctx, time.Second)
	require.ErrorIs(t, err, ratelimit.ErrInvalidLimit)
	require.Equal(t, 2, rows(t, b.pool))

	// Removed rows say what a missing row says: the full burst.
	res, err := b.lim.Allow(ctx, "k0", limit)
	require.NoError(t, err)
	require.True(t, res.Allowed)
}

// Reset forgets one key's state, no other.
func TestReset(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	b := setup(t, nil)
	limit := ratelimit.Limit{Rate: 1, Period: time.Hour}
	for _, k := range []string{"a", "b"} {
		_, err := b.lim.Allow(ctx, k, limit)
		require.NoError(t, err)
	}
	require.NoError(t, b.lim.Reset(ctx, "a"))
	res, err := b.lim.Allow(ctx, "a", limit)
	require.NoError(t, err)
	require.True(t, res.Allowed)
	res, err = b.lim.Allow(ctx, "b", limit)
	require.NoError(t, err)
	require.False(t, res.Allowed)
	require.NoError(t, b.lim.Reset(ctx, "never-seen"))
}
