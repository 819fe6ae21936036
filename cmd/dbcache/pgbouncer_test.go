package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-migrate/migrate/v4/database"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/migrations"
)

// The command behind PgBouncer 1.18 (Debian's) in transaction pooling,
// which refuses startup parameters other than the few it tracks and moves
// a client between server connections from one transaction to the next.

// setupBouncer is a fresh schema (not migrated) the binary reaches through
// a PgBouncer of the test's own; b.pool reaches the server directly.
func setupBouncer(t *testing.T) (*testBundle, *dbtest.PgBouncer) {
	t.Helper()
	bouncer := dbtest.NewPgBouncer(t, nil)
	b := setup(t, false)
	b.conn = []string{"--database-url", bouncer.SchemaURL(t, b.schema), "--schema", b.schema.Name}
	return b, bouncer
}

// Every command connects and works through PgBouncer: the command sends no
// startup parameter PgBouncer refuses (the statement timeout is not one),
// the migrator sets search_path, lock_timeout and statement_timeout inside
// its transactions, and the commands pick a query mode that keeps no named
// prepared statement.
func TestPgBouncerEveryCommand(t *testing.T) {
	t.Parallel()
	b, _ := setupBouncer(t)
	r := b.run(t, opts{}, "migrate", "status")
	requireCode(t, 4, r)
	require.Equal(t, "migrated up from version 0 to 5\n", b.ok(t, "migrate", "up"))
	require.Equal(t, "version 5 (up to date)\n", b.ok(t, "migrate", "version"))
	require.Contains(t, b.ok(t, "migrate", "status"), "version 5, up to date")
	require.Equal(t, 5, scalar[int](t, b.pool, `SELECT version FROM dbcache_schema_migrations`), "migrated in the schema, not public")

	require.Equal(t, "OK\n", b.ok(t, "set", "k", "v"))
	require.Equal(t, "v", b.ok(t, "get", "k"))
	require.Equal(t, "OK\n", b.ok(t, "set", "n", "41"))
	require.Equal(t, "42\n", b.ok(t, "incr", "n"))
	require.Equal(t, "stored\n", b.ok(t, "add", "a", "1"))
	require.Equal(t, "touched\n", b.ok(t, "touch", "a", "--ttl", "1h"))
	require.Equal(t, "true\n", b.ok(t, "has", "a"))
	require.Regexp(t, `^59m5\d`, b.ok(t, "ttl", "a"))
	require.Equal(t, "a\nk\nn\n", b.ok(t, "keys"))
	require.Equal(t, "deleted\n", b.ok(t, "delete", "a"))
	require.Equal(t, "deleted 1 entry\n", b.ok(t, "delete-prefix", "k", "--yes"))
	require.Contains(t, b.ok(t, "stats"), "entries          1 (exact count)")

	dbtest.Exec(t, b.pool, `INSERT INTO dbcache_entries (key, value, expires)
SELECT 'old' || i, 'v', now() - interval '1 minute' FROM generate_series(1, 500) AS i`)
	require.Regexp(t, `^removed 500 expired, culled 0; 1 entries left \(exact count\); took `, b.ok(t, "cull", "--batch-size", "100"))

	out := b.json(t, 0, "bench", "-n", "400", "-c", "4", "--keyspace", "50", "--ops", "get,set,incr,get_many,set_many")
	require.EqualValues(t, 0, out["total"].(map[string]any)["errors"], "%v", out)
	require.EqualValues(t, 0, out["left"])

	require.Equal(t, "unlogged (was logged)\n", b.ok(t, "migrate", "persistence", "unlogged", "--yes"))
	require.Equal(t, "unlogged\n", b.ok(t, "migrate", "persistence"))
	require.Equal(t, "cleared\n", b.ok(t, "clear", "--yes"))
	require.Equal(t, "migrated down from version 5 to 4\n", b.ok(t, "migrate", "down", "--yes"))
	require.Equal(t, "forced version 5 (was 4); nothing was run\n", b.ok(t, "migrate", "force", "5"))
	require.Equal(t, "migrated down from version 5 to 0; dropped the cache table, which held 0 entries\n", b.ok(t, "migrate", "down", "--all", "--yes"))
	require.False(t, scalar[bool](t, b.pool, `SELECT to_regclass('dbcache_entries') IS NOT NULL`))
}

// Migrators through PgBouncer serialise on the migration lock, which is
// held by a transaction (a session lock would stay on whichever server
// connection took it): five at once leave the schema migrated once, and
// exactly one of them says it applied the migrations.
func TestPgBouncerConcurrentMigrateUp(t *testing.T) {
	t.Parallel()
	b, _ := setupBouncer(t)
	var mu sync.Mutex
	var outs []string
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() {
			r := b.run(t, opts{}, "migrate", "up")
			mu.Lock()
			defer mu.Unlock()
			outs = append(outs, fmt.Sprintf("%d %s%s", r.code, r.stdout, r.stderr))
		})
	}
	wg.Wait()
	applied := 0
	for _, o := range outs {
		require.True(t, strings.HasPrefix(o, "0 "), "%q", outs)
		if strings.Contains(o, "migrated up from version 0 to 5") {
			applied++
		}
	}
	require.Equal(t, 1, applied, "%q", outs)
	require.Equal(t, "version 5 (up to date)\n", b.ok(t, "migrate", "version"))
	id, err := database.GenerateAdvisoryLockId(scalar[string](t, b.pool, `SELECT current_database()`), b.schema.Name, migrations.MigrationsTable)
	require.NoError(t, err)
	require.Zero(t, scalar[int](t, b.pool, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
AND classid = 0 AND objsubid = 1 AND objid = $1::bigint::oid`, id), "no migration lock left behind on a server connection")
}

// A connection string that carries a setting PgBouncer refuses at connect
// time gets an error that names the setting and the way out.
func TestPgBouncerRefusedParameterNamesTheFix(t *testing.T) {
	t.Parallel()
	b, _ := setupBouncer(t)
	url := b.conn[1]
	for _, tc := range []struct{ param, query, want string }{
		{"search_path", "&search_path=" + b.schema.Name, "--schema NAME"},
		{"options", "&options=-c%20search_path%3D" + b.schema.Name, "--schema NAME"},
		{"statement_timeout", "&statement_timeout=5000", "--statement-timeout"},
		{"lock_timeout", "&lock_timeout=5000", "remove lock_timeout"},
	} {
		r := run(t, opts{}, "migrate", "up", "--database-url", url+tc.query, "--schema", b.schema.Name, "--connect-timeout", "10s")
		if tc.param == "statement_timeout" {
			// The command reads it and sets it once connected, on a
			// direct connection only: no refusal.
			requireCode(t, 0, r)
			continue
		}
		requireCode(t, 1, r)
		requireErrorLine(t, r, "unsupported startup parameter: "+tc.param, "remove "+tc.param+" from the connection string", tc.want)
	}
}

// Behind PgBouncer the server's statement_timeout is not set (a session
// setting would stay on a server connection other clients get next): a
// statement that waits (here on a row another session holds) meets the
// command's own bound, the statement timeout plus 2 s, fails with a
// timeout, and is cancelled on the server then: nothing is left waiting,
// and the write never happens once the row is free.
func TestPgBouncerSlowStatementCancelled(t *testing.T) {
	t.Parallel()
	b, _ := setupBouncer(t)
	b.ok(t, "migrate", "up")
	b.ok(t, "set", "k", "v")
	tx, holder := holdLock(t, b, `SELECT 1 FROM dbcache_entries WHERE key = ':1:k' FOR UPDATE`)
	r := b.run(t, opts{}, "set", "k", "w", "--statement-timeout", "1s", "--json")
	requireCode(t, 1, r)
	e := lastJSONError(t, r)
	require.Equal(t, "timeout", e["error"], "stderr: %s", r.stderr)
	require.Contains(t, e["message"], "behind a connection pooler the server's statement_timeout is not set")
	require.Eventually(t, func() bool {
		return scalar[int](t, b.pool, `SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))`, holder) == 0
	}, 30*time.Second, 5*time.Millisecond, "the statement still waits on the server")
	require.NoError(t, tx.Rollback(context.Background()))
	require.Equal(t, "v", b.ok(t, "get", "k"), "the cancelled write never ran")
}
