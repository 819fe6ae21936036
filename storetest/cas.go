package storetest

import (
	"errors"
	"strconv"
	"sync"
	"testing"

	"github.com/dbcache/dbcache/dbcache"
)

// CompareAndSwap and CompareAndDelete succeed only with the token of the
// entry's latest write, never create an entry, and see an expired entry
// as absent.
func (s *suite) testCompareAndSwap(t *testing.T) {
	e := s.env(t)
	c, ok := e.store.(dbcache.CompareAndSwapper)
	if !ok {
		return
	}
	_, _, err := c.GetWithToken(e.ctx, "k")
	e.is(err, dbcache.ErrMiss, "get_with_token of a missing key")
	swapped, err := c.CompareAndSwap(e.ctx, "k", 0, []byte("v"), dbcache.Forever)
	e.ok(err, "compare_and_swap of a missing key")
	e.equal(swapped, false, "compare_and_swap created an entry")
	e.miss(e.store, "k")

	e.set(e.store, "k", "v1", dbcache.Forever)
	v, tok, err := c.GetWithToken(e.ctx, "k")
	e.ok(err, "get_with_token")
	e.equal(string(v), "v1", "get_with_token's value")
	swapped, err = c.CompareAndSwap(e.ctx, "k", tok, []byte("v2"), dbcache.Forever)
	e.ok(err, "compare_and_swap")
	e.equal(swapped, true, "compare_and_swap with the entry's token")
	e.equal(e.get(e.store, "k"), "v2", "the swapped value")
	swapped, err = c.CompareAndSwap(e.ctx, "k", tok, []byte("v3"), dbcache.Forever)
	e.ok(err, "compare_and_swap")
	e.equal(swapped, false, "compare_and_swap with a spent token")
	deleted, err := c.CompareAndDelete(e.ctx, "k", tok)
	e.ok(err, "compare_and_delete")
	e.equal(deleted, false, "compare_and_delete with a spent token")
	e.equal(e.get(e.store, "k"), "v2", "the value after refused writes")

	_, tok, err = c.GetWithToken(e.ctx, "k")
	e.ok(err, "get_with_token")
	deleted, err = c.CompareAndDelete(e.ctx, "k", tok)
	e.ok(err, "compare_and_delete")
	e.equal(deleted, true, "compare_and_delete with the entry's token")
	e.miss(e.store, "k")

	// An empty value is a value.
	e.set(e.store, "empty", "", dbcache.Forever)
	v, _, err = c.GetWithToken(e.ctx, "empty")
	e.ok(err, "get_with_token of an empty value")
	if v == nil || len(v) != 0 {
		t.Fatalf("get_with_token of an empty value: %#v", v)
	}

	e.set(e.store, "gone", "g", e.expiring())
	_, tok, err = c.GetWithToken(e.ctx, "gone")
	e.ok(err, "get_with_token")
	e.expire("gone")
	_, _, err = c.GetWithToken(e.ctx, "gone")
	e.is(err, dbcache.ErrMiss, "get_with_token of an expired entry")
	swapped, err = c.CompareAndSwap(e.ctx, "gone", tok, []byte("x"), dbcache.Forever)
	e.ok(err, "compare_and_swap of an expired entry")
	e.equal(swapped, false, "compare_and_swap revived an expired entry")
	deleted, err = c.CompareAndDelete(e.ctx, "gone", tok)
	e.ok(err, "compare_and_delete of an expired entry")
	e.equal(deleted, false, "compare_and_delete of an expired entry")

	_, _, err = c.GetWithToken(e.ctx, "bad\x00key")
	e.is(err, dbcache.ErrInvalidKey, "get_with_token of an invalid key")
	_, err = c.CompareAndSwap(e.ctx, "bad\x00key", tok, []byte("x"), dbcache.Forever)
	e.is(err, dbcache.ErrInvalidKey, "compare_and_swap of an invalid key")
	_, err = c.CompareAndDelete(e.ctx, "bad\x00key", tok)
	e.is(err, dbcache.ErrInvalidKey, "compare_and_delete of an invalid key")
}

// Every write that stores a value gives the entry a new token, and Touch
// keeps it; an entry deleted and written again, with the same value, never
// has a token it had before (no ABA).
func (s *suite) testCompareAndSwapTokens(t *testing.T) {
	e := s.env(t)
	c, ok := e.store.(dbcache.CompareAndSwapper)
	if !ok {
		return
	}
	token := func() dbcache.Token {
		t.Helper()
		_, tok, err := c.GetWithToken(e.ctx, "k")
		e.ok(err, "get_with_token")
		return tok
	}
	e.set(e.store, "k", "1", dbcache.Forever)
	seen := map[dbcache.Token]string{token(): "set"}
	changed := func(op string) {
		t.Helper()
		tok := token()
		if prev, dup := seen[tok]; dup {
			t.Fatalf("%s left the token of %s", op, prev)
		}
		seen[tok] = op
	}
	e.set(e.store, "k", "1", dbcache.Forever)
	changed("a set of the same value")
	_, err := e.store.SetMany(e.ctx, map[string][]byte{"k": []byte("1")}, dbcache.Forever)
	e.ok(err, "set_many")
	changed("set_many")
	_, err = e.store.Incr(e.ctx, "k", 1)
	e.ok(err, "incr")
	changed("incr")
	tok := token()
	e.touch(e.store, "k", dbcache.Forever)
	e.equal(token(), tok, "touch changed the token")
	e.equal(e.add(e.store, "k", "2", dbcache.Forever), false, "add over a live entry")
	e.equal(token(), tok, "an add that stored nothing changed the token")
	_, err = e.store.GetOrSet(e.ctx, "k", []byte("2"), dbcache.Forever)
	e.ok(err, "get_or_set")
	e.equal(token(), tok, "a get_or_set that stored nothing changed the token")

	for i := range 20 {
		e.del(e.store, "k")
		if i%2 == 0 {
			e.set(e.store, "k", "same", dbcache.Forever)
		} else {
			e.add(e.store, "k", "same", dbcache.Forever)
		}
		swapped, err := c.CompareAndSwap(e.ctx, "k", tok, []byte("clobbered"), dbcache.Forever)
		e.ok(err, "compare_and_swap")
		e.equal(swapped, false, "round %d: a token from before a delete matched the entry written after", i)
		changed("a delete and write " + strconv.Itoa(i))
	}
}

// Racing read-modify-writes of one counter: of the swaps that read one
// token at most one succeeds, so the counter ends at the number of
// successes.
func (s *suite) testCompareAndSwapRacing(t *testing.T) {
	e := s.env(t)
	c, ok := e.store.(dbcache.CompareAndSwapper)
	if !ok {
		return
	}
	e.set(e.store, "n", "0", dbcache.Forever)
	var (
		mu   sync.Mutex
		wins = map[dbcache.Token]int{}
		wg   sync.WaitGroup
		errs = make(chan error, 8)
	)
	for range 8 {
		wg.Go(func() {
			for range 25 {
				v, tok, err := c.GetWithToken(e.ctx, "n")
				if err != nil {
					errs <- err
					return
				}
				n, err := strconv.Atoi(string(v))
				if err != nil {
					errs <- err
					return
				}
				swapped, err := c.CompareAndSwap(e.ctx, "n", tok, []byte(strconv.Itoa(n+1)), dbcache.Forever)
				if err != nil {
					errs <- err
					return
				}
				if swapped {
					mu.Lock()
					wins[tok]++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	e.ok(errors.Join(all...), "racing swaps")
	total := 0
	for tok, n := range wins {
		if n > 1 {
			t.Fatalf("%d swaps succeeded on token %d", n, tok)
		}
		total += n
	}
	if total == 0 {
		t.Fatal("no swap succeeded")
	}
	e.equal(e.get(e.store, "n"), strconv.Itoa(total), "the counter after the racing swaps")
}
