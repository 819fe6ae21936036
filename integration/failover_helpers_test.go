package integration_test

import (
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/standbytest"
	"github.com/dbcache/dbcache/replicas"
)

// The failover tests' helpers (internal/standbytest, shared with the
// replicas package's tests): servers of their own, a schema each on the
// primary, which the standby replays. The failover tests live here, not
// beside the replicas package, because they try the near cache too, a
// module of its own that the library module's tests must not import.
var (
	foCtx        = standbytest.Ctx
	foNewSchema  = standbytest.NewSchema
	foPoolOn     = standbytest.PoolOn
	foPoolOnN    = standbytest.PoolOnN
	foCaughtUp   = standbytest.CaughtUp
	foSuperConn  = standbytest.SuperConn
	foSuperExec  = standbytest.SuperExec
	foEventually = standbytest.Eventually
	foStandbySeq atomic.Int64
)

// foRouter is a replicas.Cache closed when the test ends.
func foRouter(t testing.TB, primary *pgxpool.Pool, standbys []*pgxpool.Pool, cfg *replicas.Config) *replicas.Cache {
	t.Helper()
	c, err := replicas.New(foCtx(t), primary, standbys, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}
