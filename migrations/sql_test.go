package migrations_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/migrations"
)

func TestAllMigrations(t *testing.T) {
	t.Parallel()
	all := migrations.All()
	require.Len(t, all, len(migrations.Versions()))
	for i, m := range all {
		require.Equal(t, migrations.Versions()[i], m.Version)
		require.NotEmpty(t, m.Name)
		require.True(t, strings.HasSuffix(m.UpFile, "_"+m.Name+".up.sql"), m.UpFile)
		require.True(t, strings.HasSuffix(m.DownFile, "_"+m.Name+".down.sql"), m.DownFile)
		up, err := migrations.FS.ReadFile(m.UpFile)
		require.NoError(t, err)
		require.Equal(t, string(up), m.Up)
		down, err := migrations.FS.ReadFile(m.DownFile)
		require.NoError(t, err)
		require.Equal(t, string(down), m.Down)
	}
	require.Equal(t, "create_dbcache_entries", all[0].Name)
	require.Contains(t, all[0].Up, "CREATE TABLE IF NOT EXISTS dbcache_entries")
	require.Contains(t, all[0].Down, "DROP TABLE IF EXISTS dbcache_entries")
}

// PendingMigrations and DownMigrations name exactly what Up and Down then
// do, and run nothing themselves.
func TestPendingAndDownMigrations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	m := newMigrator(t, s, nil)
	versions := func(ms []migrations.Migration) []uint {
		var out []uint
		for _, x := range ms {
			out = append(out, x.Version)
		}
		return out
	}
	all := migrations.Versions()
	latest := migrations.Latest()

	pending, err := m.PendingMigrations(ctx)
	require.NoError(t, err)
	require.Equal(t, all, versions(pending))
	require.False(t, tableExists(t, s, migrations.MigrationsTable), "a plan runs nothing")
	down, err := m.DownMigrations(ctx, 0)
	require.NoError(t, err)
	require.Empty(t, down, "nothing applied, nothing to revert")

	require.NoError(t, m.Up(ctx))
	pending, err = m.PendingMigrations(ctx)
	require.NoError(t, err)
	require.Empty(t, pending)

	down, err = m.DownMigrations(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, []uint{latest}, versions(down))
	down, err = m.DownMigrations(ctx, 0)
	require.NoError(t, err)
	reversed := make([]uint, len(all))
	for i, v := range all {
		reversed[len(all)-1-i] = v
	}
	require.Equal(t, reversed, versions(down))
	down, err = m.DownMigrations(ctx, 99)
	require.NoError(t, err)
	require.Equal(t, reversed, versions(down), "more steps than applied: all of them")
	v, _, err := m.Version(ctx)
	require.NoError(t, err)
	require.Equal(t, latest, v, "a plan reverts nothing")

	require.NoError(t, m.Down(ctx, 1))
	pending, err = m.PendingMigrations(ctx)
	require.NoError(t, err)
	require.Equal(t, []uint{latest}, versions(pending))

	dbtest.Exec(t, s.Pool(t), "UPDATE "+migrations.MigrationsTable+" SET dirty = true")
	_, err = m.PendingMigrations(ctx)
	require.ErrorIs(t, err, migrations.ErrDirty)
	_, err = m.DownMigrations(ctx, 1)
	require.ErrorIs(t, err, migrations.ErrDirty)
}

// A search_path naming no existing schema used to fail deep inside
// golang-migrate ("converting NULL to string is unsupported"); it is one
// line that says what is wrong.
func TestSearchPathWithoutSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	cfg, err := pgx.ParseConfig(s.URL)
	require.NoError(t, err)
	cfg.RuntimeParams["search_path"] = pgx.Identifier{s.Name + "_missing"}.Sanitize()
	m, err := migrations.NewFromConnConfig(cfg, nil)
	require.NoError(t, err)

	for name, call := range map[string]func() error{
		"Up":      func() error { return m.Up(ctx) },
		"Version": func() error { _, _, err := m.Version(ctx); return err },
		"Down":    func() error { return m.Down(ctx, 1) },
		"Pending": func() error { _, err := m.PendingMigrations(ctx); return err },
	} {
		err := call()
		require.ErrorIs(t, err, migrations.ErrNoSchema, name)
		msg := err.Error()
		require.NotContains(t, msg, "NULL", name)
		require.NotContains(t, msg, "\n", name)
		require.Contains(t, msg, s.Name+"_missing", "%s: names the search_path", name)
		require.Contains(t, msg, "Config.Schema", "%s: says what to do", name)
	}

	// With Config.Schema the same connection works: Up creates the schema.
	other := s.Name + "_made"
	pool := s.Pool(t)
	t.Cleanup(func() { dbtest.Exec(t, pool, "DROP SCHEMA IF EXISTS "+pgx.Identifier{other}.Sanitize()+" CASCADE") })
	m, err = migrations.NewFromConnConfig(cfg, &migrations.Config{Schema: other})
	require.NoError(t, err)
	require.NoError(t, m.Up(ctx))
}
