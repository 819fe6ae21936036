package ratelimit_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/ratelimit"
)

// Every call is bounded in time on a server that stops answering, with a
// context that has no deadline: New on a server that never answers, and
// each call through a connection gone silent. The caller's context is
// never cancelled by the bound.
func TestSilentServerIsBounded(t *testing.T) {
	t.Parallel()
	port := dbtest.SilentListener(t)
	pc, err := pgxpool.ParseConfig(fmt.Sprintf("postgres://postgres@127.0.0.1:%d/x?sslmode=disable", port))
	require.NoError(t, err)
	silent := dbtest.NewPool(t, pc)
	_, err = ratelimit.New(context.Background(), silent, &ratelimit.Config{OpTimeout: 300 * time.Millisecond})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	_, err = ratelimit.New(context.Background(), silent, nil)
	require.ErrorIs(t, err, context.DeadlineExceeded, "the default bound, with no Config at all")

	s := dbtest.NewSchema(t)
	s.Migrate(t)
	cfg := s.PoolConfig(t)
	proxy := dbtest.NewProxy(t, net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port))))
	cfg.ConnConfig.Host, cfg.ConnConfig.Port = "127.0.0.1", proxy.Port()
	cfg.MaxConns = 4
	for _, fast := range []bool{false, true} {
		b := setupOn(t, dbtest.NewPool(t, cfg), &ratelimit.Config{OpTimeout: 300 * time.Millisecond, FastCommit: fast})
		limit := ratelimit.PerSecond(10)
		_, err := b.lim.Allow(context.Background(), "k", limit)
		require.NoError(t, err)
		cancelable, cancel := context.WithCancel(context.Background())
		proxy.Freeze()
		ops := map[string]func() error{
			"allow": func() error { _, err := b.lim.Allow(cancelable, "k", limit); return err },
			"peek":  func() error { _, err := b.lim.AllowN(context.Background(), "k", limit, 0); return err },
			"reset": func() error { return b.lim.Reset(context.Background(), "k") },
			"sweep": func() error { _, err := b.lim.Sweep(context.Background(), 0); return err },
		}
		var wg sync.WaitGroup
		for name, op := range ops {
			wg.Go(func() {
				if err := op(); !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("fast=%v %s on a silent server: want a deadline error, got %v", fast, name, err)
				}
			})
		}
		wg.Wait()
		require.NoError(t, cancelable.Err(), "the caller's context is never cancelled by the bound")
		cancel()
		proxy.Thaw()
	}
}

// FastCommit really runs each write with synchronous_commit off: run each
// statement inside a transaction and read the setting back (a planner that
// skipped the set_config would show "on"); the plain forms leave it on.
func TestFastCommitSetsSynchronousCommit(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	fast := setup(t, &ratelimit.Config{FastCommit: true})
	plain := setupOn(t, fast.pool, nil)
	fastCheck, fastReset := ratelimit.Statements(fast.lim)
	plainCheck, plainReset := ratelimit.Statements(plain.lim)
	require.NotEqual(t, plainCheck, fastCheck)
	require.NotEqual(t, plainReset, fastReset)
	for _, c := range []struct {
		name, sql string
		args      []any
		want      string
	}{
		{"check fast", fastCheck, []any{"k", int64(time.Second), int64(10 * time.Second)}, "off"},
		{"reset fast", fastReset, []any{"k"}, "off"},
		{"check", plainCheck, []any{"k", int64(time.Second), int64(10 * time.Second)}, "on"},
		{"reset", plainReset, []any{"k"}, "on"},
	} {
		tx, err := fast.pool.Begin(ctx)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, `INSERT INTO dbcache_rate_limits VALUES ('k', 0)`)
		require.NoError(t, err)
		tag, err := tx.Exec(ctx, c.sql, c.args...)
		require.NoError(t, err, c.name)
		require.Positive(t, tag.RowsAffected(), "%s wrote nothing", c.name)
		var setting string
		require.NoError(t, tx.QueryRow(ctx, `SELECT current_setting('synchronous_commit')`).Scan(&setting))
		require.Equal(t, c.want, setting, c.name)
		require.NoError(t, tx.Rollback(ctx))
	}
}

// A crafted state (someone else's rows in the table) gives an error or the
// answer the state says, never a panic or a made-up admission: a time so
// late that the sums overflow is an error and admits nothing; a time long
// past (or negative) is a key with its full burst.
func TestCraftedState(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	b := setup(t, nil)
	limit := ratelimit.Limit{Rate: 10, Period: time.Second, Burst: 5}
	dbtest.Exec(t, b.pool, `INSERT INTO dbcache_rate_limits VALUES ('late', $1), ('past', $2), ('far', $3)`,
		int64(math.MaxInt64-10), int64(math.MinInt64+1), int64(math.MaxInt64/2))
	res, err := b.lim.Allow(ctx, "late", limit)
	require.ErrorContains(t, err, "out of range")
	require.False(t, res.Allowed)
	require.EqualValues(t, math.MaxInt64-10, tatOf(t, b.pool, "late"), "unchanged")

	res, err = b.lim.AllowN(ctx, "past", limit, 5)
	require.NoError(t, err)
	require.True(t, res.Allowed)
	require.Zero(t, res.Remaining)

	res, err = b.lim.Allow(ctx, "far", limit)
	require.NoError(t, err)
	require.False(t, res.Allowed, "a state centuries ahead denies")
	require.Zero(t, res.Remaining)
	require.Positive(t, res.RetryAfter)

	peek, err := b.lim.AllowN(ctx, "far", limit, 0)
	require.NoError(t, err)
	require.Zero(t, peek.Remaining)
}

// The Tracer sees every check that reached the database, with the
// limiter's name and never its key; a Tracer that panics panics on the
// caller's goroutine, after the check, holding nothing.
func TestTracer(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	tr := &recordingTracer{}
	b := setup(t, &ratelimit.Config{Tracer: tr, Name: "login"})
	limit := ratelimit.Limit{Rate: 1, Period: time.Hour}
	const key = "user@example.com"
	for range 2 {
		_, err := b.lim.Allow(ctx, key, limit)
		require.NoError(t, err)
	}
	ends := tr.all()
	require.Len(t, ends, 2)
	require.True(t, ends[0].Result.Allowed)
	require.False(t, ends[1].Result.Allowed)
	for _, e := range ends {
		require.Equal(t, "login", e.Name)
		require.Equal(t, limit, e.Limit)
		require.Equal(t, 1, e.N)
		require.NoError(t, e.Err)
		require.Positive(t, e.Duration)
		require.NotContains(t, fmt.Sprintf("%+v", e), key)
	}

	// A check that fails is traced with its error.
	dbtest.Exec(t, b.pool, `INSERT INTO dbcache_rate_limits VALUES ('late', 9223372036854775000)`)
	_, err := b.lim.Allow(ctx, "late", limit)
	require.Error(t, err)
	ends = tr.all()
	require.Len(t, ends, 3)
	require.Error(t, ends[2].Err)
	require.False(t, strings.Contains(ends[2].Err.Error(), "late"), "the error does not quote the key")

	cfg := b.pool.Config()
	cfg.MaxConns = 1
	one := dbtest.NewPool(t, cfg)
	panicky := setupOn(t, one, &ratelimit.Config{Tracer: panicTracer{}}).lim
	require.PanicsWithValue(t, "tracer", func() { _, _ = panicky.Allow(ctx, "p", limit) })
	require.PanicsWithValue(t, "tracer", func() { _, _ = panicky.Allow(ctx, "p", limit) },
		"the one connection was released before the tracer ran")
	require.Zero(t, one.Stat().AcquiredConns())
}

type panicTracer struct{}

func (panicTracer) TraceCheck(context.Context, ratelimit.CheckEnd) { panic("tracer") }
