package dbcache

import (
	"context"
	"errors"
	"time"
)

// Tracer sees every operation of a cache: set Config.Tracer. It is how
// metrics (see package github.com/dbcache/dbcache/prommetrics) and tracing
// (OpenTelemetry, see package github.com/dbcache/dbcache/oteltrace) hook in,
// without this package importing any of them. As with pgx's tracers,
// optional extras are found by type assertion: a Tracer that is also a
// LoadTracer sees GetOrSetFunc's loader runs. With no Tracer set, an
// operation pays one nil check.
//
// Both methods run on the caller's goroutine, synchronously, and must not
// block: they are on the hot path of every operation. A panic in either
// propagates to the caller, as any panic on its goroutine does; the
// operation holds nothing then (TraceOpStart runs before it takes a
// connection, TraceOpEnd after it has released it).
//
// What a Tracer records leaves the process: an OpEnd's Err can name a key
// in its text (ErrNotInteger's does), so record ErrorCode(Err), as
// prommetrics and oteltrace do, unless the application opts in.
type Tracer interface {
	// TraceOpStart is called when an operation starts, after its keys
	// (and a prefix) are validated: an operation refused for an invalid
	// key is not traced, neither TraceOpStart nor TraceOpEnd. The context
	// it returns is the one the operation runs with (a span can live in
	// it) and is the one TraceOpEnd gets.
	TraceOpStart(ctx context.Context, op OpStart) context.Context
	// TraceOpEnd is called when the operation returns, once for each
	// TraceOpStart.
	TraceOpEnd(ctx context.Context, op OpEnd)
}

// LoadTracer is an optional extension of Tracer: TraceLoad is called after
// each loader run of GetOrSetFunc, in the goroutine that ran it. That is
// often a goroutine of the cache's (the load shared by concurrent callers,
// a background refresh): a panic there is recovered, counted in
// Stats.Panics and returned to the waiting callers as a *HookPanicError.
type LoadTracer interface {
	TraceLoad(ctx context.Context, load LoadEnd)
}

// LoadEventTracer is an optional extension of Tracer: TraceLoadEvent is
// called for each coordination event of the loaders (GetOrSetFunc,
// GetOrRevalidate), each of which Stats counts too. Like TraceLoad it may
// run on a goroutine of the cache's, where a panic is recovered (see
// LoadTracer); it must not block.
type LoadEventTracer interface {
	TraceLoadEvent(ctx context.Context, event LoadEvent)
}

// LoadEvent is a loader coordination event, named for metrics.
type LoadEvent string

// The loaders' events, and the Stats field that counts each.
const (
	// LoadJoined: a caller joined a load of the key already in flight in
	// this process (Stats.JoinedWaits).
	LoadJoined LoadEvent = "joined"
	// LoadLeaseWait: a flight found another process holding the key's
	// lease and waited for its value (Stats.LoadWaits).
	LoadLeaseWait LoadEvent = "lease_wait"
	// LoadLeaseExpired: a load's lease ran out rather than being
	// released: a loader outlived its lease (its value was not stored),
	// or a waiting flight took an expired lease over (Stats.LeaseExpiries).
	LoadLeaseExpired LoadEvent = "lease_expired"
	// LoadRefreshFailed: a background refresh's loader or write failed
	// (Stats.RefreshFailures).
	LoadRefreshFailed LoadEvent = "refresh_failed"
	// LoadRefreshBackoff: a stale hit started no refresh, the key's
	// refresh backing off or running elsewhere (Stats.RefreshBackoffs).
	LoadRefreshBackoff LoadEvent = "refresh_backoff"
)

// The names of the operations, as Django names them (TraceOpStart's Op).
const (
	OpAdd          = "add"
	OpClear        = "clear"
	OpDecr         = "decr"
	OpDecrVersion  = "decr_version"
	OpDelete       = "delete"
	OpDeleteMany   = "delete_many"
	OpDeletePrefix = "delete_prefix"
	OpGet          = "get"
	OpGetMany      = "get_many"
	OpGetOrSet     = "get_or_set"
	OpHasKey       = "has_key"
	OpIncr         = "incr"
	OpIncrVersion  = "incr_version"
	OpKeys         = "keys"
	OpSet          = "set"
	OpSetMany      = "set_many"
	OpTouch        = "touch"
	OpTTL          = "ttl"
)

// OpStart describes an operation that is starting.
type OpStart struct {
	// Op is the operation's name (OpGet, OpSet, …).
	Op string
	// Keys is the number of caller keys it carries (0 for Clear, 1 for a
	// prefix).
	Keys int
}

// OpEnd describes an operation that returned.
type OpEnd struct {
	OpStart
	// Hits and Misses count keys found and not found by a read (Get,
	// GetMany, HasKey, TTL, GetOrSet's read, Incr and the other
	// read-modify-writes, Touch and Delete, which find or miss an entry).
	Hits, Misses int
	// Stored counts entries written (Set, SetMany, an Add that stored, a
	// GetOrSet that stored); NotStored those a write did not store (an Add
	// that found a live entry, a SetMany that failed, writes skipped by
	// fail-open).
	Stored, NotStored int
	// Err is the error the operation returned to its caller; ErrMiss is
	// not an error here, it is a miss. Its text can hold the caller's key:
	// record ErrorCode(Err).
	Err error
	// FailedOpen is the transient error Config.FailOpen swallowed (Err is
	// then nil), or nil.
	FailedOpen error
	// Duration is the operation's wall time.
	Duration time.Duration
}

// LoadEnd describes one loader run of GetOrSetFunc or GetOrRevalidate.
type LoadEnd struct {
	// Refresh reports a background refresh of a stale entry (GetOrRevalidate)
	// rather than a load on a miss.
	Refresh bool
	// Err is the loader's error (a *LoaderPanicError for a panic).
	Err error
	// Duration is the loader's wall time.
	Duration time.Duration
}

// opTrace is one traced operation; nil when no Tracer is set, and every
// method is then a no-op.
type opTrace struct {
	t     Tracer
	ctx   context.Context
	start time.Time
	end   OpEnd
}

type traceKey struct{}

// trace starts tracing an operation; with no Tracer it returns ctx and nil.
func (c *Cache) trace(ctx context.Context, op string, keys int) (context.Context, *opTrace) {
	t := c.s.cfg.Tracer
	if t == nil {
		return ctx, nil
	}
	start := OpStart{Op: op, Keys: keys}
	tr := &opTrace{t: t, start: time.Now(), end: OpEnd{OpStart: start}}
	tr.ctx = t.TraceOpStart(ctx, start)
	if c.s.cfg.FailOpen {
		// Only fail-open needs to reach the trace from deep in the
		// operation; without it, skip the context allocation.
		tr.ctx = context.WithValue(tr.ctx, traceKey{}, tr)
	}
	return tr.ctx, tr
}

// failedOpen records, in ctx's trace if any, an error fail-open swallowed.
func failedOpen(ctx context.Context, err error) {
	if tr, ok := ctx.Value(traceKey{}).(*opTrace); ok {
		tr.end.FailedOpen = err
	}
}

func (tr *opTrace) finish(err error) {
	if errors.Is(err, ErrMiss) {
		err = nil
	}
	tr.end.Err = err
	tr.end.Duration = time.Since(tr.start)
	tr.t.TraceOpEnd(tr.ctx, tr.end)
}

// mark sets counts ahead of finish.
func (tr *opTrace) mark(hits, misses, stored int) {
	if tr == nil {
		return
	}
	tr.end.Hits, tr.end.Misses, tr.end.Stored = hits, misses, stored
}

// read ends a one-key read: a hit unless err is ErrMiss (or another error).
func (tr *opTrace) read(err error) {
	if tr == nil {
		return
	}
	switch {
	case err == nil:
		tr.end.Hits = 1
	case errors.Is(err, ErrMiss):
		tr.end.Misses = 1
	}
	tr.finish(err)
}

// found ends a one-key operation that found (true) or missed an entry.
func (tr *opTrace) found(ok bool, err error) {
	if tr == nil {
		return
	}
	if err == nil {
		if ok {
			tr.end.Hits = 1
		} else {
			tr.end.Misses = 1
		}
	}
	tr.finish(err)
}

// wrote ends a write of n entries, stored of which were stored.
func (tr *opTrace) wrote(n, stored int, err error) {
	if tr == nil {
		return
	}
	if err != nil || tr.end.FailedOpen != nil {
		stored = 0
	}
	tr.end.Stored, tr.end.NotStored = stored, n-stored
	tr.finish(err)
}

// many ends a bulk read of n keys that found hits.
func (tr *opTrace) many(n, hits int, err error) {
	if tr == nil {
		return
	}
	if err == nil {
		tr.end.Hits, tr.end.Misses = hits, n-hits
	}
	tr.finish(err)
}

// traceLoad reports a loader run to a LoadTracer.
func (c *Cache) traceLoad(ctx context.Context, refresh bool, start time.Time, err error) {
	if lt, ok := c.s.cfg.Tracer.(LoadTracer); ok {
		lt.TraceLoad(ctx, LoadEnd{Refresh: refresh, Err: err, Duration: time.Since(start)})
	}
}

// loadEvent reports a loader event to a LoadEventTracer.
func (c *Cache) loadEvent(ctx context.Context, e LoadEvent) {
	if lt, ok := c.s.cfg.Tracer.(LoadEventTracer); ok {
		lt.TraceLoadEvent(ctx, e)
	}
}
