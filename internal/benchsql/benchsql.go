// Package benchsql holds copies of the statements a default dbcache.Cache
// runs, for benchmarks' raw pgx baselines (bench/internal/benchcmp), kept
// here in the library module so a test of package dbcache can check them.
package benchsql

// Statements are the SQL a default dbcache.Cache runs on its pool (table on
// the search_path), by operation, for the raw pgx baseline. They are copies:
// dbcache keeps its statements unexported, and a test in package dbcache
// (statements_bench_test.go) fails when these drift from the real ones.
type Statements struct {
	Get, Set, Add, Touch, Incr, GetMany, SetMany string
}

// CacheStatements returns the statements of a cache with Config{}.
func CacheStatements() Statements {
	return Statements{
		Get:     "SELECT value FROM \"dbcache_entries\" WHERE key = $1 AND (expires IS NULL OR expires > statement_timestamp())",
		Set:     "INSERT INTO \"dbcache_entries\" AS t (key, value, expires) VALUES ($1, $2, statement_timestamp() + $3::bigint * interval '1 microsecond')\nON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires, written_at = EXCLUDED.written_at, token = EXCLUDED.token",
		Add:     "INSERT INTO \"dbcache_entries\" AS t (key, value, expires) VALUES ($1, $2, statement_timestamp() + $3::bigint * interval '1 microsecond')\nON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires, written_at = EXCLUDED.written_at, token = EXCLUDED.token\nWHERE t.expires <= EXCLUDED.written_at\nRETURNING true",
		Touch:   "UPDATE \"dbcache_entries\" SET expires = statement_timestamp() + $2::bigint * interval '1 microsecond' WHERE key = $1 AND (expires IS NULL OR expires > statement_timestamp())",
		Incr:    "UPDATE \"dbcache_entries\" SET value = decode((encode(value, 'escape')::numeric + $2::numeric)::text, 'escape'), token = $3::bigint\nWHERE key = $1 AND (expires IS NULL OR expires > statement_timestamp())\n  AND CASE WHEN length(value) > 20 THEN false\n           WHEN encode(value, 'escape') ~ '^(0|-?[1-9][0-9]{0,18})$'\n           THEN encode(value, 'escape')::numeric BETWEEN -9223372036854775808 AND 9223372036854775807\n            AND encode(value, 'escape')::numeric + $2::numeric BETWEEN -9223372036854775808 AND 9223372036854775807\n           ELSE false END\nRETURNING value",
		GetMany: "SELECT key, value FROM \"dbcache_entries\" WHERE key = ANY($1::text[]) AND (expires IS NULL OR expires > statement_timestamp())",
		SetMany: "INSERT INTO \"dbcache_entries\" AS t (key, value, expires)\nSELECT k, v, statement_timestamp() + $3::bigint * interval '1 microsecond' FROM unnest($1::text[], $2::bytea[]) AS u(k, v) ORDER BY k COLLATE \"C\"\nON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires, written_at = EXCLUDED.written_at, token = EXCLUDED.token",
	}
}
