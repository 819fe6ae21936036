package sharded

import (
	"context"
	"errors"
	"iter"
	"slices"
	"sync"

	"github.com/dbcache/dbcache/dbcache"
)

// The operations over several shards. A bulk operation (GetMany, SetMany,
// DeleteMany) splits its keys by shard and runs each shard's part as that
// shard's cache runs it, one statement each, all parts at once on their own
// goroutines, and merges the results; DeletePrefix and Clear run on every
// shard at once; Keys merges every shard's sorted stream. Nothing is shared
// between the parts but the caller's context: a slow or silent shard holds
// up its own part (for at most its OpTimeout) and the operation's return,
// never another shard's part.

// each runs f(0) … f(n-1), f(0) on the caller's goroutine and the rest on
// goroutines of their own, and returns when all have.
func each(n int, f func(i int)) {
	if n == 1 {
		f(0)
		return
	}
	var wg sync.WaitGroup
	for i := 1; i < n; i++ {
		wg.Go(func() { f(i) })
	}
	f(0)
	wg.Wait()
}

// part is one shard's share of a bulk operation.
type part struct {
	x    *shard
	keys []string
}

// split groups keys by shard, in the shards' order, leaving out shards
// with none.
func (c *Cache) split(keys []string) []part {
	n := len(c.s.shards)
	if n == 1 {
		return []part{{c.s.shards[0], keys}}
	}
	by := make([][]string, n)
	for _, k := range keys {
		i := c.s.ring.pick(c.hash(k))
		by[i] = append(by[i], k)
	}
	parts := make([]part, 0, n)
	for i, ks := range by {
		if len(ks) > 0 {
			parts = append(parts, part{c.s.shards[i], ks})
		}
	}
	return parts
}

// validate refuses, before any part runs, a key its shard's cache would
// refuse, so that a bulk write with a bad key changes nothing, as on one
// server: a made key PostgreSQL cannot store, and a key memcached could
// not store when the shard's KeyCheck is KeyCheckError (see checkOnShard).
func (c *Cache) validate(ctx context.Context, keys []string) error {
	for _, k := range keys {
		mk := c.MakeKey(k)
		err := (dbcache.KeyValidator{Check: dbcache.KeyCheckOff}).Validate(ctx, mk)
		if err == nil && len(dbcache.KeyWarnings(mk)) > 0 {
			err = c.checkOnShard(ctx, c.shardFor(k), mk)
		}
		if err != nil {
			var ik *dbcache.InvalidKeyError
			if errors.As(err, &ik) {
				ik.Key = k
			}
			return err
		}
	}
	return nil
}

// checkOnShard is a key memcached could not store, mk, checked as shard x
// checks it: refused under x's KeyCheckError; asked of x's cache when the
// Cache was given to New (its KeyCheck is not known here: under
// KeyCheckWarn that logs the key's warning here as well as in its shard).
func (c *Cache) checkOnShard(ctx context.Context, x *shard, mk string) error {
	if !x.given {
		if x.cfg.KeyCheck != dbcache.KeyCheckError {
			return nil
		}
		return (dbcache.KeyValidator{Check: dbcache.KeyCheckError}).Validate(ctx, mk)
	}
	sc := x.cur.Load()
	if sc == nil {
		return nil // not open: its part fails, or is skipped, as a whole
	}
	return c.view(sc).ValidateKey(ctx, mk)
}

// GetMany returns the live entries among keys, keyed by the caller's
// keys: one query per shard that holds any of them, all at once. If a
// shard's part fails, the map still holds what the other shards found and
// the error is that shard's *ShardError (several joined), whose Keys are
// the keys it could not look up; with the shard's FailOpen a transient
// failure is a miss of its keys instead, and no error.
func (c *Cache) GetMany(ctx context.Context, keys []string) (map[string][]byte, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return map[string][]byte{}, nil
	}
	parts := c.split(keys)
	if len(parts) == 1 {
		return c.getMany(ctx, parts[0]) // the shard checks every key first
	}
	if err := c.validate(ctx, keys); err != nil {
		return nil, err
	}
	got := make([]map[string][]byte, len(parts))
	errs := make([]error, len(parts))
	each(len(parts), func(i int) { got[i], errs[i] = c.getMany(ctx, parts[i]) })
	n := 0
	for _, m := range got {
		n += len(m)
	}
	out := make(map[string][]byte, n)
	for _, m := range got {
		for k, v := range m {
			out[k] = v
		}
	}
	return out, errors.Join(errs...)
}

func (c *Cache) getMany(ctx context.Context, p part) (map[string][]byte, error) {
	sc, err := c.cache(ctx, p.x)
	if err != nil {
		if c.degrade(ctx, p.x, dbcache.OpGetMany, err) {
			return map[string][]byte{}, nil
		}
		return map[string][]byte{}, c.fail(p.x, err, p.keys)
	}
	m, err := sc.GetMany(ctx, p.keys)
	if m == nil {
		m = map[string][]byte{}
	}
	return m, c.fail(p.x, err, p.keys)
}

// SetMany stores every entry of items and returns the keys it did not
// store. Each shard's part is one statement, all or nothing, as SetMany is
// on one server, and the parts run at once; all or nothing holds per
// shard, not across them: when a shard's part fails, its keys (and only
// its keys) are returned as failed, with its *ShardError (several joined)
// while the other shards' parts are stored. Under the shard's FailOpen a
// transient failure returns its keys as failed with no error, as on one
// server. A key no shard could store (invalid) fails the whole call before
// anything is written.
func (c *Cache) SetMany(ctx context.Context, items map[string][]byte, timeout dbcache.Timeout) ([]string, error) {
	if len(c.s.shards) == 1 && !c.s.closed.Load() {
		return c.setMany(ctx, part{x: c.s.shards[0]}, items, timeout)
	}
	keys := sortedKeys(items)
	if err := c.checkOpen(); err != nil {
		return keys, err
	}
	if len(items) == 0 {
		return nil, nil
	}
	parts := c.split(keys)
	if len(parts) == 1 {
		return c.setMany(ctx, parts[0], items, timeout) // the shard checks every key first
	}
	if err := c.validate(ctx, keys); err != nil {
		return keys, err
	}
	failed := make([][]string, len(parts))
	errs := make([]error, len(parts))
	each(len(parts), func(i int) {
		sub := make(map[string][]byte, len(parts[i].keys))
		for _, k := range parts[i].keys {
			sub[k] = items[k]
		}
		failed[i], errs[i] = c.setMany(ctx, parts[i], sub, timeout)
	})
	var out []string
	for _, f := range failed {
		out = append(out, f...)
	}
	slices.Sort(out)
	return out, errors.Join(errs...)
}

// setMany runs one shard's part; p.keys, its sorted keys, may be nil (a
// single shard: all of items), and are then made only if needed.
func (c *Cache) setMany(ctx context.Context, p part, items map[string][]byte, timeout dbcache.Timeout) ([]string, error) {
	sc, err := c.cache(ctx, p.x)
	if err != nil {
		if p.keys == nil {
			p.keys = sortedKeys(items)
		}
		if c.degrade(ctx, p.x, dbcache.OpSetMany, err) {
			return p.keys, nil
		}
		return p.keys, c.fail(p.x, err, p.keys)
	}
	failed, err := sc.SetMany(ctx, items, timeout)
	if err != nil && p.keys == nil {
		p.keys = failed // every key, sorted, when the statement failed
	}
	return failed, c.fail(p.x, err, p.keys)
}

func sortedKeys(items map[string][]byte) []string {
	keys := make([]string, 0, len(items))
	for k := range items {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// DeleteMany removes keys, one statement per shard that holds any, all at
// once, and returns how many live entries it removed. If a shard's part
// fails, the count is the other shards' and the error is its *ShardError
// (several joined).
func (c *Cache) DeleteMany(ctx context.Context, keys []string) (int, error) {
	if err := c.checkOpen(); err != nil {
		return 0, err
	}
	if len(keys) == 0 {
		return 0, nil
	}
	parts := c.split(keys)
	if len(parts) > 1 {
		if err := c.validate(ctx, keys); err != nil {
			return 0, err
		}
	}
	counts := make([]int, len(parts))
	errs := make([]error, len(parts))
	each(len(parts), func(i int) {
		p := parts[i]
		sc, err := c.cache(ctx, p.x)
		if err != nil {
			if !c.degrade(ctx, p.x, dbcache.OpDeleteMany, err) {
				errs[i] = c.fail(p.x, err, p.keys)
			}
			return
		}
		n, err := sc.DeleteMany(ctx, p.keys)
		counts[i], errs[i] = n, c.fail(p.x, err, p.keys)
	})
	total := 0
	for _, n := range counts {
		total += n
	}
	return total, errors.Join(errs...)
}

// everyShard runs f on every shard's cache at once and returns the
// errors, a shard that could not be opened failing with the reason (or
// not at all, under its FailOpen, when failOpen is set). An error that is
// not the server's (an invalid prefix) is the same on every shard and
// returned once.
func (c *Cache) everyShard(ctx context.Context, op string, failOpen bool, f func(i int, sc *dbcache.Cache) error) error {
	shards := c.s.shards
	errs := make([]error, len(shards))
	each(len(shards), func(i int) {
		x := shards[i]
		sc, err := c.cache(ctx, x)
		if err != nil {
			if !failOpen || !c.degrade(ctx, x, op, err) {
				errs[i] = c.fail(x, err, nil)
			}
			return
		}
		errs[i] = c.fail(x, f(i, sc), nil)
	})
	var out []error
	for _, err := range errs {
		var se *ShardError
		if err == nil || (!errors.As(err, &se) && slices.ContainsFunc(out, func(e error) bool { return e.Error() == err.Error() })) {
			continue
		}
		out = append(out, err)
	}
	return errors.Join(out...)
}

// DeletePrefix removes every entry whose caller key starts with prefix, on
// every shard at once (each in its shard's short batches), and returns how
// many live entries it removed. If a shard fails part way, the count still
// includes what every shard removed, that shard's included, and the error
// is its *ShardError (several joined); the rest of that shard's range
// remains. Under a shard's FailOpen a transient failure ends its part
// without an error, as on one server.
func (c *Cache) DeletePrefix(ctx context.Context, prefix string) (int, error) {
	if err := c.checkOpen(); err != nil {
		return 0, err
	}
	counts := make([]int, len(c.s.shards))
	err := c.everyShard(ctx, dbcache.OpDeletePrefix, true, func(i int, sc *dbcache.Cache) error {
		n, err := sc.DeletePrefix(ctx, prefix)
		counts[i] = n
		return err
	})
	total := 0
	for _, n := range counts {
		total += n
	}
	return total, err
}

// Clear removes every entry of every shard's table (every prefix and
// version), all shards at once. If a shard fails, the others are cleared
// and the error is its *ShardError (several joined); Clear never fails
// open.
func (c *Cache) Clear(ctx context.Context) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	return c.everyShard(ctx, dbcache.OpClear, false, func(_ int, sc *dbcache.Cache) error {
		return sc.Clear(ctx)
	})
}

// Keys returns the caller keys of the view's live entries that start with
// prefix, in byte order, across every shard: a k-way merge of the shards'
// own Keys streams, each read a page of a thousand keys per query as on
// one server, so no query scans a table and memory does not grow with the
// number of keys. A key found on two shards (a row left on its old shard
// by a change of the ring, see docs/scale-out.md) is listed once. The
// first page of each shard is read before the first key is yielded. An
// error on any shard ends the sequence with ("", err), err its
// *ShardError; Keys never fails open.
func (c *Cache) Keys(ctx context.Context, prefix string) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		if err := c.checkOpen(); err != nil {
			yield("", err)
			return
		}
		type stream struct {
			x    *shard
			next func() (string, error, bool)
			stop func()
			head string
		}
		var live []*stream
		defer func() {
			for _, s := range live {
				s.stop()
			}
		}()
		for _, x := range c.s.shards {
			sc, err := c.cache(ctx, x)
			if err != nil {
				yield("", c.fail(x, err, nil))
				return
			}
			next, stop := iter.Pull2(sc.Keys(ctx, prefix))
			k, err, ok := next()
			switch {
			case !ok:
				stop()
				continue
			case err != nil:
				stop()
				yield("", c.fail(x, err, nil))
				return
			}
			live = append(live, &stream{x: x, next: next, stop: stop, head: k})
		}
		last, any := "", false
		for len(live) > 0 {
			m := 0
			for i := 1; i < len(live); i++ {
				if live[i].head < live[m].head {
					m = i
				}
			}
			s := live[m]
			if !any || s.head != last {
				if !yield(s.head, nil) {
					return
				}
				last, any = s.head, true
			}
			k, err, ok := s.next()
			switch {
			case !ok:
				s.stop()
				live = slices.Delete(live, m, m+1)
			case err != nil:
				yield("", c.fail(s.x, err, nil))
				return
			default:
				s.head = k
			}
		}
	}
}
