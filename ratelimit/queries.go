package ratelimit

import "strings"

// The statements. Each check is one of them, correct under any
// interleaving on its own: none reads, decides in Go and then writes.
//
// Conventions (as dbcache's queries.go):
//   - TABLE is replaced at New by the (optionally schema-qualified) table
//     name, quoted with pgx.Identifier; every value is a bind parameter.
//   - Times are bigint nanoseconds since the Unix epoch by the database's
//     clock: (extract(epoch FROM clock_timestamp()) * 1e9)::bigint, exact
//     (extract returns numeric with the timestamp's six decimals). The
//     reading is taken once per statement, in a MATERIALIZED CTE, after the
//     statement has its table locks and its snapshot, so nothing but the
//     row's own lock can stand between the reading and the decision.
//   - Each write has a plain form and a FastCommit one (suffix Fast) that
//     runs set_config('synchronous_commit', 'off', true) (SET LOCAL) inside
//     the statement: no round trip, no session state, so it works behind
//     PgBouncer in transaction pooling. A volatile function in a FROM
//     subquery is always evaluated; TestFastCommitSetsSynchronousCommit
//     checks each Fast statement really sets it.
//   - The ON CONFLICT clause calls no function (Citus refuses any that is
//     not IMMUTABLE there): the time reaches it as EXCLUDED.tat.
//
// The check, GCRA (docs/ratelimit.md proves its bound):
//
//	$1 the key, $2 inc = n × T, $3 span = Burst × T (T the emission
//	interval, ns)
//	s:  the clock reading now and tat0 = max(the row's tat, now) as the
//	    statement's snapshot shows it (no row: now).
//	up: only when s does not already deny (tat0 + inc − span <= now),
//	    insert (key, now + inc); on a conflict, lock the newest version
//	    of the row and, only if the condition holds on it, set
//	    tat = max(tat, now) + inc. EXCLUDED.tat is now + inc, so
//	    max(tat, now) + inc is greatest(tat + inc, EXCLUDED.tat) and the
//	    condition max(tat, now) + inc − span <= now is
//	    greatest(tat + inc, EXCLUDED.tat) <= EXCLUDED.tat − inc + span.
//	Returns now, tat0 and the new tat (NULL: not admitted).
//
// A denial decided from the snapshot is right for the newest version too:
// tat never decreases (Sweep removes only rows whose tat has long passed,
// and a denial means tat > now). So such a denial writes nothing and takes
// no lock; only admissions, and the few checks the snapshot admits that
// find the units gone on the newest version, lock the row.
const (
	qCheck = `WITH c AS MATERIALIZED (
    SELECT (extract(epoch FROM clock_timestamp()) * 1000000000)::bigint AS now
), s AS MATERIALIZED (
    SELECT c.now, greatest(r.tat, c.now) AS tat0 FROM c LEFT JOIN TABLE AS r ON r.key = $1::text
), up AS (
    INSERT INTO TABLE AS r (key, tat)
    SELECT $1::text, s.now + $2::bigint FROM s WHERE s.tat0 + $2::bigint - $3::bigint <= s.now
    ON CONFLICT (key) DO UPDATE SET tat = greatest(r.tat + $2::bigint, EXCLUDED.tat)
    WHERE greatest(r.tat + $2::bigint, EXCLUDED.tat) <= EXCLUDED.tat - $2::bigint + $3::bigint
    RETURNING r.tat
)
SELECT s.now, s.tat0, (SELECT tat FROM up) FROM s`

	qCheckFast = `WITH c AS MATERIALIZED (
    SELECT (extract(epoch FROM clock_timestamp()) * 1000000000)::bigint AS now
    FROM (SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit
), s AS MATERIALIZED (
    SELECT c.now, greatest(r.tat, c.now) AS tat0 FROM c LEFT JOIN TABLE AS r ON r.key = $1::text
), up AS (
    INSERT INTO TABLE AS r (key, tat)
    SELECT $1::text, s.now + $2::bigint FROM s WHERE s.tat0 + $2::bigint - $3::bigint <= s.now
    ON CONFLICT (key) DO UPDATE SET tat = greatest(r.tat + $2::bigint, EXCLUDED.tat)
    WHERE greatest(r.tat + $2::bigint, EXCLUDED.tat) <= EXCLUDED.tat - $2::bigint + $3::bigint
    RETURNING r.tat
)
SELECT s.now, s.tat0, (SELECT tat FROM up) FROM s`

	// AllowN with n = 0: the state, read, nothing written.
	qPeek = `SELECT c.now, greatest(r.tat, c.now)
FROM (SELECT (extract(epoch FROM clock_timestamp()) * 1000000000)::bigint AS now) AS c
LEFT JOIN TABLE AS r ON r.key = $1::text`

	qReset = `DELETE FROM TABLE WHERE key = $1::text`

	qResetFast = `DELETE FROM TABLE USING (SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit
WHERE key = $1::text`

	// One batch of Sweep: the next $2 keys after $1 in the key column's
	// order (a bounded walk of the primary key that resumes where the last
	// batch stopped), and, of those, the rows whose tat is before the
	// cut-off (statement_timestamp() − $3 ns) deleted, each locked first
	// with SKIP LOCKED (a row an admission holds is left for the next
	// sweep; the lock's EvalPlanQual re-check reads the cut-off against the
	// newest version, so a row admitted since the walk's snapshot stays).
	// Returns the batch's size, its last key and the rows deleted.
	qSweep = `WITH b AS MATERIALIZED (
    SELECT key, tat FROM TABLE WHERE key > $1::text COLLATE "C" ORDER BY key COLLATE "C" LIMIT $2::int
), cut AS MATERIALIZED (
    SELECT (extract(epoch FROM statement_timestamp()) * 1000000000)::bigint - $3::bigint AS before
), d AS (
    DELETE FROM TABLE AS r WHERE r.key IN (
        SELECT x.key FROM TABLE AS x, cut
        WHERE x.key IN (SELECT b.key FROM b, cut WHERE b.tat < cut.before) AND x.tat < cut.before
        FOR UPDATE OF x SKIP LOCKED)
    RETURNING 1
)
SELECT (SELECT count(*) FROM b), (SELECT max(key COLLATE "C") FROM b), (SELECT count(*) FROM d)`
)

// statements is one table's statements, TABLE replaced.
type statements struct {
	check, peek, reset, sweep string
}

func newStatements(table string, fast bool) statements {
	r := strings.NewReplacer("TABLE", table)
	st := statements{check: r.Replace(qCheck), peek: r.Replace(qPeek), reset: r.Replace(qReset), sweep: r.Replace(qSweep)}
	if fast {
		st.check, st.reset = r.Replace(qCheckFast), r.Replace(qResetFast)
	}
	return st
}
