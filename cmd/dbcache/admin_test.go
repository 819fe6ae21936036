package main

import (
	"bufio"
	"encoding/json"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
)

// fill inserts n rows keyed prefix0.., expiring at expires (an SQL
// expression; NULL for never).
func fill(t *testing.T, b *testBundle, prefix string, n int, expires string) {
	t.Helper()
	dbtest.Exec(t, b.pool, `INSERT INTO dbcache_entries (key, value, expires)
SELECT $1 || i, 'v'::bytea, `+expires+` FROM generate_series(0, $2 - 1) AS i`, prefix, n)
}

func TestStats(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	fill(t, b, "live", 3, "now() + interval '1 hour'")
	fill(t, b, "old", 2, "now() - interval '1 minute'")
	fill(t, b, "forever", 1, "NULL")

	st := b.json(t, 0, "stats")
	require.Equal(t, b.schema.Name, st["schema"])
	require.Equal(t, "dbcache_entries", st["table"])
	require.Equal(t, 6.0, st["entries"])
	require.Equal(t, 4.0, st["live"])
	require.Equal(t, 2.0, st["expired"])
	require.Equal(t, 1.0, st["never_expire"])
	now := parseTime(t, st["now"])
	// The rows were written a moment before now: generous margins for a
	// loaded machine.
	require.InDelta(t, -60, parseTime(t, st["earliest_expiry"]).Sub(now).Seconds(), 50)
	require.InDelta(t, 3600, parseTime(t, st["latest_expiry"]).Sub(now).Seconds(), 50)
	require.Positive(t, st["table_bytes"])
	require.Positive(t, st["index_bytes"])
	require.Contains(t, st, "dead_tuples")
	require.Equal(t, "never", st["culler_state"])
	require.Nil(t, st["last_pass"])

	out := b.ok(t, "stats")
	for _, want := range []string{
		"table            " + b.schema.Name + ".dbcache_entries",
		"entries          6 (exact count)",
		"  expired        2 (not yet removed)",
		"  never expire   1",
		"earliest expiry", "ago)", "latest expiry", "(in ", // 59m59s or 1h0m0s, by rounding
		"table size", "index size", "dead tuples",
		"last cull pass   never",
	} {
		require.Contains(t, out, want)
	}

	b.ok(t, "cull")
	st = b.json(t, 0, "stats")
	require.Equal(t, 0.0, st["expired"])
	require.Equal(t, "ok", st["culler_state"])
	pass := st["last_pass"].(map[string]any)
	require.Equal(t, 2.0, pass["expired_removed"])
	require.Equal(t, 0.0, pass["culled"])
	require.Equal(t, 1.0, pass["passes"])
	require.Nil(t, pass["last_cull_at"], "removing expired entries is not culling")
	require.Less(t, pass["seconds_since"], 60.0)
	out = b.ok(t, "stats")
	require.Regexp(t, `last cull pass   \S+ ago, by \S+: removed 2 expired, culled 0, 4 left`, out)
	require.Contains(t, out, "last cull        never")

	// Without migration 002 the culler's state is unknown, not an error.
	b.ok(t, "migrate", "down", "--steps", "9", "--yes") // 10, 9, 8, 7, 6, 5, 4, 3, 2: back to version 1
	require.Equal(t, "not migrated", b.json(t, 0, "stats")["culler_state"])
	require.Contains(t, b.ok(t, "stats"), "unknown (the culler's state table is missing")

	b.ok(t, "migrate", "down", "--yes")
	r := b.run(t, opts{}, "stats")
	requireCode(t, 1, r)
	requireErrorLine(t, r, "no cache table", "dbcache migrate up")
}

func parseTime(t *testing.T, v any) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, v.(string))
	require.NoError(t, err)
	return ts
}

func TestCull(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	count := func() int { return scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries`) }
	fill(t, b, "old", 10, "now() - interval '1 second'")
	fill(t, b, "soon", 40, "now() + interval '1 minute'")
	fill(t, b, "late", 60, "now() + interval '1 hour'")

	// 100 live rows over a limit of 60: a third is 33, but getting back to
	// the limit takes 40, soonest expiry first.
	require.Equal(t, "removed 10 expired, culled 40; 60 entries left (exact count); took ",
		regexp.MustCompile(`took .*\n`).ReplaceAllString(b.ok(t, "cull", "--max-entries", "60"), "took "))
	require.Equal(t, 60, count())
	require.Zero(t, scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries WHERE key LIKE 'soon%'`))

	// Under the limit: nothing to do.
	got := b.json(t, 0, "cull", "--max-entries", "60")
	require.Equal(t, 1.0, got["pass"])
	require.Equal(t, 0.0, got["expired_removed"])
	require.Equal(t, 0.0, got["culled"])
	require.Equal(t, 60.0, got["remaining"])
	require.Equal(t, true, got["count_exact"])
	require.Equal(t, false, got["skipped"])
	require.Equal(t, false, got["interrupted"])

	// --cull-frequency 0 is Django's "clear everything when over".
	got = b.json(t, 0, "cull", "--max-entries", "59", "--cull-frequency", "0")
	require.Equal(t, 60.0, got["culled"])
	require.Zero(t, count())

	// --cull-frequency 2 removes half.
	fill(t, b, "x", 10, "NULL")
	got = b.json(t, 0, "cull", "--max-entries", "8", "--cull-frequency", "2", "--batch-size", "1")
	require.Equal(t, 5.0, got["culled"])
	require.Equal(t, 5, count())
}

// lines starts the binary and returns it with a channel of its stdout lines.
func startLines(t *testing.T, env []string, args ...string) (*exec.Cmd, <-chan string, *strings.Builder) {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	cmd.Env = append(baseEnv(), env...)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return cmd, lines, &stderr
}

func nextLine(t *testing.T, lines <-chan string) string {
	t.Helper()
	select {
	case l, ok := <-lines:
		require.True(t, ok, "stdout closed")
		return l
	case <-time.After(30 * time.Second):
		require.FailNow(t, "no output line within 30s")
		return ""
	}
}

// waitExit waits for cmd and returns its exit code.
func waitExit(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
		return cmd.ProcessState.ExitCode()
	case <-time.After(30 * time.Second):
		require.FailNow(t, "did not exit within 30s of the signal")
		return -1
	}
}

func TestCullEvery(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			b := setup(t, true)
			fill(t, b, "old", 5, "now() - interval '1 second'")
			cmd, lines, stderr := startLines(t, nil, append([]string{"cull", "--every", "50ms", "--json"}, b.conn...)...)

			var first map[string]any
			require.NoError(t, json.Unmarshal([]byte(nextLine(t, lines)), &first))
			require.Equal(t, 1.0, first["pass"])
			require.Equal(t, 5.0, first["expired_removed"])
			var second map[string]any
			require.NoError(t, json.Unmarshal([]byte(nextLine(t, lines)), &second))
			require.Equal(t, 2.0, second["pass"])

			// Its sessions are labelled.
			require.Positive(t, scalar[int](t, b.pool,
				`SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbcache-cli' AND pid <> pg_backend_pid()`))

			require.NoError(t, cmd.Process.Signal(sig))
			require.Equal(t, 0, waitExit(t, cmd), "stderr: %s", stderr.String())
			require.Empty(t, stderr.String())
		})
	}
}

func TestCullInterrupted(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	const n = 20_000
	fill(t, b, "old", n, "now() - interval '1 second'")
	count := func() int { return scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries`) }

	// Batches of 10 make the pass long enough to interrupt in the middle.
	cmd, lines, stderr := startLines(t, nil, append([]string{"cull", "--batch-size", "10"}, b.conn...)...)
	require.Eventually(t, func() bool { return count() < n }, 30*time.Second, 5*time.Millisecond, "the pass never started")
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	require.Equal(t, 1, waitExit(t, cmd), "a one-shot cull that was interrupted did not finish: exit 1")
	out := nextLine(t, lines)
	m := regexp.MustCompile(`^interrupted after removing ([\d,]+) expired and culling 0$`).FindStringSubmatch(out)
	require.NotNil(t, m, "stdout: %q", out)
	left := count()
	require.Positive(t, left, "interrupted before the end")
	// What the command reports is exactly what was removed: it stopped
	// between batches, not in the middle of one.
	require.Equal(t, strings.ReplaceAll(m[1], ",", ""), strconv.Itoa(n-left))
	require.Equal(t, "dbcache: cull interrupted; what was removed stays removed\n", stderr.String())
}

func TestBench(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ops := []string{"get", "set", "add", "delete", "touch", "has", "incr", "decr", "get_or_set", "get_many", "set_many"}
	got := b.json(t, 0, "bench", "-n", "330", "-c", "3", "--keyspace", "50", "--batch-size", "5", "-d", "16",
		"--ops", strings.Join(ops, ","), "--key-prefix", "bp", "--keep")
	require.Equal(t, true, got["prefilled"])
	require.Equal(t, 330.0, got["requests_limit"])
	require.Equal(t, 0.0, got["duration_limit_seconds"], "-n alone has no time limit")
	total := got["total"].(map[string]any)
	require.Equal(t, 330.0, total["requests"])
	require.Equal(t, 0.0, total["errors"])
	require.Positive(t, total["ops_per_sec"])
	results := got["results"].([]any)
	require.Len(t, results, len(ops))
	for i, r := range results {
		op := r.(map[string]any)
		require.Equal(t, ops[i], op["op"])
		lat := op["latency_ms"].(map[string]any)
		for _, k := range []string{"min", "mean", "p50", "p99", "p999", "max"} {
			require.Contains(t, lat, k)
		}
		require.LessOrEqual(t, lat["p50"], lat["p99"])
		require.LessOrEqual(t, lat["p99"], lat["max"])
	}
	// The keys are bench's, under the cache's prefix.
	require.Zero(t, scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries WHERE key NOT LIKE 'bp:1:bench:%'`))
	require.Equal(t, 16, scalar[int](t, b.pool, `SELECT length(value) FROM dbcache_entries WHERE key = 'bp:1:bench:0'`))

	out := b.ok(t, "bench", "--duration", "300ms", "-c", "2", "--keyspace", "20", "--prefill=false")
	require.Regexp(t, `^bench: get,set; 2 workers; 20 keys; 100-byte values; 300ms\n`, out)
	require.Regexp(t, `\n\s*op\s+requests\s+ops/s\s+mean\s+p50\s+p99\s+p99\.9\s+max\s+misses\s+errors\s*\n`, out)
	require.Regexp(t, `\n\s*get\s+[\d,]+\s+[\d,]+\s+[\d.]+ms`, out)
	require.Regexp(t, `\n\s*total\s+[\d,]+`, out)
	require.Regexp(t, `\n[\d,]+ requests in \d`, out)

	// Not migrated: a failure, before any load.
	c := setup(t, false)
	r := c.run(t, opts{}, "bench", "-n", "10")
	requireCode(t, 1, r)
	requireErrorLine(t, r, "no cache table", "dbcache migrate up")
}
