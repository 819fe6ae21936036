package main

import (
	"bytes"
	"context"
	"encoding/json"
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

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/migrations"
)

// These tests build the dbcache binary once and run it as a user would:
// arguments, stdin, environment, exit code, stdout and stderr, against a
// real PostgreSQL (internal/dbtest: DBCACHE_TEST_DATABASE_URL, else a
// container), each test in a schema of its own.

func TestMain(m *testing.M) { dbtest.Main(m) }

const binDirPrefix = "dbcache-cli-test-"

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary returns the path of the dbcache binary, building it on first use.
// It is built without -race even when the tests run with it: a race binary
// starts several times slower, and these tests start it a hundred times.
// The command's concurrency (bench, cull) runs under the race detector in
// the cli package's in-process tests instead.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		removeStaleBinDirs()
		dir, err := os.MkdirTemp("", binDirPrefix)
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "dbcache")
		cmd := exec.Command("go", "build", "-o", binPath, ".")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = &buildError{err: err, out: string(out)}
		}
	})
	require.NoError(t, buildErr, "build the dbcache binary")
	return binPath
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + ": " + e.out }

// removeStaleBinDirs removes binaries left by earlier runs: dbtest.Main ends
// the process with os.Exit, so a run cannot remove its own afterwards.
func removeStaleBinDirs() {
	matches, _ := filepath.Glob(filepath.Join(os.TempDir(), binDirPrefix+"*"))
	for _, m := range matches {
		if fi, err := os.Stat(m); err == nil && time.Since(fi.ModTime()) > time.Hour {
			_ = os.RemoveAll(m)
		}
	}
}

// result is one run of the binary.
type result struct {
	code   int
	stdout string
	stderr string
}

// opts are a run's extras.
type opts struct {
	stdin []byte
	// env is added to a minimal environment (PATH, HOME, TMPDIR only), so
	// the caller's DATABASE_URL and PG* variables never leak in.
	env []string
}

// run runs the binary with args and returns what it did. It fails the test
// if the binary cannot be started or runs for more than a minute.
func run(t *testing.T, o opts, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), args...)
	cmd.Env = append(baseEnv(), o.env...)
	cmd.Stdin = bytes.NewReader(o.stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		require.NoError(t, err, "run dbcache %v", args)
	}
	res := result{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
	requireNoCrash(t, res)
	return res
}

// baseEnv is the environment every run starts from.
func baseEnv() []string {
	var env []string
	for _, k := range []string{"PATH", "HOME", "TMPDIR"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	// pgx reads the PG* variables; an empty PGPASSFILE and PGSERVICEFILE
	// keep the user's files out of the tests.
	return append(env, "PGPASSFILE=/nonexistent", "PGSERVICEFILE=/nonexistent")
}

// requireNoCrash checks the rules every run keeps: no panic or stack trace,
// and any error is a line starting "dbcache: ".
func requireNoCrash(t *testing.T, r result) {
	t.Helper()
	require.NotContains(t, r.stderr, "goroutine ", "stack trace on stderr")
	require.NotContains(t, r.stderr, "panic:", "panic on stderr")
	require.NotEqual(t, -1, r.code, "killed by a signal")
}

// requireCode checks the exit code, showing the output when it is wrong.
func requireCode(t *testing.T, want int, r result) {
	t.Helper()
	require.Equal(t, want, r.code, "stdout: %q\nstderr: %q", r.stdout, r.stderr)
}

// requireErrorLine checks that stderr's first line is one "dbcache: " error
// line containing each of wants.
func requireErrorLine(t *testing.T, r result, wants ...string) {
	t.Helper()
	first, _, _ := strings.Cut(r.stderr, "\n")
	require.True(t, strings.HasPrefix(first, "dbcache: "), "stderr: %q", r.stderr)
	for _, w := range wants {
		require.Contains(t, first, w)
	}
}

// testBundle is one test's migrated schema and how to reach it.
type testBundle struct {
	schema *dbtest.Schema
	pool   *pgxpool.Pool
	// conn are the connection flags for the schema.
	conn []string
}

// setup gives the test a fresh schema, migrated unless migrate is false.
func setup(t *testing.T, migrate bool) *testBundle {
	t.Helper()
	s := dbtest.NewSchema(t)
	if migrate {
		s.Migrate(t)
	}
	return &testBundle{schema: s, pool: s.Pool(t), conn: []string{"--database-url", s.URL, "--schema", s.Name}}
}

// run runs the binary on the bundle's schema.
func (b *testBundle) run(t *testing.T, o opts, args ...string) result {
	t.Helper()
	return run(t, o, append(args, b.conn...)...)
}

// ok runs args on the schema, requires exit 0 and returns stdout.
func (b *testBundle) ok(t *testing.T, args ...string) string {
	t.Helper()
	r := b.run(t, opts{}, args...)
	requireCode(t, 0, r)
	return r.stdout
}

// json runs args with --json, requires the exit code and decodes stdout.
func (b *testBundle) json(t *testing.T, code int, args ...string) map[string]any {
	t.Helper()
	r := b.run(t, opts{}, append(args, "--json")...)
	requireCode(t, code, r)
	var v map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &v), "stdout: %q", r.stdout)
	require.True(t, strings.HasSuffix(r.stdout, "}\n"), "one JSON line: %q", r.stdout)
	return v
}

// scalar runs a one-value query on the schema.
func scalar[T any](t *testing.T, pool *pgxpool.Pool, sql string, args ...any) T {
	t.Helper()
	var v T
	require.NoError(t, pool.QueryRow(context.Background(), sql, args...).Scan(&v), sql)
	return v
}

// The embedded migrations' versions, for expected outputs that name them,
// so a new migration changes no test that is not about it.

// versionBefore returns the version below v (0 below the first).
func versionBefore(v uint) uint {
	prev := uint(0)
	for _, x := range migrations.Versions() {
		if x >= v {
			break
		}
		prev = x
	}
	return prev
}

// stepsAbove returns how many migrations a down must revert, from the
// latest, to reach version v.
func stepsAbove(v uint) int {
	n := 0
	for _, x := range migrations.Versions() {
		if x > v {
			n++
		}
	}
	return n
}
