package dbcache

import (
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// IsTransient reports whether err is a failure that goes away on its own:
// the server cannot be reached or went away (connection refused or reset,
// a closed connection, 57P01 admin shutdown, 57P02 crash shutdown, 57P03
// starting up, any 08 connection exception), the server is at
// max_connections (53300), an operation or pool wait ran out of time
// (context.DeadlineExceeded, a statement timeout 57014), or a concurrency
// conflict (deadlock 40P01, serialization failure 40001). Everything else is
// not: a configuration, permission or SQL error (a missing table, a wrong
// password, a bad key), and a context the caller cancelled. It is the rule
// Config.FailOpen applies, exported so callers can apply it themselves.
func IsTransient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if errors.Is(err, ErrNotMigrated) || errors.Is(err, ErrInvalidKey) || errors.Is(err, ErrClosed) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03", // shutting down, crashed, starting
			pgErr.Code == "57014",                        // query_canceled: statement_timeout
			pgErr.Code == "40001", pgErr.Code == "40P01", // serialization failure, deadlock
			pgErr.Code == "53300",                          // too_many_connections
			len(pgErr.Code) == 5 && pgErr.Code[:2] == "08": // connection exception
			return true
		}
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) {
		return true
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return dnsErr.IsTimeout || dnsErr.IsTemporary
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, pgconn.ErrConnClosed) {
		return true
	}
	var opErr *net.OpError
	return errors.As(err, &opErr)
}

// failOpenLogEvery is the most often fail-open logs: one line per interval
// with the count of failures it stood for, so an outage does not flood the
// log with a line per request.
const failOpenLogEvery = 10 * time.Second

// failOpen reports whether err is to be swallowed under Config.FailOpen: a
// transient failure. It counts it and logs at a bounded rate.
func (c *Cache) failOpen(ctx context.Context, op string, err error) bool {
	if !c.s.cfg.FailOpen || !IsTransient(err) {
		return false
	}
	c.s.stats.failOpen.Add(1)
	failedOpen(ctx, err)
	pending := c.s.failOpenUnlogged.Add(1)
	now := time.Now().UnixNano()
	last := c.s.failOpenLogged.Load()
	if now-last >= int64(failOpenLogEvery) && c.s.failOpenLogged.CompareAndSwap(last, now) {
		c.s.failOpenUnlogged.Add(-pending)
		c.s.cfg.Logger.Warn("dbcache: database unavailable; fail-open: reads miss and writes are skipped",
			"op", op, "failures", pending, "error", err)
	}
	return true
}

// failOpenState is the rate limiter's state.
type failOpenState struct {
	failOpenLogged   atomic.Int64 // UnixNano of the last log line
	failOpenUnlogged atomic.Int64 // failures since then
}
