package main

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestGetSet(t *testing.T) {
	t.Parallel()
	b := setup(t, true)

	require.Equal(t, "OK\n", b.ok(t, "set", "greeting", "hello, world"))
	// Off a terminal, get prints the bytes and nothing else.
	require.Equal(t, "hello, world", b.ok(t, "get", "greeting"))
	got := b.json(t, 0, "get", "greeting")
	require.Positive(t, got["ttl_seconds"]) // the expiry: TestGetJSONShowsExpiry
	delete(got, "ttl_seconds")
	require.Equal(t, map[string]any{"key": "greeting", "found": true, "value": "hello, world", "encoding": "utf8", "never_expires": false}, got)

	// A value from stdin is stored byte for byte: NUL, invalid UTF-8 and a
	// trailing newline included.
	binary := []byte("a\x00b\xff\xfe\n")
	r := b.run(t, opts{stdin: binary}, "set", "blob")
	requireCode(t, 0, r)
	r = b.run(t, opts{}, "get", "blob")
	requireCode(t, 0, r)
	require.Equal(t, string(binary), r.stdout)
	got = b.json(t, 0, "get", "blob")
	require.Equal(t, "base64", got["encoding"])
	decoded, err := base64.StdEncoding.DecodeString(got["value"].(string))
	require.NoError(t, err)
	require.Equal(t, binary, decoded)

	// An empty stdin stores an empty value: a hit, not a miss.
	requireCode(t, 0, b.run(t, opts{stdin: nil}, "set", "empty"))
	r = b.run(t, opts{}, "get", "empty")
	requireCode(t, 0, r)
	require.Empty(t, r.stdout)

	// The argument wins over stdin.
	requireCode(t, 0, b.run(t, opts{stdin: []byte("from stdin")}, "set", "both", "from arg"))
	require.Equal(t, "from arg", b.ok(t, "get", "both"))

	// set --json.
	got = b.json(t, 0, "set", "k", "v", "--ttl", "5m")
	require.Equal(t, map[string]any{"key": "k", "stored": true, "ttl": "5m0s"}, got)
}

func TestGetMiss(t *testing.T) {
	t.Parallel()
	b := setup(t, true)

	r := b.run(t, opts{}, "get", "nope")
	requireCode(t, 3, r)
	require.Empty(t, r.stdout, "a miss prints nothing on stdout")
	require.Equal(t, "dbcache: miss: no live entry for key \"nope\"\n", r.stderr)

	got := b.json(t, 3, "get", "nope")
	require.Equal(t, map[string]any{"key": "nope", "found": false}, got)
}

func TestTTL(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	dbNow := func() time.Time { return scalar[time.Time](t, b.pool, `SELECT statement_timestamp()`) }
	// setWithin sets key with args and requires its expiry to be ttl after
	// the write, by the database clock: between ttl after a moment before
	// the command and ttl after a moment after it.
	setWithin := func(key string, ttl time.Duration, args ...string) {
		t.Helper()
		before := dbNow()
		b.ok(t, append([]string{"set", key, "v"}, args...)...)
		after := dbNow()
		expires := scalar[time.Time](t, b.pool, `SELECT expires FROM dbcache_entries WHERE key = $1`, ":1:"+key)
		require.False(t, expires.Before(before.Add(ttl)), "%v: expires %s, before %s", args, expires, before)
		require.False(t, expires.After(after.Add(ttl)), "%v: expires %s, after %s", args, expires, after)
	}
	setWithin("default", 300*time.Second, "--ttl", "default")
	setWithin("omitted", 300*time.Second)
	setWithin("secs", 90*time.Second, "--ttl", "90")
	setWithin("frac", 1500*time.Millisecond, "--ttl", "1.5")
	setWithin("hour", time.Hour, "--ttl", "1h")
	setWithin("dur", 150*time.Second, "--ttl", "2m30s")

	for _, never := range []string{"never", "none", "forever", "NEVER"} {
		b.ok(t, "set", "n-"+never, "v", "--ttl", never)
		require.True(t, scalar[bool](t, b.pool, `SELECT expires IS NULL FROM dbcache_entries WHERE key = $1`, ":1:n-"+never))
	}

	// 0 and negative: expired at once, as Django's timeout=0.
	for _, zero := range []string{"0", "-1", "-5s"} {
		b.ok(t, "set", "z", "v", "--ttl", zero)
		requireCode(t, 3, b.run(t, opts{}, "get", "z"))
	}

	r := b.run(t, opts{}, "set", "k", "v", "--ttl", "soon")
	requireCode(t, 2, r)
	requireErrorLine(t, r, `--ttl "soon"`)
}

func TestAddTouchDeleteHas(t *testing.T) {
	t.Parallel()
	b := setup(t, true)

	require.Equal(t, "stored\n", b.ok(t, "add", "lock", "me"))
	r := b.run(t, opts{}, "add", "lock", "you")
	requireCode(t, 3, r)
	require.Equal(t, "not stored: key \"lock\" has a live entry\n", r.stdout)
	require.Equal(t, "me", b.ok(t, "get", "lock"))
	require.Equal(t, map[string]any{"key": "lock", "stored": false, "ttl": "default"}, b.json(t, 3, "add", "lock", "x"))
	require.Equal(t, map[string]any{"key": "lock2", "stored": true, "ttl": "1m0s"}, b.json(t, 0, "add", "lock2", "x", "--ttl", "1m"))
	// add reads stdin too.
	requireCode(t, 0, b.run(t, opts{stdin: []byte("piped")}, "add", "lock3"))
	require.Equal(t, "piped", b.ok(t, "get", "lock3"))

	require.Equal(t, "true\n", b.ok(t, "has", "lock"))
	r = b.run(t, opts{}, "has", "nope")
	requireCode(t, 3, r)
	require.Equal(t, "false\n", r.stdout)
	require.Equal(t, map[string]any{"key": "lock", "exists": true}, b.json(t, 0, "has", "lock"))
	require.Equal(t, map[string]any{"key": "nope", "exists": false}, b.json(t, 3, "has", "nope"))

	require.Equal(t, "touched\n", b.ok(t, "touch", "lock", "--ttl", "never"))
	require.True(t, scalar[bool](t, b.pool, `SELECT expires IS NULL FROM dbcache_entries WHERE key = ':1:lock'`))
	r = b.run(t, opts{}, "touch", "nope")
	requireCode(t, 3, r)
	require.Equal(t, "not found\n", r.stdout)
	require.Equal(t, map[string]any{"key": "nope", "touched": false}, b.json(t, 3, "touch", "nope"))
	// touch --ttl 0 expires the entry.
	b.ok(t, "touch", "lock2", "--ttl", "0")
	requireCode(t, 3, b.run(t, opts{}, "has", "lock2"))

	require.Equal(t, "deleted\n", b.ok(t, "delete", "lock"))
	r = b.run(t, opts{}, "delete", "lock")
	requireCode(t, 3, r)
	require.Equal(t, "not found\n", r.stdout)
	require.Equal(t, map[string]any{"key": "lock3", "deleted": true}, b.json(t, 0, "delete", "lock3"))
	require.Equal(t, map[string]any{"key": "lock3", "deleted": false}, b.json(t, 3, "delete", "lock3"))
}

func TestIncrDecr(t *testing.T) {
	t.Parallel()
	b := setup(t, true)

	b.ok(t, "set", "n", "5")
	require.Equal(t, "6\n", b.ok(t, "incr", "n"))
	require.Equal(t, "16\n", b.ok(t, "incr", "n", "10"))
	require.Equal(t, "15\n", b.ok(t, "decr", "n"))
	// A negative DELTA goes after "--".
	r := run(t, opts{}, append(append([]string{"decr"}, b.conn...), "n", "--", "-5")...)
	requireCode(t, 0, r)
	require.Equal(t, "20\n", r.stdout)
	require.Equal(t, map[string]any{"key": "n", "found": true, "value": float64(18)}, b.json(t, 0, "decr", "n", "2"))

	r = b.run(t, opts{}, "incr", "missing")
	requireCode(t, 3, r)
	require.Empty(t, r.stdout)
	requireErrorLine(t, r, "miss", `"missing"`)
	require.Equal(t, map[string]any{"key": "missing", "found": false}, b.json(t, 3, "decr", "missing"))

	b.ok(t, "set", "word", "ten")
	r = b.run(t, opts{}, "incr", "word")
	requireCode(t, 1, r)
	requireErrorLine(t, r, `incr "word": the value is not an integer`)
	require.Equal(t, "ten", b.ok(t, "get", "word"), "unchanged")

	b.ok(t, "set", "big", "9223372036854775807")
	r = b.run(t, opts{}, "incr", "big")
	requireCode(t, 1, r)
	requireErrorLine(t, r, "overflow")

	r = b.run(t, opts{}, "incr", "n", "ten")
	requireCode(t, 2, r)
	requireErrorLine(t, r, `DELTA "ten" is not an integer`)
}

func TestPrefixAndVersion(t *testing.T) {
	t.Parallel()
	b := setup(t, true)

	b.ok(t, "set", "user", "v2", "--key-prefix", "app", "--key-version", "2")
	require.Equal(t, 1, scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries WHERE key = 'app:2:user'`))
	requireCode(t, 3, b.run(t, opts{}, "get", "user"))
	requireCode(t, 3, b.run(t, opts{}, "get", "user", "--key-prefix", "app"))
	require.Equal(t, "v2", b.ok(t, "get", "user", "--key-prefix", "app", "--key-version", "2"))

	// --key-version 0 is version 0, not "the default".
	b.ok(t, "set", "zero", "v0", "--key-version", "0")
	require.Equal(t, 1, scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries WHERE key = ':0:zero'`))
	require.Equal(t, "v0", b.ok(t, "get", "zero", "--key-version", "0"))
}

func TestInvalidKey(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	r := b.run(t, opts{}, "set", strings.Repeat("k", 3000), "v")
	requireCode(t, 2, r)
	requireErrorLine(t, r, "invalid key")
	require.Zero(t, scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries`))
}

func TestClear(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	b.ok(t, "set", "a", "1")
	b.ok(t, "set", "b", "2", "--key-prefix", "other")

	// No terminal to ask on and no --yes: refused, nothing removed.
	r := b.run(t, opts{stdin: []byte("yes\n")}, "clear")
	requireCode(t, 2, r)
	requireErrorLine(t, r, "--yes")
	require.Contains(t, r.stderr, "Run 'dbcache clear --help' for usage.")
	require.Equal(t, 2, scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries`))

	require.Equal(t, "cleared\n", b.ok(t, "clear", "--yes"))
	require.Zero(t, scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries`), "every prefix is cleared")

	b.ok(t, "set", "a", "1")
	require.Equal(t, map[string]any{"cleared": true}, b.json(t, 0, "clear", "-y"))
	require.Zero(t, scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries`))
}
