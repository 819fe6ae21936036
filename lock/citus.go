package lock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/citusmeta"
)

// The Citus forms (docs/scale-out.md#citus), for a cluster where
// dbcache_leases is distributed by key and dbcache_lock_fences by name,
// colocated with it. Citus routes a statement to one worker only when it
// names one key of one table (or colocated tables each filtered to the same
// key), refuses a VOLATILE function such as set_config where the plain
// grant puts it, and is not expected to route the plain grant's CTE, which
// locks a row of one table and upserts a row of the other. So the grant and
// Restore (the two statements that read both tables) are here one READ
// COMMITTED transaction of routed single-key statements; the lease's own
// statements (acquire, refresh, release, check, force release) and
// LatestFence already are single-table single-key statements and keep their
// plain forms.
//
// The settings reach the workers: Citus sends a transaction's SET LOCAL
// commands to the workers it opens the transaction on when
// citus.propagate_set_commands is 'local' (never set_config's). On plain
// PostgreSQL that setting is a placeholder, and SET LOCAL does what the
// plain grant's set_config does.
const (
	qCitusPropagate = `SET LOCAL citus.propagate_set_commands TO 'local'`
	// The fence is durable when the caller learns it, whatever the
	// session's setting: the transaction's commit waits for the flush.
	qCitusDurable = `SET LOCAL synchronous_commit TO on`

	// The grant's first statement: the live lease of this token, locked
	// FOR UPDATE until the transaction ends (so no acquire can take it over
	// before the fence commits: an acquire that waits for the row re-reads
	// it afterwards and finds this live lease), with when the grant was
	// made (this statement's timestamp). No row: the lease ended, no fence
	// is issued.
	qCitusHeld = `SELECT statement_timestamp(), expires FROM LEASES
WHERE key = $1 AND token = $2 AND expires > statement_timestamp()
FOR UPDATE`

	// The grant's second statement, only after qCitusHeld locked the row:
	// the name's next fence. Bare columns and constants only (Citus
	// refuses a non-IMMUTABLE function in ON CONFLICT's SET or RETURNING).
	qCitusFence = `INSERT INTO FENCES AS f (name, fence) VALUES ($1, 1)
ON CONFLICT (name) DO UPDATE SET fence = f.fence + 1
RETURNING fence`

	// Restore's first statement: the start and end of the live lease of
	// this token, locked FOR SHARE until the transaction ends, so no
	// acquire can take the lease over (and no later grant bump the fence)
	// before the fence is read.
	qCitusRestoreHeld = `SELECT acquired, expires FROM LEASES
WHERE key = $1 AND token = $2 AND expires > statement_timestamp()
FOR SHARE`

	// Restore's second statement: the name's latest fence, this lease's
	// while the lease is live and locked.
	qCitusRestoreFence = `SELECT fence FROM FENCES WHERE name = $1`

	// Detection at New, in two steps so a server without Citus never sees
	// pg_dist_partition named: whether the extension is installed, then
	// whether the leases table is distributed.
)

// rollbackTimeout bounds the rollback of a Citus transaction, which runs
// after the operation's own context may be done.
const rollbackTimeout = 5 * time.Second

// citusQueries holds the Citus forms with the table names filled in.
type citusQueries struct {
	held, fence, restoreHeld, restoreFence string
}

func newCitusQueries(q queries) *citusQueries {
	fill := func(sql string) string { return fillTables(sql, q.leases, q.fences) }
	return &citusQueries{
		held: fill(qCitusHeld), fence: fill(qCitusFence),
		restoreHeld: fill(qCitusRestoreHeld), restoreFence: fill(qCitusRestoreFence),
	}
}

// detectCitus decides at New whether the client uses the Citus forms.
func detectCitus(ctx context.Context, db citusmeta.Querier, mode dbcache.CitusMode, leases string) (bool, error) {
	switch mode {
	case dbcache.CitusOn:
		return true, nil
	case dbcache.CitusOff:
		return false, nil
	case dbcache.CitusAuto:
	default:
		return false, fmt.Errorf("lock: Config.Citus %d is not a CitusMode (CitusAuto, CitusOn or CitusOff)", int(mode))
	}
	distributed, err := citusmeta.Distributed(ctx, db, leases)
	if err != nil {
		return false, fmt.Errorf("lock: check for Citus: %w", err)
	}
	return distributed, nil
}

// UsesCitus reports whether the client runs the Citus forms (Config.Citus).
func (c *Client) UsesCitus() bool { return c.cq != nil }

// citusTx runs fn in one READ COMMITTED transaction on the pool, begun
// with the Citus settings (durable adds synchronous_commit on), committed
// when fn returns nil and rolled back otherwise, the rollback bounded even
// when ctx is done. fn's pgx.ErrNoRows rolls back and is returned as is.
func (c *Client) citusTx(ctx context.Context, durable bool, fn func(tx pgx.Tx) error) error {
	tx, err := c.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		_ = tx.Rollback(rctx)
	}()
	if _, err := tx.Exec(ctx, qCitusPropagate); err != nil {
		return err
	}
	if durable {
		if _, err := tx.Exec(ctx, qCitusDurable); err != nil {
			return err
		}
	}
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// citusGrant is the grant's fence step in the Citus form: the lease row
// locked, then the fence, in one durable transaction. pgx.ErrNoRows: the
// lease had ended, no fence was issued.
func (c *Client) citusGrant(ctx context.Context, k string, owner dbcache.LeaseToken) (fence int64, acquired, expires time.Time, err error) {
	err = c.citusTx(ctx, true, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, c.cq.held, k, string(owner)).Scan(&acquired, &expires); err != nil {
			return err
		}
		return tx.QueryRow(ctx, c.cq.fence, k).Scan(&fence)
	})
	return fence, acquired, expires, err
}

// citusRestore is Restore's read in the Citus form. pgx.ErrNoRows: the
// lease is not this owner's, or not live.
func (c *Client) citusRestore(ctx context.Context, k string, owner dbcache.LeaseToken) (fence int64, acquired, expires time.Time, err error) {
	err = c.citusTx(ctx, false, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, c.cq.restoreHeld, k, string(owner)).Scan(&acquired, &expires); err != nil {
			return err
		}
		err := tx.QueryRow(ctx, c.cq.restoreFence, k).Scan(&fence)
		if errors.Is(err, pgx.ErrNoRows) {
			// A live lease without a fence row is a lease a lock never
			// granted (the grant failed before its fence, or the key is
			// a loader's): not held, as the plain join finds no row.
			return pgx.ErrNoRows
		}
		return err
	})
	return fence, acquired, expires, err
}
