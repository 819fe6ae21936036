package migrations_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/golang-migrate/migrate/v4"
	pgxmigrate "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
	schema "github.com/dbcache/dbcache/internal/migrations"
	"github.com/dbcache/dbcache/migrations"
)

// A Citus coordinator runs a migration file of several statements sent as
// one query only in part (it will not propagate CREATE or DROP INDEX on a
// distributed table from it) and refuses it through the extended protocol
// with 42601, as plain PostgreSQL refuses any query string of several
// commands there. So the extended protocol stands in for the coordinator:
// every file of several statements, sent whole that way, fails with
// 42601 on plain PostgreSQL too, which is the failure the migrators avoid
// by sending each statement alone.
func TestWholeFilesRefusedByTheExtendedProtocol(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	conn, err := pgx.ConnectConfig(ctx, s.PoolConfig(t).ConnConfig)
	require.NoError(t, err)
	defer conn.Close(ctx)
	several := 0
	for _, mg := range migrations.All() {
		if len(schema.Statements(mg.Up)) < 2 {
			continue
		}
		several++
		_, err := conn.PgConn().ExecParams(ctx, mg.Up, nil, nil, nil, nil).Close()
		var pgErr *pgconn.PgError
		require.True(t, errors.As(err, &pgErr), "%s: %v", mg.UpFile, err)
		require.Equal(t, "42601", pgErr.Code, "%s: %v", mg.UpFile, err)
	}
	require.Equal(t, 5, several, "files of several statements (docs/schema.md names them)")
}

// The two migrators: the public one (golang-migrate over this package's
// driver, what `dbcache migrate` runs) and the library's own applier (its
// tests' schemas).
type upper struct {
	name string
	up   func(ctx context.Context, t *testing.T, s *dbtest.Schema) error
}

func uppers() []upper {
	return []upper{
		{"public", func(ctx context.Context, t *testing.T, s *dbtest.Schema) error {
			m, err := migrations.New(s.Pool(t), &migrations.Config{Schema: s.Name, LockTimeout: 2 * time.Second})
			if err != nil {
				return err
			}
			return m.Up(ctx)
		}},
		{"internal", func(ctx context.Context, t *testing.T, s *dbtest.Schema) error {
			m, err := schema.New(s.Pool(t), &schema.Config{Schema: s.Name})
			if err != nil {
				return err
			}
			return m.Up(ctx)
		}},
	}
}

// stockMigrate applies the files whole (one simple-protocol query per
// file) with golang-migrate's own pgx driver, up to version to (0: all):
// the plain path, on a table that is not distributed.
func stockMigrate(t *testing.T, s *dbtest.Schema, to uint) {
	t.Helper()
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
	if to == 0 {
		require.NoError(t, mg.Up())
	} else {
		require.NoError(t, mg.Migrate(to))
	}
}

// schemaShape describes everything the migrations make in a schema:
// tables (persistence, options), columns (type, collation, nullability,
// default), indexes (definition, validity) and constraints, and the
// recorded version, with the schema's name taken out.
func schemaShape(t *testing.T, s *dbtest.Schema) string {
	t.Helper()
	const q = `
SELECT 'table ' || c.relname || ' ' || c.relpersistence::text || ' ' || coalesce(array_to_string(c.reloptions, ','), '')
  FROM pg_class c WHERE c.relnamespace = $1::regnamespace AND c.relkind = 'r'
UNION ALL
SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' ' ||
       coalesce((SELECT collname FROM pg_collation WHERE oid = a.attcollation), '') || ' ' || a.attnotnull::text || ' ' ||
       coalesce(pg_get_expr(d.adbin, d.adrelid), '') || ' ' || a.atthasmissing::text
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relnamespace = $1::regnamespace AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'index ' || replace(pg_get_indexdef(i.indexrelid), $1 || '.', '') || ' ' || i.indisvalid::text
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace = $1::regnamespace
UNION ALL
SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = $1::regnamespace
ORDER BY 1`
	pool := s.Pool(t)
	ctx := context.Background()
	rows, err := pool.Query(ctx, q, s.Name)
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	var v int64
	var dirty bool
	require.NoError(t, pool.QueryRow(ctx, `SELECT version, dirty FROM `+pgx.Identifier{s.Name, migrations.MigrationsTable}.Sanitize()).Scan(&v, &dirty))
	lines = append(lines, fmt.Sprintf("version %d dirty %v", v, dirty))
	return strings.ReplaceAll(strings.Join(lines, "\n"), s.Name+".", "")
}

// A migration onto an already distributed table: a schema migrated to
// version N the plain way (whole files, before the table was distributed)
// gets the rest from each migrator, which sends every statement alone
// through the extended protocol (what a Citus coordinator needs), and ends
// with the schema a plain full migration makes, for every N.
func TestMigrateOntoDistributedTable(t *testing.T) {
	t.Parallel()
	ref := dbtest.NewSchema(t)
	stockMigrate(t, ref, 0)
	want := schemaShape(t, ref)
	require.Contains(t, want, fmt.Sprintf("version %d dirty false", migrations.Latest()))
	for _, u := range uppers() {
		t.Run(u.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			for _, n := range append([]uint{0}, migrations.Versions()[:len(migrations.Versions())-1]...) {
				s := dbtest.NewSchema(t)
				if n > 0 {
					stockMigrate(t, s, n)
				}
				require.NoError(t, u.up(ctx, t, s), "from version %d", n)
				require.Equal(t, want, schemaShape(t, s), "from version %d", n)
			}
		})
	}
}

// A file that fails part way (here 004's third statement, after its second
// changed the cache table in the same transaction) is rolled back whole
// and leaves the version at the last file completed, clean: no half-
// applied file, no dirty flag, and the next Up applies the file again and
// the rest, to the schema a plain full migration makes. While the third
// statement waits, pg_stat_activity shows the migrator's query: the
// statement alone.
func TestFailureMidFileLeavesNoHalfState(t *testing.T) {
	t.Parallel()
	ref := dbtest.NewSchema(t)
	stockMigrate(t, ref, 0)
	want := schemaShape(t, ref)
	body, err := fs.ReadFile(migrations.FS, "004_add_dbcache_entries_written_at.up.sql")
	require.NoError(t, err)
	sts := schema.Statements(string(body))
	require.Len(t, sts, 3)
	require.Contains(t, sts[1], "ALTER TABLE dbcache_entries")
	require.Contains(t, sts[2], "ALTER TABLE dbcache_culler_state")
	for _, u := range uppers() {
		t.Run(u.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			s := dbtest.NewSchema(t)
			stockMigrate(t, s, 3)
			// An open transaction that read the culler's state table
			// holds a lock its ALTER waits for, until the file's own
			// lock_timeout (5 s) ends the statement.
			pool := s.Pool(t)
			blocker, err := pool.Begin(ctx)
			require.NoError(t, err)
			_, err = blocker.Exec(ctx, `SELECT count(*) FROM dbcache_culler_state`)
			require.NoError(t, err)
			var blockerPID int32
			require.NoError(t, blocker.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&blockerPID))
			upErr := make(chan error, 1)
			go func() { upErr <- u.up(ctx, t, s) }()
			// On a failed check: free the lock, and let Up end before the
			// test's cleanups close its pools.
			waited := false
			defer func() {
				_ = blocker.Rollback(context.WithoutCancel(ctx))
				if !waited {
					<-upErr
				}
			}()
			// While the third statement waits, the server shows what the
			// migrator sent: that statement alone, not the file (a file
			// sent as one query shows from its first comment on, with
			// statement 1's set_config and statement 2's ALTER).
			var running string
			for running == "" {
				err := pool.QueryRow(ctx, `SELECT query FROM pg_stat_activity WHERE $1::int = ANY (pg_blocking_pids(pid))`, blockerPID).Scan(&running)
				if errors.Is(err, pgx.ErrNoRows) {
					select {
					case err := <-upErr:
						t.Fatalf("up ended before its third statement waited: %v", err)
					case <-time.After(20 * time.Millisecond):
					}
					continue
				}
				require.NoError(t, err)
			}
			require.True(t, strings.HasPrefix(sts[2], strings.TrimSpace(running)), "the server runs %q, not statement 3 alone", running)
			require.NotContains(t, running, "set_config")
			require.NotContains(t, running, "written_at timestamptz")
			err = <-upErr
			waited = true
			require.NoError(t, blocker.Rollback(ctx))
			require.Error(t, err, "004's third statement waits past its lock_timeout")

			var v int64
			var dirty, hasWrittenAt bool
			require.NoError(t, pool.QueryRow(ctx, `SELECT version, dirty FROM `+migrations.MigrationsTable).Scan(&v, &dirty))
			require.EqualValues(t, 3, v, "the last file completed: %v", err)
			require.False(t, dirty, "a rolled-back file leaves nothing to repair: %v", err)
			require.NoError(t, pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('dbcache_entries') AND attname = 'written_at' AND NOT attisdropped)`).Scan(&hasWrittenAt))
			require.False(t, hasWrittenAt, "004's second statement rolled back with the file")

			require.NoError(t, u.up(ctx, t, s), "the next Up continues")
			require.Equal(t, want, schemaShape(t, s))
		})
	}
}
