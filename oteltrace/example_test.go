package oteltrace_test

import (
	"context"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/oteltrace"
)

func Example() {
	ctx := context.Background()
	// An application's tracer provider, exporting where it likes; here the
	// SDK's in-memory recorder.
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))

	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{
		KeyPrefix: "example-otel",
		Tracer:    oteltrace.New(&oteltrace.Config{TracerProvider: tp}),
	})
	if err != nil {
		panic(err)
	}
	defer cache.Close()

	ctx, request := tp.Tracer("app").Start(ctx, "GET /report")
	_, _ = cache.Delete(ctx, "report")
	_, _ = cache.GetOrSetFunc(ctx, "report", func(context.Context) ([]byte, error) {
		return []byte("…"), nil
	}, dbcache.DefaultTimeout)
	request.End()

	for _, s := range rec.Ended() {
		fmt.Printf("%s (parent %v)\n", s.Name(), s.Parent().IsValid())
	}
	// Output:
	// dbcache delete (parent true)
	// dbcache load (parent true)
	// dbcache get_or_set (parent true)
	// GET /report (parent false)
}
