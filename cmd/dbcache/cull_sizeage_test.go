package main

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
)

// --max-age removes every entry written longer ago, Forever included;
// --max-bytes culls in eviction order down to the size; both show in the
// pass's line and in stats.
func TestCullSizeAndAge(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	size := func() int {
		return scalar[int](t, b.pool, `SELECT sum(pg_column_size(key) + pg_column_size(value) + 44)::int FROM dbcache_entries`)
	}
	count := func() int { return scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries`) }
	fill(t, b, "old", 5, "NULL")
	fill(t, b, "oldtimed", 5, "now() + interval '30 days'")
	dbtest.Exec(t, b.pool, `UPDATE dbcache_entries SET written_at = now() - interval '3 hours'`)
	// 100 entries of 10 kB, soonest to expire first by name.
	dbtest.Exec(t, b.pool, `INSERT INTO dbcache_entries (key, value, expires)
		SELECT 'big' || lpad(i::text, 3, '0'), decode(repeat(md5(i::text), 320), 'hex'), now() + i * interval '1 minute'
		  FROM generate_series(1, 100) i`)

	got := b.json(t, 0, "cull", "--max-age", "2h")
	require.Equal(t, 10.0, got["aged_out"])
	require.Nil(t, got["size"])
	require.Equal(t, 100, count())

	total := size()
	limit := total / 2
	out := b.ok(t, "cull", "--max-bytes", strconv.Itoa(limit), "--max-age", "1d")
	require.Regexp(t, `^removed 0 expired and 0 past --max-age, culled \d+ \([\d.]+ KiB\); \d+ entries left \(exact count\), [\d.]+ KiB of entries \(measured\); took `, out)
	left := size()
	require.LessOrEqual(t, left, limit)
	require.Greater(t, left, limit-10_500, "within one entry of the limit")
	n := count()
	require.Equal(t, fmt.Sprintf("big%03d", 100-n+1), scalar[string](t, b.pool, `SELECT min(key) FROM dbcache_entries`), "the latest to expire stay")

	st := b.json(t, 0, "stats")
	require.Equal(t, float64(left), st["size"])
	require.Equal(t, float64(left), st["size_estimate"], "a table this small is measured whole")
	require.NotNil(t, st["oldest_write"])
	pass := st["last_pass"].(map[string]any)
	require.Equal(t, float64(limit), pass["max_bytes"])
	require.Equal(t, 86400.0, pass["max_age_seconds"])
	require.Nil(t, pass["max_entries"])
	require.Equal(t, 10.0, pass["total_aged_out"])
	require.Contains(t, b.ok(t, "stats"), "max bytes")

	// A dry run says what would go and removes nothing.
	dry := b.json(t, 0, "cull", "--max-bytes", strconv.Itoa(limit/2), "--dry-run")
	require.Equal(t, true, dry["dry_run"])
	require.Positive(t, dry["culled"])
	require.Equal(t, left, size())
}

func TestCullSizeAndAgeFlagErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	fill(t, b, "k", 5, "NULL")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"cull", "--max-bytes", "lots"}, "--max-bytes wants a size"},
		{[]string{"cull", "--max-bytes", "0"}, "--max-bytes wants a size"},
		{[]string{"cull", "--max-bytes", "2XB"}, "--max-bytes wants a size"},
		{[]string{"cull", "--max-age", "30m"}, "--max-age wants a duration of at least 1h0m0s"},
		{[]string{"cull", "--max-age", "soon"}, "--max-age wants a duration"},
	} {
		r := b.run(t, opts{}, tc.args...)
		requireCode(t, 2, r)
		requireErrorLine(t, r, tc.want)
	}
	require.Equal(t, 5, scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries`))
}
