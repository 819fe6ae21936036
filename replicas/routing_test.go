package replicas_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/pgserver"
	"github.com/dbcache/dbcache/replicas"
)

// router builds a Cache over pools, closed when the test ends.
func router(t *testing.T, primary *pgxpool.Pool, standbys []*pgxpool.Pool, cfg *replicas.Config) *replicas.Cache {
	t.Helper()
	c, err := replicas.New(ctxT(t), primary, standbys, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// writer is a cache on the primary of another process, as far as the
// router can tell: its writes are not the router's own.
func writer(t *testing.T, primary *pgxpool.Pool) *dbcache.Cache {
	t.Helper()
	w, err := dbcache.New(ctxT(t), primary, nil)
	require.NoError(t, err)
	return w
}

// servedByStandby waits until a Get of key through c is answered by a
// standby with want.
func servedByStandby(t *testing.T, ctx context.Context, c *replicas.Cache, key, want string) {
	t.Helper()
	eventually(t, ctx, "a standby serves "+key, func() bool {
		before := c.Stats().StandbyReads
		v, err := c.Get(ctx, key)
		return err == nil && string(v) == want && c.Stats().StandbyReads > before
	})
}

// With the standby's replay paused, another process's write stays
// invisible there; every read through the router that returns the old
// value began less than MaxLag after the write returned, and the reads
// go to the primary once MaxLag has passed, or to a second standby that
// keeps up; a router made while replay is
// paused serves the write made before it from the primary, its bound
// notwithstanding. This asserts no duration:
// the router decides from send times of its own statements, so a slow
// machine only makes it send reads to the primary sooner.
func TestLagBoundWithReplayPaused(t *testing.T) {
	t.Parallel()
	primary, _ := shared(t)
	sb := startStandby(t, primary, pgserver.StandbyOptions{})
	ctx := ctxT(t)
	schema := newSchema(t, primary)
	pp, sp := poolOn(t, primary.URL(""), schema), poolOn(t, sb.URL(""), schema)
	caughtUp(t, ctx, pp, sp) // New finds the table on the standby
	const maxLag = 300 * time.Millisecond
	c := router(t, pp, []*pgxpool.Pool{sp}, &replicas.Config{MaxLag: maxLag, RefreshInterval: 10 * time.Millisecond})
	w := writer(t, pp)
	require.NoError(t, w.Set(ctx, "k", []byte("v1"), dbcache.Forever))
	servedByStandby(t, ctx, c, "k", "v1")

	superExec(t, ctx, sb, "SELECT pg_wal_replay_pause()")
	defer superExec(t, context.Background(), sb, "SELECT pg_wal_replay_resume()")
	require.NoError(t, w.Set(ctx, "k", []byte("v2"), dbcache.Forever))
	wrote := time.Now()
	// The standby itself still has v1: what the router must not serve
	// for long.
	direct, err := dbcache.New(ctx, sp, nil)
	require.NoError(t, err)
	v, err := direct.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v1", string(v))

	stale, fresh := 0, 0
	for fresh < 50 {
		began := time.Now()
		v, err := c.Get(ctx, "k")
		require.NoError(t, err)
		switch string(v) {
		case "v1":
			require.Less(t, began.Sub(wrote), maxLag, "an old value served past the lag bound")
			stale++
		case "v2":
			fresh++
		default:
			t.Fatalf("read %q", v)
		}
	}
	t.Logf("%d reads of the old value within the bound, then %d of the new; %+v", stale, fresh, c.Stats())
	require.Positive(t, c.Stats().PrimaryReads)

	// With a second standby that keeps up, the reads past the bound go
	// to it rather than to the primary.
	_, shared2 := shared(t)
	sp2 := poolOn(t, shared2.URL(""), schema)
	caughtUp(t, ctx, pp, sp2)
	both := router(t, pp, []*pgxpool.Pool{sp, sp2}, &replicas.Config{MaxLag: maxLag, RefreshInterval: 10 * time.Millisecond})
	servedByStandby(t, ctx, both, "k", "v2") // the paused one has v1

	for range 50 {
		v, err := both.Get(ctx, "k")
		require.NoError(t, err)
		require.Equal(t, "v2", string(v), "the paused standby served past the bound")
	}
	t.Logf("two standbys, one paused: %+v", both.Stats())

	// A router made now, with a bound of a minute, still has no sample
	// the paused standby covers: the write before it was made is not
	// served stale.
	late := router(t, pp, []*pgxpool.Pool{sp}, &replicas.Config{MaxLag: time.Minute, RefreshInterval: 10 * time.Millisecond})
	for range 50 {
		v, err := late.Get(ctx, "k")
		require.NoError(t, err)
		require.Equal(t, "v2", string(v), "a write from before New served stale")
	}
	require.Zero(t, late.Stats().StandbyReads)
}

// A process reads its own writes at once, from any goroutine, though
// its standby applies every commit a second late
// (recovery_min_apply_delay) and its lag bound would accept that: the
// reads after a write go to the primary until the standby has replayed a
// primary position sampled after the write; other reads go on to the
// standby.
func TestOwnWritesVisible(t *testing.T) {
	t.Parallel()
	primary, _ := shared(t)
	sb := startStandby(t, primary, pgserver.StandbyOptions{Settings: map[string]string{"recovery_min_apply_delay": "1s"}})
	ctx := ctxT(t)
	schema := newSchema(t, primary)
	pp, sp := poolOn(t, primary.URL(""), schema), poolOn(t, sb.URL(""), schema)
	caughtUp(t, ctx, pp, sp) // New finds the table on the standby
	c := router(t, pp, []*pgxpool.Pool{sp}, &replicas.Config{MaxLag: time.Minute, RefreshInterval: 10 * time.Millisecond})
	require.NoError(t, c.Set(ctx, "seen", []byte("x"), dbcache.Forever))
	servedByStandby(t, ctx, c, "seen", "x")

	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			if err := ownWrites(ctx, c, "k"+strconv.Itoa(g)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	_, err := c.Incr(ctx, "n", 0)
	require.ErrorIs(t, err, dbcache.ErrMiss)
	require.NoError(t, c.Set(ctx, "n", []byte("1"), dbcache.Forever))
	n, err := c.Incr(ctx, "n", 41)
	require.NoError(t, err)
	require.EqualValues(t, 42, n)
	v, err := c.Get(ctx, "n")
	require.NoError(t, err)
	require.Equal(t, "42", string(v))
	var keys []string
	for k, err := range c.Keys(ctx, "k") {
		require.NoError(t, err)
		keys = append(keys, k)
	}
	require.Len(t, keys, 4, "own writes listed")
	// Quiet, the standby catches up and serves again.
	servedByStandby(t, ctx, c, "k0", "23")
	t.Logf("%+v", c.Stats())
}

// A standby that goes silent (its connections frozen) or stops: no read
// fails, the reads in flight fall back to the primary once their
// OpTimeout ends, and every read decided more than one OpTimeout after it
// went goes to the primary, since the last sample it answered began
// before then. Back, it serves again.
func TestStandbyDown(t *testing.T) {
	t.Parallel()
	primary, _ := shared(t)
	sb := startStandby(t, primary, pgserver.StandbyOptions{})
	ctx := ctxT(t)
	schema := newSchema(t, primary)
	host, port := sb.Addr()
	proxy := newProxy(t, host, port)
	pp, sp := poolOn(t, primary.URL(""), schema), poolOn(t, proxy.url(sb), schema)
	caughtUp(t, ctx, pp, sp)
	const opTimeout = time.Second
	// Config.OpTimeout bounds the standby's reads: with the caller's
	// deadline (the readers' context has two minutes) and without one (the
	// background context of every other reader).
	c := router(t, pp, []*pgxpool.Pool{sp}, &replicas.Config{OpTimeout: opTimeout, RefreshInterval: 10 * time.Millisecond})
	w := writer(t, pp)
	require.NoError(t, w.Set(ctx, "k", []byte("v"), dbcache.Forever))

	readAll := func(what string) {
		t.Helper()
		servedByStandby(t, ctx, c, "k", "v")
		var wg sync.WaitGroup
		start := time.Now()
		done := make(chan struct{})
		for g := range 4 {
			rctx := ctx
			if g%2 == 1 {
				rctx = context.Background()
			}
			wg.Go(func() {
				for {
					select {
					case <-done:
						return
					default:
					}
					v, err := c.Get(rctx, "k")
					if err != nil || string(v) != "v" {
						t.Errorf("%s: read %q, %v", what, v, err)
						return
					}
				}
			})
		}
		time.Sleep(50 * time.Millisecond)
		switch what {
		case "silent":
			proxy.Freeze()
		case "stopped":
			require.NoError(t, sb.Shutdown(ctx))
		}
		went := time.Now()
		// Past one OpTimeout (and the reads in flight then), no read
		// reaches the standby.
		time.Sleep(opTimeout + 100*time.Millisecond)
		before := c.Stats()
		for range 50 {
			_, err := c.Get(ctx, "k")
			require.NoError(t, err)
		}
		after := c.Stats()
		close(done)
		wg.Wait()
		require.Equal(t, before.StandbyReads, after.StandbyReads, "%s: a standby read more than OpTimeout after it went", what)
		t.Logf("%s after %v: %+v (%v in all)", what, time.Since(went), after, time.Since(start))
	}
	readAll("silent")
	proxy.Thaw()
	readAll("stopped")
	require.Positive(t, c.Stats().Fallbacks)
	require.NoError(t, sb.Restart(ctx))
	_, again := sb.Addr()
	require.Equal(t, port, again, "the standby came back on its port, where the proxy forwards")
	servedByStandby(t, ctx, c, "k", "v")
}

// A read cancelled on the standby for a recovery conflict (SQLSTATE
// 40001) is run again on the primary and counted; the caller sees its
// result. The standby (max_standby_streaming_delay 100 ms) cancels a read
// that holds the table while the primary's ACCESS EXCLUSIVE lock replays;
// the read is held mid-result by a frozen connection.
func TestRecoveryConflict(t *testing.T) {
	t.Parallel()
	primary, _ := shared(t)
	sb := startStandby(t, primary, pgserver.StandbyOptions{Settings: map[string]string{"max_standby_streaming_delay": "100ms"}})
	ctx := ctxT(t)
	schema := newSchema(t, primary)
	host, port := sb.Addr()
	proxy := newProxy(t, host, port)
	pp, sp := poolOn(t, primary.URL(""), schema), poolOn(t, proxy.url(sb), schema)
	caughtUp(t, ctx, pp, sp)
	c := router(t, pp, []*pgxpool.Pool{sp}, &replicas.Config{OpTimeout: time.Minute, RefreshInterval: 10 * time.Millisecond,
		Cache: &dbcache.Config{OpTimeout: time.Minute}})
	w := writer(t, pp)
	big := make([]byte, 512<<10)
	items := map[string][]byte{}
	var keys []string
	for i := range 40 {
		k := "big" + strconv.Itoa(i)
		items[k], keys = big, append(keys, k)
	}
	_, err := w.SetMany(ctx, items, dbcache.Forever)
	require.NoError(t, err)
	require.NoError(t, w.Set(ctx, "k", []byte("v"), dbcache.Forever))

	// The standby cancels the read once replay has waited
	// max_standby_streaming_delay on the lock: if the read drains first (a
	// machine so loaded that the wait had not begun), the try proves
	// nothing and is made again.
	for try := 0; ; try++ {
		require.Less(t, try, 3, "the read was never cancelled for a conflict")
		servedByStandby(t, ctx, c, "k", "v")
		before := c.Stats()
		if conflictOnce(t, ctx, c, primary, sb, proxy, schema, keys) {
			after := c.Stats()
			require.Equal(t, before.RecoveryConflicts+1, after.RecoveryConflicts, "%+v", after)
			require.Equal(t, before.Fallbacks+1, after.Fallbacks)
			break
		}
		t.Logf("try %d: the read drained before it was cancelled", try)
	}
	// A conflict takes the standby out of nothing: it serves the next read.
	servedByStandby(t, ctx, c, "k", "v")
}

// conflictOnce runs a GetMany of keys through c, freezes its connection
// once the standby blocks sending the result, replays an ACCESS EXCLUSIVE
// lock of the table from the primary, and thaws the connection once
// replay waits for the read's lock. It reports whether the read was
// cancelled for the conflict (and fell back to the primary).
func conflictOnce(t *testing.T, ctx context.Context, c *replicas.Cache, primary, sb *pgserver.Server, proxy *proxy, schema string, keys []string) bool {
	t.Helper()
	type result struct {
		m   map[string][]byte
		err error
	}
	res := make(chan result, 1)
	before := c.Stats().RecoveryConflicts
	go func() {
		m, err := c.GetMany(ctx, keys)
		res <- result{m, err}
	}()
	// Once the standby runs the read, freeze its connection: the backend
	// blocks sending the 20 MB result, holding the table.
	eventually(t, ctx, "the read runs on the standby", func() bool {
		return standbyWaits(t, ctx, sb, schema, "") > 0
	})
	proxy.Freeze()
	eventually(t, ctx, "the standby blocks sending the result", func() bool {
		return standbyWaits(t, ctx, sb, schema, "ClientWrite") > 0
	})
	superExec(t, ctx, primary, "BEGIN; LOCK TABLE "+schema+".dbcache_entries IN ACCESS EXCLUSIVE MODE; COMMIT")
	eventually(t, ctx, "replay waits for the read's lock", func() bool {
		var waiting bool
		err := onStandby(ctx, sb, func(conn *pgx.Conn) error {
			return conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted
				AND mode = 'AccessExclusiveLock' AND relation = to_regclass($1))`, schema+".dbcache_entries").Scan(&waiting)
		})
		return err == nil && waiting
	})
	time.Sleep(500 * time.Millisecond) // past max_standby_streaming_delay, from the wait's start
	proxy.Thaw()
	r := <-res
	require.NoError(t, r.err)
	require.Len(t, r.m, len(keys))
	return c.Stats().RecoveryConflicts > before
}

// onStandby runs f on a new superuser connection to the standby.
func onStandby(ctx context.Context, sb *pgserver.Server, f func(*pgx.Conn) error) error {
	conn, err := pgx.Connect(ctx, sb.URL(""))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return f(conn)
}

// standbyWaits counts the standby's backends running a dbcache read in
// schema, waiting on event ("" for any).
func standbyWaits(t *testing.T, ctx context.Context, sb *pgserver.Server, schema, event string) int {
	t.Helper()
	var n int
	err := onStandby(ctx, sb, func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%dbcache_entries%'
			AND query NOT LIKE '%pg_stat_activity%' AND ($1 = '' OR wait_event = $1)`, event).Scan(&n)
	})
	if err != nil {
		return 0 // a recovery conflict of its own: ask again
	}
	return n
}

// A Config with a negative duration is refused, naming the field; MaxLag
// -1 sends every read to the primary; Close closes the cache and not the
// pools; a server not in recovery, given as a standby, serves no read.
func TestConfig(t *testing.T) {
	t.Parallel()
	primary, standby := shared(t)
	ctx := ctxT(t)
	schema := newSchema(t, primary)
	pp, sp := poolOn(t, primary.URL(""), schema), poolOn(t, standby.URL(""), schema)
	caughtUp(t, ctx, pp, sp)
	for _, cfg := range []replicas.Config{{MaxLag: -2}, {OpTimeout: -1}, {RefreshInterval: -1}} {
		_, err := replicas.New(ctx, pp, []*pgxpool.Pool{sp}, &cfg)
		require.Error(t, err)
		require.Contains(t, err.Error(), "Config.")
	}
	_, err := replicas.New(ctx, nil, nil, nil)
	require.Error(t, err)
	_, err = replicas.New(ctx, pp, []*pgxpool.Pool{nil}, nil)
	require.Error(t, err)
	c := router(t, pp, []*pgxpool.Pool{sp}, &replicas.Config{MaxLag: -1, RefreshInterval: 10 * time.Millisecond})
	require.NoError(t, c.Set(ctx, "k", []byte("v"), dbcache.Forever))
	caughtUp(t, ctx, pp, sp)
	time.Sleep(50 * time.Millisecond)
	for range 20 {
		_, err := c.Get(ctx, "k")
		require.NoError(t, err)
	}
	require.Zero(t, c.Stats().StandbyReads)
	require.NoError(t, c.Close())
	_, err = c.Get(ctx, "k")
	require.True(t, errors.Is(err, dbcache.ErrClosed), "%v", err)
	require.NoError(t, c.Close(), "again")
	require.NoError(t, pp.Ping(ctx), "New never closes the pools it is given")
	require.NoError(t, sp.Ping(ctx))

	// A server not in recovery, given as a standby, serves no read.
	notStandby := router(t, pp, []*pgxpool.Pool{pp}, &replicas.Config{RefreshInterval: 10 * time.Millisecond})
	for range 20 {
		_, err := notStandby.Get(ctx, "k")
		require.NoError(t, err)
		time.Sleep(5 * time.Millisecond)
	}
	require.Zero(t, notStandby.Stats().StandbyReads)
	require.Positive(t, notStandby.Stats().SampleErrors)
}

// ownWrites writes key through c and reads it back each time, the read
// from another goroutine after the write returned.
func ownWrites(ctx context.Context, c *replicas.Cache, key string) error {
	for i := range 24 {
		val := strconv.Itoa(i)
		if i%5 == 4 {
			if _, err := c.Delete(ctx, key); err != nil {
				return err
			}
			if _, err := c.Get(ctx, key); !errors.Is(err, dbcache.ErrMiss) {
				return fmt.Errorf("own delete of %s: read %v", key, err)
			}
			if ok, err := c.HasKey(ctx, key); err != nil || ok {
				return fmt.Errorf("own delete of %s: HasKey %v, %v", key, ok, err)
			}
			continue
		}
		if err := c.Set(ctx, key, []byte(val), dbcache.Forever); err != nil {
			return err
		}
		type got struct {
			v   []byte
			err error
		}
		ch := make(chan got)
		go func() {
			v, err := c.Get(ctx, key)
			ch <- got{v, err}
		}()
		if r := <-ch; r.err != nil || string(r.v) != val {
			return fmt.Errorf("own write %s=%s: read %q, %v", key, val, r.v, r.err)
		}
		m, err := c.GetMany(ctx, []string{key})
		if err != nil || string(m[key]) != val {
			return fmt.Errorf("own write %s=%s: GetMany %q, %v", key, val, m[key], err)
		}
		if ttl, err := c.TTL(ctx, key); err != nil || !ttl.IsForever() {
			return fmt.Errorf("own write %s: TTL %v, %v", key, ttl, err)
		}
	}
	return nil
}

// While the primary answers no sample, no standby can show it is within
// the bound: once MaxLag has passed every read goes to the primary,
// missing under FailOpen, and none reaches the standby.
func TestPrimaryDown(t *testing.T) {
	t.Parallel()
	primary, standby := shared(t)
	ctx := ctxT(t)
	schema := newSchema(t, primary)
	host, port := primary.Addr()
	proxy := newProxy(t, host, port)
	pp, sp := poolOn(t, proxy.url(primary), schema), poolOn(t, standby.URL(""), schema)
	caughtUp(t, ctx, pp, sp)
	const maxLag = 200 * time.Millisecond
	c := router(t, pp, []*pgxpool.Pool{sp}, &replicas.Config{MaxLag: maxLag, RefreshInterval: 10 * time.Millisecond,
		Cache: &dbcache.Config{FailOpen: true, OpTimeout: time.Second}})
	require.NoError(t, writer(t, pp).Set(ctx, "k", []byte("v"), dbcache.Forever))
	servedByStandby(t, ctx, c, "k", "v")
	proxy.Down()
	// Reads go on, to the standby within the bound; then to the primary.
	eventually(t, ctx, "reads go to the primary", func() bool {
		before := c.Stats().PrimaryReads
		_, err := c.Get(ctx, "k")
		require.True(t, err == nil || errors.Is(err, dbcache.ErrMiss), "%v", err)
		return c.Stats().PrimaryReads > before
	})
	time.Sleep(maxLag) // past the bound from every sample the standby covered
	before := c.Stats()
	for range 20 {
		_, err := c.Get(ctx, "k")
		require.ErrorIs(t, err, dbcache.ErrMiss, "fail-open: a miss")
	}
	require.Equal(t, before.StandbyReads, c.Stats().StandbyReads)
	proxy.Up(t)
	servedByStandby(t, ctx, c, "k", "v")
}

// A primary gone idle right after a record that filled a WAL page to its
// last byte reports its insert position past the next page's header,
// which replay never reports (it stops at the page boundary, the end of
// that record); the router waits for the boundary, so the standby serves
// reads without waiting for the next write. The test writes logical
// messages sized to end exactly at a page's end, on a primary of its own
// (another test's WAL would move the position).
func TestIdleAtPageBoundary(t *testing.T) {
	t.Parallel()
	primary, sb := privatePair(t)
	ctx := ctxT(t)
	schema := newSchema(t, primary)
	pp, sp := poolOn(t, primary.URL(""), schema), poolOn(t, sb.URL(""), schema)
	caughtUp(t, ctx, pp, sp)
	require.NoError(t, writer(t, pp).Set(ctx, "k", []byte("v"), dbcache.Forever))
	conn := superConn(t, ctx, primary)
	defer conn.Close(ctx)
	lsn := func(q string) int64 {
		var l int64
		require.NoError(t, conn.QueryRow(ctx, q).Scan(&l))
		return l
	}
	const insert = `SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint`
	// The server writes WAL of its own now and then (a running-transactions
	// record every 15 s while there is activity): a try it disturbs proves
	// nothing and is made again.
	for try := range 3 {
		at := toBoundary(t, ctx, conn, lsn)
		eventually(t, ctx, "the standby replays to the boundary", func() bool {
			var replayed int64
			require.NoError(t, sp.QueryRow(ctx, `SELECT (pg_last_wal_replay_lsn() - '0/0')::bigint`).Scan(&replayed))
			return replayed >= at
		})
		before := lsn(insert)
		c := router(t, pp, []*pgxpool.Pool{sp}, &replicas.Config{MaxLag: 100 * time.Millisecond, RefreshInterval: 10 * time.Millisecond})
		servedByStandby(t, ctx, c, "k", "v")
		if before-before%8192 == at && lsn(insert) == before {
			return // no record written meanwhile: the boundary alone let the standby serve
		}
		t.Logf("try %d: the server wrote WAL meanwhile", try)
	}
	t.Fatal("every try was disturbed by WAL of the server's own")
}

// toBoundary writes logical messages until one ends exactly at a page's
// end, and returns that boundary.
func toBoundary(t *testing.T, ctx context.Context, conn *pgx.Conn, lsn func(string) int64) int64 {
	t.Helper()
	const insert = `SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint`
	for attempt := 0; attempt < 200; attempt++ {
		a := lsn(insert)
		rem := 8192 - a%8192
		emit := func(n int64) {
			_, err := conn.Exec(ctx, `SELECT pg_logical_emit_message(false, 'p', repeat('a', $1::int))`, n)
			require.NoError(t, err)
		}
		if rem < 128 {
			emit(0)
			continue
		}
		// A message record with prefix 'p' takes 51 bytes beside its
		// payload (MAXALIGNed); try the neighbours too, in case another
		// version counts differently.
		overhead := int64(51 + (attempt%9 - 4))
		emit(rem - overhead)
		if b := lsn(insert); b%8192 == 24 || b%(16<<20) == 40 {
			return b - b%8192
		}
	}
	t.Fatal("no record ended at a page's end")
	return 0
}
