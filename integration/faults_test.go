package integration_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/migrations"
)

// opTimeout is every operation's deadline under load. It is a backstop, not
// a time bound the tests assert: on a loaded machine a healthy operation can
// take seconds (a commit waits for its fsync), so it is generous. What the
// tests assert instead is causal: an operation started while the server is
// down returns (with an error) before the server comes back, so it never
// needed the server to give up; one stuck on a lock returns while the lock is
// still held, so the statement or the context, not the lock going away,
// ended it.
const opTimeout = 30 * time.Second

// hangGuard bounds a wait for something that must happen however loaded the
// machine is; only a real hang trips it.
const hangGuard = 2 * time.Minute

// TestFaultServerStopped stops the server under a mixed load, twice: a clean
// fast shutdown and a crash (SIGKILL, no checkpoint). While it is down every
// operation fails, and returns before the server is back; when it is back the
// same pool serves again with nobody resetting it; and every write
// acknowledged before, during or after the outage is there.
func TestFaultServerStopped(t *testing.T) {
	cases := []struct {
		name   string
		stop   func(*server, *testing.T)
		server func(*testing.T) *server
	}{
		{name: "FastShutdown", stop: (*server).shutdown},
		{name: "Crash", stop: (*server).crash},
	}
	for i := range cases {
		cases[i].server = startServer(t)
	}
	t.Parallel()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testServerStopped(t, tc.server(t), tc.stop)
		})
	}
}

func testServerStopped(t *testing.T, srv *server, stop func(*server, *testing.T)) {
	cfg := srv.poolConfig(t, srv.db)
	cfg.MaxConns = 8
	pool := dbtest.NewPool(t, cfg)
	m, err := migrations.New(pool, nil)
	require.NoError(t, err)
	require.NoError(t, m.Up(ctxT(t)))
	cache, _ := cacheOn(t, pool, &dbcache.Config{DefaultTimeout: dbcache.Forever})

	const writers = 4
	const (
		phaseUp         = iota
		phaseDown       // stopped; operations must fail and return
		phaseRestarting // draining phaseDown's operations, then starting
		phaseBack
		phases
	)
	var (
		phase      atomic.Int32
		okIn       [phases]atomic.Int64 // acknowledged operations per phase
		errIn      [phases]atomic.Int64 // failed operations per phase
		inFlight   [phases]atomic.Int64 // running operations per phase they started in
		slowest    atomic.Int64         // the longest operation, in nanoseconds, for the log
		mu         sync.Mutex
		acked      = map[string]string{} // key -> value of acknowledged Sets
		incrAcked  [writers]int64        // acknowledged increments per counter
		incrUnsure [writers]int64        // increments whose outcome is unknown
		wg         sync.WaitGroup
		quit       = make(chan struct{})
	)
	// do runs one operation under opTimeout and counts its outcome in the
	// phase it started in. No operation may hang, whatever the server does.
	do := func(op func(ctx context.Context) error) error {
		p := phase.Load()
		inFlight[p].Add(1)
		defer inFlight[p].Add(-1)
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		start := time.Now()
		err := op(ctx)
		if d := int64(time.Since(start)); d > slowest.Load() {
			slowest.Store(d) // racy max: only for the log
		}
		if err != nil {
			errIn[p].Add(1)
			if p == phaseUp && phase.Load() == phaseUp {
				t.Errorf("operation failed while the server was up: %v", err)
			}
			return err
		}
		okIn[p].Add(1)
		return nil
	}
	for w := range writers {
		counter := "counter-" + strconv.Itoa(w)
		require.NoError(t, cache.Set(ctxT(t), counter, []byte("0"), dbcache.Forever))
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-quit:
					return
				default:
				}
				key, val := fmt.Sprintf("w%d-%d", w, i), fmt.Sprintf("value %d of writer %d", i, w)
				var err error
				switch i % 3 {
				case 0, 1:
					err = do(func(ctx context.Context) error { return cache.Set(ctx, key, []byte(val), dbcache.Forever) })
					if err == nil {
						mu.Lock()
						acked[key] = val
						mu.Unlock()
					}
				case 2:
					err = do(func(ctx context.Context) error { _, err := cache.Incr(ctx, counter, 1); return err })
					mu.Lock()
					if err == nil {
						incrAcked[w]++
					} else {
						incrUnsure[w]++
					}
					mu.Unlock()
				}
				if err != nil {
					// Pace the retries of a down server; no synchronisation
					// depends on this.
					time.Sleep(20 * time.Millisecond)
				}
			}
		})
	}
	// A reader that reads back what was acknowledged.
	wg.Go(func() {
		for {
			select {
			case <-quit:
				return
			default:
			}
			mu.Lock()
			keys := slices.Collect(maps.Keys(acked))
			mu.Unlock()
			if len(keys) > 50 {
				keys = keys[:50]
			}
			var got map[string][]byte
			if err := do(func(ctx context.Context) (err error) { got, err = cache.GetMany(ctx, keys); return err }); err != nil {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			if len(got) != len(keys) {
				t.Errorf("get_many of %d acknowledged keys found %d", len(keys), len(got))
			}
		}
	})

	waitFor(t, "load while up", func() bool { return okIn[phaseUp].Load() >= 150 })
	phase.Store(phaseDown)
	stop(srv, t)
	waitFor(t, "errors while down", func() bool { return errIn[phaseDown].Load() >= 3*writers })
	// Every operation that started while the server was down returns while
	// it is still down: none waits for it to come back.
	phase.Store(phaseRestarting)
	waitFor(t, "the operations started while the server was down to return before it is back",
		func() bool { return inFlight[phaseDown].Load() == 0 })
	srv.start(t)
	phase.Store(phaseBack)
	// The pool is the same one; it must find its way back by itself.
	waitFor(t, "load after the restart", func() bool { return okIn[phaseBack].Load() >= 150 })
	close(quit)
	wg.Wait()
	t.Logf("up: %d ok; down: %d ok, %d errors; restarting: %d ok, %d errors; back: %d ok, %d errors; slowest operation %v",
		okIn[phaseUp].Load(), okIn[phaseDown].Load(), errIn[phaseDown].Load(), okIn[phaseRestarting].Load(), errIn[phaseRestarting].Load(),
		okIn[phaseBack].Load(), errIn[phaseBack].Load(), time.Duration(slowest.Load()))

	// Healthy again: a run of operations with no error at all.
	ctx := ctxT(t)
	for i := range 50 {
		_, err := cache.Get(ctx, "w0-"+strconv.Itoa(i))
		if !errors.Is(err, dbcache.ErrMiss) {
			require.NoError(t, err)
		}
	}
	// Every acknowledged write is there, with its value.
	got := scan(t, pool)
	for k, v := range acked {
		r, ok := got[":1:"+k]
		require.True(t, ok, "acknowledged write %s lost", k)
		require.Equal(t, v, string(r.value), "acknowledged write %s", k)
	}
	for w := range writers {
		n, err := strconv.ParseInt(string(got[":1:counter-"+strconv.Itoa(w)].value), 10, 64)
		require.NoError(t, err)
		require.GreaterOrEqual(t, n, incrAcked[w], "no acknowledged increment of counter %d lost", w)
		require.LessOrEqual(t, n, incrAcked[w]+incrUnsure[w], "no increment of counter %d applied that was never sent", w)
	}
	require.Len(t, got, len(acked)+writers+countUnacked(got, acked), "nothing but what the writers sent")
}

// countUnacked counts rows of writes that failed (their outcome unknown: the
// commit may have landed before the connection broke) and checks each holds
// the value its writer sent.
func countUnacked(got map[string]row, acked map[string]string) int {
	n := 0
	for k, r := range got {
		key := strings.TrimPrefix(k, ":1:")
		if _, ok := acked[key]; ok || strings.HasPrefix(key, "counter-") {
			continue
		}
		var w, i int
		if _, err := fmt.Sscanf(key, "w%d-%d", &w, &i); err == nil && string(r.value) == fmt.Sprintf("value %d of writer %d", i, w) {
			n++
		}
	}
	return n
}

// waitFor polls cond until it holds, failing after hangGuard.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for !cond() {
		if time.Now().After(deadline) {
			require.FailNow(t, "timed out waiting for "+what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// eventually retries f until it succeeds, failing after hangGuard.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	var err error
	waitFor(t, what, func() bool {
		if err = f(); err != nil {
			t.Logf("%s: %v (retrying)", what, err)
			time.Sleep(50 * time.Millisecond)
			return false
		}
		return true
	})
}

// backend is one server process, as pg_stat_activity shows it.
type backend struct {
	pid       int32
	state     string
	waitEvent string
	wrote     bool // it has a transaction id: it has written rows
}

// backends lists the server processes whose application_name is app.
func backends(t *testing.T, admin *pgxpool.Pool, app string) []backend {
	t.Helper()
	rows, err := admin.Query(ctxT(t), `SELECT pid, coalesce(state, ''), coalesce(wait_event_type, ''), backend_xid IS NOT NULL
		FROM pg_stat_activity WHERE application_name = $1`, app)
	require.NoError(t, err)
	var out []backend
	for rows.Next() {
		var b backend
		require.NoError(t, rows.Scan(&b.pid, &b.state, &b.waitEvent, &b.wrote))
		out = append(out, b)
	}
	require.NoError(t, rows.Err())
	return out
}

// waitBackend waits until a backend of app satisfies cond and returns it.
func waitBackend(t *testing.T, admin *pgxpool.Pool, app string, cond func(backend) bool) backend {
	t.Helper()
	var found backend
	waitFor(t, "a backend of "+app, func() bool {
		for _, b := range backends(t, admin, app) {
			if cond(b) {
				found = b
				return true
			}
		}
		return false
	})
	return found
}

// waitIdle waits until no backend of app is running a statement: a
// cancelled statement has really stopped on the server.
func waitIdle(t *testing.T, admin *pgxpool.Pool, app string) {
	t.Helper()
	waitFor(t, app+" to go idle", func() bool {
		for _, b := range backends(t, admin, app) {
			if b.state == "active" {
				return false
			}
		}
		return true
	})
}

// faultBundle is a cache whose connections carry a unique application_name,
// so an admin pool can find, watch and kill its backends on the shared server.
type faultBundle struct {
	app   string
	admin *pgxpool.Pool
	cache *dbcache.Cache
	pool  *pgxpool.Pool
}

func setupFault(t *testing.T, params map[string]string) *faultBundle {
	t.Helper()
	sc := sharedSchema(t)
	b := &faultBundle{app: "fault-" + sc.Name, admin: sc.Pool(t)}
	cfg := sc.PoolConfig(t)
	cfg.ConnConfig.RuntimeParams["application_name"] = b.app
	maps.Copy(cfg.ConnConfig.RuntimeParams, params)
	b.pool = dbtest.NewPool(t, cfg)
	b.cache, _ = cacheOn(t, b.pool, &dbcache.Config{DefaultTimeout: dbcache.Forever})
	return b
}

// lockKey holds a row lock on key's entry, in a transaction of the admin
// pool, until the returned release is called (or the test ends).
func (b *faultBundle) lockKey(t *testing.T, key string) (release func()) {
	t.Helper()
	ctx := ctxT(t)
	tx, err := b.admin.Begin(ctx)
	require.NoError(t, err)
	tag, err := tx.Exec(ctx, `SELECT 1 FROM dbcache_entries WHERE key = $1 FOR UPDATE`, b.cache.MakeKey(key))
	require.NoError(t, err)
	require.EqualValues(t, 1, tag.RowsAffected(), "lock %s: the entry must exist", key)
	var once sync.Once
	release = func() { once.Do(func() { require.NoError(t, tx.Rollback(context.Background())) }) }
	t.Cleanup(release)
	return release
}

// A backend killed in the middle of set_many, after it has written half the
// batch and while it waits on the other half: none of the batch is stored,
// the entry it was about to overwrite keeps its value, and the pool goes on.
func TestFaultBackendKilledMidSetMany(t *testing.T) {
	t.Parallel()
	b := setupFault(t, nil)
	ctx := ctxT(t)

	items := map[string][]byte{}
	for i := range 1000 {
		items[fmt.Sprintf("k-%04d", i)] = []byte("new " + strconv.Itoa(i))
	}
	require.NoError(t, b.cache.Set(ctx, "k-0500", []byte("before"), dbcache.Forever))
	release := b.lockKey(t, "k-0500")

	type result struct {
		failed []string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		failed, err := b.cache.SetMany(ctx, items, dbcache.Forever)
		done <- result{failed, err}
	}()
	// Rows are written in key order: k-0000…k-0499 are in, k-0500 waits.
	victim := waitBackend(t, b.admin, b.app, func(be backend) bool { return be.waitEvent == "Lock" && be.wrote })
	var killed bool
	require.NoError(t, b.admin.QueryRow(ctx, `SELECT pg_terminate_backend($1)`, victim.pid).Scan(&killed))
	require.True(t, killed)
	res := <-done
	require.Error(t, res.err, "set_many whose backend was killed")
	require.ElementsMatch(t, slices.Collect(maps.Keys(items)), res.failed, "every key is reported failed")
	release()

	got := scan(t, b.pool)
	require.Len(t, got, 1, "none of the batch was stored")
	require.Equal(t, "before", string(got[":1:k-0500"].value))

	// The pool replaced the dead connection: the same batch now goes in whole.
	failed, err := b.cache.SetMany(ctx, items, dbcache.Forever)
	require.NoError(t, err)
	require.Empty(t, failed)
	got = scan(t, b.pool)
	require.Len(t, got, len(items))
	for k, v := range items {
		require.Equal(t, string(v), string(got[":1:"+k].value))
	}
}

// Backends killed at whatever point a large set_many has reached: each batch
// is stored whole or not at all, and one that reported success is whole.
func TestFaultBackendKilledSetManyAnywhere(t *testing.T) {
	t.Parallel()
	b := setupFault(t, nil)
	ctx := ctxT(t)
	const batches, size = 6, 3000
	value := []byte(strings.Repeat("v", 200))

	for n := range batches {
		items := map[string][]byte{}
		for i := range size {
			items[fmt.Sprintf("b%d-%05d", n, i)] = value
		}
		done := make(chan error, 1)
		go func() {
			_, err := b.cache.SetMany(ctx, items, dbcache.Forever)
			done <- err
		}()
		// Kill the first time the statement is seen running, wherever it is.
		var err error
	poll:
		for {
			select {
			case err = <-done:
				break poll
			default:
			}
			for _, be := range backends(t, b.admin, b.app) {
				if be.state == "active" {
					_, kerr := b.admin.Exec(ctx, `SELECT pg_terminate_backend($1)`, be.pid)
					require.NoError(t, kerr)
				}
			}
		}
		// Counted on the admin pool: a kill can land just after set_many
		// returned, on the connection it left idle in the cache's pool (on
		// a loaded machine, often); the next set_many may then fail on it,
		// which all-or-nothing allows.
		var stored int
		require.NoError(t, b.admin.QueryRow(ctx, `SELECT count(*) FROM dbcache_entries WHERE key LIKE $1`,
			fmt.Sprintf(":1:b%d-%%", n)).Scan(&stored))
		require.Contains(t, []int{0, size}, stored, "batch %d: all or nothing (err %v)", n, err)
		if err == nil {
			require.Equal(t, size, stored, "batch %d reported stored", n)
		}
		t.Logf("batch %d: err=%v stored=%d", n, err, stored)
	}
}

// statement_timeout, set by the application on its pool, is honoured: a
// statement stuck behind a lock fails with the server's query_canceled error,
// changes nothing, and the pool stays usable. The calls carry no deadline of
// their own and the lock is held throughout, so only statement_timeout can
// end them, however slow the machine.
func TestFaultStatementTimeout(t *testing.T) {
	t.Parallel()
	b := setupFault(t, map[string]string{"statement_timeout": "300"})
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "k", []byte("1"), dbcache.Forever))
	release := b.lockKey(t, "k")

	for name, op := range map[string]func(ctx context.Context) error{
		"set":    func(ctx context.Context) error { return b.cache.Set(ctx, "k", []byte("2"), dbcache.Forever) },
		"incr":   func(ctx context.Context) error { _, err := b.cache.Incr(ctx, "k", 1); return err },
		"delete": func(ctx context.Context) error { _, err := b.cache.Delete(ctx, "k"); return err },
		"touch": func(ctx context.Context) error {
			_, err := b.cache.Touch(ctx, "k", dbcache.ExpiresIn(time.Hour))
			return err
		},
		"set_many": func(ctx context.Context) error {
			_, err := b.cache.SetMany(ctx, map[string][]byte{"a": nil, "k": nil}, dbcache.Forever)
			return err
		},
	} {
		err := returns(t, func() error { return op(ctx) })
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr, name)
		require.Equal(t, "57014", pgErr.Code, "%s: query_canceled by statement_timeout: %v", name, err)
	}
	release()
	v, err := b.cache.Get(ctx, "k")
	require.NoError(t, err, "the pool is still usable")
	require.Equal(t, "1", string(v), "nothing changed")
	require.Len(t, scan(t, b.pool), 1)
}

// Context deadlines and cancellation are honoured while a statement waits on
// the server: the call returns the context's error, the statement is
// cancelled on the server too (it does not land later), and the pool goes on.
// The lock is held until every call has returned, so each returned because
// of its context, however slow the machine.
func TestFaultContextCancel(t *testing.T) {
	t.Parallel()
	b := setupFault(t, nil)
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "k", []byte("1"), dbcache.Forever))
	release := b.lockKey(t, "k")

	// A deadline.
	err := returns(t, func() error {
		ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		return b.cache.Set(ctx, "k", []byte("deadline"), dbcache.Forever)
	})
	require.ErrorIs(t, err, context.DeadlineExceeded)

	// An explicit cancel, once the statement is seen waiting on the lock.
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { _, err := b.cache.Incr(cctx, "k", 41); done <- err }()
	waitBackend(t, b.admin, b.app, func(be backend) bool { return be.waitEvent == "Lock" })
	cancel()
	require.ErrorIs(t, returns(t, func() error { return <-done }), context.Canceled)

	// A set_many of many keys, one of them locked.
	err = returns(t, func() error {
		ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, err := b.cache.SetMany(ctx, map[string][]byte{"a": []byte("x"), "k": []byte("x"), "z": []byte("x")}, dbcache.Forever)
		return err
	})
	require.ErrorIs(t, err, context.DeadlineExceeded)

	// A context that is already done: nothing is sent.
	done2, cancel2 := context.WithCancel(ctx)
	cancel2()
	require.ErrorIs(t, b.cache.Set(done2, "new", []byte("x"), dbcache.Forever), context.Canceled)
	_, err = b.cache.Get(done2, "k")
	require.ErrorIs(t, err, context.Canceled)
	_, err = b.cache.GetOrSetFunc(done2, "new", func(context.Context) ([]byte, error) {
		t.Error("loader ran under a cancelled context")
		return nil, nil
	}, dbcache.Forever)
	require.ErrorIs(t, err, context.Canceled)

	// A loader that honours its context: the error comes back, nothing stored.
	lctx, lcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = b.cache.GetOrSetFunc(lctx, "loaded", func(ctx context.Context) ([]byte, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}, dbcache.Forever)
	lcancel()
	require.ErrorIs(t, err, context.DeadlineExceeded)

	// Once the cancelled statements have stopped on the server, let the lock
	// go: none of them may land now.
	waitIdle(t, b.admin, b.app)
	release()
	v, err := b.cache.Get(ctx, "k")
	require.NoError(t, err, "the pool is still usable")
	require.Equal(t, "1", string(v), "no cancelled write landed")
	require.ElementsMatch(t, []string{":1:k"}, scanKeys(t, b.pool), "nothing else written")
}
