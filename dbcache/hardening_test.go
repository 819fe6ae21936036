package dbcache_test

// Tests of the promises under production settings: a linguistic default
// collation, a non-default isolation level, a connection that goes silent,
// huge values.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// setupIn is setupConns in a database of the given default collation.
func setupIn(t *testing.T, coll dbtest.Collation, maxConns int32, cfg *dbcache.Config) *testBundle {
	t.Helper()
	s := dbtest.SchemaIn(t, coll)
	s.Migrate(t)
	pc := s.PoolConfig(t)
	pc.MaxConns = maxConns
	return setupOn(t, newPool(t, pc), cfg)
}

// noDeadlock fails the test on a deadlock (40P01) or any other error.
func noDeadlock(t *testing.T, what string, err error) bool {
	t.Helper()
	if err == nil {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "40P01" {
		t.Errorf("%s deadlocked: %v", what, err)
	} else {
		t.Errorf("%s: %v", what, err)
	}
	return false
}

// Statements that lock several rows lock them in one order, the key
// column's, whatever the database's default collation: in an ICU en-US
// database "a" < "aa" < "B", in the key column's "C" order "B" < "a" < "aa".
// Every pair of bulk writers races here; any order mismatch deadlocks
// within a few rounds.
func TestBulkWritesNeverDeadlockAnyCollation(t *testing.T) {
	t.Parallel()
	for _, coll := range dbtest.Collations {
		t.Run(string(coll), func(t *testing.T) {
			t.Parallel()
			b := setupIn(t, coll, 8, nil)
			ctx := ctxT(t)
			set := map[string][]byte{"a": []byte("1"), "aa": []byte("2"), "B": []byte("3"), "b": []byte("4"), "A": []byte("5")}
			del := []string{"a", "B", "A"}
			big := map[string][]byte{}
			for i := range 300 {
				big[fmt.Sprintf("%c%d", "aBcD"[i%4], i)] = []byte("x")
			}
			keys := slices.Collect(maps.Keys(set))
			var incs []*testBundle
			var wg sync.WaitGroup
			for w := range 6 {
				// Each worker's own cache coalesces its Incrs through one
				// slot, so six batches of several keys, each queued in
				// another order, run beside the other writers.
				inc := setupOn(t, b.pool, &dbcache.Config{CoalesceIncrs: 1})
				incs = append(incs, inc)
				wg.Go(func() {
					for round := range 150 {
						var err error
						if round%7 == 6 {
							var incrs sync.WaitGroup
							errs := make([]error, 5)
							for i := range errs {
								incrs.Go(func() {
									_, errs[i] = inc.cache.Incr(ctx, keys[(w+round+i)%len(keys)], 1)
									if errors.Is(errs[i], dbcache.ErrMiss) {
										errs[i] = nil
									}
								})
							}
							incrs.Wait()
							err = errors.Join(errs...)
							if !noDeadlock(t, fmt.Sprintf("worker %d round %d: coalesced incrs", w, round), err) {
								return
							}
							continue
						}
						switch (w + round) % 6 {
						case 0, 1:
							_, err = b.cache.SetMany(ctx, set, dbcache.DefaultTimeout)
						case 2, 3:
							_, err = b.cache.DeleteMany(ctx, del)
						case 4:
							_, err = b.cache.SetMany(ctx, big, dbcache.DefaultTimeout)
						case 5:
							if round%10 == 5 {
								err = b.cache.Clear(ctx)
							} else {
								_, err = b.cache.SetMany(ctx, set, dbcache.ExpiresIn(time.Hour))
							}
						}
						if !noDeadlock(t, fmt.Sprintf("worker %d round %d", w, round), err) {
							return
						}
					}
				})
			}
			wg.Wait()
			batches := int64(0)
			for _, inc := range incs {
				batches += dbcache.CoalescedIncrBatches(inc.cache)
			}
			require.Positive(t, batches, "no Incr batch ran beside the bulk writers")
		})
	}
}

// Clear walks the table in key order too, so it never deadlocks with
// batches that lock in key order. Rows updated many times are spread over
// the heap in an order unlike their keys', which is what a heap-order
// DELETE trips over.
func TestClearNeverDeadlocks(t *testing.T) {
	t.Parallel()
	for _, coll := range dbtest.Collations {
		t.Run(string(coll), func(t *testing.T) {
			t.Parallel()
			b := setupIn(t, coll, 8, nil)
			ctx := ctxT(t)
			keys := make([]string, 400)
			for i := range keys {
				keys[i] = fmt.Sprintf("k%03d", (i*37)%400)
			}
			var wg sync.WaitGroup
			stop := make(chan struct{})
			for w := range 4 {
				wg.Go(func() {
					for round := 0; ; round++ {
						select {
						case <-stop:
							return
						default:
						}
						items := map[string][]byte{}
						for i, k := range keys {
							if (i+w+round)%3 != 0 {
								items[k] = []byte(strconv.Itoa(round))
							}
						}
						var err error
						if w%2 == 0 {
							_, err = b.cache.SetMany(ctx, items, dbcache.DefaultTimeout)
						} else {
							_, err = b.cache.DeleteMany(ctx, keys[(round*7)%300:(round*7)%300+100])
						}
						if !noDeadlock(t, "batch", err) {
							return
						}
					}
				})
			}
			for range 40 {
				if !noDeadlock(t, "clear", b.cache.Clear(ctx)) {
					break
				}
			}
			close(stop)
			wg.Wait()
		})
	}
}

// Clear removes everything, in batches, also from a table larger than one
// batch, and inside a transaction.
func TestClearLargeTable(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	dbtest.Exec(t, b.pool, `INSERT INTO dbcache_entries (key, value, expires)
SELECT 'k' || i, 'v', CASE WHEN i % 2 = 0 THEN NULL ELSE now() + interval '1 hour' END FROM generate_series(1, 25000) AS i`)
	require.NoError(t, b.cache.Clear(ctx))
	require.Equal(t, 0, dbtest.Count(t, b.pool))

	dbtest.Exec(t, b.pool, `INSERT INTO dbcache_entries (key, value, expires) SELECT 'k' || i, 'v', NULL FROM generate_series(1, 12000) AS i`)
	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, b.cache.WithTx(tx).Clear(ctx))
	require.NoError(t, tx.Rollback(ctx))
	require.Equal(t, 12000, dbtest.Count(t, b.pool), "a rolled-back Clear removes nothing")
}

// IncrVersion(k, +1) from version 1 racing DecrVersion(k, 1) from version 2,
// both entries live: each moves one row onto the other's. Each returns
// success or ErrMiss, never a deadlock.
func TestIncrVersionRacingDecrVersion(t *testing.T) {
	t.Parallel()
	b := setupConns(t, 4)
	ctx := ctxT(t)
	v1, v2 := b.cache.WithVersion(1), b.cache.WithVersion(2)
	var moved atomic.Int64
	for round := range 150 {
		require.NoError(t, v1.Set(ctx, "k", []byte("one"), dbcache.DefaultTimeout))
		require.NoError(t, v2.Set(ctx, "k", []byte("two"), dbcache.DefaultTimeout))
		start := make(chan struct{})
		var wg sync.WaitGroup
		for _, op := range []func() (int, error){
			func() (int, error) { return v1.IncrVersion(ctx, "k", 1) },
			func() (int, error) { return v2.DecrVersion(ctx, "k", 1) },
		} {
			wg.Go(func() {
				<-start
				_, err := op()
				if errors.Is(err, dbcache.ErrMiss) {
					return
				}
				if noDeadlock(t, fmt.Sprintf("round %d", round), err) {
					moved.Add(1)
				}
			})
		}
		close(start)
		wg.Wait()
		if t.Failed() {
			return
		}
		// Whatever the interleaving, exactly one live entry is left (two
		// moves in sequence, or one move and one miss, each leave one).
		n := 0
		for _, c := range []*dbcache.Cache{v1, v2} {
			if ok, err := c.HasKey(ctx, "k"); err == nil && ok {
				n++
			}
		}
		require.Equal(t, 1, n, "round %d", round)
	}
	require.Positive(t, moved.Load())
}

// With the session's default isolation at repeatable read or serializable
// (a role or database setting some teams use), every operation keeps its
// documented result: no concurrent Incr is lost or fails with 40001, and of
// concurrent Adds exactly one returns true and the others false.
func TestAnySessionIsolationDefault(t *testing.T) {
	t.Parallel()
	for _, level := range []string{"repeatable read", "serializable"} {
		t.Run(level, func(t *testing.T) {
			t.Parallel()
			s := dbtest.NewSchema(t)
			s.Migrate(t)
			pc := s.PoolConfig(t)
			pc.MaxConns = 8
			pc.ConnConfig.RuntimeParams["default_transaction_isolation"] = level
			for _, fast := range []bool{false, true} {
				b := setupOn(t, newPool(t, pc), &dbcache.Config{FastCommit: fast, KeyPrefix: fmt.Sprint(fast)})
				ctx := ctxT(t)
				require.NoError(t, b.cache.Set(ctx, "n", []byte("0"), dbcache.Forever))
				var wg sync.WaitGroup
				var added atomic.Int64
				for range 20 {
					wg.Go(func() {
						for range 10 {
							if _, err := b.cache.Incr(ctx, "n", 1); err != nil {
								t.Errorf("incr: %v", err)
								return
							}
						}
						ok, err := b.cache.Add(ctx, "lock", []byte("x"), dbcache.DefaultTimeout)
						if err != nil {
							t.Errorf("add: %v", err)
							return
						}
						if ok {
							added.Add(1)
						}
						if _, err := b.cache.SetMany(ctx, map[string][]byte{"a": nil, "b": nil}, dbcache.DefaultTimeout); err != nil {
							t.Errorf("set_many: %v", err)
						}
						if _, err := b.cache.DeleteMany(ctx, []string{"a", "b"}); err != nil {
							t.Errorf("delete_many: %v", err)
						}
						if err := b.cache.Set(ctx, "s", []byte("x"), dbcache.DefaultTimeout); err != nil {
							t.Errorf("set: %v", err)
						}
						if _, err := b.cache.Touch(ctx, "s", dbcache.DefaultTimeout); err != nil {
							t.Errorf("touch: %v", err)
						}
					})
				}
				wg.Wait()
				require.Equal(t, "200", mustGet(t, b.cache, "n"), "fast=%v", fast)
				require.EqualValues(t, 1, added.Load(), "fast=%v", fast)
				exercise(t, b.cache)
			}
		})
	}
}

// Incr of a huge value that is not an integer is ErrNotInteger, decided
// from its length, and the check that tells the miss from the non-integer
// never sends the value back. (It used to convert the whole value to text
// on the server, four times its size, and fail as ErrInvalidKey.)
func TestIncrHugeNonInteger(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	host, port := serverAddr(t, s)
	proxy := dbtest.NewProxy(t, net.JoinHostPort(host, port))
	pc := s.PoolConfig(t)
	pc.ConnConfig.Host, pc.ConnConfig.Port = "127.0.0.1", proxy.Port()
	pc.MaxConns = 2
	b := setupOn(t, newPool(t, pc), nil)
	ctx := ctxT(t)
	const size = 270 << 20
	dbtest.Exec(t, b.pool, `INSERT INTO dbcache_entries (key, value, expires)
SELECT ':1:big', decode(repeat('80', 1024), 'hex'), NULL`)
	// Grow it to 270 MB on the server, so the client never holds it.
	dbtest.Exec(t, b.pool, `UPDATE dbcache_entries SET value = decode(repeat(encode(value, 'hex'), $1::int), 'hex') WHERE key = ':1:big'`, size/1024)
	before := proxy.BytesFromServer()
	_, err := b.cache.Incr(ctx, "big", 1)
	require.ErrorIs(t, err, dbcache.ErrNotInteger)
	require.Less(t, proxy.BytesFromServer()-before, int64(64<<10), "the value came back to the client")
	// 21 bytes, one more than any int64's decimal form, is checked the same way.
	require.NoError(t, b.cache.Set(ctx, "long", []byte("123456789012345678901"), dbcache.DefaultTimeout))
	_, err = b.cache.Incr(ctx, "long", 1)
	require.ErrorIs(t, err, dbcache.ErrNotInteger)
	require.Equal(t, "123456789012345678901", mustGet(t, b.cache, "long"))
}

func serverAddr(t *testing.T, s *dbtest.Schema) (host, port string) {
	t.Helper()
	pc := s.PoolConfig(t)
	return pc.ConnConfig.Host, strconv.Itoa(int(pc.ConnConfig.Port))
}

// Two caller keys that one custom KeyFunc maps to one stored key get two
// independent slices from GetMany: changing one must not change the other.
func TestGetManyIndependentSlices(t *testing.T) {
	t.Parallel()
	fold := func(key, prefix string, version int) string {
		return dbcache.DefaultKeyFunc(string(bytes.ToLower([]byte(key))), prefix, version)
	}
	b := setup(t, &dbcache.Config{KeyFunc: fold})
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "k", []byte("value"), dbcache.DefaultTimeout))
	got, err := b.cache.GetMany(ctx, []string{"k", "K"})
	require.NoError(t, err)
	require.Equal(t, "value", string(got["k"]))
	require.Equal(t, "value", string(got["K"]))
	got["k"][0] = 'X'
	require.Equal(t, "value", string(got["K"]), "the two entries share one backing array")
}

// With CoalesceGets, a batch whose connection goes silent ends when its last
// waiter leaves, and gives its slot back: later Gets work. The proxy drops
// every byte of the batch's connection (TCP stays open); new connections
// work, as when one connection of a pool dies silently.
func TestCoalescedBatchEndsWithItsCallers(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	host, port := serverAddr(t, s)
	proxy := dbtest.NewProxy(t, net.JoinHostPort(host, port))
	pc := s.PoolConfig(t)
	pc.ConnConfig.Host, pc.ConnConfig.Port = "127.0.0.1", proxy.Port()
	pc.MaxConns = 4
	// No operation bound: the waiters' contexts have no deadline, so only
	// their leaving can end the batch.
	b := setupOn(t, newPool(t, pc), &dbcache.Config{CoalesceGets: 1, OpTimeout: -1})
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "k", []byte("v"), dbcache.Forever))

	// A session that holds the table in ACCESS EXCLUSIVE mode makes every
	// read wait, so the slot stays busy while waiters queue behind it.
	admin := s.Pool(t)
	lockTx, err := admin.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = lockTx.Rollback(context.Background()) }()
	_, err = lockTx.Exec(ctx, `LOCK TABLE dbcache_entries IN ACCESS EXCLUSIVE MODE`)
	require.NoError(t, err)

	aCtx, aCancel := context.WithCancel(ctx)
	aDone := make(chan error, 1)
	go func() { _, err := b.cache.Get(aCtx, "k"); aDone <- err }()
	waitFor(t, func() bool { return dbcache.CoalesceInflight(b.cache) == 1 })

	wCtx, wCancel := context.WithCancel(ctx)
	var waiters sync.WaitGroup
	for range 2 {
		waiters.Go(func() { _, _ = b.cache.Get(wCtx, "k") })
	}
	waitFor(t, func() bool { return dbcache.CoalescePending(b.cache) == 2 })
	aCancel()
	require.ErrorIs(t, <-aDone, context.Canceled)

	// The batch now runs its query, and waits on the lock like A did.
	waitFor(t, func() bool {
		var n int
		_ = admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
WHERE wait_event_type = 'Lock' AND query LIKE '%ANY%' AND datname = current_database()`).Scan(&n)
		return n == 1
	})
	proxy.SilenceExisting()
	require.NoError(t, lockTx.Rollback(ctx)) // the answer is sent, and dropped
	wCancel()
	waiters.Wait()

	// Every waiter has left: the batch must have ended and freed its slot.
	getCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	v, err := b.cache.Get(getCtx, "k")
	require.NoError(t, err, "a coalesced Get after the silent batch")
	require.Equal(t, "v", string(v))
	waitFor(t, func() bool { return dbcache.CoalesceInflight(b.cache) == 0 })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition never held")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Against a server that accepts TCP connections and never answers, New and
// every operation return within Config.OpTimeout when the caller's context
// has no deadline (context.Background() used to block forever), and within
// the caller's deadline when it has one.
func TestSilentServerIsBounded(t *testing.T) {
	t.Parallel()
	port := dbtest.SilentListener(t)
	pc, err := pgxpool.ParseConfig(fmt.Sprintf("postgres://postgres@127.0.0.1:%d/x?sslmode=disable", port))
	require.NoError(t, err)
	pool := newPool(t, pc)

	start := time.Now()
	_, err = dbcache.New(context.Background(), pool, &dbcache.Config{OpTimeout: 300 * time.Millisecond})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, time.Since(start), 20*time.Second) // bounded; the figure itself is not the point

	// The default bound applies with no Config at all.
	_, err = dbcache.New(context.Background(), pool, nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	// Operations on a cache whose server has gone silent: through a proxy.
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	host, p := serverAddr(t, s)
	proxy := dbtest.NewProxy(t, net.JoinHostPort(host, p))
	pc2 := s.PoolConfig(t)
	pc2.ConnConfig.Host, pc2.ConnConfig.Port = "127.0.0.1", proxy.Port()
	pc2.MaxConns = 4
	type ctxKey struct{}
	cancelable, cancel := context.WithCancel(context.Background())
	defer cancel()
	parents := map[string]context.Context{
		"background":  context.Background(),
		"cancelable":  cancelable,
		"values-only": context.WithValue(context.Background(), ctxKey{}, 1),
	}
	for _, coalesce := range []int{0, 2} {
		for parentName, bg := range parents {
			// With coalescing, Sets and Incrs through one slot each: the
			// second and third of each queue for a batch.
			cfg := &dbcache.Config{OpTimeout: 300 * time.Millisecond, CoalesceGets: coalesce}
			if coalesce > 0 {
				cfg.CoalesceSets, cfg.CoalesceIncrs = 1, 1
			}
			b := setupOn(t, newPool(t, pc2), cfg)
			require.NoError(t, b.cache.Set(context.Background(), "k", []byte("v"), dbcache.DefaultTimeout))
			proxy.Freeze()
			ops := map[string]func() error{
				"get":      func() error { _, err := b.cache.Get(bg, "k"); return err },
				"set":      func() error { return b.cache.Set(bg, "k", nil, dbcache.DefaultTimeout) },
				"add":      func() error { _, err := b.cache.Add(bg, "k", nil, dbcache.DefaultTimeout); return err },
				"incr":     func() error { _, err := b.cache.Incr(bg, "k", 1); return err },
				"set2":     func() error { return b.cache.Set(bg, "k2", nil, dbcache.DefaultTimeout) },
				"set3":     func() error { return b.cache.Set(bg, "k3", nil, dbcache.DefaultTimeout) },
				"incr2":    func() error { _, err := b.cache.Incr(bg, "k2", 1); return err },
				"incr3":    func() error { _, err := b.cache.Incr(bg, "k", 1); return err },
				"get_many": func() error { _, err := b.cache.GetMany(bg, []string{"k"}); return err },
				"set_many": func() error {
					_, err := b.cache.SetMany(bg, map[string][]byte{"k": nil}, dbcache.DefaultTimeout)
					return err
				},
				"delete_many": func() error { _, err := b.cache.DeleteMany(bg, []string{"k"}); return err },
				"clear":       func() error { return b.cache.Clear(bg) },
				"get_or_set": func() error {
					_, err := b.cache.GetOrSet(bg, "k", nil, dbcache.DefaultTimeout)
					return err
				},
			}
			var wg sync.WaitGroup
			for name, op := range ops {
				wg.Go(func() {
					err := op()
					if !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("coalesce=%d ctx=%s %s on a silent server: want a deadline error, got %v", coalesce, parentName, name, err)
					}
				})
			}
			wg.Wait()
			proxy.Thaw()
		}
	}
	require.NoError(t, cancelable.Err(), "the caller's context is never cancelled by the bound")
}

// Config.Version 0 means the default version 1, as Django's VERSION does;
// WithVersion(0) is version 0 itself, as Django's version=0 argument is.
func TestVersionZero(t *testing.T) {
	t.Parallel()
	b := setup(t, &dbcache.Config{Version: 0})
	ctx := ctxT(t)
	require.Equal(t, 1, b.cache.Version())
	require.Equal(t, ":1:k", b.cache.MakeKey("k"))
	require.Equal(t, ":0:k", b.cache.WithVersion(0).MakeKey("k"))
	require.NoError(t, b.cache.WithVersion(0).Set(ctx, "k", []byte("zero"), dbcache.DefaultTimeout))
	requireMiss(t, b.cache, "k")
	require.Equal(t, "zero", mustGet(t, b.cache.WithVersion(0), "k"))
	// IncrVersion by 0 keeps the entry (Django's DB backend deletes it).
	to, err := b.cache.WithVersion(0).IncrVersion(ctx, "k", 0)
	require.NoError(t, err)
	require.Equal(t, 0, to)
	require.Equal(t, "zero", mustGet(t, b.cache.WithVersion(0), "k"))
	to, err = b.cache.WithVersion(0).DecrVersion(ctx, "k", 0)
	require.NoError(t, err)
	require.Equal(t, 0, to)
	require.Equal(t, "zero", mustGet(t, b.cache.WithVersion(0), "k"))
	_, err = b.cache.IncrVersion(ctx, "k", 0)
	require.ErrorIs(t, err, dbcache.ErrMiss)
}
