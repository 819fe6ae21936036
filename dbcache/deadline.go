package dbcache

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Config.OpTimeout without a timer per operation.
//
// context.WithTimeout starts a runtime timer for every call. When that timer
// is the earliest the process has, which is the usual case for a 5 s bound
// on operations that take 50 µs, the runtime wakes the network poller to
// re-arm it: a system call and a thread switch per operation. Measured on
// BenchmarkOps get_hit, that alone cost dbcache 15–20% of its throughput
// against raw pgx. So operations that start within one tick (OpTimeout/20)
// share one deadline and one timer: a bucket. An operation's bound is then
// between OpTimeout and OpTimeout plus one tick.

// deadlines hands out the bucket for operations starting now.
type deadlines struct {
	timeout, tick time.Duration

	mu  sync.Mutex
	cur *bucket
}

func newDeadlines(timeout time.Duration) *deadlines {
	return &deadlines{timeout: timeout, tick: max(timeout/20, time.Millisecond)}
}

// bucket is one shared deadline: done closes and every registered function
// runs when it passes.
type bucket struct {
	opened   time.Time // the tick's start: operations from here to +tick share it
	deadline time.Time
	done     chan struct{}

	mu    sync.Mutex
	fired bool
	seq   uint64
	funcs map[uint64]func()
}

func (d *deadlines) bucket() *bucket {
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if b := d.cur; b != nil && now.Sub(b.opened) < d.tick {
		return b
	}
	b := &bucket{opened: now, deadline: now.Add(d.timeout + d.tick), done: make(chan struct{}), funcs: map[uint64]func(){}}
	time.AfterFunc(d.timeout+d.tick, b.fire)
	d.cur = b
	return b
}

func (b *bucket) fire() {
	b.mu.Lock()
	b.fired = true
	funcs := b.funcs
	b.funcs = nil
	close(b.done)
	b.mu.Unlock()
	for _, f := range funcs {
		go f()
	}
}

// afterFunc arranges for f to run (in its own goroutine) when the deadline
// passes, as context.AfterFunc does; stop cancels that and reports whether
// it did.
func (b *bucket) afterFunc(f func()) (stop func() bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fired {
		go f()
		return func() bool { return false }
	}
	b.seq++
	id := b.seq
	b.funcs[id] = f
	return func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.fired {
			return false
		}
		delete(b.funcs, id)
		return true
	}
}

func (b *bucket) err() error {
	select {
	case <-b.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

// sharedDeadlineCtx is an operation's context when the caller's cannot be
// cancelled (context.Background, or values only): the caller's values, and
// the bucket's deadline, Done channel and error. Its AfterFunc method makes
// context.AfterFunc (which pgx uses to watch every query) register with the
// bucket instead of starting a goroutine.
type sharedDeadlineCtx struct {
	parent context.Context
	b      *bucket
}

func (c *sharedDeadlineCtx) Deadline() (time.Time, bool)    { return c.b.deadline, true }
func (c *sharedDeadlineCtx) Done() <-chan struct{}          { return c.b.done }
func (c *sharedDeadlineCtx) Err() error                     { return c.b.err() }
func (c *sharedDeadlineCtx) Value(key any) any              { return c.parent.Value(key) }
func (c *sharedDeadlineCtx) AfterFunc(f func()) func() bool { return c.b.afterFunc(f) }

// deadlineView is an operation's context when the caller's can be
// cancelled but has no deadline: a child that the caller's cancellation or
// the bucket's deadline cancels, seen with the bucket's deadline and
// reporting context.DeadlineExceeded when that is what ended it.
type deadlineView struct {
	context.Context // the cancellable child
	b               *bucket
}

func (c deadlineView) Deadline() (time.Time, bool) { return c.b.deadline, true }

func (c deadlineView) Err() error {
	err := c.Context.Err()
	if err != nil && context.Cause(c.Context) == context.DeadlineExceeded {
		return context.DeadlineExceeded
	}
	return err
}

// within returns ctx bounded by the shared deadline; ctx must have no
// deadline of its own.
func (d *deadlines) within(ctx context.Context) (context.Context, context.CancelFunc) {
	b := d.bucket()
	if ctx.Done() == nil {
		return &sharedDeadlineCtx{parent: ctx, b: b}, noop
	}
	child, cancel := context.WithCancelCause(ctx)
	stop := b.afterFunc(func() { cancel(context.DeadlineExceeded) })
	return deadlineView{Context: child, b: b}, func() {
		stop()
		cancel(context.Canceled)
	}
}

// The bound without a watched context, for the statements on the pool a
// cheap bound matters most to: one-key operations, GetMany and coalesced
// batches (queryRowBounded, queryBounded, execBounded).
//
// pgx watches the context of every statement whose Done channel is not nil
// (context.AfterFunc when it starts, its removal when it ends), so that a
// cancellation interrupts the connection. A sharedDeadlineCtx has a Done
// channel, so each statement under it registered with its bucket and
// removed itself again: about 11 % of a Get's client CPU at 16 goroutines
// (measured), all to act on a deadline that almost never passes. Raw pgx
// with context.Background pays none of it. So a statement whose bounded
// context is a sharedDeadlineCtx (the caller's context cannot be cancelled)
// runs instead on a connection taken from the pool under that context
// (acquiring is bounded: a full pool's wait ends at the deadline), with
// the bucket's deadline set on the connection's socket and the caller's
// own context, which pgx does not watch. A server that goes silent then
// fails the socket's read or write at the deadline; pgx closes that
// connection (its protocol state is unknown), and the error is reported as
// context.DeadlineExceeded, as the watched context's was. The socket's
// deadline is cleared before the connection goes back to the pool. The
// deadline is the bucket's, whose own timer is already armed for that
// instant, so the socket's timer is never the process's earliest and never
// wakes the network poller to re-arm (see above).

// boundRow is a pgx.Row from queryRowBounded; Scan releases its connection.
type boundRow struct {
	conn  *pgxpool.Conn
	row   pgx.Row
	err   error
	onDDL bool // the socket carries the deadline: clear it, map its timeout
}

// queryRowBounded is pool.QueryRow, bounded as the paragraphs above say when
// ctx is a sharedDeadlineCtx, and exactly pool.QueryRow otherwise.
func queryRowBounded(ctx context.Context, pool *pgxpool.Pool, sql string, args ...any) boundRow {
	sd, ok := ctx.(*sharedDeadlineCtx)
	if !ok {
		return boundRow{row: pool.QueryRow(ctx, sql, args...)}
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return boundRow{err: err}
	}
	if err := conn.Conn().PgConn().Conn().SetDeadline(sd.b.deadline); err != nil {
		// A socket that refuses a deadline: run under the watched context.
		return boundRow{conn: conn, row: conn.QueryRow(ctx, sql, args...)}
	}
	return boundRow{conn: conn, row: conn.QueryRow(sd.parent, sql, args...), onDDL: true}
}

func (r boundRow) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	err := r.row.Scan(dest...)
	if r.onDDL {
		if err != nil && pgconn.Timeout(err) {
			// The only deadline on this socket is the bound's.
			err = &boundExpired{err: err}
		}
		_ = r.conn.Conn().PgConn().Conn().SetDeadline(time.Time{}) // a closed connection refuses; it is not reused
	}
	if r.conn != nil {
		r.conn.Release()
	}
	return err
}

// boundExpired is a statement's failure at the bound's socket deadline: it
// is context.DeadlineExceeded, as the same failure under a watched context
// is, and keeps pgx's error beside it.
type boundExpired struct{ err error }

func (e *boundExpired) Error() string   { return context.DeadlineExceeded.Error() + ": " + e.err.Error() }
func (e *boundExpired) Unwrap() []error { return []error{context.DeadlineExceeded, e.err} }

// queryBounded is pool.Query, bounded as queryRowBounded is. The rows'
// Close releases the connection.
func queryBounded(ctx context.Context, pool *pgxpool.Pool, sql string, args ...any) (pgx.Rows, error) {
	sd, ok := ctx.(*sharedDeadlineCtx)
	if !ok {
		return pool.Query(ctx, sql, args...)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	if err := conn.Conn().PgConn().Conn().SetDeadline(sd.b.deadline); err != nil {
		conn.Release()
		return pool.Query(ctx, sql, args...)
	}
	rows, err := conn.Query(sd.parent, sql, args...)
	br := &boundRows{Rows: rows, conn: conn}
	if err != nil {
		br.Close()
		return nil, br.mapErr(err)
	}
	return br, nil
}

// boundRows are the rows of queryBounded: Close clears the socket's
// deadline and releases the connection, and a failure at the deadline is
// context.DeadlineExceeded.
type boundRows struct {
	pgx.Rows
	conn *pgxpool.Conn
}

func (r *boundRows) Close() {
	if r.Rows != nil {
		r.Rows.Close()
	}
	if r.conn != nil {
		_ = r.conn.Conn().PgConn().Conn().SetDeadline(time.Time{}) // a closed connection refuses; it is not reused
		r.conn.Release()
		r.conn = nil
	}
}

func (r *boundRows) Err() error { return r.mapErr(r.Rows.Err()) }

func (r *boundRows) mapErr(err error) error {
	if err != nil && pgconn.Timeout(err) {
		return &boundExpired{err: err}
	}
	return err
}

// execBounded is pool.Exec, bounded as queryRowBounded is.
func execBounded(ctx context.Context, pool *pgxpool.Pool, sql string, args ...any) (pgconn.CommandTag, error) {
	sd, ok := ctx.(*sharedDeadlineCtx)
	if !ok {
		return pool.Exec(ctx, sql, args...)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	defer conn.Release()
	nc := conn.Conn().PgConn().Conn()
	if err := nc.SetDeadline(sd.b.deadline); err != nil {
		return conn.Exec(ctx, sql, args...)
	}
	tag, err := conn.Exec(sd.parent, sql, args...)
	_ = nc.SetDeadline(time.Time{}) // a closed connection refuses; it is not reused
	if err != nil && pgconn.Timeout(err) {
		err = &boundExpired{err: err}
	}
	return tag, err
}
