package migrations_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/golang-migrate/migrate/v4/database"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/migrations"
)

// The Migrator through PgBouncer 1.18 in transaction pooling, which refuses
// startup parameters other than the few it tracks and moves a client
// between server connections from one transaction to the next: every call
// works with Config.Schema, six concurrent Ups leave the schema migrated
// once and no lock held on any server connection, a held lock still bounds
// the wait, and a connection config carrying a refused startup parameter
// gets an error that names it.
func TestPgBouncerMigrator(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bouncer := dbtest.NewPgBouncer(t, nil)
	s := dbtest.NewSchema(t)
	direct := s.Pool(t)
	cc := bouncer.PoolConfig(t, s).ConnConfig
	m, err := migrations.NewFromConnConfig(cc, &migrations.Config{Schema: s.Name})
	require.NoError(t, err)

	var wg sync.WaitGroup
	results := make([]migrations.Result, 6)
	errs := make([]error, 6)
	for i := range results {
		wg.Go(func() { results[i], errs[i] = m.UpResult(ctx) })
	}
	wg.Wait()
	applied := 0
	for i, err := range errs {
		require.NoError(t, err)
		if results[i].From == 0 && results[i].To == migrations.Latest() {
			applied++
		}
	}
	require.Equal(t, 1, applied, "%v", results)
	v, dirty, err := m.Version(ctx)
	require.NoError(t, err)
	require.False(t, dirty)
	require.Equal(t, migrations.Latest(), v)
	require.True(t, tableExists(t, s, migrations.Table), "in the schema, not in public")

	var db string
	require.NoError(t, direct.QueryRow(ctx, `SELECT current_database()`).Scan(&db))
	id, err := database.GenerateAdvisoryLockId(db, s.Name, migrations.MigrationsTable)
	require.NoError(t, err)
	var held int
	require.NoError(t, direct.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
AND classid = 0 AND objsubid = 1 AND objid = $1::bigint::oid`, id).Scan(&held))
	require.Zero(t, held, "no migration lock left on a server connection")

	require.NoError(t, m.SetPersistence(ctx, migrations.Unlogged))
	p, err := m.Persistence(ctx)
	require.NoError(t, err)
	require.Equal(t, migrations.Unlogged, p)
	require.NoError(t, m.Down(ctx, 1))
	require.NoError(t, m.Force(ctx, int(migrations.Latest())))

	// A lock held elsewhere bounds the wait.
	conn, err := direct.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	_, err = conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, id)
	require.NoError(t, err)
	short, err := migrations.NewFromConnConfig(cc, &migrations.Config{Schema: s.Name, LockTimeout: 300 * time.Millisecond})
	require.NoError(t, err)
	_, err = short.DownAllResult(ctx)
	require.ErrorIs(t, err, migrations.ErrLockTimeout)
	_, err = conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, id)
	require.NoError(t, err)

	res, err := m.DownAllResult(ctx)
	require.NoError(t, err)
	require.NotNil(t, res.DroppedEntries)
	require.False(t, tableExists(t, s, migrations.Table))

	bad := cc.Copy()
	bad.RuntimeParams["search_path"] = pgx.Identifier{s.Name}.Sanitize()
	mb, err := migrations.NewFromConnConfig(bad, nil)
	require.NoError(t, err)
	err = mb.Up(ctx)
	require.Error(t, err)
	require.Contains(t, err.Error(), "refuses the startup parameter search_path")
	require.Contains(t, err.Error(), "Config.Schema")
}
