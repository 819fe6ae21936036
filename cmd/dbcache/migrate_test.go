package main

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/migrations"
)

func TestMigrate(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	latest := float64(migrations.Latest())
	require.GreaterOrEqual(t, latest, float64(5), "the test walks down from 5")

	// Pending migrations: exit 4, and the hint keeps --schema.
	r := b.run(t, opts{}, "migrate", "version")
	requireCode(t, 4, r)
	require.Equal(t, "version 0 (latest 10: 10 pending; run `dbcache migrate up --schema "+b.schema.Name+"`)\n", r.stdout)
	require.Empty(t, r.stderr)
	pending := float64(len(migrations.Versions())) // versions 1-5, 8, 9: 6 and 7 are reserved
	require.Equal(t, map[string]any{"version": 0.0, "dirty": false, "latest": latest, "pending": pending}, b.json(t, 4, "migrate", "version"))

	// Before migrating, cache commands say what to do.
	r = b.run(t, opts{}, "get", "k")
	requireCode(t, 1, r)
	requireErrorLine(t, r, "no cache table (dbcache_entries) in schema "+b.schema.Name+": run `dbcache migrate up --schema "+b.schema.Name+"` first")

	require.Equal(t, "migrated up from version 0 to 10\n", b.ok(t, "migrate", "up"))
	require.Equal(t, "already at version 10 (up to date)\n", b.ok(t, "migrate", "up"))
	require.Equal(t, "version 10 (up to date)\n", b.ok(t, "migrate", "version"))
	b.ok(t, "set", "k", "v")

	require.Equal(t, "migrated down from version 10 to 9\n", b.ok(t, "migrate", "down", "--yes"))
	require.Equal(t, "version 9 (latest 10: 1 pending; run `dbcache migrate up --schema "+b.schema.Name+"`)\n",
		b.run(t, opts{}, "migrate", "version").stdout)
	require.Equal(t, map[string]any{"from": 9.0, "to": 0.0, "latest": latest, "dropped_entries": 1.0}, b.json(t, 0, "migrate", "down", "--steps", "9", "--yes"))
	require.Equal(t, "already at version 0; nothing to revert\n", b.ok(t, "migrate", "down", "-y"))
	require.False(t, scalar[bool](t, b.pool, `SELECT to_regclass('dbcache_entries') IS NOT NULL`), "the table is gone")

	require.Equal(t, map[string]any{"from": 0.0, "to": latest, "latest": latest}, b.json(t, 0, "migrate", "up"))
	require.Equal(t, "migrated down from version 10 to 0; dropped the cache table, which held 0 entries\n", b.ok(t, "migrate", "down", "--all", "--yes"))
	b.ok(t, "migrate", "up")

	r = b.run(t, opts{}, "migrate", "down", "--all", "--steps", "2")
	requireCode(t, 2, r)
	requireErrorLine(t, r, "mutually exclusive")
	r = b.run(t, opts{}, "migrate", "down", "--steps", "0")
	requireCode(t, 2, r)
	r = b.run(t, opts{}, "migrate")
	requireCode(t, 2, r)
	requireErrorLine(t, r, "subcommand")
	r = b.run(t, opts{}, "migrate", "sideways")
	requireCode(t, 2, r)
}

func TestMigrateDirty(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	latest := float64(migrations.Latest())
	// What a migration that failed part way leaves behind.
	_, err := b.pool.Exec(t.Context(), `UPDATE dbcache_schema_migrations SET dirty = true`)
	require.NoError(t, err)

	// migrate version reports a dirty schema on stdout and fails (exit 1),
	// with the way out on stderr.
	r := b.run(t, opts{}, "migrate", "version")
	requireCode(t, 1, r)
	require.Contains(t, r.stdout, "version 10 (dirty")
	requireErrorLine(t, r, "dirty at version 10", "`dbcache migrate force 10 --schema "+b.schema.Name+"`")
	require.Equal(t, true, b.json(t, 1, "migrate", "version")["dirty"])

	for _, args := range [][]string{{"migrate", "up"}, {"migrate", "down", "--yes"}} {
		r := b.run(t, opts{}, args...)
		requireCode(t, 1, r)
		// One line that says what happened and both ways out.
		require.Equal(t, 1, countLines(r.stderr), "stderr: %q", r.stderr)
		requireErrorLine(t, r, "dirty at version 10", "failed part way",
			"`dbcache migrate force 10 --schema "+b.schema.Name+"`",
			"`dbcache migrate force 9 --schema "+b.schema.Name+"`")
	}

	r = b.run(t, opts{}, "migrate", "force", "99")
	requireCode(t, 2, r)
	requireErrorLine(t, r, "no such migration version")
	r = b.run(t, opts{}, "migrate", "force", "two")
	requireCode(t, 2, r)

	require.Equal(t, "forced version 10 (was 10, dirty); nothing was run\n", b.ok(t, "migrate", "force", "10"))
	require.Equal(t, "version 10 (up to date)\n", b.ok(t, "migrate", "version"))
	require.Equal(t, map[string]any{"from": latest, "to": 4.0, "latest": latest}, b.json(t, 0, "migrate", "force", "4"))
	require.Equal(t, "migrated up from version 4 to 10\n", b.ok(t, "migrate", "up"),
		"after force 4, up re-runs migrations 5, 8 and 9 (their IF [NOT] EXISTS makes that safe)")
}

func countLines(s string) int {
	n := 0
	for _, c := range s {
		if c == '\n' {
			n++
		}
	}
	return n
}

// A migration file that fails part way under `dbcache migrate up` (004's
// third statement, waiting past its lock_timeout for a lock another
// session holds, after its second changed the cache table) is rolled back
// whole: the schema stays at version 3, clean (pending, exit 4, not dirty),
// and the next `migrate up` continues to the latest.
func TestMigrateFailureMidFileContinues(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	b.ok(t, "migrate", "up")
	require.Equal(t, "migrated down from version 10 to 3\n", b.ok(t, "migrate", "down", "--steps", "7", "--yes"))

	blocker, err := b.pool.Begin(t.Context())
	require.NoError(t, err)
	defer func() { _ = blocker.Rollback(context.WithoutCancel(t.Context())) }()
	_, err = blocker.Exec(t.Context(), `SELECT count(*) FROM dbcache_culler_state`)
	require.NoError(t, err)
	r := b.run(t, opts{}, "migrate", "up")
	require.NoError(t, blocker.Rollback(t.Context()))
	requireCode(t, 1, r)

	r = b.run(t, opts{}, "migrate", "version")
	requireCode(t, 4, r)
	require.Equal(t, "version 3 (latest 10: 7 pending; run `dbcache migrate up --schema "+b.schema.Name+"`)\n", r.stdout)
	require.False(t, scalar[bool](t, b.pool, `SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('dbcache_entries') AND attname = 'written_at' AND NOT attisdropped)`),
		"004's second statement rolled back with its file")
	require.Equal(t, "migrated up from version 3 to 10\n", b.ok(t, "migrate", "up"))
}
