package culling_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/migrations"
)

// NoteWrites, the cache's synchronous OnWrite hook, never blocks, even
// while the worker is stuck in a pass (here in an OnProgress that waits)
// and nudges pile up: the write path never waits for the culler.
func TestNoteWritesNeverBlocks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	insert(t, b.pool, "old", 10, "now() - interval '1 minute'")
	stuck, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	c, _ := newCuller(t, b.pool, &culling.Config{NudgeEvery: 1, Interval: time.Hour, OnProgress: func(culling.Progress) {
		once.Do(func() { close(stuck); <-release })
	}})
	require.NoError(t, c.Start(context.Background()))
	waitFor(t, stuck)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for range 10_000 {
					c.NoteWrites(1)
				}
			})
		}
		wg.Wait()
	}()
	waitFor(t, done) // all 80,000 calls returned while the pass is stuck
	close(release)
}

// Rows keep expiring, and being written already expired, while a pass
// sweeps: the sweep still ends, having removed what had expired at the
// pass's start (by the database's clock), and leaves what expired after
// it to the next pass.
func TestSweepEndsWhileRowsExpire(t *testing.T) {
	t.Parallel()
	b := setup(t)
	insert(t, b.pool, "old", 5000, "now() - interval '1 hour' + g * interval '1 ms'")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var written atomic.Int64
	writers := readCommitted(t, b.schema)
	for w := range 2 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				// Expiring within milliseconds, and already expired a
				// little: both land inside the sweep's range or just
				// after it, as the pass runs.
				_, err := writers.Exec(context.Background(), `INSERT INTO `+migrations.Table+` (key, value, expires)
					VALUES ($1, '\x00', now() + interval '5 ms'), ($2, '\x00', now() - interval '1 ms')`,
					fmt.Sprintf("soon%d_%d", w, i), fmt.Sprintf("just%d_%d", w, i))
				if err != nil {
					return
				}
				written.Add(2)
			}
		})
	}
	c, _ := newCuller(t, b.pool, &culling.Config{BatchSize: 50, MaxEntries: culling.NoLimit})
	res, err := c.RunOnce(context.Background())
	close(stop)
	wg.Wait()
	require.NoError(t, err)
	require.GreaterOrEqual(t, res.ExpiredRemoved, int64(5000), "everything that had expired at the start")
	var after int64
	require.NoError(t, b.pool.QueryRow(context.Background(), "SELECT count(*) FROM "+migrations.Table+
		" WHERE expires <= $1", res.StartedAt).Scan(&after))
	require.Zero(t, after, "nothing that had expired at the pass's start is left")
	t.Logf("%d rows written during the pass", written.Load())
}

// No pass takes a lock on the table stronger than ROW EXCLUSIVE, so no
// cache read or write ever queues behind a table lock of the culler's:
// CullAll, which empties the table, deletes in batches (a TRUNCATE would
// take ACCESS EXCLUSIVE and wait for the reader's open transaction below),
// and every lock the pass's sessions hold on the table mid-pass is ACCESS
// SHARE or ROW EXCLUSIVE.
func TestNoStrongTableLocks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	insert(t, b.pool, "k", 3000, "now() + g * interval '1 second'")
	insert(t, b.pool, "n", 500, "NULL")
	// A reader with an open transaction holds ACCESS SHARE all along, and
	// its snapshot.
	reader, err := b.pool.Acquire(ctx)
	require.NoError(t, err)
	defer reader.Release()
	tx, err := reader.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, "SELECT count(*) FROM "+migrations.Table)
	require.NoError(t, err)

	app := "culler-locks-" + b.schema.Name
	cfg := b.schema.PoolConfig(t)
	cfg.ConnConfig.RuntimeParams["application_name"] = app
	pool := dbtest.NewPool(t, cfg)
	// A poller records every lock the culler's sessions hold on the table
	// while the pass runs.
	var modes sync.Map
	stop := make(chan struct{})
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		for {
			select {
			case <-stop:
				return
			default:
			}
			rows, err := b.pool.Query(ctx, `SELECT l.mode FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
				WHERE a.application_name = $1 AND l.relation = to_regclass($2)`, app, b.schema.Name+"."+migrations.Table)
			if err != nil {
				continue
			}
			ms, _ := pgx.CollectRows(rows, pgx.RowTo[string])
			for _, m := range ms {
				modes.Store(m, true)
			}
		}
	}()
	c, _ := newCuller(t, pool, &culling.Config{BatchSize: 10, MaxEntries: 100, CullFrequency: culling.CullAll})
	res := runOnce(t, c)
	close(stop)
	<-polled
	require.EqualValues(t, 3500, res.Culled)
	var n int
	require.NoError(t, tx.QueryRow(ctx, "SELECT count(*) FROM "+migrations.Table).Scan(&n))
	require.Equal(t, 3500, n, "the reader's snapshot still sees every row: it was never waited out")
	_, seen := modes.Load("RowExclusiveLock")
	require.True(t, seen, "the poller saw the batches' locks")
	modes.Range(func(m, _ any) bool {
		require.Contains(t, []string{"AccessShareLock", "RowExclusiveLock"}, m)
		return true
	})
}

// The cull's DELETE locks rows in key order, as dbcache's own statements
// do, so culling the front of eviction order while writers run SetMany and
// DeleteMany over the same rows, their keys in random orders, deadlocks
// neither: no 40P01 on either side, and no pass fails.
func TestNoDeadlockWithBulkWriters(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	cache, err := dbcache.New(ctx, readCommitted(t, b.schema), nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = cache.Close() })
	c, _ := newCuller(t, b.pool, &culling.Config{BatchSize: 100, MaxEntries: 500, CullFrequency: 100})
	const rows = 4000
	keysOf := func(rng *rand.Rand) []string {
		ks := make([]string, 50)
		for i := range ks {
			ks[i] = strconv.Itoa(rng.IntN(rows))
		}
		return ks
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 11))
			for {
				select {
				case <-stop:
					return
				default:
				}
				items := map[string][]byte{}
				for _, k := range keysOf(rng) {
					items[k] = []byte("v")
				}
				if _, err := cache.SetMany(ctx, items, dbcache.ExpiresIn(time.Minute)); err != nil {
					errs <- err
					return
				}
				if _, err := cache.DeleteMany(ctx, keysOf(rng)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for i := range 8 {
		items := map[string][]byte{}
		for k := range rows {
			items[strconv.Itoa(k)] = []byte("v")
		}
		_, err := cache.SetMany(ctx, items, dbcache.ExpiresIn(time.Duration(i+1)*time.Minute))
		require.NoError(t, err)
		_, err = c.RunOnce(ctx)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			t.Fatalf("pass %d failed with SQLSTATE %s: %v", i, pgErr.Code, err)
		}
		require.NoError(t, err, "pass %d", i)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

// Two cache tables, in two schemas of one database, have two culler locks:
// a pass holding one table's lock never makes the other table's pass skip.
func TestTwoTablesTwoLocks(t *testing.T) {
	t.Parallel()
	a, other := setup(t), setup(t)
	insert(t, a.pool, "old", 20, "now() - interval '1 minute'")
	insert(t, other.pool, "old", 20, "now() - interval '1 minute'")
	inPass, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	ca, _ := newCuller(t, a.pool, &culling.Config{BatchSize: 5, OnProgress: func(culling.Progress) {
		once.Do(func() { close(inPass); <-release })
	}})
	done := make(chan error, 1)
	go func() { _, err := ca.RunOnce(context.Background()); done <- err }()
	waitFor(t, inPass)
	cb, _ := newCuller(t, other.pool, nil)
	res := runOnce(t, cb) // not skipped while a's pass holds a's lock
	require.EqualValues(t, 20, res.ExpiredRemoved)
	close(release)
	require.NoError(t, waitFor(t, done))
}

// Start's check is bounded even on a server that stops answering, with a
// context that has no deadline: it returns an error (after its own 10 s
// bound) instead of hanging, and starts no worker.
func TestStartOnSilentServer(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfg := b.schema.PoolConfig(t)
	p := dbtest.NewProxy(t, net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port))))
	cfg.ConnConfig.Host, cfg.ConnConfig.Port = "127.0.0.1", p.Port()
	pool := dbtest.NewPool(t, cfg)
	require.NoError(t, pool.Ping(context.Background())) // a connection is open
	c, _ := newCuller(t, pool, nil)
	p.Freeze()
	defer p.Thaw()
	done := make(chan error, 1)
	go func() { done <- c.Start(context.Background()) }()
	err := waitFor(t, done)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.False(t, c.Health().Running)
}
