package dbtest

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
)

// DSN returns a connection string for the schema: the server's, with
// search_path set to the schema (pgx passes unknown URL parameters on as
// runtime parameters), so a program that only reads a DSN, as an
// application reads DATABASE_URL, works in the schema.
func (s *Schema) DSN(tb testing.TB) string {
	tb.Helper()
	dsn, err := withSearchPath(s.URL, s.Name)
	if err != nil {
		tb.Fatalf("dbtest: %v", err)
	}
	return dsn
}

// withSearchPath adds search_path to a DSN, in URL or keyword/value form.
func withSearchPath(dsn, schema string) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("parse %q: %w", dsn, err)
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	// Schema names here are dbct_ followed by digits and underscores: no
	// quoting needed.
	return dsn + " search_path=" + schema, nil
}
