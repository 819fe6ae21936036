package dbcache

import (
	"context"
	"errors"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgconn"
)

// coalesceMaxBatchBytes bounds the values of one coalesced Set statement,
// so a batch never approaches PostgreSQL's 1 GB message limit and a large
// value does not hold up small ones.
const coalesceMaxBatchBytes = 8 << 20

// setCoalescer answers concurrent Sets with fewer statements
// (Config.CoalesceSets), as coalescer does for Gets.
//
// At most max Set statements run at once. A Set that finds a free slot runs
// its own single-row statement at once, so a lone caller pays nothing
// extra. A Set that finds every slot busy queues; when a running statement
// finishes, its slot passes to a goroutine that writes everything queued
// with one multi-row upsert (qSetBatch), and keeps doing so until the queue
// is empty. PostgreSQL's per-statement cost (parse, plan, executor start,
// commit, the round trip) is then shared by many rows; with durable commits
// so is the WAL flush.
//
// Each caller's result is what its own statement would have given: nil
// when the batch committed, the batch's error otherwise (a failed batch
// never reports success to anyone). Two Sets of one key in one batch keep
// their order: the later one's value is the one stored, as if they had run
// one after the other. A caller whose context ends before its batch starts
// is dropped from it and writes nothing; one whose context ends while its
// batch runs may or may not have written, as with a single statement.
type setCoalescer struct {
	slots[*setReq]
	c *Cache

	// batches counts statements that wrote more than one Set, for tests.
	batches atomic.Int64
}

type setReq struct {
	ctx    context.Context
	key    string
	value  []byte
	micros any // int64, or nil for never
	done   chan error
}

func newSetCoalescer(c *Cache, max int) *setCoalescer {
	g := &setCoalescer{c: c}
	g.slots = slots[*setReq]{max: max, take: takeSets, run: g.write}
	return g
}

// set writes the made key k; the error is unwrapped.
func (g *setCoalescer) set(ctx context.Context, k string, value []byte, micros any) error {
	g.mu.Lock()
	if g.inflight < g.max {
		g.inflight++
		g.mu.Unlock()
		_, err := g.c.execWrite(ctx, g.c.q.set, k, value, micros)
		g.release()
		return err
	}
	r := &setReq{ctx: ctx, key: k, value: value, micros: micros, done: make(chan error, 1)}
	g.pending = append(g.pending, r)
	g.mu.Unlock()
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		// The batch may still write it; the buffered channel absorbs the
		// answer.
		return ctx.Err()
	}
}

// takeSets is how many queued Sets the next batch takes: at most
// coalesceMaxBatch and coalesceMaxBatchBytes of values (a Set of a larger
// value goes alone).
func takeSets(pending []*setReq) int {
	n, size := 0, 0
	for n < len(pending) && n < coalesceMaxBatch {
		size += len(pending[n].value)
		if n > 0 && size > coalesceMaxBatchBytes {
			break
		}
		n++
	}
	return n
}

// write runs one statement for a batch's live callers and answers each.
func (g *setCoalescer) write(ctx context.Context, live []*setReq) {
	if len(live) == 1 {
		r := live[0]
		_, err := g.c.execWrite(ctx, g.c.q.set, r.key, r.value, r.micros)
		r.done <- err
		return
	}
	// One row per key, the last Set of a key winning: the order the
	// callers queued in.
	last := make(map[string]int, len(live))
	for i, r := range live {
		last[r.key] = i
	}
	keys := make([]string, 0, len(last))
	values := make([][]byte, 0, len(last))
	micros := make([]*int64, 0, len(last))
	for i, r := range live {
		if last[r.key] != i {
			continue
		}
		keys = append(keys, r.key)
		values = append(values, r.value)
		if us, ok := r.micros.(int64); ok {
			micros = append(micros, &us)
		} else {
			micros = append(micros, nil)
		}
	}
	g.batches.Add(1)
	err := g.c.setBatch(ctx, keys, values, micros)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && ctx.Err() == nil && !IsTransient(err) {
		// The server refused the batch for what is in it (a row a
		// constraint the application added refuses, say): each Set alone
		// would have had its own result, so each gets it.
		for _, r := range live {
			_, err := g.c.execWrite(ctx, g.c.q.set, r.key, r.value, r.micros)
			r.done <- err
		}
		return
	}
	for _, r := range live {
		r.done <- err
	}
}
