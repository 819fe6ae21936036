package nearcache_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/nearcache"
)

// Write-behind (Config.WriteBehind): Sets queued in the process and
// committed in batches.

func wbConfig(delay time.Duration, queued int) *nearcache.Config {
	return &nearcache.Config{WriteBehind: &nearcache.WriteBehind{MaxDelay: delay, MaxQueued: queued}}
}

// heldWrites holds the store's SetMany (the flusher's batches) until
// released: as a server slow to commit.
type heldWrites struct {
	*dbcache.Cache
	mu      sync.Mutex
	hold    chan struct{} // nil: not held
	entered chan struct{} // closed when a held SetMany waits
	batches atomic.Int64
}

func (h *heldWrites) SetMany(ctx context.Context, items map[string][]byte, timeout dbcache.Timeout) ([]string, error) {
	h.batches.Add(1)
	h.mu.Lock()
	hold, entered := h.hold, h.entered
	h.mu.Unlock()
	if hold != nil {
		select {
		case <-entered:
		default:
			close(entered)
		}
		select {
		case <-hold:
		case <-ctx.Done():
			return allKeys(items), ctx.Err()
		}
	}
	return h.Cache.SetMany(ctx, items, timeout)
}

func (h *heldWrites) block() {
	h.mu.Lock()
	h.hold, h.entered = make(chan struct{}), make(chan struct{})
	h.mu.Unlock()
}

func (h *heldWrites) release() {
	h.mu.Lock()
	close(h.hold)
	h.hold = nil
	h.mu.Unlock()
}

func allKeys(items map[string][]byte) []string {
	out := make([]string, 0, len(items))
	for k := range items {
		out = append(out, k)
	}
	return out
}

// A process reads its own queued writes at once, whatever the flusher is
// doing; another process reads them within MaxStaleness + MaxDelay of the
// Set's return; the database ends with the last write of each key.
func TestWriteBehindReadYourWritesAndBound(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	const delay = 300 * time.Millisecond
	a, b := e.proc(t, wbConfig(delay, 0)), e.proc(t, nil)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			key := "own" + strconv.Itoa(g)
			for i := range 200 {
				want := fmt.Sprintf("v%d", i)
				if err := a.near.Set(ctx, key, []byte(want), dbcache.Forever); err != nil {
					t.Error(err)
					return
				}
				v, err := a.near.Get(ctx, key)
				if err != nil || string(v) != want {
					t.Errorf("%s: read %q, %v after writing %q", key, v, err, want)
					return
				}
				ok, err := a.near.HasKey(ctx, key)
				if err != nil || !ok {
					t.Errorf("%s: HasKey %v, %v after a Set", key, ok, err)
					return
				}
			}
		})
	}
	wg.Wait()
	// SetMany is queued too, and read back at once.
	_, err := a.near.SetMany(ctx, map[string][]byte{"m0": []byte("a"), "m1": []byte("b"), "own0": []byte("v199")}, dbcache.Forever)
	require.NoError(t, err)
	got, err := a.near.GetMany(ctx, []string{"m0", "m1"})
	require.NoError(t, err)
	require.Equal(t, map[string][]byte{"m0": []byte("a"), "m1": []byte("b")}, got)
	require.NoError(t, a.near.Flush(ctx))
	got, err = b.cache.GetMany(ctx, []string{"m0", "m1"})
	require.NoError(t, err)
	require.Len(t, got, 2)
	for g := range 4 {
		v, err := b.cache.Get(ctx, "own"+strconv.Itoa(g))
		require.NoError(t, err)
		require.Equal(t, "v199", string(v), "the last write of the key was committed")
	}
	s := a.near.Stats()
	require.EqualValues(t, 803, s.WritesQueued)
	require.Less(t, s.WriteBatches, s.WritesQueued, "writes were batched")
	require.Zero(t, s.WritesLost)
	require.Zero(t, s.WritesPending)
	// Another process: every read that begins more than MaxStaleness +
	// MaxDelay after the Set returned sees it.
	bound := b.bound + delay
	for i := range 10 {
		before := mustSet(t, a, "k", i-1)
		require.NoError(t, a.near.Flush(ctx))
		b.warm(t, "k", before)
		want := mustSet(t, a, "k", i)
		wrote := time.Now()
		checkFresh(t, b, "k", want, wrote, bound)
	}
	// A queued value with a TTL expires in this process as the entry does.
	require.NoError(t, a.near.Set(ctx, "ttl", []byte("x"), dbcache.ExpiresIn(50*time.Millisecond)))
	eventually(t, "the queued value's lifetime runs out", func() bool {
		_, err := a.near.Get(ctx, "ttl")
		return errors.Is(err, dbcache.ErrMiss)
	})
}

// mustSet writes "w<i>" to key through p and returns it (i < 0: "start").
func mustSet(t *testing.T, p *proc, key string, i int) string {
	t.Helper()
	v := "start"
	if i >= 0 {
		v = "w" + strconv.Itoa(i)
	}
	require.NoError(t, p.near.Set(ctxT(t), key, []byte(v), dbcache.Forever))
	return v
}

// Add, Incr, compare-and-swap, Delete and Touch are never queued: each
// waits for the queued write of its key to be committed, then applies after
// it in the database, as it would had that write been sent when it
// returned. The flusher is held, so the queued write is still pending
// when each operation starts.
func TestWriteBehindNeverDefers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	var h *heldWrites
	a := e.procWith(t, wbConfig(30*time.Second, 0), func(c *dbcache.Cache) dbcache.Store {
		h = &heldWrites{Cache: c}
		return h
	})
	other := e.proc(t, nil)
	ctx := ctxT(t)
	held := func(key, v string, op func() error) {
		t.Helper()
		h.block()
		require.NoError(t, a.near.Set(ctx, key, []byte(v), dbcache.Forever))
		<-h.entered
		done := make(chan error, 1)
		go func() { done <- op() }()
		select {
		case err := <-done:
			t.Fatalf("%s: the operation returned (%v) before the queued write was committed", key, err)
		case <-time.After(50 * time.Millisecond):
		}
		h.release()
		require.NoError(t, <-done)
	}
	var n int64
	held("incr", "5", func() (err error) { n, err = a.near.Incr(ctx, "incr", 1); return err })
	require.EqualValues(t, 6, n)
	var added bool
	held("add", "x", func() (err error) { added, err = a.near.Add(ctx, "add", []byte("y"), dbcache.Forever); return err })
	require.False(t, added, "Add saw the queued Set's entry")
	var deleted bool
	held("del", "x", func() (err error) { deleted, err = a.near.Delete(ctx, "del"); return err })
	require.True(t, deleted)
	_, err := other.cache.Get(ctx, "del")
	require.ErrorIs(t, err, dbcache.ErrMiss, "the Delete came after the queued Set")
	var touched bool
	held("touch", "x", func() (err error) {
		touched, err = a.near.Touch(ctx, "touch", dbcache.ExpiresIn(time.Hour))
		return err
	})
	require.True(t, touched)
	var tok dbcache.Token
	var got []byte
	held("cas", "x", func() (err error) { got, tok, err = a.near.GetWithToken(ctx, "cas"); return err })
	require.Equal(t, "x", string(got))
	ok, err := a.near.CompareAndSwap(ctx, "cas", tok, []byte("swapped"), dbcache.Forever)
	require.NoError(t, err)
	require.True(t, ok, "the token read after the queued write was committed is the entry's")
	// Many goroutines, each its own key, Set then Incr at once.
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			key := "c" + strconv.Itoa(g)
			for i := range 30 {
				if err := a.near.Set(ctx, key, []byte(strconv.Itoa(i*10)), dbcache.Forever); err != nil {
					t.Error(err)
					return
				}
				n, err := a.near.Incr(ctx, key, 1)
				if err != nil || n != int64(i*10+1) {
					t.Errorf("%s: Incr after Set(%d) = %d, %v", key, i*10, n, err)
					return
				}
				v, err := a.near.Get(ctx, key)
				if err != nil || string(v) != strconv.Itoa(i*10+1) {
					t.Errorf("%s: read %q, %v after the Incr", key, v, err)
					return
				}
			}
		})
	}
	wg.Wait()
	require.Zero(t, a.near.Stats().WritesLost)
}

// A full queue makes writers wait for room (as long as their context
// allows and at most MaxDelay), never drops a write, and a write of a key
// already queued replaces its value without waiting.
func TestWriteBehindQueueFullPushesBack(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	var h *heldWrites
	a := e.procWith(t, wbConfig(30*time.Second, 4), func(c *dbcache.Cache) dbcache.Store {
		h = &heldWrites{Cache: c}
		return h
	})
	other := e.proc(t, nil)
	ctx := ctxT(t)
	h.block()
	require.NoError(t, a.near.Set(ctx, "first", []byte("1"), dbcache.Forever))
	<-h.entered // the flusher holds "first" in its batch
	for i := range 4 {
		require.NoError(t, a.near.Set(ctx, "q"+strconv.Itoa(i), []byte("1"), dbcache.Forever))
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	err := a.near.Set(short, "over", []byte("1"), dbcache.Forever)
	require.ErrorIs(t, err, nearcache.ErrQueueFull)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	_, err = a.near.Get(ctx, "over")
	require.ErrorIs(t, err, dbcache.ErrMiss, "a write refused for a full queue changed nothing")
	// A SetMany is queued all or nothing: refused whole for a full queue,
	// or for a key the store refuses.
	short2, cancel2 := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel2()
	failed, err := a.near.SetMany(short2, map[string][]byte{"m1": []byte("1"), "q1": []byte("new")}, dbcache.Forever)
	require.ErrorIs(t, err, nearcache.ErrQueueFull)
	require.ElementsMatch(t, []string{"m1", "q1"}, failed)
	_, err = a.near.SetMany(ctx, map[string][]byte{"q2": []byte("new"), "bad\x00key": []byte("1")}, dbcache.Forever)
	require.ErrorIs(t, err, dbcache.ErrInvalidKey)
	for _, k := range []string{"m1"} {
		ok, err := a.near.HasKey(ctx, k)
		require.NoError(t, err)
		require.False(t, ok, "%q: nothing of a refused SetMany was queued", k)
	}
	for _, k := range []string{"q1", "q2"} {
		v, err := a.near.Get(ctx, k)
		require.NoError(t, err)
		require.Equal(t, "1", string(v), "%s: nothing of a refused SetMany was queued", k)
	}
	require.NoError(t, a.near.Set(ctx, "q0", []byte("2"), dbcache.Forever), "a queued key takes a new value without room")
	waiting := make(chan error, 1)
	go func() { waiting <- a.near.Set(ctx, "later", []byte("1"), dbcache.Forever) }()
	select {
	case err := <-waiting:
		t.Fatalf("a Set into a full queue returned %v at once", err)
	case <-time.After(50 * time.Millisecond):
	}
	h.release()
	require.NoError(t, <-waiting)
	require.NoError(t, a.near.Flush(ctx))
	got, err := other.cache.GetMany(ctx, []string{"first", "q0", "q1", "q2", "q3", "later", "over", "m1"})
	require.NoError(t, err)
	require.Len(t, got, 6)
	require.Equal(t, "1", string(got["q1"]))
	require.Equal(t, "2", string(got["q0"]))
	s := a.near.Stats()
	require.Positive(t, s.QueueWaits)
	require.Zero(t, s.WritesLost)
}

// Close commits what is queued, then stops the flusher: every write that
// returned before Close is in the database after it, and later writes are
// refused.
func TestWriteBehindCloseFlushes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	var h *heldWrites
	a := e.procWith(t, wbConfig(30*time.Second, 0), func(c *dbcache.Cache) dbcache.Store {
		h = &heldWrites{Cache: c}
		return h
	})
	other := e.proc(t, nil)
	ctx := ctxT(t)
	h.block()
	require.NoError(t, a.near.Set(ctx, "k0", []byte("v"), dbcache.Forever))
	<-h.entered
	keys := []string{"k0"}
	for i := 1; i < 500; i++ {
		keys = append(keys, "k"+strconv.Itoa(i))
		require.NoError(t, a.near.Set(ctx, keys[i], []byte("v"), dbcache.Forever))
	}
	closed := make(chan error, 1)
	go func() { closed <- a.near.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) before the queued writes were committed", err)
	case <-time.After(50 * time.Millisecond):
	}
	h.release()
	require.NoError(t, <-closed)
	require.ErrorIs(t, a.near.Set(ctx, "after", []byte("v"), dbcache.Forever), dbcache.ErrClosed)
	got, err := other.cache.GetMany(ctx, keys)
	require.NoError(t, err)
	require.Len(t, got, 500)
	s := a.near.Stats()
	require.Zero(t, s.WritesPending)
	require.Zero(t, s.WritesLost)
	batches := h.batches.Load()
	time.Sleep(50 * time.Millisecond)
	require.Equal(t, batches, h.batches.Load(), "no flusher runs after Close")
}

// A server stopped while batches are in flight: the flusher retries until
// MaxDelay, then gives the writes up: counted, logged without keys, and
// their values no longer served by this process, which reads the database
// again once it is back.
func TestWriteBehindServerStopped(t *testing.T) {
	t.Parallel()
	srv, err := startServer(ctxT(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Remove(context.Background()) })
	e := newEnv(t, srv)
	var logs bytes.Buffer
	var logMu sync.Mutex
	logText := func() string { logMu.Lock(); defer logMu.Unlock(); return logs.String() }
	cfg := wbConfig(500*time.Millisecond, 0)
	cfg.Logger = slog.New(slog.NewTextHandler(&lockedBuf{mu: &logMu, b: &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	lt := &lostTracer{}
	cfg.Tracer = lt
	a := e.proc(t, cfg)
	ctx := ctxT(t)
	require.NoError(t, a.near.Set(ctx, "k", []byte("committed"), dbcache.Forever))
	require.NoError(t, a.near.Flush(ctx))
	stop := make(chan struct{})
	var writes sync.WaitGroup
	writes.Go(func() { // Sets racing the shutdown, some in a batch mid-flight
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = a.near.Set(ctx, "busy"+strconv.Itoa(i%50), []byte("x"), dbcache.Forever)
			time.Sleep(time.Millisecond)
		}
	})
	time.Sleep(50 * time.Millisecond)
	require.NoError(t, srv.Shutdown(ctx))
	require.NoError(t, a.near.Set(ctx, "k", []byte("lost"), dbcache.Forever), "a Set returns once queued")
	v, err := a.near.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "lost", string(v), "read your writes while the flusher retries")
	eventually(t, "the write is given up", func() bool {
		v, err := a.near.Get(ctx, "k")
		return err != nil || string(v) != "lost"
	})
	close(stop)
	writes.Wait()
	require.Positive(t, a.near.Stats().WritesLost)
	require.Equal(t, a.near.Stats().WritesLost, lt.lost.Load(), "the Tracer saw every write given up")
	require.NoError(t, srv.Restart(ctx))
	eventually(t, "the database's value is read once it is back", func() bool {
		v, err := a.near.Get(ctx, "k")
		if err == nil {
			require.Equal(t, "committed", string(v), "a given-up write is never served")
		}
		return err == nil
	})
	require.Contains(t, logText(), "write-behind batch given up")
	require.NotContains(t, logText(), "busy", "no key in the log")
	require.NoError(t, a.near.Set(ctx, "k", []byte("again"), dbcache.Forever))
	require.NoError(t, a.near.Flush(ctx))
	v, err = a.near.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "again", string(v))
}

// lostTracer counts the writes the Tracer is told were given up.
type lostTracer struct {
	recorder
	lost atomic.Int64
}

func (l *lostTracer) TraceInvalidate(inv nearcache.Invalidation) {
	if inv.Cause == nearcache.CauseWriteLost {
		if inv.Key != "" {
			panic("a key reached the Tracer")
		}
		l.lost.Add(int64(inv.Keys))
	}
	l.recorder.TraceInvalidate(inv)
}

// wbJob is the crash test's writer process's job.
type wbJob struct {
	DSN, Schema, Prefix string
	Delay               time.Duration
}

func init() {
	dbtest.Role("wb-writer", runWBWriter)
}

// runWBWriter writes distinct keys from 4 goroutines through a
// write-behind near cache as fast as it can, printing "ack <key> <unix
// ns>" once each Set has returned, until it is killed.
func runWBWriter(ctx context.Context, arg string) error {
	var j wbJob
	if err := json.Unmarshal([]byte(arg), &j); err != nil {
		return err
	}
	cfg, err := pgxpool.ParseConfig(j.DSN)
	if err != nil {
		return err
	}
	cfg.MaxConns = 4
	cfg.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{j.Schema}.Sanitize()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, nil)
	if err != nil {
		return err
	}
	near, err := nearcache.New(ctx, cache, pool, &nearcache.Config{WriteBehind: &nearcache.WriteBehind{MaxDelay: j.Delay}})
	if err != nil {
		return err
	}
	defer near.Close()
	// The pool's connections open before the stream starts.
	var warm sync.WaitGroup
	for g := range 4 {
		warm.Go(func() { _ = near.Set(ctx, fmt.Sprintf("%swarm%d", j.Prefix, g), []byte("v"), dbcache.Forever) })
	}
	warm.Wait()
	if err := near.Flush(ctx); err != nil {
		return err
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(out, "ready")
	_ = out.Flush()
	var wg sync.WaitGroup
	// Writes given up (a batch not committed within MaxDelay) are
	// reported: those may be lost whenever they were acknowledged.
	wg.Go(func() {
		var last int64
		for ctx.Err() == nil {
			time.Sleep(2 * time.Millisecond)
			if n := near.Stats().WritesLost; n != last {
				last = n
				mu.Lock()
				fmt.Fprintf(out, "lost %d\n", n)
				_ = out.Flush()
				mu.Unlock()
			}
		}
	})
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				key := fmt.Sprintf("%sg%d-%d", j.Prefix, g, i)
				if err := near.Set(ctx, key, []byte("v"), dbcache.Forever); err != nil {
					continue
				}
				at := time.Now().UnixNano()
				mu.Lock()
				fmt.Fprintf(out, "ack %s %d\n", key, at)
				_ = out.Flush()
				mu.Unlock()
				// About 4k writes a second from the 4 goroutines: a busy
				// writer, not one that saturates the server.
				time.Sleep(time.Millisecond)
			}
		})
	}
	wg.Wait()
	return nil
}

// A writer process killed (SIGKILL) mid-stream loses at most the writes
// that returned in the last MaxDelay before it died: every write
// acknowledged earlier is in the database.
func TestWriteBehindCrashLossWindow(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	const delay = 500 * time.Millisecond
	ctx := ctxT(t)
	other := e.proc(t, nil)
	for round := range 3 {
		arg, err := json.Marshal(wbJob{DSN: e.srv.URL(""), Schema: e.schema, Delay: delay, Prefix: fmt.Sprintf("r%d.", round)})
		require.NoError(t, err)
		p := dbtest.Start(t, "wb-writer", string(arg), true)
		acks := map[string]int64{}
		var order []string
		var killed int64
		var reported int // writes the writer reported given up
		for l := range p.Lines() {
			if l == "ready" {
				continue
			}
			f := strings.Fields(l)
			if len(f) == 2 && f[0] == "lost" {
				reported, _ = strconv.Atoi(f[1])
				continue
			}
			if len(f) != 3 || f[0] != "ack" {
				continue // a line cut by the kill
			}
			at, err := strconv.ParseInt(f[2], 10, 64)
			if err != nil {
				continue
			}
			acks[f[1]] = at
			order = append(order, f[1])
			if killed == 0 && len(acks) >= 3000*(round+1) {
				killed = time.Now().UnixNano()
				require.NoError(t, p.Signal(syscall.SIGKILL))
			}
		}
		<-p.Done()
		require.NotZero(t, killed, "the writer was killed mid-stream")
		got, err := other.cache.GetMany(ctx, order)
		require.NoError(t, err)
		var lost, late int
		var oldest time.Duration
		for _, k := range order {
			if _, ok := got[k]; ok {
				continue
			}
			lost++
			age := time.Duration(killed - acks[k])
			oldest = max(oldest, age)
			if age > delay {
				late++
			}
		}
		t.Logf("round %d: %d writes acknowledged, %d lost, the oldest lost acknowledged %s before the kill (MaxDelay %s); %d lost acknowledged earlier than MaxDelay, %d given up and reported by the writer",
			round, len(order), lost, oldest, delay, late, reported)
		require.LessOrEqualf(t, late, reported, "writes acknowledged more than MaxDelay before the kill are in the database, unless reported given up")
	}
}
