package lock_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/lock"
)

func TestLockLifecycle(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	// A loader's lease on the cache's entry "job" is not the lock "job".
	cache, err := dbcache.New(ctx, b.pool, nil)
	require.NoError(t, err)
	defer cache.Close()
	loader, err := cache.AcquireLease(ctx, "job", time.Minute)
	require.NoError(t, err)
	require.True(t, loader.Acquired)
	l, err := b.locks.TryAcquire(ctx, "job", time.Minute)
	require.NoError(t, err)
	require.Equal(t, "job", l.Name())
	require.EqualValues(t, 1, l.Fence(), "a name's first grant")
	require.NoError(t, dbcache.CheckLeaseToken(l.Owner()))

	_, err = b.locks.TryAcquire(ctx, "job", time.Minute)
	require.ErrorIs(t, err, lock.ErrLocked)
	other, err := b.locks.TryAcquire(ctx, "other", time.Minute)
	require.NoError(t, err, "names are independent")
	require.EqualValues(t, 1, other.Fence())

	require.NoError(t, l.Refresh(ctx, time.Minute))
	// Restore, from another client (as another process would): the same
	// owner and fence.
	again, err := client(t, b.pool, nil).Restore(ctx, "job", l.Owner())
	require.NoError(t, err)
	require.Equal(t, l.Fence(), again.Fence())
	require.NoError(t, again.Release(ctx))
	require.ErrorIs(t, l.Release(ctx), lock.ErrNotHeld, "released through the restored lock")
	require.ErrorIs(t, l.Refresh(ctx, time.Minute), lock.ErrNotHeld)
	_, err = b.locks.Restore(ctx, "job", l.Owner())
	require.ErrorIs(t, err, lock.ErrNotHeld)

	next, err := b.locks.TryAcquire(ctx, "job", time.Minute)
	require.NoError(t, err)
	require.EqualValues(t, 2, next.Fence())
	require.NotEqual(t, l.Owner(), next.Owner())
	require.ErrorIs(t, l.Release(ctx), lock.ErrNotHeld, "a late release leaves the new owner's lock alone")
	_, err = b.locks.TryAcquire(ctx, "job", time.Minute)
	require.ErrorIs(t, err, lock.ErrLocked)

	// Forced free, for operators: the holder's calls are refused after.
	freed, err := b.locks.ForceRelease(ctx, "job")
	require.NoError(t, err)
	require.True(t, freed)
	require.ErrorIs(t, next.Refresh(ctx, time.Minute), lock.ErrNotHeld)
	freed, err = b.locks.ForceRelease(ctx, "job")
	require.NoError(t, err)
	require.False(t, freed)
	f, err := b.locks.LatestFence(ctx, "job")
	require.NoError(t, err)
	require.EqualValues(t, 2, f)

	extended, err := cache.ExtendLease(ctx, "job", loader.Token, time.Minute)
	require.NoError(t, err)
	require.True(t, extended, "the loader's lease was left alone")

	st := b.locks.Stats()
	require.EqualValues(t, 3, st.Grants)
	require.EqualValues(t, 2, st.Refusals)
	require.EqualValues(t, 4, st.Expiries)
	require.EqualValues(t, 1, st.ForcedReleases)
}

// A lease ends by the database's clock: a holder that let it run out is
// refused, and the name is granted again with a greater fence.
func TestLeaseRunsOut(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	l, err := b.locks.TryAcquire(ctx, "n", 50*time.Millisecond)
	require.NoError(t, err)
	next, err := b.locks.Acquire(ctx, "n", time.Minute)
	require.NoError(t, err, "Acquire waits for the lease to run out")
	require.Greater(t, next.Fence(), l.Fence())
	require.ErrorIs(t, l.Refresh(ctx, time.Minute), lock.ErrNotHeld, "a lapsed lease is not revived")
	require.ErrorIs(t, l.Release(ctx), lock.ErrNotHeld)
	require.EqualValues(t, 1, b.locks.Stats().Waits)

	// Acquire is bounded by its context.
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, err = b.locks.Acquire(short, "n", time.Minute)
	require.ErrorIs(t, err, lock.ErrLocked)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

// Bad input: a clear error, and no lease taken or changed.
func TestBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	for _, lease := range []time.Duration{0, -time.Second, time.Microsecond, 25 * time.Hour} {
		_, err := b.locks.TryAcquire(ctx, "n", lease)
		require.ErrorIs(t, err, lock.ErrInvalidLease, "lease %v", lease)
		_, err = b.locks.Acquire(ctx, "n", lease)
		require.ErrorIs(t, err, lock.ErrInvalidLease, "lease %v", lease)
	}
	_, err := b.locks.TryAcquire(ctx, "", time.Second)
	require.ErrorIs(t, err, lock.ErrInvalidName)
	_, err = b.locks.Acquire(ctx, "", time.Second)
	require.ErrorIs(t, err, lock.ErrInvalidName)
	_, err = b.locks.ForceRelease(ctx, "")
	require.ErrorIs(t, err, lock.ErrInvalidName)
	_, err = b.locks.Restore(ctx, "", dbcache.NewLeaseToken())
	require.ErrorIs(t, err, lock.ErrInvalidName)
	for _, bad := range []string{"nul\x00", "\xff", strings.Repeat("n", dbcache.MaxKeyBytes)} {
		_, err := b.locks.TryAcquire(ctx, bad, time.Second)
		require.ErrorIs(t, err, dbcache.ErrInvalidKey)
	}
	_, err = b.locks.Restore(ctx, "n", "not-a-token")
	require.ErrorIs(t, err, lock.ErrInvalidLease)
	require.Zero(t, dbtest.Exec(t, b.pool, `DELETE FROM dbcache_leases`), "nothing was leased")

	l, err := b.locks.TryAcquire(ctx, "n", time.Minute)
	require.NoError(t, err)
	require.ErrorIs(t, l.Refresh(ctx, 0), lock.ErrInvalidLease)
	require.NoError(t, l.Refresh(ctx, time.Minute))
	require.Error(t, l.Check(ctx, nil))

	for _, cfg := range []*lock.Config{{PollMin: time.Microsecond}, {PollMin: time.Second, PollMax: time.Millisecond}, {OpTimeout: -time.Second}} {
		_, err := lock.New(ctx, b.pool, cfg)
		require.Error(t, err, "%+v", cfg)
	}
	_, err = lock.New(ctx, nil, nil)
	require.Error(t, err)
}

// The fences are kept where nothing else resets them: releases, Clear of
// the cache, a culling pass and the loss of every lease (what a crash does
// to the UNLOGGED leases table) leave the next grant's fence greater.
func TestFencesNeverGoBack(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	cache, err := dbcache.New(ctx, b.pool, nil)
	require.NoError(t, err)
	defer cache.Close()
	culler, err := culling.New(b.pool, &culling.Config{MaxEntries: 1, CullFrequency: 1})
	require.NoError(t, err)
	last := int64(0)
	for i := range 6 {
		l, err := b.locks.TryAcquire(ctx, "n", time.Minute)
		require.NoError(t, err)
		require.Greater(t, l.Fence(), last)
		last = l.Fence()
		switch i % 3 {
		case 0:
			require.NoError(t, l.Release(ctx))
		case 1:
			require.NoError(t, cache.Clear(ctx))
			_, err := culler.RunOnce(ctx)
			require.NoError(t, err)
			_, err = b.locks.ForceRelease(ctx, "n")
			require.NoError(t, err)
		case 2:
			dbtest.Exec(t, b.pool, `TRUNCATE dbcache_leases`)
		}
	}
	require.EqualValues(t, 6, last)
}

// A grant's fence commits with synchronous_commit on, whatever the
// session's setting (a FastCommit cache's writes turn it off per
// transaction; a role may turn it off for its sessions).
func TestFenceCommitsDurably(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	l, err := b.locks.TryAcquire(ctx, "n", time.Minute)
	require.NoError(t, err)
	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `SET LOCAL synchronous_commit = off`)
	require.NoError(t, err)
	var fence int64
	var granted, expires time.Time
	require.NoError(t, tx.QueryRow(ctx, lock.FenceStatement(b.locks), lock.MadeKey(b.locks, "n"), string(l.Owner())).Scan(&fence, &granted, &expires))
	require.Greater(t, fence, l.Fence())
	var setting string
	require.NoError(t, tx.QueryRow(ctx, `SELECT current_setting('synchronous_commit')`).Scan(&setting))
	require.Equal(t, "on", setting)
}

// Check inside the caller's transaction: the owner holds the lock, and no
// other owner is granted it until the transaction ends, even after the
// lease has run out; after that, the lapsed holder's Check is refused.
func TestCheckInTransaction(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	other := client(t, b.pool, nil)
	l, err := b.locks.TryAcquire(ctx, "n", 200*time.Millisecond)
	require.NoError(t, err)
	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, l.Check(ctx, tx))
	// Wait, by the database's clock, until the lease has run out.
	for {
		var over bool
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT expires <= statement_timestamp() FROM dbcache_leases`).Scan(&over))
		if over {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	got := make(chan error, 1)
	go func() {
		_, err := other.TryAcquire(ctx, "n", time.Minute)
		got <- err
	}()
	// The other acquire waits for the transaction's row lock.
	for {
		var waiting bool
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
			WHERE c.relname = 'dbcache_leases' AND NOT l.granted) OR EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted)`).Scan(&waiting))
		if waiting {
			break
		}
		select {
		case err := <-got:
			t.Fatalf("another owner was granted the lock while a transaction that checked it was open: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	select {
	case err := <-got:
		t.Fatalf("the other acquire returned before the transaction ended: %v", err)
	default:
	}
	require.NoError(t, tx.Commit(ctx))
	require.NoError(t, <-got, "granted once the transaction ended")
	tx, err = b.pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	require.ErrorIs(t, l.Check(ctx, tx), lock.ErrNotHeld)
}

// The schema must have the fences table (migration 10).
func TestNewNeedsMigration11(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	dbtest.Exec(t, b.pool, `DROP TABLE dbcache_lock_fences`)
	_, err := lock.New(ctx, b.pool, nil)
	require.ErrorIs(t, err, dbcache.ErrSchemaBehind)
	require.True(t, errors.Is(err, dbcache.ErrNotMigrated))
}
