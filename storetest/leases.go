package storetest

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dbcache/dbcache/dbcache"
)

// leaseCases are the subtests of dbcache.Leaser; each returns at once for
// a store without it.
func (s *suite) leaseCases() []testCase {
	return []testCase{
		{"Lease", s.testLease},
		{"LeaseExpires", s.testLeaseExpires},
		{"LeaseOneHolder", s.testLeaseOneHolder},
		{"LeaseApartFromEntries", s.testLeaseApartFromEntries},
		{"LeaseBadInput", s.testLeaseBadInput},
	}
}

// A lease is held by one token: a second acquire reports the holder and
// its remaining time; extend and release work only with the holder's
// token; a released lease is free at once, and the next token differs.
func (s *suite) testLease(t *testing.T) {
	e := s.env(t)
	l, ok := e.store.(dbcache.Leaser)
	if !ok {
		return
	}
	first, err := l.AcquireLease(e.ctx, "k", time.Minute)
	e.ok(err, "acquire")
	if !first.Acquired || dbcache.CheckLeaseToken(first.Token) != nil {
		t.Fatalf("acquire of a free key: %+v", first)
	}
	if first.Remaining <= 0 || first.Remaining > time.Minute {
		t.Fatalf("acquire: remaining %v, want within (0, 1m]", first.Remaining)
	}
	second, err := l.AcquireLease(e.ctx, "k", time.Minute)
	e.ok(err, "acquire of a held key")
	if second.Acquired || second.Token != "" || second.Remaining <= 0 || second.Remaining > time.Minute {
		t.Fatalf("acquire of a held key: %+v, want not acquired, no token, the holder's remaining time", second)
	}
	other, err := l.AcquireLease(e.ctx, "other", time.Minute)
	e.ok(err, "acquire of another key")
	if !other.Acquired || other.Token == first.Token {
		t.Fatalf("acquire of another key: %+v (first token %q)", other, first.Token)
	}

	ok, err = l.ExtendLease(e.ctx, "k", other.Token, time.Minute)
	e.ok(err, "extend with another key's token")
	e.equal(ok, false, "extend with another key's token")
	ok, err = l.ExtendLease(e.ctx, "k", first.Token, 2*time.Minute)
	e.ok(err, "extend")
	e.equal(ok, true, "extend with the holder's token")
	held, err := l.AcquireLease(e.ctx, "k", time.Minute)
	e.ok(err, "acquire after extend")
	if held.Acquired || held.Remaining <= time.Minute {
		t.Fatalf("acquire after extending to 2m: %+v, want held with more than 1m left", held)
	}

	ok, err = l.ReleaseLease(e.ctx, "k", other.Token)
	e.ok(err, "release with another key's token")
	e.equal(ok, false, "release with another key's token")
	ok, err = l.ReleaseLease(e.ctx, "k", first.Token)
	e.ok(err, "release")
	e.equal(ok, true, "release of a live lease")
	ok, err = l.ReleaseLease(e.ctx, "k", first.Token)
	e.ok(err, "release again")
	e.equal(ok, false, "release of a released lease")
	ok, err = l.ExtendLease(e.ctx, "k", first.Token, time.Minute)
	e.ok(err, "extend after release")
	e.equal(ok, false, "extend of a released lease")

	again, err := l.AcquireLease(e.ctx, "k", time.Minute)
	e.ok(err, "acquire after release")
	if !again.Acquired || again.Token == first.Token {
		t.Fatalf("acquire after release: %+v (first token %q)", again, first.Token)
	}
	ok, err = l.ReleaseLease(e.ctx, "k", first.Token)
	e.ok(err, "release with the old token")
	e.equal(ok, false, "an old token releases nobody's lease")
	held, err = l.AcquireLease(e.ctx, "k", time.Minute)
	e.ok(err, "acquire")
	e.equal(held.Acquired, false, "the new holder keeps the lease an old token tried to release")
}

// A lease ends when its ttl has passed by the store's clock, whatever its
// holder does: the next acquire takes it over with a new token, and the
// old token no longer extends or releases it.
func (s *suite) testLeaseExpires(t *testing.T) {
	e := s.env(t)
	l, ok := e.store.(dbcache.Leaser)
	if !ok {
		return
	}
	first, err := l.AcquireLease(e.ctx, "k", 50*time.Millisecond)
	e.ok(err, "acquire")
	e.equal(first.Acquired, true, "acquire of a free key")
	var next dbcache.Lease
	e.eventually(func() bool {
		next, err = l.AcquireLease(e.ctx, "k", time.Minute)
		e.ok(err, "acquire")
		return next.Acquired
	}, "the lease to expire")
	if next.Token == first.Token {
		t.Fatal("a lease taken over after expiry has the old token")
	}
	ok, err = l.ExtendLease(e.ctx, "k", first.Token, time.Minute)
	e.ok(err, "extend with the expired token")
	e.equal(ok, false, "an expired token extends nothing")
	ok, err = l.ReleaseLease(e.ctx, "k", first.Token)
	e.ok(err, "release with the expired token")
	e.equal(ok, false, "an expired token releases nothing")
	held, err := l.AcquireLease(e.ctx, "k", time.Minute)
	e.ok(err, "acquire")
	e.equal(held.Acquired, false, "the new holder still holds the lease")
}

// Of any number of concurrent acquires of a free key, exactly one gets it.
func (s *suite) testLeaseOneHolder(t *testing.T) {
	e := s.env(t)
	l, ok := e.store.(dbcache.Leaser)
	if !ok {
		return
	}
	const n = 16
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		got    int
		errs   []error
		tokens = map[dbcache.LeaseToken]bool{}
	)
	for range n {
		wg.Go(func() {
			lease, err := l.AcquireLease(e.ctx, "k", time.Minute)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
			}
			if lease.Acquired {
				got++
				tokens[lease.Token] = true
			}
		})
	}
	wg.Wait()
	e.ok(errors.Join(errs...), "concurrent acquires")
	e.equal(got, 1, "acquires that got the lease, of %d concurrent ones", n)
}

// Leases are not entries: a leased key is a miss, Clear and DeletePrefix
// leave the lease, Keys does not list it, and an entry under the same key
// neither takes nor frees it.
func (s *suite) testLeaseApartFromEntries(t *testing.T) {
	e := s.env(t)
	l, ok := e.store.(dbcache.Leaser)
	if !ok {
		return
	}
	lease, err := l.AcquireLease(e.ctx, "k", time.Minute)
	e.ok(err, "acquire")
	e.miss(e.store, "k")
	if kl, ok := e.store.(dbcache.KeyLister); ok {
		e.equal(collect(e, kl, ""), []string(nil), "keys of a store holding only a lease")
		_, err := kl.DeletePrefix(e.ctx, "")
		e.ok(err, "delete_prefix")
	}
	e.set(e.store, "k", "v", dbcache.Forever)
	e.del(e.store, "k")
	e.ok(e.store.Clear(e.ctx), "clear")
	held, err := l.AcquireLease(e.ctx, "k", time.Minute)
	e.ok(err, "acquire after clear")
	e.equal(held.Acquired, false, "the lease after set, delete and clear of the entry")
	ok, err = l.ReleaseLease(e.ctx, "k", lease.Token)
	e.ok(err, "release")
	e.equal(ok, true, "release after clear")
}

// Bad input is an error and changes nothing: a ttl out of range, a token
// AcquireLease could not have returned, an invalid key.
func (s *suite) testLeaseBadInput(t *testing.T) {
	e := s.env(t)
	l, ok := e.store.(dbcache.Leaser)
	if !ok {
		return
	}
	for _, ttl := range []time.Duration{0, -time.Second, time.Microsecond, dbcache.LeaseTTLMax + time.Second} {
		_, err := l.AcquireLease(e.ctx, "k", ttl)
		e.is(err, dbcache.ErrInvalidLease, "acquire with ttl %v", ttl)
	}
	free, err := l.AcquireLease(e.ctx, "k", time.Minute)
	e.ok(err, "acquire")
	e.equal(free.Acquired, true, "the key is free after refused acquires")
	for _, token := range []dbcache.LeaseToken{"", "x", dbcache.LeaseToken(strings.ToUpper(string(free.Token))), free.Token + "0", "' OR true --"} {
		_, err := l.ExtendLease(e.ctx, "k", token, time.Minute)
		e.is(err, dbcache.ErrInvalidLease, "extend with token %q", token)
		_, err = l.ReleaseLease(e.ctx, "k", token)
		e.is(err, dbcache.ErrInvalidLease, "release with token %q", token)
	}
	_, err = l.ExtendLease(e.ctx, "k", free.Token, 0)
	e.is(err, dbcache.ErrInvalidLease, "extend with ttl 0")
	held, err := l.AcquireLease(e.ctx, "k", time.Minute)
	e.ok(err, "acquire")
	e.equal(held.Acquired, false, "the lease is still held after refused extends and releases")
	_, err = l.AcquireLease(e.ctx, "bad\x00key", time.Minute)
	e.is(err, dbcache.ErrInvalidKey, "acquire of a NUL key")
	_, err = l.ReleaseLease(e.ctx, "bad\x00key", free.Token)
	e.is(err, dbcache.ErrInvalidKey, "release of a NUL key")
	_, err = l.ExtendLease(e.ctx, "bad\x00key", free.Token, time.Minute)
	e.is(err, dbcache.ErrInvalidKey, "extend of a NUL key")
}
