package main

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

func TestHelpAndVersion(t *testing.T) {
	t.Parallel()
	r := run(t, opts{}, "--help")
	requireCode(t, 0, r)
	for _, want := range []string{
		"Exit codes:", "3  miss", "DATABASE_URL", "PG*",
		"get", "set", "add", "touch", "delete", "incr", "decr", "has", "clear",
		"migrate", "stats", "cull", "bench", "demo",
	} {
		require.Contains(t, r.stdout, want)
	}
	r = run(t, opts{}, "migrate", "--help")
	requireCode(t, 0, r)
	require.Contains(t, r.stdout, "dirty")

	r = run(t, opts{}, "version")
	requireCode(t, 0, r)
	require.Regexp(t, `^dbcache \S+.*go1\.\d+.*schema version \d+\n$`, r.stdout)
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	// None of these reach a database: the URL would fail if they tried.
	dead := []string{"--database-url", "postgres://127.0.0.1:1/none?sslmode=disable"}
	for _, tc := range []struct {
		args []string
		want string
		hint string
	}{
		{[]string{"frobnicate"}, `unknown command "frobnicate"`, "dbcache --help"},
		{[]string{"get", "--frob"}, "unknown flag: --frob", "dbcache get --help"},
		{[]string{"get"}, "accepts 1 arg(s), received 0", "dbcache get --help"},
		{[]string{"get", "a", "b"}, "accepts 1 arg(s), received 2", "dbcache get --help"},
		{[]string{"set"}, "accepts between 1 and 2 arg(s)", "dbcache set --help"},
		{[]string{"set", "k", "v", "--ttl", "x"}, `--ttl "x"`, "dbcache set --help"},
		{[]string{"incr", "k", "1.5"}, `DELTA "1.5" is not an integer`, "dbcache incr --help"},
		{[]string{"clear"}, "--yes", "dbcache clear --help"},
		{[]string{"stats", "--verbose", "--debug"}, "mutually exclusive", "dbcache stats --help"},
		{[]string{"stats", "--schema", "bad-name"}, `--schema "bad-name" is not a valid schema name`, "dbcache stats --help"},
		{[]string{"stats", "--connect-timeout", "0s"}, "--connect-timeout must be positive", "dbcache stats --help"},
		{[]string{"get", "k", "--key-version", "x"}, `invalid argument "x" for "--key-version"`, "dbcache get --help"},
		{[]string{"cull", "--every", "-1s"}, "--every must not be negative", "dbcache cull --help"},
		{[]string{"cull", "--cull-frequency", "-2"}, "--cull-frequency must not be negative", "dbcache cull --help"},
		{[]string{"bench", "--concurrency", "0"}, "--concurrency", "dbcache bench --help"},
		{[]string{"demo", "--schema", "x"}, "drop --schema", "dbcache demo --help"},
	} {
		r := run(t, opts{}, append(tc.args, dead...)...)
		requireCode(t, 2, r)
		requireErrorLine(t, r, tc.want)
		require.Empty(t, r.stdout, "%v", tc.args)
		require.Equal(t, "Run '"+tc.hint+"' for usage.", lastLine(r.stderr), "%v", tc.args)
		require.Equal(t, 2, countLines(r.stderr), "an error line and a hint, no usage dump: %q", r.stderr)
	}
}

func TestUsageErrorsAfterConnecting(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	// Usage mistakes only found once connected are still exit 2.
	r := b.run(t, opts{}, "bench", "--ops", "get,fly")
	requireCode(t, 2, r)
	requireErrorLine(t, r, `unknown operation "fly"`)
	r = b.run(t, opts{}, "bench", "--keyspace", "5", "--batch-size", "10")
	requireCode(t, 2, r)
	requireErrorLine(t, r, "BatchSize")
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

func TestUnreachableServer(t *testing.T) {
	t.Parallel()

	// Nothing listens on port 1: refused at once.
	refused := "postgres://postgres@127.0.0.1:1/db?sslmode=disable"
	for _, args := range [][]string{
		{"get", "k"}, {"set", "k", "v"}, {"migrate", "up"}, {"migrate", "version"}, {"stats"}, {"cull"}, {"bench", "-n", "1"},
	} {
		r := run(t, opts{}, append(args, "--database-url", refused)...)
		requireCode(t, 1, r)
		requireErrorLine(t, r, "failed to connect", "127.0.0.1:1", "connection refused")
		require.Equal(t, 1, countLines(r.stderr), "%v: one line: %q", args, r.stderr)
		require.Empty(t, r.stdout)
	}

	// A server that accepts the connection and never answers: the connect
	// timeout ends the wait.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { _ = c.Close() })
		}
	}()
	silent := "postgres://postgres@" + ln.Addr().String() + "/db?sslmode=disable"
	start := time.Now()
	r := run(t, opts{}, "get", "k", "--database-url", silent, "--connect-timeout", "500ms")
	requireCode(t, 1, r)
	require.Less(t, time.Since(start), 20*time.Second)
	requireErrorLine(t, r, "failed to connect", ln.Addr().String(), "connect timeout of 500ms")
	require.Equal(t, 1, countLines(r.stderr))
	require.Equal(t, 1, strings.Count(r.stderr, ln.Addr().String()), "the attempt that used up the deadline, once: %s", r.stderr)

	// connect_timeout in the URL counts too, when the flag is not given.
	r = run(t, opts{}, "stats", "--database-url", silent+"&connect_timeout=1")
	requireCode(t, 1, r)
	requireErrorLine(t, r, "failed to connect", ln.Addr().String(), "connect timeout of 1s")

	// A malformed URL.
	r = run(t, opts{}, "get", "k", "--database-url", "postgres://a b@/")
	requireCode(t, 1, r)
	requireErrorLine(t, r, "invalid database URL")
}

func TestConnectionRules(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	b.ok(t, "set", "k", "from the schema")
	refused := "postgres://postgres@127.0.0.1:1/db?sslmode=disable"

	// DATABASE_URL when there is no flag.
	r := run(t, opts{env: []string{"DATABASE_URL=" + b.schema.URL}}, "get", "k", "--schema", b.schema.Name)
	requireCode(t, 0, r)
	require.Equal(t, "from the schema", r.stdout)

	// The flag beats DATABASE_URL.
	r = run(t, opts{env: []string{"DATABASE_URL=" + refused}}, append([]string{"get", "k"}, b.conn...)...)
	requireCode(t, 0, r)
	r = run(t, opts{env: []string{"DATABASE_URL=" + refused}}, "get", "k", "--schema", b.schema.Name)
	requireCode(t, 1, r)
	requireErrorLine(t, r, "127.0.0.1:1")

	// Neither: the PG* variables, as libpq reads them.
	cc, err := pgx.ParseConfig(b.schema.URL)
	require.NoError(t, err)
	r = run(t, opts{env: []string{"PGHOST=" + cc.Host, "PGPORT=" + strconv.Itoa(int(cc.Port)), "PGUSER=" + cc.User,
		"PGPASSWORD=" + cc.Password, "PGDATABASE=" + cc.Database, "PGSSLMODE=disable"}},
		"get", "k", "--schema", b.schema.Name)
	requireCode(t, 0, r)
	require.Equal(t, "from the schema", r.stdout)
	r = run(t, opts{env: []string{"PGHOST=127.0.0.1", "PGPORT=1", "PGSSLMODE=disable"}}, "get", "k")
	requireCode(t, 1, r)
	requireErrorLine(t, r, "127.0.0.1:1")

	// Without --schema the search_path decides: here it has no cache table.
	r = run(t, opts{}, "get", "k", "--database-url", b.schema.URL+"&options=-c%20search_path%3Dpg_catalog")
	requireCode(t, 1, r)
	requireErrorLine(t, r, "no cache table", "dbcache migrate up")
}
