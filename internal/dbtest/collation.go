package dbtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
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

var (
	linguisticOnce sync.Once
	linguisticURL  string
	linguisticErr  error
)

// SchemaIn is NewSchema in a database with the given default collation on
// the test server. The linguistic database (the server database's name plus
// "_icu") is created on first use and kept for later runs.
func SchemaIn(tb testing.TB, coll Collation) *Schema {
	tb.Helper()
	if coll == CollationC {
		return NewSchema(tb)
	}
	base := URL(tb)
	linguisticOnce.Do(func() { linguisticURL, linguisticErr = linguisticDatabase(base) })
	if linguisticErr != nil {
		tb.Fatalf("dbtest: linguistic-collation database: %v", linguisticErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, linguisticURL)
	if err != nil {
		tb.Fatalf("dbtest: connect to the linguistic-collation database: %v", err)
	}
	defer conn.Close(context.Background())
	name := fmt.Sprintf("%sicu_%d_%d_%d", schemaPrefix, time.Now().Unix(), os.Getpid(), schemaSeq.Add(1))
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize()); err != nil {
		tb.Fatalf("dbtest: create schema %s: %v", name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, linguisticURL)
		if err != nil {
			return
		}
		defer conn.Close(context.Background())
		_, _ = conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{name}.Sanitize()+" CASCADE")
	})
	return &Schema{Name: name, URL: linguisticURL}
}

// linguisticDatabase creates (if missing) the ICU en-US database beside the
// one base names, and returns its DSN.
func linguisticDatabase(base string) (string, error) {
	cfg, err := pgx.ParseConfig(base)
	if err != nil {
		return "", err
	}
	name := cfg.Database + "_icu"
	dsn, err := withDatabase(base, name)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return "", err
	}
	if !exists {
		ident := pgx.Identifier{name}.Sanitize()
		_, err = conn.Exec(ctx, "CREATE DATABASE "+ident+" LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8' TEMPLATE template0")
		if err != nil && !isDuplicate(err) {
			// A server without the C.UTF-8 OS locale still has "C".
			_, err = conn.Exec(ctx, "CREATE DATABASE "+ident+" LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C' TEMPLATE template0")
		}
		if err != nil && !isDuplicate(err) {
			return "", fmt.Errorf("create database %s (needs a server built with ICU and CREATEDB): %w", name, err)
		}
	}
	// Check that it really sorts linguistically: the whole point.
	lc, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return "", err
	}
	defer lc.Close(context.Background())
	var first string
	if err := lc.QueryRow(ctx, `SELECT k FROM unnest(ARRAY['B', 'a']) AS k ORDER BY k LIMIT 1`).Scan(&first); err != nil {
		return "", err
	}
	if first != "a" {
		return "", fmt.Errorf("database %s sorts %q first: not a linguistic collation", name, first)
	}
	return dsn, nil
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
