package dbcache

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgconn"
)

// incrCoalescer answers concurrent Incrs and Decrs with fewer statements
// (Config.CoalesceIncrs), as setCoalescer does for Sets.
//
// At most max Incr statements of the coalescer run at once. An Incr that
// finds a free slot runs its own statement at once (Cache.incr, exactly as
// without coalescing), so a lone caller pays nothing extra. One that finds
// every slot busy queues; when a running statement finishes, its slot
// passes to a goroutine that applies everything queued with one UPDATE
// (qIncrBatch) and keeps doing so until the queue is empty.
//
// The batch statement changes each distinct key once, by the sum of its
// queued deltas, with its row locked in key order; the new value comes
// back, and each caller's result is the value its own Incr would have
// returned had the key's Incrs run one after the other in the order they
// queued: the value before the batch plus the deltas up to and including
// its own. That holds only when every one of them would have succeeded,
// so a key's Incrs go into a batch only when their deltas all have one
// sign (the running sums then move one way, and if the last fits in an
// int64 so does every one before it) and their sum fits in an int64; and a
// key the statement did not change (no live entry, not an integer, the sum
// out of range) changes nothing, and each of its callers runs its own
// statement afterwards, which gives it exactly its own answer (ErrMiss,
// ErrNotInteger, ErrOverflow or a value), the same statement as without
// coalescing. A batch that fails answers each caller with its error (a
// failed batch changed nothing, and never reports success); one the server
// refused for what is in it sends each caller to its own statement.
//
// A caller whose context ends before its batch starts is dropped from it
// and changes nothing; one whose context ends while its batch runs may or
// may not have added, as with a single statement.
type incrCoalescer struct {
	slots[*incrReq]
	c *Cache

	// batches counts statements that changed more than one key or applied
	// more than one Incr, for tests.
	batches atomic.Int64
}

type incrReq struct {
	ctx context.Context
	k   string // made key
	d   int64
	// done carries the answer; single means the caller runs its own
	// statement.
	done chan incrAnswer
}

type incrAnswer struct {
	n      int64
	err    error
	single bool
}

func (r *incrReq) callerCtx() context.Context { return r.ctx }

func newIncrCoalescer(c *Cache, max int) *incrCoalescer {
	g := &incrCoalescer{c: c}
	g.slots = slots[*incrReq]{max: max, take: func(pending []*incrReq) int { return min(len(pending), coalesceMaxBatch) }, run: g.apply}
	return g
}

// incr adds delta to the made key k for the operation op (incr or decr).
// It runs own, the single statement with its own error handling, when a
// slot is free or the batch sends it back; otherwise it returns the
// batch's answer, an error as the single statement would wrap it.
func (g *incrCoalescer) incr(ctx context.Context, op, k, delta string, own func() (int64, error)) (int64, error) {
	d, err := strconv.ParseInt(delta, 10, 64)
	if err != nil {
		// Decr(MinInt64): no int64 delta to add up; it goes alone,
		// outside the slots, as without coalescing.
		return own()
	}
	g.mu.Lock()
	if g.inflight < g.max {
		g.inflight++
		g.mu.Unlock()
		defer g.release()
		return own()
	}
	r := &incrReq{ctx: ctx, k: k, d: d, done: make(chan incrAnswer, 1)}
	g.pending = append(g.pending, r)
	g.mu.Unlock()
	var a incrAnswer
	select {
	case a = <-r.done:
		if a.single {
			return own()
		}
	case <-ctx.Done():
		// The batch may still apply it; the buffered channel absorbs the
		// answer.
		a.err = ctx.Err()
	}
	if a.err != nil {
		if g.c.degrade(ctx, op, a.err) {
			return 0, ErrMiss
		}
		return 0, g.c.wrapErr(op, a.err)
	}
	return a.n, nil
}

// incrGroup is one key's Incrs in a batch, in the order they queued.
type incrGroup struct {
	reqs []*incrReq
	sum  int64
	bad  bool // mixed signs or a sum past int64: each runs its own statement
}

// apply runs one statement for a batch's live callers and answers each.
func (g *incrCoalescer) apply(ctx context.Context, live []*incrReq) {
	groups := make(map[string]*incrGroup, len(live))
	order := make([]string, 0, len(live))
	for _, r := range live {
		gr := groups[r.k]
		if gr == nil {
			gr = &incrGroup{}
			groups[r.k] = gr
			order = append(order, r.k)
		}
		switch {
		case gr.bad:
		case (r.d > 0 && gr.sum < 0) || (r.d < 0 && gr.sum > 0):
			gr.bad = true
		case (r.d > 0 && gr.sum > math.MaxInt64-r.d) || (r.d < 0 && gr.sum < math.MinInt64-r.d):
			gr.bad = true
		default:
			// Every delta so far has r.d's sign or is zero: the running
			// sums move one way.
			gr.sum += r.d
		}
		gr.reqs = append(gr.reqs, r)
	}
	keys := make([]string, 0, len(order))
	sums := make([]int64, 0, len(order))
	tokens := make([]int64, 0, len(order))
	for _, k := range order {
		if gr := groups[k]; !gr.bad {
			keys = append(keys, k)
			sums = append(sums, gr.sum)
			tokens = append(tokens, newToken())
		}
	}
	single := func(reqs []*incrReq) {
		for _, r := range reqs {
			r.done <- incrAnswer{single: true}
		}
	}
	if len(keys) == 0 {
		single(live)
		return
	}
	if len(live) > 1 {
		g.batches.Add(1)
	}
	var changed []string
	var values [][]byte
	err := g.c.rowWrite(ctx, g.c.q.incrBatch, []any{keys, sums, tokens}, &changed, &values)
	if err == nil && len(changed) != len(values) {
		err = fmt.Errorf("dbcache: incr: database returned %d keys and %d values", len(changed), len(values))
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && ctx.Err() == nil && !IsTransient(err) {
		// The server refused the batch for what is in it: each Incr
		// alone has its own result.
		single(live)
		return
	}
	if err != nil {
		for _, k := range order {
			if gr := groups[k]; gr.bad {
				single(gr.reqs)
			} else {
				for _, r := range gr.reqs {
					r.done <- incrAnswer{err: err}
				}
			}
		}
		return
	}
	for i, k := range changed {
		gr := groups[k]
		if gr == nil || gr.bad || gr.reqs == nil {
			continue // not a key of the batch: cannot happen
		}
		n, ok := ParseInteger(values[i])
		if !ok {
			for _, r := range gr.reqs {
				r.done <- incrAnswer{err: fmt.Errorf("dbcache: incr: database returned %q", values[i])}
			}
		} else {
			// n is the value after every delta; the one before them fits
			// in an int64 too, since each Incr's running sum lies
			// between the two.
			v := n - gr.sum
			for _, r := range gr.reqs {
				v += r.d
				r.done <- incrAnswer{n: v}
			}
		}
		gr.reqs = nil
	}
	// Keys the statement did not change: each caller learns why, and
	// whether it would now succeed, from its own statement.
	for _, k := range order {
		if gr := groups[k]; gr.reqs != nil {
			single(gr.reqs)
		}
	}
}
