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
	sqlLock = `
SELECT t.oid::int8,
       pg_try_advisory_xact_lock($2::int4, (t.oid::int8 - 2147483648)::int4),
       now()
  FROM (SELECT to_regclass($1) AS oid,
               CASE WHEN $3::text IS NOT NULL
                    THEN set_config('idle_in_transaction_session_timeout', $3::text, true) END) t`

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

	// sqlAsyncCommit turns synchronous_commit off for the rest of the
	// current transaction only (see runTx).
	sqlAsyncCommit = `SELECT set_config('synchronous_commit', 'off', true)`

	// The batch deletes. Each one locks up to $1 rows in eviction order
	// (expires, then key, never-expiring NULLs last: the order of the
	// (expires, key) index) starting at the cursor, removes them, and
	// returns how many it locked and removed and the last (expires, key) it
	// locked, where the next batch starts. Starting each batch there, not
	// at the start of the range, is what keeps a pass's cost proportional
	// to what it removes: the index entries of rows removed by earlier
	// batches stay in the index until vacuum, and as long as any
	// transaction holds an older snapshot not even a scan may mark them
	// dead, so a batch that started over would read all of them again.
	//
	// The cursor compares with >=: it is a row this pass removed, so the
	// next batch reads one dead entry and never skips a live one.
	//
	// Rows are locked with SKIP LOCKED, so a batch never waits on a writer
	// holding one of them, and deleted by ctid, which the row lock pins:
	// measured six times faster than joining back on the primary key. The
	// delete also requires, in the same statement, that the lock
	// transaction's backend ($2, its pid) still holds its advisory lock: if
	// that backend died, the lock is gone, another culler may have started,
	// and the batch deletes nothing; the pass then sees locked > removed
	// and stops. (The lock transaction holds no other advisory lock, so
	// the pid alone identifies it.)
	//
	// The last row is the largest locked (expires, key): the scan's order,
	// except that a row a writer changed while the batch waited for it is
	// rechecked and returned with its new values, which can place it later
	// in the range; the next batch then starts there, and the rows it
	// skipped wait for the next pass, like the rows writers hold.

	// sqlSweep removes rows that had expired at $3, from cursor ($4, $5).
	sqlSweep = `
WITH batch AS MATERIALIZED (
       SELECT ctid, expires, key FROM %[1]s
        WHERE expires <= $3 AND (expires, key) >= ($4, $5)
        ORDER BY expires, key
        LIMIT $1
          FOR UPDATE SKIP LOCKED),
     gone AS (
       DELETE FROM %[1]s
        WHERE ctid = ANY (ARRAY (SELECT ctid FROM batch))
          AND EXISTS (SELECT 1 FROM pg_locks
                       WHERE locktype = 'advisory' AND pid = $2 AND granted)
       RETURNING 1)
SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM gone), last.expires, last.key
  FROM (SELECT 1) one
  LEFT JOIN (SELECT expires, key FROM batch ORDER BY expires DESC, key DESC LIMIT 1) last ON true`

	// sqlCullBefore culls rows with an expiry from cursor ($3, $4) up to,
	// not including, the boundary ($5, $6), a row with an expiry.
	sqlCullBefore = `
WITH batch AS MATERIALIZED (
       SELECT ctid, expires, key FROM %[1]s
        WHERE (expires, key) >= ($3, $4) AND (expires, key) < ($5, $6)
        ORDER BY expires, key
        LIMIT $1
          FOR UPDATE SKIP LOCKED),
     gone AS (
       DELETE FROM %[1]s
        WHERE ctid = ANY (ARRAY (SELECT ctid FROM batch))
          AND EXISTS (SELECT 1 FROM pg_locks
                       WHERE locktype = 'advisory' AND pid = $2 AND granted)
       RETURNING 1)
SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM gone), last.expires, last.key
  FROM (SELECT 1) one
  LEFT JOIN (SELECT expires, key FROM batch ORDER BY expires DESC, key DESC LIMIT 1) last ON true`

	// sqlCullTimed culls rows with an expiry from cursor ($3, $4) on, all
	// of them: the boundary is a never-expiring row, or there is none.
	sqlCullTimed = `
WITH batch AS MATERIALIZED (
       SELECT ctid, expires, key FROM %[1]s
        WHERE expires IS NOT NULL AND (expires, key) >= ($3, $4)
        ORDER BY expires, key
        LIMIT $1
          FOR UPDATE SKIP LOCKED),
     gone AS (
       DELETE FROM %[1]s
        WHERE ctid = ANY (ARRAY (SELECT ctid FROM batch))
          AND EXISTS (SELECT 1 FROM pg_locks
                       WHERE locktype = 'advisory' AND pid = $2 AND granted)
       RETURNING 1)
SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM gone), last.expires, last.key
  FROM (SELECT 1) one
  LEFT JOIN (SELECT expires, key FROM batch ORDER BY expires DESC, key DESC LIMIT 1) last ON true`

	// sqlCullNullBefore culls never-expiring rows from cursor key $3 up to,
	// not including, the boundary's key $4 (a never-expiring row).
	sqlCullNullBefore = `
WITH batch AS MATERIALIZED (
       SELECT ctid, expires, key FROM %[1]s
        WHERE expires IS NULL AND key >= $3 AND key < $4
        ORDER BY expires, key
        LIMIT $1
          FOR UPDATE SKIP LOCKED),
     gone AS (
       DELETE FROM %[1]s
        WHERE ctid = ANY (ARRAY (SELECT ctid FROM batch))
          AND EXISTS (SELECT 1 FROM pg_locks
                       WHERE locktype = 'advisory' AND pid = $2 AND granted)
       RETURNING 1)
SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM gone), last.expires, last.key
  FROM (SELECT 1) one
  LEFT JOIN (SELECT expires, key FROM batch ORDER BY key DESC LIMIT 1) last ON true`

	// sqlCullNull culls never-expiring rows from cursor key $3 on, all of
	// them (there is no boundary: CullAll).
	sqlCullNull = `
WITH batch AS MATERIALIZED (
       SELECT ctid, expires, key FROM %[1]s
        WHERE expires IS NULL AND key >= $3
        ORDER BY expires, key
        LIMIT $1
          FOR UPDATE SKIP LOCKED),
     gone AS (
       DELETE FROM %[1]s
        WHERE ctid = ANY (ARRAY (SELECT ctid FROM batch))
          AND EXISTS (SELECT 1 FROM pg_locks
                       WHERE locktype = 'advisory' AND pid = $2 AND granted)
       RETURNING 1)
SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM gone), last.expires, last.key
  FROM (SELECT 1) one
  LEFT JOIN (SELECT expires, key FROM batch ORDER BY key DESC LIMIT 1) last ON true`

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
