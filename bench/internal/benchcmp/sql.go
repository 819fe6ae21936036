package benchcmp

import "github.com/dbcache/dbcache/internal/benchsql"

// Statements are the SQL a default dbcache.Cache runs, for the raw pgx
// baseline (see internal/benchsql, which a test of package dbcache checks).
type Statements = benchsql.Statements

// CacheStatements returns the statements of a cache with Config{}.
func CacheStatements() Statements { return benchsql.CacheStatements() }
