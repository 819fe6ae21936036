// Package pooler recognises what a connection pooler in front of
// PostgreSQL does to a client, for the packages that must say so: the
// startup parameters PgBouncer refuses, and the prepared-statement errors a
// transaction pooler causes.
package pooler

import (
	"errors"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// RefusedStartupParam reports the startup parameter a server or pooler
// refused when err is that refusal. PgBouncer accepts only the parameters it
// tracks (client_encoding, DateStyle, TimeZone, standard_conforming_strings,
// application_name, and those in its ignore_startup_parameters) and ends
// the connection with 08P01 "unsupported startup parameter: NAME" for any
// other: search_path, statement_timeout, lock_timeout, options, ….
func RefusedStartupParam(err error) (string, bool) {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "08P01" {
		return "", false
	}
	name, ok := strings.CutPrefix(pgErr.Message, "unsupported startup parameter: ")
	if !ok {
		return "", false
	}
	return strings.TrimSpace(name), true
}

// LostPreparedStatement reports whether err is what a client using named
// prepared statements gets behind a pooler that moves it between server
// connections (PgBouncer's pool_mode = transaction before 1.21, or without
// max_prepared_statements): the statement it prepared on one server
// connection is missing on the next (26000), or one of the same name is
// already there (42P05).
func LostPreparedStatement(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "26000": // invalid_sql_statement_name: prepared statement "…" does not exist
		return strings.Contains(pgErr.Message, "prepared statement")
	case "42P05": // duplicate_prepared_statement
		return true
	}
	return false
}
