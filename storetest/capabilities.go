package storetest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbcache/dbcache/dbcache"
)

// capabilityCases are the subtests of the optional capabilities; each
// returns at once for a store without its capability.
func (s *suite) capabilityCases() []testCase {
	return []testCase{
		{"TTL", s.testTTL},
		{"TTLAfterTouchAndIncr", s.testTTLAfterTouchAndIncr},
		{"Keys", s.testKeys},
		{"DeletePrefix", s.testDeletePrefix},
		{"KeyMaker", s.testKeyMaker},
		{"GetOrSetFunc", s.testGetOrSetFunc},
		{"GetOrSetFuncOnce", s.testGetOrSetFuncOnce},
		{"LoadOnceAcrossStores", s.testLoadOnceAcrossStores},
		{"GetOrSetFuncErrors", s.testGetOrSetFuncErrors},
		{"GetOrRevalidate", s.testGetOrRevalidate},
		{"IncrVersionAlone", s.testIncrVersionAlone},
		{"CompareAndSwap", s.testCompareAndSwap},
		{"CompareAndSwapTokens", s.testCompareAndSwapTokens},
		{"CompareAndSwapRacing", s.testCompareAndSwapRacing},
	}
}

// TTL and GetWithTTL: Forever for an entry that never expires,
// ExpiresIn(d) with 0 < d <= its timeout otherwise, ErrMiss when there is
// no live entry; and what TTL returns, passed to a write, keeps the expiry.
func (s *suite) testTTL(t *testing.T) {
	e := s.env(t)
	r, ok := e.store.(dbcache.TTLReader)
	if !ok {
		return
	}
	e.set(e.store, "hour", "h", dbcache.ExpiresIn(time.Hour))
	e.set(e.store, "forever", "f", dbcache.Forever)
	e.set(e.store, "default", "d", dbcache.DefaultTimeout)
	e.set(e.store, "gone", "g", e.expiring())

	ttl, err := r.TTL(e.ctx, "hour")
	e.ok(err, "ttl")
	d, isTTL := ttl.Duration()
	if !isTTL || d <= 0 || d > time.Hour || d < 50*time.Minute {
		t.Fatalf("ttl of a 1 h entry: %s", ttl)
	}
	ttl, err = r.TTL(e.ctx, "forever")
	e.ok(err, "ttl")
	e.equal(ttl.IsForever(), true, "ttl of a Forever entry is Forever (%s)", ttl)
	ttl, err = r.TTL(e.ctx, "default")
	e.ok(err, "ttl")
	if d, ok := ttl.Duration(); !ok || d <= 0 {
		t.Fatalf("ttl of an entry with the default timeout: %s", ttl)
	}
	v, ttl, err := r.GetWithTTL(e.ctx, "hour")
	e.ok(err, "get_with_ttl")
	e.equal(string(v), "h", "get_with_ttl's value")
	if d, ok := ttl.Duration(); !ok || d <= 0 || d > time.Hour {
		t.Fatalf("get_with_ttl of a 1 h entry: %s", ttl)
	}
	v, ttl, err = r.GetWithTTL(e.ctx, "forever")
	e.ok(err, "get_with_ttl")
	e.equal(string(v), "f", "get_with_ttl's value")
	e.equal(ttl.IsForever(), true, "get_with_ttl of a Forever entry")

	e.expire("gone")
	_, err = r.TTL(e.ctx, "gone")
	e.is(err, dbcache.ErrMiss, "ttl of an expired entry")
	_, err = r.TTL(e.ctx, "missing")
	e.is(err, dbcache.ErrMiss, "ttl of a missing key")
	_, _, err = r.GetWithTTL(e.ctx, "missing")
	e.is(err, dbcache.ErrMiss, "get_with_ttl of a missing key")

	// TTL's result is a Timeout the writes take: it keeps an expiry.
	ttl, err = r.TTL(e.ctx, "forever")
	e.ok(err, "ttl")
	e.set(e.store, "copy", "c", ttl)
	ttl, err = r.TTL(e.ctx, "copy")
	e.ok(err, "ttl")
	e.equal(ttl.IsForever(), true, "a copy written with a Forever entry's TTL")
	_, err = r.TTL(e.ctx, "bad\x00")
	e.is(err, dbcache.ErrInvalidKey, "ttl of a NUL key")
}

// Touch moves what TTL reads; Incr leaves it.
func (s *suite) testTTLAfterTouchAndIncr(t *testing.T) {
	e := s.env(t)
	r, ok := e.store.(dbcache.TTLReader)
	if !ok {
		return
	}
	e.set(e.store, "n", "1", dbcache.ExpiresIn(time.Hour))
	e.equal(e.touch(e.store, "n", dbcache.Forever), true, "touch")
	ttl, err := r.TTL(e.ctx, "n")
	e.ok(err, "ttl")
	e.equal(ttl.IsForever(), true, "ttl after a touch to Forever")
	e.equal(e.touch(e.store, "n", dbcache.ExpiresIn(2*time.Hour)), true, "touch")
	_, err = e.store.Incr(e.ctx, "n", 5)
	e.ok(err, "incr")
	ttl, err = r.TTL(e.ctx, "n")
	e.ok(err, "ttl")
	if d, ok := ttl.Duration(); !ok || d <= time.Hour || d > 2*time.Hour {
		t.Fatalf("ttl after a touch to 2 h and an incr: %s", ttl)
	}
}

// Keys lists the caller keys of the live entries of a prefix, in byte
// order, each once; other prefixes, expired entries and (with views)
// other versions are not listed; a caller may stop early.
func (s *suite) testKeys(t *testing.T) {
	e := s.env(t)
	l, ok := e.store.(dbcache.KeyLister)
	if !ok {
		return
	}
	want := []string{"user:1", "user:10", "user:2", "user:é", "user:😀"}
	for _, k := range want {
		e.set(e.store, k, "v", dbcache.DefaultTimeout)
	}
	e.set(e.store, "users", "v", dbcache.DefaultTimeout)
	e.set(e.store, "use", "v", dbcache.DefaultTimeout)
	e.set(e.store, "user:old", "v", e.expiring())
	if s.WithVersion != nil {
		e.set(s.WithVersion(e.store, 2), "user:v2", "v", dbcache.DefaultTimeout)
	}
	e.expire("user:old")
	got := collect(e, l, "user:")
	e.equal(got, want, "keys of user:")
	all := collect(e, l, "")
	e.equal(all, []string{"use", "user:1", "user:10", "user:2", "user:é", "user:😀", "users"}, "keys of every prefix")
	e.equal(len(collect(e, l, "nobody")), 0, "keys of a prefix with none")

	n := 0
	for k, err := range l.Keys(e.ctx, "user:") {
		e.ok(err, "keys")
		if k != want[n] {
			t.Fatalf("key %d: %q, want %q", n, k, want[n])
		}
		n++
		if n == 2 {
			break
		}
	}
	e.equal(n, 2, "keys stopped early")
	for _, err := range l.Keys(e.ctx, "bad\x00") {
		e.is(err, dbcache.ErrInvalidKey, "keys of a NUL prefix")
	}
}

// collect gathers Keys's sequence, failing the test on an error.
func collect(e *env, l dbcache.KeyLister, prefix string) []string {
	e.t.Helper()
	var out []string
	for k, err := range l.Keys(e.ctx, prefix) {
		e.ok(err, "keys %q", prefix)
		out = append(out, k)
	}
	return out
}

// DeletePrefix removes the entries of a prefix and counts the live ones
// it removed; other prefixes and (with views) other versions stay; an
// empty prefix removes the whole version.
func (s *suite) testDeletePrefix(t *testing.T) {
	e := s.env(t)
	l, ok := e.store.(dbcache.KeyLister)
	if !ok {
		return
	}
	for _, k := range []string{"sess:a", "sess:b", "sess:c", "session", "other"} {
		e.set(e.store, k, "v", dbcache.DefaultTimeout)
	}
	e.set(e.store, "sess:old", "v", e.expiring())
	var v2 dbcache.Store
	if s.WithVersion != nil {
		v2 = s.WithVersion(e.store, 2)
		e.set(v2, "sess:a", "v2", dbcache.DefaultTimeout)
	}
	e.expire("sess:old")
	n, err := l.DeletePrefix(e.ctx, "sess:")
	e.ok(err, "delete_prefix")
	e.equal(n, 3, "live entries removed")
	for _, k := range []string{"sess:a", "sess:b", "sess:c", "sess:old"} {
		e.miss(e.store, k)
	}
	e.equal(e.get(e.store, "session"), "v", "a key outside the prefix")
	if v2 != nil {
		e.equal(e.get(v2, "sess:a"), "v2", "the same prefix at another version")
	}
	n, err = l.DeletePrefix(e.ctx, "sess:")
	e.ok(err, "delete_prefix again")
	e.equal(n, 0, "delete_prefix again")
	n, err = l.DeletePrefix(e.ctx, "")
	e.ok(err, "delete_prefix of everything")
	e.equal(n, 2, "the version's remaining entries")
	e.miss(e.store, "other")
	if v2 != nil {
		e.equal(e.get(v2, "sess:a"), "v2", "another version, after an empty prefix")
	}
	_, err = l.DeletePrefix(e.ctx, "bad\x00")
	e.is(err, dbcache.ErrInvalidKey, "delete_prefix of a NUL prefix")
}

// MakeKey is Django's make_key (deterministic, one stored key per caller
// key, the caller's key in it) and ValidateKey refuses what every
// operation refuses.
func (s *suite) testKeyMaker(t *testing.T) {
	e := s.env(t)
	m, ok := e.store.(dbcache.KeyMaker)
	if !ok {
		return
	}
	a, b := m.MakeKey("a"), m.MakeKey("b")
	if a == b || a != m.MakeKey("a") || !strings.Contains(a, "a") {
		t.Fatalf("make_key: %q and %q", a, b)
	}
	e.ok(m.ValidateKey(e.ctx, a), "validate_key of a made key")
	for _, bad := range []string{"a\x00b", "bad\xff", strings.Repeat("k", dbcache.MaxKeyBytes+1)} {
		e.is(m.ValidateKey(e.ctx, m.MakeKey(bad)), dbcache.ErrInvalidKey, "validate_key of %.10q", bad)
	}
	if s.WithVersion != nil {
		if v2, ok := s.WithVersion(e.store, 2).(dbcache.KeyMaker); ok && v2.MakeKey("a") == a {
			t.Fatalf("make_key: version 2 makes %q, as version 1 does", a)
		}
	}
}

// GetOrSetFunc loads only on a miss and stores what it loaded; a value
// another caller stored first wins.
func (s *suite) testGetOrSetFunc(t *testing.T) {
	e := s.env(t)
	l, ok := e.store.(dbcache.Loader)
	if !ok {
		return
	}
	calls := 0
	load := func(context.Context) ([]byte, error) { calls++; return []byte("value"), nil }
	for range 3 {
		v, err := l.GetOrSetFunc(e.ctx, "mykey", load, dbcache.DefaultTimeout)
		e.ok(err, "get_or_set_func")
		e.equal(string(v), "value", "get_or_set_func")
	}
	e.equal(calls, 1, "loader runs")
	e.equal(e.get(e.store, "mykey"), "value", "the loaded value is stored")

	e.set(e.store, "set", "stored", dbcache.DefaultTimeout)
	v, err := l.GetOrSetFunc(e.ctx, "set", load, dbcache.DefaultTimeout)
	e.ok(err, "get_or_set_func")
	e.equal(string(v), "stored", "a hit")

	v, err = l.GetOrSetFunc(e.ctx, "race", func(ctx context.Context) ([]byte, error) {
		if err := e.store.Set(ctx, "race", []byte("winner"), dbcache.DefaultTimeout); err != nil {
			return nil, err
		}
		return []byte("loser"), nil
	}, dbcache.DefaultTimeout)
	e.ok(err, "get_or_set_func")
	e.equal(string(v), "winner", "a value stored while the loader ran")
	e.equal(e.get(e.store, "race"), "winner", "the stored value")

	v, err = l.GetOrSetFunc(e.ctx, "zero", load, dbcache.ExpiresIn(0))
	e.ok(err, "get_or_set_func with a zero timeout")
	e.equal(string(v), "value", "get_or_set_func with a zero timeout")
	e.miss(e.store, "zero")
}

// However many goroutines miss a key at once, the loader runs once and
// they all return its value. (A caller arriving after the value was stored
// hits it: either way one load.)
func (s *suite) testGetOrSetFuncOnce(t *testing.T) {
	e := s.env(t)
	l, ok := e.store.(dbcache.Loader)
	if !ok {
		return
	}
	var loads atomic.Int64
	release := make(chan struct{})
	load := func(ctx context.Context) ([]byte, error) {
		loads.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return []byte("once"), nil
	}
	var wg sync.WaitGroup
	var started sync.WaitGroup
	for range 20 {
		started.Add(1)
		wg.Go(func() {
			started.Done()
			v, err := l.GetOrSetFunc(e.ctx, "k", load, dbcache.DefaultTimeout)
			if err != nil || string(v) != "once" {
				t.Errorf("get_or_set_func: %q, %v", v, err)
			}
		})
	}
	started.Wait()
	e.eventually(func() bool { return loads.Load() > 0 }, "the load to start")
	close(release)
	wg.Wait()
	e.equal(loads.Load(), int64(1), "loads of one key missed by 20 goroutines")
}

// Three stores sharing their data (three processes, Config.Sharing), 10
// goroutines each, every store asking for each of 30 cold keys in its own
// order: each key is loaded once in all, and every caller gets its value.
func (s *suite) testLoadOnceAcrossStores(t *testing.T) {
	if s.Sharing == nil {
		return
	}
	e := s.env(t)
	if _, ok := e.store.(dbcache.Loader); !ok {
		return
	}
	stores := []dbcache.Store{e.store, s.Sharing(t, e.store), s.Sharing(t, e.store)}
	const keys = 30
	var (
		loads atomic.Int64
		wg    sync.WaitGroup
	)
	for i, st := range stores {
		l, ok := st.(dbcache.Loader)
		if !ok {
			t.Fatalf("storetest: Config.Sharing returned a store (%T) that is not a dbcache.Loader", st)
		}
		work := make(chan int, keys)
		for k := range keys {
			work <- (k*7 + i*11) % keys
		}
		close(work)
		for range 10 {
			wg.Go(func() {
				for k := range work {
					key := fmt.Sprintf("k%d", k)
					v, err := l.GetOrSetFunc(e.ctx, key, func(context.Context) ([]byte, error) {
						loads.Add(1)
						time.Sleep(5 * time.Millisecond)
						return []byte("v-" + key), nil
					}, dbcache.DefaultTimeout)
					if err != nil || string(v) != "v-"+key {
						t.Errorf("get_or_set_func %q: %q, %v", key, v, err)
					}
				}
			})
		}
	}
	wg.Wait()
	e.equal(loads.Load(), int64(keys), "loads of %d keys by 3 stores sharing their data", keys)
}

// A loader's error is returned (a *dbcache.LoaderError reaching it) and
// its panic as a *dbcache.LoaderPanicError; nothing is stored, and the
// next call loads again.
func (s *suite) testGetOrSetFuncErrors(t *testing.T) {
	e := s.env(t)
	l, ok := e.store.(dbcache.Loader)
	if !ok {
		return
	}
	boom := errors.New("boom")
	_, err := l.GetOrSetFunc(e.ctx, "failing", func(context.Context) ([]byte, error) { return nil, boom }, dbcache.DefaultTimeout)
	e.is(err, boom, "a loader's error")
	var le *dbcache.LoaderError
	if !errors.As(err, &le) {
		t.Fatalf("a loader's error is not a *dbcache.LoaderError: %T %v", err, err)
	}
	e.miss(e.store, "failing")
	_, err = l.GetOrSetFunc(e.ctx, "panicking", func(context.Context) ([]byte, error) { panic("loader") }, dbcache.DefaultTimeout)
	var lp *dbcache.LoaderPanicError
	if !errors.As(err, &lp) || fmt.Sprint(lp.Value) != "loader" {
		t.Fatalf("a loader's panic: %T %v", err, err)
	}
	e.miss(e.store, "panicking")
	v, err := l.GetOrSetFunc(e.ctx, "failing", func(context.Context) ([]byte, error) { return []byte("ok"), nil }, dbcache.DefaultTimeout)
	e.ok(err, "after a failed load")
	e.equal(string(v), "ok", "after a failed load")
	_, err = l.GetOrSetFunc(e.ctx, "bad\x00", func(context.Context) ([]byte, error) { return []byte("x"), nil }, dbcache.DefaultTimeout)
	e.is(err, dbcache.ErrInvalidKey, "get_or_set_func of a NUL key")
	_, err = l.GetOrSetFunc(e.ctx, "nil", nil, dbcache.DefaultTimeout)
	if err == nil {
		t.Fatal("get_or_set_func with a nil loader: no error")
	}
}

// GetOrRevalidate: a fresh entry is returned as it is; a stale one at
// once, with a background refresh that stores a new value; the entry
// expires after fresh + stale.
func (s *suite) testGetOrRevalidate(t *testing.T) {
	e := s.env(t)
	l, ok := e.store.(dbcache.Loader)
	if !ok {
		return
	}
	var runs atomic.Int64
	gen := func(context.Context) ([]byte, error) { return []byte(fmt.Sprint("v", runs.Add(1))), nil }

	// Fresh for an hour: a hit loads nothing.
	v, err := l.GetOrRevalidate(e.ctx, "fresh", gen, time.Hour, time.Hour)
	e.ok(err, "get_or_revalidate on a miss")
	e.equal(string(v), "v1", "the loaded value")
	v, err = l.GetOrRevalidate(e.ctx, "fresh", gen, time.Hour, time.Hour)
	e.ok(err, "get_or_revalidate of a fresh entry")
	e.equal(string(v), "v1", "a fresh entry")
	e.equal(runs.Load(), int64(1), "loads")
	if r, ok := e.store.(dbcache.TTLReader); ok {
		ttl, err := r.TTL(e.ctx, "fresh")
		e.ok(err, "ttl")
		if d, _ := ttl.Duration(); d <= time.Hour+50*time.Minute {
			t.Fatalf("an entry of 1 h fresh + 1 h stale expires in %s", ttl)
		}
	}

	// Never fresh: every hit is stale, returned at once and refreshed.
	e.set(e.store, "stale", "old", dbcache.ExpiresIn(time.Hour))
	release := make(chan struct{})
	slow := func(ctx context.Context) ([]byte, error) {
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return []byte("new"), nil
	}
	v, err = l.GetOrRevalidate(e.ctx, "stale", slow, 0, time.Hour)
	e.ok(err, "get_or_revalidate of a stale entry")
	e.equal(string(v), "old", "the stale value, before its refresh ends")
	close(release)
	e.eventually(func() bool {
		v, err := e.store.Get(e.ctx, "stale")
		return err == nil && string(v) == "new"
	}, "the background refresh to store its value")

	// A failed refresh leaves the stale value.
	e.set(e.store, "failing", "kept", dbcache.ExpiresIn(time.Hour))
	failed := make(chan struct{})
	var once sync.Once
	v, err = l.GetOrRevalidate(e.ctx, "failing", func(context.Context) ([]byte, error) {
		once.Do(func() { close(failed) })
		return nil, errors.New("backend down")
	}, 0, time.Hour)
	e.ok(err, "get_or_revalidate with a failing refresh")
	e.equal(string(v), "kept", "the stale value")
	<-failed
	e.equal(e.get(e.store, "failing"), "kept", "the stale value after a failed refresh")
}

// IncrVersion and DecrVersion without views: the entry leaves the store's
// version (its key misses), comes back by the opposite move, value
// intact, and a missing key is ErrMiss.
func (s *suite) testIncrVersionAlone(t *testing.T) {
	e := s.env(t)
	vr, ok := e.store.(dbcache.Versioner)
	if !ok {
		return
	}
	e.set(e.store, "k", "v", dbcache.DefaultTimeout)
	to, err := vr.IncrVersion(e.ctx, "k", 0)
	e.ok(err, "incr_version by 0")
	e.equal(e.get(e.store, "k"), "v", "after incr_version by 0")
	from := to
	to, err = vr.IncrVersion(e.ctx, "k", 1)
	e.ok(err, "incr_version")
	e.equal(to, from+1, "incr_version's new version")
	e.miss(e.store, "k")
	_, err = vr.IncrVersion(e.ctx, "k", 1)
	e.is(err, dbcache.ErrMiss, "incr_version of a key that moved away")
	_, err = vr.DecrVersion(e.ctx, "missing", 1)
	e.is(err, dbcache.ErrMiss, "decr_version of a missing key")
	_, err = vr.IncrVersion(e.ctx, "bad\x00", 1)
	e.is(err, dbcache.ErrInvalidKey, "incr_version of a NUL key")
}
