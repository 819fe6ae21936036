package oteltrace_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/multitracer"
	"github.com/dbcache/dbcache/oteltrace"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

// pgxSpans is a pgx tracer that makes a span per statement from the
// statement's context, as otelpgx does: the test of how dbcache's spans
// and pgx's nest.
type pgxSpans struct{ tracer trace.Tracer }

func (p pgxSpans) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	ctx, _ = p.tracer.Start(ctx, "pgx query", trace.WithSpanKind(trace.SpanKindClient))
	return ctx
}

func (p pgxSpans) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	trace.SpanFromContext(ctx).End()
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

func byName(spans []sdktrace.ReadOnlySpan, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range spans {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

func TestSpans(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	pcfg := s.PoolConfig(t)
	pcfg.ConnConfig.Tracer = pgxSpans{tracer: tp.Tracer("pgx")}
	pool := dbtest.NewPool(t, pcfg)
	ctx := context.Background()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{
		Tracer: oteltrace.New(&oteltrace.Config{TracerProvider: tp, Attributes: []attribute.KeyValue{attribute.String("cache", "test")}}),
	})
	require.NoError(t, err)
	defer cache.Close()

	// The caller's span is the parent of the operation's.
	ctx, root := tp.Tracer("app").Start(ctx, "request")
	require.NoError(t, cache.Set(ctx, "a", []byte("1"), dbcache.DefaultTimeout))
	_, err = cache.GetMany(ctx, []string{"a", "b"})
	require.NoError(t, err)
	_, err = cache.Get(ctx, "bad\x00key")
	require.ErrorIs(t, err, dbcache.ErrInvalidKey)
	_, err = cache.Incr(ctx, "a", 1)
	require.NoError(t, err)
	require.NoError(t, cache.Set(ctx, "word", []byte("x"), dbcache.DefaultTimeout))
	_, err = cache.Incr(ctx, "word", 1)
	require.ErrorIs(t, err, dbcache.ErrNotInteger)
	_, err = cache.GetOrSetFunc(ctx, "g", func(context.Context) ([]byte, error) {
		time.Sleep(5 * time.Millisecond)
		return []byte("v"), nil
	}, dbcache.DefaultTimeout)
	require.NoError(t, err)
	root.End()

	spans := rec.Ended()
	set := byName(spans, "dbcache set")
	require.Len(t, set, 2) // "a", then "word"
	require.Equal(t, root.SpanContext().SpanID(), set[0].Parent().SpanID())
	require.Equal(t, trace.SpanKindInternal, set[0].SpanKind())
	a := attrs(set[0])
	require.Equal(t, "postgresql", a["db.system.name"].AsString())
	require.Equal(t, "set", a["db.operation.name"].AsString())
	require.Equal(t, int64(1), a["dbcache.keys"].AsInt64())
	require.Equal(t, int64(1), a["dbcache.stored"].AsInt64())
	require.Equal(t, "test", a["cache"].AsString())

	many := byName(spans, "dbcache get_many")
	require.Len(t, many, 1)
	a = attrs(many[0])
	require.Equal(t, int64(2), a["dbcache.keys"].AsInt64())
	require.Equal(t, int64(1), a["dbcache.hits"].AsInt64())
	require.Equal(t, int64(1), a["dbcache.misses"].AsInt64())
	require.Equal(t, codes.Unset, many[0].Status().Code)

	// pgx's statement spans nest under the operation that ran them.
	var underMany, underSet int
	for _, q := range byName(spans, "pgx query") {
		switch q.Parent().SpanID() {
		case many[0].SpanContext().SpanID():
			underMany++
		case set[0].SpanContext().SpanID():
			underSet++
		}
	}
	require.Equal(t, 1, underMany)
	require.Equal(t, 1, underSet)

	// A refused key makes no span; an error sets the status, by its code.
	require.Empty(t, byName(spans, "dbcache get"))
	incr := byName(spans, "dbcache incr")
	require.Len(t, incr, 2)
	require.Equal(t, codes.Unset, incr[0].Status().Code)
	require.Equal(t, codes.Error, incr[1].Status().Code)
	require.Equal(t, "not_integer", incr[1].Status().Description)
	require.Equal(t, "not_integer", attrs(incr[1])["error.type"].AsString())

	// The loader run is a span under get_or_set, dated from its start.
	gos := byName(spans, "dbcache get_or_set")
	require.Len(t, gos, 1)
	load := byName(spans, "dbcache load")
	require.Len(t, load, 1)
	require.Equal(t, gos[0].SpanContext().SpanID(), load[0].Parent().SpanID())
	require.GreaterOrEqual(t, load[0].EndTime().Sub(load[0].StartTime()), 5*time.Millisecond)
	require.False(t, attrs(load[0])["dbcache.refresh"].AsBool())
	require.False(t, load[0].StartTime().Before(gos[0].StartTime()))
}

func TestFailOpenAndLoadError(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	pool := dbtest.Pool(t)
	ctx := context.Background()
	// New gets a deadline of its own, so the short OpTimeout meant for the
	// operations does not bound it on a loaded machine.
	newCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cache, err := dbcache.New(newCtx, pool, &dbcache.Config{
		Tracer:   oteltrace.New(&oteltrace.Config{TracerProvider: tp}),
		FailOpen: true, OpTimeout: 200 * time.Millisecond,
	})
	require.NoError(t, err)
	defer cache.Close()

	_, err = cache.GetOrSetFunc(ctx, "x", func(context.Context) ([]byte, error) { return nil, errors.New("backend") }, dbcache.DefaultTimeout)
	require.Error(t, err)
	load := byName(rec.Ended(), "dbcache load")
	require.Len(t, load, 1)
	require.Equal(t, codes.Error, load[0].Status().Code)

	require.NoError(t, cache.Set(ctx, "k", nil, dbcache.DefaultTimeout))
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `SELECT 1 FROM dbcache_entries WHERE key = ':1:k' FOR UPDATE`)
	require.NoError(t, err)
	require.NoError(t, cache.Set(context.Background(), "k", []byte("v"), dbcache.DefaultTimeout))
	sets := byName(rec.Ended(), "dbcache set")
	last := sets[len(sets)-1]
	require.Equal(t, codes.Unset, last.Status().Code, "swallowed: not an error to the caller")
	require.Len(t, last.Events(), 1)
	require.Equal(t, "dbcache.fail_open", last.Events()[0].Name)
	require.Equal(t, []attribute.KeyValue{attribute.String("error.type", "timeout")}, last.Events()[0].Attributes)
}

// spanText is everything a span carries as text: name, attributes, status,
// events and their attributes.
func spanText(s sdktrace.ReadOnlySpan) string {
	var b strings.Builder
	b.WriteString(s.Name() + " " + s.Status().Description)
	for _, kv := range s.Attributes() {
		b.WriteString(" " + string(kv.Key) + "=" + kv.Value.String())
	}
	for _, e := range s.Events() {
		b.WriteString(" " + e.Name)
		for _, kv := range e.Attributes {
			b.WriteString(" " + string(kv.Key) + "=" + kv.Value.String())
		}
	}
	return b.String()
}

// No span carries a key or a value by default, though the errors' texts
// do (a value that is not an integer names its key; a loader's error and
// panic hold what it put in them): errors are recorded by their code.
// RecordErrorText is the opt-in that adds the texts.
func TestSpansCarryNoKeys(t *testing.T) {
	t.Parallel()
	const key = "user:carol@example.com"
	for _, withText := range []bool{false, true} {
		rec := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
		pool := dbtest.Pool(t)
		ctx := context.Background()
		cache, err := dbcache.New(ctx, pool, &dbcache.Config{
			Tracer: oteltrace.New(&oteltrace.Config{TracerProvider: tp, RecordErrorText: withText}),
		})
		require.NoError(t, err)
		defer cache.Close()
		require.NoError(t, cache.Set(ctx, key, []byte("secret-value"), dbcache.DefaultTimeout))
		_, err = cache.Incr(ctx, key, 1)
		require.ErrorContains(t, err, key, "the error's text names the key")
		_, err = cache.GetOrSetFunc(ctx, "l", func(context.Context) ([]byte, error) {
			return nil, errors.New("no row for " + key)
		}, dbcache.DefaultTimeout)
		require.ErrorContains(t, err, key)
		_, err = cache.GetOrSetFunc(ctx, "p", func(context.Context) ([]byte, error) { panic("bad " + key) }, dbcache.DefaultTimeout)
		require.ErrorContains(t, err, key)
		var all strings.Builder
		for _, s := range rec.Ended() {
			all.WriteString(spanText(s) + "\n")
		}
		text := all.String()
		for _, code := range []string{"not_integer", "loader", "loader_panic"} {
			require.Contains(t, text, "error.type="+code)
		}
		if withText {
			require.Contains(t, text, key)
		} else {
			require.NotContains(t, text, key, text)
			require.NotContains(t, text, "secret-value")
		}
	}
}

// A tracer that panics in TraceOpEnd after oteltrace (in a multitracer)
// propagates to the caller, as on any caller's goroutine, and oteltrace's
// span is ended all the same.
func TestPanickingTracerLeavesNoSpan(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	pool := dbtest.Pool(t)
	ctx := context.Background()
	for _, order := range []string{"panic first", "panic last"} {
		tracers := []dbcache.Tracer{oteltrace.New(&oteltrace.Config{TracerProvider: tp}), panicEnd{}}
		if order == "panic first" {
			tracers[0], tracers[1] = tracers[1], tracers[0]
		}
		cache, err := dbcache.New(ctx, pool, &dbcache.Config{Tracer: multitracer.New(tracers...)})
		require.NoError(t, err)
		func() {
			defer func() { require.Equal(t, "trace end", recover(), order) }()
			_, _ = cache.Get(ctx, "k")
		}()
		cache.Close()
	}
	require.Len(t, byName(rec.Ended(), "dbcache get"), 2, "both spans ended")
	require.Zero(t, pool.Stat().AcquiredConns())
}

type panicEnd struct{}

func (panicEnd) TraceOpStart(ctx context.Context, _ dbcache.OpStart) context.Context { return ctx }
func (panicEnd) TraceOpEnd(context.Context, dbcache.OpEnd)                           { panic("trace end") }

// With metrics too: each tracer sees every operation, and the spans are
// unchanged.
func TestMultitracer(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	counter := &countingTracer{}
	pool := dbtest.Pool(t)
	ctx := context.Background()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{
		Tracer: multitracer.New(counter, nil, oteltrace.New(&oteltrace.Config{TracerProvider: tp})),
	})
	require.NoError(t, err)
	defer cache.Close()
	_, err = cache.GetOrSetFunc(ctx, "g", func(context.Context) ([]byte, error) { return []byte("v"), nil }, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, 1, counter.starts)
	require.Equal(t, 1, counter.ends)
	require.Equal(t, 1, counter.loads)
	require.Len(t, byName(rec.Ended(), "dbcache get_or_set"), 1)
	require.Len(t, byName(rec.Ended(), "dbcache load"), 1)
}

type countingTracer struct{ starts, ends, loads int }

func (c *countingTracer) TraceOpStart(ctx context.Context, _ dbcache.OpStart) context.Context {
	c.starts++
	return ctx
}
func (c *countingTracer) TraceOpEnd(context.Context, dbcache.OpEnd)  { c.ends++ }
func (c *countingTracer) TraceLoad(context.Context, dbcache.LoadEnd) { c.loads++ }

// A load that waits on another process's lease, and callers that join it,
// mark their operations' spans with the loader events.
func TestLoadEventsOnSpans(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rec := tracetest.NewSpanRecorder()
	tr := oteltrace.New(&oteltrace.Config{TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))})
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	cache, err := dbcache.New(ctx, s.Pool(t), &dbcache.Config{Tracer: tr})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cache.Close() })
	other, err := dbcache.New(ctx, s.Pool(t), nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = other.Close() })
	lease, err := other.AcquireLease(ctx, "k", time.Minute)
	require.NoError(t, err)
	done := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := cache.GetOrSetFunc(ctx, "k", func(context.Context) ([]byte, error) { return []byte("v"), nil }, dbcache.Forever)
			done <- err
		}()
	}
	require.Eventually(t, func() bool { st := cache.Stats(); return st.LoadWaits == 1 && st.JoinedWaits == 1 }, time.Minute, 5*time.Millisecond)
	_, err = other.ReleaseLease(ctx, "k", lease.Token)
	require.NoError(t, err)
	require.NoError(t, <-done)
	require.NoError(t, <-done)
	events := map[string]int{}
	for _, sp := range byName(rec.Ended(), "dbcache get_or_set") {
		for _, e := range sp.Events() {
			events[e.Name]++
		}
	}
	require.Equal(t, 1, events["dbcache.lease_wait"], "%v", events)
	require.Equal(t, 1, events["dbcache.joined"], "%v", events)
}
