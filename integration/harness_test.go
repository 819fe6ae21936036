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

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	// Containers for the suite's servers (pgserver.Start).
	_ "github.com/dbcache/dbcache/internal/pgcontainer"
	"github.com/dbcache/dbcache/internal/pgserver"
)

// Two kinds of server back these tests:
//
//   - the shared one, dbtest's (one throwaway server per test process, or
//     DBCACHE_TEST_DATABASE_URL), for every test that only needs a fresh
//     schema: each gets its own through dbtest.NewSchema;
//   - dedicated throwaway servers (startServer) for tests that stop, crash
//     or restart the server, or need one nothing else has touched.
//
// Throwaway servers come from internal/pgserver: containers when Docker can
// run them, else the machine's PostgreSQL installation
// (DBCACHE_TEST_PG_SERVER forces one way).

func TestMain(m *testing.M) { dbtest.Main(m) }

// loopback is where every server is dialled.
const loopback = "127.0.0.1"

// ctxT is a test's context: generous, so only a real hang trips it.
func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// server is a throwaway PostgreSQL server of one test's own.
type server struct {
	*pgserver.Server
	// db is the server's database. Its name is unique to this server, so a
	// pool that reaches another test's server (a port reused while this one
	// was down) fails to connect instead of writing there.
	db string
}

var (
	serverSeq atomic.Int64
	// startSlots bounds the servers starting at once: each runs initdb,
	// and more at a time only slows them all (and the shared server's start).
	startSlots = make(chan struct{}, 2)
)

// startServer starts a dedicated server in the background and returns a
// function that waits for it. Call it before t.Parallel: every test's
// sequential part runs at once at the start of the run, so the servers of
// all selected tests start together, while -parallel (GOMAXPROCS by default)
// bounds only the tests that run at a time. The server is removed when the
// test ends. It runs with PostgreSQL's defaults (fsync and
// synchronous_commit on), so a crash test proves what a production server
// would keep. A server that fails to start fails the test: it never skips.
func startServer(t *testing.T) (await func(*testing.T) *server) {
	t.Helper()
	type started struct {
		srv *pgserver.Server
		err error
	}
	ch := make(chan started, 1)
	db := fmt.Sprintf("dbcache_it_%d_%d", os.Getpid(), serverSeq.Add(1))
	cfg, cfgErr := pgserver.ConfigFromEnv(os.Getenv)
	cfg.Database = db
	go func() {
		if cfgErr != nil {
			ch <- started{nil, cfgErr}
			return
		}
		startSlots <- struct{}{}
		defer func() { <-startSlots }()
		ctx, cancel := context.WithTimeout(context.Background(), 2*pgserver.DefaultStartTimeout+time.Minute)
		defer cancel()
		srv, err := pgserver.Start(ctx, cfg)
		ch <- started{srv, err}
	}()
	var (
		once sync.Once
		res  started
	)
	wait := func() started {
		once.Do(func() { res = <-ch })
		return res
	}
	// Registered now, so the server goes even if the test never waits.
	t.Cleanup(func() {
		if r := wait(); r.srv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := r.srv.Remove(ctx); err != nil {
				t.Errorf("remove the server: %v", err)
			}
		}
	})
	return func(t *testing.T) *server {
		t.Helper()
		r := wait()
		require.NoError(t, r.err, "start a dedicated server")
		t.Logf("dedicated server: %s", r.srv)
		return &server{Server: r.srv, db: db}
	}
}

// url is the server's DSN for database as of now (the port can change
// across restarts).
func (s *server) url(database string) string { return s.URL(database) }

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
		cc.Host, cc.Port = s.Addr()
		return nil
	}
	return cfg
}

// crash kills every server process at once: no shutdown checkpoint, so the
// restart runs crash recovery.
func (s *server) crash(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, s.Crash(ctx))
}

// shutdown stops the server the way an operator would: PostgreSQL's fast
// shutdown, which rolls back open transactions and disconnects every client.
func (s *server) shutdown(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, s.Shutdown(ctx))
}

// start starts the stopped server again and waits until it answers (after
// crash recovery).
func (s *server) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	require.NoError(t, s.Restart(ctx))
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

// returns runs op and returns its error, failing the test if op has not
// returned within hangGuard. It is not a time bound: callers hold whatever
// op waits on (a row lock) until it has returned, so op returning at all
// proves what ended it (its context, statement_timeout); hangGuard only
// catches an op that would never return.
func returns(t *testing.T, op func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- op() }()
	select {
	case err := <-done:
		return err
	case <-time.After(hangGuard):
		require.FailNow(t, "operation hung", "still running after %v", hangGuard)
		return errors.New("unreachable")
	}
}
