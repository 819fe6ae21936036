package integration_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/migrations"
)

// The migrations on a server nothing else has touched: its public schema and
// default search_path, as an application's database would be. One container
// serves the group; each subtest gets a database of its own on it.

func TestMigrations(t *testing.T) {
	awaitServer := startServer(t)
	t.Parallel()
	srv := awaitServer(t)

	// freshPool creates a database and opens a pool on it with no
	// search_path of ours: the server's default ("$user", public).
	freshPool := func(t *testing.T, name string) *pgxpool.Pool {
		t.Helper()
		srv.createDatabase(t, name)
		return dbtest.NewPool(t, srv.poolConfig(t, name))
	}

	t.Run("UpDownUp", func(t *testing.T) {
		t.Parallel()
		pool := freshPool(t, "up_down_up")
		ctx := ctxT(t)
		m, err := migrations.New(pool, nil)
		require.NoError(t, err)

		v, dirty, err := m.Version(ctx)
		require.NoError(t, err)
		require.Zero(t, v)
		require.False(t, dirty)
		pending, err := m.Pending(ctx)
		require.NoError(t, err)
		require.True(t, pending)

		require.NoError(t, m.Up(ctx))
		requireVersion(t, m, migrations.Latest())
		require.True(t, tableExists(t, pool, "public."+migrations.Table))
		require.True(t, tableExists(t, pool, "public."+migrations.MigrationsTable))
		require.False(t, tableExists(t, pool, "public.schema_migrations"), "never golang-migrate's default table")
		require.NoError(t, m.Up(ctx), "up again is a no-op")

		c, _ := cacheOn(t, pool, nil)
		require.NoError(t, c.Set(ctx, "k", []byte("v1"), dbcache.Forever))

		// Down one step at a time, to nothing.
		versions := migrations.Versions()
		for i := len(versions) - 1; i >= 0; i-- {
			require.NoError(t, m.Down(ctx, 1))
			want := uint(0)
			if i > 0 {
				want = versions[i-1]
			}
			requireVersion(t, m, want)
		}
		require.False(t, tableExists(t, pool, "public."+migrations.Table), "down drops the cache table")
		require.NoError(t, m.Down(ctx, 1), "nothing left to revert is success")

		// The cache made while migrated now reports the missing table.
		_, err = c.Get(ctx, "k")
		require.ErrorIs(t, err, dbcache.ErrNotMigrated)
		_, err = dbcache.New(ctx, pool, nil)
		require.ErrorIs(t, err, dbcache.ErrNotMigrated)

		// Up again: a working, empty cache.
		require.NoError(t, m.Up(ctx))
		requireVersion(t, m, migrations.Latest())
		_, err = c.Get(ctx, "k")
		require.ErrorIs(t, err, dbcache.ErrMiss, "the table came back empty")
		require.NoError(t, c.Set(ctx, "k", []byte("v2"), dbcache.Forever))
		v2, err := c.Get(ctx, "k")
		require.NoError(t, err)
		require.Equal(t, "v2", string(v2))

		// DownAll and Up once more.
		require.NoError(t, m.DownAll(ctx))
		requireVersion(t, m, 0)
		require.NoError(t, m.Up(ctx))
		requireVersion(t, m, migrations.Latest())
	})

	t.Run("NotMigrated", func(t *testing.T) {
		t.Parallel()
		pool := freshPool(t, "not_migrated")
		ctx := ctxT(t)

		_, err := dbcache.New(ctx, pool, nil)
		require.ErrorIs(t, err, dbcache.ErrNotMigrated)
		require.Contains(t, err.Error(), "migrate", "the error says what to do")

		_, err = dbcache.New(ctx, pool, &dbcache.Config{Schema: "nosuchschema"})
		require.ErrorIs(t, err, dbcache.ErrNotMigrated)
		require.Contains(t, err.Error(), "nosuchschema")

		_, err = dbcache.Open(ctx, srv.url("not_migrated"), nil)
		require.ErrorIs(t, err, dbcache.ErrNotMigrated)

		require.Empty(t, userTables(t, pool), "asking wrote nothing")
	})

	t.Run("ConcurrentUp", func(t *testing.T) {
		t.Parallel()
		pool := freshPool(t, "concurrent_up")
		ctx := ctxT(t)
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for i := range errs {
			wg.Go(func() {
				m, err := migrations.New(pool, nil)
				if err == nil {
					err = m.Up(ctx)
				}
				errs[i] = err
			})
		}
		wg.Wait()
		for _, err := range errs {
			require.NoError(t, err)
		}
		m, err := migrations.New(pool, nil)
		require.NoError(t, err)
		requireVersion(t, m, migrations.Latest())
	})

	// The CLI's migrate against the server, then the CLI and the library on
	// one cache: what one writes the other reads.
	t.Run("CLI", func(t *testing.T) {
		t.Parallel()
		bin := buildCLI(t)
		pool := freshPool(t, "cli")
		url := srv.url("cli")
		ctx := ctxT(t)
		run := func(stdin string, args ...string) (stdout, stderr string, code int) {
			t.Helper()
			return runCLI(t, bin, stdin, append(args, "--database-url", url)...)
		}

		out, errOut, code := run("", "migrate", "version", "--json")
		require.Equal(t, 4, code, "pending migrations exit 4: %s", errOut)
		require.Contains(t, out, `"version":0`)

		_, errOut, code = run("", "migrate", "up")
		require.Zero(t, code, errOut)
		m, err := migrations.New(pool, nil)
		require.NoError(t, err)
		requireVersion(t, m, migrations.Latest())
		_, errOut, code = run("", "migrate", "up")
		require.Zero(t, code, "up to date is success: %s", errOut)

		c, _ := cacheOn(t, pool, nil)
		require.NoError(t, c.Set(ctx, "from-lib", []byte("a\x00b'\n"), dbcache.Forever))
		out, errOut, code = run("", "get", "from-lib")
		require.Zero(t, code, errOut)
		require.Equal(t, "a\x00b'\n", out, "the CLI reads the library's bytes")
		_, errOut, code = run("x\x00y\n", "set", "from-cli", "--ttl", "never")
		require.Zero(t, code, errOut)
		v, err := c.Get(ctx, "from-cli")
		require.NoError(t, err)
		require.Equal(t, "x\x00y\n", string(v), "the library reads the CLI's bytes")
		_, _, code = run("", "get", "absent")
		require.Equal(t, 3, code, "a miss exits 3")

		_, errOut, code = run("", "migrate", "down", "--all")
		require.Equal(t, 2, code, "no terminal to ask on: --yes is needed: %s", errOut)
		_, errOut, code = run("", "migrate", "down", "--all", "--yes")
		require.Zero(t, code, errOut)
		requireVersion(t, m, 0)
		_, err = c.Get(ctx, "from-lib")
		require.ErrorIs(t, err, dbcache.ErrNotMigrated)
		_, errOut, code = run("", "get", "from-lib")
		require.Equal(t, 1, code, "not migrated is a failure")
		require.Contains(t, errOut, "migrate", "and says what to do")

		_, errOut, code = run("", "migrate", "up", "--schema", "cli_schema")
		require.Zero(t, code, errOut)
		_, err = dbcache.New(ctx, pool, &dbcache.Config{Schema: "cli_schema"})
		require.NoError(t, err, "migrated into --schema")

		// A server that is not there: a prompt failure, exit 1.
		_, errOut, code = runCLI(t, bin, "", "migrate", "up", "--connect-timeout", "2s",
			"--database-url", "postgres://postgres@"+loopback+":1/none?sslmode=disable")
		require.Equal(t, 1, code, errOut)
	})

	t.Run("Schemas", func(t *testing.T) {
		t.Parallel()
		pool := freshPool(t, "schemas")
		ctx := ctxT(t)
		// Two caches in one database are two schemas, each migrated on its own.
		for _, s := range []string{"tenant_a", "tenant_b"} {
			m, err := migrations.New(pool, &migrations.Config{Schema: s})
			require.NoError(t, err)
			require.NoError(t, m.Up(ctx))
			requireVersion(t, m, migrations.Latest())
		}
		a, _ := cacheOn(t, pool, &dbcache.Config{Schema: "tenant_a"})
		b, _ := cacheOn(t, pool, &dbcache.Config{Schema: "tenant_b"})
		require.NoError(t, a.Set(ctx, "k", []byte("a"), dbcache.Forever))
		_, err := b.Get(ctx, "k")
		require.ErrorIs(t, err, dbcache.ErrMiss)
		require.False(t, tableExists(t, pool, "public."+migrations.Table), "nothing in public")

		m, err := migrations.New(pool, &migrations.Config{Schema: "tenant_a"})
		require.NoError(t, err)
		require.NoError(t, m.DownAll(ctx))
		_, err = a.Get(ctx, "k")
		require.ErrorIs(t, err, dbcache.ErrNotMigrated)
		require.NoError(t, b.Set(ctx, "k", []byte("b"), dbcache.Forever), "the other schema is untouched")
	})
}

func requireVersion(t *testing.T, m *migrations.Migrator, want uint) {
	t.Helper()
	v, dirty, err := m.Version(ctxT(t))
	require.NoError(t, err)
	require.False(t, dirty)
	require.Equal(t, want, v)
}

func tableExists(t *testing.T, pool *pgxpool.Pool, name string) bool {
	t.Helper()
	var ok bool
	require.NoError(t, pool.QueryRow(ctxT(t), `SELECT to_regclass($1) IS NOT NULL`, name).Scan(&ok))
	return ok
}

// userTables lists the tables outside the system schemas.
func userTables(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT schemaname || '.' || tablename FROM pg_tables
		WHERE schemaname NOT IN ('pg_catalog', 'information_schema')`)
	require.NoError(t, err)
	var out []string
	for rows.Next() {
		var s string
		require.NoError(t, rows.Scan(&s))
		out = append(out, s)
	}
	require.NoError(t, rows.Err())
	return out
}

// buildCLI builds cmd/dbcache into the test's temporary directory.
func buildCLI(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "dbcache")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/dbcache/dbcache/cmd/dbcache").CombinedOutput()
	require.NoError(t, err, "go build cmd/dbcache:\n%s", out)
	return bin
}

// runCLI runs the CLI with args and stdin, with no PG* or DATABASE_URL from
// the environment, and returns its output and exit code.
func runCLI(t *testing.T, bin, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") && !strings.HasPrefix(kv, "DATABASE_URL=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	err := cmd.Run()
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return o.String(), e.String(), exitErr.ExitCode()
	}
	require.NoError(t, err, "run %s %v", bin, args)
	return o.String(), e.String(), 0
}
