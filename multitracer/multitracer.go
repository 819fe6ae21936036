// Package multitracer combines several dbcache.Tracers into one, for
// dbcache.Config.Tracer, which takes one: metrics and tracing together,
// say. It is pgx's multitracer for dbcache's hooks.
//
//	cache, err := dbcache.New(ctx, pool, &dbcache.Config{
//		Tracer: multitracer.New(metrics, oteltrace.New(nil)),
//	})
package multitracer

import (
	"context"

	"github.com/dbcache/dbcache/dbcache"
)

// Tracer calls each of its tracers in turn. It is a dbcache.LoadTracer
// too, calling those of its tracers that are.
type Tracer struct {
	tracers []dbcache.Tracer
	loads   []dbcache.LoadTracer
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
	}
	return t
}

// TraceOpStart implements dbcache.Tracer.
func (t *Tracer) TraceOpStart(ctx context.Context, op dbcache.OpStart) context.Context {
	for _, tr := range t.tracers {
		ctx = tr.TraceOpStart(ctx, op)
	}
	return ctx
}

// TraceOpEnd implements dbcache.Tracer.
func (t *Tracer) TraceOpEnd(ctx context.Context, op dbcache.OpEnd) {
	for _, tr := range t.tracers {
		tr.TraceOpEnd(ctx, op)
	}
}

// TraceLoad implements dbcache.LoadTracer.
func (t *Tracer) TraceLoad(ctx context.Context, l dbcache.LoadEnd) {
	for _, lt := range t.loads {
		lt.TraceLoad(ctx, l)
	}
}
