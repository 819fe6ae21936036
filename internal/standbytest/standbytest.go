// Package standbytest holds the test helpers of the tests that run a
// primary and its streaming standbys (the replicas package's and the
// integration suite's failover tests): a schema of the test's own on the
// primary, which the standbys replay, small pools, waiting for replay.
package standbytest

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/migrations"
	"github.com/dbcache/dbcache/internal/pgserver"
)

var schemaSeq atomic.Int64

// Ctx is a context bounding a test.
func Ctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// NewSchema makes and migrates a schema of the test's own on the
// primary, dropped when the test ends.
func NewSchema(t testing.TB, primary *pgserver.Server) string {
	t.Helper()
	ctx := Ctx(t)
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

// PoolOn opens a small pool on url in schema, closed when the test ends.
func PoolOn(t testing.TB, url, schema string) *pgxpool.Pool {
	t.Helper()
	return PoolOnN(t, url, schema, 3)
}

// PoolOnN is PoolOn with n connections at most.
func PoolOnN(t testing.TB, url, schema string, n int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	cfg.MaxConns = n
	cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	cfg.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{schema}.Sanitize()
	pool, err := pgxpool.NewWithConfig(Ctx(t), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// CaughtUp waits until the standby has replayed everything the primary
// has written so far.
func CaughtUp(t testing.TB, ctx context.Context, primary, standby *pgxpool.Pool) {
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

// SuperConn connects to a server as its superuser.
func SuperConn(t testing.TB, ctx context.Context, s *pgserver.Server) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, s.URL(""))
	require.NoError(t, err)
	return conn
}

// SuperExec runs sql as the superuser on a server.
func SuperExec(t testing.TB, ctx context.Context, s *pgserver.Server, sql string) {
	t.Helper()
	conn := SuperConn(t, ctx, s)
	defer conn.Close(ctx)
	_, err := conn.Exec(ctx, sql)
	require.NoError(t, err)
}

// Eventually retries cond until it holds, under ctx.
func Eventually(t testing.TB, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("%s: never happened", what)
		case <-time.After(5 * time.Millisecond):
		}
	}
}
