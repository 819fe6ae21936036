package migrations_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/golang-migrate/migrate/v4"
	"github.com/golang-migrate/migrate/v4/database"
	pgxmigrate "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/migrations"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

func newMigrator(t *testing.T, s *dbtest.Schema, cfg *migrations.Config) *migrations.Migrator {
	t.Helper()
	pool := s.Pool(t)
	m, err := migrations.New(pool, cfg)
	require.NoError(t, err)
	return m
}

func tableExists(t *testing.T, s *dbtest.Schema, table string) bool {
	t.Helper()
	pool := s.Pool(t)
	var ok bool
	require.NoError(t, pool.QueryRow(context.Background(),
		`SELECT to_regclass($1) IS NOT NULL`, pgx.Identifier{s.Name, table}.Sanitize()).Scan(&ok))
	return ok
}

func TestUpDownUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	m := newMigrator(t, s, nil) // search_path decides the schema

	v, dirty, err := m.Version(ctx)
	require.NoError(t, err)
	require.Zero(t, v)
	require.False(t, dirty)
	pending, err := m.Pending(ctx)
	require.NoError(t, err)
	require.True(t, pending)

	require.NoError(t, m.Up(ctx))
	require.True(t, tableExists(t, s, migrations.Table))
	require.True(t, tableExists(t, s, migrations.MigrationsTable))
	require.False(t, tableExists(t, s, "schema_migrations"), "must not use the app's migrations table")
	v, _, err = m.Version(ctx)
	require.NoError(t, err)
	require.Equal(t, migrations.Latest(), v)

	require.NoError(t, m.Up(ctx), "applying twice is a no-op")

	require.NoError(t, m.Down(ctx, len(migrations.Versions())))
	require.False(t, tableExists(t, s, migrations.Table))
	require.NoError(t, m.Down(ctx, 1), "nothing left to revert is success")

	require.NoError(t, m.Up(ctx))
	require.True(t, tableExists(t, s, migrations.Table))
	require.NoError(t, m.DownAll(ctx))
	require.False(t, tableExists(t, s, migrations.Table))
}

func TestSchemaConfigCreatesSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	other := s.Name + "_other"
	pool := s.Pool(t)
	// Registered after the pool, so it runs before the pool closes.
	t.Cleanup(func() { dbtest.Exec(t, pool, "DROP SCHEMA IF EXISTS "+pgx.Identifier{other}.Sanitize()+" CASCADE") })
	m := newMigrator(t, s, &migrations.Config{Schema: other})
	v, dirty, err := m.Version(ctx)
	require.NoError(t, err, "a schema that does not exist yet is at version 0")
	require.Zero(t, v)
	require.False(t, dirty)
	require.NoError(t, m.Up(ctx))
	require.True(t, tableExists(t, &dbtest.Schema{Name: other, URL: s.URL}, migrations.Table))
	require.False(t, tableExists(t, s, migrations.Table), "the search_path schema is left alone")
}

func TestInvalidSchemaName(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	_, err := migrations.New(s.Pool(t), &migrations.Config{Schema: `x"; DROP TABLE y; --`})
	require.ErrorContains(t, err, "not a valid schema name")
}

func TestConcurrentUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		m := newMigrator(t, s, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = m.Up(ctx)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	v, dirty, err := newMigrator(t, s, nil).Version(ctx)
	require.NoError(t, err)
	require.False(t, dirty)
	require.Equal(t, migrations.Latest(), v)
}

// A migrator that finds the lock held gives up after LockTimeout instead of
// waiting forever (golang-migrate's own wait has no limit).
func TestLockWaitIsBounded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	require.NoError(t, newMigrator(t, s, nil).Up(ctx))

	pool := s.Pool(t)
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	var db string
	require.NoError(t, conn.QueryRow(ctx, "SELECT current_database()").Scan(&db))
	id, err := database.GenerateAdvisoryLockId(db, s.Name, migrations.MigrationsTable)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "SELECT pg_advisory_lock($1)", id)
	require.NoError(t, err)
	defer conn.Exec(ctx, "SELECT pg_advisory_unlock($1)", id) //nolint:errcheck // best effort

	m := newMigrator(t, s, &migrations.Config{LockTimeout: 300 * time.Millisecond})
	done := make(chan error, 1)
	go func() { done <- m.Up(ctx) }()
	select {
	case err := <-done:
		require.ErrorIs(t, err, migrations.ErrLockTimeout)
	case <-time.After(30 * time.Second):
		t.Fatal("Up waited on the held lock far past LockTimeout")
	}
}

func TestDirtyAndForce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	m := newMigrator(t, s, nil)
	require.NoError(t, m.Up(ctx))
	dbtest.Exec(t, s.Pool(t), "UPDATE "+migrations.MigrationsTable+" SET dirty = true")

	err := m.Up(ctx)
	require.ErrorIs(t, err, migrations.ErrDirty)
	var de *migrations.DirtyError
	require.True(t, errors.As(err, &de))
	require.EqualValues(t, migrations.Latest(), de.Version)
	require.Contains(t, err.Error(), "force")

	_, dirty, err := m.Version(ctx)
	require.NoError(t, err)
	require.True(t, dirty)

	require.ErrorIs(t, m.Force(ctx, 999), migrations.ErrNoSuchVersion)
	require.NoError(t, m.Force(ctx, int(migrations.Latest())))
	v, dirty, err := m.Version(ctx)
	require.NoError(t, err)
	require.False(t, dirty)
	require.Equal(t, migrations.Latest(), v)
}

func TestUnreachableServerFailsWithinContext(t *testing.T) {
	t.Parallel()
	cfg, err := pgx.ParseConfig("postgres://nobody@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
	require.NoError(t, err)
	m, err := migrations.NewFromConnConfig(cfg, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = m.Up(ctx)
	require.Error(t, err)
	require.Contains(t, err.Error(), "connect")
}

func TestVersionsEmbedded(t *testing.T) {
	t.Parallel()
	require.Equal(t, []uint{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, migrations.Versions())
	require.EqualValues(t, 10, migrations.Latest())
}

// An application can apply the exported files with its own golang-migrate,
// recording them in dbcache's migrations table; the Migrator then agrees.
func TestFSWithOwnGolangMigrate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	cfg, err := pgx.ParseConfig(s.URL)
	require.NoError(t, err)
	cfg.RuntimeParams["search_path"] = pgx.Identifier{s.Name}.Sanitize()
	db := stdlib.OpenDB(*cfg)
	defer db.Close()

	src, err := iofs.New(migrations.FS, ".")
	require.NoError(t, err)
	drv, err := pgxmigrate.WithInstance(db, &pgxmigrate.Config{MigrationsTable: migrations.MigrationsTable})
	require.NoError(t, err)
	mg, err := migrate.NewWithInstance("iofs", src, "pgx5", drv)
	require.NoError(t, err)
	defer mg.Close()
	require.NoError(t, mg.Up())

	require.True(t, tableExists(t, s, migrations.Table))
	v, dirty, err := newMigrator(t, s, nil).Version(ctx)
	require.NoError(t, err)
	require.False(t, dirty)
	require.Equal(t, migrations.Latest(), v)
}

// An application's own golang-migrate table in the same schema is left
// alone: dbcache's migrations are recorded in MigrationsTable only, and an
// application at version 42, dirty or not, neither blocks nor moves.
func TestAppSchemaMigrationsUntouched(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	pool := s.Pool(t)
	dbtest.Exec(t, pool, `CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)`)
	dbtest.Exec(t, pool, `INSERT INTO schema_migrations VALUES (42, true)`)
	m := newMigrator(t, s, nil)
	require.NoError(t, m.Up(ctx))
	require.NoError(t, m.Down(ctx, 1))
	require.NoError(t, m.Up(ctx))
	var v int64
	var dirty bool
	require.NoError(t, pool.QueryRow(ctx, `SELECT version, dirty FROM schema_migrations`).Scan(&v, &dirty))
	require.EqualValues(t, 42, v)
	require.True(t, dirty)
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM schema_migrations`).Scan(&n))
	require.Equal(t, 1, n)
	got, _, err := m.Version(ctx)
	require.NoError(t, err)
	require.Equal(t, migrations.Latest(), got)
}
