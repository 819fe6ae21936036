package dbcache

import "sync/atomic"

// Stats is a snapshot of a cache's counters since New, shared by every view
// of the cache (as pgxpool.Pool.Stat is a snapshot of a pool's).
type Stats struct {
	// FailOpen counts operations whose transient database failure
	// Config.FailOpen turned into a miss or a skipped write.
	FailOpen int64
	// Loads counts loader calls by GetOrSetFunc and GetOrRevalidate (misses and refreshes).
	Loads int64
	// JoinedWaits counts GetOrSetFunc and GetOrRevalidate callers that
	// missed a key another goroutine of this process was already loading,
	// and waited for its load instead of starting one (LoadJoined).
	JoinedWaits int64
	// LoadWaits counts the lease waits: flights that found another
	// process holding the key's lease (loading it) and waited for its
	// value (LoadLeaseWait).
	LoadWaits int64
	// LeaseExpiries counts loads' leases that ran out rather than being
	// released: a loader of this process that outlived its lease (a
	// renewal or the fenced write found it gone; its value was returned
	// to its callers, not stored), or another process's lease this
	// process took over after waiting it out, its holder killed or
	// stalled (LoadLeaseExpired).
	LeaseExpiries int64
	// Refreshes counts background refreshes of stale entries
	// (GetOrRevalidate) whose loader ran, and RefreshFailures those whose
	// loader or write failed (LoadRefreshFailed).
	Refreshes, RefreshFailures int64
	// RefreshBackoffs counts stale hits that started no refresh because
	// the key's last refresh failed less than Config.RefreshRetry ago, in
	// this process or (its lease still held) in another, or another
	// process was refreshing it (LoadRefreshBackoff).
	RefreshBackoffs int64
	// Panics counts panics the cache recovered: in loaders (returned as
	// *LoaderPanicError) and in hooks it ran on a goroutine of its own
	// (returned as *HookPanicError, or counted as a failed refresh).
	Panics int64
}

type stats struct {
	failOpen, loads, leaseWaits, refreshes, refreshFailures, panics atomic.Int64
	joinedWaits, leaseExpiries, refreshBackoffs                     atomic.Int64

	panicLogged   atomic.Int64 // UnixNano of the last panic's log line
	panicUnlogged atomic.Int64 // panics since then
}

// Stats returns the cache's counters.
func (c *Cache) Stats() Stats {
	s := &c.s.stats
	return Stats{
		FailOpen:        s.failOpen.Load(),
		Loads:           s.loads.Load(),
		JoinedWaits:     s.joinedWaits.Load(),
		LoadWaits:       s.leaseWaits.Load(),
		LeaseExpiries:   s.leaseExpiries.Load(),
		Refreshes:       s.refreshes.Load(),
		RefreshFailures: s.refreshFailures.Load(),
		RefreshBackoffs: s.refreshBackoffs.Load(),
		Panics:          s.panics.Load(),
	}
}
