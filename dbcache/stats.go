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
	// LoadWaits counts GetOrSetFunc flights that found another process
	// loading the key and waited for its value.
	LoadWaits int64
	// Refreshes counts background refreshes of stale entries
	// (GetOrRevalidate), and RefreshFailures those whose loader or write failed.
	Refreshes, RefreshFailures int64
	// Panics counts panics the cache recovered: in loaders (returned as
	// *LoaderPanicError) and in hooks it ran on a goroutine of its own
	// (returned as *HookPanicError, or counted as a failed refresh).
	Panics int64
}

type stats struct {
	failOpen, loads, loadWaits, refreshes, refreshFailures, panics atomic.Int64

	panicLogged   atomic.Int64 // UnixNano of the last panic's log line
	panicUnlogged atomic.Int64 // panics since then
}

// Stats returns the cache's counters.
func (c *Cache) Stats() Stats {
	s := &c.s.stats
	return Stats{
		FailOpen:        s.failOpen.Load(),
		Loads:           s.loads.Load(),
		LoadWaits:       s.loadWaits.Load(),
		Refreshes:       s.refreshes.Load(),
		RefreshFailures: s.refreshFailures.Load(),
		Panics:          s.panics.Load(),
	}
}
