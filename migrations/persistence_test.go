package migrations_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/migrations"
)

// Config.Unlogged creates the table unlogged; SetPersistence turns it
// either way and keeps every row; an existing table is never rewritten by
// Up.
func TestPersistence(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	m := newMigrator(t, s, &migrations.Config{Schema: s.Name, Unlogged: true})

	_, err := m.Persistence(ctx)
	require.ErrorIs(t, err, migrations.ErrNoTable)
	require.ErrorIs(t, m.SetPersistence(ctx, migrations.Logged), migrations.ErrNoTable)

	require.NoError(t, m.Up(ctx))
	p, err := m.Persistence(ctx)
	require.NoError(t, err)
	require.Equal(t, migrations.Unlogged, p)

	pool := s.Pool(t)
	dbtest.Exec(t, pool, `INSERT INTO dbcache_entries SELECT 'k' || i, 'v', NULL FROM generate_series(1, 1000) i`)
	require.NoError(t, m.SetPersistence(ctx, migrations.Logged))
	p, err = m.Persistence(ctx)
	require.NoError(t, err)
	require.Equal(t, migrations.Logged, p)
	require.Equal(t, 1000, dbtest.Count(t, pool))
	require.NoError(t, m.SetPersistence(ctx, migrations.Logged), "already logged is a no-op")

	// Up with Unlogged on an existing logged table leaves it alone.
	require.NoError(t, m.Up(ctx))
	p, err = m.Persistence(ctx)
	require.NoError(t, err)
	require.Equal(t, migrations.Logged, p)

	require.Error(t, m.SetPersistence(ctx, "sometimes"))
}

// The rewrite waits for its lock at most LockTimeout: a long transaction
// reading the cache makes it give up with ErrLockTimeout, changing nothing.
func TestSetPersistenceLockTimeout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	m := newMigrator(t, s, &migrations.Config{Schema: s.Name, LockTimeout: 200 * time.Millisecond})
	pool := s.Pool(t)
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `SELECT count(*) FROM dbcache_entries`)
	require.NoError(t, err)
	require.ErrorIs(t, m.SetPersistence(ctx, migrations.Unlogged), migrations.ErrLockTimeout)
	p, err := m.Persistence(ctx)
	require.NoError(t, err)
	require.Equal(t, migrations.Logged, p)
}
