package dbcache

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"

	"github.com/jackc/pgx/v5"
)

// Compare-and-swap: memcached's gets and cas, with Go's naming. A read
// returns the entry's token with its value; a write that names the token
// succeeds only if the entry has not been written since.

// Token identifies one write of an entry's value, as GetWithToken returns
// it: opaque, compared only for equality, and meaningful only for the key
// it was read from. Every write that stores a value (Set, SetMany, Add and
// GetOrSet when they store, Incr, Decr, IncrVersion at the key it moves
// to, CompareAndSwap) gives the entry a new token; Touch keeps it.
//
// A Cache's tokens are 64 random bits drawn on every such write (migration
// 9: by the database for inserts and upserts, by this package, from
// crypto/rand, for the updates of Incr and CompareAndSwap), not a counter: an entry deleted and written again
// gets a token unrelated to the one before, so a token read before the
// delete does not match the new entry (no ABA) except by a 1 in 2^64
// chance. An entry no write has touched since migration 9 has token 0.
type Token uint64

// CompareAndSwapper is an optional capability of a Store: reads that return
// the entry's Token, and writes that succeed only if the entry still has
// it. *Cache implements it, as do the sharded cache (each key on its
// shard), the near cache and memstore's Store.
//
// Read-modify-write without a lock:
//
//	for {
//		v, tok, err := cas.GetWithToken(ctx, key)
//		if err != nil { … } // ErrMiss: Add instead
//		ok, err := cas.CompareAndSwap(ctx, key, tok, modify(v), timeout)
//		if err != nil { … }
//		if ok { break } // else another write came first: read again
//	}
type CompareAndSwapper interface {
	// GetWithToken is Get that also returns the entry's token.
	GetWithToken(ctx context.Context, key string) ([]byte, Token, error)
	// CompareAndSwap stores value under key, expiring as timeout says,
	// only if key has a live entry whose token is token, and reports
	// whether it did. It returns false, nil when the entry was written
	// since, or deleted, or expired: it never creates an entry.
	CompareAndSwap(ctx context.Context, key string, token Token, value []byte, timeout Timeout) (bool, error)
	// CompareAndDelete removes key's entry only if it is live and its
	// token is token, and reports whether it did.
	CompareAndDelete(ctx context.Context, key string, token Token) (bool, error)
}

var _ CompareAndSwapper = (*Cache)(nil)

// The operations' names, as Tracer sees them.
const (
	OpCompareAndDelete = "compare_and_delete"
	OpCompareAndSwap   = "compare_and_swap"
	OpGetWithToken     = "get_with_token"
)

// The statements, written out as queries.go writes every statement. A token
// is coalesce(token, 0): rows written before migration 9 have none. Each
// write is one UPDATE or DELETE whose WHERE names the token, so under READ
// COMMITTED two racing swaps of one token cannot both succeed: the second
// waits for the first's row lock, then re-checks its WHERE against the row
// the first committed (PostgreSQL's EvalPlanQual), whose token is new, and
// changes nothing. The new token is drawn here (newToken), as Incr's is:
// Citus refuses a volatile function, such as the column's default, in an
// UPDATE's SET (docs/scale-out.md).
const (
	qGetWithToken = `SELECT value, coalesce(token, 0) FROM TABLE WHERE key = $1 AND (expires IS NULL OR expires > statement_timestamp())`

	qCompareAndSwap = `UPDATE TABLE SET value = $3, expires = statement_timestamp() + $4::bigint * interval '1 microsecond',
  written_at = statement_timestamp(), token = $5::bigint
WHERE key = $1 AND coalesce(token, 0) = $2::bigint AND (expires IS NULL OR expires > statement_timestamp())`

	qCompareAndSwapFast = `UPDATE TABLE SET value = $3, expires = statement_timestamp() + $4::bigint * interval '1 microsecond',
  written_at = statement_timestamp(), token = $5::bigint
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit
WHERE key = $1 AND coalesce(token, 0) = $2::bigint AND (expires IS NULL OR expires > statement_timestamp())`

	qCompareAndDelete = `DELETE FROM TABLE WHERE key = $1 AND coalesce(token, 0) = $2::bigint AND (expires IS NULL OR expires > statement_timestamp())`

	qCompareAndDeleteFast = `DELETE FROM TABLE USING (SELECT set_config('synchronous_commit', 'off', true)) AS fast_commit
WHERE key = $1 AND coalesce(token, 0) = $2::bigint AND (expires IS NULL OR expires > statement_timestamp())`
)

// GetWithToken returns the value stored under key and its Token, or ErrMiss
// if there is no live entry.
func (c *Cache) GetWithToken(ctx context.Context, key string) (_ []byte, _ Token, err error) {
	k, err := c.key(ctx, key)
	if err != nil {
		return nil, 0, err
	}
	ctx, tr := c.trace(ctx, OpGetWithToken, 1)
	if tr != nil {
		defer func() { tr.read(err) }()
	}
	if err := c.checkOpen(); err != nil {
		return nil, 0, err
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	var (
		v   []byte
		tok int64
	)
	if err := c.db.QueryRow(ctx, c.q.getWithToken, k).Scan(&v, &tok); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, 0, ErrMiss
		}
		if c.degrade(ctx, "get", err) {
			return nil, 0, ErrMiss
		}
		return nil, 0, c.wrapErr("get", err)
	}
	return nonNil(v), Token(tok), nil
}

// CompareAndSwap stores value under key, expiring as timeout says, only if
// key has a live entry whose token is token (from GetWithToken), in one
// statement, and reports whether it did. It returns false when the entry
// was written since (by any writer, this one included), deleted or
// expired, and never creates an entry. Of any number of concurrent
// CompareAndSwaps of one key and token, at most one returns true. Under
// Config.FailOpen a transient failure is false, nil.
func (c *Cache) CompareAndSwap(ctx context.Context, key string, token Token, value []byte, timeout Timeout) (ok bool, err error) {
	k, err := c.key(ctx, key)
	if err != nil {
		return false, err
	}
	ctx, tr := c.trace(ctx, OpCompareAndSwap, 1)
	if tr != nil {
		defer func() { tr.wrote(1, b2i(ok), err) }()
	}
	if err := c.checkOpen(); err != nil {
		return false, err
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	tag, err := c.execWrite(ctx, c.q.compareAndSwap, k, int64(token), nonNil(value), timeout.micros(c.s.cfg.DefaultTimeout), newToken())
	if err != nil {
		if c.degrade(ctx, "compare_and_swap", err) {
			return false, nil
		}
		return false, c.wrapErr("compare_and_swap", err)
	}
	ok = tag.RowsAffected() > 0
	c.wrote(b2i(ok))
	return ok, nil
}

// CompareAndDelete removes key's entry only if it is live and its token is
// token (from GetWithToken), in one statement, and reports whether it did.
// Under Config.FailOpen a transient failure is false, nil.
func (c *Cache) CompareAndDelete(ctx context.Context, key string, token Token) (ok bool, err error) {
	k, err := c.key(ctx, key)
	if err != nil {
		return false, err
	}
	ctx, tr := c.trace(ctx, OpCompareAndDelete, 1)
	if tr != nil {
		defer func() { tr.found(ok, err) }()
	}
	if err := c.checkOpen(); err != nil {
		return false, err
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	tag, err := c.execWrite(ctx, c.q.compareAndDelete, k, int64(token))
	if err != nil {
		if c.degrade(ctx, "compare_and_delete", err) {
			return false, nil
		}
		return false, c.wrapErr("compare_and_delete", err)
	}
	return tag.RowsAffected() > 0, nil
}

// newToken is a new entry token for an UPDATE that stores a value (Incr,
// CompareAndSwap): 64 bits from crypto/rand, as the column's default draws
// them for inserts, never 0 (a row written before migration 9).
func newToken() int64 {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24)
	if t := int64(binary.LittleEndian.Uint64(b[:])); t != 0 {
		return t
	}
	return 1
}
