package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// ttl, keys and delete-prefix in-process: the formats, the terminal
// prompts, streaming and interruption.

// keyCorpus is keys a terminal could misread, plus random ones from every
// plane.
func keyCorpus() []string {
	keys := []string{
		"", "plain", "user:1", " lead", "trail ", `"quote`, `mid"quote`, `back\slash`, "tab\there", "new\nline",
		"cr\rline", "esc\x1b[31mred", "bell\a", "del\x7f", "c1\u0085", "nbsp\u00a0", "zw\u200bsp", "bidi\u202eevil",
		"ls\u2028ps\u2029", "bom\ufeff", "emoji😀", "music𝄞", "tag\U000E0041", "private\U000F0000", "max\U0010FFFF",
		"combining\u0301", "é€ü", "\u3000ideographic space",
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		var b strings.Builder
		for range 1 + rng.IntN(8) {
			var r rune
			switch rng.IntN(3) {
			case 0:
				r = rune(1 + rng.IntN(0x80))
			case 1:
				r = rune(1 + rng.IntN(0x3000))
			default:
				r = rune(1 + rng.IntN(utf8.MaxRune))
			}
			if utf8.ValidRune(r) {
				b.WriteRune(r)
			}
		}
		keys = append(keys, b.String())
	}
	return keys
}

func TestQuoteKey(t *testing.T) {
	t.Parallel()
	for _, key := range keyCorpus() {
		q := quoteKey(key)
		// A JSON string literal that decodes to the key exactly.
		var back string
		require.NoError(t, json.Unmarshal([]byte(q), &back), "%q → %s", key, q)
		require.Equal(t, key, back, "%q → %s", key, q)
		// Nothing a terminal would hide or act on.
		for _, r := range q {
			require.True(t, unicode.IsPrint(r), "%U in %s (from %q)", r, q, key)
		}

		d := displayKey(key)
		if d != key {
			require.Equal(t, q, d, "%q: bare or quoted, nothing else", key)
			continue
		}
		// Shown bare: printable, on one line, and never mistaken for a
		// quoted key or for one with other spaces around it.
		require.NotEmpty(t, d)
		require.False(t, strings.HasPrefix(d, `"`), "%q", key)
		require.Equal(t, strings.Trim(d, " "), d, "%q", key)
		for _, r := range d {
			require.True(t, unicode.IsPrint(r), "%U in bare %q", r, d)
		}
	}
	require.Equal(t, "user:1", displayKey("user:1"))
	require.Equal(t, "é€𝄞 x", displayKey("é€𝄞 x"))
	require.Equal(t, `"tab\there"`, displayKey("tab\there"))
	require.Equal(t, `"bidi\u202eevil"`, displayKey("bidi\u202eevil"))
	require.Equal(t, `"tag\udb40\udc41"`, displayKey("tag\U000E0041"))
	require.Equal(t, `""`, displayKey(""))
	require.Equal(t, `"\"quote"`, displayKey(`"quote`))
	require.Equal(t, `mid"quote`, displayKey(`mid"quote`))
}

func TestHumanTTL(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{
		5 * time.Minute:                           "5m0s",
		4*time.Minute + 59*time.Second + 999e6:    "4m59.9s", // cut, never rounded up
		90*time.Minute + 1234567*time.Microsecond: "1h30m1.2s",
		1500 * time.Millisecond:                   "1.5s",
		999999 * time.Microsecond:                 "999ms",
		1500 * time.Microsecond:                   "1ms",
		850 * time.Microsecond:                    "850µs",
		time.Microsecond:                          "1µs",
	} {
		require.Equal(t, want, humanTTL(dbcache.ExpiresIn(d)), "%s", d)
	}
	require.Equal(t, "never", humanTTL(dbcache.Forever))

	require.Equal(t, `"ttl_seconds":null,"never_expires":true`, ttlFields(dbcache.Forever))
	require.Equal(t, `"ttl_seconds":299.999876,"never_expires":false`, ttlFields(dbcache.ExpiresIn(299999876*time.Microsecond)))
	require.Equal(t, `"ttl_seconds":0.000001,"never_expires":false`, ttlFields(dbcache.ExpiresIn(time.Microsecond)))
}

func TestWriteValueJSONExpiry(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		ttl   dbcache.Timeout
		secs  any
		never bool
	}{
		{dbcache.ExpiresIn(1500 * time.Millisecond), 1.5, false},
		{dbcache.Forever, nil, true},
	} {
		var out bytes.Buffer
		require.NoError(t, newApp(&Config{Out: &out}).writeValueJSON("k", []byte("v\xff"), tc.ttl))
		var got map[string]any
		require.NoError(t, json.Unmarshal(out.Bytes(), &got), out.String())
		require.Equal(t, map[string]any{"key": "k", "found": true, "value": "dv8=", "encoding": "base64",
			"ttl_seconds": tc.secs, "never_expires": tc.never}, got)
	}
}

func TestDeletePrefixAsks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	pool := b.s.Pool(t)
	for _, k := range []string{"user:1", "user:2", "other"} {
		code, _, errOut := b.run(ctx, Config{}, "set", k, "v", "--key-prefix", "app")
		require.Equal(t, ExitOK, code, errOut)
	}

	for _, answer := range []string{"n\n", "\n", "maybe\n", ""} {
		code, out, errOut := b.run(ctx, Config{StdinIsTerminal: true, Stdin: strings.NewReader(answer)},
			"delete-prefix", "user:", "--key-prefix", "app")
		require.Equal(t, ExitFailure, code, "answer %q", answer)
		require.Empty(t, out)
		// The prompt says how many entries and which stored keys.
		require.Contains(t, errOut, `Remove 2 live entries whose key starts with "user:" (stored keys starting "app:1:user:")? [y/N] `)
		require.Contains(t, errOut, "dbcache: not confirmed; nothing changed\n")
		require.Equal(t, 3, dbtest.Count(t, pool))
	}
	code, out, _ := b.run(ctx, Config{StdinIsTerminal: true, Stdin: strings.NewReader("y\n")}, "delete-prefix", "user:", "--key-prefix", "app")
	require.Equal(t, ExitOK, code)
	require.Equal(t, "deleted 2 entries\n", out)
	require.Equal(t, 1, dbtest.Count(t, pool))

	// Nothing matches: nothing to ask about, and nothing removed.
	code, out, errOut := b.run(ctx, Config{StdinIsTerminal: true, Stdin: strings.NewReader("")}, "delete-prefix", "user:", "--key-prefix", "app")
	require.Equal(t, ExitOK, code, errOut)
	require.Equal(t, "deleted 0 entries\n", out)
	require.Empty(t, errOut)

	// --all-keys asks too, naming the whole prefix and version.
	code, out, errOut = b.run(ctx, Config{StdinIsTerminal: true, Stdin: strings.NewReader("yes\n")}, "delete-prefix", "--all-keys", "--key-prefix", "app", "--json")
	require.Equal(t, ExitOK, code, errOut)
	require.Contains(t, errOut, `Remove 1 live entry: every key under key prefix "app" and version 1 (stored keys starting "app:1:"; other prefixes and versions stay)? [y/N] `)
	require.Equal(t, `{"prefix":"","deleted":1,"complete":true}`+"\n", out)
	require.Zero(t, dbtest.Count(t, pool))

	// --key-version 0 is version 0, in the prompt as in the keys.
	code, _, errOut = b.run(ctx, Config{}, "set", "k", "v", "--key-version", "0")
	require.Equal(t, ExitOK, code, errOut)
	code, _, errOut = b.run(ctx, Config{StdinIsTerminal: true, Stdin: strings.NewReader("n\n")}, "delete-prefix", "--all-keys", "--key-version", "0")
	require.Equal(t, ExitFailure, code)
	require.Contains(t, errOut, `Remove 1 live entry: every key under key prefix "" and version 0 (stored keys starting ":0:"; `)
	dbtest.Exec(t, pool, `DELETE FROM dbcache_entries`)

	// The count stops at promptCountCap: asking stays cheap.
	dbtest.Exec(t, pool, `INSERT INTO dbcache_entries SELECT ':1:big:' || i, 'v', NULL FROM generate_series(1, $1) i`, promptCountCap+5)
	code, _, errOut = b.run(ctx, Config{StdinIsTerminal: true, Stdin: strings.NewReader("n\n")}, "delete-prefix", "big:")
	require.Equal(t, ExitFailure, code)
	require.Contains(t, errOut, `Remove more than 10,000 live entries whose key starts with "big:"`)
	require.Equal(t, promptCountCap+5, dbtest.Count(t, pool))
}

// firstWriteHook is an Out that runs hook once, on the first write.
type firstWriteHook struct {
	once sync.Once
	hook func()
	buf  bytes.Buffer
}

func (w *firstWriteHook) Write(p []byte) (int, error) {
	w.once.Do(w.hook)
	return w.buf.Write(p)
}

// keys streams: it writes the first page before it reads the next, so it
// never holds every key. Shown by removing every entry at the first write:
// a listing read whole first would still print them all.
func TestKeysStreams(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pool := b.s.Pool(t)
	const n = 5000
	dbtest.Exec(t, pool, `INSERT INTO dbcache_entries SELECT ':1:k' || i, 'v', NULL FROM generate_series(1, $1) i`, n)
	out := &firstWriteHook{hook: func() { dbtest.Exec(t, pool, `DELETE FROM dbcache_entries`) }}
	code := Run(t.Context(), &Config{Args: append([]string{"keys", "--limit", "0"}, b.conn...), Out: out, Err: io.Discard})
	require.Equal(t, ExitOK, code)
	lines := strings.Count(out.buf.String(), "\n")
	require.Positive(t, lines)
	require.Less(t, lines, n, "the keys came in pages, written as they came")
}

// SIGINT (a cancelled context) in the middle of delete-prefix: the batches
// done stay done, and the command says how many.
func TestDeletePrefixInterrupted(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pool := b.s.Pool(t)
	dbtest.Exec(t, pool, `INSERT INTO dbcache_entries SELECT ':1:ns:' || i, 'v', NULL FROM generate_series(0, 5999) i`)
	// The last key in byte order is in the second batch: hold it.
	tx, err := pool.Begin(t.Context())
	require.NoError(t, err)
	defer tx.Rollback(context.WithoutCancel(t.Context())) //nolint:errcheck // rolled back below, or at the end
	_, err = tx.Exec(t.Context(), `SELECT 1 FROM dbcache_entries WHERE key = ':1:ns:999' FOR UPDATE`)
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(t.Context())
	out, errOut := &syncBuffer{}, &syncBuffer{}
	done := make(chan int)
	go func() {
		done <- Run(ctx, &Config{Args: append([]string{"delete-prefix", "ns:", "--yes", "--json"}, b.conn...), Out: out, Err: errOut})
	}()
	waiting := `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%'`
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, pool.QueryRow(t.Context(), waiting, b.s.Name).Scan(&n))
		return n > 0
	}, 30*time.Second, 10*time.Millisecond, "the second batch never waited on the lock")
	cancel()
	require.Equal(t, ExitFailure, <-done)
	require.Equal(t, `{"prefix":"ns:","deleted":5000,"complete":false}`+"\n", out.String())
	var e map[string]any
	require.NoError(t, json.Unmarshal([]byte(errOut.String()), &e), errOut.String())
	require.Equal(t, "interrupted", e["error"])
	require.NoError(t, tx.Rollback(t.Context()))
	require.Equal(t, 1000, dbtest.Count(t, pool))
}

// The typed key, from the library's InvalidKeyError, is what the error
// shows; a long one is cut at a character boundary.
func TestKeyErrorFromLibrary(t *testing.T) {
	t.Parallel()
	err := keyError(&dbcache.InvalidKeyError{Key: "typed\xff", MadeKey: "app:1:typed\xff", Reason: "not valid UTF-8"}, "ignored")
	var ue *usageError
	require.ErrorAs(t, err, &ue)
	require.Equal(t, CodeInvalidKey, ue.code)
	require.ErrorIs(t, err, dbcache.ErrInvalidKey)
	require.Equal(t, `invalid key "typed\xff": not valid UTF-8`, err.Error())

	long := strings.Repeat("é", 100) // 200 bytes; byte 80 starts a character
	err = keyError(&dbcache.InvalidKeyError{Key: "x" + long, Reason: "too long"}, "")
	require.Equal(t, "invalid key "+strconv.Quote("x"+strings.Repeat("é", 39))+"…: too long", err.Error())

	// Not an InvalidKeyError (the server's refusal): still a usage error
	// with the invalid_key code; other errors pass through.
	err = keyError(dbcache.ErrInvalidKey, "k")
	require.ErrorAs(t, err, &ue)
	require.Equal(t, CodeInvalidKey, ue.code)
	require.Equal(t, io.EOF, keyError(io.EOF, "k"))
}

// docs/cli.md's command list is the root help's, word for word, so a new
// command cannot go undocumented there.
func TestDocsListEveryCommand(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	require.Equal(t, ExitOK, Run(t.Context(), &Config{Args: []string{"--help"}, Out: &out}))
	help := out.String()
	start := strings.Index(help, "Cache operations:")
	end := strings.Index(help, "\nAdditional Commands:")
	require.Positive(t, start)
	require.Greater(t, end, start)
	doc, err := os.ReadFile("../../../../docs/cli.md")
	require.NoError(t, err)
	require.Contains(t, string(doc), "```text\n"+help[start:end]+"```", "docs/cli.md's Commands block")
	for _, name := range []string{"ttl", "keys", "delete-prefix"} {
		require.Contains(t, string(doc), "\n### "+name+"\n", "docs/cli.md has a section for %s", name)
	}
}
