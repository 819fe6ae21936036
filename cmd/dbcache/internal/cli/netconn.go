package cli

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
)

// How the command bounds every answer, whatever runs the statement.
//
// The cache bounds each of its operations with a context (Config.OpTimeout),
// but the command also runs code that does not: golang-migrate takes no
// context at all, and a culling pass lets the statement in progress run on
// when its context ends, for seconds, so that it can commit. On a network
// that stops forwarding, those would wait for as long as the TCP connection
// stays open, which without resets is forever. So the command bounds the
// connection itself: every read that waits for the server, and every write
// the server does not take, fails once it has made no progress for the
// statement timeout plus OpTimeoutGrace (answerConn). A working server
// always answers sooner: it reports a statement that runs past the
// statement timeout itself, within that timeout. Behind a pooler, where the
// command cannot set the server's statement_timeout, a read still waiting a
// second before the bound asks the server to cancel the statement, whose
// answer then comes within the bound. An idle connection waits on nothing
// (pgx reads only when it expects an answer), so a lock held across a
// culling pass, or a pooled connection at rest, is never cut.

// answerConn is a connection on which a read or write that makes no
// progress for longer than bound fails: the connection is closed and the
// call returns a *noAnswerError. It is armed once the session is set up
// (connecting is bounded by the connect timeout).
type answerConn struct {
	net.Conn
	bound  time.Duration
	armed  atomic.Bool
	fired  atomic.Bool
	rt, wt *time.Timer
	// ct fires cancelLead before rt: a read still waiting then asks the
	// server to cancel the statement (onStall), whose answer can still
	// come within the bound. Behind a pooler, where the server's
	// statement_timeout is not set, that is what stops a slow statement on
	// the server; and closing the connection would not (the pooler keeps
	// the server connection busy, and forgets the client's cancel key).
	ct      *time.Timer
	onStall atomic.Pointer[func()]
}

// cancelLead is how long before giving up on a read the connection asks
// the server to cancel the statement.
const cancelLead = time.Second

// writeChunk is how much of a write must be taken within the bound: a
// large value is written in chunks, each with a bound of its own, so a
// slow network that keeps moving is never mistaken for a dead one.
const writeChunk = 256 << 10

func newAnswerConn(c net.Conn, bound time.Duration) *answerConn {
	ac := &answerConn{Conn: c, bound: bound}
	ac.rt = time.AfterFunc(time.Hour, ac.fire)
	ac.rt.Stop()
	ac.wt = time.AfterFunc(time.Hour, ac.fire)
	ac.wt.Stop()
	ac.ct = time.AfterFunc(time.Hour, ac.stall)
	ac.ct.Stop()
	return ac
}

// stall asks the server to cancel the statement a read has waited on for
// the bound less cancelLead.
func (c *answerConn) stall() {
	if f := c.onStall.Load(); f != nil {
		(*f)()
	}
}

// fire gives up on the connection: closing it ends the call waiting on it.
func (c *answerConn) fire() {
	if c.fired.CompareAndSwap(false, true) {
		_ = c.Conn.Close()
	}
}

func (c *answerConn) arm() { c.armed.Store(true) }

func (c *answerConn) Read(b []byte) (int, error) {
	if !c.armed.Load() {
		return c.Conn.Read(b)
	}
	if c.fired.Load() {
		return 0, &noAnswerError{bound: c.bound}
	}
	c.rt.Reset(c.bound)
	if c.bound > cancelLead {
		c.ct.Reset(c.bound - cancelLead)
	}
	n, err := c.Conn.Read(b)
	c.ct.Stop()
	c.rt.Stop()
	if err != nil && c.fired.Load() {
		err = &noAnswerError{bound: c.bound}
	}
	return n, err
}

func (c *answerConn) Write(b []byte) (int, error) {
	if !c.armed.Load() {
		return c.Conn.Write(b)
	}
	written := 0
	for written < len(b) {
		if c.fired.Load() {
			return written, &noAnswerError{bound: c.bound}
		}
		chunk := b[written:min(len(b), written+writeChunk)]
		c.wt.Reset(c.bound)
		n, err := c.Conn.Write(chunk)
		c.wt.Stop()
		written += n
		if err != nil {
			if c.fired.Load() {
				err = &noAnswerError{bound: c.bound}
			}
			return written, err
		}
	}
	return written, nil
}

func (c *answerConn) Close() error {
	c.ct.Stop()
	c.rt.Stop()
	c.wt.Stop()
	return c.Conn.Close()
}

// noAnswerError is a read or write the server did not answer within the
// bound. It is a net.Error timeout, so pgx reports it as one.
type noAnswerError struct {
	bound time.Duration
}

func (e *noAnswerError) Error() string {
	return fmt.Sprintf("no answer from the server within %s", e.bound)
}
func (e *noAnswerError) Timeout() bool   { return true }
func (e *noAnswerError) Temporary() bool { return false }

// answerConnOf finds the answerConn under a connection (TLS wraps it).
func answerConnOf(c net.Conn) *answerConn {
	for c != nil {
		switch x := c.(type) {
		case *answerConn:
			return x
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// connState is what the command learns about its connections as it opens
// them.
type connState struct {
	// pooled is set once a connection turned out to reach PostgreSQL
	// through a connection pooler: the backend that answers is not the one
	// the connection was told it talks to (PgBouncer hands out keys of its
	// own, and moves a client between server connections).
	pooled atomic.Bool
	// cancels are the cancel requests sent for statements a connection
	// waited on too long, which the command waits for (briefly) before it
	// exits.
	cancels sync.WaitGroup
}

// waitCancels waits, at most cancelAnswerWait, for the cancel requests in
// flight to reach the server.
func (st *connState) waitCancels() {
	done := make(chan struct{})
	go func() { st.cancels.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(cancelAnswerWait):
	}
}

// sqlSession runs once per connection, right after it is set up: it tells
// whether the connection reaches its backend directly ($1 is the backend
// key the server sent at startup), and only then sets the session's
// statement_timeout to $2 (unless NULL). Behind a pooler a session setting
// would stay on a server connection that other clients get next, and
// PgBouncer refuses it as a startup parameter; the command then relies on
// its own bound (answerConn, and the cache's OpTimeout) instead.
const sqlSession = `SELECT pg_backend_pid() = $1::int8,
       CASE WHEN pg_backend_pid() = $1::int8 AND $2::text IS NOT NULL
            THEN set_config('statement_timeout', $2::text, false) END`

// sessionSetup returns the connection hooks of the command's sessions:
// the answer bound (none when bound <= 0), the direct-or-pooled check and
// the statement timeout (nil: leave the server's), and, on a cancelled
// context, a cancel request to the server before the connection is cut.
func sessionSetup(cc *pgconn.Config, bound time.Duration, statementTimeout *string, st *connState) {
	prevNet := cc.AfterNetConnect
	cc.AfterNetConnect = func(ctx context.Context, cfg *pgconn.Config, conn net.Conn) (net.Conn, error) {
		if prevNet != nil {
			var err error
			if conn, err = prevNet(ctx, cfg, conn); err != nil {
				return nil, err
			}
		}
		if bound <= 0 {
			return conn, nil
		}
		return newAnswerConn(conn, bound), nil
	}
	prev := cc.AfterConnect
	cc.AfterConnect = func(ctx context.Context, pc *pgconn.PgConn) error {
		if ac := answerConnOf(pc.Conn()); ac != nil {
			cancel := func() {
				st.cancels.Add(1)
				go func() {
					defer st.cancels.Done()
					ctx, stop := context.WithTimeout(context.Background(), cancelAnswerWait)
					defer stop()
					_ = pc.CancelRequest(ctx)
				}()
			}
			ac.onStall.Store(&cancel)
			ac.arm()
		}
		var timeout []byte
		if statementTimeout != nil {
			timeout = []byte(*statementTimeout)
		}
		rr := pc.ExecParams(ctx, sqlSession, [][]byte{[]byte(strconv.FormatUint(uint64(pc.PID()), 10)), timeout}, nil, nil, nil).Read()
		if rr.Err != nil {
			return fmt.Errorf("set up the session: %w", rr.Err)
		}
		if len(rr.Rows) != 1 || string(rr.Rows[0][0]) != "t" {
			st.pooled.Store(true)
		}
		if prev != nil {
			return prev(ctx, pc)
		}
		return nil
	}
	// A cancelled statement (Ctrl-C, or the cache's bound) is cancelled on
	// the server too, and its answer awaited for a moment: a batch that
	// committed is then counted, one that did not is rolled back, rather
	// than cut off with its outcome unknown. pgx's default only cuts the
	// connection. (A server that does not answer is still given up on
	// within the answer bound.)
	cc.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: cancelAnswerWait}
	}
}

// cancelAnswerWait is how long a cancelled statement's answer is awaited.
const cancelAnswerWait = 2 * time.Second
