package migrations

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Statements splits a migration file into its statements, in order, each
// without its terminating semicolon and trimmed; a part that holds only
// comments and white space is left out. A semicolon ends a statement only
// outside quotes and comments: '…' strings (with ” inside, and E'…' with
// backslash escapes), "…" identifiers, $tag$…$tag$ bodies (a DO block's
// own semicolons stay in it), -- line comments and /* … */ comments, which
// nest as PostgreSQL's do.
//
// Both migrators (this package's and the public one) send each statement
// alone, through the extended protocol, which accepts exactly one command:
// a Citus coordinator propagates DDL on a distributed table (CREATE INDEX,
// DROP INDEX) only from a query string of one statement, and refuses a
// multi-statement file sent as one query.
func Statements(sql string) []string {
	var (
		out     []string
		start   int  // where the current statement begins
		content bool // whether it has anything but comments and space
	)
	flush := func(end int) {
		if content {
			out = append(out, strings.TrimSpace(sql[start:end]))
		}
		start, content = end+1, false
	}
	for i := 0; i < len(sql); {
		c := sql[i]
		switch {
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-':
			if j := strings.IndexByte(sql[i:], '\n'); j >= 0 {
				i += j + 1
			} else {
				i = len(sql)
			}
			continue
		case c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			depth := 1
			i += 2
			for i < len(sql) && depth > 0 {
				switch {
				case strings.HasPrefix(sql[i:], "/*"):
					depth++
					i += 2
				case strings.HasPrefix(sql[i:], "*/"):
					depth--
					i += 2
				default:
					i++
				}
			}
			continue
		case c == ';':
			flush(i)
			i++
			continue
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f':
			i++
			continue
		}
		content = true
		switch {
		case c == '\'':
			escapes := i > 0 && (sql[i-1] == 'E' || sql[i-1] == 'e') && (i < 2 || !isIdentByte(sql[i-2]))
			i = skipQuoted(sql, i, '\'', escapes)
		case c == '"':
			i = skipQuoted(sql, i, '"', false)
		case c == '$' && (i == 0 || !isIdentByte(sql[i-1])):
			if tag, ok := dollarTag(sql[i:]); ok {
				if j := strings.Index(sql[i+len(tag):], tag); j >= 0 {
					i += len(tag) + j + len(tag)
				} else {
					i = len(sql)
				}
			} else {
				i++
			}
		default:
			i++
		}
	}
	flush(len(sql))
	return out
}

// skipQuoted returns the index just past the quoted text that starts at
// sql[i] (the quote q), where a doubled q is one q and, with escapes, a
// backslash escapes the next byte.
func skipQuoted(sql string, i int, q byte, escapes bool) int {
	for i++; i < len(sql); i++ {
		switch {
		case escapes && sql[i] == '\\':
			i++
		case sql[i] == q:
			if i+1 < len(sql) && sql[i+1] == q {
				i++
				continue
			}
			return i + 1
		}
	}
	return len(sql)
}

// dollarTag returns the dollar-quote opener at the start of s ($$ or
// $tag$), if s starts with one.
func dollarTag(s string) (string, bool) {
	for j := 1; j < len(s); j++ {
		switch c := s[j]; {
		case c == '$':
			return s[:j+1], true
		case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80 || (j > 1 && c >= '0' && c <= '9'):
		default:
			return "", false
		}
	}
	return "", false
}

func isIdentByte(c byte) bool {
	return c == '_' || c == '$' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c >= 0x80
}

// Apply runs a migration file's statements in tx, each alone through the
// extended protocol (one Parse, Bind and Execute of the unnamed statement,
// which the server refuses to hold more than one command), in order,
// stopping at the first that fails. The error names the statement by its
// number in the file (from 1) and wraps the server's.
func Apply(ctx context.Context, tx pgx.Tx, body string) error {
	stmts := Statements(body)
	for i, st := range stmts {
		if _, err := tx.Conn().PgConn().ExecParams(ctx, st, nil, nil, nil, nil).Close(); err != nil {
			return &StatementError{Index: i + 1, Of: len(stmts), SQL: st, Err: err}
		}
	}
	return nil
}

// StatementError is a migration statement that failed.
type StatementError struct {
	// Index is the statement's number in its file, from 1, of Of.
	Index, Of int
	// SQL is the statement.
	SQL string
	Err error
}

func (e *StatementError) Error() string {
	return fmt.Sprintf("statement %d of %d: %v", e.Index, e.Of, e.Err)
}

func (e *StatementError) Unwrap() error { return e.Err }
