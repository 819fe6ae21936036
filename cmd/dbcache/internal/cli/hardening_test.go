package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/migrations"
)

func TestParseSchema(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"cache":                 "cache",
		"MyCache":               "mycache", // unquoted names fold, as in SQL
		"CACHE_2":               "cache_2",
		"_x$1":                  "_x$1",
		`"MyCache"`:             "MyCache", // quoted ones keep their case
		`"lower"`:               "lower",
		`"a_B"`:                 "a_B",
		strings.Repeat("a", 63): strings.Repeat("a", 63),
	} {
		got, err := parseSchema(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
		// What messages suggest as --schema reads back to the same name.
		back, err := parseSchema(strings.Trim(schemaArg(got), "'"))
		require.NoError(t, err, in)
		require.Equal(t, got, back, in)
	}
	for _, bad := range []string{
		"bad-name", "1cache", "with space", `"with space"`, `"unterminated`, `"a"b"`, `""`,
		"caché", strings.Repeat("a", 64), `"x"; DROP TABLE y; --`,
	} {
		_, err := parseSchema(bad)
		require.Error(t, err, bad)
		require.Contains(t, err.Error(), "is not a valid schema name", bad)
	}
}

func TestNegativeArgs(t *testing.T) {
	t.Parallel()
	root := newApp(&Config{}).rootCommand()
	for _, tc := range []struct{ in, want []string }{
		{[]string{"decr", "visits", "-5"}, []string{"decr", "--", "visits", "-5"}},
		{[]string{"incr", "k", "-5", "--json"}, []string{"incr", "--json", "--", "k", "-5"}},
		{[]string{"--json", "incr", "k", "-5"}, []string{"incr", "--json", "--", "k", "-5"}},
		{[]string{"incr", "k", "-5", "--schema", "s", "--database-url", "u"},
			[]string{"incr", "--schema", "s", "--database-url", "u", "--", "k", "-5"}},
		{[]string{"incr", "k", "--key-version", "-1", "-5"}, []string{"incr", "--key-version", "-1", "--", "k", "-5"}},
		{[]string{"incr", "-v", "k", "-5"}, []string{"incr", "-v", "--", "k", "-5"}},
		// Unchanged: no negative argument, another command, a "--" already.
		{[]string{"incr", "k", "5"}, []string{"incr", "k", "5"}},
		{[]string{"set", "k", "-5"}, []string{"set", "k", "-5"}},
		{[]string{"decr", "k", "--", "-5"}, []string{"decr", "k", "--", "-5"}},
	} {
		require.Equal(t, tc.want, negativeArgs(root, tc.in), "%v", tc.in)
	}
}

func TestConnectMessageOnce(t *testing.T) {
	t.Parallel()
	// sslmode=prefer (the default) tries each address twice: the same
	// cause must be said once.
	_, err := pgconn.Connect(context.Background(), "postgres://u@127.0.0.1:1/db?connect_timeout=5")
	require.Error(t, err)
	var ce *pgconn.ConnectError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, 2, strings.Count(ce.Error(), "connection refused"), "pgx says it twice: %s", ce.Error())
	line := errorLine(err, 0)
	require.Equal(t, 1, strings.Count(line, "connection refused"), line)
	require.True(t, strings.HasPrefix(line, "failed to connect to `user=u database=db`: 127.0.0.1:1 (127.0.0.1): dial error"), line)
}

func TestReadBuildVersion(t *testing.T) {
	t.Parallel()
	bi := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/dbcache/dbcache", Version: "v1.2.3"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
			{Key: "vcs.time", Value: "2026-11-25T07:00:00Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	v := readBuildVersion(bi, true)
	require.Equal(t, "dbcache v1.2.3 (commit 0123456789ab, modified), go1.26.8, schema version "+
		strconv.Itoa(int(migrations.Latest())), v.String())
	require.Equal(t, "0123456789abcdef0123456789abcdef01234567", v.Revision)
	require.True(t, v.Modified)
	require.Equal(t, "2026-11-25T07:00:00Z", v.Time)

	bi.Settings[2].Value = "false"
	require.Contains(t, readBuildVersion(bi, true).String(), "(commit 0123456789ab), go1.26.8")
	bi.Main.Version, bi.Settings = "", nil
	require.Regexp(t, `^dbcache \(devel\), go1\.26\.8, schema version \d+$`, readBuildVersion(bi, true).String())
	require.Equal(t, "(devel)", readBuildVersion(nil, false).Version)
}

// get --json writes what json.Marshal would, without building it in memory.
func TestWriteValueJSON(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("é<>&\"\\\n\t\r\b\f\x01\x1f\x7f\u2028\u2029€𝄞x", 20_000)
	for _, v := range [][]byte{[]byte(""), []byte("hello"), []byte(long), []byte("a\x00b\xff"), bytes.Repeat([]byte{0xff, 0}, 50_000)} {
		var out bytes.Buffer
		a := newApp(&Config{Out: &out})
		require.NoError(t, a.writeValueJSON("k\"ey", v, dbcache.ExpiresIn(1500*time.Millisecond)))
		var got struct {
			Key      string `json:"key"`
			Found    bool   `json:"found"`
			Value    string `json:"value"`
			Encoding string `json:"encoding"`
		}
		require.NoError(t, json.Unmarshal(out.Bytes(), &got))
		require.Equal(t, "k\"ey", got.Key)
		require.True(t, got.Found)
		if got.Encoding == "utf8" {
			require.Equal(t, string(v), got.Value)
			want, err := json.Marshal(map[string]any{"value": string(v)})
			require.NoError(t, err)
			require.Contains(t, out.String(), `"value":`+string(want[len(`{"value":`):len(want)-1])+`,`, "escaped as encoding/json does")
		} else {
			require.Equal(t, "base64", got.Encoding)
			require.Equal(t, base64.StdEncoding.EncodeToString(v), got.Value)
		}
		require.True(t, strings.HasSuffix(out.String(), "}\n"))
	}
}

// readAll returns exactly the bytes, from a pipe-like reader and from a
// regular file (read at its size).
func TestReadAll(t *testing.T) {
	t.Parallel()
	data := bytes.Repeat([]byte("0123456789abcdef"), 300_000) // 4.8 MB: several chunks
	got, err := readAll(bytes.NewReader(data))
	require.NoError(t, err)
	require.Equal(t, data, got)
	got, err = readAll(strings.NewReader(""))
	require.NoError(t, err)
	require.Empty(t, got)

	path := filepath.Join(t.TempDir(), "value")
	require.NoError(t, os.WriteFile(path, data, 0o600))
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	got, err = readAll(f)
	require.NoError(t, err)
	require.Equal(t, data, got)
	require.Equal(t, len(got), cap(got), "a regular file is read into a buffer of its size")
}

// On a terminal, migrate down says what it reverts and what is lost, and
// asks; anything but yes reverts nothing.
func TestTerminalMigrateDownAsks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	pool := b.s.Pool(t)
	code, _, _ := b.run(ctx, Config{}, "set", "k", "v")
	require.Equal(t, ExitOK, code)
	version := func() int {
		var v int
		require.NoError(t, pool.QueryRow(ctx, `SELECT version FROM dbcache_schema_migrations`).Scan(&v))
		return v
	}
	latest := int(migrations.Latest())

	code, out, errOut := b.run(ctx, Config{StdinIsTerminal: true, Stdin: strings.NewReader("n\n")}, "migrate", "down")
	require.Equal(t, ExitFailure, code)
	require.Empty(t, out)
	require.Contains(t, errOut, "Revert migration 10 (create_dbcache_lock_fences) in schema "+b.s.Name+", from version 10 to 9? [y/N] ")
	require.Contains(t, errOut, "dbcache: not confirmed; nothing changed\n")
	require.Equal(t, latest, version())

	code, _, errOut = b.run(ctx, Config{StdinIsTerminal: true, Stdin: strings.NewReader("\n")}, "migrate", "down", "--all")
	require.Equal(t, ExitFailure, code)
	require.Contains(t, errOut, "Revert migrations 10 (create_dbcache_lock_fences), 9 (add_dbcache_entries_token), 8 (create_dbcache_leases), 7 (create_dbcache_certificates), 6 (create_dbcache_rate_limits), "+
		"5 (index_dbcache_entries_written_at), 4 (add_dbcache_entries_written_at), "+
		"3 (index_dbcache_entries_expires_key), 2 (create_dbcache_culler_state), 1 (create_dbcache_entries) in schema "+
		b.s.Name+", from version 10 to 0? This drops "+b.s.Name+".dbcache_entries and its 1 entry. [y/N] ")
	require.Equal(t, 1, dbtest.Count(t, pool))

	code, out, _ = b.run(ctx, Config{StdinIsTerminal: true, Stdin: strings.NewReader("yes\n")}, "migrate", "down")
	require.Equal(t, ExitOK, code)
	require.Equal(t, "migrated down from version 10 to 9\n", out)

	// --yes does not ask; --dry-run needs no answer.
	code, out, errOut = b.run(ctx, Config{StdinIsTerminal: true}, "migrate", "down", "--dry-run")
	require.Equal(t, ExitOK, code, errOut)
	require.Contains(t, out, "would migrate down from version 9 to 8")
	require.NotContains(t, errOut, "[y/N]")
	code, out, errOut = b.run(ctx, Config{StdinIsTerminal: true}, "migrate", "down", "--yes")
	require.Equal(t, ExitOK, code, errOut)
	require.Equal(t, "migrated down from version 9 to 8\n", out)
	require.NotContains(t, errOut, "[y/N]")
}

// bench's prefill progress counts the rows it writes: with a counter
// operation in the mix, two per key.
func TestBenchPrefillProgressCountsRows(t *testing.T) {
	t.Parallel()
	b := setup(t)
	code, out, errOut := b.run(t.Context(), Config{instantProgress: true},
		"bench", "-n", "1", "-c", "1", "--keyspace", "1200", "--ops", "incr")
	require.Equal(t, ExitOK, code, errOut)
	require.Contains(t, errOut, "bench: prefilled 1,000 of 2,400 rows")
	require.Contains(t, errOut, "bench: prefilled 2,400 of 2,400 rows")
	require.Contains(t, out, "removed the 2,400 entries bench wrote")

	_, _, errOut = b.run(t.Context(), Config{instantProgress: true},
		"bench", "-n", "1", "-c", "1", "--keyspace", "1200", "--ops", "get")
	require.Contains(t, errOut, "bench: prefilled 1,200 of 1,200 rows", "no counters without incr or decr")
}

// A server that stops answering fails a cache operation soon after the
// statement timeout (the cache's OpTimeout follows --statement-timeout),
// with a line that says so and names the flag.
func TestSilentServerAfterConnecting(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	cc, err := pgconn.ParseConfig(s.URL)
	require.NoError(t, err)
	proxy := dbtest.NewProxy(t, net.JoinHostPort(cc.Host, strconv.Itoa(int(cc.Port))))
	url := strings.Replace(s.URL, net.JoinHostPort(cc.Host, strconv.Itoa(int(cc.Port))), proxy.Addr(), 1)
	require.NotEqual(t, s.URL, url)

	var errOut bytes.Buffer
	a := newApp(&Config{Err: &errOut, Args: []string{"--json"}})
	cmd := a.getCommand()
	a.g = globalFlags{databaseURL: url, schema: s.Name, connectTimeout: 5 * time.Second,
		statementTimeout: 300 * time.Millisecond, statementTimeoutSet: true, json: true}
	a.started = true
	cache, pool, err := a.openCache(t.Context(), cmd, &cacheFlags{}, 1)
	require.NoError(t, err)
	require.Equal(t, 300*time.Millisecond+OpTimeoutGrace, a.g.opTimeout)

	proxy.SilenceExisting()
	_, err = cache.Get(context.Background(), "k") // no deadline of its own: the cache's bound applies
	require.Error(t, err)
	require.Equal(t, ExitFailure, a.report(err))
	var e map[string]any
	require.NoError(t, json.Unmarshal(errOut.Bytes(), &e), errOut.String())
	require.Equal(t, "timeout", e["error"])
	require.Contains(t, e["message"], "no answer from the server within 2.3s: the statement timeout, 300ms, plus 2s")
	require.Contains(t, e["message"], "--statement-timeout")

	// Closing the pool does not hold the command up (pgxpool would give
	// the silent connection 15 s to say goodbye).
	done := make(chan struct{})
	go func() { closePool(pool); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("closePool waited on the silent server")
	}
	// --statement-timeout 0 turns the client-side bound off too.
	b := newApp(&Config{})
	b.g = globalFlags{databaseURL: s.URL, connectTimeout: 5 * time.Second, statementTimeoutSet: true}
	_, err = b.poolConfig(1)
	require.NoError(t, err)
	require.Equal(t, time.Duration(-1), b.g.opTimeout)
}

// Every --json error code is documented in docs/cli.md, and every exit code
// in the root help and docs/cli.md (the README points to docs/cli.md).
func TestErrorCodesDocumented(t *testing.T) {
	t.Parallel()
	f, err := parser.ParseFile(token.NewFileSet(), "errors.go", nil, 0)
	require.NoError(t, err)
	var codes []string
	for _, decl := range f.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			if strings.HasPrefix(vs.Names[0].Name, "Code") {
				lit := vs.Values[0].(*ast.BasicLit)
				codes = append(codes, strings.Trim(lit.Value, `"`))
			}
		}
	}
	require.GreaterOrEqual(t, len(codes), 15)
	doc, err := os.ReadFile("../../../../docs/cli.md")
	require.NoError(t, err)
	for _, c := range codes {
		require.Contains(t, string(doc), "| `"+c+"` |", "docs/cli.md documents %q", c)
	}
	for _, c := range []int{ExitOK, ExitFailure, ExitUsage, ExitMiss, ExitPending} {
		n := strconv.Itoa(c)
		require.Contains(t, rootLong, "  "+n+"  ")
		require.Contains(t, string(doc), "| "+n+" |")
	}
}
