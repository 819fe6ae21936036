package dbtest

import (
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
	if strings.HasPrefix(s.URL, "postgres://") || strings.HasPrefix(s.URL, "postgresql://") {
		u, err := url.Parse(s.URL)
		if err != nil {
			tb.Fatalf("dbtest: parse %q: %v", s.URL, err)
		}
		q := u.Query()
		q.Set("search_path", s.Name)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return s.URL + " search_path=" + s.Name
}
