package replicas_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/pgserver"
	"github.com/dbcache/dbcache/internal/standbytest"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

// The helpers shared with the integration suite's failover tests.
var (
	ctxT       = standbytest.Ctx
	newSchema  = standbytest.NewSchema
	poolOn     = standbytest.PoolOn
	poolOnN    = standbytest.PoolOnN
	caughtUp   = standbytest.CaughtUp
	superExec  = standbytest.SuperExec
	superConn  = standbytest.SuperConn
	eventually = standbytest.Eventually
)

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
