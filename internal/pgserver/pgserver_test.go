//go:build unix

package pgserver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// These tests start servers from the installed PostgreSQL (this package
// alone runs no containers: internal/pgcontainer's tests show the container
// path's faults, removal and reaping).

// childEnv makes the test binary a child process that starts a server and
// then dies without removing it (see TestMain). Its directory, under the
// child's own TMPDIR, is out of other processes' sweeps (the other test
// packages starting servers meanwhile).
const childEnv = "PGSERVER_TEST_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "":
		os.Exit(run(m))
	case "panic":
		// A test that panics: the process dies with the server running.
		s := childStart()
		go func() { panic("a test panicked with a server running: " + s.String()) }()
		select {}
	case "killed":
		// A run killed with its reaper (kill -9 of the process group): no
		// reaper here at all, and no removal.
		spawnReaperFunc = func(reaperSpec) (func(), error) { return func() {}, nil }
		childStart()
		os.Exit(0)
	}
}

// live is a server of this process, started before the tests: when none
// can be had the package fails with one message rather than one per test;
// and the sweep test checks that a live process's server is left alone.
var live *Server

func run(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*DefaultStartTimeout)
	defer cancel()
	cfg, err := ConfigFromEnv(os.Getenv)
	cfg.Kind = Installed
	if err == nil {
		live, err = Start(ctx, cfg)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgserver tests: %v\n", err)
		return 1
	}
	defer func() { _ = live.Remove(context.WithoutCancel(ctx)) }()
	return m.Run()
}

// childStart starts a server from the environment and prints where it is.
func childStart() *Server {
	cfg, err := ConfigFromEnv(os.Getenv)
	cfg.Kind = Installed
	if err == nil {
		var s *Server
		if s, err = Start(context.Background(), cfg); err == nil {
			fmt.Println(where(s))
			return s
		}
	}
	fmt.Println("ERROR", err)
	os.Exit(1)
	return nil
}

// where is a line that says where a server is: "kind port location".
func where(s *Server) string {
	_, port := s.Addr()
	loc := ""
	if inst, ok := s.inst.(*localInstance); ok {
		loc = inst.root
	}
	return fmt.Sprintf("%s %d %s", s.Kind(), port, loc)
}

func envConfig(t *testing.T) Config {
	t.Helper()
	cfg, err := ConfigFromEnv(os.Getenv)
	require.NoError(t, err)
	cfg.Kind = Installed
	return cfg
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func start(t *testing.T, cfg Config) *Server {
	t.Helper()
	s, err := Start(ctxT(t), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Remove(context.Background())) })
	t.Logf("started %s", s)
	return s
}

func connect(ctx context.Context, s *Server) (*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return pgx.Connect(cctx, s.URL(""))
}

// The faults the integration suite needs, on this kind of server: a fast
// shutdown keeps what was committed and ends open transactions; a crash
// loses only what was never committed; after each the server comes back with
// its data; Remove leaves nothing behind.
func TestServerLifecycle(t *testing.T) {
	t.Parallel()
	cfg := envConfig(t)
	cfg.Database = "lifecycle_db"
	s := start(t, cfg)
	ctx := ctxT(t)
	require.Equal(t, "lifecycle_db", s.Database())
	host, _ := s.Addr()
	require.Equal(t, "127.0.0.1", host)

	conn, err := connect(ctx, s)
	require.NoError(t, err)
	var db, user, fsync, enc, coll string
	require.NoError(t, conn.QueryRow(ctx, `SELECT current_database(), current_user, current_setting('fsync'), current_setting('server_encoding'),
		(SELECT datcollate FROM pg_database WHERE datname = current_database())`).Scan(&db, &user, &fsync, &enc, &coll))
	require.Equal(t, []string{"lifecycle_db", "postgres", "on", "UTF8", "C"}, []string{db, user, fsync, enc, coll})
	var listen string
	require.NoError(t, conn.QueryRow(ctx, `SELECT current_setting('listen_addresses')`).Scan(&listen))
	require.Equal(t, "127.0.0.1", listen, "only loopback")
	_, err = conn.Exec(ctx, `CREATE TABLE t (v text); INSERT INTO t VALUES ('before shutdown')`)
	require.NoError(t, err)
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `INSERT INTO t VALUES ('open at shutdown')`)
	require.NoError(t, err)

	require.NoError(t, s.Shutdown(ctx))
	_, err = connect(ctx, s)
	require.Error(t, err, "nothing answers while the server is down")
	require.Error(t, tx.Commit(ctx), "the open transaction was ended")
	require.NoError(t, s.Restart(ctx))

	conn, err = connect(ctx, s)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `INSERT INTO t VALUES ('before crash')`)
	require.NoError(t, err)
	tx, err = conn.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `INSERT INTO t VALUES ('open at crash')`)
	require.NoError(t, err)
	require.NoError(t, s.Crash(ctx))
	_, err = connect(ctx, s)
	require.Error(t, err, "nothing answers after a crash")
	require.NoError(t, s.Restart(ctx), "crash recovery")

	conn, err = connect(ctx, s)
	require.NoError(t, err)
	rows, err := conn.Query(ctx, `SELECT v FROM t ORDER BY v`)
	require.NoError(t, err)
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{"before crash", "before shutdown"}, got, "committed rows survive, open transactions do not")
	require.NoError(t, conn.Close(ctx))

	loc := strings.Fields(where(s))[2]
	require.NoError(t, s.Remove(ctx))
	require.NoError(t, s.Remove(ctx), "Remove is idempotent")
	_, err = connect(ctx, s)
	require.Error(t, err)
	requireGone(t, s.Kind(), loc)
}

// requireGone checks that a server's directory no longer exists.
func requireGone(t *testing.T, kind Kind, loc string) {
	t.Helper()
	require.Equal(t, Installed, kind)
	_, err := os.Stat(loc)
	require.ErrorIs(t, err, os.ErrNotExist, "the server's directory is removed")
}

// child is where a child process's server lives, out of other processes'
// sight.
type child struct {
	tmp string // its TMPDIR, readable by a server's OS user
}

func newChild(t *testing.T) child {
	t.Helper()
	// Not t.TempDir: that is private to this user, and the server may run
	// as another.
	tmp, err := os.MkdirTemp("", "pgserver-test-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(tmp, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(tmp) })
	return child{tmp: tmp}
}

// runChild runs this test binary as a child that starts a server and dies
// (mode: see TestMain), and returns where its server was.
func (c child) run(t *testing.T, mode string) (kind Kind, port int, loc string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctxT(t), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode, EnvKind+"="+string(Installed), "TMPDIR="+c.tmp)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	line, rerr := bufio.NewReader(out).ReadString('\n')
	werr := cmd.Wait()
	require.NoError(t, rerr, "child output; stderr: %s", stderr.String())
	f := strings.Fields(line)
	require.Len(t, f, 3, "child said %q; stderr: %s", line, stderr.String())
	port, err = strconv.Atoi(f[1])
	require.NoError(t, err)
	t.Logf("child (%s) exited (%v) leaving a %s server on port %s at %s", mode, werr, f[0], f[1], f[2])
	return Kind(f[0]), port, f[2]
}

func answers(port int) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(loopback, strconv.Itoa(port)), 2*time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// waitUntil polls cond, failing after two minutes: the bound only catches
// what never happens.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		require.False(t, time.Now().After(deadline), "timed out waiting for "+what)
		time.Sleep(100 * time.Millisecond)
	}
}

// A process that panics with a server running (as a test can) takes the
// server with it: its reaper removes it once the process is gone.
func TestReaperRemovesServerOfDeadProcess(t *testing.T) {
	t.Parallel()
	kind, port, loc := newChild(t).run(t, "panic")
	waitUntil(t, "the reaper to remove the server", func() bool {
		if answers(port) {
			return false
		}
		_, err := os.Stat(loc)
		return errors.Is(err, os.ErrNotExist)
	})
	requireGone(t, kind, loc)
}

// A run killed together with its reaper leaves its server running; the next
// Start on the machine removes it (and nothing of live processes).
func TestSweepRemovesStaleServers(t *testing.T) {
	t.Parallel()
	c := newChild(t)
	kind, port, loc := c.run(t, "killed")
	require.True(t, answers(port), "the killed run's server is still running")

	ctx := ctxT(t)
	// Sweeps of where this process's servers live, and of the child's.
	sweepStaleDirs(os.TempDir(), testLogger(t))
	sweepStaleDirs(c.tmp, testLogger(t))
	requireGone(t, kind, loc)
	require.False(t, answers(port))
	conn, err := connect(ctx, live)
	require.NoError(t, err, "a live process's server is untouched")
	require.NoError(t, conn.Close(ctx))
}

func TestFindBinDir(t *testing.T) {
	t.Parallel()
	empty := t.TempDir()
	_, err := findBinDir(context.Background(), empty)
	require.ErrorIs(t, err, ErrUnavailable)
	require.ErrorContains(t, err, empty)
	require.ErrorContains(t, err, EnvBinDir)

	// A directory with both programs is taken as it is.
	dir := t.TempDir()
	for _, name := range []string{"initdb", "postgres"} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), 0o755))
	}
	got, err := findBinDir(context.Background(), dir)
	require.NoError(t, err)
	require.Equal(t, dir, got)

	require.Negative(t, compareVersions("/usr/lib/postgresql/9/bin", "/usr/lib/postgresql/16/bin"))
	require.Positive(t, compareVersions("/usr/pgsql-17/bin", "/usr/pgsql-16/bin"))
}

// With neither way available the error is one line that says what to
// install or set; with a way that failed otherwise, no install hint.
func TestExplain(t *testing.T) {
	t.Parallel()
	cerr := unavailablef("Docker is not reachable: %v", errors.Join(errors.New("no socket"), errors.New("rootless Docker not found")))
	ierr := unavailablef("no initdb and postgres found")
	err := explain(cerr, ierr)
	require.ErrorIs(t, err, ErrUnavailable)
	msg := err.Error()
	require.NotContains(t, msg, "\n")
	for _, want := range []string{"Docker is not reachable", "no initdb", "install Docker", "apt install postgresql", EnvBinDir} {
		require.Contains(t, msg, want)
	}

	err = explain(errors.New("container never became ready"), ierr)
	require.NotErrorIs(t, err, ErrUnavailable)
	require.NotContains(t, err.Error(), "install Docker")

	_, err = ConfigFromEnv(func(k string) string { return map[string]string{EnvKind: "vm"}[k] })
	require.ErrorContains(t, err, EnvKind)
}

// Auto mode falls back to the installation when Docker cannot run a server,
// and with neither fails at once with the one error. Whether this machine
// has an installation comes from the environment: none when
// DBCACHE_TEST_PG_SERVER=container (CI's "Docker, no PostgreSQL" run) or
// when none is found.
func TestAutoFallsBack(t *testing.T) {
	t.Parallel()
	cfg := envConfig(t)
	_, findErr := findBinDir(context.Background(), cfg.BinDir)
	installation := cfg.Kind != Container && findErr == nil
	cfg.Kind = Auto
	cfg.Image = "dbcache.invalid/no-such-image:1" // Docker, if any, cannot run it
	if installation {
		s := start(t, cfg)
		require.Equal(t, Installed, s.Kind())
	}

	cfg.BinDir = t.TempDir() // no installation either
	_, err := Start(ctxT(t), cfg)
	require.ErrorIs(t, err, ErrUnavailable)
	require.ErrorContains(t, err, "container: ")
	require.ErrorContains(t, err, "installed PostgreSQL: ")
}

// testLogger logs to the test.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// Config.Settings reach the server, on either kind, and survive a restart;
// a name that is not a setting's is refused before anything starts.
func TestSettings(t *testing.T) {
	t.Parallel()
	cfg := envConfig(t)
	cfg.Settings = map[string]string{"wal_level": "logical", "wal_writer_delay": "50ms"}
	s := start(t, cfg)
	ctx := ctxT(t)
	show := func() []string {
		t.Helper()
		conn, err := connect(ctx, s)
		require.NoError(t, err)
		defer conn.Close(ctx)
		var wal, delay, fsync string
		require.NoError(t, conn.QueryRow(ctx, `SELECT current_setting('wal_level'), current_setting('wal_writer_delay'), current_setting('fsync')`).Scan(&wal, &delay, &fsync))
		return []string{wal, delay, fsync}
	}
	want := []string{"logical", "50ms", "on"}
	require.Equal(t, want, show(), "the settings, and the defaults left alone")
	require.NoError(t, s.Shutdown(ctx))
	require.NoError(t, s.Restart(ctx))
	require.Equal(t, want, show(), "kept across a restart")

	for _, bad := range []string{"", "wal_level=minimal", "a b", "-c"} {
		bcfg := envConfig(t)
		bcfg.Settings = map[string]string{bad: "x"}
		_, err := Start(ctx, bcfg)
		require.ErrorContains(t, err, "is not a setting name", "%q", bad)
		require.NotErrorIs(t, err, ErrUnavailable)
	}
}
