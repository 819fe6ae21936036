package multitracer_test

import (
	"context"
	"fmt"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/multitracer"
)

// printer is a tracer that prints what it sees, under its name.
type printer string

func (p printer) TraceOpStart(ctx context.Context, op dbcache.OpStart) context.Context {
	fmt.Println(p, "start", op.Op)
	return ctx
}

func (p printer) TraceOpEnd(_ context.Context, op dbcache.OpEnd) {
	fmt.Println(p, "end", op.Op, "hits", op.Hits)
}

// Two tracers as the one Config.Tracer takes: each sees every operation,
// in the order given (dbcache calls the combined tracer as it would one).
func Example() {
	t := multitracer.New(printer("metrics"), printer("spans"))
	// cache, err := dbcache.New(ctx, pool, &dbcache.Config{Tracer: t})
	ctx := t.TraceOpStart(context.Background(), dbcache.OpStart{Op: dbcache.OpGet, Keys: 1})
	t.TraceOpEnd(ctx, dbcache.OpEnd{OpStart: dbcache.OpStart{Op: dbcache.OpGet, Keys: 1}, Hits: 1})
	// Output:
	// metrics start get
	// spans start get
	// metrics end get hits 1
	// spans end get hits 1
}
