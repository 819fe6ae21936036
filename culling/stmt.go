package culling

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The statement-interrupt machinery: every statement a pass sends runs
// under a watcher that, when the pass is stopped, asks the server to
// cancel it and then closes its connection (stmt, interrupt), and the
// connections that have had a statement cut are never reused.

const (
	// stopGrace is how long a statement in progress when its pass is
	// stopped (Stop, ctx, PassTimeout) may run on before the pass asks the
	// server to cancel it. Batches take milliseconds; one that waits this
	// long is stuck (on a lock taken by ALTER TABLE, say).
	stopGrace = 2 * time.Second

	// cancelGrace is how long a statement the server was asked to cancel
	// may take to return before the pass closes its connection, and how
	// long a cancel request itself may take.
	cancelGrace = 3 * time.Second

	// releaseWait bounds how long a pass waits, at its end, for the server
	// to show that a connection it had to close no longer holds the lock or
	// runs a batch.
	releaseWait = 5 * time.Second

	// releasePoll is how often it looks.
	releasePoll = 10 * time.Millisecond
)

// passConn is a pooled connection a pass holds.
type passConn struct {
	*pgxpool.Conn
	// pid is the server backend the connection's statements run on, for
	// waitReleased: read from the server (sqlLock, sqlServerPID) once a
	// pass can, since behind a pooler the PID the client was given is the
	// pooler's cancel key. Until then it is that client PID, right on a
	// direct connection; 0 when the connection has no one backend (a
	// transaction pooler's).
	pid uint32
	// cut is set once a cancel request was sent for a statement on the
	// connection. A cancel request can arrive late and cancel whatever the
	// connection runs next, so it runs nothing more and is closed, never
	// returned to the pool.
	cut atomic.Bool
	// abandoned is set when a statement was given up by closing the
	// connection: the server may still be running it.
	abandoned atomic.Bool
}

func newPassConn(c *pgxpool.Conn) *passConn {
	return &passConn{Conn: c, pid: c.Conn().PgConn().PID()}
}

// clientPID is the PID the server (or a pooler) gave the client.
func (pc *passConn) clientPID() uint32 { return pc.Conn.Conn().PgConn().PID() }

// done returns the connection to the pool, or closes it if a statement on
// it was interrupted.
func (pc *passConn) done(ctx context.Context) {
	if !pc.cut.Load() && !pc.abandoned.Load() {
		pc.Release()
		return
	}
	// Terminate: the server ends the session, and whatever it holds.
	_ = pc.Hijack().Close(ctx)
}

// inflight is one statement in progress, for the stop watcher.
type inflight struct {
	mu       sync.Mutex
	over     bool
	finished chan struct{}
}

var errConnCut = errors.New("culling: the connection's statement was cancelled; it runs nothing more")

// stmt runs fn, one statement or one pipeline on pc, under a context the
// pass's own does not cancel. Cancelling a context in the middle of a
// statement makes pgx close the connection at once, but the server notices
// only later: its backend, its locks and a DELETE in flight would outlive
// the pass, and the next culler would find the lock still held. So a
// stopped pass lets the statement in progress finish (stopGrace), then asks
// the server to cancel it and waits for the answer (cancelGrace), and only
// then closes the connection. Once the pass's context has ended, stmt runs
// nothing new.
func (p *pass) stmt(pc *passConn, fn func(context.Context) error) error {
	if err := p.ctx.Err(); err != nil {
		return err
	}
	if pc.cut.Load() || pc.abandoned.Load() {
		return errConnCut
	}
	sctx, abandon := context.WithCancel(context.WithoutCancel(p.ctx))
	defer abandon()
	st := &inflight{finished: make(chan struct{})}
	stopWatch := context.AfterFunc(p.ctx, func() { interrupt(pc, st, abandon) })
	err := fn(sctx)
	st.mu.Lock()
	st.over = true
	st.mu.Unlock()
	close(st.finished)
	stopWatch()
	return err
}

// interrupt runs when a pass is stopped while st runs on pc.
func interrupt(pc *passConn, st *inflight, abandon context.CancelFunc) {
	grace := time.NewTimer(stopGrace)
	defer grace.Stop()
	select {
	case <-st.finished:
		return
	case <-grace.C:
	}
	// Mark the connection before sending: once stmt has seen over, no
	// cancel request may follow, and once one may, stmt sees cut.
	st.mu.Lock()
	if st.over {
		st.mu.Unlock()
		return
	}
	pc.cut.Store(true)
	st.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), cancelGrace)
	_ = pc.Conn.Conn().PgConn().CancelRequest(ctx)
	cancel()
	hard := time.NewTimer(cancelGrace)
	defer hard.Stop()
	select {
	case <-st.finished:
	case <-hard.C:
		pc.abandoned.Store(true)
		abandon()
	}
}

// runTx runs q in a transaction of its own at READ COMMITTED, preceded by
// settings (if any) for that transaction only, all sent as one pipeline
// (one round trip). scan reads q's row; with a nil scan q is executed and
// its command tag returned. The settings end with the transaction, so
// nothing outlives it on the pooled connection.
//
// sqlBatchSettings turns synchronous_commit off: a commit then returns
// without waiting for its WAL to reach disk, which measured four to five
// times faster per batch where a WAL flush costs about 5 ms. It is safe for
// a cache: a crash can lose only the last fraction of a second of
// deletions, and the rows that come back are removed by the next pass (or,
// for the state row, the next pass records itself).
func runTx(ctx context.Context, conn *pgx.Conn, settings []string, q string, args []any, scan func(pgx.Row) error) (pgconn.CommandTag, error) {
	var tag pgconn.CommandTag
	err := runTxWith(ctx, conn, settings, func(b *pgx.Batch) { b.Queue(q, args...) }, func(br pgx.BatchResults) error {
		if scan != nil {
			return scan(br.QueryRow())
		}
		var err error
		tag, err = br.Exec()
		return err
	})
	return tag, err
}

// runTxWith is runTx for any statements: queue queues them between the
// transaction's start (and settings) and its COMMIT, read reads their
// results in order.
func runTxWith(ctx context.Context, conn *pgx.Conn, settings []string, queue func(*pgx.Batch), read func(pgx.BatchResults) error) error {
	b := &pgx.Batch{}
	b.Queue(sqlBegin)
	for _, s := range settings {
		b.Queue(s)
	}
	queue(b)
	b.Queue(sqlCommit)
	br := conn.SendBatch(ctx, b)
	_, err := br.Exec()
	for range settings {
		if err == nil {
			_, err = br.Exec()
		}
	}
	if err == nil {
		err = read(br)
	}
	if err == nil {
		_, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		rollback(ctx, conn)
	}
	return err
}

// rollback ends a transaction a failed statement left open (aborted) on
// conn, if it is.
func rollback(ctx context.Context, conn *pgx.Conn) {
	if conn.IsClosed() || conn.PgConn().TxStatus() == 'I' {
		return
	}
	// The failed statement aborted the transaction, which stays open
	// until it is ended.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cancelGrace)
	_, _ = conn.Exec(rctx, sqlRollback)
	cancel()
}

// tx runs q on pc through runTx, under stmt.
func (p *pass) tx(pc *passConn, settings []string, q string, args []any, scan func(pgx.Row) error) error {
	return p.stmt(pc, func(ctx context.Context) error {
		_, err := runTx(ctx, pc.Conn.Conn(), settings, q, args, scan)
		return err
	})
}
