package ratelimit_test

import (
	"context"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/migrations"
	"github.com/dbcache/dbcache/internal/pgserver"
	"github.com/dbcache/dbcache/ratelimit"
)

// What a crash does to the count, attacked on a server of the test's own
// killed at once (every process, as a power cut stops them) while two
// limiters hammer it, one durable and one with FastCommit:
//
//   - durable: every admission acknowledged before the crash is still
//     counted after it (the key's recovered state is at or after the state
//     each acknowledged admission left);
//   - FastCommit: the admissions forgotten are the last ones (those whose
//     state is after the recovered state), and over the whole run, before
//     and after the crash, no interval holds more than the bound plus the
//     units forgotten, while the admissions the database remembers, with
//     those after the restart, meet the bound itself.
//
// wal_writer_delay is 1 s here (200 ms by default), so the window of
// commits not yet written when the server dies is wider than usual.
func TestCrashForgetsOnlyFastCommits(t *testing.T) {
	t.Parallel()
	cfg, err := pgserver.ConfigFromEnv(os.Getenv)
	require.NoError(t, err)
	cfg.Database = "ratelimit_crash"
	cfg.Settings = map[string]string{"wal_writer_delay": "1000ms"}
	startCtx, cancel := context.WithTimeout(context.Background(), 2*pgserver.DefaultStartTimeout+time.Minute)
	defer cancel()
	srv, err := pgserver.Start(startCtx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_ = srv.Remove(ctx)
	})
	cc, err := pgx.ParseConfig(srv.URL(cfg.Database))
	require.NoError(t, err)
	m, err := migrations.NewFromConnConfig(cc, nil)
	require.NoError(t, err)
	require.NoError(t, m.Up(startCtx))

	pc, err := pgxpool.ParseConfig(srv.URL(cfg.Database))
	require.NoError(t, err)
	pc.MaxConns = 8
	pc.ConnConfig.ConnectTimeout = 5 * time.Second
	// Dial the server's address as of now: it can move across a restart.
	pc.BeforeConnect = func(_ context.Context, c *pgx.ConnConfig) error {
		c.Host, c.Port = srv.Addr()
		return nil
	}
	pool, err := pgxpool.NewWithConfig(startCtx, pc)
	require.NoError(t, err)
	t.Cleanup(pool.Close)

	limit := ratelimit.Limit{Rate: 400, Period: time.Second, Burst: 10}
	kinds := []struct {
		name string
		fast bool
	}{{"durable", false}, {"fast", true}}
	lims := make([]*ratelimit.Limiter, len(kinds))
	for i, k := range kinds {
		lims[i] = setupOn(t, pool, &ratelimit.Config{FastCommit: k.fast, OpTimeout: 2 * time.Second}).lim
	}

	// Before: hammer both keys until each has had a few hundred
	// admissions, then kill the server under them.
	hctx, stop := context.WithCancel(context.Background())
	enough := &threshold{n: 600, reached: make(chan struct{})}
	before := make([]hammerResult, len(kinds))
	var wg sync.WaitGroup
	for i, k := range kinds {
		wg.Go(func() {
			before[i] = hammerUntil(hctx, lims[i], k.name, limit, 4, enough)
		})
	}
	select {
	case <-enough.reached:
	case <-time.After(2 * time.Minute): // a watchdog, not a measurement
		stop()
		wg.Wait()
		t.Fatalf("the hammers never reached %d admissions", enough.n)
	}
	crashCtx, cancelCrash := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancelCrash()
	require.NoError(t, srv.Crash(crashCtx))
	stop()
	wg.Wait()
	require.NoError(t, srv.Restart(crashCtx))
	// The connections the pool kept idle died with the server.
	pool.Reset()

	for i, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			// What the database remembers of the key.
			var recovered int64
			require.NoError(t, pool.QueryRow(crashCtx, `SELECT tat FROM dbcache_rate_limits WHERE key = $1`, k.name).Scan(&recovered))
			var kept, forgotten []admission
			forgottenUnits := 0
			for _, a := range before[i].Admitted {
				if a.Tat <= recovered {
					kept = append(kept, a)
				} else {
					forgotten = append(forgotten, a)
					forgottenUnits += a.N
				}
			}
			if !k.fast {
				require.Empty(t, forgotten, "a crash forgot acknowledged admissions of a durable limiter")
			}
			// The forgotten admissions are a run of the algorithm of their
			// own: at most Burst + the span they cover over T.
			v, _ := boundViolation(forgotten, limit.Burst, limit.Interval())
			require.Empty(t, v, "the forgotten units meet the bound over the time they spanned")
			if len(forgotten) > 0 {
				first, last := forgotten[0].At, forgotten[0].At
				for _, a := range forgotten {
					first, last = min(first, a.At), max(last, a.At)
				}
				t.Logf("%d of %d acknowledged admissions forgotten (%d units), spanning %s before the crash",
					len(forgotten), len(before[i].Admitted), forgottenUnits, time.Duration(last-first))
			} else {
				t.Logf("none of %d acknowledged admissions forgotten", len(before[i].Admitted))
			}

			// After: the key goes on from what the database remembers.
			start := make(chan struct{})
			close(start)
			after := hammer(crashCtx, lims[i], hammerJob{Key: k.name, Limit: limit, Goroutines: 4, Rounds: 100, MaxN: 2}, start)
			require.Empty(t, after.Errors)
			v, _ = boundViolation(append(append([]admission(nil), kept...), after.Admitted...), limit.Burst, limit.Interval())
			require.Empty(t, v, "what the database remembers, and what came after, meets the bound")
			v, _ = boundViolation(append(append([]admission(nil), before[i].Admitted...), after.Admitted...), limit.Burst+forgottenUnits, limit.Interval())
			require.Empty(t, v, "everything admitted meets the bound plus what was forgotten")
		})
	}
}

// threshold closes reached once n admissions have been counted.
type threshold struct {
	n       int64
	count   atomic.Int64
	reached chan struct{}
}

func (th *threshold) add() {
	if th.count.Add(1) == th.n {
		close(th.reached)
	}
}

// hammerUntil runs goroutines checking key until ctx ends, counting
// admissions in admitted; errors (the crash's) end nothing. Only
// acknowledged admissions are returned.
func hammerUntil(ctx context.Context, lim *ratelimit.Limiter, key string, limit ratelimit.Limit, goroutines int, admitted *threshold) hammerResult {
	var (
		mu  sync.Mutex
		res hammerResult
		wg  sync.WaitGroup
	)
	for g := range goroutines {
		wg.Go(func() {
			n := 1 + g%2
			for ctx.Err() == nil {
				got, err := lim.AllowN(ctx, key, limit, n)
				if err != nil || !got.Allowed {
					continue
				}
				at := got.At.UnixNano()
				mu.Lock()
				res.Admitted = append(res.Admitted, admission{At: at, N: n, Tat: at + int64(got.ResetAfter)})
				mu.Unlock()
				admitted.add()
			}
		})
	}
	wg.Wait()
	return res
}
