package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/pooler"
	"github.com/dbcache/dbcache/migrations"
)

// Error codes: the "error" field of the JSON object every error becomes on
// stderr under --json. They are stable: scripts may branch on them. The
// message beside them is for people and may change.
const (
	// CodeUsage: the command line is wrong (exit 2).
	CodeUsage = "usage"
	// CodeInvalidKey: a key PostgreSQL cannot store (exit 2).
	CodeInvalidKey = "invalid_key"
	// CodeConfirmationRequired: clear, delete-prefix or migrate down without
	// --yes, and no terminal to ask on (exit 2).
	CodeConfirmationRequired = "confirmation_required"
	// CodeNotConfirmed: the answer to a confirmation was not yes (exit 1).
	CodeNotConfirmed = "not_confirmed"
	// CodeInvalidDatabaseURL: --database-url or DATABASE_URL cannot be
	// parsed (exit 1).
	CodeInvalidDatabaseURL = "invalid_database_url"
	// CodeNotConfigured: no connection settings were given and libpq's
	// defaults did not reach a server (exit 1).
	CodeNotConfigured = "not_configured"
	// CodeConnect: the server could not be reached or refused the
	// connection: refused, unknown host, timeout, authentication (exit 1).
	CodeConnect = "connect"
	// CodeStatementTimeout: a statement ran past --statement-timeout (exit 1).
	CodeStatementTimeout = "statement_timeout"
	// CodeTimeout: the server stopped answering: no reply within the
	// statement timeout plus OpTimeoutGrace (exit 1).
	CodeTimeout = "timeout"
	// CodePassTimeout: a culling pass ran past --pass-timeout (exit 1).
	CodePassTimeout = "pass_timeout"
	// CodeNotMigrated: there is no cache table in the schema, or the
	// schema is behind the command (exit 1).
	CodeNotMigrated = "not_migrated"
	// CodeNoSchema: no schema on the search_path exists (exit 1).
	CodeNoSchema = "no_schema"
	// CodeDirty: a failed migration left the schema dirty (exit 1).
	CodeDirty = "dirty"
	// CodeLockTimeout: another migrator held the migration lock (exit 1).
	CodeLockTimeout = "lock_timeout"
	// CodeNotInteger: incr or decr of a value that is not an integer (exit 1).
	CodeNotInteger = "not_integer"
	// CodeOverflow: incr or decr would overflow a 64-bit integer (exit 1).
	CodeOverflow = "overflow"
	// CodeInterrupted: SIGINT or SIGTERM stopped the command (exit 1).
	CodeInterrupted = "interrupted"
	// CodeDatabase: PostgreSQL returned an error; "sqlstate" has its code
	// (exit 1).
	CodeDatabase = "database"
	// CodeFailure: any other failure (exit 1).
	CodeFailure = "failure"
)

// usageError is a mistake in the command line: exit code ExitUsage. code,
// when set, is a more precise error code than CodeUsage.
type usageError struct {
	err  error
	code string
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

// codedError gives a failure an error code of its own.
type codedError struct {
	code string
	err  error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

// causeError is a message of the command's own wording that still matches
// its cause with errors.Is, without repeating the cause's message.
type causeError struct {
	msg   string
	cause error
}

func (e *causeError) Error() string { return e.msg }
func (e *causeError) Unwrap() error { return e.cause }

func withCause(msg string, cause error) error { return &causeError{msg: msg, cause: cause} }

// exitError ends a command with a given code. A nil err means the command
// has already said what there was to say (a miss prints its own line).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit code %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// errMissExit ends a command with ExitMiss, its output already written.
var errMissExit = &exitError{code: ExitMiss}

// errPendingExit ends a command with ExitPending, its output already written.
var errPendingExit = &exitError{code: ExitPending}

// errorReport is what report says about an error; its JSON form is what
// --json prints on stderr.
type errorReport struct {
	Code     string `json:"error"`
	Message  string `json:"message"`
	ExitCode int    `json:"exit_code"`
	SQLState string `json:"sqlstate,omitempty"`
	Hint     string `json:"hint,omitempty"`
}

// report prints err, if any, and returns the exit code for it: one line
// "dbcache: …" (plus a hint line for a usage error), or under --json one
// JSON object.
func (a *app) report(err error) int {
	if err == nil {
		return ExitOK
	}
	var r errorReport
	var ee *exitError
	var ue *usageError
	switch {
	case errors.As(err, &ee):
		if ee.err == nil {
			return ee.code
		}
		r = a.describe(ee.err)
		r.ExitCode = ee.code
	case !a.started || errors.As(err, &ue):
		r = a.describe(err)
		r.Code, r.ExitCode = CodeUsage, ExitUsage
		if ue != nil && ue.code != "" {
			r.Code = ue.code
		}
		hint := "dbcache --help"
		if a.cmdPath != "" {
			hint = a.cmdPath + " --help"
		}
		r.Hint = fmt.Sprintf("Run '%s' for usage.", hint)
	default:
		r = a.describe(err)
		r.ExitCode = ExitFailure
	}
	if a.jsonMode() {
		b, _ := json.Marshal(r)
		fmt.Fprintf(a.errw, "%s\n", b)
	} else {
		fmt.Fprintf(a.errw, "dbcache: %s\n", r.Message)
		if r.Hint != "" {
			fmt.Fprintln(a.errw, r.Hint)
		}
	}
	return r.ExitCode
}

// jsonMode reports whether errors are printed as JSON: --json was given,
// also when the command line failed to parse before reaching it.
func (a *app) jsonMode() bool {
	if a.g.json {
		return true
	}
	for _, arg := range a.cfg.Args {
		if arg == "--" {
			return false
		}
		if v, ok := strings.CutPrefix(arg, "--json="); ok {
			b, err := strconv.ParseBool(v)
			return err == nil && b
		}
		if arg == "--json" {
			return true
		}
	}
	return false
}

// describe turns err into one line of message and an error code.
func (a *app) describe(err error) errorReport {
	r := errorReport{Code: CodeFailure, Message: errorLine(err, a.g.connectTimeout)}
	var ce *codedError
	var pe *pgconn.ParseConfigError
	var conn *pgconn.ConnectError
	var pgErr *pgconn.PgError
	var na *noAnswerError
	var behind *schemaBehindError
	switch {
	case errors.As(err, &ce):
		r.Code = ce.code
	case a.ctx != nil && a.ctx.Err() != nil:
		// A failure once a signal arrived is the signal's doing. (A
		// cancellation without one is not an interruption: the culler,
		// for one, gives up a statement by cancelling it.)
		r.Code = CodeInterrupted
	case errors.As(err, &na):
		r.Code = CodeTimeout
		if strings.Contains(r.Message, na.Error()) {
			r.Message = strings.Replace(r.Message, na.Error(), na.Error()+": "+a.answerBound(), 1)
		} else {
			r.Message += " (" + na.Error() + ": " + a.answerBound() + ")"
		}
	case errors.As(err, &behind):
		r.Code = CodeNotMigrated
		r.Message = behind.msg
	case errors.Is(err, dbcache.ErrSchemaBehind):
		r.Code = CodeNotMigrated
		r.Message += fmt.Sprintf(" (run `dbcache migrate up%s`)", a.schemaFlag())
	case errors.Is(err, dbcache.ErrNotMigrated):
		// The library's message speaks to Go programmers; say it in the
		// command's terms.
		where := "on the search_path"
		if a.g.schema != "" {
			where = "in schema " + a.g.schema
		}
		r.Code = CodeNotMigrated
		r.Message = fmt.Sprintf("no cache table (%s) %s: run `dbcache migrate up%s` first", dbcache.TableName, where, a.schemaFlag())
	case errors.Is(err, migrations.ErrNoSchema):
		r.Code = CodeNoSchema
		r.Message = strings.Replace(r.Message, "set Config.Schema (Up creates it)", "pass --schema NAME (migrate up creates it)", 1)
	case errors.Is(err, migrations.ErrDirty):
		r.Code = CodeDirty
	case errors.Is(err, migrations.ErrLockTimeout):
		r.Code = CodeLockTimeout
	case errors.Is(err, dbcache.ErrNotInteger):
		r.Code = CodeNotInteger
	case errors.Is(err, dbcache.ErrOverflow):
		r.Code = CodeOverflow
	case errors.Is(err, dbcache.ErrInvalidKey):
		r.Code = CodeInvalidKey
	case errors.As(err, &pe):
		r.Code = CodeInvalidDatabaseURL
	case errors.As(err, &conn):
		r.Code = CodeConnect
		if name, ok := pooler.RefusedStartupParam(err); ok {
			r.Message += refusedParamHint(name)
		}
		if a.connected && (errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err)) {
			// Connected once, the server then stopped answering a new
			// connection: the server is gone, not misconfigured.
			r.Code = CodeTimeout
		}
		if !a.connectionConfigured() {
			r.Code = CodeNotConfigured
			r.Message = "no database configured: pass --database-url or set " + EnvDatabaseURL +
				" (or the PG* variables); libpq's defaults did not work: " + r.Message
		}
	case errors.Is(err, context.DeadlineExceeded) && a.g.opTimeout > 0:
		r.Code = CodeTimeout
		r.Message += fmt.Sprintf(" (no answer from the server within %s: %s)", a.g.opTimeout, a.answerBound())
	case errors.As(err, &pgErr) && pgErr.Code == "57014" && strings.Contains(pgErr.Message, "user request") && a.g.opTimeout > 0:
		// No signal came (that case is above): the command cancelled the
		// statement itself, at its answer bound (behind a pooler, where the
		// server's statement_timeout is not set, a slow statement meets it).
		r.Code, r.SQLState = CodeTimeout, pgErr.Code
		r.Message += fmt.Sprintf(" (the command cancelled it after %s: %s)", a.g.opTimeout, a.answerBound())
	case errors.As(err, &pgErr):
		r.Code, r.SQLState = CodeDatabase, pgErr.Code
		if pgErr.Code == "57014" && strings.Contains(pgErr.Message, "statement timeout") {
			r.Code = CodeStatementTimeout
			r.Message += fmt.Sprintf(" (the statement ran longer than the statement timeout of %s: raise --statement-timeout, or 0 disables it)",
				a.statementTimeoutInForce())
		}
	}
	r.Message = namedLine(err, r.Message) // which server, with several
	return r
}

// errorLine renders err as one line without the "dbcache: " prefix: a
// connect error as pgx words it, once (plus a hint on a timeout), a
// cancellation as "interrupted", anything else as its message with newlines
// folded.
func errorLine(err error, connectTimeout time.Duration) string {
	msg := err.Error()
	var ce *pgconn.ConnectError
	var pe *pgconn.ParseConfigError
	switch {
	case errors.As(err, &pe):
		msg = "invalid database URL: " + pe.Error()
	case errors.As(err, &ce):
		// The connect error names the server and the cause; the layers
		// above it ("check for the cache table: …") add nothing.
		timedOut := errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err)
		msg = connectMessage(ce, timedOut)
		if timedOut {
			msg += fmt.Sprintf(" (no answer within the connect timeout of %s; see --connect-timeout)", connectTimeout)
		}
	case errors.Is(err, context.Canceled):
		msg = "interrupted"
	}
	// The library packages prefix their messages with their names, which
	// say nothing to someone at the command line.
	for {
		trimmed := strings.TrimPrefix(strings.TrimPrefix(msg, "dbcache: "), "migrations: ")
		if trimmed == msg {
			break
		}
		msg = trimmed
	}
	return namedLine(err, strings.Join(strings.Fields(strings.ReplaceAll(msg, "\n", " ")), " "))
}

// connectMessage is pgx's connect error with each cause said once. pgx joins
// the error of every attempt, and by default (sslmode=prefer) it tries each
// address twice, with and without TLS, so a refused connection or an
// unknown host would otherwise be reported twice in a row. After a timeout
// only the first attempt counts: the deadline it used up is what failed the
// others.
func connectMessage(ce *pgconn.ConnectError, timedOut bool) string {
	prefix := fmt.Sprintf("failed to connect to `user=%s database=%s`", ce.Config.User, ce.Config.Database)
	details, ok := strings.CutPrefix(ce.Error(), prefix+":")
	if !ok {
		return ce.Error()
	}
	var causes []string
next:
	for _, line := range strings.Split(details, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		for _, c := range causes {
			// "hostname resolving error: lookup x: no such host" already
			// says "lookup x: no such host".
			if strings.HasSuffix(c, line) {
				continue next
			}
		}
		causes = append(causes, line)
		if timedOut {
			break
		}
	}
	return prefix + ": " + strings.Join(causes, "; ")
}

// statementTimeoutInForce is the statement timeout the sessions carry, for
// the hint on a statement timeout.
func (a *app) statementTimeoutInForce() string {
	if a.g.statementTimeoutInForce != "" {
		return a.g.statementTimeoutInForce
	}
	return a.g.statementTimeout.String()
}

// answerBound says what the answer bound is and what to do about it.
func (a *app) answerBound() string {
	why := "the server or the network stopped answering, or raise --statement-timeout"
	if a.conns != nil && a.conns.pooled.Load() {
		// Behind a pooler the command cannot set the server's
		// statement_timeout, so a slow statement meets this bound rather
		// than the server's own report.
		why = "the server or the network stopped answering, or a statement ran that long (behind a connection pooler the server's " +
			"statement_timeout is not set, and this is the bound): raise --statement-timeout"
	}
	return fmt.Sprintf("the statement timeout, %s, plus %s; %s", a.statementTimeoutInForce(), OpTimeoutGrace, why)
}

// refusedParamHint says what to do about a startup parameter a pooler
// refused: " (…)".
func refusedParamHint(name string) string {
	hint := " (a connection pooler such as PgBouncer in transaction mode accepts no such setting at connect time: remove " + name + " from the connection string"
	switch strings.ToLower(name) {
	case "search_path", "options":
		hint += "; pass --schema NAME for the cache's schema, which the command names in every statement"
	case "statement_timeout":
		hint += "; --statement-timeout bounds the command's statements"
	}
	return hint + ")"
}
