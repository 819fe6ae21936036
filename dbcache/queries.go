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
//   - TABLE is replaced at New by the (optionally schema-qualified) table
//     name, quoted with pgx.Identifier; nothing else is ever spliced into
//     SQL, and every other value is a bind parameter.
//   - "Live" is expires IS NULL OR expires > statement_timestamp(). The
//     database's clock decides; statement_timestamp() rather than now() so a
//     statement inside a long transaction still sees the current time.
//   - Expiries are written as statement_timestamp() + $n microseconds, with
//     NULL ($n NULL) meaning never.
//   - written_at (migration 4) is when an entry's value was written, for
//     the culler's maximum age: an insert takes the column's DEFAULT
//     (statement_timestamp()), every upsert that replaces the value sets it
//     from EXCLUDED, and IncrVersion moves it with the value. Touch and Incr
//     keep it: they change the expiry or count on, not the entry.
//   - A statement that locks several rows locks them in the key column's
//     order: ORDER BY key, or ORDER BY k COLLATE "C" for keys that come from
//     a parameter (whose collation is the database's default, often
//     linguistic, where "a" < "B" while "C" has "B" < "a"). Two statements
//     locking in different orders can deadlock.
//   - Every write has two forms, written out in full: the plain one, and a
//     FastCommit one (suffix Fast) that joins fastCommitSrc, so the
//     statement itself runs set_config('synchronous_commit', 'off', true)
//     (SET LOCAL): the commit of its implicit transaction then returns
//     without waiting for the WAL flush; no extra round trip, no session
//     state, still one statement, and the setting lapses with the
//     transaction (so it works behind PgBouncer in transaction pooling). A
//     volatile function in a FROM subquery is always evaluated; a test
//     checks every Fast statement really sets it.
const (
	qGet = `SELECT value FROM TABLE WHERE key = $1 AND (expires IS NULL OR expires > statement_timestamp())`

	qHasKey = `SELECT EXISTS (SELECT 1 FROM TABLE WHERE key = $1 AND (expires IS NULL OR expires > statement_timestamp()))`

	// The value and its remaining lifetime in microseconds, NULL for never,
	// by the database's clock.
	qGetRemaining = `SELECT value, (extract(epoch FROM expires - statement_timestamp()) * 1000000)::bigint
FROM TABLE WHERE key = $1 AND (expires IS NULL OR expires > statement_timestamp())`

	qTTL = `SELECT (extract(epoch FROM expires - statement_timestamp()) * 1000000)::bigint
FROM TABLE WHERE key = $1 AND (expires IS NULL OR expires > statement_timestamp())`

	qGetMany = `SELECT key, value FROM TABLE WHERE key = ANY($1::text[]) AND (expires IS NULL OR expires > statement_timestamp())`

	qSet = `INSERT INTO TABLE AS t (key, value, expires) VALUES ($1, $2, statement_timestamp() + $3::bigint * interval '1 microsecond')
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires, written_at = EXCLUDED.written_at, token = EXCLUDED.token`

	// INSERT … VALUES has no FROM; the SELECT form needs explicit casts
	// because a SELECT list does not take its types from the columns.
	qSetFast = `INSERT INTO TABLE AS t (key, value, expires)
SELECT $1::text, $2::bytea, statement_timestamp() + $3::bigint * interval '1 microsecond' FROM (SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires, written_at = EXCLUDED.written_at, token = EXCLUDED.token`

	// An add that finds a live row updates nothing and returns no row. One
	// that finds an expired row takes it over in the same statement; a racing
	// add waits on the row lock and then sees the new live row. "Expired" is
	// t.expires <= EXCLUDED.written_at: written_at is not in the insert's
	// column list, so EXCLUDED.written_at is its default,
	// statement_timestamp(), the same instant without a function call in
	// the ON CONFLICT clause (which Citus refuses on a distributed table:
	// docs/scale-out.md).
	qAdd = `INSERT INTO TABLE AS t (key, value, expires) VALUES ($1, $2, statement_timestamp() + $3::bigint * interval '1 microsecond')
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires, written_at = EXCLUDED.written_at, token = EXCLUDED.token
WHERE t.expires <= EXCLUDED.written_at
RETURNING true`

	qAddFast = `INSERT INTO TABLE AS t (key, value, expires)
SELECT $1::text, $2::bytea, statement_timestamp() + $3::bigint * interval '1 microsecond' FROM (SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires, written_at = EXCLUDED.written_at, token = EXCLUDED.token
WHERE t.expires <= EXCLUDED.written_at
RETURNING true`

	// get_or_set's write: store unless a live row exists, and in both cases
	// return what the row holds now, so every racing caller returns the first
	// stored value. The live case rewrites the row with its own values; that
	// costs a write, but only on the slow path after a Get missed.
	qGetOrSet = `INSERT INTO TABLE AS t (key, value, expires) VALUES ($1, $2, statement_timestamp() + $3::bigint * interval '1 microsecond')
ON CONFLICT (key) DO UPDATE SET
  value   = CASE WHEN t.expires <= EXCLUDED.written_at THEN EXCLUDED.value ELSE t.value END,
  expires = CASE WHEN t.expires <= EXCLUDED.written_at THEN EXCLUDED.expires ELSE t.expires END,
  written_at = CASE WHEN t.expires <= EXCLUDED.written_at THEN EXCLUDED.written_at ELSE t.written_at END,
  token   = CASE WHEN t.expires <= EXCLUDED.written_at THEN EXCLUDED.token ELSE t.token END
RETURNING value`

	qGetOrSetFast = `INSERT INTO TABLE AS t (key, value, expires)
SELECT $1::text, $2::bytea, statement_timestamp() + $3::bigint * interval '1 microsecond' FROM (SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit
ON CONFLICT (key) DO UPDATE SET
  value   = CASE WHEN t.expires <= EXCLUDED.written_at THEN EXCLUDED.value ELSE t.value END,
  expires = CASE WHEN t.expires <= EXCLUDED.written_at THEN EXCLUDED.expires ELSE t.expires END,
  written_at = CASE WHEN t.expires <= EXCLUDED.written_at THEN EXCLUDED.written_at ELSE t.written_at END,
  token   = CASE WHEN t.expires <= EXCLUDED.written_at THEN EXCLUDED.token ELSE t.token END
RETURNING value`

	// The loaders' fenced writes (load.go): qGetOrSet and qSet that store
	// only while the loader's lease ($4, its token) is live. The lease row
	// is locked FOR SHARE before the entry: an acquire that would take the
	// lease over (an UPDATE of that row) waits for this write's commit, and
	// this write, finding the row changed by a committed acquire, re-reads
	// its newest version (READ COMMITTED), whose token is no longer $4, and
	// stores nothing. So a loader whose lease lapsed never overwrites the
	// value of the loader that took the lease over. No row back: the lease
	// was not live, nothing was stored. The lease row is always locked
	// before the entry row, and no other statement locks both, so the
	// two cannot deadlock.
	qGetOrSetLeased = `INSERT INTO TABLE AS t (key, value, expires)
SELECT $1::text, $2::bytea, statement_timestamp() + $3::bigint * interval '1 microsecond'
WHERE EXISTS (SELECT 1 FROM LEASES AS l WHERE l.key = $1::text AND l.token = $4::text AND l.expires > statement_timestamp() FOR SHARE)
ON CONFLICT (key) DO UPDATE SET
  value   = CASE WHEN t.expires <= EXCLUDED.written_at THEN EXCLUDED.value ELSE t.value END,
  expires = CASE WHEN t.expires <= EXCLUDED.written_at THEN EXCLUDED.expires ELSE t.expires END,
  written_at = CASE WHEN t.expires <= EXCLUDED.written_at THEN EXCLUDED.written_at ELSE t.written_at END,
  token = CASE WHEN t.expires <= EXCLUDED.written_at THEN EXCLUDED.token ELSE t.token END
RETURNING value`

	qGetOrSetLeasedFast = `INSERT INTO TABLE AS t (key, value, expires)
SELECT $1::text, $2::bytea, statement_timestamp() + $3::bigint * interval '1 microsecond' FROM (SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit
WHERE EXISTS (SELECT 1 FROM LEASES AS l WHERE l.key = $1::text AND l.token = $4::text AND l.expires > statement_timestamp() FOR SHARE)
ON CONFLICT (key) DO UPDATE SET
  value   = CASE WHEN t.expires <= EXCLUDED.written_at THEN EXCLUDED.value ELSE t.value END,
  expires = CASE WHEN t.expires <= EXCLUDED.written_at THEN EXCLUDED.expires ELSE t.expires END,
  written_at = CASE WHEN t.expires <= EXCLUDED.written_at THEN EXCLUDED.written_at ELSE t.written_at END,
  token = CASE WHEN t.expires <= EXCLUDED.written_at THEN EXCLUDED.token ELSE t.token END
RETURNING value`

	qSetLeased = `INSERT INTO TABLE AS t (key, value, expires)
SELECT $1::text, $2::bytea, statement_timestamp() + $3::bigint * interval '1 microsecond'
WHERE EXISTS (SELECT 1 FROM LEASES AS l WHERE l.key = $1::text AND l.token = $4::text AND l.expires > statement_timestamp() FOR SHARE)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires, written_at = EXCLUDED.written_at, token = EXCLUDED.token
RETURNING true`

	qSetLeasedFast = `INSERT INTO TABLE AS t (key, value, expires)
SELECT $1::text, $2::bytea, statement_timestamp() + $3::bigint * interval '1 microsecond' FROM (SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit
WHERE EXISTS (SELECT 1 FROM LEASES AS l WHERE l.key = $1::text AND l.token = $4::text AND l.expires > statement_timestamp() FOR SHARE)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires, written_at = EXCLUDED.written_at, token = EXCLUDED.token
RETURNING true`

	qTouch = `UPDATE TABLE SET expires = statement_timestamp() + $2::bigint * interval '1 microsecond' WHERE key = $1 AND (expires IS NULL OR expires > statement_timestamp())`

	qTouchFast = `UPDATE TABLE SET expires = statement_timestamp() + $2::bigint * interval '1 microsecond' FROM (SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit
WHERE key = $1 AND (expires IS NULL OR expires > statement_timestamp())`

	// Returns whether the removed row was live: an expired row is removed
	// but reported as absent. The DELETE returns the bare column and the
	// query over its result decides liveness: Citus refuses any function
	// that is not IMMUTABLE (statement_timestamp() is STABLE) in the
	// RETURNING clause of a distributed table's DELETE, and on plain
	// PostgreSQL the CTE costs nothing measurable (BenchmarkOpsDelete;
	// docs/scale-out.md).
	qDelete = `WITH d AS (DELETE FROM TABLE WHERE key = $1 RETURNING expires)
SELECT expires IS NULL OR expires > statement_timestamp() FROM d`

	qDeleteFast = `WITH d AS (DELETE FROM TABLE USING (SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit
  WHERE key = $1 RETURNING expires)
SELECT expires IS NULL OR expires > statement_timestamp() FROM d`

	// The value changes only when it is an int64 and the sum is one too; the
	// expiry is left alone. $3 is the entry's new token (cas.go's newToken:
	// drawn by the client, so the SET holds no volatile function, which
	// Citus refuses in an UPDATE's SET). No row back means a miss, a non-integer or an
	// overflow: qIncrCheck tells which.
	//
	// How Redis INCR reads a value: decimal ASCII, an optional "-", no "+",
	// no leading zeros, no spaces. The CASE fixes the evaluation order:
	// length() reads only the stored size (it never decompresses or copies a
	// TOASTed value), so a value longer than any int64's 20 characters is
	// refused before anything converts it; encode(…, 'escape') turns any
	// byte that is not printable ASCII into a \ooo escape, so it never fails
	// and such a value never matches; the numeric cast only ever sees text
	// that matched. decode(…, 'escape') of the digits is the digits' bytes.
	qIncr = `UPDATE TABLE SET value = decode((encode(value, 'escape')::numeric + $2::numeric)::text, 'escape'), token = $3::bigint
WHERE key = $1 AND (expires IS NULL OR expires > statement_timestamp())
  AND CASE WHEN length(value) > 20 THEN false
           WHEN encode(value, 'escape') ~ '^(0|-?[1-9][0-9]{0,18})$'
           THEN encode(value, 'escape')::numeric BETWEEN -9223372036854775808 AND 9223372036854775807
            AND encode(value, 'escape')::numeric + $2::numeric BETWEEN -9223372036854775808 AND 9223372036854775807
           ELSE false END
RETURNING value`

	qIncrFast = `UPDATE TABLE SET value = decode((encode(value, 'escape')::numeric + $2::numeric)::text, 'escape'), token = $3::bigint
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit
WHERE key = $1 AND (expires IS NULL OR expires > statement_timestamp())
  AND CASE WHEN length(value) > 20 THEN false
           WHEN encode(value, 'escape') ~ '^(0|-?[1-9][0-9]{0,18})$'
           THEN encode(value, 'escape')::numeric BETWEEN -9223372036854775808 AND 9223372036854775807
            AND encode(value, 'escape')::numeric + $2::numeric BETWEEN -9223372036854775808 AND 9223372036854775807
           ELSE false END
RETURNING value`

	// Several Incrs in one statement (Config.CoalesceIncrs): $1 distinct
	// keys, $2 the sum of each key's deltas, $3 each key's new token. The
	// rows are locked in key order first (the ARRAY subquery runs once,
	// before any row is updated, as in qDeleteMany); each key's row changes
	// only if it is live and an integer and adding its sum stays in range,
	// as qIncr's test; the keys changed come back with their new values, in
	// one row of two arrays. The parameters are read through (SELECT …),
	// so PostgreSQL settles on the generic plan instead of planning each
	// run afresh (see docs/performance.md, Targets).
	qIncrBatch = `WITH u AS (
UPDATE TABLE AS t SET value = decode((encode(t.value, 'escape')::numeric + b.d)::text, 'escape'), token = b.tok
FROM unnest((SELECT $1::text[]), (SELECT $2::bigint[]), (SELECT $3::bigint[])) AS b(k, d, tok)
WHERE t.key = b.k AND t.key = ANY (ARRAY (SELECT key FROM TABLE WHERE key = ANY ((SELECT $1::text[])::text[]) ORDER BY key FOR UPDATE))
  AND (t.expires IS NULL OR t.expires > statement_timestamp())
  AND CASE WHEN length(t.value) > 20 THEN false
           WHEN encode(t.value, 'escape') ~ '^(0|-?[1-9][0-9]{0,18})$'
           THEN encode(t.value, 'escape')::numeric BETWEEN -9223372036854775808 AND 9223372036854775807
            AND encode(t.value, 'escape')::numeric + b.d BETWEEN -9223372036854775808 AND 9223372036854775807
           ELSE false END
RETURNING t.key, t.value)
SELECT coalesce(array_agg(key), '{}'), coalesce(array_agg(value), '{}') FROM u`

	qIncrBatchFast = `WITH u AS (
UPDATE TABLE AS t SET value = decode((encode(t.value, 'escape')::numeric + b.d)::text, 'escape'), token = b.tok
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit,
     unnest((SELECT $1::text[]), (SELECT $2::bigint[]), (SELECT $3::bigint[])) AS b(k, d, tok)
WHERE t.key = b.k AND t.key = ANY (ARRAY (SELECT key FROM TABLE WHERE key = ANY ((SELECT $1::text[])::text[]) ORDER BY key FOR UPDATE))
  AND (t.expires IS NULL OR t.expires > statement_timestamp())
  AND CASE WHEN length(t.value) > 20 THEN false
           WHEN encode(t.value, 'escape') ~ '^(0|-?[1-9][0-9]{0,18})$'
           THEN encode(t.value, 'escape')::numeric BETWEEN -9223372036854775808 AND 9223372036854775807
            AND encode(t.value, 'escape')::numeric + b.d BETWEEN -9223372036854775808 AND 9223372036854775807
           ELSE false END
RETURNING t.key, t.value)
SELECT coalesce(array_agg(key), '{}'), coalesce(array_agg(value), '{}') FROM u`

	// Says why an incr changed nothing: no row is a miss; otherwise at most
	// 21 bytes of the value come back, enough to tell an integer (at most
	// 20) from anything else without sending a large value to the client.
	qIncrCheck = `SELECT substring(value FROM 1 FOR 21) FROM TABLE WHERE key = $1 AND (expires IS NULL OR expires > statement_timestamp())`

	// Moves a live entry to another key, value and expiry intact, replacing
	// whatever the new key held: incr_version in one statement. It writes
	// two rows, so it first locks both in key order (locked); the DELETE
	// waits for that through its one-time filter on the count, which the
	// executor evaluates before scanning. Without it, IncrVersion(k, +1)
	// racing DecrVersion(k, 1) from the other version locks the two rows
	// in opposite orders and deadlocks.
	qMove = `WITH locked AS MATERIALIZED (
  SELECT key FROM TABLE WHERE key IN ($1, $2) ORDER BY key FOR UPDATE),
old AS (
  DELETE FROM TABLE WHERE key = $1 AND (expires IS NULL OR expires > statement_timestamp())
     AND (SELECT count(*) FROM locked) >= 0
  RETURNING value, expires, written_at)
INSERT INTO TABLE AS t (key, value, expires, written_at) SELECT $2, value, expires, written_at FROM old
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires, written_at = EXCLUDED.written_at, token = EXCLUDED.token
RETURNING true`

	qMoveFast = `WITH locked AS MATERIALIZED (
  SELECT key FROM TABLE WHERE key IN ($1, $2) ORDER BY key FOR UPDATE),
old AS (
  DELETE FROM TABLE USING (SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit
   WHERE key = $1 AND (expires IS NULL OR expires > statement_timestamp())
     AND (SELECT count(*) FROM locked) >= 0
  RETURNING value, expires, written_at)
INSERT INTO TABLE AS t (key, value, expires, written_at) SELECT $2, value, expires, written_at FROM old
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires, written_at = EXCLUDED.written_at, token = EXCLUDED.token
RETURNING true`

	// Rows are inserted, and existing ones locked, in the order of the
	// SELECT: the key column's "C" order, as every other batch locks them.
	qSetMany = `INSERT INTO TABLE AS t (key, value, expires)
SELECT k, v, statement_timestamp() + $3::bigint * interval '1 microsecond' FROM unnest($1::text[], $2::bytea[]) AS u(k, v) ORDER BY k COLLATE "C"
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires, written_at = EXCLUDED.written_at, token = EXCLUDED.token`

	qSetManyFast = `INSERT INTO TABLE AS t (key, value, expires)
SELECT k, v, statement_timestamp() + $3::bigint * interval '1 microsecond' FROM (SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit, unnest($1::text[], $2::bytea[]) AS u(k, v) ORDER BY k COLLATE "C"
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires, written_at = EXCLUDED.written_at, token = EXCLUDED.token`

	// Several Sets in one statement (Config.CoalesceSets): one row per key,
	// each with its own expiry ($3 NULL for never), inserted and locked in
	// the key column's order like qSetMany.
	qSetBatch = `INSERT INTO TABLE AS t (key, value, expires)
SELECT k, v, statement_timestamp() + us * interval '1 microsecond' FROM unnest($1::text[], $2::bytea[], $3::bigint[]) AS u(k, v, us) ORDER BY k COLLATE "C"
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires, written_at = EXCLUDED.written_at, token = EXCLUDED.token`

	qSetBatchFast = `INSERT INTO TABLE AS t (key, value, expires)
SELECT k, v, statement_timestamp() + us * interval '1 microsecond' FROM (SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit, unnest($1::text[], $2::bytea[], $3::bigint[]) AS u(k, v, us) ORDER BY k COLLATE "C"
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires, written_at = EXCLUDED.written_at, token = EXCLUDED.token`

	// Counts the live entries it removed; expired ones go too, uncounted.
	// The rows are locked in key order first, as qSetMany locks them: a plain
	// DELETE … = ANY may visit them in heap order and deadlock with a batch.
	// The locking SELECT is an ARRAY subquery, so it runs once, first, and
	// the DELETE finds the locked rows through the primary key; as an IN
	// (subquery) the planner may hash it and scan the whole table.
	qDeleteMany = `WITH d AS (DELETE FROM TABLE WHERE key = ANY (ARRAY (
  SELECT key FROM TABLE WHERE key = ANY($1::text[]) ORDER BY key FOR UPDATE)) RETURNING expires)
SELECT count(*) FROM d WHERE (expires IS NULL OR expires > statement_timestamp())`

	qDeleteManyFast = `WITH d AS (DELETE FROM TABLE USING (SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit
  WHERE key = ANY (ARRAY (SELECT key FROM TABLE WHERE key = ANY($1::text[]) ORDER BY key FOR UPDATE)) RETURNING expires)
SELECT count(*) FROM d WHERE (expires IS NULL OR expires > statement_timestamp())`

	// One batch of Clear: the next $2 rows in key order from $1 on, locked
	// in key order (a heap-order DELETE of the whole table deadlocks with
	// batches that lock in key order), removed. It returns how many it
	// removed and the last key, where the next batch starts: a keyset walk,
	// so no batch re-reads the index entries of rows earlier batches
	// removed. DELETE, not TRUNCATE: TRUNCATE takes an ACCESS EXCLUSIVE lock
	// that would stall every reader and writer of the cache.
	qClearBatch = `WITH d AS (DELETE FROM TABLE WHERE key = ANY (ARRAY (
  SELECT key FROM TABLE WHERE key >= $1 ORDER BY key LIMIT $2 FOR UPDATE)) RETURNING key)
SELECT count(*), max(key) FROM d`

	qClearBatchFast = `WITH d AS (DELETE FROM TABLE USING (SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit
  WHERE key = ANY (ARRAY (SELECT key FROM TABLE WHERE key >= $1 ORDER BY key LIMIT $2 FOR UPDATE)) RETURNING key)
SELECT count(*), max(key) FROM d`

	// One batch of DeletePrefix: the next $3 rows in key order from $1 on
	// and below $2 (the range of made keys that start with the prefix:
	// with the key column's "C" collation a range scan of the primary key
	// index), locked in key order and removed. It returns how many live
	// entries it removed (expired ones go too, uncounted), how many rows,
	// and the last key, where the next batch starts.
	qDeletePrefixBatch = `WITH d AS (DELETE FROM TABLE WHERE key = ANY (ARRAY (
  SELECT key FROM TABLE WHERE key >= $1 AND key < $2 ORDER BY key LIMIT $3 FOR UPDATE)) RETURNING key, expires)
SELECT count(*) FILTER (WHERE expires IS NULL OR expires > statement_timestamp()), count(*), max(key) FROM d`

	qDeletePrefixBatchFast = `WITH d AS (DELETE FROM TABLE USING (SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit
  WHERE key = ANY (ARRAY (SELECT key FROM TABLE WHERE key >= $1 AND key < $2 ORDER BY key LIMIT $3 FOR UPDATE)) RETURNING key, expires)
SELECT count(*) FILTER (WHERE expires IS NULL OR expires > statement_timestamp()), count(*), max(key) FROM d`

	// One page of Keys: up to $3 live made keys from $1 on and below $2, in
	// key order: a keyset walk of the primary key index, where $1 is the
	// prefix for the first page and the last key of the previous page
	// after that (which the caller then skips).
	qKeysPage = `SELECT key FROM TABLE
WHERE key >= $1 AND key < $2 AND (expires IS NULL OR expires > statement_timestamp())
ORDER BY key LIMIT $3`

	// qCheck runs at New: the table's OID (0 when it does not exist), the
	// session's default isolation level (a statement outside a transaction
	// block runs at it), and whether the table has written_at (migration
	// 4) and token (migration 9), which the writes set.
	qCheck = `SELECT coalesce(to_regclass($1)::oid::bigint, 0), current_setting('transaction_isolation'),
       (SELECT count(*) = 2 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname IN ('written_at', 'token') AND NOT attisdropped)`

	// qTableHidden finds a cache table in a search_path schema the role
	// lacks USAGE on (search_path skips those without a word).
	qTableHidden = `SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = $1 AND NOT has_schema_privilege(n.oid, 'USAGE')
  AND n.nspname IN (SELECT btrim(btrim(p), '"') FROM unnest(string_to_array(current_setting('search_path'), ',')) AS p)
LIMIT 1`

	// The transaction a write runs in when the session's default isolation
	// is not READ COMMITTED (see shared.wrapWrites).
	qBeginReadCommitted = `BEGIN ISOLATION LEVEL READ COMMITTED`
	qCommit             = `COMMIT`
)

// clearBatchSize is the most rows one Clear statement removes: large enough
// that a clear of a big table is few round trips, small enough that each
// statement holds its row locks for milliseconds, not seconds.
const clearBatchSize = 5000

// queries holds the statements with the table name filled in.
type queries struct {
	get, hasKey, set, add, getOrSet, touch, del, incr, incrCheck, move string
	getMany, setMany, deleteMany, clearBatch, setBatch, incrBatch      string
	getRemaining, ttl                                                  string
	getOrSetLeased, setLeased                                          string // load.go
	deletePrefixBatch, keysPage                                        string
	getSnapshot, getManySnapshot                                       string // snapshot.go
	getWithToken, compareAndSwap, compareAndDelete                     string // cas.go
	leaseAcquire, leaseExtend, leaseRelease                            string // lease.go
	citusLeaseShare, citusGetOrSetLeased, citusSetLeased               string // lease.go, the fenced writes' Citus forms
	table, leases                                                      string
}

// newQueries fills in the statements for the table in schema; with fast
// set, every write is its FastCommit form.
func newQueries(schema string, fast bool) *queries {
	ident := pgx.Identifier{TableName}
	if schema != "" {
		ident = pgx.Identifier{schema, TableName}
	}
	table := ident.Sanitize()
	leasesIdent := pgx.Identifier{LeasesTableName}
	if schema != "" {
		leasesIdent = pgx.Identifier{schema, LeasesTableName}
	}
	leases := leasesIdent.Sanitize()
	// One pass, so a schema name holding TABLE or LEASES is never
	// replaced within a name already filled in.
	names := strings.NewReplacer("LEASES", leases, "TABLE", table)
	fill := names.Replace
	write := func(plain, fastForm string) string {
		if fast {
			return fill(fastForm)
		}
		return fill(plain)
	}
	return &queries{
		table:      table,
		leases:     leases,
		get:        fill(qGet),
		hasKey:     fill(qHasKey),
		set:        write(qSet, qSetFast),
		add:        write(qAdd, qAddFast),
		getOrSet:   write(qGetOrSet, qGetOrSetFast),
		touch:      write(qTouch, qTouchFast),
		del:        write(qDelete, qDeleteFast),
		incr:       write(qIncr, qIncrFast),
		incrCheck:  fill(qIncrCheck),
		move:       write(qMove, qMoveFast),
		getMany:    fill(qGetMany),
		setMany:    write(qSetMany, qSetManyFast),
		deleteMany: write(qDeleteMany, qDeleteManyFast),
		clearBatch: write(qClearBatch, qClearBatchFast),
		setBatch:   write(qSetBatch, qSetBatchFast),
		incrBatch:  write(qIncrBatch, qIncrBatchFast),

		getRemaining:      fill(qGetRemaining),
		ttl:               fill(qTTL),
		deletePrefixBatch: write(qDeletePrefixBatch, qDeletePrefixBatchFast),
		keysPage:          fill(qKeysPage),
		getSnapshot:       fill(qGetSnapshot),
		getManySnapshot:   fill(qGetManySnapshot),
		getWithToken:      fill(qGetWithToken),
		compareAndSwap:    write(qCompareAndSwap, qCompareAndSwapFast),
		compareAndDelete:  write(qCompareAndDelete, qCompareAndDeleteFast),

		getOrSetLeased: write(qGetOrSetLeased, qGetOrSetLeasedFast),
		setLeased:      write(qSetLeased, qSetLeasedFast),
		leaseAcquire:   fill(qLeaseAcquire),
		leaseExtend:    fill(qLeaseExtend),
		leaseRelease:   fill(qLeaseRelease),

		citusLeaseShare:     fill(qCitusLeaseShare),
		citusGetOrSetLeased: fill(qCitusGetOrSetLeased),
		citusSetLeased:      fill(qCitusSetLeased),
	}
}
