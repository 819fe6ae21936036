package nearcachev0

import (
	"context"
	"sync/atomic"
	"time"
)

// Tracer sees what the layer does, for metrics: set Config.Tracer. Its
// methods run synchronously (TraceRead on the caller's goroutine, the others
// on the feed's) and must not block. The store's own dbcache.Tracer still
// sees every operation that reaches the database; this one sees the reads
// that did not.
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
	// read) or CauseClear (everything, or a prefix, through this layer).
	Cause string
	// Keys is how many keys were named (for a single-key cause, 1);
	// Dropped how many copies were actually held and dropped.
	Keys, Dropped int
	// Key is the stored key, for a single-key cause.
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
)

// Stats is a snapshot of the layer's counters since New.
type Stats struct {
	// Hits and Misses count keys read through the layer: served from
	// memory, or passed to the store. HitRatio is Hits/(Hits+Misses).
	Hits, Misses int64
	// Fills counts copies stored after a miss; FillsRefused the reads
	// whose value was not kept because the key changed (or the feed
	// broke) while they ran, or the value was over MaxEntryBytes.
	Fills, FillsRefused int64
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
	// Staleness is how long ago the newest confirmed heartbeat was sent:
	// every write committed before then has been applied. Reads are
	// served from memory while it is under Config.MaxStaleness.
	Staleness time.Duration
}

// HitRatio is Hits/(Hits+Misses), or 0 before any read.
func (s Stats) HitRatio() float64 {
	if s.Hits+s.Misses == 0 {
		return 0
	}
	return float64(s.Hits) / float64(s.Hits+s.Misses)
}

type counters struct {
	hits, misses, fills, fillsRefused, writesKept, invalidations, flushes, bypassed, feedRestarts atomic.Int64
}
