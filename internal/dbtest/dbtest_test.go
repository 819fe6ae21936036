package dbtest_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/pgserver"
	"github.com/dbcache/dbcache/migrations"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func schemaExists(t *testing.T, pool *pgxpool.Pool, name string) bool {
	t.Helper()
	var ok bool
	require.NoError(t, pool.QueryRow(ctxT(t), `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, name).Scan(&ok))
	return ok
}

// A test's pool works in its own migrated schema, as an application's
// would in its search_path.
func TestPoolHasSchema(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	var schema string
	require.NoError(t, pool.QueryRow(ctxT(t), `SELECT current_schema()`).Scan(&schema))
	require.True(t, strings.HasPrefix(schema, "dbct_"), schema)
	require.Zero(t, dbtest.Count(t, pool), "the cache table is there, empty")
}

// A schema is dropped when its test ends.
func TestSchemaDroppedAtEnd(t *testing.T) {
	t.Parallel()
	var name string
	t.Run("user", func(t *testing.T) {
		s := dbtest.NewSchema(t)
		s.Migrate(t)
		name = s.Name
	})
	admin := dbtest.NewPool(t, dbtest.NewSchema(t).PoolConfig(t))
	require.NotEmpty(t, name)
	require.False(t, schemaExists(t, admin, name))
}

// Main gives runnable examples a migrated schema through DATABASE_URL, so
// they can open their pool as any application would.
func Example_databaseURL() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	var ours, migrated bool
	err = pool.QueryRow(ctx, `SELECT current_schema() LIKE 'dbct\_%', to_regclass($1) IS NOT NULL`, migrations.Table).Scan(&ours, &migrated)
	fmt.Println(ours, migrated, err)
	// Output: true true <nil>
}

// With no database configured and neither Docker nor a PostgreSQL
// installation usable, a package fails at once with one message saying what
// to install or set: before any test when Main starts the server, and with
// one full message (the others pointing to it) when tests start it lazily.
func TestNoServerOneMessage(t *testing.T) {
	t.Parallel()
	env := []string{
		pgserver.EnvKind + "=auto",
		pgserver.EnvImage + "=dbcache.invalid/no-such-image:1", // Docker, if any, cannot run it
		pgserver.EnvBinDir + "=" + t.TempDir(),                 // no installation
	}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case dbtest.EnvDatabaseURL, pgserver.EnvKind, pgserver.EnvImage, pgserver.EnvBinDir:
		default:
			env = append(env, kv)
		}
	}
	run := func(t *testing.T, pattern string) (string, int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctxT(t), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run="+pattern, "-test.v")
		cmd.Env = env
		start := time.Now()
		out, err := cmd.CombinedOutput()
		t.Logf("took %v:\n%s", time.Since(start).Round(time.Millisecond), out)
		require.Error(t, err)
		require.NoError(t, ctx.Err(), "the child ran past its hang guard")
		return string(out), cmd.ProcessState.ExitCode()
	}
	requireMessage := func(t *testing.T, out string) {
		t.Helper()
		require.Equal(t, 1, strings.Count(out, "dbtest: no PostgreSQL for the tests: "), "one full message")
		for _, want := range []string{"install Docker", "apt install postgresql", pgserver.EnvBinDir, dbtest.EnvDatabaseURL} {
			require.Contains(t, out, want)
		}
		require.NotContains(t, out, "panic")
	}

	t.Run("Main", func(t *testing.T) {
		out, code := run(t, "^Example_databaseURL$")
		require.Equal(t, 1, code)
		requireMessage(t, out)
		require.NotContains(t, out, "=== RUN", "no test ran")
	})
	t.Run("Tests", func(t *testing.T) {
		// Main starts the server before any test (a -test.run pattern may
		// select an Example too): one message, and no test runs.
		out, code := run(t, "^(TestPoolHasSchema|TestSchemaDroppedAtEnd)$")
		require.Equal(t, 1, code)
		requireMessage(t, out)
		require.NotContains(t, out, "=== RUN", "no test ran")
	})
}
