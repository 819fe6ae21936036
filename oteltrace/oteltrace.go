// Package oteltrace gives every dbcache operation an OpenTelemetry span,
// through dbcache.Config.Tracer, so the core imports no tracing library.
// It is in its own package so that only programs that use it build
// go.opentelemetry.io/otel.
//
//	cache, err := dbcache.New(ctx, pool, &dbcache.Config{Tracer: oteltrace.New(nil)})
//	// with metrics too: Tracer: multitracer.New(metrics, oteltrace.New(nil))
//
// # Spans
//
// Each operation is a span named "dbcache OP" (OP as dbcache.OpGet, …), of
// kind internal, a child of the span in the caller's context, with these
// attributes:
//
//	db.system.name     "postgresql"
//	db.operation.name  the operation (get, set, get_many, …)
//	dbcache.keys       the number of keys it carries
//	dbcache.hits, dbcache.misses, dbcache.stored, dbcache.not_stored
//	                   its outcome (see dbcache.OpEnd), when not zero
//
// An error sets the span's status to Error, described by its
// dbcache.ErrorCode (not_integer, invalid_key, loader, timeout, …), which
// is also the span's error.type attribute; an error that Config.FailOpen
// swallowed is an event "dbcache.fail_open" with that code as its
// error.type, and the status stays unset. Each loader run of
// GetOrSetFunc and GetOrRevalidate is a span "dbcache load" (attribute
// dbcache.refresh for a stale-while-revalidate refresh), a child of the operation's span (a
// refresh's outlives it).
//
// # Keys and values
//
// No span carries a key or a value: spans hold the operation's name and
// counts, and errors by their code, because an error's text can hold the
// caller's key (ErrNotInteger's and an invalid key's name it) and
// whatever a loader or the database put in it. Config.RecordErrorText is
// the opt-in that adds the texts (span.RecordError, and the status
// description), for applications whose spans may hold keys.
//
// # With pgx's own tracing
//
// A pgx tracer on the pool (otelpgx, for example: pgxpool.Config's
// ConnConfig.Tracer) makes a span of every statement. dbcache runs its
// statements with the context TraceOpStart returned, so those spans are
// children of the operation's span: a trace shows "dbcache get" and,
// under it, the SELECT it ran (and, for GetOrSetFunc, the advisory lock,
// the loader and the write). Statements that Config.CoalesceGets,
// Config.CoalesceSets and Config.CoalesceIncrs batch run for several
// callers at once, on a goroutine of the cache's, so their spans have no
// operation as parent.
package oteltrace

import (
	"context"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/dbcache/dbcache/dbcache"
)

// ScopeName is the instrumentation scope of the spans.
const ScopeName = "github.com/dbcache/dbcache/oteltrace"

// Config configures a Tracer. A nil *Config means all defaults.
type Config struct {
	// Attributes are added to every span, for example the cache's name
	// when a process has several. Defaults to none.
	Attributes []attribute.KeyValue

	// RecordErrorText also records each error's text: an exception event
	// (span.RecordError) and the status description, on operation and
	// load spans and in fail-open events. The texts can hold keys and
	// values (see the package doc). Defaults to false: errors are recorded
	// by their dbcache.ErrorCode only.
	RecordErrorText bool

	// TracerProvider makes the spans. Defaults to otel.GetTracerProvider()
	// at New.
	TracerProvider trace.TracerProvider
}

// Tracer is a dbcache.Tracer, dbcache.LoadTracer and
// dbcache.LoadEventTracer that makes spans (and span events). It is safe
// for concurrent use.
type Tracer struct {
	tracer   trace.Tracer
	attrs    []attribute.KeyValue
	withText bool
}

// New returns a Tracer.
func New(cfg *Config) *Tracer {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	return &Tracer{
		tracer:   c.TracerProvider.Tracer(ScopeName),
		attrs:    append([]attribute.KeyValue{attribute.String("db.system.name", "postgresql")}, c.Attributes...),
		withText: c.RecordErrorText,
	}
}

// spanKey finds this Tracer's span in the context TraceOpEnd gets, even
// when another tracer (multitracer) started a span after it.
type spanKey struct{}

// TraceOpStart implements dbcache.Tracer: it starts the operation's span.
func (t *Tracer) TraceOpStart(ctx context.Context, op dbcache.OpStart) context.Context {
	attrs := make([]attribute.KeyValue, 0, len(t.attrs)+2)
	attrs = append(attrs, t.attrs...)
	attrs = append(attrs, attribute.String("db.operation.name", op.Op), attribute.Int("dbcache.keys", op.Keys))
	ctx, span := t.tracer.Start(ctx, "dbcache "+op.Op, trace.WithSpanKind(trace.SpanKindInternal), trace.WithAttributes(attrs...))
	return context.WithValue(ctx, spanKey{}, span)
}

// TraceOpEnd implements dbcache.Tracer: it ends the operation's span.
func (t *Tracer) TraceOpEnd(ctx context.Context, e dbcache.OpEnd) {
	span, ok := ctx.Value(spanKey{}).(trace.Span)
	if !ok {
		return
	}
	for _, c := range []struct {
		key string
		n   int
	}{{"dbcache.hits", e.Hits}, {"dbcache.misses", e.Misses}, {"dbcache.stored", e.Stored}, {"dbcache.not_stored", e.NotStored}} {
		if c.n != 0 {
			span.SetAttributes(attribute.Int(c.key, c.n))
		}
	}
	if e.FailedOpen != nil {
		attrs := []attribute.KeyValue{attribute.String("error.type", dbcache.ErrorCode(e.FailedOpen))}
		if t.withText {
			attrs = append(attrs, attribute.String("error", e.FailedOpen.Error()))
		}
		span.AddEvent("dbcache.fail_open", trace.WithAttributes(attrs...))
	}
	t.recordError(span, e.Err)
	span.End()
}

// recordError sets the span's status for err (nil: none): its code, and
// its text only with Config.RecordErrorText.
func (t *Tracer) recordError(span trace.Span, err error) {
	if err == nil {
		return
	}
	code := dbcache.ErrorCode(err)
	span.SetAttributes(attribute.String("error.type", code))
	if t.withText {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return
	}
	span.SetStatus(codes.Error, code)
}

// TraceLoad implements dbcache.LoadTracer: a span for the loader run that
// just ended, dated from its start.
func (t *Tracer) TraceLoad(ctx context.Context, l dbcache.LoadEnd) {
	end := time.Now()
	attrs := append(append([]attribute.KeyValue{}, t.attrs...), attribute.Bool("dbcache.refresh", l.Refresh))
	_, span := t.tracer.Start(ctx, "dbcache load", trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithTimestamp(end.Add(-l.Duration)), trace.WithAttributes(attrs...))
	t.recordError(span, l.Err)
	span.End(trace.WithTimestamp(end))
}

// TraceLoadEvent implements dbcache.LoadEventTracer: an event named
// dbcache.<event> (dbcache.lease_wait, say) on the span in ctx, the
// operation's (or, for a load's events, that of the caller that started
// it).
func (t *Tracer) TraceLoadEvent(ctx context.Context, e dbcache.LoadEvent) {
	trace.SpanFromContext(ctx).AddEvent("dbcache."+string(e), trace.WithAttributes(t.attrs...))
}
