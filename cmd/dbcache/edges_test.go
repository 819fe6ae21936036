package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/golang-migrate/migrate/v4/database"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/migrations"
)

// The rough edges of issue 23 and a schema behind the binary, each as a
// user meets it.

// A schema migrated down below what this binary needs is said as it is:
// the version it is at, the version needed, and the command that fixes
// it, for every command that needs the newer schema; stats, which reads
// any version, still works.
func TestSchemaBehindSaysVersions(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	b.ok(t, "set", "k", "v")
	b.ok(t, "migrate", "down", "--steps", strconv.Itoa(stepsAbove(3)), "--yes")
	want := "schema " + b.schema.Name + fmt.Sprintf(" is at migration version 3, older than this dbcache needs (version %d; it carries migrations up to %d): ", dbcache.SchemaVersion, migrations.Latest()) +
		"run `dbcache migrate up --schema " + b.schema.Name + "`"
	for _, args := range [][]string{
		{"get", "k"}, {"set", "k", "w"}, {"incr", "n"}, {"add", "a", "v"},
		{"bench", "-n", "10", "--keyspace", "10"},
	} {
		r := b.run(t, opts{}, args...)
		requireCode(t, 1, r)
		require.Equal(t, "dbcache: "+want+"\n", lastLine(r.stderr)+"\n", "%v", args)
		require.NotContains(t, r.stderr, "no cache table")
		e := jsonError(t, b.run(t, opts{}, append(args, "--json")...))
		require.Equal(t, "not_migrated", e["error"], "%v", args)
		require.Equal(t, want, e["message"])
	}
	r := b.run(t, opts{}, "cull", "--max-age", "720h")
	requireCode(t, 1, r)
	require.Contains(t, lastLine(r.stderr), "is at migration version 3, older than this dbcache needs (version 5;")
	require.Contains(t, b.ok(t, "stats"), "entries          1 (exact count)")
	b.ok(t, "migrate", "up")
	require.Equal(t, "v", b.ok(t, "get", "k"))
}

// A pass that runs past --pass-timeout says so, in those terms (not the
// statement timeout's), and says what it removed; under --json its count
// is null, as it never counted the table.
func TestCullPassTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	fill(t, b, "old", 5, "now() - interval '1 second'")
	holdLock(t, b, `LOCK TABLE dbcache_entries IN ACCESS EXCLUSIVE MODE`)
	r := b.run(t, opts{}, "cull", "--pass-timeout", "1s")
	requireCode(t, 1, r)
	require.Equal(t, "failed after removing 0 expired and culling 0; what was removed stays removed\n", r.stdout)
	line := lastLine(r.stderr)
	require.Contains(t, line, "dbcache: the pass ran past --pass-timeout (1s) and stopped; what it removed stays removed")
	require.NotContains(t, line, "--statement-timeout")

	r = b.run(t, opts{}, "cull", "--pass-timeout", "1s", "--json")
	requireCode(t, 1, r)
	var pass map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &pass), r.stdout)
	require.Nil(t, pass["count"], "not counted")
	require.Nil(t, pass["remaining"])
	require.Equal(t, "pass_timeout", lastJSONError(t, r)["error"])
}

// An interrupted cull --json does not claim the table is empty: a pass
// stopped before it counted reports its count as unknown (null).
func TestCullInterruptedJSONCountUnknown(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	fill(t, b, "old", 5, "now() - interval '1 second'")
	_, holder := holdLock(t, b, `LOCK TABLE dbcache_entries IN ACCESS EXCLUSIVE MODE`)
	p := start(t, b, "cull", "--json")
	waitBlockedBy(t, b, holder)
	require.NoError(t, p.cmd.Process.Signal(os.Interrupt))
	r := p.wait(t, 60*time.Second)
	requireCode(t, 1, r)
	var pass map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &pass), r.stdout)
	require.Equal(t, true, pass["interrupted"])
	require.Nil(t, pass["count"], "the pass never counted: its count is unknown, not 0")
	require.Nil(t, pass["remaining"])
}

// cull's flag errors name the flag, and a batch size of 0 is refused (it
// was taken as the library's default).
func TestCullBatchSizeFlag(t *testing.T) {
	t.Parallel()
	dead := []string{"--database-url", "postgres://127.0.0.1:1/none?sslmode=disable"}
	for _, v := range []string{"0", "-1"} {
		r := run(t, opts{}, append([]string{"cull", "--batch-size", v}, dead...)...)
		requireCode(t, 2, r)
		requireErrorLine(t, r, "--batch-size must be at least 1, got "+v)
		require.NotContains(t, r.stderr, "Config.")
	}
	r := run(t, opts{}, append([]string{"cull", "--pass-timeout", "-1s"}, dead...)...)
	requireCode(t, 2, r)
	requireErrorLine(t, r, "--pass-timeout must not be negative")
}

// Three migrators started at once: the one that applies the migrations
// says so, the others that they found the work done; none claims to have
// migrated from 0 (each read version 0 before waiting for the lock).
func TestConcurrentMigrateUpSayWhatEachDid(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	ctx := context.Background()
	conn, err := b.pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	var db string
	var holder int
	require.NoError(t, conn.QueryRow(ctx, `SELECT current_database(), pg_backend_pid()`).Scan(&db, &holder))
	id, err := database.GenerateAdvisoryLockId(db, b.schema.Name, migrations.MigrationsTable)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, id)
	require.NoError(t, err)
	unlocked := false
	defer func() {
		if !unlocked {
			_, _ = conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, id)
		}
	}()

	procs := make([]*proc, 3)
	for i := range procs {
		procs[i] = start(t, b, "migrate", "up")
	}
	require.Eventually(t, func() bool {
		return scalar[int](t, b.pool, `SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))`, holder) == 3
	}, 60*time.Second, 5*time.Millisecond, "the three migrators never all waited on the lock")
	_, err = conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, id)
	require.NoError(t, err)
	unlocked = true

	var mu sync.Mutex
	var outs []string
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(func() {
			r := p.wait(t, 60*time.Second)
			requireCode(t, 0, r)
			mu.Lock()
			outs = append(outs, r.stdout)
			mu.Unlock()
		})
	}
	wg.Wait()
	applied, found := 0, 0
	for _, out := range outs {
		switch out {
		case fmt.Sprintf("migrated up from version 0 to %d\n", migrations.Latest()):
			applied++
		case fmt.Sprintf("already at version %d (up to date: another migrator applied them while this one waited for its lock)\n", migrations.Latest()):
			found++
		default:
			t.Fatalf("unexpected output %q", out)
		}
	}
	require.Equal(t, 1, applied, "%q", outs)
	require.Equal(t, 2, found)
}

// migrate down --all says how many entries the table it dropped held.
func TestMigrateDownAllSaysEntriesDropped(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	for _, k := range []string{"a", "b", "c"} {
		b.ok(t, "set", k, "v")
	}
	require.Equal(t, fmt.Sprintf("migrated down from version %d to 0; dropped the cache table, which held 3 entries\n", migrations.Latest()),
		b.ok(t, "migrate", "down", "--all", "--yes"))
	b.ok(t, "migrate", "up")
	b.ok(t, "set", "a", "v")
	out := b.json(t, 0, "migrate", "down", "--all", "--yes")
	require.EqualValues(t, 1, out["dropped_entries"])
	b.ok(t, "migrate", "up")
	out = b.json(t, 0, "migrate", "down", "--yes")
	require.NotContains(t, out, "dropped_entries", "a step that drops no table")
}

// migrate persistence on a schema without the cache table is not_migrated,
// as every other command says it.
func TestMigratePersistenceNotMigrated(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	for _, args := range [][]string{{"migrate", "persistence"}, {"migrate", "persistence", "unlogged", "--yes"}} {
		r := b.run(t, opts{}, append(args, "--json")...)
		requireCode(t, 1, r)
		e := lastJSONError(t, r)
		require.Equal(t, "not_migrated", e["error"], "%v: %s", args, r.stderr)
		require.Contains(t, e["message"], "dbcache migrate up")
	}
}

// bench --duration 0 does not run for the default 10 s: without -n it is
// a usage error (no limit at all), with -n it means no time limit.
func TestBenchDurationZero(t *testing.T) {
	t.Parallel()
	dead := []string{"--database-url", "postgres://127.0.0.1:1/none?sslmode=disable"}
	r := run(t, opts{}, append([]string{"bench", "--duration", "0"}, dead...)...)
	requireCode(t, 2, r)
	requireErrorLine(t, r, "--duration 0 means no time limit: give -n/--requests too")
	b := setup(t, true)
	out := b.json(t, 0, "bench", "--duration", "0", "-n", "20", "--keyspace", "10", "-c", "1")
	require.EqualValues(t, 20, out["total"].(map[string]any)["requests"])
	require.EqualValues(t, 0, out["duration_limit_seconds"])
}

// A key prefix PostgreSQL cannot store is said to be the prefix's fault,
// not the key's.
func TestInvalidKeyPrefixNamed(t *testing.T) {
	t.Parallel()
	dead := []string{"--database-url", "postgres://127.0.0.1:1/none?sslmode=disable"}
	for _, args := range [][]string{{"get", "k"}, {"set", "k", "v"}, {"keys"}, {"delete-prefix", "p", "--yes"}, {"bench", "-n", "1"}} {
		r := run(t, opts{}, append(append(args, "--key-prefix", "bad\xffprefix"), dead...)...)
		requireCode(t, 2, r)
		requireErrorLine(t, r, `invalid --key-prefix "bad\xffprefix": not valid UTF-8`)
		require.NotContains(t, r.stderr, "invalid key \"k\"")
		require.NotContains(t, r.stderr, "connect", "refused before connecting")
	}
}

// --key-file passes a key a shell argument cannot carry: here one that ends
// in a newline, which command substitution would strip. "-" reads it from
// stdin; it cannot share stdin with set's value.
func TestKeyFile(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	require.NoError(t, os.WriteFile(keyFile, []byte("line\n"), 0o600))
	b.ok(t, "set", "--key-file", keyFile, "with newline")
	require.Equal(t, "with newline", b.ok(t, "get", "--key-file", keyFile))
	requireCode(t, 3, b.run(t, opts{}, "get", "line"))
	require.Equal(t, 1, scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries WHERE key = $1`, ":1:line\n"))

	r := b.run(t, opts{stdin: []byte("line\n")}, "get", "--key-file", "-")
	requireCode(t, 0, r)
	require.Equal(t, "with newline", r.stdout)
	b.ok(t, "set", "--key-file", keyFile, "41")
	require.Equal(t, "51\n", b.ok(t, "incr", "--key-file", keyFile, "10"))
	require.Equal(t, "56\n", b.ok(t, "decr", "--key-file", keyFile, "-5"), "decr by -5 adds 5")
	require.Equal(t, "true\n", b.ok(t, "has", "--key-file", keyFile))
	require.Regexp(t, `^4m5\d\.\ds\n$`, b.ok(t, "ttl", "--key-file", keyFile))
	require.Equal(t, "touched\n", b.ok(t, "touch", "--key-file", keyFile, "--ttl", "1h"))
	require.Equal(t, "deleted\n", b.ok(t, "delete", "--key-file", keyFile))

	for _, tc := range []struct {
		args  []string
		stdin string
		want  string
	}{
		{[]string{"set", "--key-file", "-"}, "k", "--key-file - and the value would both be read from stdin"},
		{[]string{"get", "--key-file", keyFile, "extra"}, "", "with --key-file, KEY is read from the file"},
		{[]string{"get", "--key-file", filepath.Join(dir, "missing")}, "", "--key-file: no such file or directory"},
		{[]string{"get", "--key-file", ""}, "", "--key-file needs a file name"},
	} {
		r := b.run(t, opts{stdin: []byte(tc.stdin)}, tc.args...)
		requireCode(t, 2, r)
		requireErrorLine(t, r, tc.want)
	}
	big := filepath.Join(dir, "big")
	require.NoError(t, os.WriteFile(big, []byte(strings.Repeat("k", 3000)), 0o600))
	r = b.run(t, opts{}, "get", "--key-file", big)
	requireCode(t, 2, r)
	requireErrorLine(t, r, "invalid key", "over the 2048-byte limit")
}

// docs/cli.md's version example shows the schema version this binary
// migrates to.
func TestDocsVersionExample(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../docs/cli.md")
	require.NoError(t, err)
	m := regexp.MustCompile("\\$ dbcache version\ndbcache .*schema version (\\d+)\n").FindSubmatch(doc)
	require.NotNil(t, m, "docs/cli.md has a `dbcache version` example")
	require.Equal(t, strconv.Itoa(int(migrations.Latest())), string(m[1]))
	require.True(t, strings.HasSuffix(run(t, opts{}, "version").stdout, "schema version "+string(m[1])+"\n"))
}

// touch never brings an expired entry back: the entry is there, expired by
// the database's clock, and touch finds no live entry, changes nothing and
// exits 3.
func TestTouchNeverRevives(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	dbtest.Exec(t, b.pool, `INSERT INTO dbcache_entries (key, value, expires) VALUES (':1:old', 'v', now() - interval '1 second')`)
	before := scalar[time.Time](t, b.pool, `SELECT expires FROM dbcache_entries WHERE key = ':1:old'`)
	r := b.run(t, opts{}, "touch", "old", "--ttl", "1h")
	requireCode(t, 3, r)
	require.Equal(t, "not found\n", r.stdout)
	require.True(t, before.Equal(scalar[time.Time](t, b.pool, `SELECT expires FROM dbcache_entries WHERE key = ':1:old'`)), "the expiry is unchanged")
	requireCode(t, 3, b.run(t, opts{}, "get", "old"))
}

// --ttl 65m stores exactly what the library's GetOrRevalidate with 5m
// fresh and 1h stale stores on a miss: both entries expire 65 minutes
// after the statement that wrote them (written_at is that statement's
// time).
func TestTTLSeedsRevalidate(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	c, err := dbcache.New(t.Context(), b.pool, nil)
	require.NoError(t, err)
	v, err := c.GetOrRevalidate(t.Context(), "lib", func(context.Context) ([]byte, error) { return []byte("v"), nil }, 5*time.Minute, time.Hour)
	require.NoError(t, err)
	require.Equal(t, "v", string(v))
	b.ok(t, "set", "cli", "v", "--ttl", "65m")
	for _, k := range []string{":1:lib", ":1:cli"} {
		require.Equal(t, "01:05:00", scalar[string](t, b.pool, `SELECT (expires - written_at)::text FROM dbcache_entries WHERE key = $1`, k), k)
	}
}

// The answer bound cuts no connection at rest: a cull --every whose passes
// are further apart (4 s) than the bound (the statement timeout, 1s, plus
// 2 s) reuses its idle connections, the lock connection among them, and
// its long first pass (6,000 batches, the lock connection idle between its
// heartbeats) keeps its lock: every pass succeeds.
func TestAnswerBoundCutsNoIdleConnection(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	dbtest.Exec(t, b.pool, `INSERT INTO dbcache_entries (key, value, expires)
SELECT 'k' || i, 'v', now() - interval '1 hour' FROM generate_series(1, 30000) AS i`)
	p := start(t, b, "cull", "--every", "4s", "--batch-size", "5", "--statement-timeout", "1s", "--json")
	lines := 0
	for lines < 3 {
		select {
		case <-p.done:
			r := p.wait(t, time.Minute)
			require.FailNow(t, "cull --every ended", "stdout %q, stderr %q", r.stdout, r.stderr)
		case <-time.After(100 * time.Millisecond):
		}
		p.mu.Lock()
		lines = strings.Count(p.stdout.String(), "\n")
		p.mu.Unlock()
	}
	require.NoError(t, p.cmd.Process.Signal(os.Interrupt))
	r := p.wait(t, time.Minute)
	requireCode(t, 0, r)
	passes := strings.Split(strings.TrimSpace(r.stdout), "\n")
	for i, line := range passes {
		var pass map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &pass), line)
		if i < 3 {
			require.NotContains(t, pass, "error", "pass %d: %s", i+1, line)
		}
	}
	var first map[string]any
	require.NoError(t, json.Unmarshal([]byte(passes[0]), &first))
	require.EqualValues(t, 30000, first["expired_removed"])
}

// More than 100 failed requests stop a bench with exit 1 and the first
// error: here every incr meets a counter that is not an integer.
func TestBenchStoppedByErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	dbtest.Exec(t, b.pool, `INSERT INTO dbcache_entries (key, value, expires) SELECT ':1:bench:' || i || ':n', 'x', NULL FROM generate_series(0, 9) i`)
	r := b.run(t, opts{}, "bench", "--ops", "incr", "--keyspace", "10", "--prefill=false", "-n", "5000", "-c", "2")
	requireCode(t, 1, r)
	require.Contains(t, r.stdout, "first error: ")
	require.Contains(t, r.stdout, "not an integer")
}

// A second signal kills the command at once: a cull whose batch waits on a
// locked table would stop cleanly after the first, once the batch gives up
// (seconds later); signalled again, it dies of the signal.
func TestSecondSignalKills(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	fill(t, b, "old", 5, "now() - interval '1 second'")
	_, holder := holdLock(t, b, `LOCK TABLE dbcache_entries IN ACCESS EXCLUSIVE MODE`)
	p := start(t, b, "cull")
	waitBlockedBy(t, b, holder)
	exited := make(chan error, 1)
	go func() { <-p.done; exited <- p.cmd.Wait() }()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(time.Minute)
	for {
		require.NoError(t, p.cmd.Process.Signal(os.Interrupt))
		select {
		case <-exited:
			ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
			require.True(t, ok)
			require.True(t, ws.Signaled(), "it exited on its own (code %d) instead of dying of the second signal", p.cmd.ProcessState.ExitCode())
			require.Equal(t, syscall.SIGINT, ws.Signal())
			return
		case <-tick.C:
		case <-deadline:
			require.FailNow(t, "still running a minute after the signals")
		}
	}
}
