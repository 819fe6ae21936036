package dbcache_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// citusTestMode is Config.Citus for a test's cache: DBCACHE_TEST_CITUS=forced
// runs every test's cache in the Citus forms on plain PostgreSQL (a test
// that sets a mode of its own keeps it).
func citusTestMode(m dbcache.CitusMode) dbcache.CitusMode {
	if m == dbcache.CitusAuto && os.Getenv("DBCACHE_TEST_CITUS") == "forced" {
		return dbcache.CitusOn
	}
	return m
}

// TestCitusDetection: on plain PostgreSQL CitusAuto finds no citus
// extension (and never names pg_dist_partition, which does not exist
// there) and keeps the plain forms; CitusOn forces the Citus forms;
// CitusOff and a mode out of range are honoured and refused.
func TestCitusDetection(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	ctx := ctxT(t)
	for _, tc := range []struct {
		mode dbcache.CitusMode
		want bool
	}{{dbcache.CitusAuto, false}, {dbcache.CitusOn, true}, {dbcache.CitusOff, false}} {
		c, err := dbcache.New(ctx, pool, &dbcache.Config{Citus: tc.mode})
		require.NoError(t, err, tc.mode.String())
		require.Equal(t, tc.want, c.UsesCitus(), tc.mode.String())
		require.NoError(t, c.Close())
	}
	_, err := dbcache.New(ctx, pool, &dbcache.Config{Citus: dbcache.CitusMode(7)})
	require.ErrorContains(t, err, "Config.Citus 7")
}

// citusPair is a plain cache and a Citus-form cache, each on a schema of
// its own, driven through the same operations.
type citusPair struct {
	plain, citus *testBundle
}

func newCitusPair(t *testing.T, cfg dbcache.Config) citusPair {
	t.Helper()
	p := cfg
	p.Citus = dbcache.CitusOff
	c := cfg
	c.Citus = dbcache.CitusOn
	pair := citusPair{plain: setup(t, &p), citus: setup(t, &c)}
	require.False(t, pair.plain.cache.UsesCitus())
	require.True(t, pair.citus.cache.UsesCitus())
	return pair
}

// same runs op on both caches and requires the same answer and the same
// table contents (key, value, and the expiry: none, or the time from the
// write to it, rounded to the second, and whether it has passed).
func (p citusPair) same(t *testing.T, name string, op func(c *dbcache.Cache) (any, error)) {
	t.Helper()
	a, errA := op(p.plain.cache)
	b, errB := op(p.citus.cache)
	require.Equal(t, fmt.Sprint(a, errA), fmt.Sprint(b, errB), name)
	require.Equal(t, dumpTable(t, p.plain), dumpTable(t, p.citus), name+": table")
}

func (p citusPair) poolOf(c *dbcache.Cache) *pgxpool.Pool {
	if c == p.citus.cache {
		return p.citus.pool
	}
	return p.plain.pool
}

func dumpTable(t *testing.T, b *testBundle) []string {
	t.Helper()
	// The time from the write to the expiry, not from now: both are the
	// writing statement's statement_timestamp() (the expiry plus the
	// timeout), so the figure is exact, whenever the dump runs and however
	// long after the other cache's (a slow run, the race detector, a busy
	// server) it runs. travel moves every expiry by the same time in both.
	rows, err := b.pool.Query(ctxT(t), `SELECT key || '=' || encode(value, 'escape') || ' ' ||
  coalesce(round(extract(epoch FROM expires - written_at))::text ||
    CASE WHEN expires > statement_timestamp() THEN ' live' ELSE ' expired' END, 'never')
FROM dbcache_entries ORDER BY key`)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return out
}

// TestCitusFormsAnswerAsPlain: every operation with a Citus form
// (IncrVersion and DecrVersion, DeleteMany, SetMany, coalesced Sets,
// Clear, DeletePrefix), run on plain PostgreSQL in both forms over the same
// entries, live, expired and missing, gives the same answer and leaves the
// same rows; in a WithTx view too, where a rollback undoes the Citus
// transaction's statements with the caller's.
func TestCitusFormsAnswerAsPlain(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	p := newCitusPair(t, dbcache.Config{})
	seed := func(c *dbcache.Cache) (any, error) {
		for i := range 30 {
			if err := c.Set(ctx, fmt.Sprintf("k%02d", i), []byte(fmt.Sprint(i)), dbcache.ExpiresIn(time.Duration(i+1)*time.Hour)); err != nil {
				return nil, err
			}
		}
		return c.SetMany(ctx, map[string][]byte{"a": []byte("1"), "b": []byte("2"), "p:1": []byte("x"), "p:2": []byte("y"), "p:3": []byte("z")}, dbcache.Forever)
	}
	p.same(t, "seed", seed)
	for _, b := range []*testBundle{p.plain, p.citus} {
		// Two entries expired, as if an hour had passed.
		travel(t, b.pool, time.Hour+time.Minute)
	}
	p.same(t, "incr version", func(c *dbcache.Cache) (any, error) { return c.IncrVersion(ctx, "k05", 2) })
	p.same(t, "incr version of an expired entry", func(c *dbcache.Cache) (any, error) { return c.IncrVersion(ctx, "k00", 1) })
	p.same(t, "incr version of a missing key", func(c *dbcache.Cache) (any, error) { return c.IncrVersion(ctx, "nope", 1) })
	p.same(t, "decr version back", func(c *dbcache.Cache) (any, error) {
		return c.WithVersion(c.Version()+2).DecrVersion(ctx, "k05", 2)
	})
	p.same(t, "incr version onto an existing entry", func(c *dbcache.Cache) (any, error) {
		if err := c.WithVersion(1).Set(ctx, "k07", []byte("old"), dbcache.Forever); err != nil {
			return nil, err
		}
		return c.IncrVersion(ctx, "k07", 1)
	})
	p.same(t, "delete many", func(c *dbcache.Cache) (any, error) {
		return c.DeleteMany(ctx, []string{"k09", "k01", "nope", "k10", "k09"})
	})
	p.same(t, "delete many of one key", func(c *dbcache.Cache) (any, error) { return c.DeleteMany(ctx, []string{"k11"}) })
	p.same(t, "delete many of an expired key", func(c *dbcache.Cache) (any, error) {
		return c.DeleteMany(ctx, []string{"k12"})
	})
	p.same(t, "set many over existing keys", func(c *dbcache.Cache) (any, error) {
		return c.SetMany(ctx, map[string][]byte{"k13": []byte("n"), "z": []byte("new"), "a": []byte("A")}, dbcache.ExpiresIn(time.Minute))
	})
	p.same(t, "get many", func(c *dbcache.Cache) (any, error) {
		m, err := c.GetMany(ctx, []string{"a", "z", "k13", "k00", "nope"})
		return fmt.Sprint(m), err
	})
	p.same(t, "delete prefix", func(c *dbcache.Cache) (any, error) { return c.DeletePrefix(ctx, "p:") })
	p.same(t, "delete prefix in a rolled-back transaction", func(c *dbcache.Cache) (any, error) {
		tx, err := p.poolOf(c).Begin(ctx)
		if err != nil {
			return nil, err
		}
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		n, err := c.WithTx(tx).DeletePrefix(ctx, "k1")
		if err != nil {
			return nil, err
		}
		m, err := c.WithTx(tx).DeleteMany(ctx, []string{"k20", "k21"})
		if err != nil {
			return nil, err
		}
		if _, err := c.WithTx(tx).IncrVersion(ctx, "k22", 1); err != nil {
			return nil, err
		}
		return [2]int{n, m}, tx.Rollback(ctx)
	})
	p.same(t, "clear", func(c *dbcache.Cache) (any, error) { return nil, c.Clear(ctx) })
}

// TestCitusFormsInterleaved: the Citus forms under concurrency, on a pool
// of a few connections: goroutines moving one key between two versions in
// both directions (the deadlock the plain form's lock-order CTE prevents,
// here prevented by locking both rows in key order), with overlapping
// SetManys, DeleteManys and DeletePrefixes over shared keys. No operation
// may fail (a deadlock is 40P01, retried once by nothing here: the forms
// must not produce one), and afterwards every key reads as a value some
// operation wrote, or misses.
func TestCitusFormsInterleaved(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	b := setup(t, &dbcache.Config{Citus: dbcache.CitusOn})
	c := b.cache
	keys := []string{"x:a", "x:b", "x:c", "x:d"}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 30 {
				var err error
				switch (g + i) % 5 {
				case 0:
					_, err = c.SetMany(ctx, map[string][]byte{keys[i%4]: []byte("v"), keys[(i+1)%4]: []byte("v"), "m": []byte("v")}, dbcache.Forever)
				case 1:
					_, err = c.DeleteMany(ctx, []string{keys[(i+2)%4], keys[(i+3)%4], "m"})
				case 2:
					_, err = c.IncrVersion(ctx, "m", 1)
				case 3:
					_, err = c.WithVersion(c.Version()+1).DecrVersion(ctx, "m", 1)
				case 4:
					_, err = c.DeletePrefix(ctx, "x:")
				}
				if err != nil && !errors.Is(err, dbcache.ErrMiss) {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	for _, k := range append(keys, "m") {
		for _, v := range []*dbcache.Cache{c, c.WithVersion(c.Version() + 1)} {
			got, err := v.Get(ctx, k)
			if err == nil {
				require.Equal(t, "v", string(got), k)
			} else {
				require.ErrorIs(t, err, dbcache.ErrMiss, k)
			}
		}
	}
}

// TestCitusFencedWritesAnswerAsPlain: the loaders' fenced writes
// (GetOrSetFunc's and a refresh's, qGetOrSetLeased and qSetLeased), run in
// both forms over the same entries and leases, give the same answer and
// leave the same rows: stored while the token holds the key's live lease
// (a live entry kept by the get-or-set, an expired or missing one
// replaced), nothing stored under another token, after the lease was
// released, or after it ran out; in a WithTx view too, and under
// FastCommit.
func TestCitusFencedWritesAnswerAsPlain(t *testing.T) {
	t.Parallel()
	for _, fast := range []bool{false, true} {
		t.Run(fmt.Sprintf("FastCommit=%v", fast), func(t *testing.T) {
			t.Parallel()
			ctx := ctxT(t)
			p := newCitusPair(t, dbcache.Config{FastCommit: fast})
			tokens := map[*dbcache.Cache]dbcache.LeaseToken{}
			lease := func(key string) func(c *dbcache.Cache) (any, error) {
				return func(c *dbcache.Cache) (any, error) {
					l, err := c.AcquireLease(ctx, key, time.Minute)
					tokens[c] = l.Token
					return l.Acquired, err
				}
			}
			getOrSet := func(key, value string, tok func(c *dbcache.Cache) dbcache.LeaseToken) func(c *dbcache.Cache) (any, error) {
				return func(c *dbcache.Cache) (any, error) {
					got, stored, err := dbcache.GetOrSetLeased(ctx, c, key, tok(c), []byte(value), dbcache.ExpiresIn(time.Hour))
					return fmt.Sprint(string(got), stored), err
				}
			}
			set := func(key, value string, tok func(c *dbcache.Cache) dbcache.LeaseToken) func(c *dbcache.Cache) (any, error) {
				return func(c *dbcache.Cache) (any, error) { return dbcache.SetLeased(ctx, c, key, tok(c), []byte(value)) }
			}
			held := func(c *dbcache.Cache) dbcache.LeaseToken { return tokens[c] }
			stranger := func(*dbcache.Cache) dbcache.LeaseToken { return dbcache.NewLeaseToken() }

			p.same(t, "seed", func(c *dbcache.Cache) (any, error) {
				return nil, c.Set(ctx, "live", []byte("old"), dbcache.ExpiresIn(2*time.Hour))
			})
			p.same(t, "lease", lease("live"))
			p.same(t, "get-or-set keeps a live entry", getOrSet("live", "new", held))
			p.same(t, "get-or-set under another token", getOrSet("live", "other", stranger))
			p.same(t, "set under the lease", set("live", "set", held))
			p.same(t, "set under another token", set("live", "other", stranger))
			p.same(t, "lease a missing key", lease("missing"))
			p.same(t, "get-or-set stores a missing key", getOrSet("missing", "first", held))
			p.same(t, "seed an entry to expire", func(c *dbcache.Cache) (any, error) {
				return nil, c.Set(ctx, "expired", []byte("stale"), dbcache.ExpiresIn(time.Minute))
			})
			for _, b := range []*testBundle{p.plain, p.citus} {
				travel(t, b.pool, 2*time.Minute)
			}
			p.same(t, "lease the expired key", lease("expired"))
			p.same(t, "get-or-set replaces an expired entry", getOrSet("expired", "fresh", held))
			p.same(t, "release", func(c *dbcache.Cache) (any, error) { return c.ReleaseLease(ctx, "expired", tokens[c]) })
			p.same(t, "set after the release", set("expired", "late", held))
			p.same(t, "get-or-set after the release", getOrSet("expired", "late", held))
			p.same(t, "lease to run out", lease("lapsed"))
			for _, b := range []*testBundle{p.plain, p.citus} {
				dbtest.Exec(t, b.pool, `UPDATE dbcache_leases SET expires = statement_timestamp() - interval '1 second'`)
			}
			p.same(t, "set on a lapsed lease", set("lapsed", "late", held))
			p.same(t, "get-or-set on a lapsed lease", getOrSet("lapsed", "late", held))

			// In a WithTx view: the lease check and the write are the
			// caller's transaction's, and its rollback undoes them.
			p.same(t, "lease in tx", lease("tx"))
			p.same(t, "fenced writes in a rolled-back tx", func(c *dbcache.Cache) (any, error) {
				tx, err := p.poolOf(c).Begin(ctx)
				if err != nil {
					return nil, err
				}
				defer func() { _ = tx.Rollback(ctx) }()
				v := c.WithTx(tx)
				a, err := dbcache.SetLeased(ctx, v, "tx", tokens[c], []byte("in tx"))
				if err != nil {
					return nil, err
				}
				got, stored, err := dbcache.GetOrSetLeased(ctx, v, "tx", tokens[c], []byte("again"), dbcache.Forever)
				return fmt.Sprint(a, string(got), stored), err
			})
		})
	}
}
