//go:build unix

package pgcontainer

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/moby/moby/client"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/pgserver"
)

// These tests start servers in containers: the container path's faults,
// removal and reaping (internal/pgserver's own tests show the installed
// path's). They need Docker: with DBCACHE_TEST_PG_SERVER=container (CI's
// container pass) they fail without it; with =installed (a machine with
// PostgreSQL and no Docker) and unset they run where Docker answers, and
// elsewhere check that a container start is refused at once with
// pgserver.ErrUnavailable (dockerAnswers).

// childEnv makes the test binary a child process that starts a container
// and then dies without removing it (see TestMain). childLabelEnv is the
// label its container gets, so other processes' sweeps do not look for it.
const (
	childEnv      = "PGCONTAINER_TEST_CHILD"
	childLabelEnv = "PGCONTAINER_TEST_LABEL"
)

func TestMain(m *testing.M) {
	if l := os.Getenv(childLabelEnv); l != "" {
		labelOwner = l
	}
	switch os.Getenv(childEnv) {
	case "":
		os.Exit(m.Run())
	case "panic":
		// A test that panics: the process dies with the server running.
		s := childStart()
		go func() { panic("a test panicked with a server running: " + s.String()) }()
		select {}
	case "killed":
		// A run killed with its reaper: no reaper here at all.
		noReaper = true
		childStart()
		os.Exit(0)
	}
}

func childStart() *pgserver.Server {
	s, err := pgserver.Start(context.Background(), pgserver.Config{Kind: pgserver.Container, Image: os.Getenv(pgserver.EnvImage)})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	_, port := s.Addr()
	fmt.Println(port, containerID(s))
	return s
}

// containerID is the ID of a server's container, from its description.
func containerID(s *pgserver.Server) string {
	d := s.String()
	i := strings.LastIndex(d, "(")
	j := strings.LastIndex(d, ")")
	if i < 0 || j < i {
		return ""
	}
	return d[i+1 : j]
}

// dockerAnswers reports whether Docker answers, so the container path
// can be tried. Where it does not, the test still tries what holds there:
// with DBCACHE_TEST_PG_SERVER=container (CI's container pass) it fails,
// saying why; otherwise a container start must be refused at once with
// pgserver.ErrUnavailable (one clear error, never a hang), which the
// caller's test then ends on. No test skips.
func dockerAnswers(t *testing.T) bool {
	t.Helper()
	cfg, err := pgserver.ConfigFromEnv(os.Getenv)
	require.NoError(t, err)
	cli, err := dockerClient(ctxT(t), testLogger(t))
	if err == nil {
		_, err = cli.Ping(ctxT(t), client.PingOptions{})
		_ = cli.Close()
	}
	if err == nil {
		return true
	}
	if cfg.Kind == pgserver.Container {
		t.Fatalf("%s=container, and Docker does not answer: %v", pgserver.EnvKind, err)
	}
	ctx, cancel := context.WithTimeout(ctxT(t), time.Minute)
	defer cancel()
	_, serr := pgserver.Start(ctx, pgserver.Config{Kind: pgserver.Container, Image: os.Getenv(pgserver.EnvImage)})
	require.ErrorIs(t, serr, pgserver.ErrUnavailable, "without Docker a container start is refused with one clear error")
	t.Logf("Docker does not answer (%v): checked that a container start is refused (%v)", err, serr)
	return false
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func connect(ctx context.Context, s *pgserver.Server) (*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return pgx.Connect(cctx, s.URL(""))
}

// exists reports whether a container with this ID (or prefix) exists.
func exists(t *testing.T, id string) bool {
	t.Helper()
	cli, err := dockerClient(ctxT(t), testLogger(t))
	require.NoError(t, err)
	defer cli.Close()
	_, err = cli.ContainerInspect(ctxT(t), id, client.ContainerInspectOptions{})
	return err == nil
}

// A container is published on loopback only, keeps what was committed
// across a fast shutdown and a crash, and is gone after Remove.
func TestContainerLifecycle(t *testing.T) {
	t.Parallel()
	if !dockerAnswers(t) {
		return
	}
	ctx := ctxT(t)
	s, err := pgserver.Start(ctx, pgserver.Config{Kind: pgserver.Container, Database: "lifecycle_db", Image: os.Getenv(pgserver.EnvImage), Logger: testLogger(t)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Remove(context.Background()) })
	require.Equal(t, pgserver.Container, s.Kind())
	id := containerID(s)

	cli, err := dockerClient(ctx, testLogger(t))
	require.NoError(t, err)
	res, err := cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	require.NoError(t, err)
	var hosts []string
	for _, bindings := range res.Container.NetworkSettings.Ports {
		for _, b := range bindings {
			hosts = append(hosts, b.HostIP.String())
		}
	}
	require.NoError(t, cli.Close())
	require.Equal(t, []string{"127.0.0.1"}, hosts, "published on loopback only")

	conn, err := connect(ctx, s)
	require.NoError(t, err)
	var db, fsync, coll string
	require.NoError(t, conn.QueryRow(ctx, `SELECT current_database(), current_setting('fsync'),
		(SELECT datcollate FROM pg_database WHERE datname = current_database())`).Scan(&db, &fsync, &coll))
	require.Equal(t, []string{"lifecycle_db", "on", "C"}, []string{db, fsync, coll})
	_, err = conn.Exec(ctx, `CREATE TABLE t (v text); INSERT INTO t VALUES ('before shutdown')`)
	require.NoError(t, err)
	require.NoError(t, s.Shutdown(ctx))
	require.NoError(t, s.Restart(ctx))
	conn, err = connect(ctx, s)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `INSERT INTO t VALUES ('before crash')`)
	require.NoError(t, err)
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `INSERT INTO t VALUES ('open at crash')`)
	require.NoError(t, err)
	require.NoError(t, s.Crash(ctx))
	require.NoError(t, s.Restart(ctx), "crash recovery")
	conn, err = connect(ctx, s)
	require.NoError(t, err)
	rows, err := conn.Query(ctx, `SELECT v FROM t ORDER BY v`)
	require.NoError(t, err)
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{"before crash", "before shutdown"}, got, "committed rows survive, open transactions do not")
	require.NoError(t, conn.Close(ctx))

	require.NoError(t, s.Remove(ctx))
	require.NoError(t, s.Remove(ctx), "Remove is idempotent")
	require.False(t, exists(t, id), "the container is removed")
}

// runChild runs this test binary as a child that starts a container and
// dies (mode: see TestMain), and returns its port and container ID.
func runChild(t *testing.T, mode, label string) (port int, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctxT(t), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode, childLabelEnv+"="+label)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	line, rerr := bufio.NewReader(out).ReadString('\n')
	_ = cmd.Wait()
	require.NoError(t, rerr, "child output; stderr: %s", stderr.String())
	f := strings.Fields(line)
	require.Len(t, f, 2, "child said %q; stderr: %s", line, stderr.String())
	port, err = strconv.Atoi(f[0])
	require.NoError(t, err)
	return port, f[1]
}

func answers(port int) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(pgserver.Loopback, strconv.Itoa(port)), 2*time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// A process that panics with a container running takes the container with
// it: its reaper (the same executable) removes it once the process is gone.
func TestReaperRemovesContainerOfDeadProcess(t *testing.T) {
	t.Parallel()
	if !dockerAnswers(t) {
		return
	}
	port, id := runChild(t, "panic", "org.dbcache.pgcontainer.test.panic."+strconv.Itoa(os.Getpid()))
	deadline := time.Now().Add(2 * time.Minute)
	for answers(port) || exists(t, id) {
		require.False(t, time.Now().After(deadline), "timed out waiting for the reaper")
		time.Sleep(100 * time.Millisecond)
	}
}

// A run killed together with its reaper leaves its container running; the
// next sweep of its label removes it.
func TestSweepRemovesStaleContainers(t *testing.T) {
	t.Parallel()
	if !dockerAnswers(t) {
		return
	}
	label := "org.dbcache.pgcontainer.test.killed." + strconv.Itoa(os.Getpid())
	port, id := runChild(t, "killed", label)
	require.True(t, answers(port), "the killed run's container is still running")
	ctx := ctxT(t)
	cli, err := dockerClient(ctx, testLogger(t))
	require.NoError(t, err)
	sweepStaleContainers(ctx, cli, label, testLogger(t))
	require.NoError(t, cli.Close())
	require.False(t, exists(t, id), "the container is removed")
	require.False(t, answers(port))
}
