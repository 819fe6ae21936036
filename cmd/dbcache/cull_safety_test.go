package main

import (
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
)

// `dbcache cull` with no limit given removes expired entries and nothing
// else, whatever the table's size: the library's default MaxEntries
// (100,000) must not apply silently to an admin's command.
func TestCullWithoutLimitKeepsLiveEntries(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	const live = 150_000
	fill(t, b, "live", live, "now() + interval '1 hour' + i * interval '1 ms'")
	fill(t, b, "forever", 10, "NULL")
	fill(t, b, "old", 7, "now() - interval '1 second'")
	count := func() int { return scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries`) }

	require.Equal(t, "removed 7 expired, culled 0; 150,010 entries left (exact count); took ",
		regexp.MustCompile(`took .*\n`).ReplaceAllString(b.ok(t, "cull"), "took "))
	require.Equal(t, live+10, count())

	// --every without a limit: the same, pass after pass (one here).
	got := b.json(t, 0, "cull", "--batch-size", "50000")
	require.Equal(t, 0.0, got["culled"])
	require.Equal(t, float64(live+10), got["remaining"])
	require.Equal(t, live+10, count())
}

// --dry-run reports what a pass would remove, expired and culled, and
// removes nothing.
func TestCullDryRun(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	fill(t, b, "old", 10, "now() - interval '1 second'")
	fill(t, b, "soon", 40, "now() + interval '1 minute' + i * interval '1 ms'")
	fill(t, b, "late", 60, "now() + interval '1 hour'")
	count := func() int { return scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries`) }

	require.Equal(t, "dry run: would remove 10 expired and cull 40; 60 entries would be left (exact count); nothing was removed\n",
		b.ok(t, "cull", "--max-entries", "60", "--dry-run"))
	require.Equal(t, 110, count())

	got := b.json(t, 0, "cull", "--max-entries", "60", "--cull-frequency", "0", "--dry-run")
	require.Equal(t, true, got["dry_run"])
	require.Equal(t, 10.0, got["expired_removed"])
	require.Equal(t, 100.0, got["culled"])
	require.Equal(t, 0.0, got["remaining"])
	require.Equal(t, 110, count())

	// Without a limit a dry run reports only the expired entries.
	require.Equal(t, "dry run: would remove 10 expired and cull 0; 100 entries would be left (exact count); nothing was removed\n",
		b.ok(t, "cull", "--dry-run"))

	// What the dry run said is what a pass then does.
	require.Equal(t, "removed 10 expired, culled 40; 60 entries left (exact count); took ",
		regexp.MustCompile(`took .*\n`).ReplaceAllString(b.ok(t, "cull", "--max-entries", "60"), "took "))
	require.Zero(t, scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries WHERE key LIKE 'soon%'`))
}

// Flags that make no sense together, or a limit of zero, are usage errors
// that change nothing.
func TestCullFlagErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	fill(t, b, "old", 5, "now() - interval '1 second'")
	fill(t, b, "live", 5, "now() + interval '1 hour'")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"cull", "--cull-frequency", "2"}, "--cull-frequency needs --max-entries"},
		{[]string{"cull", "--max-entries", "0"}, "--max-entries must be at least 1"},
		{[]string{"cull", "--max-entries", "-3"}, "--max-entries must be at least 1"},
		{[]string{"cull", "--dry-run", "--every", "1s"}, "--dry-run runs one pass"},
	} {
		r := b.run(t, opts{}, tc.args...)
		requireCode(t, 2, r)
		requireErrorLine(t, r, tc.want)
		require.Empty(t, r.stdout)
	}
	require.Equal(t, 10, scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries`), "nothing was removed")
}
