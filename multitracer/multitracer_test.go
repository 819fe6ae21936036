package multitracer_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/multitracer"
)

type key string

// rec records what it saw; with load it is a LoadTracer too.
type rec struct {
	name   string
	events *[]string
}

func (r rec) TraceOpStart(ctx context.Context, op dbcache.OpStart) context.Context {
	*r.events = append(*r.events, r.name+" start "+op.Op)
	return context.WithValue(ctx, key(r.name), true)
}

func (r rec) TraceOpEnd(ctx context.Context, op dbcache.OpEnd) {
	// Each tracer finds what it put in the context.
	if ctx.Value(key(r.name)) == nil {
		*r.events = append(*r.events, r.name+" lost its context")
	}
	*r.events = append(*r.events, r.name+" end "+op.Op)
}

type loadRec struct{ rec }

func (l loadRec) TraceLoad(_ context.Context, e dbcache.LoadEnd) {
	*l.events = append(*l.events, l.name+" load")
}

func TestFanOut(t *testing.T) {
	t.Parallel()
	var events []string
	mt := multitracer.New(rec{"a", &events}, nil, loadRec{rec{"b", &events}})
	var tr dbcache.Tracer = mt
	ctx := tr.TraceOpStart(context.Background(), dbcache.OpStart{Op: dbcache.OpGet, Keys: 1})
	tr.TraceOpEnd(ctx, dbcache.OpEnd{OpStart: dbcache.OpStart{Op: dbcache.OpGet}})
	lt, ok := tr.(dbcache.LoadTracer)
	require.True(t, ok)
	lt.TraceLoad(ctx, dbcache.LoadEnd{})
	require.Equal(t, []string{"a start get", "b start get", "a end get", "b end get", "b load"}, events)

	// None at all: a valid Tracer that does nothing.
	empty := multitracer.New(nil)
	require.Equal(t, context.Background(), empty.TraceOpStart(context.Background(), dbcache.OpStart{}))
	empty.TraceOpEnd(context.Background(), dbcache.OpEnd{})
	empty.TraceLoad(context.Background(), dbcache.LoadEnd{})
}
