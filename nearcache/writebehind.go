package nearcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
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
}

const (
	// MaxDelayDefault is the default for WriteBehind.MaxDelay.
	MaxDelayDefault = 100 * time.Millisecond

	// MaxQueuedDefault is the default for WriteBehind.MaxQueued.
	MaxQueuedDefault = 4096
)

// ErrQueueFull is returned by a Set through a write-behind near cache
// that found the queue full and could not wait for room (for
// WriteBehind.MaxDelay, or as long as its context allowed): nothing was
// written.
var ErrQueueFull = errors.New("nearcache: the write-behind queue is full")

// pendingWrite is the newest queued value of one key.
type pendingWrite struct {
	key     string // the caller key
	value   []byte
	timeout dbcache.Timeout
	expires time.Time // zero: never (the copy's expiry, from the Set's start)
	seq     uint64
	queued  bool // not yet taken by a batch
	since   int64
	// queuedAt is when it became queued (Cache.since): the deadline of
	// its batch counts from the first queued of the batch.
	queuedAt int64
}

type writeBehind struct {
	c        *Cache
	maxDelay time.Duration
	maxQ     int
	validate func(ctx context.Context, madeKey string) error

	mu      sync.Mutex
	pending map[string]*pendingWrite // by made key: queued or in a batch
	queued  int
	seq     uint64 // the newest write's
	done    uint64 // every write up to it has been committed or given up
	closed  bool
	changed chan struct{} // closed (and replaced) when done moves or room frees

	wake chan struct{} // the flusher has work
	stop chan struct{} // Close: drain and return

	cnt struct {
		queued, coalesced, batches, committed, lost, retries, waits atomic.Int64
	}
}

func newWriteBehind(c *Cache, cfg WriteBehind) *writeBehind {
	w := &writeBehind{c: c, maxDelay: cfg.MaxDelay, maxQ: cfg.MaxQueued, pending: map[string]*pendingWrite{},
		changed: make(chan struct{}), wake: make(chan struct{}, 1), stop: make(chan struct{})}
	if v, ok := c.store.(interface {
		ValidateKey(ctx context.Context, madeKey string) error
	}); ok {
		w.validate = v.ValidateKey
	}
	return w
}

// broadcast wakes every waiter (under mu).
func (w *writeBehind) broadcast() {
	close(w.changed)
	w.changed = make(chan struct{})
}

// deferrable reports whether a Set with timeout is queued: Forever or a
// positive TTL (DefaultTimeout's lifetime is the store's, unknown here,
// and a TTL of zero or less deletes).
func deferrable(timeout dbcache.Timeout) bool {
	d, ttl := timeout.Duration()
	return timeout.IsForever() || (ttl && d > 0)
}

// enqueue queues a Set of key (made key mk) that began at start. It waits
// for room while the queue is full, at most maxDelay and as long as ctx
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
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	w.mu.Lock()
	for {
		if w.closed {
			w.mu.Unlock()
			return dbcache.ErrClosed
		}
		if p := w.pending[mk]; (p != nil && p.queued) || w.queued < w.maxQ {
			break
		}
		// Full: wait for the flusher to take the queue.
		ch := w.changed
		w.mu.Unlock()
		w.cnt.waits.Add(1)
		if timer == nil {
			timer = time.NewTimer(w.maxDelay)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrQueueFull, ctx.Err())
		case <-timer.C:
			return fmt.Errorf("%w (waited WriteBehind.MaxDelay, %s)", ErrQueueFull, w.maxDelay)
		}
		w.mu.Lock()
	}
	now := w.c.since(time.Now())
	p := w.pending[mk]
	if p == nil {
		p = &pendingWrite{}
		w.pending[mk] = p
	}
	if p.queued {
		w.cnt.coalesced.Add(1)
	} else {
		p.queued = true
		p.queuedAt = now
		w.queued++
	}
	w.seq++
	p.key, p.value, p.timeout, p.expires, p.seq, p.since = key, value, timeout, expires, w.seq, now
	w.mu.Unlock()
	w.cnt.queued.Add(1)
	// No read joins a store read that began before this write.
	w.c.seal(mk, nil)
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return nil
}

// lookup returns mk's pending value, if it has one: found, and live unless
// its lifetime has run out.
func (w *writeBehind) lookup(mk string, now time.Time) (value []byte, expires time.Time, found, live bool) {
	w.mu.Lock()
	p := w.pending[mk]
	if p == nil {
		w.mu.Unlock()
		return nil, time.Time{}, false, false
	}
	value, expires = p.value, p.expires
	w.mu.Unlock()
	return value, expires, true, expires.IsZero() || now.Before(expires)
}

// settle waits until every write queued so far that is still pending for
// one of mks (every pending write when mks is empty) has been committed or
// given up: at once when none is.
func (w *writeBehind) settle(ctx context.Context, mks ...string) error {
	w.mu.Lock()
	need := len(mks) == 0 && len(w.pending) > 0
	for _, mk := range mks {
		if w.pending[mk] != nil {
			need = true
			break
		}
	}
	if !need {
		w.mu.Unlock()
		return nil
	}
	target := w.seq
	for w.done < target {
		ch := w.changed
		w.mu.Unlock()
		select {
		case w.wake <- struct{}{}:
		default:
		}
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

// flushOnce takes the queue and commits it; it reports whether there was
// anything to take.
func (w *writeBehind) flushOnce() bool {
	w.mu.Lock()
	if w.queued == 0 {
		w.mu.Unlock()
		return false
	}
	items := make([]batchItem, 0, w.queued)
	first := int64(-1)
	for mk, p := range w.pending {
		if !p.queued {
			continue
		}
		p.queued = false
		if first < 0 || p.queuedAt < first {
			first = p.queuedAt
		}
		items = append(items, batchItem{mk: mk, p: *p})
	}
	w.queued = 0
	top := w.seq
	w.broadcast() // room
	w.mu.Unlock()
	slices.SortFunc(items, func(a, b batchItem) int {
		switch {
		case a.mk < b.mk:
			return -1
		case a.mk > b.mk:
			return 1
		}
		return 0
	})
	deadline := w.c.base.Add(time.Duration(first) + w.maxDelay)
	w.commit(items, deadline)
	w.mu.Lock()
	w.done = top
	w.broadcast()
	w.mu.Unlock()
	return true
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
		var kept, lost int
		for _, it := range g.items {
			k, _ := c.local.endWrite(it.tok, err == nil, it.p.value, it.p.expires, now)
			c.seal(it.mk, nil)
			kept += b2i(k)
			w.mu.Lock()
			if p := w.pending[it.mk]; p != nil && p.seq == it.p.seq {
				delete(w.pending, it.mk)
				if err != nil {
					lost++
				}
			}
			w.mu.Unlock()
		}
		c.cnt.writesKept.Add(int64(kept))
		if err != nil {
			// A write given up whose key was queued again meanwhile is
			// superseded by the newer value (still pending), not lost
			// from this process's view; the others are.
			w.cnt.lost.Add(int64(lost))
			c.cnt.invalidations.Add(int64(len(g.items) - kept))
			c.cfg.Logger.Warn("nearcache: write-behind batch given up after WriteBehind.MaxDelay: its writes are lost",
				"writes", len(g.items), "superseded", len(g.items)-lost, "max_delay", w.maxDelay, "err", err)
			continue
		}
		w.cnt.committed.Add(int64(len(g.items)))
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
	w.mu.Lock()
	w.closed = true
	w.broadcast()
	w.mu.Unlock()
	close(w.stop)
}
