package lock_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/lock"
)

// TestCitusDetection: on plain PostgreSQL CitusAuto finds no citus
// extension (and never names pg_dist_partition, which does not exist
// there) and keeps the plain forms; CitusOn forces the Citus forms;
// CitusOff is honoured and a mode out of range refused.
func TestCitusDetection(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	for _, tc := range []struct {
		mode dbcache.CitusMode
		want bool
	}{{dbcache.CitusAuto, false}, {dbcache.CitusOn, true}, {dbcache.CitusOff, false}} {
		c, err := lock.New(ctx, b.pool, &lock.Config{Citus: tc.mode})
		require.NoError(t, err, tc.mode.String())
		require.Equal(t, tc.want, c.UsesCitus(), tc.mode.String())
		require.NoError(t, c.Close())
	}
	_, err := lock.New(ctx, b.pool, &lock.Config{Citus: dbcache.CitusMode(7)})
	require.ErrorContains(t, err, "Config.Citus 7")
}

// TestCitusFormsAnswerAsPlain drives a plain client and a Citus-form
// client over the same tables, alternately: each grant's fence is one
// greater than the other's last, whichever form issued it; each Restores
// the other's lock with the same fence and lease end; both refuse a held
// lock (ErrLocked), a fence step for a lease that is not the owner's and
// live (ErrLocked, no fence issued), and a Restore of a released, forced
// free or never fenced lease (ErrNotHeld).
func TestCitusFormsAnswerAsPlain(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	plain := client(t, b.pool, &lock.Config{Citus: dbcache.CitusOff})
	citus := client(t, b.pool, &lock.Config{Citus: dbcache.CitusOn})
	require.False(t, plain.UsesCitus())
	require.True(t, citus.UsesCitus())
	forms := map[string]*lock.Client{"plain": plain, "citus": citus}
	other := map[string]*lock.Client{"plain": citus, "citus": plain}

	var want int64
	for round := range 6 {
		name := []string{"plain", "citus"}[round%2]
		c, o := forms[name], other[name]
		l, err := c.TryAcquire(ctx, "job", time.Minute)
		require.NoError(t, err, name)
		want++
		require.Equal(t, want, l.Fence(), name)
		latest, err := o.LatestFence(ctx, "job")
		require.NoError(t, err)
		require.Equal(t, want, latest)

		for _, cl := range []*lock.Client{c, o} {
			_, err := cl.TryAcquire(ctx, "job", time.Minute)
			require.ErrorIs(t, err, lock.ErrLocked, name)
			// A fence step for a token that does not hold the lease
			// issues nothing.
			_, err = lock.GrantFence(ctx, cl, "job", dbcache.NewLeaseToken())
			require.ErrorIs(t, err, lock.ErrLocked, name)
			r, err := cl.Restore(ctx, "job", l.Owner())
			require.NoError(t, err, name)
			require.Equal(t, l.Fence(), r.Fence(), name)
			_, lEnd, _ := lock.Timeline(l)
			_, rEnd, _ := lock.Timeline(r)
			require.True(t, lEnd.Equal(rEnd), name)
		}
		latest, err = c.LatestFence(ctx, "job")
		require.NoError(t, err)
		require.Equal(t, want, latest, "a refused fence step issued no fence")

		if round%3 == 2 {
			freed, err := o.ForceRelease(ctx, "job")
			require.NoError(t, err)
			require.True(t, freed)
		} else {
			require.NoError(t, l.Release(ctx))
		}
		for _, cl := range []*lock.Client{c, o} {
			_, err := cl.Restore(ctx, "job", l.Owner())
			require.ErrorIs(t, err, lock.ErrNotHeld, name)
			_, err = lock.GrantFence(ctx, cl, "job", l.Owner())
			require.ErrorIs(t, err, lock.ErrLocked, name)
		}
	}

	// A live lease with no fence row (a grant that failed before its
	// fence): neither form restores it.
	owner := dbcache.NewLeaseToken()
	dbtest.Exec(t, b.pool, `INSERT INTO dbcache_leases (key, token, expires) VALUES ($1, $2, statement_timestamp() + interval '1 minute')`,
		lock.MadeKey(plain, "unfenced"), string(owner))
	for name, cl := range forms {
		_, err := cl.Restore(ctx, "unfenced", owner)
		require.ErrorIs(t, err, lock.ErrNotHeld, name)
	}
	// Its fence step, which the owner's grant would run next, is the
	// name's first in both forms.
	f, err := lock.GrantFence(ctx, citus, "unfenced", owner)
	require.NoError(t, err)
	require.Equal(t, int64(1), f)
	f, err = lock.GrantFence(ctx, plain, "unfenced", owner)
	require.NoError(t, err)
	require.Equal(t, int64(2), f)
}

// The Citus grant's transaction commits with synchronous_commit on,
// whatever the session's setting.
func TestCitusGrantCommitsDurably(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	pc := s.PoolConfig(t)
	pc.MaxConns = 2
	pc.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	pool := dbtest.NewPool(t, pc)
	c := client(t, pool, &lock.Config{Citus: dbcache.CitusOn})
	setting, err := lock.CitusGrantSetting(ctxT(t), c)
	require.NoError(t, err)
	require.Equal(t, "on", setting)
}
