package storetest

import (
	"testing"
	"time"

	"github.com/dbcache/dbcache/dbcache"
)

// versionCases are Django's versioning tests (test_cache_versioning_*),
// run when the suite has Config.WithVersion. The store under test is at
// version 1, its default.
func (s *suite) versionCases() []testCase {
	if s.WithVersion == nil {
		return nil
	}
	return []testCase{
		{"VersioningGetSet", s.testVersioningGetSet},
		{"VersioningAdd", s.testVersioningAdd},
		{"VersioningHasKeyDelete", s.testVersioningHasKeyDelete},
		{"VersioningIncrDecr", s.testVersioningIncrDecr},
		{"VersioningGetSetMany", s.testVersioningGetSetMany},
		{"IncrVersion", s.testIncrVersion},
		{"DecrVersion", s.testDecrVersion},
	}
}

func (s *suite) testVersioningGetSet(t *testing.T) {
	e := s.env(t)
	v1, v2 := s.WithVersion(e.store, 1), s.WithVersion(e.store, 2)
	e.set(e.store, "answer1", "42", dbcache.DefaultTimeout)
	e.equal(e.get(e.store, "answer1"), "42", "default version")
	e.equal(e.get(v1, "answer1"), "42", "version 1")
	e.miss(v2, "answer1")

	e.set(v2, "answer2", "42", dbcache.DefaultTimeout)
	e.miss(e.store, "answer2")
	e.miss(v1, "answer2")
	e.equal(e.get(v2, "answer2"), "42", "version 2")

	// A view of a view is at the version it names.
	e.equal(e.get(s.WithVersion(v2, 1), "answer1"), "42", "version 1 from a version 2 view")
}

func (s *suite) testVersioningAdd(t *testing.T) {
	e := s.env(t)
	v1, v2 := s.WithVersion(e.store, 1), s.WithVersion(e.store, 2)
	e.equal(e.add(v2, "answer1", "42", dbcache.DefaultTimeout), true, "add at version 2")
	e.equal(e.add(v2, "answer1", "37", dbcache.DefaultTimeout), false, "add again at version 2")
	e.equal(e.get(v2, "answer1"), "42", "version 2")
	e.equal(e.add(v1, "answer1", "37", dbcache.DefaultTimeout), true, "add at version 1")
	e.equal(e.get(v1, "answer1"), "37", "version 1")
	e.equal(e.get(v2, "answer1"), "42", "version 2 after version 1's add")
}

func (s *suite) testVersioningHasKeyDelete(t *testing.T) {
	e := s.env(t)
	v1, v2 := s.WithVersion(e.store, 1), s.WithVersion(e.store, 2)
	e.set(e.store, "answer1", "42", dbcache.DefaultTimeout)
	e.equal(e.has(v1, "answer1"), true, "has_key at version 1")
	e.equal(e.has(v2, "answer1"), false, "has_key at version 2")

	e.set(v1, "answer2", "37", dbcache.DefaultTimeout)
	e.set(v2, "answer2", "42", dbcache.DefaultTimeout)
	e.equal(e.del(e.store, "answer2"), true, "delete at the default version")
	e.miss(v1, "answer2")
	e.equal(e.get(v2, "answer2"), "42", "version 2 after version 1's delete")
	e.set(v1, "answer3", "37", dbcache.DefaultTimeout)
	e.set(v2, "answer3", "42", dbcache.DefaultTimeout)
	e.equal(e.del(v2, "answer3"), true, "delete at version 2")
	e.equal(e.get(v1, "answer3"), "37", "version 1 after version 2's delete")
	e.miss(v2, "answer3")
}

func (s *suite) testVersioningIncrDecr(t *testing.T) {
	e := s.env(t)
	v1, v2 := s.WithVersion(e.store, 1), s.WithVersion(e.store, 2)
	e.set(v1, "answer1", "37", dbcache.DefaultTimeout)
	e.set(v2, "answer1", "42", dbcache.DefaultTimeout)
	_, err := e.store.Incr(e.ctx, "answer1", 1)
	e.ok(err, "incr")
	e.equal(e.get(v1, "answer1"), "38", "version 1")
	e.equal(e.get(v2, "answer1"), "42", "version 2")
	_, err = v2.Decr(e.ctx, "answer1", 1)
	e.ok(err, "decr at version 2")
	e.equal(e.get(v1, "answer1"), "38", "version 1")
	e.equal(e.get(v2, "answer1"), "41", "version 2")
}

func (s *suite) testVersioningGetSetMany(t *testing.T) {
	e := s.env(t)
	v2 := s.WithVersion(e.store, 2)
	keys := []string{"ford1", "arthur1"}
	_, err := e.store.SetMany(e.ctx, map[string][]byte{"ford1": []byte("37"), "arthur1": []byte("42")}, dbcache.DefaultTimeout)
	e.ok(err, "set_many")
	got, err := e.store.GetMany(e.ctx, keys)
	e.ok(err, "get_many")
	e.equal(len(got), 2, "get_many at version 1")
	got, err = v2.GetMany(e.ctx, keys)
	e.ok(err, "get_many at version 2")
	e.equal(len(got), 0, "get_many at version 2")
	_, err = v2.SetMany(e.ctx, map[string][]byte{"ford2": []byte("37")}, dbcache.DefaultTimeout)
	e.ok(err, "set_many at version 2")
	got, err = e.store.GetMany(e.ctx, []string{"ford2"})
	e.ok(err, "get_many")
	e.equal(len(got), 0, "version 2's entry at version 1")
	n, err := v2.DeleteMany(e.ctx, []string{"ford1", "ford2"})
	e.ok(err, "delete_many at version 2")
	e.equal(n, 1, "delete_many at version 2")
	e.equal(e.get(e.store, "ford1"), "37", "version 1 after version 2's delete_many")
}

// incr_version moves the entry, value and expiry intact (a difference
// from Django, whose expiry restarts), replacing what the new version
// held; a missing or expired entry is ErrMiss.
func (s *suite) testIncrVersion(t *testing.T) {
	e := s.env(t)
	vr, ok := e.store.(dbcache.Versioner)
	if !ok {
		return
	}
	v2 := s.WithVersion(e.store, 2)
	vr2 := v2.(dbcache.Versioner)
	e.set(v2, "answer", "42", dbcache.ExpiresIn(time.Hour))
	e.set(s.WithVersion(e.store, 3), "answer", "old", dbcache.DefaultTimeout)
	to, err := vr2.IncrVersion(e.ctx, "answer", 1)
	e.ok(err, "incr_version")
	e.equal(to, 3, "the new version")
	e.miss(v2, "answer")
	v3 := s.WithVersion(e.store, 3)
	e.equal(e.get(v3, "answer"), "42", "the moved value replaced version 3's")
	if r, ok := v3.(dbcache.TTLReader); ok {
		ttl, err := r.TTL(e.ctx, "answer")
		e.ok(err, "ttl")
		if d, ok := ttl.Duration(); !ok || d > time.Hour || d < 50*time.Minute {
			t.Fatalf("the moved entry's expiry: %s, want about an hour", ttl)
		}
	}
	_, err = vr.IncrVersion(e.ctx, "does_not_exist", 1)
	e.is(err, dbcache.ErrMiss, "incr_version of a missing key")

	e.set(v2, "null", "", dbcache.DefaultTimeout)
	to, err = vr2.IncrVersion(e.ctx, "null", 5)
	e.ok(err, "incr_version of an empty value")
	e.equal(to, 7, "the new version")
	e.equal(e.get(s.WithVersion(e.store, 7), "null"), "", "the empty value at version 7")

	e.set(v2, "old", "x", e.expiring())
	e.expire()
	if s.Age == nil {
		e.eventually(func() bool { return !e.has(v2, "old") }, "the entry to expire")
	}
	_, err = vr2.IncrVersion(e.ctx, "old", 1)
	e.is(err, dbcache.ErrMiss, "incr_version of an expired entry")
}

func (s *suite) testDecrVersion(t *testing.T) {
	e := s.env(t)
	if _, ok := e.store.(dbcache.Versioner); !ok {
		return
	}
	v2 := s.WithVersion(e.store, 2)
	e.set(v2, "answer", "42", dbcache.DefaultTimeout)
	to, err := v2.(dbcache.Versioner).DecrVersion(e.ctx, "answer", 1)
	e.ok(err, "decr_version")
	e.equal(to, 1, "the new version")
	e.miss(v2, "answer")
	e.equal(e.get(e.store, "answer"), "42", "at version 1")
	_, err = v2.(dbcache.Versioner).DecrVersion(e.ctx, "does_not_exist", 1)
	e.is(err, dbcache.ErrMiss, "decr_version of a missing key")
}
