package dbcache_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
)

// recordingTracer keeps every event, and checks that TraceOpEnd gets the
// context TraceOpStart returned.
type recordingTracer struct {
	mu    sync.Mutex
	ends  []dbcache.OpEnd
	loads []dbcache.LoadEnd
	bad   int
}

type spanKey struct{}

func (r *recordingTracer) TraceOpStart(ctx context.Context, op dbcache.OpStart) context.Context {
	return context.WithValue(ctx, spanKey{}, op.Op)
}

func (r *recordingTracer) TraceOpEnd(ctx context.Context, op dbcache.OpEnd) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ctx.Value(spanKey{}) != op.Op {
		r.bad++
	}
	r.ends = append(r.ends, op)
}

func (r *recordingTracer) TraceLoad(_ context.Context, l dbcache.LoadEnd) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.loads = append(r.loads, l)
}

func (r *recordingTracer) last() dbcache.OpEnd {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ends[len(r.ends)-1]
}

func TestTracer(t *testing.T) {
	t.Parallel()
	tr := &recordingTracer{}
	b := setup(t, &dbcache.Config{Tracer: tr})
	ctx := ctxT(t)
	check := func(op string, keys, hits, misses, stored, notStored int, isErr bool) {
		t.Helper()
		e := tr.last()
		require.Equal(t, op, e.Op)
		require.Equal(t, keys, e.Keys, op)
		require.Equal(t, hits, e.Hits, "%s hits", op)
		require.Equal(t, misses, e.Misses, "%s misses", op)
		require.Equal(t, stored, e.Stored, "%s stored", op)
		require.Equal(t, notStored, e.NotStored, "%s not stored", op)
		require.Equal(t, isErr, e.Err != nil, "%s error: %v", op, e.Err)
		require.Positive(t, e.Duration, op)
	}
	require.NoError(t, b.cache.Set(ctx, "a", []byte("1"), dbcache.DefaultTimeout))
	check(dbcache.OpSet, 1, 0, 0, 1, 0, false)
	_, _ = b.cache.Get(ctx, "a")
	check(dbcache.OpGet, 1, 1, 0, 0, 0, false)
	_, _ = b.cache.Get(ctx, "nope")
	check(dbcache.OpGet, 1, 0, 1, 0, 0, false)
	_, _ = b.cache.Add(ctx, "a", nil, dbcache.DefaultTimeout)
	check(dbcache.OpAdd, 1, 0, 0, 0, 1, false)
	_, _ = b.cache.Add(ctx, "b", nil, dbcache.DefaultTimeout)
	check(dbcache.OpAdd, 1, 0, 0, 1, 0, false)
	_, _ = b.cache.GetMany(ctx, []string{"a", "b", "c"})
	check(dbcache.OpGetMany, 3, 2, 1, 0, 0, false)
	_, _ = b.cache.SetMany(ctx, map[string][]byte{"x": nil, "y": nil}, dbcache.DefaultTimeout)
	check(dbcache.OpSetMany, 2, 0, 0, 2, 0, false)
	_, _ = b.cache.Incr(ctx, "a", 1)
	check(dbcache.OpIncr, 1, 1, 0, 0, 0, false)
	_, _ = b.cache.Incr(ctx, "b", 1)
	check(dbcache.OpIncr, 1, 0, 0, 0, 0, true) // not an integer
	_, _ = b.cache.HasKey(ctx, "zzz")
	check(dbcache.OpHasKey, 1, 0, 1, 0, 0, false)
	_, _ = b.cache.Delete(ctx, "x")
	check(dbcache.OpDelete, 1, 1, 0, 0, 0, false)
	_, _ = b.cache.DeleteMany(ctx, []string{"y", "nope"})
	check(dbcache.OpDeleteMany, 2, 1, 1, 0, 0, false)
	n := len(tr.ends)
	_, _ = b.cache.Get(ctx, "bad\x00key")
	require.Len(t, tr.ends, n, "a refused key is not traced")
	_, _ = b.cache.TTL(ctx, "a")
	check(dbcache.OpTTL, 1, 1, 0, 0, 0, false)

	_, _ = b.cache.GetOrSetFunc(ctx, "g", func(context.Context) ([]byte, error) { return []byte("v"), nil }, dbcache.DefaultTimeout)
	check(dbcache.OpGetOrSet, 1, 0, 1, 1, 0, false)
	_, _ = b.cache.GetOrSetFunc(ctx, "g", func(context.Context) ([]byte, error) { return nil, errors.New("unused") }, dbcache.DefaultTimeout)
	check(dbcache.OpGetOrSet, 1, 1, 0, 0, 0, false)
	_, _ = b.cache.GetOrSetFunc(ctx, "h", func(context.Context) ([]byte, error) { return nil, errors.New("backend") }, dbcache.DefaultTimeout)
	check(dbcache.OpGetOrSet, 1, 0, 1, 1, 0, true)
	require.NoError(t, b.cache.Clear(ctx))
	check(dbcache.OpClear, 0, 0, 0, 0, 0, false)

	tr.mu.Lock()
	defer tr.mu.Unlock()
	require.Zero(t, tr.bad, "TraceOpEnd got another context than TraceOpStart returned")
	require.Len(t, tr.loads, 2)
	require.NoError(t, tr.loads[0].Err)
	require.Error(t, tr.loads[1].Err)
	require.False(t, tr.loads[0].Refresh)
}

// A swallowed transient failure is visible to the tracer.
func TestTracerSeesFailOpen(t *testing.T) {
	t.Parallel()
	tr := &recordingTracer{}
	b := setup(t, &dbcache.Config{Tracer: tr, FailOpen: true, OpTimeout: 200 * time.Millisecond})
	ctx := ctxT(t)
	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	// Hold the row so the Set waits past its bound: a timeout, transient.
	require.NoError(t, b.cache.Set(ctx, "k", nil, dbcache.DefaultTimeout))
	_, err = tx.Exec(ctx, `SELECT 1 FROM dbcache_entries WHERE key = ':1:k' FOR UPDATE`)
	require.NoError(t, err)
	// No deadline of its own, so OpTimeout bounds it.
	require.NoError(t, b.cache.Set(context.Background(), "k", []byte("v"), dbcache.DefaultTimeout))
	e := tr.last()
	require.Equal(t, dbcache.OpSet, e.Op)
	require.NoError(t, e.Err)
	require.ErrorIs(t, e.FailedOpen, context.DeadlineExceeded)
	require.Zero(t, e.Stored)
	require.Equal(t, 1, e.NotStored)
}

// A loader's error is a *LoaderError that unwraps to it.
func TestLoaderError(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	backend := errors.New("backend down")
	_, err := b.cache.GetOrSetFunc(ctxT(t), "k", func(context.Context) ([]byte, error) { return nil, backend }, dbcache.DefaultTimeout)
	var le *dbcache.LoaderError
	require.ErrorAs(t, err, &le)
	require.ErrorIs(t, err, backend)
	require.Equal(t, "dbcache: get_or_set: loader: backend down", err.Error())
}
