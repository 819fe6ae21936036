package dbcache

import "sync/atomic"

// Stats is a snapshot of a cache's counters since New, shared by every view
// of the cache (as pgxpool.Pool.Stat is a snapshot of a pool's).
type Stats struct {
	// FailOpen counts operations whose transient database failure
	// Config.FailOpen turned into a miss or a skipped write.
	FailOpen int64
	// Loads counts loader calls by GetOrSetFunc (misses and refreshes).
	Loads int64
	// LoadWaits counts GetOrSetFunc flights that found another process
	// loading the key and waited for its value.
	LoadWaits int64
	// Refreshes counts background refreshes of stale entries
	// (Revalidate), and RefreshFailures those whose loader or write failed.
	Refreshes, RefreshFailures int64
}

type stats struct {
	failOpen, loads, loadWaits, refreshes, refreshFailures atomic.Int64
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
	}
}
