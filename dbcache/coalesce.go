package dbcache

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// coalesceMaxBatch bounds one coalesced query, so a burst of waiting Gets
// becomes several medium queries rather than one huge one that holds a
// connection (and every waiter's latency) for long.
const coalesceMaxBatch = 1000

// coalescer answers concurrent Gets with fewer queries (Config.CoalesceGets).
//
// At most max Get queries run at once. A Get that finds a free slot runs its
// own single-key query at once, so a lone caller pays nothing extra. A Get
// that finds every slot busy queues; when a running query finishes, its slot
// passes to a goroutine that answers everything queued with one
// key = ANY($1) query (the GetMany statement), and keeps doing so until the
// queue is empty. Under load each query then carries many keys: PostgreSQL's
// per-statement cost (parse, executor start, the round trip, a context switch
// per side) is shared among them, which is where the throughput comes from on
// a CPU-bound server.
type coalescer struct {
	pool *pgxpool.Pool
	q    *queries
	max  int

	mu       sync.Mutex
	inflight int
	pending  []*getReq

	// batches counts queries that answered more than one Get, for tests.
	batches atomic.Int64
}

type getReq struct {
	ctx  context.Context
	key  string
	done chan getResult // buffered: delivery never blocks on a caller that left
}

type getResult struct {
	v   []byte
	err error
}

func newCoalescer(pool *pgxpool.Pool, q *queries, max int) *coalescer {
	return &coalescer{pool: pool, q: q, max: max}
}

// get returns the value of the made key k, ErrMiss, or an unwrapped error.
func (g *coalescer) get(ctx context.Context, k string) ([]byte, error) {
	g.mu.Lock()
	if g.inflight < g.max {
		g.inflight++
		g.mu.Unlock()
		v, err := g.one(ctx, k)
		g.release()
		return v, err
	}
	r := &getReq{ctx: ctx, key: k, done: make(chan getResult, 1)}
	g.pending = append(g.pending, r)
	g.mu.Unlock()
	select {
	case res := <-r.done:
		return res.v, res.err
	case <-ctx.Done():
		// The batch may still answer; the buffered channel absorbs it.
		return nil, ctx.Err()
	}
}

func (g *coalescer) one(ctx context.Context, k string) ([]byte, error) {
	var v []byte
	if err := g.pool.QueryRow(ctx, g.q.get, k).Scan(&v); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, ErrMiss
		}
		return nil, err
	}
	return nonNil(v), nil
}

// release gives up a slot, or hands it to a batch if Gets are waiting. The
// batch runs on its own goroutine so the Get that held the slot returns now.
func (g *coalescer) release() {
	g.mu.Lock()
	if len(g.pending) == 0 {
		g.inflight--
		g.mu.Unlock()
		return
	}
	batch := g.takeLocked()
	g.mu.Unlock()
	go g.drain(batch)
}

func (g *coalescer) takeLocked() []*getReq {
	n := min(len(g.pending), coalesceMaxBatch)
	batch := g.pending[:n:n]
	rest := g.pending[n:]
	if len(rest) == 0 {
		rest = nil
	}
	g.pending = rest
	return batch
}

// drain answers batch, then whatever queued meanwhile, then frees the slot.
func (g *coalescer) drain(batch []*getReq) {
	for {
		g.answer(batch)
		g.mu.Lock()
		if len(g.pending) == 0 {
			g.inflight--
			g.mu.Unlock()
			return
		}
		batch = g.takeLocked()
		g.mu.Unlock()
	}
}

// answer runs one query for the batch's live callers and delivers to each.
func (g *coalescer) answer(batch []*getReq) {
	live := liveCallers(batch)
	if len(live) == 0 {
		return
	}
	ctx, cancel := batchContext(live)
	defer cancel()
	if len(live) == 1 {
		v, err := g.one(ctx, live[0].key)
		live[0].done <- getResult{v, err}
		return
	}
	keys := make([]string, 0, len(live))
	seen := make(map[string]bool, len(live))
	for _, r := range live {
		if !seen[r.key] {
			seen[r.key] = true
			keys = append(keys, r.key)
		}
	}
	g.batches.Add(1)
	found := make(map[string][]byte, len(keys))
	rows, err := g.pool.Query(ctx, g.q.getMany, keys)
	if err == nil {
		var k string
		var v []byte
		_, err = pgx.ForEachRow(rows, []any{&k, &v}, func() error {
			found[k] = nonNil(v)
			return nil
		})
	}
	// Every result is made before any is delivered: callers own what Get
	// returns, so two callers of one key get two slices, and a copy must not
	// be taken from a slice its first owner may already be changing.
	res := make([]getResult, len(live))
	given := make(map[string]bool, len(found))
	for i, r := range live {
		switch v, ok := found[r.key]; {
		case err != nil:
			res[i] = getResult{nil, err}
		case !ok:
			res[i] = getResult{nil, ErrMiss}
		case given[r.key]:
			res[i] = getResult{append([]byte{}, v...), nil}
		default:
			given[r.key] = true
			res[i] = getResult{v, nil}
		}
	}
	for i, r := range live {
		r.done <- res[i]
	}
}

// batchContext is the context a batch statement runs under: the values of the
// first caller's, and no cancellation while any caller still waits (one
// caller giving up must not fail the others), but cancelled as soon as the
// last one has left, by cancellation or by its deadline. So a batch never
// outlives its callers: on a connection that went silent it ends when they
// give up, and its slot passes on. Every caller's context carries a deadline
// unless Config.OpTimeout is off, so a batch is bounded in time too.
func batchContext[R caller](batch []R) (context.Context, context.CancelFunc) {
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
