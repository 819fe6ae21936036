package dbcache_test

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// The cache behind PgBouncer (Debian's 1.18) in transaction pooling, the
// production setting where a client moves between server connections from
// one transaction to the next: which of pgx's query modes work there, and
// what the cache says about those that do not.

// bouncerPool is a pool on the schema through the bouncer, in mode, with
// maxConns connections and its own application_name.
func bouncerPool(t *testing.T, b *dbtest.PgBouncer, s *dbtest.Schema, mode pgx.QueryExecMode, maxConns int32, app string) *pgxpool.Pool {
	t.Helper()
	cfg := b.PoolConfig(t, s)
	cfg.ConnConfig.DefaultQueryExecMode = mode
	cfg.MaxConns = maxConns
	cfg.ConnConfig.RuntimeParams["application_name"] = app
	return dbtest.NewPool(t, cfg)
}

// New refuses describe_exec behind a transaction pooler, with the error
// that names the connection-string setting to use; behind a session pooler,
// where a client keeps its server connection, it works and is accepted.
func TestPgBouncerRefusesDescribeExec(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	ctx := t.Context()

	tx := dbtest.NewPgBouncer(t, nil)
	_, err := dbcache.New(ctx, bouncerPool(t, tx, s, pgx.QueryExecModeDescribeExec, 4, "dbcache-test"), &dbcache.Config{Schema: s.Name})
	require.ErrorIs(t, err, dbcache.ErrQueryMode)
	require.Contains(t, err.Error(), "default_query_exec_mode=cache_describe")

	session := dbtest.NewPgBouncer(t, &dbtest.PgBouncerConfig{PoolMode: "session"})
	c, err := dbcache.New(ctx, bouncerPool(t, session, s, pgx.QueryExecModeDescribeExec, 4, "dbcache-test"), &dbcache.Config{Schema: s.Name})
	require.NoError(t, err, "a session pooler keeps a client on one server connection")
	require.NoError(t, c.Set(ctx, "k", []byte("v"), dbcache.DefaultTimeout))
	v, err := c.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v", string(v))

	direct := s.PoolConfig(t)
	direct.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeDescribeExec
	_, err = dbcache.New(ctx, dbtest.NewPool(t, direct), &dbcache.Config{Schema: s.Name})
	require.NoError(t, err, "a direct connection")
}

// pgx's default mode (cache_statement) prepares named statements, which
// PgBouncer 1.18 does not keep: a second client finds one of the same name
// already on the server connection (42P05), and a client whose server
// connection was replaced finds its own gone (26000). Both come back as the
// one error that names the setting to use, whichever call meets them.
func TestPgBouncerLostPreparedStatementNamesTheSetting(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	ctx := t.Context()
	direct := s.Pool(t)
	// One server connection, so every client's statements meet there.
	b := dbtest.NewPgBouncer(t, &dbtest.PgBouncerConfig{PoolSize: 1})
	appA := "dbcache-pgb-a-" + s.Name
	a, err := dbcache.New(ctx, bouncerPool(t, b, s, pgx.QueryExecModeCacheStatement, 1, appA), &dbcache.Config{Schema: s.Name})
	require.NoError(t, err)
	require.NoError(t, a.Set(ctx, "k", []byte("v"), dbcache.DefaultTimeout))
	_, err = a.Get(ctx, "k")
	require.NoError(t, err)

	// Another client: New prepares the statement a already prepared there.
	appB := "dbcache-pgb-b-" + s.Name
	_, err = dbcache.New(ctx, bouncerPool(t, b, s, pgx.QueryExecModeCacheStatement, 1, appB), &dbcache.Config{Schema: s.Name})
	require.ErrorIs(t, err, dbcache.ErrQueryMode)
	require.Contains(t, err.Error(), "default_query_exec_mode=cache_describe")
	require.Contains(t, err.Error(), "42P05", "the server's error is kept")

	// a's server connection is replaced (as server_lifetime does): its
	// prepared statements are gone, and a's next Get finds out.
	// (Its application_name is that of the last client it served.)
	require.EqualValues(t, 1, dbtest.Exec(t, direct, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
WHERE application_name IN ($1, $2)`, appA, appB), "the bouncer's one server connection")
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, direct.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name IN ($1, $2)`, appA, appB).Scan(&n))
		return n == 0
	}, 30*time.Second, 5*time.Millisecond, "the terminated backend stayed")
	_, opErr := a.Get(ctx, "k")
	require.ErrorIs(t, opErr, dbcache.ErrQueryMode)
	require.Contains(t, opErr.Error(), "26000")
}

// The modes that work behind a transaction pooler, and FastCommit: many
// goroutines on a pool of several connections through PgBouncer run a mix
// of every operation without a single error, and what they read is what
// they wrote.
func TestPgBouncerWorkingModes(t *testing.T) {
	t.Parallel()
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		for _, fast := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/fastcommit=%t", mode, fast), func(t *testing.T) {
				t.Parallel()
				s := dbtest.NewSchema(t)
				s.Migrate(t)
				b := dbtest.NewPgBouncer(t, &dbtest.PgBouncerConfig{PoolSize: 4})
				ctx := t.Context()
				c, err := dbcache.New(ctx, bouncerPool(t, b, s, mode, 8, "dbcache-test"), &dbcache.Config{Schema: s.Name, FastCommit: fast})
				require.NoError(t, err)
				var failures atomic.Int64
				var firstErr error
				var once sync.Once
				fail := func(err error) {
					if err != nil {
						failures.Add(1)
						once.Do(func() { firstErr = err })
					}
				}
				var wg sync.WaitGroup
				for g := range 8 {
					wg.Go(func() {
						for i := range 60 {
							k := fmt.Sprintf("g%d:%d", g, i%10)
							fail(c.Set(ctx, k, []byte(k), dbcache.DefaultTimeout))
							v, err := c.Get(ctx, k)
							fail(err)
							if err == nil && string(v) != k {
								fail(fmt.Errorf("get %s: %q", k, v))
							}
							_, err = c.Add(ctx, k+":add", []byte("a"), dbcache.DefaultTimeout)
							fail(err)
							_, err = c.Incr(ctx, fmt.Sprintf("n%d", g), 1)
							if errors.Is(err, dbcache.ErrMiss) {
								err = c.Set(ctx, fmt.Sprintf("n%d", g), []byte("0"), dbcache.Forever)
							}
							fail(err)
							_, err = c.GetMany(ctx, []string{k, k + ":add"})
							fail(err)
							_, err = c.Delete(ctx, k+":add")
							fail(err)
						}
					})
				}
				wg.Wait()
				require.Zero(t, failures.Load(), "first: %v", firstErr)
			})
		}
	}
}

// FastCommit through PgBouncer leaves nothing behind on the server
// connection: its synchronous_commit off is SET LOCAL inside each write's
// own transaction, so the next client on that one server connection finds
// the server's default.
func TestPgBouncerFastCommitLeavesNoSetting(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	ctx := t.Context()
	b := dbtest.NewPgBouncer(t, &dbtest.PgBouncerConfig{PoolSize: 1})
	c, err := dbcache.New(ctx, bouncerPool(t, b, s, pgx.QueryExecModeCacheDescribe, 2, "dbcache-test"), &dbcache.Config{Schema: s.Name, FastCommit: true})
	require.NoError(t, err)
	for i := range 20 {
		require.NoError(t, c.Set(ctx, fmt.Sprintf("k%d", i), []byte("v"), dbcache.DefaultTimeout))
	}
	other := bouncerPool(t, b, s, pgx.QueryExecModeSimpleProtocol, 1, "dbcache-test")
	var setting string
	require.NoError(t, other.QueryRow(ctx, `SHOW synchronous_commit`).Scan(&setting))
	require.Equal(t, "on", setting, "another client on the one server connection")
}
