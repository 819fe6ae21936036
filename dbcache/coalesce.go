package dbcache

import (
	"context"
	"errors"
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
	slots[*getReq]
	pool *pgxpool.Pool
	q    *queries

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
	g := &coalescer{pool: pool, q: q}
	g.slots = slots[*getReq]{max: max, run: g.answer,
		take: func(pending []*getReq) int { return min(len(pending), coalesceMaxBatch) }}
	return g
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
	if err := queryRowBounded(ctx, g.pool, g.q.get, k).Scan(&v); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, ErrMiss
		}
		return nil, err
	}
	return nonNil(v), nil
}

// answer runs one query for a batch's live callers and delivers to each.
func (g *coalescer) answer(ctx context.Context, live []*getReq) {
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
	rows, err := queryBounded(ctx, g.pool, g.q.getMany, keys)
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
