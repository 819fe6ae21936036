package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dbcache/dbcache/dbcache"
)

// coreCases are the subtests of the core Store, each named after the
// Django test it ports where there is one (tests/cache/tests.py,
// BaseCacheTests), with dbcache's documented differences from Django's
// database backend.
func (s *suite) coreCases() []testCase {
	return []testCase{
		{"Simple", s.testSimple},
		{"StoredEmptyIsAHit", s.testStoredEmptyIsAHit},
		{"Add", s.testAdd},
		{"NonExistent", s.testNonExistent},
		{"GetMany", s.testGetMany},
		{"Delete", s.testDelete},
		{"HasKey", s.testHasKey},
		{"Incr", s.testIncr},
		{"Decr", s.testDecr},
		{"IncrNotInteger", s.testIncrNotInteger},
		{"IncrOverflow", s.testIncrOverflow},
		{"IncrKeepsExpiry", s.testIncrKeepsExpiry},
		{"BinaryValues", s.testBinaryValues},
		{"CallerOwnsValues", s.testCallerOwnsValues},
		{"Expiration", s.testExpiration},
		{"Touch", s.testTouch},
		{"TouchExpiredDoesNotRevive", s.testTouchExpiredDoesNotRevive},
		{"DeleteExpiredReportsAbsent", s.testDeleteExpiredReportsAbsent},
		{"ExpiredIsAbsentEverywhere", s.testExpiredIsAbsentEverywhere},
		{"Unicode", s.testUnicode},
		{"SetMany", s.testSetMany},
		{"SetManyExpiration", s.testSetManyExpiration},
		{"SetManyIsAllOrNothing", s.testSetManyIsAllOrNothing},
		{"DeleteMany", s.testDeleteMany},
		{"Clear", s.testClear},
		{"LongTimeout", s.testLongTimeout},
		{"ForeverTimeout", s.testForeverTimeout},
		{"ZeroAndNegativeTimeout", s.testZeroAndNegativeTimeout},
		{"GetOrSet", s.testGetOrSet},
		{"GetOrSetZeroTimeout", s.testGetOrSetZeroTimeout},
		{"InvalidKeys", s.testInvalidKeys},
		{"ConcurrentAddExactlyOneWins", s.testConcurrentAdd},
		{"ConcurrentIncrExactTotal", s.testConcurrentIncr},
		{"ConcurrentGetOrSetConverges", s.testConcurrentGetOrSet},
		{"Close", s.testClose},
	}
}

func (s *suite) testSimple(t *testing.T) {
	e := s.env(t)
	e.set(e.store, "key", "value", dbcache.DefaultTimeout)
	e.equal(e.get(e.store, "key"), "value", "get")
	e.set(e.store, "key", "other", dbcache.DefaultTimeout)
	e.equal(e.get(e.store, "key"), "other", "set replaces")
}

// test_default_used_when_none_is_set: a stored empty value is a hit, with
// a non-nil empty slice, never a miss.
func (s *suite) testStoredEmptyIsAHit(t *testing.T) {
	e := s.env(t)
	e.ok(e.store.Set(e.ctx, "nil", nil, dbcache.DefaultTimeout), "set nil")
	e.ok(e.store.Set(e.ctx, "empty", []byte{}, dbcache.DefaultTimeout), "set empty")
	for _, k := range []string{"nil", "empty"} {
		e.equal(e.get(e.store, k), "", "get %q", k)
		e.equal(e.has(e.store, k), true, "has_key %q", k)
	}
}

func (s *suite) testAdd(t *testing.T) {
	e := s.env(t)
	e.equal(e.add(e.store, "addkey1", "value", dbcache.DefaultTimeout), true, "first add")
	e.equal(e.add(e.store, "addkey1", "newvalue", dbcache.DefaultTimeout), false, "second add")
	e.equal(e.get(e.store, "addkey1"), "value", "the first add's value")
}

func (s *suite) testNonExistent(t *testing.T) {
	e := s.env(t)
	e.miss(e.store, "does_not_exist")
}

// test_get_many: missing keys are absent, an empty value is there, a key
// asked twice is one entry, and no keys is an empty map.
func (s *suite) testGetMany(t *testing.T) {
	e := s.env(t)
	for _, k := range []string{"a", "b", "c", "d"} {
		e.set(e.store, k, k, dbcache.DefaultTimeout)
	}
	e.set(e.store, "none", "", dbcache.DefaultTimeout)
	got, err := e.store.GetMany(e.ctx, []string{"a", "c", "d", "missing", "none", "a"})
	e.ok(err, "get_many")
	e.equal(len(got), 4, "entries found")
	for k, want := range map[string]string{"a": "a", "c": "c", "d": "d", "none": ""} {
		v, ok := got[k]
		if !ok || v == nil || string(v) != want {
			t.Fatalf("get_many[%q] = %q (present %v), want %q", k, v, ok, want)
		}
	}
	for _, keys := range [][]string{nil, {}} {
		got, err = e.store.GetMany(e.ctx, keys)
		e.ok(err, "get_many of no keys")
		if got == nil || len(got) != 0 {
			t.Fatalf("get_many of no keys: %#v, want an empty map", got)
		}
	}
}

// test_delete and test_delete_nonexistent.
func (s *suite) testDelete(t *testing.T) {
	e := s.env(t)
	e.set(e.store, "key1", "spam", dbcache.DefaultTimeout)
	e.set(e.store, "key2", "eggs", dbcache.DefaultTimeout)
	e.equal(e.del(e.store, "key1"), true, "delete a live key")
	e.miss(e.store, "key1")
	e.equal(e.get(e.store, "key2"), "eggs", "the other key")
	e.equal(e.del(e.store, "key1"), false, "delete it again")
	e.equal(e.del(e.store, "nonexistent_key"), false, "delete a missing key")
}

// test_has_key and test_in.
func (s *suite) testHasKey(t *testing.T) {
	e := s.env(t)
	e.set(e.store, "hello1", "goodbye1", dbcache.DefaultTimeout)
	e.set(e.store, "no_expiry", "here", dbcache.Forever)
	e.set(e.store, "null", "", dbcache.DefaultTimeout)
	for key, want := range map[string]bool{"hello1": true, "goodbye1": false, "no_expiry": true, "null": true} {
		e.equal(e.has(e.store, key), want, "has_key %q", key)
	}
}

func (s *suite) testIncr(t *testing.T) {
	e := s.env(t)
	e.set(e.store, "answer", "41", dbcache.DefaultTimeout)
	for _, step := range []struct{ delta, want int64 }{{1, 42}, {10, 52}, {-10, 42}, {0, 42}} {
		n, err := e.store.Incr(e.ctx, "answer", step.delta)
		e.ok(err, "incr %d", step.delta)
		e.equal(n, step.want, "incr %d", step.delta)
	}
	e.equal(e.get(e.store, "answer"), "42", "the stored form is decimal ASCII")
	for _, d := range []int64{1, -1} {
		_, err := e.store.Incr(e.ctx, "does_not_exist", d)
		e.is(err, dbcache.ErrMiss, "incr a missing key")
	}
	e.miss(e.store, "does_not_exist")
}

func (s *suite) testDecr(t *testing.T) {
	e := s.env(t)
	e.set(e.store, "answer", "43", dbcache.DefaultTimeout)
	for _, step := range []struct{ delta, want int64 }{{1, 42}, {10, 32}, {-10, 42}} {
		n, err := e.store.Decr(e.ctx, "answer", step.delta)
		e.ok(err, "decr %d", step.delta)
		e.equal(n, step.want, "decr %d", step.delta)
	}
	_, err := e.store.Decr(e.ctx, "does_not_exist", 1)
	e.is(err, dbcache.ErrMiss, "decr a missing key")
	e.set(e.store, "neg", "-1", dbcache.DefaultTimeout)
	n, err := e.store.Decr(e.ctx, "neg", math.MinInt64)
	e.ok(err, "-1 - MinInt64 fits in an int64")
	e.equal(n, int64(math.MaxInt64), "-1 - MinInt64")
}

// An integer is the canonical decimal form of an int64, as Redis INCR
// reads it; anything else is ErrNotInteger, and the value is left as it
// was.
func (s *suite) testIncrNotInteger(t *testing.T) {
	e := s.env(t)
	for i, v := range []string{"", "abc", "+1", " 1", "1 ", "01", "-0", "1.5", "0x10", "9223372036854775808", "1e3", strings.Repeat("1", 30)} {
		k := fmt.Sprint("k", i)
		e.set(e.store, k, v, dbcache.DefaultTimeout)
		_, err := e.store.Incr(e.ctx, k, 1)
		e.is(err, dbcache.ErrNotInteger, "incr of %q", v)
		_, err = e.store.Decr(e.ctx, k, 1)
		e.is(err, dbcache.ErrNotInteger, "decr of %q", v)
		e.equal(e.get(e.store, k), v, "the value after a refused incr")
	}
}

// A result past an int64 is ErrOverflow, and the value is left as it was.
func (s *suite) testIncrOverflow(t *testing.T) {
	e := s.env(t)
	e.set(e.store, "max", "9223372036854775807", dbcache.DefaultTimeout)
	e.set(e.store, "min", "-9223372036854775808", dbcache.DefaultTimeout)
	_, err := e.store.Incr(e.ctx, "max", 1)
	e.is(err, dbcache.ErrOverflow, "incr of MaxInt64")
	_, err = e.store.Decr(e.ctx, "min", 1)
	e.is(err, dbcache.ErrOverflow, "decr of MinInt64")
	_, err = e.store.Incr(e.ctx, "min", -1)
	e.is(err, dbcache.ErrOverflow, "incr of MinInt64 by -1")
	_, err = e.store.Decr(e.ctx, "max", math.MinInt64)
	e.is(err, dbcache.ErrOverflow, "decr of MaxInt64 by MinInt64")
	e.equal(e.get(e.store, "max"), "9223372036854775807", "max after")
	e.equal(e.get(e.store, "min"), "-9223372036854775808", "min after")
	n, err := e.store.Incr(e.ctx, "min", math.MaxInt64)
	e.ok(err, "MinInt64 + MaxInt64")
	e.equal(n, int64(-1), "MinInt64 + MaxInt64")
}

// The entry keeps its expiry through Incr: a counter with a timeout
// expires on time, however often it is incremented.
func (s *suite) testIncrKeepsExpiry(t *testing.T) {
	e := s.env(t)
	e.set(e.store, "n", "1", e.expiring())
	e.set(e.store, "forever", "1", dbcache.Forever)
	if _, err := e.store.Incr(e.ctx, "n", 1); err != nil && !errors.Is(err, dbcache.ErrMiss) {
		t.Fatalf("incr: %v", err) // ErrMiss only if the short timeout already passed
	}
	_, err := e.store.Incr(e.ctx, "forever", 1)
	e.ok(err, "incr forever")
	e.expire("n")
	_, err = e.store.Incr(e.ctx, "n", 1)
	e.is(err, dbcache.ErrMiss, "incr after the expiry")
	e.equal(e.get(e.store, "forever"), "2", "an entry that never expires")
}

// test_data_types and test_binary_string: bytes round-trip exactly, NUL
// bytes and invalid UTF-8 included, through every write and read.
func (s *suite) testBinaryValues(t *testing.T) {
	e := s.env(t)
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	values := map[string][]byte{
		"empty":   {},
		"nul":     {0, 0, 0},
		"bad8":    {0xff, 0xfe, 0x00, 'a', 0xc3},
		"all256":  all,
		"bigtext": bytes.Repeat([]byte("ü€𝄞"), 10000),
	}
	many := map[string][]byte{}
	for k, v := range values {
		e.ok(e.store.Set(e.ctx, "set_"+k, v, dbcache.DefaultTimeout), "set %s", k)
		ok, err := e.store.Add(e.ctx, "add_"+k, v, dbcache.DefaultTimeout)
		e.ok(err, "add %s", k)
		e.equal(ok, true, "add %s", k)
		got, err := e.store.GetOrSet(e.ctx, "gos_"+k, v, dbcache.DefaultTimeout)
		e.ok(err, "get_or_set %s", k)
		e.equal(got, v, "get_or_set %s", k)
		for _, p := range []string{"set_", "add_", "gos_"} {
			got, err := e.store.Get(e.ctx, p+k)
			e.ok(err, "get %s%s", p, k)
			if !bytes.Equal(got, v) {
				t.Fatalf("get %s%s: the bytes changed", p, k)
			}
		}
		many["many_"+k] = v
	}
	failed, err := e.store.SetMany(e.ctx, many, dbcache.DefaultTimeout)
	e.ok(err, "set_many")
	e.equal(len(failed), 0, "set_many failed keys")
	keys := make([]string, 0, len(many))
	for k := range many {
		keys = append(keys, k)
	}
	got, err := e.store.GetMany(e.ctx, keys)
	e.ok(err, "get_many")
	for k, v := range many {
		if !bytes.Equal(got[k], v) {
			t.Fatalf("get_many[%q]: the bytes changed", k)
		}
	}
}

// The caller owns what it passes and what it gets: changing either after
// the call changes nothing stored.
func (s *suite) testCallerOwnsValues(t *testing.T) {
	e := s.env(t)
	v := []byte("value")
	e.ok(e.store.Set(e.ctx, "k", v, dbcache.DefaultTimeout), "set")
	v[0] = 'X'
	got, err := e.store.Get(e.ctx, "k")
	e.ok(err, "get")
	e.equal(string(got), "value", "after changing the slice passed to Set")
	got[0] = 'Y'
	e.equal(e.get(e.store, "k"), "value", "after changing the slice Get returned")
	many, err := e.store.GetMany(e.ctx, []string{"k"})
	e.ok(err, "get_many")
	many["k"][0] = 'Z'
	e.equal(e.get(e.store, "k"), "value", "after changing the slice GetMany returned")
	got, err = e.store.GetOrSet(e.ctx, "k", []byte("other"), dbcache.DefaultTimeout)
	e.ok(err, "get_or_set")
	got[0] = 'W'
	e.equal(e.get(e.store, "k"), "value", "after changing the slice GetOrSet returned")
}

// test_expiration: after the timeout, Get misses, Add succeeds over the
// expired entry and HasKey is false.
func (s *suite) testExpiration(t *testing.T) {
	e := s.env(t)
	for _, k := range []string{"expire1", "expire2", "expire3"} {
		e.set(e.store, k, "very quickly", e.expiring())
	}
	e.expire("expire1", "expire2", "expire3")
	e.miss(e.store, "expire1")
	e.equal(e.add(e.store, "expire2", "newvalue", dbcache.DefaultTimeout), true, "add over an expired entry")
	e.equal(e.get(e.store, "expire2"), "newvalue", "the added value")
	e.equal(e.has(e.store, "expire3"), false, "has_key of an expired entry")
}

// test_touch: Touch gives a live entry a new expiry (the default timeout
// included) and reports whether there was one.
func (s *suite) testTouch(t *testing.T) {
	e := s.env(t)
	e.equal(e.touch(e.store, "nonexistent", dbcache.DefaultTimeout), false, "touch a missing key")
	if s.Age == nil {
		// A long entry touched to a short timeout expires by it.
		e.set(e.store, "k", "v", dbcache.ExpiresIn(time.Hour))
		e.equal(e.touch(e.store, "k", dbcache.ExpiresIn(short)), true, "touch a live key")
		e.expire("k")
		e.miss(e.store, "k")
		// A short entry touched to Forever outlives its first timeout. A
		// machine so slow that the timeout passed before the touch makes
		// the touch return false: try again with another key.
		key := ""
		for i := 0; key == ""; i++ {
			k := fmt.Sprint("f", i)
			e.set(e.store, k, "v", dbcache.ExpiresIn(short))
			if e.touch(e.store, k, dbcache.Forever) {
				key = k
			} else if e.ctx.Err() != nil {
				t.Fatal("no touch landed within the short timeout before the subtest's time ran out")
			}
		}
		e.set(e.store, "witness", "v", dbcache.ExpiresIn(short))
		e.expire("witness")
		e.equal(e.get(e.store, key), "v", "touched to Forever")
		return
	}
	e.set(e.store, "expire1", "very quickly", dbcache.ExpiresIn(time.Second))
	e.equal(e.touch(e.store, "expire1", dbcache.ExpiresIn(4*time.Second)), true, "touch")
	e.age(2 * time.Second)
	e.equal(e.has(e.store, "expire1"), true, "2 s into a 4 s timeout")
	e.age(3 * time.Second)
	e.equal(e.has(e.store, "expire1"), false, "5 s into a 4 s timeout")

	e.set(e.store, "expire2", "very quickly", dbcache.ExpiresIn(time.Second))
	e.equal(e.touch(e.store, "expire2", dbcache.DefaultTimeout), true, "touch with the default timeout")
	e.age(2 * time.Second)
	e.equal(e.has(e.store, "expire2"), true, "touch with the default timeout outlives 1 s")

	e.set(e.store, "expire3", "v", dbcache.ExpiresIn(time.Second))
	e.equal(e.touch(e.store, "expire3", dbcache.Forever), true, "touch to Forever")
	e.age(100 * 365 * 24 * time.Hour)
	e.equal(e.get(e.store, "expire3"), "v", "touched to Forever")
}

// A difference from Django's database backend: Touch on an expired entry
// returns false and never brings the value back.
func (s *suite) testTouchExpiredDoesNotRevive(t *testing.T) {
	e := s.env(t)
	e.set(e.store, "k", "stale", e.expiring())
	e.expire("k")
	e.equal(e.touch(e.store, "k", dbcache.Forever), false, "touch an expired entry")
	e.miss(e.store, "k")
}

// A difference from Django's database backend: deleting an expired entry
// reports false, since it was already absent.
func (s *suite) testDeleteExpiredReportsAbsent(t *testing.T) {
	e := s.env(t)
	e.set(e.store, "k", "v", e.expiring())
	e.set(e.store, "m", "v", e.expiring())
	e.expire("k", "m")
	e.equal(e.del(e.store, "k"), false, "delete an expired entry")
	n, err := e.store.DeleteMany(e.ctx, []string{"m"})
	e.ok(err, "delete_many")
	e.equal(n, 0, "delete_many of an expired entry")
}

// An expired entry is absent for every operation.
func (s *suite) testExpiredIsAbsentEverywhere(t *testing.T) {
	e := s.env(t)
	e.set(e.store, "n", "5", e.expiring())
	e.expire("n")
	e.miss(e.store, "n")
	got, err := e.store.GetMany(e.ctx, []string{"n"})
	e.ok(err, "get_many")
	e.equal(len(got), 0, "get_many of an expired entry")
	e.equal(e.touch(e.store, "n", dbcache.Forever), false, "touch an expired entry")
	_, err = e.store.Incr(e.ctx, "n", 1)
	e.is(err, dbcache.ErrMiss, "incr an expired entry")
	_, err = e.store.Decr(e.ctx, "n", 1)
	e.is(err, dbcache.ErrMiss, "decr an expired entry")
	v, err := e.store.GetOrSet(e.ctx, "n", []byte("fresh"), dbcache.DefaultTimeout)
	e.ok(err, "get_or_set over an expired entry")
	e.equal(string(v), "fresh", "get_or_set over an expired entry")
}

func (s *suite) testUnicode(t *testing.T) {
	e := s.env(t)
	stuff := map[string]string{
		"ascii":                "ascii_value",
		"unicode_ascii":        "Iñtërnâtiônàlizætiøn1",
		"Iñtërnâtiônàlizætiøn": "Iñtërnâtiônàlizætiøn2",
		"ascii2":               "{'x' : 1 }",
		"emoji🔑":               "𝄞",
	}
	for k, v := range stuff {
		e.set(e.store, k, v, dbcache.DefaultTimeout)
		e.equal(e.get(e.store, k), v, "get %q", k)
		e.equal(e.del(e.store, k), true, "delete %q", k)
		e.equal(e.add(e.store, k, v, dbcache.DefaultTimeout), true, "add %q", k)
		e.equal(e.get(e.store, k), v, "get %q after add", k)
		e.del(e.store, k)
	}
	items := map[string][]byte{}
	for k, v := range stuff {
		items[k] = []byte(v)
	}
	failed, err := e.store.SetMany(e.ctx, items, dbcache.DefaultTimeout)
	e.ok(err, "set_many")
	e.equal(len(failed), 0, "set_many failed keys")
	for k, v := range stuff {
		e.equal(e.get(e.store, k), v, "get %q after set_many", k)
	}
}

// test_set_many, test_set_many_returns_empty_list_on_success,
// test_set_many_empty_data.
func (s *suite) testSetMany(t *testing.T) {
	e := s.env(t)
	e.set(e.store, "key1", "old", dbcache.DefaultTimeout)
	failed, err := e.store.SetMany(e.ctx, map[string][]byte{"key1": []byte("spam"), "key2": []byte("eggs")}, dbcache.DefaultTimeout)
	e.ok(err, "set_many")
	e.equal(len(failed), 0, "set_many failed keys")
	e.equal(e.get(e.store, "key1"), "spam", "key1")
	e.equal(e.get(e.store, "key2"), "eggs", "key2")
	for _, items := range []map[string][]byte{{}, nil} {
		failed, err = e.store.SetMany(e.ctx, items, dbcache.DefaultTimeout)
		e.ok(err, "set_many of nothing")
		e.equal(len(failed), 0, "set_many of nothing")
	}
}

func (s *suite) testSetManyExpiration(t *testing.T) {
	e := s.env(t)
	_, err := e.store.SetMany(e.ctx, map[string][]byte{"key1": []byte("spam"), "key2": []byte("eggs")}, e.expiring())
	e.ok(err, "set_many")
	e.expire("key1", "key2")
	e.miss(e.store, "key1")
	e.miss(e.store, "key2")
}

// A batch with one key the store refuses writes nothing, reports every
// key as failed, and the error matches ErrInvalidKey; DeleteMany and
// GetMany refuse it too, deleting nothing.
func (s *suite) testSetManyIsAllOrNothing(t *testing.T) {
	e := s.env(t)
	e.set(e.store, "keep", "v", dbcache.DefaultTimeout)
	failed, err := e.store.SetMany(e.ctx, map[string][]byte{"good": []byte("1"), "bad\x00": []byte("2"), "keep": []byte("new")}, dbcache.DefaultTimeout)
	e.is(err, dbcache.ErrInvalidKey, "set_many with a NUL key")
	slices.Sort(failed)
	e.equal(failed, []string{"bad\x00", "good", "keep"}, "set_many's failed keys")
	e.miss(e.store, "good")
	e.equal(e.get(e.store, "keep"), "v", "an entry the refused batch would have replaced")
	_, err = e.store.DeleteMany(e.ctx, []string{"keep", "bad\x00"})
	e.is(err, dbcache.ErrInvalidKey, "delete_many with a NUL key")
	e.equal(e.get(e.store, "keep"), "v", "an entry the refused delete_many named")
	_, err = e.store.GetMany(e.ctx, []string{"keep", "bad\x00"})
	e.is(err, dbcache.ErrInvalidKey, "get_many with a NUL key")
}

// test_delete_many and test_delete_many_no_keys: the count is of live
// entries removed.
func (s *suite) testDeleteMany(t *testing.T) {
	e := s.env(t)
	_, err := e.store.SetMany(e.ctx, map[string][]byte{"key1": []byte("spam"), "key2": []byte("eggs"), "key3": []byte("ham")}, dbcache.DefaultTimeout)
	e.ok(err, "set_many")
	n, err := e.store.DeleteMany(e.ctx, []string{"key1", "key2", "nope", "key1"})
	e.ok(err, "delete_many")
	e.equal(n, 2, "live entries removed")
	e.miss(e.store, "key1")
	e.miss(e.store, "key2")
	e.equal(e.get(e.store, "key3"), "ham", "key3")
	for _, keys := range [][]string{nil, {}} {
		n, err = e.store.DeleteMany(e.ctx, keys)
		e.ok(err, "delete_many of no keys")
		e.equal(n, 0, "delete_many of no keys")
	}
}

// test_clear: every entry goes, every version's (when the suite has
// views).
func (s *suite) testClear(t *testing.T) {
	e := s.env(t)
	e.set(e.store, "key1", "spam", dbcache.DefaultTimeout)
	e.set(e.store, "key2", "eggs", dbcache.Forever)
	var other dbcache.Store
	if s.WithVersion != nil {
		other = s.WithVersion(e.store, 7)
		e.set(other, "key3", "ham", dbcache.DefaultTimeout)
	}
	e.ok(e.store.Clear(e.ctx), "clear")
	e.miss(e.store, "key1")
	e.miss(e.store, "key2")
	if other != nil {
		e.miss(other, "key3")
	}
	e.ok(e.store.Clear(e.ctx), "clear an empty store")
}

// test_long_timeout: a timeout of 30 days and a second is still relative
// (memcached reads longer ones as a date; dbcache never does).
func (s *suite) testLongTimeout(t *testing.T) {
	e := s.env(t)
	long := dbcache.ExpiresIn(30*24*time.Hour + time.Second)
	e.set(e.store, "key1", "eggs", long)
	e.equal(e.get(e.store, "key1"), "eggs", "set")
	e.equal(e.add(e.store, "key2", "ham", long), true, "add")
	_, err := e.store.SetMany(e.ctx, map[string][]byte{"key3": []byte("sausage"), "key4": []byte("lobster bisque")}, long)
	e.ok(err, "set_many")
	e.equal(e.get(e.store, "key4"), "lobster bisque", "set_many")
	if r, ok := e.store.(dbcache.TTLReader); ok {
		ttl, err := r.TTL(e.ctx, "key1")
		e.ok(err, "ttl")
		d, _ := ttl.Duration()
		if d < 30*24*time.Hour-time.Hour || d > 30*24*time.Hour+time.Second {
			t.Fatalf("ttl of a 30-day timeout: %s", ttl)
		}
	}
	if e.age(30*24*time.Hour - time.Hour) {
		e.equal(e.get(e.store, "key2"), "ham", "an hour before the end of 30 days")
	}
}

// Forever never expires, through every write.
func (s *suite) testForeverTimeout(t *testing.T) {
	e := s.env(t)
	e.set(e.store, "key1", "eggs", dbcache.Forever)
	e.equal(e.add(e.store, "key1", "newvalue", dbcache.Forever), false, "add over a live key")
	_, err := e.store.SetMany(e.ctx, map[string][]byte{"key3": []byte("sausage")}, dbcache.Forever)
	e.ok(err, "set_many")
	_, err = e.store.GetOrSet(e.ctx, "key4", []byte("chips"), dbcache.Forever)
	e.ok(err, "get_or_set")
	e.set(e.store, "key5", "belgian fries", e.expiring())
	ok := e.touch(e.store, "key5", dbcache.Forever) // false only if a short timeout passed first
	if !e.age(100 * 365 * 24 * time.Hour) {
		e.set(e.store, "witness", "v", dbcache.ExpiresIn(short))
		e.expire("witness")
	}
	for k, v := range map[string]string{"key1": "eggs", "key3": "sausage", "key4": "chips"} {
		e.equal(e.get(e.store, k), v, "%s after the ageing", k)
	}
	if ok {
		e.equal(e.get(e.store, "key5"), "belgian fries", "touched to Forever")
	}
}

// test_zero_timeout, with negative timeouts: Set stores nothing visible,
// Add returns true and stores nothing visible, Touch expires a live entry
// and returns true; over a live entry, Add returns false and changes
// nothing.
func (s *suite) testZeroAndNegativeTimeout(t *testing.T) {
	for _, d := range []time.Duration{0, -time.Second, -time.Hour} {
		t.Run(d.String(), func(t *testing.T) {
			t.Parallel()
			e := s.env(t)
			to := dbcache.ExpiresIn(d)
			e.set(e.store, "key1", "eggs", to)
			e.miss(e.store, "key1")
			e.equal(e.add(e.store, "key2", "ham", to), true, "add")
			e.miss(e.store, "key2")
			_, err := e.store.SetMany(e.ctx, map[string][]byte{"key3": []byte("sausage"), "key4": []byte("lobster")}, to)
			e.ok(err, "set_many")
			e.miss(e.store, "key3")
			e.miss(e.store, "key4")
			e.set(e.store, "key5", "belgian fries", dbcache.DefaultTimeout)
			e.equal(e.touch(e.store, "key5", to), true, "touch")
			e.miss(e.store, "key5")
			e.set(e.store, "live", "x", dbcache.DefaultTimeout)
			e.equal(e.add(e.store, "live", "y", to), false, "add over a live entry")
			e.equal(e.get(e.store, "live"), "x", "the live entry")
			e.set(e.store, "live", "z", to)
			e.miss(e.store, "live")
		})
	}
}

// test_get_or_set: a miss stores the value (an empty one included) and
// returns it; a hit returns the stored value, not the one passed.
func (s *suite) testGetOrSet(t *testing.T) {
	e := s.env(t)
	e.miss(e.store, "projector")
	v, err := e.store.GetOrSet(e.ctx, "projector", []byte("42"), dbcache.DefaultTimeout)
	e.ok(err, "get_or_set")
	e.equal(string(v), "42", "get_or_set on a miss")
	e.equal(e.get(e.store, "projector"), "42", "stored")
	v, err = e.store.GetOrSet(e.ctx, "projector", []byte("43"), dbcache.DefaultTimeout)
	e.ok(err, "get_or_set")
	e.equal(string(v), "42", "get_or_set on a hit")
	v, err = e.store.GetOrSet(e.ctx, "null", nil, dbcache.DefaultTimeout)
	e.ok(err, "get_or_set of nil")
	if v == nil || len(v) != 0 {
		t.Fatalf("get_or_set of nil: %#v, want an empty non-nil slice", v)
	}
	e.equal(e.get(e.store, "null"), "", "an empty default is stored")
}

// A zero timeout returns the value and stores nothing, as Django does.
func (s *suite) testGetOrSetZeroTimeout(t *testing.T) {
	e := s.env(t)
	v, err := e.store.GetOrSet(e.ctx, "k", []byte("v"), dbcache.ExpiresIn(0))
	e.ok(err, "get_or_set")
	e.equal(string(v), "v", "get_or_set with a zero timeout")
	e.miss(e.store, "k")
}

// Keys PostgreSQL cannot store are ErrInvalidKey on every operation, and
// nothing is written.
func (s *suite) testInvalidKeys(t *testing.T) {
	e := s.env(t)
	for name, key := range map[string]string{
		"nul":      "a\x00b",
		"utf8":     "bad\xff",
		"too long": strings.Repeat("k", dbcache.MaxKeyBytes+1),
	} {
		for op, err := range everyOp(e, key) {
			e.is(err, dbcache.ErrInvalidKey, "%s on a %s key", op, name)
		}
	}
	e.set(e.store, "witness", "v", dbcache.DefaultTimeout)
	e.ok(e.store.Clear(e.ctx), "clear")
	e.miss(e.store, "witness")
}

// everyOp runs every key-taking operation of the core Store on key.
func everyOp(e *env, key string) map[string]error {
	ctx, s, d := e.ctx, e.store, dbcache.DefaultTimeout
	errs := map[string]error{}
	_, errs["add"] = s.Add(ctx, key, []byte("1"), d)
	_, errs["get"] = s.Get(ctx, key)
	errs["set"] = s.Set(ctx, key, []byte("1"), d)
	_, errs["get_or_set"] = s.GetOrSet(ctx, key, []byte("1"), d)
	_, errs["has_key"] = s.HasKey(ctx, key)
	_, errs["incr"] = s.Incr(ctx, key, 1)
	_, errs["decr"] = s.Decr(ctx, key, 1)
	_, errs["touch"] = s.Touch(ctx, key, d)
	_, errs["delete"] = s.Delete(ctx, key)
	_, errs["get_many"] = s.GetMany(ctx, []string{key, "other"})
	_, errs["set_many"] = s.SetMany(ctx, map[string][]byte{key: []byte("1"), "other": []byte("2")}, d)
	_, errs["delete_many"] = s.DeleteMany(ctx, []string{key, "other"})
	return errs
}

// Of any number of concurrent Adds of a key, exactly one returns true,
// over a missing entry and over an expired one.
func (s *suite) testConcurrentAdd(t *testing.T) {
	e := s.env(t)
	keys := []string{"fresh", "over_expired"}
	e.set(e.store, "over_expired", "old", e.expiring())
	e.expire("over_expired")
	var wg sync.WaitGroup
	wins := make([]int64, len(keys))
	var mu sync.Mutex
	for g := range 16 {
		wg.Go(func() {
			for i, k := range keys {
				ok, err := e.store.Add(e.ctx, k, []byte(fmt.Sprint(g)), dbcache.DefaultTimeout)
				if err != nil {
					t.Errorf("add %q: %v", k, err)
				}
				if ok {
					mu.Lock()
					wins[i]++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	e.equal(wins, []int64{1, 1}, "adds that returned true, per key")
}

// Concurrent Incrs never lose an update.
func (s *suite) testConcurrentIncr(t *testing.T) {
	e := s.env(t)
	e.set(e.store, "n", "0", dbcache.DefaultTimeout)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 25 {
				if _, err := e.store.Incr(e.ctx, "n", 2); err != nil {
					t.Errorf("incr: %v", err)
				}
				if _, err := e.store.Decr(e.ctx, "n", 1); err != nil {
					t.Errorf("decr: %v", err)
				}
			}
		})
	}
	wg.Wait()
	e.equal(e.get(e.store, "n"), "200", "8 x 25 x (+2 -1)")
}

// GetOrSet returns the first stored value to every racing caller.
func (s *suite) testConcurrentGetOrSet(t *testing.T) {
	e := s.env(t)
	var wg sync.WaitGroup
	got := make([]string, 16)
	for g := range got {
		wg.Go(func() {
			v, err := e.store.GetOrSet(e.ctx, "k", []byte(fmt.Sprint("v", g)), dbcache.DefaultTimeout)
			if err != nil {
				t.Errorf("get_or_set: %v", err)
			}
			got[g] = string(v)
		})
	}
	wg.Wait()
	stored := e.get(e.store, "k")
	for g, v := range got {
		if v != stored {
			t.Fatalf("caller %d got %q where %q was stored", g, v, stored)
		}
	}
}

// A store that closes (an io.Closer) returns ErrClosed from every
// operation after Close, and Close again is a no-op.
func (s *suite) testClose(t *testing.T) {
	e := s.env(t)
	c, ok := e.store.(io.Closer)
	if !ok {
		return // nothing to close
	}
	e.set(e.store, "k", "v", dbcache.DefaultTimeout)
	e.ok(c.Close(), "close")
	e.ok(c.Close(), "close again")
	for op, err := range everyOp(e, "k") {
		e.is(err, dbcache.ErrClosed, "%s after close", op)
	}
	e.is(e.store.Clear(e.ctx), dbcache.ErrClosed, "clear after close")
}
