package culling

import (
	"context"
	"errors"
	"time"
)

// Health is a snapshot of a Culler's state, for an application's health
// check or metrics. It covers the passes this Culler ran (its started
// worker's and RunOnce's), not those of other processes: LastPass reads
// those from the database.
type Health struct {
	// ConsecutiveFailures counts the passes that failed since the last one
	// that succeeded; 0 when the last pass succeeded.
	ConsecutiveFailures int
	// InPass reports whether a pass is in progress now.
	InPass bool
	// LastError is the error of the most recent failed pass, nil if none
	// failed. It stays set after later passes succeed: compare LastErrorAt
	// with LastSuccessAt, or read ConsecutiveFailures.
	LastError error
	// LastErrorAt is when that pass ended; zero if none failed.
	LastErrorAt time.Time
	// LastPass is the result of the last pass that ended, whether it
	// succeeded, failed (what it removed before the error) or was
	// stopped; nil before the first.
	LastPass *PassResult
	// LastPassAt is when it ended; zero before the first.
	LastPassAt time.Time
	// LastSuccessAt is when a pass last ended without error; zero if none
	// has. A pass skipped because another culler held the lock counts: the
	// table is being culled, by the other.
	LastSuccessAt time.Time
	// Running reports whether a started worker is running: Start
	// succeeded, and neither Stop nor the end of Start's context has
	// stopped it.
	Running bool
}

// Health returns the Culler's state. It reads memory only, never the
// database, so a health check may call it as often as it likes. A pass
// that a stop, or the caller's context, interrupted is neither a failure
// nor a success: it only updates LastPass.
func (c *Culler) Health() Health {
	c.hmu.Lock()
	h := c.health
	c.hmu.Unlock()
	if h.LastPass != nil {
		r := *h.LastPass
		h.LastPass = &r
	}
	h.InPass = c.inPass.Load() > 0
	c.mu.Lock()
	if r := c.run; r != nil && !r.stopping {
		select {
		case <-r.done:
		default:
			h.Running = true
		}
	}
	c.mu.Unlock()
	return h
}

// noteHealth records an ended pass. callerCtx is the context the pass was
// run with, before PassTimeout: when it ended, the caller (or Stop)
// interrupted the pass.
func (c *Culler) noteHealth(callerCtx context.Context, res *PassResult, err error) {
	now := time.Now()
	r := *res
	c.hmu.Lock()
	defer c.hmu.Unlock()
	c.health.LastPass, c.health.LastPassAt = &r, now
	switch {
	case err == nil:
		c.health.LastSuccessAt = now
		c.health.ConsecutiveFailures = 0
	case callerCtx.Err() != nil && errors.Is(err, context.Canceled):
		// Stopped: nothing went wrong.
	default:
		c.health.LastError, c.health.LastErrorAt = err, now
		c.health.ConsecutiveFailures++
	}
}
