package culling

// The package's SQL. %[1]s is the sanitized (schema-qualified when
// Config.Schema is set) table name, filled in with fmt.Sprintf; everything
// else is a bind parameter.

const (
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

	// sqlSweep removes up to $2 rows that had expired at $1, soonest first.
	// The rows are found through the expires index and locked with SKIP
	// LOCKED, so the sweep never waits on a writer holding one of them, and
	// deleted by ctid, which the row lock pins: measured six times faster
	// than joining back on the primary key.
	sqlSweep = `
DELETE FROM %[1]s
 WHERE ctid = ANY (ARRAY (
       SELECT ctid FROM %[1]s
        WHERE expires <= $1
        ORDER BY expires
        LIMIT $2
          FOR UPDATE SKIP LOCKED))
   AND EXISTS (SELECT 1 FROM pg_locks
                WHERE locktype = 'advisory' AND pid = $3 AND granted)`

	// Both deletes also require, in the same statement, that the lock
	// transaction's backend ($3 and $2, its pid) still holds its advisory
	// lock: if that backend died, the lock is gone, another culler may
	// have started, and the batch deletes nothing. The heartbeat then tells
	// the pass it lost the lock. (The lock transaction holds no other
	// advisory lock, so the pid alone identifies it.)

	// sqlCull removes up to $1 rows in eviction order: soonest to expire
	// first, never-expiring (NULL) last. ORDER BY expires is ascending with
	// NULLS LAST, the expires index's own order, so this is a bounded index
	// walk.
	sqlCull = `
DELETE FROM %[1]s
 WHERE ctid = ANY (ARRAY (
       SELECT ctid FROM %[1]s
        ORDER BY expires
        LIMIT $1
          FOR UPDATE SKIP LOCKED))
   AND EXISTS (SELECT 1 FROM pg_locks
                WHERE locktype = 'advisory' AND pid = $2 AND granted)`

	// sqlAsyncCommit turns synchronous_commit off for the rest of the
	// current transaction only (see execAsync).
	sqlAsyncCommit = `SELECT set_config('synchronous_commit', 'off', true)`

	// sqlEstimate is the table's live-row count as PostgreSQL's cumulative
	// statistics have it (pg_stat_user_tables.n_live_tup): every committed
	// insert and delete updates it, at no cost to the writer, once the
	// writing session flushes its statistics.
	sqlEstimate = `SELECT pg_stat_get_live_tuples($1::oid)`

	// sqlWalk counts the table's rows, stopping after $1.
	sqlWalk = `SELECT count(*) FROM (SELECT 1 FROM %[1]s LIMIT $1) t`

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
