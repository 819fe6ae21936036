package dbcache

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/internal/pooler"
)

// How statements reach the database: every round trip bounded in time, and
// every write at READ COMMITTED whatever the session's default isolation.

func noop() {}

// bound returns ctx limited by Config.OpTimeout when ctx has no deadline of
// its own; a caller's deadline is always respected as it is.
// The bound is shared by operations that start close together (see
// deadline.go), so it costs no timer per operation.
func (c *Cache) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.s.deadlines == nil {
		return ctx, noop
	}
	if _, ok := ctx.Deadline(); ok {
		return ctx, noop
	}
	return c.s.deadlines.within(ctx)
}

// onPool reports whether the view runs on the pool rather than in a
// caller's transaction.
func (c *Cache) onPool() bool { return c.db == dbtx(c.s.pool) }

// Why writes may need a transaction of their own: each statement is correct
// under any interleaving at READ COMMITTED, PostgreSQL's default, where a
// statement that finds a row changed by a concurrent commit re-checks the
// newest version and goes on. At REPEATABLE READ or SERIALIZABLE, which a
// role or database can make the session default
// (default_transaction_isolation), the same statement fails with 40001
// instead: concurrent Incrs would fail rather than add up, and concurrent
// Adds would fail rather than return false. So when New finds such a
// default, each write on the pool runs as BEGIN ISOLATION LEVEL READ
// COMMITTED; statement; COMMIT, sent together in one round trip (a pgx
// batch). At the default READ COMMITTED writes are sent alone, and a 40001
// (a connection whose default differs from the one New saw) switches the
// cache to the wrapped form and retries once. Reads are never wrapped: a
// single SELECT gives the same answer at every level. Writes in a WithTx
// view run at the caller's transaction's level, by design.

// retryable reports whether a failed write on the pool may simply run again:
// its implicit transaction rolled back whole, and the error is one a second
// attempt resolves. 40001 switches the cache to READ COMMITTED transactions
// first. 40P01 (a deadlock) cannot arise between dbcache's own statements,
// which lock rows in key order; it can between a dbcache statement and an
// application's transaction on the same rows, and a retry is what the
// application would do.
func (c *Cache) retryable(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "40001": // serialization_failure
		c.s.wrapWrites.Store(true)
		return true
	case "40P01": // deadlock_detected
		return true
	}
	return false
}

// execWrite runs a write statement that returns no rows.
func (c *Cache) execWrite(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if !c.onPool() {
		return c.db.Exec(ctx, sql, args...)
	}
	tag, err := c.execOnPool(ctx, sql, args)
	if err != nil && ctx.Err() == nil && c.retryable(err) {
		tag, err = c.execOnPool(ctx, sql, args)
	}
	return tag, err
}

func (c *Cache) execOnPool(ctx context.Context, sql string, args []any) (pgconn.CommandTag, error) {
	if !c.s.wrapWrites.Load() {
		return execBounded(ctx, c.s.pool, sql, args...)
	}
	b := &pgx.Batch{}
	b.Queue(qBeginReadCommitted)
	b.Queue(sql, args...)
	b.Queue(qCommit)
	br := c.s.pool.SendBatch(ctx, b)
	_, err := br.Exec()
	var tag pgconn.CommandTag
	if err == nil {
		tag, err = br.Exec()
	}
	if err == nil {
		_, err = br.Exec()
	}
	// On an error the server skipped the rest and left the transaction
	// aborted; the pool discards a connection released in that state.
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return tag, err
}

// rowWrite runs a write statement that returns at most one row and scans it
// into dest; no row is pgx.ErrNoRows.
func (c *Cache) rowWrite(ctx context.Context, sql string, args []any, dest ...any) error {
	if !c.onPool() {
		return c.db.QueryRow(ctx, sql, args...).Scan(dest...)
	}
	err := c.rowOnPool(ctx, sql, args, dest)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) && ctx.Err() == nil && c.retryable(err) {
		err = c.rowOnPool(ctx, sql, args, dest)
	}
	return err
}

func (c *Cache) rowOnPool(ctx context.Context, sql string, args []any, dest []any) error {
	if !c.s.wrapWrites.Load() {
		return queryRowBounded(ctx, c.s.pool, sql, args...).Scan(dest...)
	}
	b := &pgx.Batch{}
	b.Queue(qBeginReadCommitted)
	b.Queue(sql, args...)
	b.Queue(qCommit)
	br := c.s.pool.SendBatch(ctx, b)
	_, err := br.Exec()
	var scanErr error
	if err == nil {
		scanErr = br.QueryRow().Scan(dest...)
		if scanErr != nil && !errors.Is(scanErr, pgx.ErrNoRows) {
			err = scanErr
		}
	}
	if err == nil {
		_, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return scanErr
}

// checkQueryMode refuses, at New, a query mode that cannot work through the
// pooler in front of the server: describe_exec behind a transaction pooler
// (see ErrQueryMode). Other modes cost nothing here.
func checkQueryMode(ctx context.Context, pool *pgxpool.Pool) error {
	if pool.Config().ConnConfig.DefaultQueryExecMode != pgx.QueryExecModeDescribeExec {
		return nil
	}
	behind, err := transactionPooled(ctx, pool)
	if err != nil {
		return fmt.Errorf("dbcache: check for a connection pooler: %w", wrapQueryMode(err))
	}
	if behind {
		return fmt.Errorf("%w (describe_exec describes each statement in one transaction and runs it in the next, "+
			"and the transaction pooler in front of this server may hand the two to different server connections)", ErrQueryMode)
	}
	return nil
}

// wrapQueryMode marks a lost or colliding prepared statement as ErrQueryMode.
func wrapQueryMode(err error) error {
	if pooler.LostPreparedStatement(err) {
		return fmt.Errorf("%w: %w", ErrQueryMode, err)
	}
	return err
}

// transactionPooled reports whether the pool's connections reach the server
// through a transaction pooler, as far as it can tell: true is certain, false
// may be a pooler it could not catch. A connection that reaches its backend
// directly runs its statements on the backend whose key the server sent at
// startup; behind a pooler the key is the pooler's. In transaction pooling
// (unlike session pooling) the server connection a statement ran on goes
// back to the pooler when it ends, so a statement on another client
// connection, or the next on the same one, can run on it: PgBouncer hands
// out the most recently used server connection first. Seeing one server
// backend answer two client connections, or one client connection get two
// backends, proves transaction pooling; it looks three times.
func transactionPooled(ctx context.Context, pool *pgxpool.Pool) (bool, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return false, err
	}
	defer conn.Release()
	backend := func(q interface {
		QueryRow(context.Context, string, ...any) pgx.Row
	}) (uint32, error) {
		var pid uint32
		err := q.QueryRow(ctx, "SELECT pg_backend_pid()", pgx.QueryExecModeSimpleProtocol).Scan(&pid)
		return pid, err
	}
	first, err := backend(conn)
	if err != nil || first == conn.Conn().PgConn().PID() {
		return false, err
	}
	other, err := pgx.ConnectConfig(ctx, pool.Config().ConnConfig)
	if err != nil {
		return false, err
	}
	defer other.Close(context.WithoutCancel(ctx))
	for range 3 {
		mine, err := backend(conn)
		if err != nil {
			return false, err
		}
		theirs, err := backend(other)
		if err != nil {
			return false, err
		}
		if mine != first || theirs == mine {
			return true, nil
		}
	}
	return false, nil
}
