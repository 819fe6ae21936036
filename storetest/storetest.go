// Package storetest is dbcache's conformance suite: the tests a
// dbcache.Store must pass to keep dbcache's semantics, which are Django's
// cache semantics as Django's own test suite (tests/cache/tests.py)
// defines them, at the level of the byte API. The PostgreSQL cache, the
// sharded cache, the near cache and the in-memory Store (package memstore)
// all run it in their tests; a user's own Store or layer runs it too:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, storetest.Config{
//			New: func(t *testing.T) dbcache.Store { return newMyStore(t) },
//		})
//	}
//
// Run runs one subtest per behaviour, each on a store of its own, all in
// parallel. Besides the core Store, it tries every optional capability the
// store has (dbcache.TTLReader, dbcache.KeyLister, dbcache.Versioner,
// dbcache.KeyMaker, dbcache.Loader, dbcache.Leaser,
// dbcache.CompareAndSwapper, io.Closer), found as a caller finds them, by
// type assertion; a capability the store lacks is not tried. The
// versioning tests run when Config.WithVersion is set.
//
// Expiry is tested by ageing entries with Config.Age when the store gives
// a way; without one, with short real timeouts, polling the store until
// its clock passes them (never a fixed sleep), so a slow machine makes
// the suite slower, not wrong.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/dbcache/dbcache/dbcache"
)

// Config says how to make the stores under test and what they support.
type Config struct {
	// New returns a new, empty store for one subtest, with the default
	// configuration of its kind (no key prefix, version 1, the memcached
	// key check warning) and a default timeout of at least a minute. It
	// registers the store's cleanup with t. Required.
	New func(t *testing.T) dbcache.Store

	// Age moves every entry of s d closer to its expiry, as if d had
	// passed on the store's clock (memstore.Store.FastForward, or an
	// UPDATE of the table's expiries). When it returns, every read
	// through s sees the entries aged. Defaults to nil: the expiry
	// subtests use short real timeouts and poll.
	Age func(t *testing.T, s dbcache.Store, d time.Duration)

	// WithVersion returns a view of s at another default key version
	// (Django's per-call version argument), sharing s's entries. Defaults
	// to nil: the versioning subtests do not run.
	WithVersion func(s dbcache.Store, version int) dbcache.Store

	// Sharing returns another store over s's data, as another process
	// of the application would have it: its own cache (and pool, if it
	// likes) over the same tables. Defaults to nil: the subtests of
	// stores sharing their data (LoadOnceAcrossStores) do not run.
	Sharing func(t *testing.T, s dbcache.Store) dbcache.Store

	// Timeout bounds each subtest's operations. Defaults to a minute.
	Timeout time.Duration
}

// suite is one run's configuration.
type suite struct {
	Config
}

// Run runs the conformance suite against the stores cfg.New makes.
func Run(t *testing.T, cfg Config) {
	t.Helper()
	if cfg.New == nil {
		t.Fatal("storetest: Config.New is required")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = time.Minute
	}
	s := &suite{cfg}
	for _, tc := range s.cases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t)
		})
	}
}

// testCase is one subtest.
type testCase struct {
	name string
	run  func(t *testing.T)
}

// env is one subtest's store and context.
type env struct {
	t     *testing.T
	s     *suite
	store dbcache.Store
	ctx   context.Context
}

func (s *suite) env(t *testing.T) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), s.Timeout)
	t.Cleanup(cancel)
	store := s.New(t)
	if store == nil {
		t.Fatal("storetest: Config.New returned nil")
	}
	return &env{t: t, s: s, store: store, ctx: ctx}
}

// ok fails the test on err.
func (e *env) ok(err error, what string, args ...any) {
	e.t.Helper()
	if err != nil {
		e.t.Fatalf("%s: %v", fmt.Sprintf(what, args...), err)
	}
}

// is fails the test unless err matches target.
func (e *env) is(err, target error, what string, args ...any) {
	e.t.Helper()
	if !errors.Is(err, target) {
		e.t.Fatalf("%s: want an error matching %v, got %v", fmt.Sprintf(what, args...), target, err)
	}
}

// equal fails the test unless got equals want (compared as fmt prints
// them, which is enough for the values here).
func (e *env) equal(got, want any, what string, args ...any) {
	e.t.Helper()
	if fmt.Sprintf("%#v", got) != fmt.Sprintf("%#v", want) {
		e.t.Fatalf("%s: got %#v, want %#v", fmt.Sprintf(what, args...), got, want)
	}
}

func (e *env) set(s dbcache.Store, key, value string, timeout dbcache.Timeout) {
	e.t.Helper()
	e.ok(s.Set(e.ctx, key, []byte(value), timeout), "set %q", key)
}

// get returns key's value, failing the test on a miss or an error.
func (e *env) get(s dbcache.Store, key string) string {
	e.t.Helper()
	v, err := s.Get(e.ctx, key)
	e.ok(err, "get %q", key)
	if v == nil {
		e.t.Fatalf("get %q: a hit returned a nil slice (an empty value must be a non-nil empty slice)", key)
	}
	return string(v)
}

// miss fails the test unless key is a miss for Get and HasKey.
func (e *env) miss(s dbcache.Store, key string) {
	e.t.Helper()
	v, err := s.Get(e.ctx, key)
	if !errors.Is(err, dbcache.ErrMiss) {
		e.t.Fatalf("get %q: want ErrMiss, got %q, %v", key, v, err)
	}
	ok, err := s.HasKey(e.ctx, key)
	e.ok(err, "has_key %q", key)
	if ok {
		e.t.Fatalf("has_key %q: true for a miss", key)
	}
}

func (e *env) has(s dbcache.Store, key string) bool {
	e.t.Helper()
	ok, err := s.HasKey(e.ctx, key)
	e.ok(err, "has_key %q", key)
	return ok
}

func (e *env) add(s dbcache.Store, key, value string, timeout dbcache.Timeout) bool {
	e.t.Helper()
	ok, err := s.Add(e.ctx, key, []byte(value), timeout)
	e.ok(err, "add %q", key)
	return ok
}

func (e *env) touch(s dbcache.Store, key string, timeout dbcache.Timeout) bool {
	e.t.Helper()
	ok, err := s.Touch(e.ctx, key, timeout)
	e.ok(err, "touch %q", key)
	return ok
}

func (e *env) del(s dbcache.Store, key string) bool {
	e.t.Helper()
	ok, err := s.Delete(e.ctx, key)
	e.ok(err, "delete %q", key)
	return ok
}

// age moves the store's entries d closer to expiry when the suite can;
// it reports whether it did.
func (e *env) age(d time.Duration) bool {
	e.t.Helper()
	if e.s.Age == nil {
		return false
	}
	e.s.Age(e.t, e.store, d)
	return true
}

// short is the real timeout the expiry subtests use when they cannot age
// entries: long enough for the write and a first read on a loaded machine
// to land well inside it in practice, short enough to wait out.
const short = 1500 * time.Millisecond

// expire makes keys, written with the timeout expiring(), expire: by
// ageing the store past it, or by polling until the store's own clock
// has. expiring is what the caller writes with before it calls expire.
func (e *env) expiring() dbcache.Timeout {
	if e.s.Age != nil {
		return dbcache.ExpiresIn(time.Minute)
	}
	return dbcache.ExpiresIn(short)
}

func (e *env) expire(keys ...string) {
	e.t.Helper()
	if e.age(2 * time.Minute) {
		return
	}
	e.eventually(func() bool {
		for _, k := range keys {
			if e.has(e.store, k) {
				return false
			}
		}
		return true
	}, "%q to expire", keys)
}

// eventually polls cond until it holds or the subtest's time runs out.
func (e *env) eventually(cond func() bool, what string, args ...any) {
	e.t.Helper()
	for pause := 5 * time.Millisecond; !cond(); pause = min(pause*2, 100*time.Millisecond) {
		select {
		case <-e.ctx.Done():
			e.t.Fatalf("waited for %s: %v", fmt.Sprintf(what, args...), e.ctx.Err())
		case <-time.After(pause):
		}
	}
}

// cases lists every subtest, core and capabilities.
func (s *suite) cases() []testCase {
	return slices.Concat(s.coreCases(), s.capabilityCases(), s.leaseCases(), s.versionCases())
}
