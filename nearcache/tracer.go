package nearcache

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync/atomic"
	"time"
)

// Tracer sees what the layer does, for metrics: set Config.Tracer. Its
// methods run synchronously (TraceRead, and TraceInvalidate for a write
// through the layer, on the caller's goroutine; the others on the feed's)
// and must not block. A panic on the feed's goroutine is recovered, logged
// once and counted (Stats.Panics), and the feed goes on; one on the
// caller's goroutine propagates to the caller, after the operation has
// finished (no lock held). The store's own dbcache.Tracer still sees every
// operation that reaches the database; this one sees the reads that did
// not. No key reaches it unless Config.TraceKeys is set.
type Tracer interface {
	// TraceRead is called after each read through the layer (Get,
	// GetWithTTL, GetMany, HasKey, GetOrSet, GetOrSetFunc) with how many
	// keys it served from memory (hits) and how many it passed to the
	// store (misses; the store's own tracer tells whether they hit there).
	TraceRead(ctx context.Context, op string, hits, misses int)
	// TraceInvalidate is called when copies are dropped.
	TraceInvalidate(inv Invalidation)
	// TraceFeed is called when the feed comes up (err nil) or is lost.
	TraceFeed(up bool, err error)
}

// Invalidation says why copies were dropped.
type Invalidation struct {
	// Cause is CauseFeed (another writer's change, or this process's own,
	// read from the feed), CauseWrite (a write through this layer),
	// CauseExpiry is not reported (expired copies just stop being
	// served), CauseFeedLost (everything, the feed broke), CauseTruncate
	// (everything, the table was truncated or a change's key could not be
	// read), CauseClear (everything, or a prefix, through this layer) or
	// CauseWriteLost (write-behind: a batch given up, reported on the
	// flusher's goroutine; Keys is the writes lost).
	Cause string
	// Keys is how many keys were named (for a single-key cause, 1);
	// Dropped how many copies were actually held and dropped.
	Keys, Dropped int
	// Key is the stored key, for a single-key cause, when Config.TraceKeys
	// is set; empty otherwise.
	Key string
	// Lag is, for CauseFeed, the time from the change's commit (by the
	// database's clock) to its arrival (by the local clock): a rough
	// figure that includes any clock offset. Zero otherwise.
	Lag time.Duration
}

// The causes of an Invalidation.
const (
	CauseFeed     = "feed"
	CauseWrite    = "write"
	CauseFeedLost = "feed_lost"
	CauseTruncate = "truncate"
	CauseClear    = "clear"

	CauseWriteLost = "write_lost"
)

// Stats is a snapshot of the layer's counters since New.
type Stats struct {
	// Hits and Misses count keys read through the layer: served from
	// memory, or passed to the store. HitRatio is Hits/(Hits+Misses).
	Hits, Misses int64
	// Fills counts copies stored after a miss; FillsRefused the reads
	// that found a value and did not keep it: the key changed, another
	// read or write of it ended, or the feed broke while they ran, the
	// value was over MaxEntryBytes, or the visibility check refused it.
	Fills, FillsRefused int64
	// FillsUnseen counts the reads among FillsRefused whose statement's
	// snapshot had not seen a change the feed had delivered for the key
	// (or a table-wide one) end: the change was committed in the WAL but
	// not yet visible, as while its transaction waits for a synchronous
	// standby, so the read may have returned the value from before it.
	FillsUnseen int64
	// WritesKept counts Sets through the layer whose value was kept as
	// the key's copy.
	WritesKept int64
	// Invalidations counts keys invalidated by the feed and by writes
	// through the layer; Flushes the times everything was dropped.
	Invalidations, Flushes int64
	// Bypassed counts reads sent to the store, though a copy was held,
	// because the feed had not confirmed coherence within MaxStaleness.
	Bypassed int64
	// FeedRestarts counts the feed's starts after the first; FeedUp says
	// whether it is up now.
	FeedRestarts int64
	FeedUp       bool
	// Entries and Bytes are the copies held and their weight (keys,
	// values and per-entry overhead) against Config.MaxBytes.
	Entries int
	Bytes   uint64
	// Panics counts panics recovered on the layer's own goroutines: a
	// Tracer called by the feed, the store's read shared by several
	// callers (those callers get an error wrapping ErrPanic).
	Panics int64
	// Staleness is how long ago the newest confirmed heartbeat was sent:
	// every write committed before then has been applied. Reads are
	// served from memory while it is under Config.MaxStaleness.
	Staleness time.Duration

	// With Config.WriteBehind: WritesQueued counts Sets queued,
	// WritesCoalesced those that replaced a queued value of their key
	// (the last write wins), WriteBatches the batches the flusher took,
	// WritesCommitted the keys' writes committed, WriteRetries the
	// statements retried, QueueWaits the Sets that found the queue full
	// and waited. WritesLost counts the writes given up: their batch was
	// not committed within WriteBehind.MaxDelay (the server down or
	// slow), so they returned to their callers and may never reach the
	// database (their copies are dropped). WritesPending is the keys
	// queued or in a batch now.
	WritesQueued, WritesCoalesced, WriteBatches, WritesCommitted int64
	WritesLost, WriteRetries, QueueWaits                         int64
	WritesPending                                                int
}

// HitRatio is Hits/(Hits+Misses), or 0 before any read.
func (s Stats) HitRatio() float64 {
	if s.Hits+s.Misses == 0 {
		return 0
	}
	return float64(s.Hits) / float64(s.Hits+s.Misses)
}

type counters struct {
	hits, misses, fills, fillsRefused, fillsUnseen, writesKept, invalidations, flushes, bypassed, feedRestarts, panics atomic.Int64
}

// ErrPanic is wrapped by the error a caller gets when a callback the layer
// ran for it on its own goroutine (the store's read shared by several
// callers) panicked.
var ErrPanic = errors.New("nearcache: a callback panicked")

// panicked records a panic recovered on the layer's goroutine: counted,
// logged once (its type and stack, not its value, which may hold a key),
// and returned as an error wrapping ErrPanic.
func (c *Cache) panicked(where string, r any) error {
	c.cnt.panics.Add(1)
	c.panicLog.Do(func() {
		c.cfg.Logger.Error("nearcache: recovered a panic on the layer's goroutine; later ones are only counted (Stats.Panics)",
			"where", where, "panic_type", fmt.Sprintf("%T", r), "stack", string(debug.Stack()))
	})
	return fmt.Errorf("%w: %s", ErrPanic, where)
}

// traceFeed calls the Tracer from the feed's goroutine, recovering a panic.
func (c *Cache) traceFeed(f func(Tracer)) {
	t := c.cfg.Tracer
	if t == nil {
		return
	}
	defer func() {
		if r := recover(); r != nil {
			_ = c.panicked("the Tracer, called by the feed", r)
		}
	}()
	f(t)
}
