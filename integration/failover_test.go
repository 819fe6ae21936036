package integration_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/pgserver"
	"github.com/dbcache/dbcache/nearcache"
	"github.com/dbcache/dbcache/replicas"
)

// A failover as a managed PostgreSQL does one: the primary stopped at
// once (pg_ctl stop -m immediate), its streaming standby promoted
// (pg_ctl promote). The application's DSN names both hosts with
// target_session_attrs=read-write, and nothing of it is rebuilt: the same
// pool, Caches, Culler and near cache carry on. The test checks, row by
// row, which acknowledged writes the promoted server has: with the
// standby synchronous, every one (FastCommit's, which do not wait for the
// standby, are counted apart); asynchronous, it counts the ones lost.
// Fail-open reads and writes run throughout and never see an error.
func TestFailover(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"sync", "async"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			failover(t, mode == "sync")
		})
	}
}

// failoverPair starts a primary of the test's own (wal_level logical,
// for the near cache's feed) and a standby, synchronous if sync.
func failoverPair(t *testing.T, sync bool) (*pgserver.Server, *pgserver.Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*pgserver.DefaultStartTimeout)
	defer cancel()
	p, err := pgserver.Start(ctx, pgserver.Config{Kind: pgserver.Installed, Database: "dbcache_failover",
		Settings: map[string]string{"wal_level": "logical", "max_connections": "40"}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Remove(context.Background()) })
	name := fmt.Sprintf("fo_%d_%d", os.Getpid(), foStandbySeq.Add(1))
	s, err := pgserver.StartStandby(ctx, p, name)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Remove(context.Background()) })
	if sync {
		foSuperExec(t, ctx, p, "ALTER SYSTEM SET synchronous_standby_names = '"+name+"'")
		foSuperExec(t, ctx, p, "SELECT pg_reload_conf()")
		conn := foSuperConn(t, ctx, p)
		defer conn.Close(ctx)
		foEventually(t, ctx, "the standby is synchronous", func() bool {
			var state string
			err := conn.QueryRow(ctx, `SELECT coalesce((SELECT sync_state FROM pg_stat_replication WHERE application_name = $1), '')`, name).Scan(&state)
			return err == nil && state == "sync"
		})
	}
	return p, s
}

// bothHosts is the application's DSN: both servers, the one that takes
// writes picked at each connection.
func bothHosts(p, s *pgserver.Server) string {
	ph, pp := p.Addr()
	sh, sp := s.Addr()
	return fmt.Sprintf("postgres://%s@%s:%d,%s:%d/%s?sslmode=disable&target_session_attrs=read-write&connect_timeout=2",
		pgserver.Superuser, ph, pp, sh, sp, p.Database())
}

func failover(t *testing.T, synchronous bool) {
	p, s := failoverPair(t, synchronous)
	ctx := foCtx(t)
	schema := foNewSchema(t, p)
	pool := foPoolOnN(t, bothHosts(p, s), schema, 6)
	require.NoError(t, nearcache.Setup(ctx, pool, nil))
	foCaughtUp(t, ctx, foPoolOn(t, p.URL(""), schema), foPoolOn(t, s.URL(""), schema))

	const opTimeout = time.Second
	acked, err := dbcache.New(ctx, pool, &dbcache.Config{OpTimeout: opTimeout})
	require.NoError(t, err)
	fast, err := dbcache.New(ctx, pool, &dbcache.Config{OpTimeout: opTimeout, FastCommit: true})
	require.NoError(t, err)
	open, err := dbcache.New(ctx, pool, &dbcache.Config{OpTimeout: opTimeout, FailOpen: true})
	require.NoError(t, err)
	near, err := nearcache.New(ctx, acked, pool, &nearcache.Config{MaxStaleness: 500 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { _ = near.Close() })
	// A router over the same DSN as its primary, with the standby as its
	// standby: once promoted, the standby is the primary and serves no read
	// as a standby.
	rt := foRouter(t, pool, []*pgxpool.Pool{foPoolOn(t, s.URL(""), schema)}, &replicas.Config{RefreshInterval: 10 * time.Millisecond})
	var passes atomic.Int64
	culler, err := culling.New(pool, &culling.Config{Interval: 50 * time.Millisecond, MaxEntries: culling.NoLimit,
		OnProgress: func(pr culling.Progress) {
			if pr.Phase == culling.PhaseDone {
				passes.Add(1)
			}
		}})
	require.NoError(t, err)
	require.NoError(t, culler.Start(ctx))
	t.Cleanup(func() { _ = culler.Stop(context.Background()) })

	// The near cache holds a copy before the failover.
	require.NoError(t, near.Set(ctx, "near", []byte("before"), dbcache.Forever))
	foEventually(t, ctx, "the near cache keeps a copy", func() bool {
		v, err := near.Get(ctx, "near")
		return err == nil && string(v) == "before" && near.Stats().Entries > 0
	})

	// Writers: each write's key is its own, so the check is row by row.
	var (
		mu            sync.Mutex
		ackedKeys     []string
		fastKeys      []string
		openErrors    atomic.Int64
		stopWriters   = make(chan struct{})
		writers       sync.WaitGroup
		firstAfter    [2]atomic.Int64 // acked, open: ns after the promotion of the first success
		promoted      atomic.Int64    // UnixNano once promoted
		failedDuring  atomic.Int64
		failedAfter   atomic.Int64 // writes begun after the promotion that failed
		openSucceeded atomic.Int64
	)
	for g := range 2 {
		writers.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stopWriters:
					return
				default:
				}
				key := fmt.Sprintf("a%d-%d", g, i)
				began := time.Now().UnixNano()
				if err := acked.Set(ctx, key, []byte(key), dbcache.Forever); err != nil {
					failedDuring.Add(1)
					if at := promoted.Load(); at > 0 && began > at {
						failedAfter.Add(1)
					}
					time.Sleep(5 * time.Millisecond)
					continue
				}
				if at := promoted.Load(); at > 0 {
					firstAfter[0].CompareAndSwap(0, time.Now().UnixNano()-at)
				}
				mu.Lock()
				ackedKeys = append(ackedKeys, key)
				mu.Unlock()
			}
		})
	}
	writers.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stopWriters:
				return
			default:
			}
			key := "f" + strconv.Itoa(i)
			if err := fast.Set(ctx, key, []byte(key), dbcache.Forever); err != nil {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			mu.Lock()
			fastKeys = append(fastKeys, key)
			mu.Unlock()
		}
	})
	writers.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stopWriters:
				return
			default:
			}
			key := "o" + strconv.Itoa(i%50)
			err := open.Set(ctx, key, []byte("v"), dbcache.Forever)
			if err == nil {
				_, err = open.Get(ctx, key)
				if errors.Is(err, dbcache.ErrMiss) {
					err = nil
				}
			}
			if err != nil {
				openErrors.Add(1)
				t.Errorf("fail-open caller saw an error: %v", err)
			} else if at := promoted.Load(); at > 0 {
				if openSucceeded.Add(1) == 1 {
					firstAfter[1].Store(time.Now().UnixNano() - at)
				}
			}
			time.Sleep(time.Millisecond)
		}
	})
	foEventually(t, ctx, "writes flow", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(ackedKeys) > 200 && len(fastKeys) > 100
	})
	passesBefore := passes.Load()

	require.NoError(t, p.StopImmediate(ctx))
	stopped := time.Now()
	require.NoError(t, s.Promote(ctx))
	promoted.Store(time.Now().UnixNano())
	t.Logf("stopped to promoted: %v", time.Since(stopped))
	foEventually(t, ctx, "acknowledged writes resume", func() bool { return firstAfter[0].Load() > 0 })
	foEventually(t, ctx, "fail-open writes resume", func() bool { return openSucceeded.Load() > 0 })
	foEventually(t, ctx, "the culler passes on the promoted server", func() bool { return passes.Load() > passesBefore+2 })
	mu.Lock()
	n := len(ackedKeys)
	mu.Unlock()
	foEventually(t, ctx, "more writes after", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(ackedKeys) > n+100
	})
	close(stopWriters)
	writers.Wait()
	t.Logf("first acknowledged write %v after the promotion, first fail-open success %v after; %d writes failed during the switch, %d of them begun after the promotion",
		time.Duration(firstAfter[0].Load()), time.Duration(firstAfter[1].Load()), failedDuring.Load(), failedAfter.Load())
	require.Zero(t, openErrors.Load())
	// After the promotion a write fails only on a pooled connection to the
	// old primary, each of which fails once and is discarded.
	require.LessOrEqual(t, failedAfter.Load(), int64(pool.Config().MaxConns), "writes failing after the promotion")

	// Row by row, on the promoted server.
	ss := foPoolOn(t, s.URL(""), schema)
	lost := missing(t, ctx, ss, ackedKeys)
	lostFast := missing(t, ctx, ss, fastKeys)
	t.Logf("%s: %d of %d acknowledged writes lost, %d of %d FastCommit writes lost",
		map[bool]string{true: "synchronous", false: "asynchronous"}[synchronous], len(lost), len(ackedKeys), len(lostFast), len(fastKeys))
	if synchronous {
		require.Empty(t, lost, "an acknowledged write lost with a synchronous standby")
	}

	// The near cache: its feed's slot went with the old primary; it
	// resubscribed on the new one, and a change made elsewhere reaches it.
	foEventually(t, ctx, "the feed resubscribes", func() bool { return near.Stats().FeedUp && near.Stats().FeedRestarts > 0 })
	other, err := dbcache.New(ctx, ss, nil)
	require.NoError(t, err)
	require.NoError(t, other.Set(ctx, "near", []byte("after"), dbcache.Forever))
	foEventually(t, ctx, "the near cache sees the new primary's change", func() bool {
		v, err := near.Get(ctx, "near")
		return err == nil && string(v) == "after"
	})
	t.Logf("near cache: %+v", near.Stats())

	// The same Cache's loader runs on the promoted server.
	loads := 0
	v, err := acked.GetOrSetFunc(ctx, "loaded", func(context.Context) ([]byte, error) {
		loads++
		return []byte("made"), nil
	}, dbcache.Forever)
	require.NoError(t, err)
	require.Equal(t, "made", string(v))
	require.Equal(t, 1, loads)
	// The router reads the promoted server as its primary.
	// It learns of the promotion at its next sample.
	sampleErrors := rt.Stats().SampleErrors
	foEventually(t, ctx, "the router samples the promoted standby", func() bool {
		_, err := rt.Get(ctx, "loaded")
		require.NoError(t, err)
		return rt.Stats().SampleErrors > sampleErrors
	})
	before := rt.Stats()
	for range 20 {
		v, err := rt.Get(ctx, "loaded")
		require.NoError(t, err)
		require.Equal(t, "made", string(v))
	}
	require.Equal(t, before.StandbyReads, rt.Stats().StandbyReads, "a promoted standby serves no read as a standby: %+v then %+v", before, rt.Stats())
	res, err := culler.RunOnce(ctx)
	require.NoError(t, err)
	t.Logf("culler pass after: %+v", res)
}

// missing returns the keys whose row, holding the key as its value, the
// server lacks.
func missing(t *testing.T, ctx context.Context, pool *pgxpool.Pool, keys []string) []string {
	t.Helper()
	c, err := dbcache.New(ctx, pool, nil)
	require.NoError(t, err)
	var lost []string
	for chunk := range slices.Chunk(keys, 500) {
		m, err := c.GetMany(ctx, chunk)
		require.NoError(t, err)
		for _, k := range chunk {
			if string(m[k]) != k {
				lost = append(lost, k)
			}
		}
	}
	return lost
}

// The culler's single-runner guarantee across a failover: a pass holds
// its lock in a transaction on the old primary and runs its batches on a
// second connection to the same server, so when that server goes, the
// pass goes with it; it cannot go on against the promoted one, where
// another culler's pass now takes the lock. Here one culler's pass is held
// mid-pass (its progress hook blocks) over expired rows while a second
// culler is skipped; after the failover the first pass fails having
// removed nothing more, and only then does the second run, and remove
// them.
func TestCullerAcrossFailover(t *testing.T) {
	t.Parallel()
	p, s := failoverPair(t, true)
	ctx := foCtx(t)
	schema := foNewSchema(t, p)
	pool := foPoolOnN(t, bothHosts(p, s), schema, 6)
	c, err := dbcache.New(ctx, pool, nil)
	require.NoError(t, err)
	for i := range 200 {
		require.NoError(t, c.Set(ctx, "k"+strconv.Itoa(i), []byte("v"), dbcache.ExpiresIn(time.Millisecond)))
	}
	count := func(pool *pgxpool.Pool) int {
		var n int
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM dbcache_entries`).Scan(&n))
		return n
	}
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	a, err := culling.New(pool, &culling.Config{BatchSize: 10, OnProgress: func(culling.Progress) {
		once.Do(func() {
			close(held)
			<-release
		})
	}})
	require.NoError(t, err)
	b, err := culling.New(pool, &culling.Config{BatchSize: 10})
	require.NoError(t, err)
	type result struct {
		r   *culling.PassResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := a.RunOnce(ctx)
		done <- result{r, err}
	}()
	<-held
	r, err := b.RunOnce(ctx)
	require.NoError(t, err)
	require.True(t, r.Skipped, "one culler at a time")
	// The held pass may have removed a batch before its hook first ran;
	// its batches commit without waiting for the standby, so the promoted
	// server may or may not have that. From the promotion on, it removes
	// nothing there.
	require.NoError(t, p.StopImmediate(ctx))
	require.NoError(t, s.Promote(ctx))
	ss := foPoolOn(t, s.URL(""), schema)
	held0 := count(ss)
	close(release)
	ra := <-done
	require.Error(t, ra.err, "the held pass ends with its server")
	t.Logf("the held pass: %v", ra.err)
	require.Equal(t, held0, count(ss), "the held pass removed nothing on the promoted server")
	require.Positive(t, held0)
	foEventually(t, ctx, "the other culler runs on the promoted server", func() bool {
		r, err := b.RunOnce(ctx)
		return err == nil && !r.Skipped
	})
	require.Zero(t, count(ss))
}
