// Package multitracer combines several dbcache.Tracers into one, for
// dbcache.Config.Tracer, which takes one: metrics and tracing together,
// say. It is pgx's multitracer for dbcache's hooks.
//
// A panic in one tracer does not keep the others from ending what they
// started: every TraceOpEnd and TraceLoad runs, and a TraceOpStart that
// panics ends the spans of the tracers before it; the first panic then
// goes on to dbcache, which lets it reach the caller on the caller's own
// goroutine and recovers it on its own (see dbcache.Tracer).
//
//	cache, err := dbcache.New(ctx, pool, &dbcache.Config{
//		Tracer: multitracer.New(metrics, oteltrace.New(nil)),
//	})
package multitracer

import (
	"context"
	"runtime/debug"

	"github.com/dbcache/dbcache/dbcache"
)

// Tracer calls each of its tracers in turn. It is a dbcache.LoadTracer
// and a dbcache.LoadEventTracer too, calling those of its tracers that
// are.
type Tracer struct {
	tracers []dbcache.Tracer
	loads   []dbcache.LoadTracer
	events  []dbcache.LoadEventTracer
}

// New returns a Tracer over tracers; nil ones are left out. TraceOpStart
// calls them in order, each with the context the previous one returned,
// and TraceOpEnd calls them with the last context, which carries what each
// of them put in it.
func New(tracers ...dbcache.Tracer) *Tracer {
	t := &Tracer{}
	for _, tr := range tracers {
		if tr == nil {
			continue
		}
		t.tracers = append(t.tracers, tr)
		if lt, ok := tr.(dbcache.LoadTracer); ok {
			t.loads = append(t.loads, lt)
		}
		if et, ok := tr.(dbcache.LoadEventTracer); ok {
			t.events = append(t.events, et)
		}
	}
	return t
}

// TraceOpStart implements dbcache.Tracer. When one of the tracers panics,
// those before it have started (a span, say): each gets its TraceOpEnd,
// with an OpEnd whose Err is a *dbcache.HookPanicError, so nothing they
// started is left open; then the panic goes on, as dbcache.Tracer says.
func (t *Tracer) TraceOpStart(ctx context.Context, op dbcache.OpStart) context.Context {
	started := 0
	defer func() {
		if started == len(t.tracers) {
			return
		}
		r := recover()
		end := dbcache.OpEnd{OpStart: op, Err: &dbcache.HookPanicError{Value: r, Stack: debug.Stack()}}
		each(t.tracers[:started], func(tr dbcache.Tracer) { tr.TraceOpEnd(ctx, end) })
		if r != nil {
			panic(r)
		}
	}()
	for _, tr := range t.tracers {
		ctx = tr.TraceOpStart(ctx, op)
		started++
	}
	return ctx
}

// TraceOpEnd implements dbcache.Tracer. Every tracer's TraceOpEnd is
// called, even when one before it panics, so each ends what it started;
// the first panic then goes on.
func (t *Tracer) TraceOpEnd(ctx context.Context, op dbcache.OpEnd) {
	each(t.tracers, func(tr dbcache.Tracer) { tr.TraceOpEnd(ctx, op) })
}

// TraceLoad implements dbcache.LoadTracer. Every tracer's TraceLoad is
// called, even when one before it panics; the first panic then goes on.
func (t *Tracer) TraceLoad(ctx context.Context, l dbcache.LoadEnd) {
	each(t.loads, func(lt dbcache.LoadTracer) { lt.TraceLoad(ctx, l) })
}

// TraceLoadEvent implements dbcache.LoadEventTracer. Every tracer's
// TraceLoadEvent is called, even when one before it panics; the first
// panic then goes on.
func (t *Tracer) TraceLoadEvent(ctx context.Context, e dbcache.LoadEvent) {
	each(t.events, func(et dbcache.LoadEventTracer) { et.TraceLoadEvent(ctx, e) })
}

// each calls f on every tracer, and then re-panics with the first panic
// any of them raised.
func each[T any](tracers []T, f func(T)) {
	var first any
	for _, tr := range tracers {
		func() {
			defer func() {
				if r := recover(); r != nil && first == nil {
					first = r
				}
			}()
			f(tr)
		}()
	}
	if first != nil {
		panic(first)
	}
}
