package dbcache

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dbcache/dbcache/internal/notmigrated"
	"github.com/dbcache/dbcache/internal/pooler"
)

// The errors callers branch on. Every error an operation returns either is
// one of these or wraps the underlying cause with %w, so errors.Is and
// errors.As (for example to a *pgconn.PgError) both work.
var (
	// ErrMiss is returned by Get, Incr, Decr, IncrVersion and DecrVersion
	// when the key has no live entry: it was never set, was deleted, or has
	// expired. It is Django's "default" / ValueError("Key not found") case.
	ErrMiss = errors.New("dbcache: cache miss")

	// ErrNotInteger is returned by Incr and Decr when the stored value is not
	// the decimal ASCII form of an int64 (as Redis INCR reads it: an optional
	// "-", no leading zeros, no spaces, no "+"). The value is left unchanged.
	ErrNotInteger = errors.New("dbcache: value is not an integer")

	// ErrOverflow is returned by Incr, Decr, IncrVersion and DecrVersion when
	// the result would not fit in an int64 (or an int for versions). The value
	// is left unchanged.
	ErrOverflow = errors.New("dbcache: integer overflow")

	// ErrInvalidKey is returned for a key PostgreSQL cannot store (a NUL byte,
	// invalid UTF-8, longer than MaxKeyBytes), or for a key memcached could
	// not store when Config.KeyCheck is KeyCheckError. Nothing is written.
	ErrInvalidKey = errors.New("dbcache: invalid key")

	// ErrClosed is returned by every operation on a closed Cache.
	ErrClosed = errors.New("dbcache: cache is closed")

	// ErrNotMigrated is returned when the schema is not migrated as far as
	// this version needs: the cache table does not exist (the error is then
	// ErrNotMigrated itself, wrapped), or it predates a migration this
	// version needs (the error then matches ErrSchemaBehind too). Run the
	// migrations (`dbcache migrate up`, or migrations.New(pool,
	// nil).Up(ctx) from github.com/dbcache/dbcache/migrations). The culling
	// and migrations packages' errors for the same cases
	// (culling.ErrTableNotFound, culling.ErrMigrationNeeded,
	// migrations.ErrNoTable) match it too: one errors.Is covers them all.
	ErrNotMigrated = notmigrated.Err

	// ErrSchemaBehind is returned when the cache table exists but predates
	// a migration this version needs (SchemaVersion: the token column of
	// migration 9, which every write sets), for example after a `dbcache
	// migrate down`: run the migrations. It matches ErrNotMigrated too.
	ErrSchemaBehind = notmigrated.Behind

	// ErrQueryMode is returned when the pool's query mode
	// (ConnConfig.DefaultQueryExecMode) cannot work through the connection
	// pooler in front of the server. Behind a transaction pooler
	// (PgBouncer's pool_mode = transaction), describe_exec describes a
	// statement in one transaction and runs it in the next, which may reach
	// another server connection: it fails, or runs with another statement's
	// description; New refuses it when it finds such a pooler. pgx's default,
	// cache_statement, prepares named statements, which a pooler that does
	// not keep them (PgBouncer before 1.21, or without
	// max_prepared_statements) loses or finds already there on the next
	// server connection: those errors (SQLSTATE 26000, 42P05) come back as
	// ErrQueryMode, wrapping the server's. Either way: set
	// default_query_exec_mode=cache_describe in the connection string (or
	// exec, or simple_protocol), or ConnConfig.DefaultQueryExecMode.
	ErrQueryMode = errors.New("dbcache: the pool's query mode does not work through the connection pooler in front of the server: " +
		"set default_query_exec_mode=cache_describe in the connection string (or exec, or simple_protocol)")
)

// SchemaVersion is the lowest migration version (package migrations) whose
// schema this package's statements work with.
const SchemaVersion = 9

// InvalidKeyError is the error for a key the cache refuses. It matches
// ErrInvalidKey (errors.Is), and errors.As gives the key the caller passed
// as well as the stored key made from it, so a tool can show its user the
// key they typed.
type InvalidKeyError struct {
	// Key is the caller's key; empty when only a made key was checked
	// (ValidateKey).
	Key string
	// MadeKey is the stored key made from it (prefix, version and key).
	MadeKey string
	// Reason says what is wrong with it.
	Reason string
}

func (e *InvalidKeyError) Error() string {
	key := e.Key
	if key == "" {
		key = e.MadeKey
	}
	const show = 80
	if len(key) > show {
		key = key[:show] + "…"
	}
	return fmt.Sprintf("%s %q: %s", ErrInvalidKey.Error(), key, e.Reason)
}

// Is reports whether target is ErrInvalidKey.
func (e *InvalidKeyError) Is(target error) bool { return target == ErrInvalidKey }

func invalidKey(madeKey, why string) error {
	return &InvalidKeyError{MadeKey: madeKey, Reason: why}
}

// wrapErr gives a database error the operation's name and maps the cases that
// have a sentinel of their own.
func (c *Cache) wrapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if c.s.closed.Load() {
		return ErrClosed
	}
	if pooler.LostPreparedStatement(err) {
		return fmt.Errorf("dbcache: %s: %w: %w", op, ErrQueryMode, err)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "42P01": // undefined_table
			return fmt.Errorf("dbcache: %s: %w: %w", op, ErrNotMigrated, err)
		case "42703": // undefined_column: the schema was migrated down under a running cache
			return fmt.Errorf("dbcache: %s: %w: %w", op, ErrSchemaBehind, err)
		case "22021": // invalid byte sequence
			// Validation catches these first; this is the backstop.
			return fmt.Errorf("dbcache: %s: %w: %w", op, ErrInvalidKey, err)
		case "54000": // program_limit_exceeded: about a key only for an index row
			if strings.Contains(pgErr.Message, "index row") {
				return fmt.Errorf("dbcache: %s: %w: %w", op, ErrInvalidKey, err)
			}
		}
	}
	return fmt.Errorf("dbcache: %s: %w", op, err)
}

// ErrorCoder is implemented by errors that name their own ErrorCode: the
// layers above this package (typed's decode errors, compression,
// encryption) give theirs that way, without this package knowing them.
type ErrorCoder interface {
	// ErrorCode returns a stable, lower-case code (letters, digits and _).
	ErrorCode() string
}

// ErrorCode classifies err by a stable, low-cardinality code, for metrics,
// spans and logs. They record the code rather than err's text, which can
// hold keys (an invalid key's error names it, ErrNotInteger's names its
// key) and what a loader or the database put in their errors. The codes,
// in the order they are tried:
//
//	""                  err is nil
//	canceled            the caller's context was cancelled
//	invalid_key         ErrInvalidKey
//	not_integer         ErrNotInteger
//	overflow            ErrOverflow
//	closed              ErrClosed
//	not_migrated        ErrNotMigrated
//	prefix_unsupported  ErrPrefixUnsupported
//	loader_panic        a *LoaderPanicError
//	hook_panic          a *HookPanicError
//	loader              a *LoaderError: the loader's own error
//	(its own code)      an error in err's chain that is an ErrorCoder
//	timeout             an operation or pool wait ran out of time
//	transient           any other IsTransient error (connection lost, server
//	                    shutting down, deadlock, too many connections)
//	database            any other PostgreSQL error (permission, SQL)
//	other               anything else
func ErrorCode(err error) string {
	var (
		panicked *LoaderPanicError
		hook     *HookPanicError
		loader   *LoaderError
		coder    ErrorCoder
		pgErr    *pgconn.PgError
	)
	switch {
	case err == nil:
		return ""
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, ErrInvalidKey):
		return "invalid_key"
	case errors.Is(err, ErrNotInteger):
		return "not_integer"
	case errors.Is(err, ErrOverflow):
		return "overflow"
	case errors.Is(err, ErrClosed):
		return "closed"
	case errors.Is(err, ErrNotMigrated):
		return "not_migrated"
	case errors.Is(err, ErrPrefixUnsupported):
		return "prefix_unsupported"
	case errors.As(err, &panicked):
		return "loader_panic"
	case errors.As(err, &hook):
		return "hook_panic"
	case errors.As(err, &loader):
		return "loader"
	case errors.As(err, &coder):
		return coder.ErrorCode()
	case errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err):
		return "timeout"
	case IsTransient(err):
		return "transient"
	case errors.As(err, &pgErr):
		return "database"
	}
	return "other"
}
