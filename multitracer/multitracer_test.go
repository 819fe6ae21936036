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

func (l loadRec) TraceLoadEvent(_ context.Context, e dbcache.LoadEvent) {
	*l.events = append(*l.events, l.name+" "+string(e))
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
	et, ok := tr.(dbcache.LoadEventTracer)
	require.True(t, ok)
	et.TraceLoadEvent(ctx, dbcache.LoadLeaseWait)
	require.Equal(t, []string{"a start get", "b start get", "a end get", "b end get", "b load", "b lease_wait"}, events)

	// None at all: a valid Tracer that does nothing.
	empty := multitracer.New(nil)
	require.Equal(t, context.Background(), empty.TraceOpStart(context.Background(), dbcache.OpStart{}))
	empty.TraceOpEnd(context.Background(), dbcache.OpEnd{})
	empty.TraceLoad(context.Background(), dbcache.LoadEnd{})
	empty.TraceLoadEvent(context.Background(), dbcache.LoadJoined)
}

// boom panics in the hook its field names.
type boom struct{ in string }

func (b boom) TraceOpStart(ctx context.Context, _ dbcache.OpStart) context.Context {
	if b.in == "start" {
		panic("boom start")
	}
	return ctx
}

func (b boom) TraceOpEnd(context.Context, dbcache.OpEnd) {
	if b.in == "end" {
		panic("boom end")
	}
}

func (b boom) TraceLoad(context.Context, dbcache.LoadEnd) {
	if b.in == "load" {
		panic("boom load")
	}
}

// spans counts what a tracer started and ended, as a span-making tracer
// would.
type spans struct{ started, ended, loads int }

func (s *spans) TraceOpStart(ctx context.Context, _ dbcache.OpStart) context.Context {
	s.started++
	return ctx
}
func (s *spans) TraceOpEnd(_ context.Context, e dbcache.OpEnd) { s.ended++ }
func (s *spans) TraceLoad(context.Context, dbcache.LoadEnd)    { s.loads++ }

func recovered(f func()) (r any) {
	defer func() { r = recover() }()
	f()
	return nil
}

// A tracer that panics leaves no other tracer's span unended: in
// TraceOpEnd and TraceLoad every tracer still runs, and a TraceOpStart
// that panics ends the spans of the tracers before it. The panic goes on.
func TestPanicEndsOtherSpans(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	start := dbcache.OpStart{Op: dbcache.OpGet, Keys: 1}

	before, after := &spans{}, &spans{}
	mt := multitracer.New(before, boom{"end"}, after)
	c := mt.TraceOpStart(ctx, start)
	require.Equal(t, "boom end", recovered(func() { mt.TraceOpEnd(c, dbcache.OpEnd{OpStart: start}) }))
	require.Equal(t, 1, before.ended)
	require.Equal(t, 1, after.ended, "the tracer after the panicking one ended its span")

	before, after = &spans{}, &spans{}
	mt = multitracer.New(before, boom{"load"}, after)
	require.Equal(t, "boom load", recovered(func() { mt.TraceLoad(ctx, dbcache.LoadEnd{}) }))
	require.Equal(t, 1, before.loads)
	require.Equal(t, 1, after.loads)

	before, after = &spans{}, &spans{}
	mt = multitracer.New(before, boom{"start"}, after)
	require.Equal(t, "boom start", recovered(func() { mt.TraceOpStart(ctx, start) }))
	require.Equal(t, 1, before.started)
	require.Equal(t, 1, before.ended, "the span started before the panic was ended")
	require.Zero(t, after.started)

	// Two panics: both tracers ran, the first panic goes on.
	mt = multitracer.New(boom{"end"}, boom{"end"})
	require.Equal(t, "boom end", recovered(func() { mt.TraceOpEnd(ctx, dbcache.OpEnd{}) }))
}
