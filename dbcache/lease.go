package dbcache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Leases: short claims on a key, in a table of their own (dbcache_leases,
// migration 8), decided by the database's clock and fenced by a random
// token. GetOrSetFunc's loaders take one so that one process loads a
// missing key while the others wait, holding no connection; locks build
// on them.

// LeaseTTLMin and LeaseTTLMax bound the length of a lease (AcquireLease's
// and ExtendLease's ttl): below a millisecond a lease would lapse in the
// round trip that took it; a holder that needs more than a day extends.
const (
	LeaseTTLMin = time.Millisecond
	LeaseTTLMax = 24 * time.Hour
)

// LeasesTableName is the table of leases (migration 8).
const LeasesTableName = "dbcache_leases"

// ErrInvalidLease is returned for a lease argument a Leaser refuses: a ttl
// outside [LeaseTTLMin, LeaseTTLMax], or a token that is not one
// AcquireLease returns. Nothing changes.
var ErrInvalidLease = errors.New("dbcache: invalid lease")

// LeaseToken identifies one acquisition of a lease. It is opaque: 128
// random bits (crypto/rand) as 32 hexadecimal characters, so two
// acquisitions never share one and no holder can guess another's.
type LeaseToken string

// leaseTokenLen is a LeaseToken's length in characters.
const leaseTokenLen = 32

// NewLeaseToken returns a new random LeaseToken, for a Leaser implemented
// outside this package.
func NewLeaseToken() LeaseToken {
	var b [leaseTokenLen / 2]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24)
	return LeaseToken(hex.EncodeToString(b[:]))
}

// CheckLeaseToken returns an error matching ErrInvalidLease unless t has
// the form of a token NewLeaseToken returns.
func CheckLeaseToken(t LeaseToken) error {
	if len(t) != leaseTokenLen {
		return fmt.Errorf("%w: the token is not one AcquireLease returned (%d characters)", ErrInvalidLease, len(t))
	}
	for i := 0; i < len(t); i++ {
		if c := t[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fmt.Errorf("%w: the token is not one AcquireLease returned", ErrInvalidLease)
		}
	}
	return nil
}

// CheckLeaseTTL returns an error matching ErrInvalidLease unless ttl is
// within [LeaseTTLMin, LeaseTTLMax].
func CheckLeaseTTL(ttl time.Duration) error {
	if ttl < LeaseTTLMin || ttl > LeaseTTLMax {
		return fmt.Errorf("%w: ttl %v is outside [%v, %v]", ErrInvalidLease, ttl, LeaseTTLMin, LeaseTTLMax)
	}
	return nil
}

// Lease is what AcquireLease found.
type Lease struct {
	// Acquired reports whether the call took the lease: no live lease
	// held the key (an expired one is taken over).
	Acquired bool
	// Token is the new lease's token when Acquired, for ExtendLease,
	// ReleaseLease and a fenced write; empty otherwise.
	Token LeaseToken
	// Remaining is how long the lease has left by the store's clock:
	// the new one's ttl when Acquired, the holder's remaining time
	// otherwise (0 when it ends as the call returns).
	Remaining time.Duration
}

// The lease statements, on the leases table (LEASES, replaced at New as
// TABLE is). Each is one single-key statement (Citus routes it to the
// key's worker), decided by statement_timestamp(). The table is UNLOGGED:
// a transaction that writes only it writes no WAL, so its commit waits for
// no flush and the statements need no FastCommit forms.
const (
	// Takes the lease if no live lease holds the key, in one statement
	// whatever the interleaving: the insert, or the update of the key's
	// row, which at READ COMMITTED re-reads the newest version under its
	// row lock. The update always returns the row as it now is (the
	// holder's, unchanged, when the lease is live), so the statement says
	// who holds it and for how long; the CASEs compare with
	// EXCLUDED.acquired, the insert's default statement_timestamp(), since
	// Citus refuses a function call in ON CONFLICT. The CTE computes the
	// remaining time outside the INSERT's RETURNING, as qDelete does.
	qLeaseAcquire = `WITH got AS (
INSERT INTO LEASES AS l (key, token, expires) VALUES ($1, $2, statement_timestamp() + $3::bigint * interval '1 microsecond')
ON CONFLICT (key) DO UPDATE SET
  token    = CASE WHEN l.expires <= EXCLUDED.acquired THEN EXCLUDED.token ELSE l.token END,
  expires  = CASE WHEN l.expires <= EXCLUDED.acquired THEN EXCLUDED.expires ELSE l.expires END,
  acquired = CASE WHEN l.expires <= EXCLUDED.acquired THEN EXCLUDED.acquired ELSE l.acquired END
RETURNING token, expires)
SELECT token = $2::text, greatest((extract(epoch FROM expires - statement_timestamp()) * 1000000)::bigint, 0) FROM got`

	// Extends only the live lease of this token.
	qLeaseExtend = `UPDATE LEASES SET expires = statement_timestamp() + $3::bigint * interval '1 microsecond'
WHERE key = $1 AND token = $2 AND expires > statement_timestamp()`

	// Removes the token's lease, live or expired (an expired row of its
	// own is garbage), and says whether it was live.
	qLeaseRelease = `WITH d AS (DELETE FROM LEASES WHERE key = $1 AND token = $2 RETURNING expires)
SELECT expires > statement_timestamp() FROM d`
)

// AcquireLease takes key's lease for ttl unless a live lease holds it (see
// Leaser). It is one statement on the leases table (migration 8; without
// it the error matches ErrSchemaBehind). In a WithTx view it runs in the
// caller's transaction: other sessions see the lease only once it
// commits.
func (c *Cache) AcquireLease(ctx context.Context, key string, ttl time.Duration) (Lease, error) {
	k, err := c.key(ctx, key)
	if err != nil {
		return Lease{}, err
	}
	if err := CheckLeaseTTL(ttl); err != nil {
		return Lease{}, err
	}
	return c.acquireLease(ctx, k, ttl)
}

// acquireLease is AcquireLease of the made key k.
func (c *Cache) acquireLease(ctx context.Context, k string, ttl time.Duration) (Lease, error) {
	if err := c.checkOpen(); err != nil {
		return Lease{}, err
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	token := NewLeaseToken()
	var (
		ours      bool
		remaining int64
	)
	if err := c.rowWrite(ctx, c.q.leaseAcquire, []any{k, string(token), ttl.Microseconds()}, &ours, &remaining); err != nil {
		return Lease{}, c.wrapLeaseErr("acquire_lease", err)
	}
	l := Lease{Acquired: ours, Remaining: time.Duration(remaining) * time.Microsecond}
	if ours {
		l.Token = token
	}
	return l, nil
}

// ExtendLease gives the live lease held with token a new ttl from now (see
// Leaser).
func (c *Cache) ExtendLease(ctx context.Context, key string, token LeaseToken, ttl time.Duration) (bool, error) {
	k, err := c.key(ctx, key)
	if err != nil {
		return false, err
	}
	if err := CheckLeaseToken(token); err != nil {
		return false, err
	}
	if err := CheckLeaseTTL(ttl); err != nil {
		return false, err
	}
	return c.extendLease(ctx, k, token, ttl)
}

// ReleaseLease ends the lease held with token (see Leaser).
func (c *Cache) ReleaseLease(ctx context.Context, key string, token LeaseToken) (bool, error) {
	k, err := c.key(ctx, key)
	if err != nil {
		return false, err
	}
	if err := CheckLeaseToken(token); err != nil {
		return false, err
	}
	return c.releaseLease(ctx, k, token)
}

func (c *Cache) releaseLease(ctx context.Context, k string, token LeaseToken) (bool, error) {
	if err := c.checkOpen(); err != nil {
		return false, err
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	var live bool
	err := c.rowWrite(ctx, c.q.leaseRelease, []any{k, string(token)}, &live)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, c.wrapLeaseErr("release_lease", err)
	}
	return live, nil
}

// wrapLeaseErr is wrapErr for a lease statement: a missing leases table
// means the schema predates migration 8.
func (c *Cache) wrapLeaseErr(op string, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" && !c.s.closed.Load() {
		return fmt.Errorf("dbcache: %s: %w: the leases table (%s, migration 8) is missing: run `dbcache migrate up`: %w", op, ErrSchemaBehind, LeasesTableName, err)
	}
	return c.wrapErr(op, err)
}

// The loaders' fenced writes in the Citus forms (docs/scale-out.md#citus).
// The plain forms (qGetOrSetLeased, qSetLeased) are one INSERT … SELECT
// whose SELECT reads no table in its FROM and locks the key's lease row
// FOR SHARE in a WHERE EXISTS sublink: a statement over two tables that
// Citus is not known to route to one worker even when dbcache_leases is
// colocated with the cache table (its INSERT … SELECT planner pushes a
// SELECT down only when the SELECT's FROM carries the target's
// distribution column, and otherwise runs the SELECT apart from the
// insert), and whose FastCommit forms put set_config, VOLATILE, in a
// modification's FROM. So each is here one READ COMMITTED transaction of
// two routed single-key statements, run in the same order as the plain
// form locks the rows: the key's lease row locked FOR SHARE while this
// token holds it live (an acquire that would take the lease over waits for
// this transaction's commit; one that committed first changed the token,
// and the row is not found), then, only if it was, the entry's single-key
// upsert (the plain form's ON CONFLICT, with VALUES instead of the
// SELECT). No lease row: nothing is written, pgx.ErrNoRows, as the plain
// form's empty RETURNING. The lease row is locked before the entry row, as
// in the plain form, so the two cannot deadlock with each other or with
// it.
const (
	qCitusLeaseShare = `SELECT 1 FROM LEASES WHERE key = $1 AND token = $2 AND expires > statement_timestamp() FOR SHARE`

	qCitusGetOrSetLeased = `INSERT INTO TABLE AS t (key, value, expires) VALUES ($1, $2, statement_timestamp() + $3::bigint * interval '1 microsecond')
ON CONFLICT (key) DO UPDATE SET
  value   = CASE WHEN t.expires <= EXCLUDED.written_at THEN EXCLUDED.value ELSE t.value END,
  expires = CASE WHEN t.expires <= EXCLUDED.written_at THEN EXCLUDED.expires ELSE t.expires END,
  written_at = CASE WHEN t.expires <= EXCLUDED.written_at THEN EXCLUDED.written_at ELSE t.written_at END,
  token = CASE WHEN t.expires <= EXCLUDED.written_at THEN EXCLUDED.token ELSE t.token END
RETURNING value`

	qCitusSetLeased = `INSERT INTO TABLE AS t (key, value, expires) VALUES ($1, $2, statement_timestamp() + $3::bigint * interval '1 microsecond')
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires, written_at = EXCLUDED.written_at, token = EXCLUDED.token
RETURNING true`
)

// fencedWrite runs a loader's fenced write: plain (qGetOrSetLeased or
// qSetLeased, args key, value, expiry micros, token) scanned into dest, or,
// when the cache uses the Citus forms, citus (its Citus form) after the
// lease row's lock, in one transaction. pgx.ErrNoRows: the lease was not
// live, nothing was stored.
func (c *Cache) fencedWrite(ctx context.Context, plain, citus string, args []any, dest any) error {
	if c.s.cq.Load() == nil {
		return c.rowWrite(ctx, plain, args, dest)
	}
	run := func(db dbtx) error {
		rows, err := db.Query(ctx, c.q.citusLeaseShare, args[0], args[3])
		if err != nil {
			return err
		}
		held := rows.Next()
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if !held {
			return pgx.ErrNoRows
		}
		return db.QueryRow(ctx, citus, args[0], args[1], args[2]).Scan(dest)
	}
	if !c.onPool() {
		return run(c.db)
	}
	err := c.citusMoveTx(ctx, run)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) && ctx.Err() == nil && c.retryable(err) {
		err = c.citusMoveTx(ctx, run)
	}
	return err
}
