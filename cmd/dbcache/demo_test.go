package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/pgserver"
	"github.com/dbcache/dbcache/migrations"
)

// The demo as the README's quick start runs it: on a configured database, and
// with none configured on a throwaway server (a container or the installed
// PostgreSQL, as DBCACHE_TEST_PG_SERVER and the machine allow; CI runs this
// once each way), and with neither to be had.

// demoEnv is what a throwaway server needs from the environment: how to
// start it, and how to reach Docker.
func demoEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "DBCACHE_TEST_PG_") || strings.HasPrefix(k, "TESTCONTAINERS_") ||
			strings.HasPrefix(k, "DOCKER_") {
			env = append(env, kv)
		}
	}
	return env
}

// runDemo runs the demo binary. The guard is generous: a throwaway server
// can take a while to start on a busy machine; only a hang trips it.
func runDemo(t *testing.T, env []string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), "demo", "--bench-duration", "300ms")
	cmd.Env = append(baseEnv(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		require.NoError(t, err, "run dbcache demo")
	}
	r := result{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
	requireNoCrash(t, r)
	return r
}

// requireTour checks the demo's transcript.
func requireTour(t *testing.T, r result) {
	t.Helper()
	requireCode(t, 0, r)
	for _, want := range []string{
		"$ dbcache migrate up\nmigrated up from version 0 to " + strconv.Itoa(int(migrations.Latest())) + "\n",
		"$ dbcache set greeting 'Hello from PostgreSQL!'\nOK\n",
		"$ dbcache get greeting\nHello from PostgreSQL!\n",
		"$ dbcache has session:42\ntrue\n",
		"$ dbcache get session:42\n(exit code 3: a miss)\n",
		"$ dbcache incr visits 10\n52\n",
		"$ dbcache add greeting Hi\nnot stored",
		"requests in",
		"entries          2,003 (exact count)",
		"  expired        1 (not yet removed)",
		"$ dbcache cull --max-entries 500\nremoved 1 expired, culled 1,502; 500 entries left",
		"That's the tour.",
	} {
		require.Contains(t, r.stdout, want)
	}
	require.Contains(t, r.stderr, `dbcache: miss: no live entry for key "session:42"`)
}

func TestDemo(t *testing.T) {
	t.Parallel()

	// A configured server: the demo works in a temporary schema it drops.
	t.Run("ConfiguredDatabase", func(t *testing.T) {
		t.Parallel()
		pool := setup(t, false).pool
		// An existing cache the demo must not touch, named by
		// DBCACHE_SCHEMA, which the demo ignores.
		existing := setup(t, true)
		dbtest.Exec(t, existing.pool, `INSERT INTO dbcache_entries (key, value, expires) SELECT 'keep' || i, 'v', NULL FROM generate_series(1, 5) i`)
		r := runDemo(t, []string{"DATABASE_URL=" + dbtest.URL(t), "DBCACHE_SCHEMA=" + existing.schema.Name})
		requireTour(t, r)
		require.Equal(t, 5, scalar[int](t, existing.pool, `SELECT count(*) FROM dbcache_entries WHERE key LIKE 'keep%' AND expires IS NULL`),
			"the existing cache is untouched")
		require.Equal(t, 5, scalar[int](t, existing.pool, `SELECT count(*) FROM dbcache_entries`))
		require.Contains(t, r.stdout, "Using the configured database")
		m := regexp.MustCompile(`Dropped schema (dbcache_demo_\d+_\d+)\.`).FindStringSubmatch(r.stdout)
		require.NotNil(t, m, r.stdout)
		require.False(t, scalar[bool](t, pool, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, m[1]),
			"the demo schema is dropped")
	})

	// Nothing configured: a throwaway server, started and removed.
	t.Run("Throwaway", func(t *testing.T) {
		t.Parallel()
		r := runDemo(t, demoEnv())
		requireTour(t, r)
		m := regexp.MustCompile(`\nStarted (.*), on (127\.0\.0\.1:\d+)\.\n`).FindStringSubmatch(r.stdout)
		require.NotNil(t, m, r.stdout)
		t.Logf("the demo ran on %s", m[1])
		if kind := os.Getenv(pgserver.EnvKind); kind != "" && kind != "auto" {
			want := map[string]string{"container": "a PostgreSQL container", "installed": "PostgreSQL "}[kind]
			require.True(t, strings.HasPrefix(m[1], want), "%s=%s: %s", pgserver.EnvKind, kind, m[1])
		}
		require.Contains(t, r.stdout, "\nRemoved the throwaway server.\n")
		c, err := net.DialTimeout("tcp", m[2], 5*time.Second)
		if err == nil {
			c.Close()
		}
		require.Error(t, err, "nothing listens where the demo's server was")
		if dir := regexp.MustCompile(` in (/\S+dbcache-pg-\d+),`).FindStringSubmatch(r.stdout); dir != nil {
			_, err := os.Stat(dir[1])
			require.ErrorIs(t, err, os.ErrNotExist, "the server's directory is removed")
		}
	})

	// Neither Docker nor an installation: one line saying what to do, at
	// once.
	t.Run("NoServer", func(t *testing.T) {
		t.Parallel()
		env := append(demoEnv(),
			pgserver.EnvKind+"=auto",
			pgserver.EnvImage+"=dbcache.invalid/no-such-image:1", // Docker, if any, cannot run it
			pgserver.EnvBinDir+"="+t.TempDir(),                   // no installation
		)
		start := time.Now()
		r := runDemo(t, env)
		t.Logf("failed after %v", time.Since(start).Round(time.Millisecond))
		requireCode(t, 1, r)
		requireErrorLine(t, r, "demo: no database configured, and no throwaway PostgreSQL server can be started",
			"install Docker", "apt install postgresql", pgserver.EnvBinDir, "--database-url or DATABASE_URL")
		require.Equal(t, 1, strings.Count(r.stderr, "\n"), "one line: %q", r.stderr)
		require.NotContains(t, r.stdout, "Started ")
	})
}
