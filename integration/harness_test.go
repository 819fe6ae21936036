package integration_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// Two kinds of server back these tests:
//
//   - the shared one, dbtest's (one container per test process, or
//     DBCACHE_TEST_DATABASE_URL), for every test that only needs a fresh
//     schema: each gets its own through dbtest.NewSchema;
//   - dedicated containers (startServer) for tests that stop, crash or
//     restart the server, or need a server nothing else has touched.

func TestMain(m *testing.M) { dbtest.Main(m) }

// loopback is where every container is dialled. Docker publishes a
// container's ports on the host's interfaces, so loopback always reaches a
// local engine; a container's bridge address is never used.
const loopback = "127.0.0.1"

// ctxT is a test's context: generous, so only a real hang trips it.
func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// server is a PostgreSQL container of one test's own.
type server struct {
	ctr *tcpostgres.PostgresContainer
	// db is the server's database. Its name is unique to this server, so a
	// pool that reaches another test's server (a host port reused while this
	// one was down) fails to connect instead of writing there.
	db string

	mu   sync.Mutex
	port uint16
}

var (
	serverSeq atomic.Int64
	// startSlots bounds the containers starting at once: each runs initdb,
	// and more at a time only slows them all (and the shared server's start).
	startSlots = make(chan struct{}, 2)
)

// startupTimeout bounds a dedicated container's start.
const startupTimeout = 3 * time.Minute

// startServer starts a dedicated container in the background and returns a
// function that waits for it. Call it before t.Parallel: every test's
// sequential part runs at once at the start of the run, so the containers of
// all selected tests start together, while -parallel (GOMAXPROCS by default)
// bounds only the tests that run at a time. The container is removed when the
// test ends. args go to postgres (for example "-c", "statement_timeout=1s").
// Commits are durable (fsync=on, unlike the postgres module's default
// fsync=off), so a crash test proves what a production server would keep. A
// container that fails to start fails the test: it never skips.
func startServer(t *testing.T, args ...string) (await func(*testing.T) *server) {
	t.Helper()
	type started struct {
		ctr *tcpostgres.PostgresContainer
		err error
	}
	ch := make(chan started, 1)
	db := fmt.Sprintf("dbcache_it_%d_%d", os.Getpid(), serverSeq.Add(1))
	cmd := append([]string{"postgres", "-c", "fsync=on", "-c", "synchronous_commit=on"}, args...)
	go func() {
		startSlots <- struct{}{}
		defer func() { <-startSlots }()
		ctx, cancel := context.WithTimeout(context.Background(), startupTimeout+30*time.Second)
		defer cancel()
		ctr, err := tcpostgres.Run(ctx, dbtest.Image(),
			tcpostgres.WithDatabase(db),
			tcpostgres.WithUsername("postgres"),
			tcpostgres.WithPassword("postgres"),
			testcontainers.WithCmd(cmd...),
			// The postgres module's BasicWaitStrategies, with a longer
			// deadline than its 60 s: initdb on a busy two-core machine,
			// several containers at once, can take longer.
			testcontainers.WithWaitStrategyAndDeadline(startupTimeout,
				wait.ForLog("database system is ready to accept connections").WithOccurrence(2).WithStartupTimeout(startupTimeout),
				wait.ForListeningPort("5432/tcp").WithStartupTimeout(startupTimeout),
			),
		)
		ch <- started{ctr, err}
	}()
	var (
		once sync.Once
		res  started
	)
	wait := func() started {
		once.Do(func() { res = <-ch })
		return res
	}
	// Registered now, so the container goes even if the test never waits.
	t.Cleanup(func() {
		if err := testcontainers.TerminateContainer(wait().ctr); err != nil {
			t.Errorf("remove container: %v", err)
		}
	})
	return func(t *testing.T) *server {
		t.Helper()
		r := wait()
		require.NoError(t, r.err, "start a %s container (set %s to choose the image)", dbtest.Image(), dbtest.EnvImage)
		s := &server{ctr: r.ctr, db: db}
		s.refresh(t)
		s.waitReady(t)
		return s
	}
}

// refresh asks Docker for the host port again: it changes on every start.
func (s *server) refresh(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := s.ctr.MappedPort(ctx, "5432/tcp")
	require.NoError(t, err, "mapped port")
	s.mu.Lock()
	s.port = p.Num()
	s.mu.Unlock()
}

func (s *server) addr() (string, uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return loopback, s.port
}

// url is the server's DSN as of now (the port changes across restarts).
func (s *server) url(database string) string {
	host, port := s.addr()
	return fmt.Sprintf("postgres://postgres:postgres@%s:%d/%s?sslmode=disable", host, port, database)
}

// poolConfig returns a pool config for database on the server whose every new
// connection dials the server's current address: it stands in for the DNS
// name an application would use, which follows the server when it moves.
// Nothing else about the pool is special; recovering from a restart is its
// own doing.
func (s *server) poolConfig(t *testing.T, database string) *pgxpool.Config {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(s.url(database))
	require.NoError(t, err)
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	cfg.BeforeConnect = func(_ context.Context, cc *pgx.ConnConfig) error {
		cc.Host, cc.Port = s.addr()
		return nil
	}
	return cfg
}

// waitReady retries until the server answers a query. After a start the
// log-based wait can pass on the previous run's lines, and the server refuses
// connections ("the database system is starting up") until recovery is done.
func (s *server) waitReady(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var err error
	for {
		var conn *pgx.Conn
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err = pgx.Connect(cctx, s.url(s.db))
		if err == nil {
			err = conn.Ping(cctx)
			_ = conn.Close(cctx)
		}
		ccancel()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			require.NoError(t, err, "server never answered")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// crash kills the server at once (SIGKILL to every process in the
// container): no shutdown checkpoint, so the restart runs crash recovery.
func (s *server) crash(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	zero := time.Duration(0)
	require.NoError(t, s.ctr.Stop(ctx, &zero), "kill the container")
}

// shutdown stops the server the way an operator would: PostgreSQL's fast
// shutdown (SIGINT to the postmaster, PID 1 in the official image and in
// CI's), which rolls back open transactions and disconnects every client.
func (s *server) shutdown(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The shell's kill: every image has a shell, not every one /bin/kill.
	code, _, err := s.ctr.Exec(ctx, []string{"sh", "-c", "kill -INT 1"})
	require.NoError(t, err, "signal the postmaster")
	require.Zero(t, code, "kill -INT 1 exit code")
	for {
		st, err := s.ctr.State(ctx)
		require.NoError(t, err)
		if !st.Running {
			return
		}
		select {
		case <-ctx.Done():
			require.Fail(t, "the server did not shut down")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// start starts the stopped container again and waits until it answers.
func (s *server) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, s.ctr.Start(ctx), "start the container again")
	s.refresh(t)
	s.waitReady(t)
}

// createDatabase creates a fresh database on the server.
func (s *server) createDatabase(t *testing.T, name string) {
	t.Helper()
	conn, err := pgx.Connect(ctxT(t), s.url(s.db))
	require.NoError(t, err)
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctxT(t), "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	require.NoError(t, err)
}

// cacheOn makes a cache over pool, closed when the test ends. Its logs go to
// the returned buffer.
func cacheOn(t *testing.T, pool *pgxpool.Pool, cfg *dbcache.Config) (*dbcache.Cache, *dbtest.LogBuffer) {
	t.Helper()
	logs := &dbtest.LogBuffer{}
	c := dbcache.Config{}
	if cfg != nil {
		c = *cfg
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	cache, err := dbcache.New(ctxT(t), pool, &c)
	require.NoError(t, err)
	t.Cleanup(func() { _ = cache.Close() })
	return cache, logs
}

// row is one row of the cache table, as a scan sees it.
type row struct {
	value   []byte
	expires *time.Time
}

// scan reads the whole cache table: what really got written, whatever the
// API says.
func scan(t *testing.T, pool *pgxpool.Pool) map[string]row {
	t.Helper()
	rows, err := pool.Query(ctxT(t), "SELECT key, value, expires FROM "+dbcache.TableName)
	require.NoError(t, err)
	out := map[string]row{}
	var k string
	var r row
	_, err = pgx.ForEachRow(rows, []any{&k, &r.value, &r.expires}, func() error {
		out[k] = row{value: bytes.Clone(r.value), expires: r.expires}
		return nil
	})
	require.NoError(t, err)
	return out
}

// scanKeys is the set of made keys in the table.
func scanKeys(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	var keys []string
	for k := range scan(t, pool) {
		keys = append(keys, k)
	}
	return keys
}

// sharedSchema is a fresh, migrated schema on the shared server.
func sharedSchema(t testing.TB) *dbtest.Schema {
	t.Helper()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	return s
}

// returnsBy runs op and fails the test if it has not returned within d plus a
// grace for scheduling: the "no hang past the context deadline" check.
func returnsBy(t *testing.T, d time.Duration, op func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- op() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d + 5*time.Second):
		require.FailNow(t, "operation hung past its context deadline", "deadline %v", d)
		return errors.New("unreachable")
	}
}
