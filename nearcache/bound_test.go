package nearcache_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/pgserver"
	"github.com/dbcache/dbcache/nearcache"
)

// A process's own writes of one key, at once from three goroutines (Set,
// Delete, Incr), in every interleaving the scheduler gives: once all three
// have returned, the process's next read through the layer returns what
// the database holds.
func TestOwnWritesConcurrent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	a := e.proc(t, steady())
	ctx := ctxT(t)
	r := rand.New(rand.NewPCG(1, 2))
	mismatches := 0
	for i := range 300 {
		k := "k" + strconv.Itoa(i%5)
		if i%2 == 0 {
			_, _ = a.near.Get(ctx, k) // a copy to go stale
		}
		v := []byte(strconv.Itoa(i * 10))
		var wg sync.WaitGroup
		for w := range 3 {
			delay := time.Duration(r.IntN(400)) * time.Microsecond
			wg.Go(func() {
				time.Sleep(delay)
				switch w {
				case 0:
					require.NoError(t, a.near.Set(ctx, k, v, dbcache.Forever))
				case 1:
					_, err := a.near.Delete(ctx, k)
					require.NoError(t, err)
				case 2:
					_, err := a.near.Incr(ctx, k, 1)
					if err != nil {
						require.ErrorIs(t, err, dbcache.ErrMiss)
					}
				}
			})
		}
		wg.Wait()
		near, nerr := a.near.Get(ctx, k)
		db, derr := a.cache.Get(ctx, k)
		if errors.Is(nerr, dbcache.ErrMiss) != errors.Is(derr, dbcache.ErrMiss) || string(near) != string(db) {
			mismatches++
			t.Errorf("try %d: the layer read %q (%v), the database holds %q (%v)", i, near, nerr, db, derr)
		}
	}
	require.Zero(t, mismatches)
	require.Positive(t, a.near.Stats().WritesKept, "some Sets kept their copy (those alone at the time)")
}

// heldStore holds the reply of the first store read of a key: as a read
// whose reply is held up on the network.
type heldStore struct {
	*dbcache.Cache
	key     string
	entered chan struct{} // closed once the held read has read
	release chan struct{} // closed to let it return
	once    sync.Once
	reads   atomic.Int64
}

func (h *heldStore) GetWithSnapshot(ctx context.Context, key string) ([]byte, dbcache.Timeout, dbcache.Snapshot, error) {
	h.reads.Add(1)
	v, ttl, snap, err := h.Cache.GetWithSnapshot(ctx, key)
	h.hold(key)
	return v, ttl, snap, err
}

func (h *heldStore) GetWithTTL(ctx context.Context, key string) ([]byte, dbcache.Timeout, error) {
	h.reads.Add(1)
	v, ttl, err := h.Cache.GetWithTTL(ctx, key)
	h.hold(key)
	return v, ttl, err
}

func (h *heldStore) hold(key string) {
	held := false
	if key == h.key {
		h.once.Do(func() { held = true })
	}
	if held {
		close(h.entered)
		<-h.release
	}
}

// A read that joins a store read in flight gets that read's answer, so it
// may join only one that began within MaxStaleness before it: a read held
// up (its reply late) past that, and a write by another process that
// returned meanwhile, make the next reader start a read of its own, which
// sees the write; the held read's value, when it comes, is not kept (a
// newer read of the key ended first; its snapshot had not seen the write
// end either).
func TestSharedReadsKeepTheBound(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	bound := 300 * time.Millisecond
	cfg := &nearcache.Config{MaxStaleness: bound, HeartbeatInterval: 50 * time.Millisecond}
	var held *heldStore
	a := e.procWith(t, cfg, func(c *dbcache.Cache) dbcache.Store {
		held = &heldStore{Cache: c, key: "k", entered: make(chan struct{}), release: make(chan struct{})}
		return held
	})
	b := e.proc(t, steady())
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "k", []byte("v1"), dbcache.Forever))

	first := make(chan string, 1)
	go func() {
		v, err := a.near.Get(ctx, "k")
		require.NoError(t, err)
		first <- string(v)
	}()
	select {
	case <-held.entered:
	case <-time.After(90 * time.Second):
		t.Fatal("the first read never reached the store")
	}
	// A read begun now, within the bound of the held one, joins it.
	joined := make(chan string, 1)
	go func() {
		v, err := a.near.Get(ctx, "k")
		require.NoError(t, err)
		joined <- string(v)
	}()
	eventually(t, "the second read is waiting", func() bool { return a.near.Stats().Misses == 2 })
	require.EqualValues(t, 1, held.reads.Load(), "one store read for both")

	require.NoError(t, b.near.Set(ctx, "k", []byte("v2"), dbcache.Forever))
	wrote := time.Now()
	eventually(t, "a's feed delivers the write", func() bool { return a.trace.invalidated(madeKey("k")) > 0 })
	time.Sleep(time.Until(wrote.Add(bound)))
	v, err := a.near.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v2", string(v), "begun more than the bound after the write returned: a read of its own")
	require.EqualValues(t, 2, held.reads.Load())

	close(held.release)
	require.Equal(t, "v1", <-first, "the held read began before the write")
	require.Equal(t, "v1", <-joined)
	require.Positive(t, a.near.Stats().FillsRefused, "the held read's value was not kept: a newer read of the key had ended")
	checkFresh(t, a, "k", "v2", wrote, 0)
}

// syncStandby is a primary with a synchronous standby, both installed
// servers of the test's own.
func syncStandby(t *testing.T) (primary, standby *pgserver.Server) {
	t.Helper()
	ctx := ctxT(t)
	primary, err := pgserver.Start(ctx, pgserver.Config{Kind: pgserver.Installed, Database: "nearcache_test", Settings: logicalSettings})
	require.NoError(t, err)
	t.Cleanup(func() { _ = primary.Remove(context.Background()) })
	standby, err = pgserver.StartStandby(ctx, primary, "nc_standby")
	require.NoError(t, err)
	t.Cleanup(func() { _ = standby.Remove(context.Background()) })
	superuser(t, primary, "ALTER SYSTEM SET synchronous_standby_names = 'nc_standby'")
	superuser(t, primary, "SELECT pg_reload_conf()")
	conn, err := pgx.Connect(ctx, primary.URL(""))
	require.NoError(t, err)
	defer conn.Close(ctx)
	eventually(t, "the standby is synchronous", func() bool {
		var state string
		require.NoError(t, conn.QueryRow(ctx, "SELECT coalesce((SELECT sync_state FROM pg_stat_replication WHERE application_name = 'nc_standby'), '')").Scan(&state))
		return state == "sync"
	})
	return primary, standby
}

// With a synchronous standby slow to confirm (its walreceiver stopped),
// another process's write is committed and flushed, so the feed delivers
// it, yet invisible until the standby confirms: a read meanwhile returns
// the value from before (as the database answers) and keeps no copy
// (Stats.FillsUnseen), so once the write returns the next reads see it.
// A write whose wait is cancelled (its timeout) is committed locally all
// the same, and seen as soon as it is visible.
func TestSyncStandbyGap(t *testing.T) {
	t.Parallel()
	primary, standby := syncStandby(t)
	e := newEnv(t, primary)
	a, b := e.proc(t, steady()), e.proc(t, steady())
	ctx := ctxT(t)
	require.NoError(t, a.near.Set(ctx, "k", []byte("v1"), dbcache.Forever))
	b.warm(t, "k", "v1")

	pid, err := standby.WalReceiverPID(ctx)
	require.NoError(t, err)
	require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
	stopped := true
	defer func() {
		if stopped {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}()
	before := b.trace.invalidated(madeKey("k"))
	wrote := make(chan time.Time, 1)
	go func() {
		require.NoError(t, a.cache.Set(ctx, "k", []byte("v2"), dbcache.Forever))
		wrote <- time.Now()
	}()
	eventually(t, "b's feed delivers the waiting write", func() bool { return b.trace.invalidated(madeKey("k")) > before })
	unseen := b.near.Stats().FillsUnseen
	for range 5 {
		v, hit := b.hit(t, "k")
		require.Equal(t, "v1", string(v), "the write is not visible yet")
		require.False(t, hit, "and the value from before it is not kept")
	}
	require.Greater(t, b.near.Stats().FillsUnseen, unseen, "the reads' fills were refused")

	require.NoError(t, syscall.Kill(pid, syscall.SIGCONT))
	stopped = false
	checkFresh(t, b, "k", "v2", <-wrote, 0)

	// A write cancelled while it waits: committed locally all the same.
	require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
	stopped = true
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err = a.cache.Set(short, "k", []byte("v3"), dbcache.Forever)
	cancel()
	require.Error(t, err, "the Set's wait for the standby was cut short")
	cancelled := time.Now()
	eventually(t, "the cancelled write is visible", func() bool {
		v, err := a.cache.Get(ctx, "k")
		require.NoError(t, err)
		return string(v) == "v3"
	})
	checkFresh(t, b, "k", "v3", cancelled, nearcache.MaxStalenessDefault)
	require.NoError(t, syscall.Kill(pid, syscall.SIGCONT))
	stopped = false

	// b's feed restarting while a write waits for the standby. Either the
	// new slot waits for the write's transaction to leave the running ones
	// (PostgreSQL's snapshot builder does, unless it can restore another
	// slot's snapshot serialized at a running-transactions record), and
	// reads go to the database meanwhile; or it is made at once, the write,
	// committed before its consistent point, is never delivered to it and
	// still invisible, and its transaction, running in the session's first
	// snapshot, keeps every fill from keeping a copy until it has ended.
	b.warm(t, "k", "v3")
	require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
	stopped = true
	go func() {
		require.NoError(t, a.cache.Set(ctx, "k", []byte("v4"), dbcache.Forever))
		wrote <- time.Now()
	}()
	eventually(t, "the write is flushed and waiting", func() bool {
		var waiting bool
		require.NoError(t, a.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event = 'SyncRep')").Scan(&waiting))
		return waiting
	})
	restarts := b.near.Stats().FeedRestarts
	superuser(t, primary, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND backend_type = 'walsender'`, b.appName)
	// Checkpoints log running-transactions records, at which a's feed
	// serializes its snapshot: chances for the second way.
	deadline := time.Now().Add(6 * time.Second)
	lastCheckpoint := time.Time{}
	upDuring := false
	for time.Now().Before(deadline) { // the feed back up (or its slot still being made) while the write waits
		if time.Since(lastCheckpoint) > 500*time.Millisecond {
			superuser(t, primary, "CHECKPOINT")
			lastCheckpoint = time.Now()
		}
		v, hit := b.hit(t, "k")
		require.Equal(t, "v3", string(v), "the write is not visible yet")
		require.False(t, hit)
		if s := b.near.Stats(); s.FeedUp && s.FeedRestarts > restarts {
			upDuring = true
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("the feed came back while the write waited: %v", upDuring)
	require.NoError(t, syscall.Kill(pid, syscall.SIGCONT))
	stopped = false
	checkFresh(t, b, "k", "v4", <-wrote, 0)
}

// A change whose key the feed cannot read (a key stored out of line and
// unchanged, which pgoutput leaves out: written here by raw SQL, a key too
// long for dbcache) drops every copy, and no fill keeps a copy until its
// transaction is seen ended.
func TestUnreadableKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	a := e.proc(t, steady())
	ctx := ctxT(t)
	require.NoError(t, a.near.Set(ctx, "k", []byte("v"), dbcache.Forever))
	a.warm(t, "k", "v")
	// 2,500 random hexadecimal characters: incompressible, so TOAST stores
	// the key out of line, and short enough for the key's index.
	var b strings.Builder
	r := rand.New(rand.NewPCG(3, 4))
	for range 2500 {
		b.WriteByte("0123456789abcdef"[r.IntN(16)])
	}
	long := b.String()
	table := pgx.Identifier{e.schema, "dbcache_entries"}.Sanitize()
	superuser(t, e.srv, "INSERT INTO "+table+" (key, value) VALUES ($1, 'x')", long)
	flushes := a.near.Stats().Flushes
	eventually(t, "the insert arrives", func() bool { return a.near.Stats().Invalidations > 0 })
	superuser(t, e.srv, "UPDATE "+table+" SET value = 'y' WHERE key = $1", long)
	eventually(t, "the update, its key left out, drops everything", func() bool { return a.near.Stats().Flushes > flushes })
	v, hit := a.hit(t, "k")
	require.Equal(t, "v", string(v))
	require.False(t, hit, "every copy was dropped")
	a.warm(t, "k", "v")
}

// panicky is a Tracer that panics when the feed calls it.
type panicky struct{ recorder }

func (p *panicky) TraceInvalidate(inv nearcache.Invalidation) {
	if inv.Cause == nearcache.CauseFeed {
		panic("a tracer bug")
	}
}

// panicStore panics in its shared reads.
type panicStore struct{ *dbcache.Cache }

func (p panicStore) GetWithSnapshot(context.Context, string) ([]byte, dbcache.Timeout, dbcache.Snapshot, error) {
	panic("a store bug")
}

func (p panicStore) GetWithTTL(context.Context, string) ([]byte, dbcache.Timeout, error) {
	panic("a store bug")
}

// A hook that panics cannot crash the process from a goroutine the caller
// does not own: a Tracer panicking on the feed's goroutine is recovered,
// logged once and counted, and the feed goes on; a store read panicking on
// the goroutine of a shared read gives its callers ErrPanic; a Tracer
// panicking on the caller's goroutine reaches the caller and leaves nothing
// locked behind.
func TestPanickingHooks(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	var logs bytes.Buffer
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(&lockedBuf{mu: &logMu, b: &logs}, nil))
	a := e.proc(t, &nearcache.Config{Tracer: &panicky{}, Logger: logger})
	b := e.proc(t, steady())
	ctx := ctxT(t)
	for i := range 3 {
		require.NoError(t, b.near.Set(ctx, "k", []byte(strconv.Itoa(i)), dbcache.Forever))
	}
	eventually(t, "the panics are counted", func() bool { return a.near.Stats().Panics >= 3 })
	require.True(t, a.near.Stats().FeedUp, "the feed goes on")
	logMu.Lock()
	require.Equal(t, 1, strings.Count(logs.String(), "recovered a panic"), "logged once")
	require.NotContains(t, logs.String(), "a tracer bug", "the panic's value (it may hold a key) is not logged")
	logMu.Unlock()
	checkFresh(t, a, "k", "2", time.Now(), nearcache.MaxStalenessDefault)

	p := e.procWith(t, nil, func(c *dbcache.Cache) dbcache.Store { return panicStore{c} })
	_, err := p.near.Get(ctx, "k")
	require.ErrorIs(t, err, nearcache.ErrPanic)
	require.Positive(t, p.near.Stats().Panics)

	c := e.proc(t, &nearcache.Config{Tracer: &readPanics{}})
	require.Panics(t, func() { _, _ = c.near.Get(ctx, "k") })
	require.NoError(t, c.near.Set(ctx, "k", []byte("x"), dbcache.Forever), "no lock was left behind")
}

type readPanics struct{ recorder }

func (*readPanics) TraceRead(context.Context, string, int, int) { panic("on the caller's goroutine") }

type lockedBuf struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// keyTracer records what keys reach it.
type keyTracer struct {
	mu   sync.Mutex
	keys []string
}

func (k *keyTracer) TraceRead(context.Context, string, int, int) {}
func (k *keyTracer) TraceFeed(bool, error)                       {}
func (k *keyTracer) TraceInvalidate(inv nearcache.Invalidation) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if inv.Key != "" {
		k.keys = append(k.keys, inv.Key)
	}
}

// By default no key reaches the Tracer or the log, whatever happens (feed
// invalidations, writes through the layer, the feed lost); TraceKeys lets
// the Tracer see them.
func TestNoKeysInTelemetry(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	var logs bytes.Buffer
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(&lockedBuf{mu: &logMu, b: &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	quiet, loud := &keyTracer{}, &keyTracer{}
	a := e.proc(t, &nearcache.Config{Tracer: quiet, Logger: logger})
	b := e.proc(t, &nearcache.Config{Tracer: loud, TraceKeys: true})
	ctx := ctxT(t)
	key := "user:alice@example.com"
	require.NoError(t, a.near.Set(ctx, key, []byte("v"), dbcache.Forever))
	require.NoError(t, b.near.Set(ctx, key, []byte("w"), dbcache.Forever))
	_, err := a.near.Delete(ctx, key)
	require.NoError(t, err)
	eventually(t, "a's feed sees b's write", func() bool { return a.near.Stats().Invalidations >= 3 })
	superuser(t, e.srv, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND backend_type = 'walsender'`, a.appName)
	eventually(t, "a's feed is back", func() bool { return a.near.Stats().FeedRestarts > 0 && a.near.Stats().FeedUp })
	quiet.mu.Lock()
	require.Empty(t, quiet.keys)
	quiet.mu.Unlock()
	logMu.Lock()
	require.Contains(t, logs.String(), "feed lost")
	require.NotContains(t, logs.String(), "alice")
	logMu.Unlock()
	eventually(t, "b's tracer sees keys", func() bool {
		loud.mu.Lock()
		defer loud.mu.Unlock()
		return len(loud.keys) > 0
	})
	loud.mu.Lock()
	require.Contains(t, loud.keys, madeKey(key))
	loud.mu.Unlock()
}

// A read that begins after a write (or another read) of the key through
// this process has returned does not join a store read that began before
// it: that read may return the value from before the write.
func TestReadAfterOwnWriteJoinsNoOlderRead(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	var held *heldStore
	a := e.procWith(t, steady(), func(c *dbcache.Cache) dbcache.Store {
		held = &heldStore{Cache: c, key: "k", entered: make(chan struct{}), release: make(chan struct{})}
		return held
	})
	ctx := ctxT(t)
	require.NoError(t, a.cache.Set(ctx, "k", []byte("v1"), dbcache.Forever))
	first := make(chan string, 1)
	go func() {
		v, err := a.near.Get(ctx, "k")
		require.NoError(t, err)
		first <- string(v)
	}()
	select {
	case <-held.entered:
	case <-time.After(90 * time.Second):
		t.Fatal("the first read never reached the store")
	}
	// DefaultTimeout: the Set drops the key's copy, so the next read goes
	// to the store.
	require.NoError(t, a.near.Set(ctx, "k", []byte("v2"), dbcache.DefaultTimeout))
	v, err := a.near.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v2", string(v), "its own write, not the older read's answer")
	close(held.release)
	require.Equal(t, "v1", <-first)
	v, err = a.near.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v2", string(v))
}
