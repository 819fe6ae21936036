package dbtest_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/migrations"
	"github.com/dbcache/dbcache/internal/pgserver"
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

// PgBouncer pools in transaction mode in front of the test server: with one
// server connection, a second client is served while the first stays
// connected between its transactions (session pooling would make it wait),
// both reach the same backend, and the PID a client was given is not that
// backend's.
func TestPgBouncerTransactionPooling(t *testing.T) {
	t.Parallel()
	bouncer := dbtest.NewPgBouncer(t, &dbtest.PgBouncerConfig{PoolSize: 1})
	require.NotZero(t, bouncer.Port())
	require.False(t, bouncer.Port() >= 32768 && bouncer.Port() <= 60999, "port %d is in the ephemeral range", bouncer.Port())
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	ctx := ctxT(t)
	cfg := bouncer.PoolConfig(t, s)
	cfg.MaxConns = 1
	first, second := dbtest.NewPool(t, cfg), dbtest.NewPool(t, cfg.Copy())

	c1, err := first.Acquire(ctx)
	require.NoError(t, err)
	defer c1.Release()
	pid1, err := dbtest.ServerPID(ctx, c1)
	require.NoError(t, err)
	require.NotEqual(t, c1.Conn().PgConn().PID(), pid1, "the client's PID is PgBouncer's cancel key")

	// c1 stays connected, idle between transactions.
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	pid2, err := dbtest.ServerPID(qctx, second)
	require.NoError(t, err, "a second client is served while the first stays connected")
	require.Equal(t, pid1, pid2, "one server connection serves both")

	// The schema's table is there, named with its schema: no search_path
	// reaches the server through PgBouncer.
	var n int
	require.NoError(t, second.QueryRow(qctx, "SELECT count(*) FROM "+pgx.Identifier{s.Name, migrations.Table}.Sanitize()).Scan(&n))
	require.Zero(t, n)
}

// A pool through PgBouncer cannot set search_path at connect time: PgBouncer
// 1.18 refuses the startup parameter. This pins the behaviour the harness
// documents (and the code under test must live with).
func TestPgBouncerRefusesSearchPath(t *testing.T) {
	t.Parallel()
	bouncer := dbtest.NewPgBouncer(t, nil)
	s := dbtest.NewSchema(t)
	cfg := bouncer.PoolConfig(t, s)
	cfg.ConnConfig.RuntimeParams["search_path"] = s.Name
	ctx := ctxT(t)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	defer pool.Close()
	err = pool.Ping(ctx)
	require.Error(t, err)
	require.Contains(t, err.Error(), "unsupported startup parameter")
}

// The profile's database has its defaults: every schema of a run with
// DBCACHE_TEST_DB_PROFILE lives in it. Run here on the profiles a process
// can ask for.
func TestProfiles(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env, isolation, first string
	}{
		{"repeatable-read", "repeatable read", "B"},
		{"icu", "read committed", "a"},
		{"icu,serializable", "serializable", "a"},
	} {
		t.Run(tc.env, func(t *testing.T) {
			t.Parallel()
			p, err := dbtest.ParseProfile(tc.env)
			require.NoError(t, err)
			s := dbtest.SchemaWith(t, p)
			s.Migrate(t)
			pool := s.Pool(t)
			var iso, first string
			require.NoError(t, pool.QueryRow(ctxT(t), `SELECT current_setting('transaction_isolation'),
				(SELECT k FROM unnest(ARRAY['B', 'a']) AS k ORDER BY k LIMIT 1)`).Scan(&iso, &first))
			require.Equal(t, tc.isolation, iso)
			require.Equal(t, tc.first, first)
			require.Zero(t, dbtest.Count(t, pool))
		})
	}
	_, err := dbtest.ParseProfile("icu,read-uncommitted")
	require.ErrorContains(t, err, "read-uncommitted")
}

// A run with a profile puts every schema in the profile's database.
func TestRunProfile(t *testing.T) {
	t.Parallel()
	p, err := dbtest.RunProfile()
	require.NoError(t, err)
	pool := dbtest.Pool(t)
	var iso string
	require.NoError(t, pool.QueryRow(ctxT(t), `SELECT current_setting('transaction_isolation')`).Scan(&iso))
	if p.Isolation != "" {
		require.Equal(t, p.Isolation, iso)
	}
	t.Logf("profile %+v: sessions start at %s", p, iso)
}
