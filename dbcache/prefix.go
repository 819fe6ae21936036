package dbcache

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// Remaining lifetime and namespaces: TTL, GetWithTTL, DeletePrefix, Keys.

// ErrPrefixUnsupported is returned by DeletePrefix and Keys when the
// cache's KeyFunc does not keep the caller's key at the end of the stored
// key, so the stored keys of one caller prefix are not one range.
var ErrPrefixUnsupported = errors.New("dbcache: Config.KeyFunc does not keep the caller's key prefix at the front of the stored key, so a prefix is not a key range")

const (
	// deletePrefixBatchSize is the most rows one DeletePrefix statement
	// removes, as clearBatchSize is for Clear.
	deletePrefixBatchSize = 5000
	// keysPageSize is how many keys one Keys query fetches.
	keysPageSize = 1000
)

// remainingForever stands for "never expires" in getRemaining's result.
const remainingForever time.Duration = -1

// getRemaining reads k's value and remaining lifetime (remainingForever
// for an entry that never expires), or ErrMiss.
func (c *Cache) getRemaining(ctx context.Context, k string) ([]byte, time.Duration, error) {
	var (
		v  []byte
		us *int64
	)
	if err := c.db.QueryRow(ctx, c.q.getRemaining, k).Scan(&v, &us); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, 0, ErrMiss
		}
		return nil, 0, c.wrapErr("get", err)
	}
	if us == nil {
		return nonNil(v), remainingForever, nil
	}
	return nonNil(v), time.Duration(max(*us, 0)) * time.Microsecond, nil
}

func remainingTimeout(d time.Duration) Timeout {
	if d == remainingForever {
		return Forever
	}
	return ExpiresIn(d)
}

// TTL returns the remaining lifetime of key's live entry by the database's
// clock: Forever for an entry that never expires, ExpiresIn(d) with d > 0
// otherwise, and ErrMiss when there is no live entry (Redis's TTL -1 and
// -2, as values the rest of the API takes: TTL's result can be passed to
// Set to keep an expiry).
func (c *Cache) TTL(ctx context.Context, key string) (_ Timeout, err error) {
	k, err := c.key(ctx, key)
	if err != nil {
		return Timeout{}, err
	}
	ctx, tr := c.trace(ctx, OpTTL, 1)
	if tr != nil {
		defer func() { tr.read(err) }()
	}
	if err := c.checkOpen(); err != nil {
		return Timeout{}, err
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	var us *int64
	if err := c.db.QueryRow(ctx, c.q.ttl, k).Scan(&us); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return Timeout{}, ErrMiss
		}
		if c.onPool() && c.failOpen(ctx, "ttl", err) {
			return Timeout{}, ErrMiss
		}
		return Timeout{}, c.wrapErr("ttl", err)
	}
	if us == nil {
		return Forever, nil
	}
	return ExpiresIn(time.Duration(max(*us, 1)) * time.Microsecond), nil
}

// GetWithTTL is Get that also returns the entry's remaining lifetime, as
// TTL reports it, read in the same statement.
func (c *Cache) GetWithTTL(ctx context.Context, key string) (_ []byte, _ Timeout, err error) {
	k, err := c.key(ctx, key)
	if err != nil {
		return nil, Timeout{}, err
	}
	ctx, tr := c.trace(ctx, OpGet, 1)
	if tr != nil {
		defer func() { tr.read(err) }()
	}
	if err := c.checkOpen(); err != nil {
		return nil, Timeout{}, err
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	v, rem, err := c.getRemaining(ctx, k)
	if err != nil {
		if !errors.Is(err, ErrMiss) && c.onPool() && c.failOpen(ctx, "get", err) {
			return nil, Timeout{}, ErrMiss
		}
		return nil, Timeout{}, err
	}
	if rem == 0 {
		rem = time.Microsecond
	}
	return v, remainingTimeout(rem), nil
}

// prefixRange returns the range [lo, hi) of stored keys whose caller key
// starts with prefix, or ErrPrefixUnsupported. With the default KeyFunc
// (prefix:version:key) lo is MakeKey(prefix); a custom KeyFunc qualifies
// when it too appends the caller's key to something that does not depend
// on it, which probes check.
func (c *Cache) prefixRange(prefix string) (lo, hi string, err error) {
	lo = c.MakeKey(prefix)
	if c.MakeKey("")+prefix != lo {
		return "", "", ErrPrefixUnsupported
	}
	for _, probe := range []string{"", "a", "Z~", "\u00e9\U0010FFFF"} {
		if mk := c.MakeKey(prefix + probe); mk != lo+probe {
			return "", "", ErrPrefixUnsupported
		}
	}
	if !utf8.ValidString(lo) || strings.IndexByte(lo, 0) >= 0 {
		return "", "", &InvalidKeyError{Key: prefix, MadeKey: lo, Reason: "with the key prefix and version it is not text PostgreSQL can hold (invalid UTF-8 or a NUL byte)"}
	}
	return lo, upperBound(lo), nil
}

// maxKeyBound is greater than every key the cache stores (at most
// MaxKeyBytes bytes of UTF-8): 513 copies of the highest code point.
var maxKeyBound = strings.Repeat("\U0010FFFF", MaxKeyBytes/4+1)

// upperBound is the least string greater than every string that starts
// with p, in byte order (the key column's "C" collation): p with its last
// code point incremented. UTF-8 keeps code point order in byte order, so
// every s with p <= s < upperBound(p) starts with p.
func upperBound(p string) string {
	for len(p) > 0 {
		r, size := utf8.DecodeLastRuneInString(p)
		p = p[:len(p)-size]
		switch {
		case r == utf8.MaxRune:
			continue // no higher code point: increment the one before
		case r == 0xD7FF:
			return p + "\uE000" // skip the surrogates, which UTF-8 cannot hold
		default:
			return p + string(r+1)
		}
	}
	return maxKeyBound
}

// DeletePrefix removes every entry whose caller key starts with prefix,
// under the view's key prefix and version (with the default KeyFunc, every
// stored key that starts with MakeKey(prefix)), and returns how many live
// entries it removed; expired ones in the range go too, uncounted. It walks
// the range in key order on the primary key index (a range scan, never a
// table scan) in batches of a few thousand rows, each its own statement,
// bounded by Config.OpTimeout and holding its row locks for milliseconds; so
// a huge namespace is removed without long locks, and entries written into
// it while it runs may survive. An empty prefix removes the view's whole
// version. It returns ErrPrefixUnsupported when Config.KeyFunc does not put
// the caller's key at the end of the stored key. In a WithTx view every
// batch runs in the transaction.
func (c *Cache) DeletePrefix(ctx context.Context, prefix string) (total int, err error) {
	lo, hi, err := c.prefixRange(prefix)
	if err != nil {
		return 0, err
	}
	ctx, tr := c.trace(ctx, OpDeletePrefix, 1)
	if tr != nil {
		defer func() { tr.mark(total, 0, 0); tr.finish(err) }()
	}
	if err := c.checkOpen(); err != nil {
		return 0, err
	}
	for from := lo; ; {
		live, rows, last, err := c.deletePrefixBatch(ctx, from, hi)
		total += live
		if err != nil {
			if c.onPool() && c.failOpen(ctx, "delete_prefix", err) {
				return total, nil
			}
			return total, c.wrapErr("delete_prefix", err)
		}
		if rows < deletePrefixBatchSize {
			return total, nil
		}
		from = last
	}
}

func (c *Cache) deletePrefixBatch(ctx context.Context, from, to string) (live, rows int, last string, err error) {
	if c.s.cq.Load() != nil {
		return c.citusDeletePrefixBatch(ctx, from, to)
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	var lastKey *string
	if err := c.rowWrite(ctx, c.q.deletePrefixBatch, []any{from, to, deletePrefixBatchSize}, &live, &rows, &lastKey); err != nil {
		return 0, 0, "", err
	}
	if lastKey != nil {
		last = *lastKey
	}
	return live, rows, last, nil
}

// Keys returns the caller keys of the view's live entries that start with
// prefix, in the stored keys' byte order, as an iterator. It reads a page of
// a thousand keys per query (a keyset walk of the primary key index, each
// query bounded by Config.OpTimeout), so it never scans the table in one
// statement and a caller may stop at any point. Keys written or removed
// while it runs may or may not be seen; none is seen twice. An error ends
// the sequence with (", err). Same KeyFunc rule as DeletePrefix.
func (c *Cache) Keys(ctx context.Context, prefix string) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		lo, hi, err := c.prefixRange(prefix)
		if err != nil {
			yield("", err)
			return
		}
		ctx, tr := c.trace(ctx, OpKeys, 1)
		var n int
		if tr != nil {
			defer func() { tr.mark(n, 0, 0); tr.finish(err) }()
		}
		emit := func(k string, e error) bool {
			if e != nil {
				err = e
			} else {
				n++
			}
			return yield(k, e)
		}
		if err = c.checkOpen(); err != nil {
			emit("", err)
			return
		}
		stem := c.MakeKey("") // the stored key is stem + caller key
		from, skip := lo, ""
		for {
			page, err := c.keysPage(ctx, from, hi)
			if err != nil {
				emit("", c.wrapErr("keys", err))
				return
			}
			fresh := 0
			for _, k := range page {
				if k == skip {
					continue // the previous page's last key
				}
				fresh++
				if !emit(strings.TrimPrefix(k, stem), nil) {
					return
				}
			}
			if len(page) < keysPageSize || fresh == 0 {
				return
			}
			from, skip = page[len(page)-1], page[len(page)-1]
		}
	}
}

func (c *Cache) keysPage(ctx context.Context, from, to string) ([]string, error) {
	ctx, cancel := c.bound(ctx)
	defer cancel()
	rows, err := c.db.Query(ctx, c.q.keysPage, from, to, keysPageSize)
	if err != nil {
		return nil, err
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read keys: %w", err)
	}
	return keys, nil
}
