package integration_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/migrations"
)

// FastCommit's trade-off, attacked: writes acknowledged with
// synchronous_commit off, then the server stopped cleanly (a fast shutdown
// flushes the WAL: nothing acknowledged is lost) or crashed (kill -9 of
// every server process: recent acknowledged writes may be lost, but each
// whole, never a SetMany batch in part, and the table stays consistent: its
// index and its heap agree).
func TestFastCommitStops(t *testing.T) {
	clean, crashed := startServer(t), startServer(t)
	t.Parallel()
	t.Run("CleanShutdownLosesNothing", func(t *testing.T) {
		t.Parallel()
		testFastCommitStop(t, clean(t), false)
	})
	t.Run("CrashLosesWholeWrites", func(t *testing.T) {
		t.Parallel()
		testFastCommitStop(t, crashed(t), true)
	})
}

func testFastCommitStop(t *testing.T, srv *server, crash bool) {
	cfg := srv.poolConfig(t, srv.db)
	cfg.MaxConns = 4
	pool := dbtest.NewPool(t, cfg)
	m, err := migrations.New(pool, nil)
	require.NoError(t, err)
	require.NoError(t, m.Up(ctxT(t)))
	cache, _ := cacheOn(t, pool, &dbcache.Config{FastCommit: true, DefaultTimeout: dbcache.Forever, OpTimeout: 5 * time.Second})

	const batch = 10
	var (
		mu      sync.Mutex
		sets    = map[string]string{} // acknowledged Sets
		batches []int                 // acknowledged SetMany batches
		next    atomic.Int64
		stop    = make(chan struct{})
		wg      sync.WaitGroup
	)
	for w := range 3 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				if i%2 == 0 {
					k, v := fmt.Sprintf("set:%d:%d", w, i), strconv.Itoa(i)
					if cache.Set(ctx, k, []byte(v), dbcache.Forever) == nil {
						mu.Lock()
						sets[k] = v
						mu.Unlock()
					}
				} else {
					b := int(next.Add(1))
					items := make(map[string][]byte, batch)
					for j := range batch {
						items[fmt.Sprintf("batch:%d:%d", b, j)] = []byte(strconv.Itoa(b))
					}
					if failed, err := cache.SetMany(ctx, items, dbcache.Forever); err == nil && len(failed) == 0 {
						mu.Lock()
						batches = append(batches, b)
						mu.Unlock()
					}
				}
				cancel()
			}
		})
	}
	// Let the writers commit for a while, then stop the server under them.
	for {
		mu.Lock()
		n := len(sets) + len(batches)
		mu.Unlock()
		if n >= 300 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if crash {
		srv.crash(t)
	} else {
		srv.shutdown(t)
	}
	close(stop)
	wg.Wait()
	srv.start(t)

	ctx := ctxT(t)
	var lost int
	mu.Lock()
	defer mu.Unlock()
	for k, v := range sets {
		got, err := cache.Get(ctx, k)
		switch {
		case err == nil:
			require.Equal(t, v, string(got), k)
		case crash && err == dbcache.ErrMiss:
			lost++
		default:
			t.Fatalf("acknowledged set %s: %v", k, err)
		}
	}
	// Every batch in the table, acknowledged or not, is whole.
	rows, err := pool.Query(ctx, `SELECT split_part(key, ':', 4) AS b, count(*) FROM dbcache_entries WHERE key LIKE '%:batch:%' GROUP BY 1`)
	require.NoError(t, err)
	present := map[int]int{}
	for rows.Next() {
		var b string
		var n int
		require.NoError(t, rows.Scan(&b, &n))
		id, err := strconv.Atoi(b)
		require.NoError(t, err)
		present[id] = n
	}
	require.NoError(t, rows.Err())
	for b, n := range present {
		require.Equal(t, batch, n, "batch %d is in the table in part", b)
	}
	for _, b := range batches {
		if present[b] == 0 {
			require.True(t, crash, "acknowledged batch %d lost by a clean shutdown", b)
			lost++
		}
	}
	// The table is consistent: a scan of the key index and of the heap see
	// the same rows.
	var byIndex, byHeap int
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx)
	_, err = tx.Exec(ctx, `SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off`)
	require.NoError(t, err)
	require.NoError(t, tx.QueryRow(ctx, `SELECT count(*) FROM dbcache_entries WHERE key >= ''`).Scan(&byIndex))
	_, err = tx.Exec(ctx, `SET LOCAL enable_seqscan = on; SET LOCAL enable_indexscan = off; SET LOCAL enable_indexonlyscan = off; SET LOCAL enable_bitmapscan = off`)
	require.NoError(t, err)
	require.NoError(t, tx.QueryRow(ctx, `SELECT count(*) FROM dbcache_entries WHERE key >= ''`).Scan(&byHeap))
	require.Equal(t, byHeap, byIndex)
	t.Logf("acknowledged: %d sets, %d batches; lost after the stop: %d", len(sets), len(batches), lost)
}
