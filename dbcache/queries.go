package dbcache

import (
	"strings"

	"github.com/jackc/pgx/v5"
)

// The statements, one per operation. Each is correct under any interleaving
// on its own: none reads, decides in Go and then writes, and none relies on
// catching an error (a failed statement would abort a caller's transaction).
//
// Conventions:
//   - TABLE is replaced at New by the (optionally schema-qualified) table name,
//     quoted with pgx.Identifier; nothing else is ever spliced into SQL.
//   - "Live" is expires IS NULL OR expires > statement_timestamp(). The
//     database's clock decides; statement_timestamp() rather than now() so a
//     statement inside a long transaction still sees the current time.
//   - Expiries are written as statement_timestamp() + $n microseconds, with
//     NULL ($n NULL) meaning never.
const (
	live = `(expires IS NULL OR expires > statement_timestamp())`
	exp  = `statement_timestamp() + $%d::bigint * interval '1 microsecond'`

	// intText is how Redis INCR reads a value: decimal ASCII, an optional
	// "-", no "+", no leading zeros, no spaces. encode(…, 'escape') turns any
	// byte that is not printable ASCII into a \ooo escape, so it never fails
	// and such a value never matches. CASE fixes the evaluation order, so the
	// numeric cast only ever sees text that matched.
	intRE = `'^(0|-?[1-9][0-9]{0,18})$'`

	qGet = `SELECT value FROM TABLE WHERE key = $1 AND ` + live

	qHasKey = `SELECT EXISTS (SELECT 1 FROM TABLE WHERE key = $1 AND ` + live + `)`

	qSet = `INSERT INTO TABLE AS t (key, value, expires) VALUES ($1, $2, EXP3)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires`

	// An add that finds a live row updates nothing and returns no row. One
	// that finds an expired row takes it over in the same statement; a racing
	// add waits on the row lock and then sees the new live row.
	qAdd = `INSERT INTO TABLE AS t (key, value, expires) VALUES ($1, $2, EXP3)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires
WHERE t.expires <= statement_timestamp()
RETURNING true`

	// get_or_set's write: store unless a live row exists, and in both cases
	// return what the row holds now, so every racing caller returns the first
	// stored value. The live case rewrites the row with its own values; that
	// costs a write, but only on the slow path after a Get missed.
	qGetOrSet = `INSERT INTO TABLE AS t (key, value, expires) VALUES ($1, $2, EXP3)
ON CONFLICT (key) DO UPDATE SET
  value   = CASE WHEN t.expires <= statement_timestamp() THEN EXCLUDED.value ELSE t.value END,
  expires = CASE WHEN t.expires <= statement_timestamp() THEN EXCLUDED.expires ELSE t.expires END
RETURNING value`

	qTouch = `UPDATE TABLE SET expires = EXP2 WHERE key = $1 AND ` + live

	// Returns whether the removed row was live: an expired row is removed
	// but reported as absent.
	qDelete = `DELETE FROM TABLE WHERE key = $1 RETURNING ` + live

	// The value changes only when it is an int64 and the sum is one too; the
	// expiry is left alone. No row back means a miss, a non-integer or an
	// overflow: qIncrCheck tells which.
	qIncr = `UPDATE TABLE SET value = convert_to((encode(value, 'escape')::numeric + $2::numeric)::text, 'UTF8')
WHERE key = $1 AND ` + live + ` AND CASE WHEN encode(value, 'escape') ~ ` + intRE + `
  THEN encode(value, 'escape')::numeric BETWEEN -9223372036854775808 AND 9223372036854775807
   AND encode(value, 'escape')::numeric + $2::numeric BETWEEN -9223372036854775808 AND 9223372036854775807
  ELSE false END
RETURNING value`

	qIncrCheck = `SELECT value FROM TABLE WHERE key = $1 AND ` + live

	// Moves a live entry to another key, value and expiry intact, replacing
	// whatever the new key held: incr_version in one statement.
	qMove = `WITH old AS (DELETE FROM TABLE WHERE key = $1 AND ` + live + ` RETURNING value, expires)
INSERT INTO TABLE AS t (key, value, expires) SELECT $2, value, expires FROM old
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires
RETURNING true`

	qGetMany = `SELECT key, value FROM TABLE WHERE key = ANY($1::text[]) AND ` + live

	// ORDER BY key makes every set_many lock its rows in the same order, so
	// two batches over overlapping keys cannot deadlock.
	qSetMany = `INSERT INTO TABLE AS t (key, value, expires)
SELECT k, v, EXP3 FROM unnest($1::text[], $2::bytea[]) AS u(k, v) ORDER BY k
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires`

	// Counts the live entries it removed; expired ones go too, uncounted.
	// The rows are locked in key order first, as qSetMany locks them: a plain
	// DELETE … = ANY may visit them in heap order and deadlock with a batch.
	qDeleteMany = `WITH d AS (DELETE FROM TABLE WHERE key IN (
  SELECT key FROM TABLE WHERE key = ANY($1::text[]) ORDER BY key FOR UPDATE) RETURNING expires)
SELECT count(*) FROM d WHERE ` + live

	// DELETE, not TRUNCATE: TRUNCATE takes an ACCESS EXCLUSIVE lock that
	// would stall every reader and writer of the cache.
	qClear = `DELETE FROM TABLE`

	qTableExists = `SELECT to_regclass($1) IS NOT NULL`

	// qTableHidden finds a cache table in a search_path schema the role
	// lacks USAGE on (search_path skips those without a word).
	qTableHidden = `SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = $1 AND NOT has_schema_privilege(n.oid, 'USAGE')
  AND n.nspname IN (SELECT btrim(btrim(p), '"') FROM unnest(string_to_array(current_setting('search_path'), ',')) AS p)
LIMIT 1`
)

// queries holds the statements with the table name filled in.
type queries struct {
	get, hasKey, set, add, getOrSet, touch, del, incr, incrCheck, move string
	getMany, setMany, deleteMany, clear                                string
	table                                                              string
}

// fastCommitSrc is a one-row relation whose only job is to run
// set_config('synchronous_commit', 'off', true) (SET LOCAL) inside the
// statement itself. The setting is read when the statement's implicit
// transaction commits, so that commit returns without waiting for the WAL
// flush, and it lapses with the transaction: no extra round trip, no session
// state (so it works behind PgBouncer in transaction pooling), still one
// statement. A volatile function in a FROM subquery is evaluated, never
// optimized away; tests check that every write statement sets it.
const fastCommitSrc = `(SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit`

// fastCommit rewrites a write statement to commit asynchronously, by joining
// fastCommitSrc into it. Each rewrite is anchored on text the statement is
// known to contain; newQueries' tests check every write statement changed.
func fastCommit(sql string) string {
	r := strings.NewReplacer(
		// INSERT … VALUES has no FROM; the SELECT form needs explicit casts
		// because a SELECT list does not take its types from the columns.
		"VALUES ($1, $2, EXP3)", "SELECT $1::text, $2::bytea, EXP3 FROM "+fastCommitSrc,
		"FROM unnest(", "FROM "+fastCommitSrc+", unnest(",
		"DELETE FROM TABLE WHERE", "DELETE FROM TABLE USING "+fastCommitSrc+" WHERE",
		"UPDATE TABLE SET expires = EXP2 WHERE", "UPDATE TABLE SET expires = EXP2 FROM "+fastCommitSrc+" WHERE",
		"'UTF8')\nWHERE", "'UTF8') FROM "+fastCommitSrc+"\nWHERE",
	)
	if sql == qClear {
		return qClear + " USING " + fastCommitSrc
	}
	return r.Replace(sql)
}

// newQueries fills in the statements for the table in schema; with fast set,
// every write statement commits with synchronous_commit off (fastCommit).
func newQueries(schema string, fast bool) *queries {
	ident := pgx.Identifier{TableName}
	if schema != "" {
		ident = pgx.Identifier{schema, TableName}
	}
	table := ident.Sanitize()
	r := strings.NewReplacer("TABLE", table,
		"EXP2", strings.Replace(exp, "%d", "2", 1),
		"EXP3", strings.Replace(exp, "%d", "3", 1))
	w := func(sql string) string { return r.Replace(sql) }
	if fast {
		w = func(sql string) string { return r.Replace(fastCommit(sql)) }
	}
	return &queries{
		table:      table,
		get:        r.Replace(qGet),
		hasKey:     r.Replace(qHasKey),
		set:        w(qSet),
		add:        w(qAdd),
		getOrSet:   w(qGetOrSet),
		touch:      w(qTouch),
		del:        w(qDelete),
		incr:       w(qIncr),
		incrCheck:  r.Replace(qIncrCheck),
		move:       w(qMove),
		getMany:    r.Replace(qGetMany),
		setMany:    w(qSetMany),
		deleteMany: w(qDeleteMany),
		clear:      w(qClear),
	}
}
