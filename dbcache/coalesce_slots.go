package dbcache

import (
	"context"
	"sync"
	"sync/atomic"
)

// slots is what the Get and Set coalescers share. At most max of their
// statements run at once; a request that finds every slot busy is queued
// by its coalescer (appended to pending under mu). When a running
// statement finishes (release), its slot passes to a goroutine that
// answers the queued requests in batches, each taken by take and answered
// by run, until the queue is empty; then the slot is free. A request whose
// caller has left before its batch runs is dropped from it, and each batch
// runs under batchContext, so it never outlives its callers.
type slots[R caller] struct {
	max  int
	take func(pending []R) int // how many the next batch takes: at least 1
	run  func(ctx context.Context, live []R)

	mu       sync.Mutex
	inflight int
	pending  []R
}

// release gives up a slot, or hands it to a batch if requests are waiting.
// The batch runs on its own goroutine so the caller that held the slot
// returns now.
func (s *slots[R]) release() {
	s.mu.Lock()
	if len(s.pending) == 0 {
		s.inflight--
		s.mu.Unlock()
		return
	}
	batch := s.takeLocked()
	s.mu.Unlock()
	go s.drain(batch)
}

func (s *slots[R]) takeLocked() []R {
	n := s.take(s.pending)
	batch := s.pending[:n:n]
	rest := s.pending[n:]
	if len(rest) == 0 {
		rest = nil
	}
	s.pending = rest
	return batch
}

// drain answers batch, then whatever queued meanwhile, then frees the slot.
func (s *slots[R]) drain(batch []R) {
	for {
		if live := liveCallers(batch); len(live) > 0 {
			ctx, cancel := batchContext(live)
			s.run(ctx, live)
			cancel()
		}
		s.mu.Lock()
		if len(s.pending) == 0 {
			s.inflight--
			s.mu.Unlock()
			return
		}
		batch = s.takeLocked()
		s.mu.Unlock()
	}
}

// batchContext is the context a batch statement runs under: the values of the
// first caller's, and no cancellation while any caller still waits (one
// caller giving up must not fail the others), but cancelled as soon as the
// last one has left, by cancellation or by its deadline. So a batch never
// outlives its callers: on a connection that went silent it ends when they
// give up, and its slot passes on. Every caller's context carries a deadline
// unless Config.OpTimeout is off, so a batch is bounded in time too.
//
// When no caller's context can be cancelled (each is a sharedDeadlineCtx:
// the caller passed context.Background or values only), each leaves only at
// its bucket's deadline, so the last leaves at the latest of those: the
// batch runs under that bucket's context itself, with no function
// registered per caller.
func batchContext[R caller](batch []R) (context.Context, context.CancelFunc) {
	if ctx, ok := latestSharedDeadline(batch); ok {
		return ctx, noop
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(batch[0].callerCtx()))
	var waiting atomic.Int64
	waiting.Store(int64(len(batch)))
	stops := make([]func() bool, len(batch))
	for i, r := range batch {
		stops[i] = context.AfterFunc(r.callerCtx(), func() {
			if waiting.Add(-1) == 0 {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}

// latestSharedDeadline returns the first caller's values under the latest
// bucket among the callers' contexts, if every one is a sharedDeadlineCtx.
func latestSharedDeadline[R caller](batch []R) (*sharedDeadlineCtx, bool) {
	first, ok := batch[0].callerCtx().(*sharedDeadlineCtx)
	if !ok {
		return nil, false
	}
	latest := first.b
	for _, r := range batch[1:] {
		sd, ok := r.callerCtx().(*sharedDeadlineCtx)
		if !ok {
			return nil, false
		}
		if sd.b.deadline.After(latest.deadline) {
			latest = sd.b
		}
	}
	return &sharedDeadlineCtx{parent: first.parent, b: latest}, true
}

// caller is a queued request of a coalescer: a Get or a Set.
type caller interface{ callerCtx() context.Context }

func (r *getReq) callerCtx() context.Context { return r.ctx }
func (r *setReq) callerCtx() context.Context { return r.ctx }

// liveCallers returns the requests of batch whose callers still wait: one
// whose context ended before its batch ran gets nothing done for it.
func liveCallers[R caller](batch []R) []R {
	live := batch[:0:0]
	for _, r := range batch {
		if r.callerCtx().Err() == nil {
			live = append(live, r)
		}
	}
	return live
}
