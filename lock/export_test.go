package lock

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbcache/dbcache/dbcache"
)

// Timeline returns, by the database's clock, when l was granted (its
// fence's statement), when its lease ends as far as this process knows
// (after its last Refresh), and when Release removed it (zero if not).
func Timeline(l *Lock) (granted, expires, released time.Time) {
	load := func(p *time.Time) time.Time {
		if p == nil {
			return time.Time{}
		}
		return *p
	}
	return load(l.acquired.Load()), load(l.expires.Load()), load(l.released.Load())
}

// FenceStatement is the grant's fence statement, with its table names.
func FenceStatement(c *Client) string { return c.q.fence }

// MadeKey is name's lease key.
func MadeKey(c *Client, name string) string { return c.cache.MakeKey(name) }

// GrantFence runs the grant's fence step (the plain statement or its Citus
// form, as c uses) for owner's lease of name, as try does after the lease:
// ErrLocked when the lease is not owner's and live.
func GrantFence(ctx context.Context, c *Client, name string, owner dbcache.LeaseToken) (int64, error) {
	k := c.cache.MakeKey(name)
	var (
		fence             int64
		acquired, expires time.Time
		err               error
	)
	if c.cq != nil {
		fence, _, _, err = c.citusGrant(ctx, k, owner)
	} else {
		err = c.run.WriteRow(ctx, c.q.fence, []any{k, string(owner)}, &fence, &acquired, &expires)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, ErrLocked
	}
	return fence, err
}

// CitusGrantSetting is synchronous_commit as the Citus grant's transaction
// sees it after its settings.
func CitusGrantSetting(ctx context.Context, c *Client) (string, error) {
	var s string
	err := c.citusTx(ctx, true, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT current_setting('synchronous_commit')`).Scan(&s)
	})
	return s, err
}
