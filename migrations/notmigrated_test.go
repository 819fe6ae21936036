package migrations_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/migrations"
)

// The four "not migrated" errors of dbcache, culling and migrations are one
// that the others wrap: errors.Is(err, dbcache.ErrNotMigrated) holds for
// each, and a schema behind the code (ErrSchemaBehind) is told apart from a
// missing table.
func TestNotMigratedSentinels(t *testing.T) {
	t.Parallel()
	for _, err := range []error{culling.ErrTableNotFound, culling.ErrMigrationNeeded, migrations.ErrNoTable, dbcache.ErrSchemaBehind} {
		require.ErrorIs(t, err, dbcache.ErrNotMigrated, "%v", err)
	}
	require.ErrorIs(t, culling.ErrMigrationNeeded, dbcache.ErrSchemaBehind)
	for _, err := range []error{culling.ErrTableNotFound, migrations.ErrNoTable, dbcache.ErrNotMigrated} {
		require.NotErrorIs(t, err, dbcache.ErrSchemaBehind, "a missing table is not a schema behind: %v", err)
	}
}

// A schema migrated down below dbcache.SchemaVersion: the library says the
// schema is behind (ErrSchemaBehind), not that the table is missing, while
// a schema with no table says that; both still match ErrNotMigrated, as
// the culler's and the migrator's errors for the same schemas do.
func TestSchemaBehindIsItsOwnError(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	m := newMigrator(t, s, nil)
	require.NoError(t, m.Up(ctx))
	require.NoError(t, m.Down(ctx, int(migrations.Latest()-dbcache.SchemaVersion)+1))
	v, _, err := m.Version(ctx)
	require.NoError(t, err)
	require.Less(t, v, uint(dbcache.SchemaVersion))

	pool := s.Pool(t)
	_, err = dbcache.New(ctx, pool, nil)
	require.ErrorIs(t, err, dbcache.ErrSchemaBehind)
	require.ErrorIs(t, err, dbcache.ErrNotMigrated)
	require.NotContains(t, err.Error(), "not found")

	// The culler's MaxAge needs the written_at column of migration 4.
	for v >= 4 {
		require.NoError(t, m.Down(ctx, 1))
		v, _, err = m.Version(ctx)
		require.NoError(t, err)
	}
	c, err := culling.New(pool, &culling.Config{MaxAge: culling.MaxAgeMin})
	require.NoError(t, err)
	_, err = c.RunOnce(ctx)
	require.ErrorIs(t, err, culling.ErrMigrationNeeded)
	require.ErrorIs(t, err, dbcache.ErrSchemaBehind)

	require.NoError(t, m.DownAll(ctx))
	_, err = dbcache.New(ctx, pool, nil)
	require.ErrorIs(t, err, dbcache.ErrNotMigrated)
	require.False(t, errors.Is(err, dbcache.ErrSchemaBehind), "no table is not a schema behind")
	_, err = m.Persistence(ctx)
	require.ErrorIs(t, err, migrations.ErrNoTable)
	require.ErrorIs(t, err, dbcache.ErrNotMigrated)
	_, err = c.RunOnce(ctx)
	require.ErrorIs(t, err, culling.ErrTableNotFound)
	require.ErrorIs(t, err, dbcache.ErrNotMigrated)
}
