package main

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
)

// ttl, get --json's expiry, keys and delete-prefix (issue 11), run as a
// user runs them.

// dbNow is the database's clock, which decides expiry.
func dbNow(t *testing.T, b *testBundle) time.Time {
	t.Helper()
	return scalar[time.Time](t, b.pool, `SELECT clock_timestamp()`)
}

// requireRemaining checks a remaining lifetime reported between before and
// after (database clock) for an entry set with ttl at or after before: at
// most ttl, and at least what is left of ttl at after, less the tenth of a
// second the human form cuts.
func requireRemaining(t *testing.T, got, ttl time.Duration, before, after time.Time) {
	t.Helper()
	require.Positive(t, got)
	require.LessOrEqual(t, got, ttl)
	require.GreaterOrEqual(t, got, ttl-after.Sub(before)-100*time.Millisecond)
}

func TestTTLCommand(t *testing.T) {
	t.Parallel()
	b := setup(t, true)

	before := dbNow(t, b)
	b.ok(t, "set", "k", "v", "--ttl", "5m")
	out := b.ok(t, "ttl", "k")
	human, err := time.ParseDuration(strings.TrimSuffix(out, "\n"))
	require.NoError(t, err, "a Go duration on one line: %q", out)
	got := b.json(t, 0, "ttl", "k")
	after := dbNow(t, b)
	requireRemaining(t, human, 5*time.Minute, before, after)
	require.Equal(t, "k", got["key"])
	require.Equal(t, true, got["found"])
	require.Equal(t, false, got["never_expires"])
	secs := time.Duration(got["ttl_seconds"].(float64) * float64(time.Second))
	requireRemaining(t, secs, 5*time.Minute, before, after)
	require.LessOrEqual(t, secs, human+100*time.Millisecond, "the JSON is read after the line")

	// An entry that never expires.
	b.ok(t, "set", "n", "v", "--ttl", "never")
	require.Equal(t, "never\n", b.ok(t, "ttl", "n"))
	require.Equal(t, map[string]any{"key": "n", "found": true, "ttl_seconds": nil, "never_expires": true}, b.json(t, 0, "ttl", "n"))

	// A miss, as get reports one: nothing on stdout, exit 3; the JSON is a
	// result, on stdout, with stderr empty.
	dbtest.Exec(t, b.pool, `INSERT INTO dbcache_entries VALUES (':1:gone', 'v', now() - interval '1s')`)
	for _, key := range []string{"nope", "gone"} {
		r := b.run(t, opts{}, "ttl", key)
		requireCode(t, 3, r)
		require.Empty(t, r.stdout)
		require.Equal(t, `dbcache: miss: no live entry for key "`+key+`"`+"\n", r.stderr)
		r = b.run(t, opts{}, "ttl", key, "--json")
		requireCode(t, 3, r)
		require.Empty(t, r.stderr)
		require.Equal(t, `{"key":"`+key+`","found":false}`+"\n", r.stdout)
	}

	// Key prefix and version, as every cache command takes them.
	b.ok(t, "set", "user", "v", "--key-prefix", "app", "--key-version", "2", "--ttl", "never")
	requireCode(t, 3, b.run(t, opts{}, "ttl", "user"))
	require.Equal(t, "never\n", b.ok(t, "ttl", "user", "--key-prefix", "app", "--key-version", "2"))

	// Bad input: a clear error, exit 2.
	r := b.run(t, opts{}, "ttl", "bad\xffkey")
	requireCode(t, 2, r)
	requireErrorLine(t, r, `invalid key "bad\xffkey": not valid UTF-8`)
	r = b.run(t, opts{}, "ttl", "bad\xffkey", "--json")
	requireCode(t, 2, r)
	require.Equal(t, "invalid_key", jsonError(t, r)["error"])
	require.Empty(t, r.stdout)
	for _, args := range [][]string{{"ttl"}, {"ttl", "a", "b"}, {"ttl", "k", "--ttl", "5m"}} {
		r := b.run(t, opts{}, args...)
		requireCode(t, 2, r)
		require.Equal(t, "Run 'dbcache ttl --help' for usage.", lastLine(r.stderr))
		require.Empty(t, r.stdout)
	}
}

func TestGetJSONShowsExpiry(t *testing.T) {
	t.Parallel()
	b := setup(t, true)

	before := dbNow(t, b)
	b.ok(t, "set", "k", "hello", "--ttl", "90s")
	got := b.json(t, 0, "get", "k")
	after := dbNow(t, b)
	secs := got["ttl_seconds"].(float64)
	delete(got, "ttl_seconds")
	require.Equal(t, map[string]any{"key": "k", "found": true, "value": "hello", "encoding": "utf8", "never_expires": false}, got)
	requireRemaining(t, time.Duration(secs*float64(time.Second)), 90*time.Second, before, after)

	requireCode(t, 0, b.run(t, opts{stdin: []byte("a\x00\xff")}, "set", "bin", "--ttl", "never"))
	require.Equal(t, map[string]any{"key": "bin", "found": true, "value": "YQD/", "encoding": "base64", "ttl_seconds": nil, "never_expires": true},
		b.json(t, 0, "get", "bin"))

	// Without --json, get is unchanged: the bytes, nothing else.
	require.Equal(t, "hello", b.ok(t, "get", "k"))
	// A miss is as before.
	require.Equal(t, map[string]any{"key": "nope", "found": false}, b.json(t, 3, "get", "nope"))
}

// keyLines splits keys' output into lines and decodes each: a bare line is
// the key, a quoted one a JSON string.
func keyLines(t *testing.T, out string) []string {
	t.Helper()
	if out == "" {
		return nil
	}
	require.True(t, strings.HasSuffix(out, "\n"), "%q", out)
	var keys []string
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if strings.HasPrefix(line, `"`) {
			var k string
			require.NoError(t, json.Unmarshal([]byte(line), &k), "line %q", line)
			line = k
		}
		keys = append(keys, line)
	}
	return keys
}

// requirePrintable checks out shows nothing a terminal would hide or act
// on: only printable characters besides the newlines ending the lines.
func requirePrintable(t *testing.T, out string) {
	t.Helper()
	for _, r := range strings.ReplaceAll(out, "\n", "") {
		require.True(t, unicode.IsPrint(r), "%U in %q", r, out)
	}
}

func TestKeysCommand(t *testing.T) {
	t.Parallel()
	b := setup(t, true)

	// Keys as an application may write them: any Unicode and control
	// characters but NUL.
	odd := []string{
		"user:1", "user:2", "user:10", "user:\tx", "user:a\nb", "user:\r\x1b[2Jgotcha", "user:é€𝄞", "user:\u202eevil",
		"user:zero\u200bwidth", "user:nb\u00a0sp", `user:"q"`, `user:back\slash`, "user: spaced", "user:trailing ",
		`"starts-with-quote`, " leading", "", "session:1", "x\u2028y", "del\x7f",
	}
	for _, k := range odd {
		requireCode(t, 0, b.run(t, opts{stdin: []byte("v")}, "set", k))
	}
	// Not listed: another key prefix, another version, an expired entry.
	b.ok(t, "set", "user:other", "v", "--key-prefix", "app")
	b.ok(t, "set", "user:v2", "v", "--key-version", "2")
	dbtest.Exec(t, b.pool, `INSERT INTO dbcache_entries VALUES (':1:user:expired', 'v', now() - interval '1s')`)

	byteOrder := func(keys []string) []string {
		s := slices.Clone(keys)
		slices.Sort(s) // Go compares strings bytewise, as the "C" collation does
		return s
	}
	users := slices.DeleteFunc(slices.Clone(odd), func(k string) bool { return !strings.HasPrefix(k, "user:") })

	out := b.ok(t, "keys")
	requirePrintable(t, out)
	require.Equal(t, byteOrder(odd), keyLines(t, out), "every key, in byte order, each line the key or a JSON string of it")
	require.Contains(t, out, "user:1\nuser:10\n", "plain keys are bare")
	require.Contains(t, out, `"user:\u202eevil"`, "a bidi override is escaped")
	require.Contains(t, out, `"\"starts-with-quote"`, "a key starting with a quote is quoted, so no bare line starts with one")
	require.Contains(t, out, `""`+"\n", "the empty key is visible")
	require.Contains(t, out, `"user:trailing "`)

	r := b.run(t, opts{}, "keys", "--json")
	requireCode(t, 0, r)
	requirePrintable(t, r.stdout)
	var exact []string
	for _, line := range strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n") {
		require.True(t, strings.HasPrefix(line, `"`), "--json: every line a JSON string: %q", line)
		var k string
		require.NoError(t, json.Unmarshal([]byte(line), &k))
		exact = append(exact, k)
	}
	require.Equal(t, byteOrder(odd), exact)
	require.Empty(t, r.stderr)

	require.Equal(t, byteOrder(users), keyLines(t, b.ok(t, "keys", "user:")))
	require.Equal(t, []string{"user:other"}, keyLines(t, b.ok(t, "keys", "user:", "--key-prefix", "app")))
	require.Equal(t, []string{"user:v2"}, keyLines(t, b.ok(t, "keys", "--key-version", "2")))
	// Nothing matches: no output, exit 0.
	r = b.run(t, opts{}, "keys", "nothing:")
	requireCode(t, 0, r)
	require.Empty(t, r.stdout)
	require.Empty(t, r.stderr)
}

func TestKeysLimit(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	fill(t, b, ":1:many:", 2500, "NULL")
	var all []string
	for i := range 2500 {
		all = append(all, "many:"+strconv.Itoa(i))
	}
	slices.Sort(all)

	// The default limit, 1000, and a line on stderr that says more match.
	r := b.run(t, opts{}, "keys", "many:")
	requireCode(t, 0, r)
	require.Equal(t, all[:1000], keyLines(t, r.stdout))
	require.Equal(t, "dbcache: stopped after 1,000 keys (--limit 1000); more keys match: raise --limit, or --limit 0 lists them all\n", r.stderr)

	// 0: every key, across pages of a thousand, none twice.
	r = b.run(t, opts{}, "keys", "many:", "--limit", "0")
	requireCode(t, 0, r)
	require.Equal(t, all, keyLines(t, r.stdout))
	require.Empty(t, r.stderr)

	// The notice is exact: none when the limit is the number of keys.
	r = b.run(t, opts{}, "keys", "many:", "--limit", "2500")
	require.Len(t, keyLines(t, r.stdout), 2500)
	require.Empty(t, r.stderr)
	r = b.run(t, opts{}, "keys", "many:", "--limit", "2499")
	require.Equal(t, all[:2499], keyLines(t, r.stdout))
	require.Contains(t, r.stderr, "stopped after 2,499 keys")

	// --json: one JSON string per line on stdout, the notice a JSON object
	// on stderr.
	r = b.run(t, opts{}, "keys", "many:", "--limit", "3", "--json")
	requireCode(t, 0, r)
	require.Equal(t, `"`+all[0]+`"`+"\n"+`"`+all[1]+`"`+"\n"+`"`+all[2]+`"`+"\n", r.stdout)
	var notice map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stderr), &notice), r.stderr)
	require.Equal(t, map[string]any{"notice": "limit_reached", "limit": float64(3),
		"message": "stopped after 3 keys (--limit 3); more keys match: raise --limit, or --limit 0 lists them all"}, notice)
	require.Equal(t, 1, countLines(r.stderr))
}

func TestKeysBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	empty := setup(t, false)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"keys", "--limit", "-1"}, "--limit must not be negative"},
		{[]string{"keys", "--limit", "x"}, `invalid argument "x" for "--limit"`},
		{[]string{"keys", "a", "b"}, "accepts at most 1 arg(s), received 2"},
		{[]string{"keys", "a\xffb"}, `invalid prefix "a\xffb"`},
		{[]string{"keys", "--key-version", "x"}, `invalid argument "x" for "--key-version"`},
	} {
		r := b.run(t, opts{}, tc.args...)
		requireCode(t, 2, r)
		requireErrorLine(t, r, tc.want)
		require.Equal(t, "Run 'dbcache keys --help' for usage.", lastLine(r.stderr))
		require.Empty(t, r.stdout)
	}
	r := b.run(t, opts{}, "keys", "a\xffb", "--json")
	requireCode(t, 2, r)
	require.Equal(t, "invalid_key", jsonError(t, r)["error"])
	r = empty.run(t, opts{}, "keys", "--json")
	requireCode(t, 1, r)
	require.Equal(t, "not_migrated", jsonError(t, r)["error"])
	require.Empty(t, r.stdout)
}

func TestDeletePrefix(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	count := func() int { return scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries`) }
	exists := func(key string) bool {
		return scalar[bool](t, b.pool, `SELECT EXISTS (SELECT FROM dbcache_entries WHERE key = $1)`, key)
	}
	for _, k := range []string{"user:1", "user:2", "user:3", "userx", "user", "session:1", "session:2"} {
		b.ok(t, "set", k, "v")
	}
	b.ok(t, "set", "user:1", "v", "--key-prefix", "app")
	b.ok(t, "set", "user:1", "v", "--key-version", "2")
	dbtest.Exec(t, b.pool, `INSERT INTO dbcache_entries VALUES (':1:user:9', 'v', now() - interval '1s')`)
	total := count()

	// Off a terminal, --yes is needed: exit 2, nothing removed.
	r := b.run(t, opts{stdin: []byte("y\n")}, "delete-prefix", "user:")
	requireCode(t, 2, r)
	requireErrorLine(t, r, "pass --yes to confirm")
	require.Equal(t, "Run 'dbcache delete-prefix --help' for usage.", lastLine(r.stderr))
	require.Equal(t, total, count())
	r = b.run(t, opts{}, "delete-prefix", "user:", "--json")
	requireCode(t, 2, r)
	require.Equal(t, "confirmation_required", jsonError(t, r)["error"])
	require.Empty(t, r.stdout)

	// The live user: entries under the default prefix and version go; the
	// expired one goes too, uncounted; nothing else is touched.
	require.Equal(t, "deleted 3 entries\n", b.ok(t, "delete-prefix", "user:", "--yes"))
	require.Equal(t, total-4, count())
	require.False(t, exists(":1:user:9"))
	for _, k := range []string{":1:userx", ":1:user", "app:1:user:1", ":2:user:1", ":1:session:1"} {
		require.True(t, exists(k), k)
	}
	// Again: nothing left, and that is a result (exit 0), not a miss.
	require.Equal(t, "deleted 0 entries\n", b.ok(t, "delete-prefix", "user:", "-y"))

	require.Equal(t, map[string]any{"prefix": "session:", "deleted": float64(2), "complete": true},
		b.json(t, 0, "delete-prefix", "session:", "--yes"))
	require.Equal(t, "deleted 1 entry\n", b.ok(t, "delete-prefix", "user:", "--key-prefix", "app", "--yes"))
	require.False(t, exists("app:1:user:1"))
	require.True(t, exists(":2:user:1"))

	// An empty PREFIX is every key of the prefix and version: only with
	// --all-keys, which then still needs --yes.
	before := count()
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"delete-prefix", "", "--yes"}, 2, "an empty PREFIX matches every key under the key prefix and version: pass --all-keys"},
		{[]string{"delete-prefix", "--yes"}, 2, "accepts 1 arg(s), received 0"},
		{[]string{"delete-prefix", "x", "--all-keys", "--yes"}, 2, `drop PREFIX "x", or drop --all-keys`},
		{[]string{"delete-prefix", "--all-keys"}, 2, "pass --yes to confirm"},
		{[]string{"delete-prefix", "a", "b", "--yes"}, 2, "accepts at most 1 arg(s), received 2"},
		{[]string{"delete-prefix", "a\xffb", "--yes"}, 2, `invalid prefix "a\xffb"`},
		{[]string{"delete-prefix", "a", "--frob"}, 2, "unknown flag: --frob"},
		{[]string{"delete-prefix", "a", "--prefix", "x"}, 2, "the key prefix is --key-prefix"},
	} {
		r := b.run(t, opts{}, tc.args...)
		requireCode(t, tc.code, r)
		requireErrorLine(t, r, tc.want)
		require.Equal(t, "Run 'dbcache delete-prefix --help' for usage.", lastLine(r.stderr), "%v", tc.args)
		require.Empty(t, r.stdout, "%v", tc.args)
		require.Equal(t, before, count(), "%v changed nothing", tc.args)
	}
	r = b.run(t, opts{}, "delete-prefix", "a\xffb", "--yes", "--json")
	requireCode(t, 2, r)
	require.Equal(t, "invalid_key", jsonError(t, r)["error"])

	require.Equal(t, "deleted 1 entry\n", b.ok(t, "delete-prefix", "--all-keys", "--key-version", "2", "--yes"))
	require.False(t, exists(":2:user:1"))
	require.Equal(t, map[string]any{"prefix": "", "deleted": float64(2), "complete": true},
		b.json(t, 0, "delete-prefix", "", "--all-keys", "--yes"))
	require.Zero(t, count())
}

func TestDeletePrefixRefusesBeforeConnecting(t *testing.T) {
	t.Parallel()
	dead := []string{"--database-url", "postgres://postgres@127.0.0.1:1/db?sslmode=disable"}
	for _, args := range [][]string{{"delete-prefix", "user:"}, {"delete-prefix", ""}, {"delete-prefix", "--all-keys"}} {
		r := run(t, opts{}, append(args, dead...)...)
		requireCode(t, 2, r)
		require.NotContains(t, r.stderr, "connect")
	}
}

// A failure part way (here a statement timeout on a row another session
// holds, in the second batch): what was removed stays removed, and the
// command says how much before the error, exit 1.
func TestDeletePrefixFailsPartWay(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	for _, jsonOut := range []bool{false, true} {
		ns := "human:"
		if jsonOut {
			ns = "json:"
		}
		// 6000 keys: the first batch (5000, in byte order) commits; the
		// last key, ns+"999", is in the second.
		fill(t, b, ":1:"+ns, 6000, "NULL")
		ctx := t.Context()
		tx, err := b.pool.Begin(ctx)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, `SELECT 1 FROM dbcache_entries WHERE key = $1 FOR UPDATE`, ":1:"+ns+"999")
		require.NoError(t, err)

		// The timeout must let the first batch finish on a loaded machine:
		// only the second, which waits on the lock, may hit it.
		args := []string{"delete-prefix", ns, "--yes", "--statement-timeout", "5s"}
		if jsonOut {
			args = append(args, "--json")
		}
		r := b.run(t, opts{}, args...)
		require.NoError(t, tx.Rollback(ctx))
		requireCode(t, 1, r)
		if jsonOut {
			require.Equal(t, `{"prefix":"json:","deleted":5000,"complete":false}`+"\n", r.stdout)
			require.Equal(t, "statement_timeout", jsonError(t, r)["error"])
		} else {
			require.Equal(t, "deleted 5,000 entries, then stopped: the rest of the prefix remains\n", r.stdout)
			requireErrorLine(t, r, "statement timeout")
		}
		require.Equal(t, 1000, scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries WHERE key LIKE $1`, ":1:"+ns+"%"))
	}
}

func TestNewCommandsInHelp(t *testing.T) {
	t.Parallel()
	r := run(t, opts{}, "--help")
	requireCode(t, 0, r)
	for _, want := range []string{"ttl ", "keys ", "delete-prefix ", "get/ttl/incr"} {
		require.Contains(t, r.stdout, want)
	}
	for cmd, wants := range map[string][]string{
		"ttl":           {"never", `"ttl_seconds"`, "exits 3"},
		"keys":          {"--limit", "default 1000", "JSON string"},
		"delete-prefix": {"--yes", "--all-keys", "clear"},
		"get":           {"ttl_seconds"},
	} {
		r := run(t, opts{}, cmd, "--help")
		requireCode(t, 0, r)
		for _, w := range wants {
			require.Contains(t, r.stdout, w, cmd)
		}
	}
}
