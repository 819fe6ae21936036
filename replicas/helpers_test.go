package replicas_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/migrations"
	"github.com/dbcache/dbcache/internal/pgserver"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

// The tests run against a throwaway primary of this package's own
// (installed PostgreSQL: a standby is a base backup of its directory)
// and its streaming standbys; each test has a schema of its own on the
// primary, which the standbys replay. Tests that pause, stop, delay or
// shift a standby start one of their own.

var (
	primaryOnce sync.Once
	primarySrv  *pgserver.Server
	sharedSB    *pgserver.Server
	primaryErr  error
	schemaSeq   atomic.Int64
	standbySeq  atomic.Int64
)

// shared returns the package's primary and its shared standby, started on
// first use and removed when the process ends (pgserver's reaper).
func shared(t testing.TB) (*pgserver.Server, *pgserver.Server) {
	t.Helper()
	primaryOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*pgserver.DefaultStartTimeout)
		defer cancel()
		primarySrv, primaryErr = pgserver.Start(ctx, pgserver.Config{Kind: pgserver.Installed, Database: "dbcache_replicas",
			Settings: map[string]string{"max_wal_senders": "20", "max_connections": "60"}})
		if primaryErr == nil {
			sharedSB, primaryErr = pgserver.StartStandby(ctx, primarySrv, "shared")
		}
	})
	require.NoError(t, primaryErr)
	return primarySrv, sharedSB
}

// ctxT is a context bounding a test.
func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// startStandby starts a standby of the primary of this test's own, with
// opts, removed when the test ends.
func startStandby(t testing.TB, primary *pgserver.Server, opts pgserver.StandbyOptions) *pgserver.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), pgserver.DefaultStartTimeout)
	defer cancel()
	name := fmt.Sprintf("standby_%d_%d", os.Getpid(), standbySeq.Add(1))
	s, err := pgserver.StartStandbyWith(ctx, primary, name, opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Remove(context.Background()) })
	return s
}

// newSchema makes and migrates a schema of the test's own on the primary,
// dropped when the test ends.
func newSchema(t testing.TB, primary *pgserver.Server) string {
	t.Helper()
	ctx := ctxT(t)
	name := fmt.Sprintf("t%d_%d", os.Getpid(), schemaSeq.Add(1))
	conn, err := pgx.Connect(ctx, primary.URL(""))
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize())
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if c, err := pgx.Connect(ctx, primary.URL("")); err == nil {
			_, _ = c.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{name}.Sanitize()+" CASCADE")
			_ = c.Close(ctx)
		}
	})
	cfg, err := pgx.ParseConfig(primary.URL(""))
	require.NoError(t, err)
	m, err := migrations.NewFromConnConfig(cfg, &migrations.Config{Schema: name})
	require.NoError(t, err)
	require.NoError(t, m.Up(ctx))
	return name
}

// poolOn opens a small pool on a server (or the DSN addr overrides) in
// schema, closed when the test ends.
func poolOn(t testing.TB, url, schema string) *pgxpool.Pool {
	t.Helper()
	return poolOnN(t, url, schema, 3)
}

// poolOnN is poolOn with n connections at most.
func poolOnN(t testing.TB, url, schema string, n int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	cfg.MaxConns = n
	cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	cfg.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{schema}.Sanitize()
	pool, err := pgxpool.NewWithConfig(ctxT(t), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// caughtUp waits until the standby has replayed everything the primary
// has written so far.
func caughtUp(t testing.TB, ctx context.Context, primary, standby *pgxpool.Pool) {
	t.Helper()
	var lsn int64
	require.NoError(t, primary.QueryRow(ctx, `SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint`).Scan(&lsn))
	for {
		var replayed int64
		err := standby.QueryRow(ctx, `SELECT coalesce((pg_last_wal_replay_lsn() - '0/0')::bigint, 0)`).Scan(&replayed)
		require.NoError(t, err)
		if replayed >= lsn {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the standby never replayed %d (at %d)", lsn, replayed)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// superExec runs sql as the superuser on a server.
func superExec(t testing.TB, ctx context.Context, s *pgserver.Server, sql string) {
	t.Helper()
	conn, err := pgx.Connect(ctx, s.URL(""))
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	require.NoError(t, err)
}

// eventually retries cond until it holds, under ctx.
func eventually(t testing.TB, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("%s: never happened", what)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// ownPrimary starts a primary of the test's own, for tests whose
// standbys must replay no other test's WAL.
func ownPrimary(t *testing.T) *pgserver.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*pgserver.DefaultStartTimeout)
	defer cancel()
	p, err := pgserver.Start(ctx, pgserver.Config{Kind: pgserver.Installed, Database: "dbcache_replicas_own",
		Settings: map[string]string{"wal_level": "logical", "max_connections": "40"}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Remove(context.Background()) })
	return p
}

// privatePair starts a primary of the test's own and an asynchronous
// standby of it, for tests whose WAL positions no other test may move.
func privatePair(t *testing.T) (*pgserver.Server, *pgserver.Server) {
	t.Helper()
	p := ownPrimary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*pgserver.DefaultStartTimeout)
	defer cancel()
	s, err := pgserver.StartStandby(ctx, p, fmt.Sprintf("own_%d_%d", os.Getpid(), standbySeq.Add(1)))
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Remove(context.Background()) })
	return p, s
}
