package lock

import (
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/dbcache/dbcache/dbcache"
)

// FencesTableName is the table of fencing tokens (migration 10).
const FencesTableName = "dbcache_lock_fences"

// The statements besides the lease's own (dbcache.Leaser's AcquireLease,
// which takes the lease). LEASES and FENCES are replaced at New by the
// quoted, schema-qualified table names; every value is a bind parameter.
// Each is one statement, decided by the database's clock.
const (
	// A grant's second step: the fence of a lease this token holds now.
	// The lease row is locked (FOR UPDATE) for the rest of the statement's
	// transaction, so no other acquire can take the lease over until the
	// fence has committed: an acquire that waits for the row re-reads it
	// afterwards and finds this live lease. If the lease ended in between
	// (it lapsed, or was taken over or forced free), no row is locked and
	// no fence is issued. The fence is durable when the caller learns it:
	// synchronous_commit is on for this statement's transaction whatever
	// the session's or the cache's setting. It returns the fence, when the
	// grant was made (this statement's timestamp: the lease's own start,
	// its acquire statement's, may precede the commit of a release it
	// waited for) and when the lease ends, by the database's clock.
	qFence = `WITH held AS (
  SELECT key, expires FROM LEASES
  WHERE key = $1 AND token = $2 AND expires > statement_timestamp()
  FOR UPDATE),
fenced AS (
  INSERT INTO FENCES AS f (name, fence)
  SELECT key, 1 FROM held, (SELECT set_config('synchronous_commit', 'on', true)) AS durable
  ON CONFLICT (name) DO UPDATE SET fence = f.fence + 1
  RETURNING fence)
SELECT fenced.fence, statement_timestamp(), held.expires FROM fenced, held`

	// Refresh: a new end for the live lease of this token, returned.
	qRefresh = `UPDATE LEASES SET expires = statement_timestamp() + $3::bigint * interval '1 microsecond'
WHERE key = $1 AND token = $2 AND expires > statement_timestamp()
RETURNING expires`

	// Release: removes the token's lease, live or lapsed (a lapsed row of
	// its own is garbage), and says whether it was live, and when.
	qRelease = `WITH d AS (DELETE FROM LEASES WHERE key = $1 AND token = $2 RETURNING expires)
SELECT expires > statement_timestamp(), statement_timestamp() FROM d`

	// Restore: the fence, start and end of the live lease of this token. The
	// fence row is the name's latest grant, which is this lease's while
	// the lease is live (a later grant takes the lease first).
	qRestore = `SELECT f.fence, l.acquired, l.expires FROM LEASES AS l JOIN FENCES AS f ON f.name = l.key
WHERE l.key = $1 AND l.token = $2 AND l.expires > statement_timestamp()`

	// Check, in the caller's transaction: the lease is this token's and
	// live, and stays this token's until the transaction ends (FOR SHARE:
	// an acquire waits for the row lock, then sees whatever the
	// transaction left).
	qCheck = `SELECT count(*) FROM (SELECT 1 FROM LEASES
WHERE key = $1 AND token = $2 AND expires > statement_timestamp() FOR SHARE) AS held`

	// ForceRelease: removes the name's lease, whoever holds it, and says
	// whether it was live.
	qForceRelease = `WITH d AS (DELETE FROM LEASES WHERE key = $1 RETURNING expires)
SELECT expires > statement_timestamp() FROM d`

	// Fence: the name's latest fencing token, 0 for none.
	qLatestFence = `SELECT coalesce((SELECT fence FROM FENCES WHERE name = $1), 0)`

	// At New: whether both tables exist, and the session's default
	// isolation level (a statement outside a transaction block runs at
	// it).
	qTables = `SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL, current_setting('transaction_isolation')`
)

type queries struct {
	leases, fences                                                     string
	fence, refresh, release, restore, check, forceRelease, latestFence string
}

func newQueries(schema string) queries {
	ident := func(name string) string {
		if schema == "" {
			return pgx.Identifier{name}.Sanitize()
		}
		return pgx.Identifier{schema, name}.Sanitize()
	}
	leases, fences := ident(dbcache.LeasesTableName), ident(FencesTableName)
	fill := func(sql string) string { return fillTables(sql, leases, fences) }
	return queries{
		leases: leases, fences: fences,
		fence: fill(qFence), refresh: fill(qRefresh), release: fill(qRelease), restore: fill(qRestore),
		check: fill(qCheck), forceRelease: fill(qForceRelease), latestFence: fill(qLatestFence),
	}
}

// fillTables replaces LEASES and FENCES in sql by the quoted table names.
func fillTables(sql, leases, fences string) string {
	return strings.NewReplacer("LEASES", leases, "FENCES", fences).Replace(sql)
}
