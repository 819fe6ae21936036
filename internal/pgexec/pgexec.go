// Package pgexec runs the statements of the packages that keep tables of
// their own beside the cache (ratelimit, certcache) on a pgx pool: every
// round trip bounded in time, every write at READ COMMITTED whatever the
// session's default isolation, in one round trip. It is dbcache's exec.go
// for packages that must not import the core's internals.
//
// Why writes may need a transaction of their own: each statement of those
// packages is correct under any interleaving at READ COMMITTED,
// PostgreSQL's default, where an INSERT … ON CONFLICT DO UPDATE that finds
// its row changed by a concurrent commit locks the newest version and goes
// on. At REPEATABLE READ or SERIALIZABLE, which a role or a database can
// make the session default (default_transaction_isolation), the same
// statement fails with 40001 instead. So when the default is not READ
// COMMITTED, each write runs as BEGIN ISOLATION LEVEL READ COMMITTED;
// statement; COMMIT, sent together as one pgx batch (one round trip, no
// session state: it works behind PgBouncer in transaction pooling). At the
// default, writes are sent alone, and a 40001 (a connection whose default
// differs from the one New saw) switches the Runner to the wrapped form and
// runs the statement once more: its implicit transaction rolled back whole,
// so running it again changes nothing twice.
package pgexec

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

const (
	qBeginReadCommitted = `BEGIN ISOLATION LEVEL READ COMMITTED`
	qCommit             = `COMMIT`
)

// Runner runs statements on one pool. It is safe for concurrent use.
type Runner struct {
	pool    *pgxpool.Pool
	timeout time.Duration
	wrap    atomic.Bool
}

// New returns a Runner on pool. timeout bounds every round trip whose
// context has no deadline of its own (a caller's deadline is used as it
// is); 0 or less means no bound beyond the caller's context. wrapped says
// whether writes start wrapped in READ COMMITTED transactions: pass
// NeedsWrap of the session's default_transaction_isolation.
func New(pool *pgxpool.Pool, timeout time.Duration, wrapped bool) *Runner {
	r := &Runner{pool: pool, timeout: timeout}
	r.wrap.Store(wrapped)
	return r
}

// NeedsWrap reports whether writes need a READ COMMITTED transaction of
// their own on sessions whose default_transaction_isolation is iso.
func NeedsWrap(iso string) bool { return iso != "read committed" }

// Wrapped reports whether writes run wrapped in READ COMMITTED
// transactions now.
func (r *Runner) Wrapped() bool { return r.wrap.Load() }

// Pool is the pool the Runner runs on.
func (r *Runner) Pool() *pgxpool.Pool { return r.pool }

func noop() {}

// Bound returns ctx limited by the Runner's timeout when ctx has no
// deadline of its own.
func (r *Runner) Bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if r.timeout <= 0 {
		return ctx, noop
	}
	if _, ok := ctx.Deadline(); ok {
		return ctx, noop
	}
	return context.WithTimeout(ctx, r.timeout)
}

// retryable reports whether a failed write may simply run again: 40001
// (serialization_failure) rolled its implicit transaction back whole; the
// Runner switches to wrapped writes first.
func (r *Runner) retryable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "40001" {
		r.wrap.Store(true)
		return true
	}
	return false
}

// Read runs a read statement that returns at most one row and scans it
// into dest; no row is pgx.ErrNoRows. Reads are never wrapped: one SELECT
// gives the same answer at every isolation level.
func (r *Runner) Read(ctx context.Context, sql string, args []any, dest ...any) error {
	ctx, cancel := r.Bound(ctx)
	defer cancel()
	return r.pool.QueryRow(ctx, sql, args...).Scan(dest...)
}

// WriteRow runs a write statement that returns at most one row and scans it
// into dest; no row is pgx.ErrNoRows.
func (r *Runner) WriteRow(ctx context.Context, sql string, args []any, dest ...any) error {
	ctx, cancel := r.Bound(ctx)
	defer cancel()
	err := r.rowOnce(ctx, sql, args, dest)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) && ctx.Err() == nil && r.retryable(err) {
		err = r.rowOnce(ctx, sql, args, dest)
	}
	return err
}

// Exec runs a write statement that returns no rows.
func (r *Runner) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	ctx, cancel := r.Bound(ctx)
	defer cancel()
	tag, err := r.execOnce(ctx, sql, args)
	if err != nil && ctx.Err() == nil && r.retryable(err) {
		tag, err = r.execOnce(ctx, sql, args)
	}
	return tag, err
}

func (r *Runner) rowOnce(ctx context.Context, sql string, args []any, dest []any) error {
	if !r.wrap.Load() {
		return r.pool.QueryRow(ctx, sql, args...).Scan(dest...)
	}
	b := &pgx.Batch{}
	b.Queue(qBeginReadCommitted)
	b.Queue(sql, args...)
	b.Queue(qCommit)
	br := r.pool.SendBatch(ctx, b)
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
	// On an error the server skipped the rest and left the transaction
	// aborted; the pool discards a connection released in that state.
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return scanErr
}

func (r *Runner) execOnce(ctx context.Context, sql string, args []any) (pgconn.CommandTag, error) {
	if !r.wrap.Load() {
		return r.pool.Exec(ctx, sql, args...)
	}
	b := &pgx.Batch{}
	b.Queue(qBeginReadCommitted)
	b.Queue(sql, args...)
	b.Queue(qCommit)
	br := r.pool.SendBatch(ctx, b)
	_, err := br.Exec()
	var tag pgconn.CommandTag
	if err == nil {
		tag, err = br.Exec()
	}
	if err == nil {
		_, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return tag, err
}

// schemaRE is what a schema name may be: what PostgreSQL accepts unquoted
// (and $), at most 63 bytes. Anything else is refused rather than quoted,
// as dbcache and culling do.
var schemaRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]{0,62}$`)

// ValidSchema reports whether schema is "" (the search_path) or a name
// Qualify accepts.
func ValidSchema(schema string) bool { return schema == "" || schemaRE.MatchString(schema) }

// Qualify returns table's name for SQL, quoted, in schema when it is set
// (else resolved through each connection's search_path).
func Qualify(schema, table string) string {
	if schema == "" {
		return pgx.Identifier{table}.Sanitize()
	}
	return pgx.Identifier{schema, table}.Sanitize()
}

// TextProblem says why a PostgreSQL text value cannot hold s: "" when it
// can, else "a NUL byte" or "invalid UTF-8". The text never quotes s.
func TextProblem(s string) string {
	switch {
	case strings.IndexByte(s, 0) >= 0:
		return "a NUL byte"
	case !utf8.ValidString(s):
		return "invalid UTF-8"
	}
	return ""
}

// TableExists reports whether the table exists (to_regclass of the
// qualified name) and the session's default isolation, in one round trip
// bounded by timeout.
func TableExists(ctx context.Context, pool *pgxpool.Pool, qualified string, timeout time.Duration) (exists bool, isolation string, err error) {
	if _, ok := ctx.Deadline(); !ok && timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	err = pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL, current_setting('default_transaction_isolation')`, qualified).Scan(&exists, &isolation)
	return exists, isolation, err
}

// WithPool returns a Runner on pool with r's timeout and r's current
// choice of wrapping: for tests that hand a Runner connections whose
// default isolation differs from the one New saw.
func (r *Runner) WithPool(pool *pgxpool.Pool) *Runner {
	return New(pool, r.timeout, r.wrap.Load())
}
