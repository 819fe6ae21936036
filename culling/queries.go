package culling

// The package's SQL. %[1]s is the sanitized (schema-qualified when
// Config.Schema is set) table name, filled in with fmt.Sprintf; everything
// else is a bind parameter.
//
// Every statement runs in a transaction the package begins itself at READ
// COMMITTED (see runTx), whatever default_transaction_isolation the role or
// database sets: at REPEATABLE READ or SERIALIZABLE a batch that locks a row
// a writer has just updated fails with a serialization error, a walk takes
// predicate locks, and the lock transaction would keep a snapshot for the
// whole pass.

const (
	// sqlBegin starts each of the package's transactions.
	sqlBegin = `BEGIN ISOLATION LEVEL READ COMMITTED`

	// sqlCommit ends them.
	sqlCommit = `COMMIT`

	// sqlRollback ends a transaction a failed statement left open.
	sqlRollback = `ROLLBACK`

	// sqlLock resolves the cache table and takes the culler lock for the
	// rest of the transaction, keyed on (lockKeySpace, table OID). An OID is
	// a uint32; subtracting 2^31 maps it one-to-one onto int4. now() is the
	// transaction's start: the pass's "as of" time for the expiry sweep.
	// $3, unless NULL, is the transaction's idle_in_transaction_session_timeout.
	//
	// It also returns, from the server, the backend running the transaction
	// and the transaction's virtual ID, which the batches check the lock
	// against (see the batch deletes): the PID a client was given is not the
	// backend's behind a pooler (PgBouncer hands out its own cancel key),
	// and the transaction is pinned to one backend for as long as it is
	// open. Every transaction holds the lock on its own virtual ID, so that
	// row of pg_locks is there whatever the order the columns are computed
	// in.
	sqlLock = `
SELECT t.oid::int8,
       pg_try_advisory_xact_lock($2::int4, (t.oid::int8 - 2147483648)::int4),
       now(),
       pg_backend_pid(),
       (SELECT virtualtransaction FROM pg_locks
         WHERE locktype = 'virtualxid' AND pid = pg_backend_pid() AND granted LIMIT 1)
  FROM (SELECT to_regclass($1) AS oid,
               CASE WHEN $3::text IS NOT NULL
                    THEN set_config('idle_in_transaction_session_timeout', $3::text, true) END) t`

	// sqlServerPID is the backend that runs the transaction: a pass's work
	// connection's, read once a pass, is the connection's own backend when
	// its client PID says so (a direct connection) and anyone's behind a
	// transaction pooler.
	sqlServerPID = `SELECT pg_backend_pid()`

	// sqlLockHeld reports whether backend $1 still holds the culler lock
	// ($2, and the OID of table $3, whose int4 form shows in pg_locks as
	// its bit pattern): what a pass waits on before it returns after its lock
	// connection was closed rather than rolled back.
	sqlLockHeld = `
SELECT EXISTS (SELECT 1 FROM pg_locks
                WHERE locktype = 'advisory' AND granted AND pid = $1
                  AND classid = $2::int8::oid AND objsubid = 2
                  AND objid = ((to_regclass($3)::oid::int8 + 2147483648) % 4294967296)::oid)`

	// sqlTableBusy reports whether backend $1 holds any lock on table $2
	// (a name):
	// a batch still running there after its connection was closed.
	sqlTableBusy = `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND relation = to_regclass($2))`

	// sqlCheck is Start's check: does the table resolve, and may this role
	// read, lock and delete its rows? The privileges are NULL when it does
	// not resolve.
	sqlCheck = `
SELECT t.oid IS NOT NULL,
       has_table_privilege(t.oid, 'SELECT'),
       has_table_privilege(t.oid, 'UPDATE'),
       has_table_privilege(t.oid, 'DELETE'),
       current_user
  FROM (SELECT to_regclass($1) AS oid) t`

	// sqlHidden finds a cache table in a search_path schema the role lacks
	// USAGE on (the search_path skips those without a word, so the table
	// would look missing).
	sqlHidden = `
SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relname = $1 AND NOT has_schema_privilege(n.oid, 'USAGE')
   AND n.nspname IN (SELECT btrim(btrim(p), '"')
                       FROM unnest(string_to_array(current_setting('search_path'), ',')) AS p)
 LIMIT 1`

	// sqlBatchSettings sets, for the rest of the current transaction only:
	//   - synchronous_commit off (see runTx);
	//   - no sequential or bitmap scans, so every walk in eviction order is
	//     an index walk that stops after its LIMIT. The planner would
	//     otherwise pick a bitmap scan and a sort, which reads every row in
	//     the range, whenever it believes the range is small (never-expiring
	//     rows, a tie, a stale statistic), and a batch would cost what is
	//     left of the range instead of what it removes.
	sqlBatchSettings = `
SELECT set_config('synchronous_commit', 'off', true),
       set_config('enable_seqscan', 'off', true),
       set_config('enable_bitmapscan', 'off', true)`

	// sqlDeleteSettings is sqlBatchSettings for the batch deletes, plus a
	// lock_timeout of 50 ms for the rest of the transaction: a batch waits
	// for a writer holding one of its rows (see the batch deletes), and a
	// writer's statement holds a row for milliseconds, but an application's
	// transaction can hold one for as long as it stays open. The rows the batch already deleted stay
	// locked while it waits, so their writers would wait as long; the
	// timeout bounds both, and it is shorter than deadlock_timeout (1 s by
	// default), so against an application transaction that locks rows in
	// another order the batch gives way first, without a deadlock error for
	// the application. A writer's own statement rarely holds a row that
	// long; one that does (a slow commit) is treated as a held row, and its
	// row waits for the next pass, as a row it rewrites would.
	sqlDeleteSettings = `
SELECT set_config('synchronous_commit', 'off', true),
       set_config('enable_seqscan', 'off', true),
       set_config('enable_bitmapscan', 'off', true),
       set_config('lock_timeout', '50ms', true)`

	// sqlRowBytes is a row's size as MaxBytes counts it: its key and value
	// as stored (after compression, in the table or its TOAST table;
	// pg_column_size reads an out-of-line value's size from its pointer,
	// without fetching it) plus RowOverhead.
	sqlRowBytes = `pg_column_size(key) + pg_column_size(value) + 44`

	// sqlAsyncCommit turns synchronous_commit off for the rest of the
	// current transaction only (see runTx).
	sqlAsyncCommit = `SELECT set_config('synchronous_commit', 'off', true)`

	// The batch deletes. Each one reads up to $1 rows in eviction order
	// (expires, then key, never-expiring NULLs last: the order of the
	// (expires, key) index) from the cursor on, deletes them by key,
	// re-checking in the DELETE itself that each is still due, and returns
	// how many it read, picked to remove and removed, their bytes, whether
	// the lock was held, and the last (expires, key) it picked, after which
	// the next batch starts. Starting each batch there, not at the start of
	// the range, is what keeps a pass's cost proportional to what it
	// removes: the index entries of rows removed by earlier batches stay in
	// the index until vacuum, and as long as any transaction holds an older
	// snapshot not even a scan may mark them dead, so a batch that started
	// over would read all of them again. The cursor compares with >=, and
	// the pass moves it just past the last row picked (that key followed by
	// \x01, the next string in the key column's C collation), so no batch
	// reads a row twice.
	//
	// The read takes no row lock. (On a table distributed by Citus the
	// culler runs the forms of citus.go instead: a multi-key DELETE there
	// reaches every shard at once.) The DELETE finds each row
	// by its key in the primary key index, so it locks rows in key order, as
	// every statement of dbcache does, and cannot deadlock with them. A row
	// a writer changed after the batch's snapshot is found in its newest
	// version: PostgreSQL waits for the writer, then re-checks the DELETE's
	// conditions on what the writer committed and removes the row only if
	// it is still due. The conditions are the cut-off, not only the key:
	// for the sweep, the row expired by the pass's start; for MaxAge, it was
	// written before the cut-off; for the cull, it still lies in the stretch
	// of eviction order the batch read (from the cursor to the last row
	// picked), so a row a writer rewrote with a later expiry has moved to
	// the end of eviction order and stays. Rows the DELETE leaves (rewritten
	// out of the range, or removed by someone else) are behind the cursor:
	// the next pass sees them as they are then. The batch's transaction sets
	// lock_timeout (sqlDeleteSettings), so a row held by a long transaction
	// fails the batch after that long instead of stalling the pass; the
	// pass then halves the batch until it finds the held row, and steps
	// over it (see pass.walk).
	//
	// The lock check: the held CTE, read once at the batch's start, reports
	// whether the lock transaction ($2, its virtual transaction ID, read on
	// the server) still holds an advisory lock. If that transaction ended
	// (its backend died, its connection was cut), the lock is gone, another
	// culler may have started, and the batch deletes nothing and says so:
	// the pass stops with ErrLockLost. The virtual ID names one transaction
	// for the server's lifetime, so no other backend's lock (a later culler,
	// an application's) can pass for it, and it holds no other advisory
	// lock. $3 false makes the batch read without deleting: how a pass
	// finds the row it steps over.
	//
	// The bytes are those of the rows as the batch read them (sqlRowBytes):
	// Citus refuses pg_column_size in a DELETE's RETURNING, and a row
	// rewritten in the batch's milliseconds and still removed counts at the
	// size it was read at.
	//
	// The cull statements take two more parameters, a byte budget and a
	// row count, and pick only the first rows of the batch, in order, that
	// the count calls for or that start before the budget is spent (no
	// budget: all of them): a cull for MaxBytes then stops within one row of
	// its target instead of within one batch.

	// sqlSweep removes rows that had expired at $4, from cursor ($5, $6).
	sqlSweep = `
WITH held AS MATERIALIZED (
       SELECT EXISTS (SELECT 1 FROM pg_locks
                       WHERE locktype = 'advisory' AND granted AND virtualtransaction = $2) AS ok),
     batch AS MATERIALIZED (
       SELECT expires, key FROM %[1]s
        WHERE expires <= $4 AND (expires, key) >= ($5, $6)
        ORDER BY expires, key
        LIMIT $1),
     gone AS (
       DELETE FROM %[1]s
        WHERE key = ANY (ARRAY (SELECT key FROM batch WHERE $3 AND (SELECT ok FROM held)))
          AND expires <= $4
       RETURNING key)
SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM batch), (SELECT count(*) FROM gone),
       0::int8, (SELECT ok FROM held), last.expires, last.key
  FROM (SELECT 1) one
  LEFT JOIN (SELECT expires, key FROM batch ORDER BY expires DESC, key DESC LIMIT 1) last ON true`

	// sqlAgeOut removes rows written before $4, from cursor (written_at $5,
	// key $6), through the partial index on (written_at, key): its
	// predicate is repeated here word for word so the planner uses it.
	sqlAgeOut = `
WITH held AS MATERIALIZED (
       SELECT EXISTS (SELECT 1 FROM pg_locks
                       WHERE locktype = 'advisory' AND granted AND virtualtransaction = $2) AS ok),
     batch AS MATERIALIZED (
       SELECT written_at, key FROM %[1]s
        WHERE (expires IS NULL OR expires - written_at > interval '1 hour')
          AND written_at < $4 AND (written_at, key) >= ($5, $6)
        ORDER BY written_at, key
        LIMIT $1),
     gone AS (
       DELETE FROM %[1]s
        WHERE key = ANY (ARRAY (SELECT key FROM batch WHERE $3 AND (SELECT ok FROM held)))
          AND written_at < $4
       RETURNING key)
SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM batch), (SELECT count(*) FROM gone),
       0::int8, (SELECT ok FROM held), last.written_at, last.key
  FROM (SELECT 1) one
  LEFT JOIN (SELECT written_at, key FROM batch ORDER BY written_at DESC, key DESC LIMIT 1) last ON true`

	// sqlCountAged counts, for a dry run, the rows written before $1 that
	// had not expired at $2, and their bytes.
	sqlCountAged = `
SELECT count(*), coalesce(sum(` + sqlRowBytes + `), 0)::int8 FROM %[1]s
 WHERE (expires IS NULL OR expires - written_at > interval '1 hour') AND written_at < $1
   AND (expires IS NULL OR expires > $2)`

	// sqlCullBefore culls rows with an expiry from cursor ($4, $5) up to,
	// not including, the boundary ($6, $7), a row with an expiry; $8 and $9
	// are the byte budget and the row count.
	sqlCullBefore = `
WITH held AS MATERIALIZED (
       SELECT EXISTS (SELECT 1 FROM pg_locks
                       WHERE locktype = 'advisory' AND granted AND virtualtransaction = $2) AS ok),
     batch AS MATERIALIZED (
       SELECT expires, key, ` + sqlRowBytes + ` AS b FROM %[1]s
        WHERE (expires, key) >= ($4, $5) AND (expires, key) < ($6, $7)
        ORDER BY expires, key
        LIMIT $1),
     pick AS MATERIALIZED (
       SELECT expires, key, b FROM (
              SELECT expires, key, b,
                     row_number() OVER w AS n, sum(b) OVER w AS run
                FROM batch WINDOW w AS (ORDER BY expires, key ROWS UNBOUNDED PRECEDING)) r
        WHERE $8::int8 IS NULL OR n <= $9 OR run - b < $8),
     last AS MATERIALIZED (
       SELECT expires, key FROM pick ORDER BY expires DESC, key DESC LIMIT 1),
     gone AS (
       DELETE FROM %[1]s
        WHERE key = ANY (ARRAY (SELECT key FROM pick WHERE $3 AND (SELECT ok FROM held)))
          AND (expires, key) >= ($4, $5)
          AND (expires, key) <= ((SELECT expires FROM last), (SELECT key FROM last))
       RETURNING key)
SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM pick), (SELECT count(*) FROM gone),
       (SELECT coalesce(sum(p.b), 0) FROM pick p JOIN gone g ON g.key = p.key)::int8,
       (SELECT ok FROM held), last.expires, last.key
  FROM (SELECT 1) one
  LEFT JOIN last ON true`

	// sqlCullTimed culls rows with an expiry from cursor ($4, $5) on, all
	// of them: the boundary is a never-expiring row, or there is none. $6
	// and $7 are the byte budget and the row count.
	sqlCullTimed = `
WITH held AS MATERIALIZED (
       SELECT EXISTS (SELECT 1 FROM pg_locks
                       WHERE locktype = 'advisory' AND granted AND virtualtransaction = $2) AS ok),
     batch AS MATERIALIZED (
       SELECT expires, key, ` + sqlRowBytes + ` AS b FROM %[1]s
        WHERE expires IS NOT NULL AND (expires, key) >= ($4, $5)
        ORDER BY expires, key
        LIMIT $1),
     pick AS MATERIALIZED (
       SELECT expires, key, b FROM (
              SELECT expires, key, b,
                     row_number() OVER w AS n, sum(b) OVER w AS run
                FROM batch WINDOW w AS (ORDER BY expires, key ROWS UNBOUNDED PRECEDING)) r
        WHERE $6::int8 IS NULL OR n <= $7 OR run - b < $6),
     last AS MATERIALIZED (
       SELECT expires, key FROM pick ORDER BY expires DESC, key DESC LIMIT 1),
     gone AS (
       DELETE FROM %[1]s
        WHERE key = ANY (ARRAY (SELECT key FROM pick WHERE $3 AND (SELECT ok FROM held)))
          AND (expires, key) >= ($4, $5)
          AND (expires, key) <= ((SELECT expires FROM last), (SELECT key FROM last))
       RETURNING key)
SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM pick), (SELECT count(*) FROM gone),
       (SELECT coalesce(sum(p.b), 0) FROM pick p JOIN gone g ON g.key = p.key)::int8,
       (SELECT ok FROM held), last.expires, last.key
  FROM (SELECT 1) one
  LEFT JOIN last ON true`

	// sqlCullNullBefore culls never-expiring rows from cursor key $4 up to,
	// not including, the boundary's key $5 (a never-expiring row); $6 and
	// $7 are the byte budget and the row count.
	sqlCullNullBefore = `
WITH held AS MATERIALIZED (
       SELECT EXISTS (SELECT 1 FROM pg_locks
                       WHERE locktype = 'advisory' AND granted AND virtualtransaction = $2) AS ok),
     batch AS MATERIALIZED (
       SELECT expires, key, ` + sqlRowBytes + ` AS b FROM %[1]s
        WHERE expires IS NULL AND key >= $4 AND key < $5
        ORDER BY expires, key
        LIMIT $1),
     pick AS MATERIALIZED (
       SELECT expires, key, b FROM (
              SELECT expires, key, b,
                     row_number() OVER w AS n, sum(b) OVER w AS run
                FROM batch WINDOW w AS (ORDER BY expires, key ROWS UNBOUNDED PRECEDING)) r
        WHERE $6::int8 IS NULL OR n <= $7 OR run - b < $6),
     last AS MATERIALIZED (
       SELECT expires, key FROM pick ORDER BY key DESC LIMIT 1),
     gone AS (
       DELETE FROM %[1]s
        WHERE key = ANY (ARRAY (SELECT key FROM pick WHERE $3 AND (SELECT ok FROM held)))
          AND expires IS NULL AND key >= $4 AND key <= (SELECT key FROM last)
       RETURNING key)
SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM pick), (SELECT count(*) FROM gone),
       (SELECT coalesce(sum(p.b), 0) FROM pick p JOIN gone g ON g.key = p.key)::int8,
       (SELECT ok FROM held), last.expires, last.key
  FROM (SELECT 1) one
  LEFT JOIN last ON true`

	// sqlCullNull culls never-expiring rows from cursor key $4 on, all of
	// them (there is no boundary: CullAll, or MaxBytes); $5 and $6 are the
	// byte budget and the row count.
	sqlCullNull = `
WITH held AS MATERIALIZED (
       SELECT EXISTS (SELECT 1 FROM pg_locks
                       WHERE locktype = 'advisory' AND granted AND virtualtransaction = $2) AS ok),
     batch AS MATERIALIZED (
       SELECT expires, key, ` + sqlRowBytes + ` AS b FROM %[1]s
        WHERE expires IS NULL AND key >= $4
        ORDER BY expires, key
        LIMIT $1),
     pick AS MATERIALIZED (
       SELECT expires, key, b FROM (
              SELECT expires, key, b,
                     row_number() OVER w AS n, sum(b) OVER w AS run
                FROM batch WINDOW w AS (ORDER BY expires, key ROWS UNBOUNDED PRECEDING)) r
        WHERE $5::int8 IS NULL OR n <= $6 OR run - b < $5),
     last AS MATERIALIZED (
       SELECT expires, key FROM pick ORDER BY key DESC LIMIT 1),
     gone AS (
       DELETE FROM %[1]s
        WHERE key = ANY (ARRAY (SELECT key FROM pick WHERE $3 AND (SELECT ok FROM held)))
          AND expires IS NULL AND key >= $4 AND key <= (SELECT key FROM last)
       RETURNING key)
SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM pick), (SELECT count(*) FROM gone),
       (SELECT coalesce(sum(p.b), 0) FROM pick p JOIN gone g ON g.key = p.key)::int8,
       (SELECT ok FROM held), last.expires, last.key
  FROM (SELECT 1) one
  LEFT JOIN last ON true`

	// sqlBoundary walks the eviction order backwards from its end, over
	// rows that had not expired at $1, and returns the row $2 + 1 from the
	// end: the earliest row the pass keeps, before which it culls. An
	// index walk of $2 + 1 entries.
	sqlBoundary = `
SELECT expires, key FROM %[1]s
 WHERE expires > $1 OR expires IS NULL
 ORDER BY expires DESC NULLS FIRST, key DESC
OFFSET $2 LIMIT 1`

	// sqlExpired counts the rows a sweep would remove now and returns its
	// "as of" time, for a dry run.
	sqlExpired = `SELECT now(), count(*) FROM %[1]s WHERE expires <= now()`

	// The counts of the rows before the boundary: how a pass confirms that
	// the table is over the limit (the rows it keeps plus at least
	// MaxEntries + 1 − keep before them), and what a dry run would cull.
	// Each is an index walk that stops at its limit.

	// sqlCountBefore counts, up to $4, the rows that had not expired at $1
	// before boundary ($2, $3), a row with an expiry.
	sqlCountBefore = `
SELECT count(*) FROM (SELECT 1 FROM %[1]s
                       WHERE expires > $1 AND (expires, key) < ($2, $3)
                       LIMIT $4) c`

	// sqlCountBeforeNull counts, up to $3, the rows that had not expired at
	// $1 before a never-expiring boundary with key $2.
	sqlCountBeforeNull = `
SELECT least((SELECT count(*) FROM (SELECT 1 FROM %[1]s WHERE expires > $1 LIMIT $3) t)
           + (SELECT count(*) FROM (SELECT 1 FROM %[1]s WHERE expires IS NULL AND key < $2 LIMIT $3) n),
             $3)`

	// sqlCountLive counts, up to $2, the rows that had not expired at $1.
	sqlCountLive = `
SELECT count(*) FROM (SELECT 1 FROM %[1]s WHERE expires > $1 OR expires IS NULL LIMIT $2) c`

	// sqlSizeInfo returns what the size estimate scales its sample by: the
	// table's pages, its TOAST table's live chunks as the cumulative
	// statistics count them, and the block size (which sets the chunk
	// size).
	sqlSizeInfo = `
SELECT pg_relation_size(c.oid) / current_setting('block_size')::int8,
       coalesce(pg_stat_get_live_tuples(c.reltoastrelid), 0),
       current_setting('block_size')::int8
  FROM pg_class c WHERE c.oid = to_regclass($1)`

	// sqlSizeSample reads the rows of a sample of $1 percent of the table's
	// pages and returns, over them: the rows; their bytes as they sit in
	// the table's own pages (an out-of-line value counts as its 18-byte
	// pointer); the bytes their out-of-line values leave unused in their
	// last TOAST chunk ($2 bytes a chunk); and their full sizes
	// (sqlRowBytes). A value is out of line when the row would exceed $3
	// bytes (TOAST_TUPLE_THRESHOLD) with it inline. The sample sees only
	// the rows visible to it, so dead rows are not counted; with $4 set,
	// rows that had expired by $4 are left out too.
	sqlSizeSample = `
SELECT count(*),
       coalesce(sum(44 + k + CASE WHEN ext THEN 18 ELSE v END), 0)::float8,
       coalesce(sum(CASE WHEN ext THEN ceil(v / $2::float8) * $2 - v ELSE 0 END), 0)::float8,
       coalesce(sum(44 + k + v), 0)::float8
  FROM (SELECT pg_column_size(key) AS k, pg_column_size(value) AS v,
               pg_column_size(key) + pg_column_size(value) + 40 > $3 AS ext
          FROM %[1]s TABLESAMPLE SYSTEM ($1)
         WHERE $4::timestamptz IS NULL OR expires IS NULL OR expires > $4) s`

	// sqlSizeFront walks eviction order from the front over the $2 first
	// rows that had not expired at $1, for a dry run, and returns: how many
	// of them a cull removes (every row up to the $4-th, and every row
	// before the running total of sizes reaches $3), their bytes, and how
	// many rows it walked.
	sqlSizeFront = `
SELECT count(*) FILTER (WHERE n <= $4 OR run - b < $3),
       coalesce(max(run) FILTER (WHERE n <= $4 OR run - b < $3), 0)::int8,
       count(*)
  FROM (SELECT b, row_number() OVER w AS n, sum(b) OVER w AS run
          FROM (SELECT expires, key, ` + sqlRowBytes + ` AS b FROM %[1]s
                 WHERE expires > $1 OR expires IS NULL
                 ORDER BY expires, key
                 LIMIT $2) f
        WINDOW w AS (ORDER BY expires, key ROWS UNBOUNDED PRECEDING)) x`

	// sqlEstimate is the table's live-row count as PostgreSQL's cumulative
	// statistics have it (pg_stat_user_tables.n_live_tup): every committed
	// insert and delete updates it, at no cost to the writer, once the
	// writing session flushes its statistics.
	sqlEstimate = `SELECT coalesce(pg_stat_get_live_tuples(to_regclass($1)), 0)`

	// sqlFlushStats makes this session's statistics reach the shared ones
	// when it next goes idle, at the end of this transaction.
	sqlFlushStats = `SELECT pg_stat_force_next_flush()`

	// sqlWalk counts the table's rows, stopping after $1.
	sqlWalk = `SELECT count(*) FROM (SELECT 1 FROM %[1]s LIMIT $1) t`

	// sqlHeartbeat is the lock transaction's sign of life.
	sqlHeartbeat = `SELECT 1`

	// sqlRecord writes a completed pass to the state table's single row.
	sqlRecord = `
INSERT INTO %[1]s AS s (singleton, last_pass_started_at, last_pass_finished_at,
       last_expired_removed, last_culled, last_count, last_count_exact, last_remaining,
       last_cull_at, passes, total_expired_removed, total_culled, runner)
VALUES (true, $1, statement_timestamp(), $2, $3, $4, $5, $6,
       CASE WHEN $3::int8 > 0 THEN statement_timestamp() END, 1, $2, $3, $7)
ON CONFLICT (singleton) DO UPDATE SET
       last_pass_started_at  = excluded.last_pass_started_at,
       last_pass_finished_at = excluded.last_pass_finished_at,
       last_expired_removed  = excluded.last_expired_removed,
       last_culled           = excluded.last_culled,
       last_count            = excluded.last_count,
       last_count_exact      = excluded.last_count_exact,
       last_remaining        = excluded.last_remaining,
       last_cull_at          = coalesce(excluded.last_cull_at, s.last_cull_at),
       passes                = s.passes + 1,
       total_expired_removed = s.total_expired_removed + excluded.total_expired_removed,
       total_culled          = s.total_culled + excluded.total_culled,
       runner                = excluded.runner`

	// sqlRecordV4 is sqlRecord with the columns migration 004 added: rows
	// aged out ($8), bytes culled ($9), the size estimate ($10) and the
	// limits ($11 max entries, $12 max bytes, $13 max age; NULL for none).
	sqlRecordV4 = `
INSERT INTO %[1]s AS s (singleton, last_pass_started_at, last_pass_finished_at,
       last_expired_removed, last_culled, last_count, last_count_exact, last_remaining,
       last_cull_at, passes, total_expired_removed, total_culled, runner,
       last_aged_out, total_aged_out, last_size, last_culled_bytes, max_entries, max_bytes, max_age)
VALUES (true, $1, statement_timestamp(), $2, $3, $4, $5, $6,
       CASE WHEN $3::int8 > 0 THEN statement_timestamp() END, 1, $2, $3, $7,
       $8, $8, $10, $9, $11, $12, $13)
ON CONFLICT (singleton) DO UPDATE SET
       last_pass_started_at  = excluded.last_pass_started_at,
       last_pass_finished_at = excluded.last_pass_finished_at,
       last_expired_removed  = excluded.last_expired_removed,
       last_culled           = excluded.last_culled,
       last_count            = excluded.last_count,
       last_count_exact      = excluded.last_count_exact,
       last_remaining        = excluded.last_remaining,
       last_cull_at          = coalesce(excluded.last_cull_at, s.last_cull_at),
       passes                = s.passes + 1,
       total_expired_removed = s.total_expired_removed + excluded.total_expired_removed,
       total_culled          = s.total_culled + excluded.total_culled,
       runner                = excluded.runner,
       last_aged_out         = excluded.last_aged_out,
       total_aged_out        = s.total_aged_out + excluded.total_aged_out,
       last_size             = excluded.last_size,
       last_culled_bytes     = excluded.last_culled_bytes,
       max_entries           = excluded.max_entries,
       max_bytes             = excluded.max_bytes,
       max_age               = excluded.max_age`

	// sqlLastPass reads the state row, with ages by the database clock.
	sqlLastPass = `
SELECT last_pass_started_at, last_pass_finished_at,
       extract(epoch FROM last_pass_finished_at - last_pass_started_at)::float8,
       extract(epoch FROM statement_timestamp() - last_pass_finished_at)::float8,
       last_expired_removed, last_culled, last_count, last_count_exact, last_remaining,
       last_cull_at,
       extract(epoch FROM statement_timestamp() - last_cull_at)::float8,
       passes, total_expired_removed, total_culled, runner
  FROM %[1]s`
)

// sqlLastPassV4 is sqlLastPass with the columns migration 004 added.
const sqlLastPassV4 = `
SELECT last_pass_started_at, last_pass_finished_at,
       extract(epoch FROM last_pass_finished_at - last_pass_started_at)::float8,
       extract(epoch FROM statement_timestamp() - last_pass_finished_at)::float8,
       last_expired_removed, last_culled, last_count, last_count_exact, last_remaining,
       last_cull_at,
       extract(epoch FROM statement_timestamp() - last_cull_at)::float8,
       passes, total_expired_removed, total_culled, runner,
       last_aged_out, total_aged_out, last_size, last_culled_bytes,
       max_entries, max_bytes, extract(epoch FROM max_age)::float8
  FROM %[1]s`

// sqlCheckAge is Start's check when Config.MaxAge is set: the written_at
// column (migration 004) and its index (005) are there.
const sqlCheckAge = `
SELECT EXISTS (SELECT 1 FROM pg_attribute
                WHERE attrelid = to_regclass($1) AND attname = 'written_at' AND NOT attisdropped),
       EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                WHERE i.indrelid = to_regclass($1) AND c.relname = 'dbcache_entries_written_at_idx' AND i.indisvalid)`
