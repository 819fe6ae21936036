package nearcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dbcache/dbcache/dbcache"
)

// Write-behind (Config.WriteBehind): a Set returns once its value is in the
// process's queue, and a flusher goroutine commits the queue in batches.
//
// The queue is a map by made key of the newest value written through the
// layer and not yet known committed (pending): reads through the layer
// look there first, so the process reads its own writes at once. A Set of
// a key already queued replaces its value (the last write wins, in call
// order). The flusher takes everything queued at once, as one batch, and
// writes it with the store's SetMany, one statement per timeout among the
// batch's writes (rows in key order, as SetMany locks them), each key's
// write registered through the layer's write window as a Set's is, so the
// value committed is kept as the key's copy. Writes queued while a batch
// commits wait for the next: batches are committed one after the other,
// so two writes of one key are committed in the order they were queued.
//
// A batch must be committed within MaxDelay of the first of its writes to
// be queued: its statements run with that deadline, retried until it.
// When it passes, the batch's writes are given up (Stats.WritesLost, a
// log line without keys): their pending values and copies are dropped, so
// the process no longer serves values nobody else may see.
//
// Every other write through the layer (Add, Incr, CompareAndSwap, Delete,
// Touch, a Set with DefaultTimeout, ...) is sent at once, as without
// write-behind, after the queue is flushed when one of its keys is pending
// (settle): it then applies after the queued write of its key, as it
// would have had that write been sent when it returned.

// WriteBehind configures write-behind: Sets queued in the process and
// committed in batches. See Config.WriteBehind.
type WriteBehind struct {
	// MaxDelay bounds how long after a Set returns its batch's commit may
	// end: it is the loss window on a crash, and it adds to the staleness
	// bound for other processes. Defaults to MaxDelayDefault.
	MaxDelay time.Duration

	// MaxQueued bounds the distinct keys queued and not yet taken by a
	// batch; a Set of another key waits for room. Defaults to
	// MaxQueuedDefault.
	MaxQueued int

	// MaxWait bounds how long a Set waits for room in a full queue (its
	// context may end the wait sooner); then it returns ErrQueueFull,
	// having written nothing. Defaults to dbcache.OpTimeoutDefault, the
	// bound of a Set that waits for its commit.
	MaxWait time.Duration
}

const (
	// MaxDelayDefault is the default for WriteBehind.MaxDelay.
	MaxDelayDefault = 500 * time.Millisecond

	// MaxQueuedDefault is the default for WriteBehind.MaxQueued: a batch
	// of this many rows commits in well under MaxDelayDefault on a loaded
	// server.
	MaxQueuedDefault = 1024
)

// ErrQueueFull is returned by a Set through a write-behind near cache
// that found the queue full and could not wait for room (for
// WriteBehind.MaxWait, or as long as its context allowed): nothing was
// written.
var ErrQueueFull = errors.New("nearcache: the write-behind queue is full")

// pendingWrite is the newest queued value of one key.
type pendingWrite struct {
	key     string // the caller key
	value   []byte
	timeout dbcache.Timeout
	expires time.Time // zero: never (the copy's expiry, from the Set's start)
	seq     uint64    // moves with every write of the key
	queued  bool      // not yet taken by a batch
	// queuedAt is when it became queued (Cache.since): the deadline of
	// its batch counts from the first queued of the batch.
	queuedAt int64
}

const pendingShards = 64

type pendingShard struct {
	mu sync.Mutex
	m  map[string]*pendingWrite // by made key: queued or in a batch
}

type writeBehind struct {
	c        *Cache
	maxDelay time.Duration
	maxWait  time.Duration
	maxQ     int64
	validate func(ctx context.Context, madeKey string) error
	seed     maphash.Seed
	shards   [pendingShards]pendingShard
	queued   atomic.Int64 // keys queued, not yet taken
	// flying is 1 + the first queuedAt of the batch being committed, 0
	// when none is (see behind).
	flying  atomic.Int64
	pending atomic.Int64 // keys queued or in a batch
	seq     atomic.Uint64

	// mu guards the generations and changed. taken counts the batches
	// taken (an empty one when asked for), resolved those whose writes
	// have all been committed or given up.
	mu       sync.Mutex
	taken    uint64
	resolved uint64
	changed  chan struct{} // closed (and replaced) when resolved moves or room frees

	closing sync.RWMutex
	closed  bool // under closing

	wake chan struct{} // the flusher has work, or a settle waits
	stop chan struct{} // Close: drain and return

	cnt struct {
		queued, coalesced, batches, committed, lost, retries, waits atomic.Int64
	}
}

func newWriteBehind(c *Cache, cfg WriteBehind) *writeBehind {
	w := &writeBehind{c: c, maxDelay: cfg.MaxDelay, maxWait: cfg.MaxWait, maxQ: int64(cfg.MaxQueued), seed: maphash.MakeSeed(),
		changed: make(chan struct{}), wake: make(chan struct{}, 1), stop: make(chan struct{})}
	for i := range w.shards {
		w.shards[i].m = map[string]*pendingWrite{}
	}
	if v, ok := c.store.(interface {
		ValidateKey(ctx context.Context, madeKey string) error
	}); ok {
		w.validate = v.ValidateKey
	}
	return w
}

func (w *writeBehind) shard(mk string) *pendingShard {
	return &w.shards[maphash.String(w.seed, mk)%pendingShards]
}

// broadcast wakes every waiter (under mu).
func (w *writeBehind) broadcast() {
	close(w.changed)
	w.changed = make(chan struct{})
}

func (w *writeBehind) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// deferrable reports whether a Set with timeout is queued: Forever or a
// positive TTL (DefaultTimeout's lifetime is the store's, unknown here,
// and a TTL of zero or less deletes).
func deferrable(timeout dbcache.Timeout) bool {
	d, ttl := timeout.Duration()
	return timeout.IsForever() || (ttl && d > 0)
}

// enqueue queues a Set of key (made key mk) that began at start. It waits
// for room while the queue is full, at most maxWait and as long as ctx
// allows.
func (w *writeBehind) enqueue(ctx context.Context, key, mk string, value []byte, timeout dbcache.Timeout, start time.Time) error {
	if w.validate != nil {
		if err := w.validate(ctx, mk); err != nil {
			return err
		}
	}
	var expires time.Time
	if d, ttl := timeout.Duration(); ttl {
		expires = start.Add(d)
	}
	value = bytes.Clone(nonNil(value))
	sh := w.shard(mk)
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		w.mu.Lock()
		ch := w.changed
		w.mu.Unlock()
		// closing is held from the check to the insert, so that Close's
		// drain sees every write queued before it refused more.
		w.closing.RLock()
		if w.closed {
			w.closing.RUnlock()
			return dbcache.ErrClosed
		}
		sh.mu.Lock()
		if p := sh.m[mk]; (p != nil && p.queued) || w.reserve() {
			break // with sh.mu and closing held
		}
		sh.mu.Unlock()
		w.closing.RUnlock()
		// Full: wait for the flusher to take the queue.
		w.cnt.waits.Add(1)
		w.poke()
		if timer == nil {
			timer = time.NewTimer(w.maxWait)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrQueueFull, ctx.Err())
		case <-timer.C:
			return fmt.Errorf("%w (waited WriteBehind.MaxWait, %s)", ErrQueueFull, w.maxWait)
		}
	}
	w.put(sh, key, mk, value, timeout, expires, w.c.since(time.Now()))
	sh.mu.Unlock()
	w.closing.RUnlock()
	// No read joins a store read that began before this write.
	w.c.seal(mk, nil)
	w.poke()
	return nil
}

// put stores a write of mk (under sh's lock, room reserved unless mk is
// queued already).
func (w *writeBehind) put(sh *pendingShard, key, mk string, value []byte, timeout dbcache.Timeout, expires time.Time, now int64) {
	p := sh.m[mk]
	if p == nil {
		p = &pendingWrite{}
		sh.m[mk] = p
		w.pending.Add(1)
	}
	if p.queued {
		w.cnt.coalesced.Add(1)
	} else { // room was reserved
		p.queued = true
		p.queuedAt = now
	}
	p.key, p.value, p.timeout, p.expires, p.seq = key, value, timeout, expires, w.seq.Add(1)
	w.cnt.queued.Add(1)
}

// enqueueMany is enqueue for every item of a SetMany, all or nothing: the
// keys are validated first, and room is reserved for all of them at once,
// with their shards locked (in index order: no other path holds two), so
// either every item is queued or none is. keys is sorted; len(keys) is at
// most maxQ.
func (w *writeBehind) enqueueMany(ctx context.Context, keys []string, items map[string][]byte, timeout dbcache.Timeout, start time.Time) error {
	mks := make([]string, len(keys))
	for i, k := range keys {
		mks[i] = w.c.makeKey(k)
		if w.validate != nil {
			if err := w.validate(ctx, mks[i]); err != nil {
				return err
			}
		}
	}
	var expires time.Time
	if d, ttl := timeout.Duration(); ttl {
		expires = start.Add(d)
	}
	values := make([][]byte, len(keys))
	for i, k := range keys {
		values[i] = bytes.Clone(nonNil(items[k]))
	}
	var idx []int
	seen := map[int]bool{}
	for _, mk := range mks {
		i := int(maphash.String(w.seed, mk) % pendingShards)
		if !seen[i] {
			seen[i] = true
			idx = append(idx, i)
		}
	}
	slices.Sort(idx)
	lock := func() {
		for _, i := range idx {
			w.shards[i].mu.Lock()
		}
	}
	unlock := func() {
		for _, i := range idx {
			w.shards[i].mu.Unlock()
		}
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		w.mu.Lock()
		ch := w.changed
		w.mu.Unlock()
		w.closing.RLock()
		if w.closed {
			w.closing.RUnlock()
			return dbcache.ErrClosed
		}
		lock()
		need := 0
		counted := map[string]bool{}
		for _, mk := range mks {
			if p := w.shard(mk).m[mk]; (p == nil || !p.queued) && !counted[mk] {
				counted[mk] = true
				need++
			}
		}
		if need == 0 || w.reserveN(int64(need)) {
			break // with the shards and closing held
		}
		unlock()
		w.closing.RUnlock()
		w.cnt.waits.Add(1)
		w.poke()
		if timer == nil {
			timer = time.NewTimer(w.maxWait)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrQueueFull, ctx.Err())
		case <-timer.C:
			return fmt.Errorf("%w (waited WriteBehind.MaxWait, %s)", ErrQueueFull, w.maxWait)
		}
	}
	now := w.c.since(time.Now())
	for i, mk := range mks {
		w.put(w.shard(mk), keys[i], mk, values[i], timeout, expires, now)
	}
	unlock()
	w.closing.RUnlock()
	for _, mk := range mks {
		w.c.seal(mk, nil)
	}
	w.poke()
	return nil
}

// reserve takes room for a key in the queue, if there is room and the
// flusher is not behind.
func (w *writeBehind) reserve() bool { return w.reserveN(1) }

// reserveN takes room for n keys, all or none.
func (w *writeBehind) reserveN(n int64) bool {
	if w.behind() {
		return false
	}
	for {
		q := w.queued.Load()
		if q+n > w.maxQ {
			return false
		}
		if w.queued.CompareAndSwap(q, q+n) {
			return true
		}
	}
}

// behind reports whether the batch being committed holds a write queued
// more than MaxDelay/2 ago: the server is slow, and the writes queued
// behind it would wait as long again before theirs begins, so a write of
// a key not yet queued waits instead (the queue is full).
func (w *writeBehind) behind() bool {
	f := w.flying.Load()
	return f != 0 && w.c.since(time.Now())-(f-1) > int64(w.maxDelay/2)
}

// lookup returns mk's pending value, if it has one: found, and live unless
// its lifetime has run out.
func (w *writeBehind) lookup(mk string, now time.Time) (value []byte, expires time.Time, found, live bool) {
	if w.pending.Load() == 0 {
		return nil, time.Time{}, false, false
	}
	sh := w.shard(mk)
	sh.mu.Lock()
	p := sh.m[mk]
	if p == nil {
		sh.mu.Unlock()
		return nil, time.Time{}, false, false
	}
	value, expires = p.value, p.expires
	sh.mu.Unlock()
	return value, expires, true, expires.IsZero() || now.Before(expires)
}

// settle waits until every write that returned before it was called and
// is still pending for one of mks (every pending write when mks is empty)
// has been committed or given up: at once when none is. Batches are taken
// one at a time, each taking every key queued when it is taken: a write
// queued before this call is in the batch being committed or in the next
// one taken, so once the batch taken after this call is resolved, so is
// the write.
func (w *writeBehind) settle(ctx context.Context, mks ...string) error {
	need := len(mks) == 0 && w.pending.Load() > 0
	for _, mk := range mks {
		if need {
			break
		}
		sh := w.shard(mk)
		sh.mu.Lock()
		need = sh.m[mk] != nil
		sh.mu.Unlock()
	}
	if !need {
		return nil
	}
	w.mu.Lock()
	target := w.taken + 1
	for w.resolved < target {
		ch := w.changed
		w.mu.Unlock()
		w.poke()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		w.mu.Lock()
	}
	w.mu.Unlock()
	return nil
}

// Flush commits every write queued before it was called, waiting as long
// as ctx allows. Without write-behind it returns nil at once. A write
// given up (its batch not committed within WriteBehind.MaxDelay) is
// counted in Stats.WritesLost, not returned here.
func (c *Cache) Flush(ctx context.Context) error {
	if c.wb == nil {
		return nil
	}
	return c.wb.settle(ctx)
}

// run is the flusher: it commits batches until stop, then drains the
// queue.
func (w *writeBehind) run() {
	for {
		select {
		case <-w.wake:
		case <-w.stop:
			for w.flushOnce() {
			}
			w.flushOnce() // an empty one, for any settle waiting
			return
		}
		for w.flushOnce() {
		}
	}
}

// batchItem is one key's write taken into a batch.
type batchItem struct {
	mk  string
	p   pendingWrite // the values taken
	tok writeToken
}

// flushOnce takes the queue (an empty batch when nothing is queued) and
// commits it; it reports whether it took anything.
func (w *writeBehind) flushOnce() bool {
	w.mu.Lock()
	w.taken++
	gen := w.taken
	w.mu.Unlock()
	var items []batchItem
	first := int64(-1)
	if w.queued.Load() > 0 {
		for i := range w.shards {
			sh := &w.shards[i]
			sh.mu.Lock()
			for mk, p := range sh.m {
				if !p.queued {
					continue
				}
				p.queued = false
				w.queued.Add(-1)
				if first < 0 || p.queuedAt < first {
					first = p.queuedAt
				}
				items = append(items, batchItem{mk: mk, p: *p})
			}
			sh.mu.Unlock()
		}
	}
	w.mu.Lock()
	w.broadcast() // room
	w.mu.Unlock()
	if len(items) > 0 {
		slices.SortFunc(items, func(a, b batchItem) int { return strings.Compare(a.mk, b.mk) })
		w.flying.Store(first + 1)
		w.commit(items, w.c.base.Add(time.Duration(first)+w.maxDelay))
		w.flying.Store(0)
	}
	w.mu.Lock()
	w.resolved = gen
	w.broadcast()
	w.mu.Unlock()
	return len(items) > 0
}

// commit writes items, grouped by timeout, each group in one SetMany
// statement, retried until deadline.
func (w *writeBehind) commit(items []batchItem, deadline time.Time) {
	c := w.c
	w.cnt.batches.Add(1)
	for i := range items {
		items[i].tok = c.local.beginWrite(items[i].mk)
	}
	type group struct {
		timeout dbcache.Timeout
		items   []*batchItem
	}
	var groups []group
	for i := range items {
		it := &items[i]
		found := false
		for g := range groups {
			if groups[g].timeout == it.p.timeout {
				groups[g].items = append(groups[g].items, it)
				found = true
				break
			}
		}
		if !found {
			groups = append(groups, group{timeout: it.p.timeout, items: []*batchItem{it}})
		}
	}
	for _, g := range groups {
		m := make(map[string][]byte, len(g.items))
		for _, it := range g.items {
			m[it.p.key] = it.p.value
		}
		err := w.setMany(m, g.timeout, deadline)
		now := c.since(time.Now())
		var kept, lost, dropped int
		for _, it := range g.items {
			k, d := c.local.endWrite(it.tok, err == nil, it.p.value, it.p.expires, now)
			dropped += b2i(d)
			c.seal(it.mk, nil)
			kept += b2i(k)
			sh := w.shard(it.mk)
			sh.mu.Lock()
			if p := sh.m[it.mk]; p != nil && p.seq == it.p.seq && !p.queued {
				delete(sh.m, it.mk)
				w.pending.Add(-1)
				if err != nil {
					lost++
				}
			}
			sh.mu.Unlock()
		}
		c.cnt.writesKept.Add(int64(kept))
		if err != nil {
			// A write given up whose key was queued again meanwhile is
			// superseded by the newer value (still pending), not lost
			// from this process's view; the others are.
			w.cnt.lost.Add(int64(lost))
			c.cnt.invalidations.Add(int64(len(g.items) - kept))
			c.traceFeed(func(t Tracer) {
				t.TraceInvalidate(Invalidation{Cause: CauseWriteLost, Keys: lost, Dropped: dropped})
			})
			c.cfg.Logger.Warn("nearcache: write-behind batch given up after WriteBehind.MaxDelay: its writes are lost",
				"writes", len(g.items), "superseded", len(g.items)-lost, "max_delay", w.maxDelay, "err", err)
			continue
		}
		w.cnt.committed.Add(int64(len(g.items)))
		c.cnt.invalidations.Add(int64(len(g.items) - kept)) // committed, copy not kept
	}
}

// setMany is the store's SetMany of items, retried with backoff until it
// succeeds or deadline passes; a panic in it is an error.
func (w *writeBehind) setMany(items map[string][]byte, timeout dbcache.Timeout, deadline time.Time) error {
	backoff := 5 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := w.setManyOnce(items, timeout, deadline)
		if err == nil {
			return nil
		}
		left := time.Until(deadline)
		if left <= 0 || errors.Is(err, dbcache.ErrClosed) || errors.Is(err, dbcache.ErrInvalidKey) {
			return err
		}
		w.cnt.retries.Add(1)
		t := time.NewTimer(min(backoff, left))
		<-t.C
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

func (w *writeBehind) setManyOnce(items map[string][]byte, timeout dbcache.Timeout, deadline time.Time) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = w.c.panicked("the store's SetMany", r)
		}
	}()
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	failed, err := w.c.store.SetMany(ctx, items, timeout)
	if err == nil && len(failed) > 0 {
		// The store degraded (dbcache.Config.Degrade) and wrote nothing.
		err = fmt.Errorf("nearcache: the store did not write %d of %d queued writes", len(failed), len(items))
	}
	return err
}

// close refuses new writes, wakes the writers waiting for room, and
// drains the queue (bounded by each batch's deadline); wait for it with
// the flusher's WaitGroup.
func (w *writeBehind) close() {
	w.closing.Lock()
	w.closed = true
	w.closing.Unlock()
	w.mu.Lock()
	w.broadcast()
	w.mu.Unlock()
	close(w.stop)
}
