package dbtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Collation names the default collation of the database a test runs in.
type Collation string

const (
	// CollationC is a database whose default collation is "C" (byte
	// order), as the test server's own database is.
	CollationC Collation = "C"
	// CollationLinguistic is a database whose default collation is ICU
	// en-US: the usual production setting, where text sorts "a" < "aa" <
	// "B" instead of "B" < "a" < "aa".
	CollationLinguistic Collation = "icu-en-US"
)

// Collations lists both, for table-driven tests that must hold whatever the
// database's default collation.
var Collations = []Collation{CollationC, CollationLinguistic}

// SchemaIn is NewSchema in a database with the given default collation on
// the test server (and the run's default isolation, see EnvProfile). The
// linguistic database (the server database's name plus "_icu") is created
// on first use and kept for later runs.
func SchemaIn(tb testing.TB, coll Collation) *Schema {
	tb.Helper()
	if _, err := server(); err != nil {
		fatalNoServer(tb, err)
	}
	return SchemaWith(tb, Profile{Collation: coll, Isolation: runProfile.Isolation})
}

// SchemaWith is NewSchema in the database with profile p's defaults on the
// test server (see EnvProfile), created on first use and kept for later
// runs; the schema is dropped when the test ends.
func SchemaWith(tb testing.TB, p Profile) *Schema {
	tb.Helper()
	if _, err := server(); err != nil {
		fatalNoServer(tb, err)
	}
	if p == runProfile {
		return NewSchema(tb)
	}
	dbURL, err := profileDatabase(baseURL, p)
	if err != nil {
		tb.Fatalf("dbtest: database for %+v: %v", p, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		tb.Fatalf("dbtest: connect to the database for %+v: %v", p, err)
	}
	defer conn.Close(context.Background())
	name := fmt.Sprintf("%sprof_%d_%d_%d", schemaPrefix, time.Now().Unix(), os.Getpid(), schemaSeq.Add(1))
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize()); err != nil {
		tb.Fatalf("dbtest: create schema %s: %v", name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			return
		}
		defer conn.Close(context.Background())
		_, _ = conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{name}.Sanitize()+" CASCADE")
	})
	return &Schema{Name: name, URL: dbURL}
}

func isDuplicate(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "42P04" || pgErr.Code == "23505") // duplicate_database; a racing creator
}

// withDatabase returns dsn pointing at database name instead.
func withDatabase(dsn, name string) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", err
		}
		u.Path = "/" + name
		return u.String(), nil
	}
	return dsn + " dbname=" + name, nil
}
