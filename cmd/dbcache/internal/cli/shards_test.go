package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/sharded"
)

// Several servers: each shard is a schema of its own on the test server,
// named through its URL's search_path, so to the command it is a server
// of its own (the library's tests run the sharded cache on real separate
// servers too).

type shardBundle struct {
	testBundle
	names   []string
	dsns    map[string]string
	schemas map[string]*dbtest.Schema
}

// setupShards makes shards a, b and c, migrated unless bare.
func setupShards(t *testing.T, bare bool) *shardBundle {
	t.Helper()
	b := &shardBundle{names: []string{"a", "b", "c"}, dsns: map[string]string{}, schemas: map[string]*dbtest.Schema{}}
	for _, n := range b.names {
		s := dbtest.NewSchema(t)
		if !bare {
			s.Migrate(t)
		}
		b.schemas[n] = s
		b.dsns[n] = s.DSN(t)
		b.conn = append(b.conn, "--database-url", n+"="+b.dsns[n])
	}
	return b
}

// app is the application's sharded cache over the same servers, with the
// same names, for checking that the command places keys where it does.
func (b *shardBundle) app(t *testing.T, prefix string) *sharded.Cache {
	t.Helper()
	var shards []sharded.Shard
	for _, n := range []string{"c", "a", "b"} { // any order
		shards = append(shards, sharded.Shard{Name: n, DSN: b.dsns[n]})
	}
	c, err := sharded.New(t.Context(), shards, &sharded.Config{Cache: &dbcache.Config{KeyPrefix: prefix}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// rows counts a shard's rows.
func (b *shardBundle) rows(t *testing.T, name string) int {
	t.Helper()
	return dbtest.Count(t, b.schemas[name].Pool(t))
}

func TestShardsMigrateAndStats(t *testing.T) {
	t.Parallel()
	b := setupShards(t, true)
	ctx := t.Context()

	code, out, errOut := b.run(ctx, Config{}, "migrate", "status")
	require.Equal(t, ExitPending, code, errOut)
	code, out, errOut = b.run(ctx, Config{}, "migrate", "up")
	require.Equal(t, ExitOK, code, errOut)
	require.Equal(t, "a: migrated up from version 0 to 10\nb: migrated up from version 0 to 10\nc: migrated up from version 0 to 10\n", out)
	code, out, _ = b.run(ctx, Config{}, "migrate", "up", "--json")
	require.Equal(t, ExitOK, code)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 3)
	for i, l := range lines {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &m), l)
		require.Equal(t, b.names[i], m["shard"])
		require.True(t, strings.HasPrefix(l, `{"shard":`), "shard comes first: %s", l)
	}
	code, _, _ = b.run(ctx, Config{}, "migrate", "status")
	require.Equal(t, ExitOK, code)

	// A few entries, placed by the application's sharded cache.
	c := b.app(t, "")
	items := map[string][]byte{}
	for i := range 30 {
		items[fmt.Sprintf("k%d", i)] = []byte("v")
	}
	_, err := c.SetMany(ctx, items, dbcache.ExpiresIn(time.Hour))
	require.NoError(t, err)
	_, err = c.SetMany(ctx, map[string][]byte{"gone1": nil, "gone2": nil, "gone3": nil}, dbcache.ExpiresIn(-time.Second))
	require.NoError(t, err)

	code, out, errOut = b.run(ctx, Config{}, "stats")
	require.Equal(t, ExitOK, code, errOut)
	for _, n := range b.names {
		require.Contains(t, out, "shard "+n+"\ntable ")
	}
	require.Contains(t, out, "total (3 servers)\n")
	require.Regexp(t, `(?m)^entries\s+33 \(exact count\)$`, out)
	require.Regexp(t, `(?m)^  expired\s+3 \(not yet removed\)$`, out)

	code, out, _ = b.run(ctx, Config{}, "stats", "--json")
	require.Equal(t, ExitOK, code)
	var st shardStatsJSON
	require.NoError(t, json.Unmarshal([]byte(out), &st))
	require.Len(t, st.Shards, 3)
	var sum int64
	for i, s := range st.Shards {
		require.Equal(t, b.names[i], s.Shard)
		require.Equal(t, int64(b.rows(t, s.Shard)), s.Entries)
		sum += s.Entries
	}
	require.EqualValues(t, 33, sum)
	require.EqualValues(t, 33, st.Total.Entries)
	require.EqualValues(t, 3, st.Total.Answered)

	// One culler per server: each removes its own expired entries.
	code, out, errOut = b.run(ctx, Config{}, "cull")
	require.Equal(t, ExitOK, code, errOut)
	removed := 0
	for i, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var n int
		_, err := fmt.Sscanf(l, b.names[i]+": removed %d expired", &n)
		require.NoError(t, err, l)
		removed += n
	}
	require.Equal(t, 3, removed)
	code, out, _ = b.run(ctx, Config{}, "cull", "--json", "--max-entries", "5")
	require.Equal(t, ExitOK, code)
	for i, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var p struct {
			Shard     string `json:"shard"`
			Remaining int64  `json:"remaining"`
		}
		require.NoError(t, json.Unmarshal([]byte(l), &p), l)
		require.Equal(t, b.names[i], p.Shard)
		require.LessOrEqual(t, p.Remaining, int64(5))
	}

	// A destructive migration on several servers needs --yes even on a
	// terminal: the command does not ask once per server.
	code, _, errOut = b.run(ctx, Config{StdinIsTerminal: true, Stdin: strings.NewReader("y\n")}, "migrate", "down")
	require.Equal(t, ExitUsage, code)
	require.Contains(t, errOut, "pass --yes")
	code, out, errOut = b.run(ctx, Config{}, "migrate", "down", "--yes")
	require.Equal(t, ExitOK, code, errOut)
	require.Equal(t, 3, strings.Count(out, "migrated down from version 10 to 9"), out)
}

// The cache commands work on the sharded cache, placing and finding keys
// exactly where the application's sharded cache (same names, any order,
// same key prefix) does.
func TestShardsCacheCommands(t *testing.T) {
	t.Parallel()
	b := setupShards(t, false)
	ctx := t.Context()
	c := b.app(t, "app")

	for i := range 12 {
		code, _, errOut := b.run(ctx, Config{}, "set", fmt.Sprintf("user:%d", i), fmt.Sprintf("v%d", i), "--key-prefix", "app")
		require.Equal(t, ExitOK, code, errOut)
	}
	for _, n := range b.names {
		require.Positive(t, b.rows(t, n), "shard %s", n)
	}
	for i := range 12 {
		v, err := c.Get(ctx, fmt.Sprintf("user:%d", i))
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("v%d", i), string(v))
	}
	require.NoError(t, c.Set(ctx, "from-app", []byte("hello"), dbcache.Forever))
	code, out, _ := b.run(ctx, Config{}, "get", "from-app", "--key-prefix", "app")
	require.Equal(t, ExitOK, code)
	require.Equal(t, "hello", out)
	code, out, _ = b.run(ctx, Config{}, "ttl", "from-app", "--key-prefix", "app")
	require.Equal(t, ExitOK, code)
	require.Equal(t, "never\n", out)

	code, _, _ = b.run(ctx, Config{}, "get", "nope", "--key-prefix", "app")
	require.Equal(t, ExitMiss, code)
	code, out, _ = b.run(ctx, Config{}, "incr", "n", "--key-prefix", "app")
	require.Equal(t, ExitMiss, code, out)
	require.NoError(t, c.Set(ctx, "n", []byte("41"), dbcache.Forever))
	code, out, _ = b.run(ctx, Config{}, "incr", "n", "--key-prefix", "app")
	require.Equal(t, ExitOK, code)
	require.Equal(t, "42\n", out)
	code, _, _ = b.run(ctx, Config{}, "add", "n", "x", "--key-prefix", "app")
	require.Equal(t, ExitMiss, code)
	code, _, _ = b.run(ctx, Config{}, "has", "n", "--key-prefix", "app")
	require.Equal(t, ExitOK, code)

	// Versions: the key stays on its shard.
	_, err := c.IncrVersion(ctx, "user:3", 1)
	require.NoError(t, err)
	code, out, _ = b.run(ctx, Config{}, "get", "user:3", "--key-prefix", "app", "--key-version", "2")
	require.Equal(t, ExitOK, code)
	require.Equal(t, "v3", out)

	// keys merges every shard's, in order.
	code, out, errOut := b.run(ctx, Config{}, "keys", "user:", "--key-prefix", "app")
	require.Equal(t, ExitOK, code, errOut)
	require.Equal(t, "user:0\nuser:1\nuser:10\nuser:11\nuser:2\nuser:4\nuser:5\nuser:6\nuser:7\nuser:8\nuser:9\n", out)

	code, out, errOut = b.run(ctx, Config{}, "delete-prefix", "user:1", "--yes", "--key-prefix", "app")
	require.Equal(t, ExitOK, code, errOut)
	require.Equal(t, "deleted 3 entries\n", out)
	code, _, _ = b.run(ctx, Config{}, "delete", "user:0", "--key-prefix", "app")
	require.Equal(t, ExitOK, code)
	_, err = c.Get(ctx, "user:0")
	require.ErrorIs(t, err, dbcache.ErrMiss)

	// clear asks with the count over every server.
	code, _, errOut = b.run(ctx, Config{StdinIsTerminal: true, Stdin: strings.NewReader("n\n")}, "clear")
	require.Equal(t, ExitFailure, code)
	require.Contains(t, errOut, `Remove all 10 entries (10 live, 0 expired) in dbcache_entries on 3 servers (a, b, c), every prefix and version? [y/N] `)
	code, _, _ = b.run(ctx, Config{}, "clear", "--yes")
	require.Equal(t, ExitOK, code)
	for _, n := range b.names {
		require.Zero(t, b.rows(t, n), "shard %s", n)
	}

	// bench runs on the sharded cache and removes its keys.
	code, out, errOut = b.run(ctx, Config{}, "bench", "-n", "300", "-c", "4", "--keyspace", "60", "--ops", "get,set,incr,get_many,set_many")
	require.Equal(t, ExitOK, code, errOut)
	require.Contains(t, out, "requests in")
	for _, n := range b.names {
		require.Zero(t, b.rows(t, n), "shard %s", n)
	}
}

// A server that is down fails the commands that need it, naming it, and
// only those; stats reports the others and exits 1.
func TestShardsServerDown(t *testing.T) {
	t.Parallel()
	b := setupShards(t, false)
	ctx := t.Context()
	c := b.app(t, "")
	// b's server goes through a proxy that is down.
	cfg, err := pgx.ParseConfig(b.dsns["b"])
	require.NoError(t, err)
	p := dbtest.NewProxy(t, net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port)))
	p.Down()
	down := strings.Replace(b.dsns["b"], fmt.Sprintf("%s:%d", cfg.Host, cfg.Port), fmt.Sprintf("127.0.0.1:%d", p.Port()), 1)
	b.conn = []string{"--database-url", "a=" + b.dsns["a"], "--database-url", "b=" + down, "--database-url", "c=" + b.dsns["c"]}

	var onB, onA string
	for i := 0; onA == "" || onB == ""; i++ {
		k := fmt.Sprintf("k%d", i)
		switch c.ShardOf(k) {
		case "a":
			onA = k
		case "b":
			onB = k
		}
	}
	code, out, errOut := b.run(ctx, Config{}, "set", onA, "v")
	require.Equal(t, ExitOK, code, errOut)
	require.Equal(t, "OK\n", out)
	require.Empty(t, errOut, "a server the command did not need is not reported")
	code, _, errOut = b.run(ctx, Config{}, "set", onB, "v")
	require.Equal(t, ExitFailure, code)
	require.Contains(t, errOut, "dbcache: shard b: failed to connect")
	code, _, errOut = b.run(ctx, Config{}, "get", onB, "--json")
	require.Equal(t, ExitFailure, code)
	require.Contains(t, errOut, `"error":"connect"`)

	code, out, errOut = b.run(ctx, Config{}, "stats")
	require.Equal(t, ExitFailure, code)
	require.Contains(t, out, "shard b\n  failed: shard b: failed to connect")
	require.Contains(t, out, "total (2 of 3 servers: the others failed)")
	require.Contains(t, errOut, "shard b")

	code, out, errOut = b.run(ctx, Config{}, "migrate", "status")
	require.Equal(t, ExitFailure, code)
	require.Contains(t, out, "a: schema ")
	require.Contains(t, out, "c: schema ")
	require.Contains(t, errOut, "dbcache: shard b: failed to connect")
}

// cull --every runs a culler per server at once, each printing its own
// passes, until interrupted.
func TestShardsCullEvery(t *testing.T) {
	t.Parallel()
	b := setupShards(t, false)
	for _, n := range b.names {
		dbtest.Exec(t, b.schemas[n].Pool(t), `INSERT INTO dbcache_entries SELECT 'k' || i, 'v', now() - interval '1s' FROM generate_series(1, 10) i`)
	}
	ctx, cancel := context.WithCancel(t.Context())
	out := &syncBuffer{}
	done := make(chan int)
	go func() {
		done <- Run(ctx, &Config{Args: append([]string{"cull", "--every", "10ms"}, b.conn...), Out: out, Err: out,
			Getenv: func(string) string { return "" }})
	}()
	require.Eventually(t, func() bool {
		s := out.String()
		return strings.Contains(s, "a: ") && strings.Contains(s, "b: ") && strings.Contains(s, "c: ") && strings.Count(s, " pass 2: ") == 3
	}, 30*time.Second, 5*time.Millisecond)
	cancel()
	require.Equal(t, ExitOK, <-done, out.String())
	for _, n := range b.names {
		require.Regexp(t, `(?m)^`+n+`: \S+ \S+ pass 1: removed 10 expired, culled 0; 0 entries left`, out.String())
	}
	// migrate sql connects to nothing: printed once.
	code, sqlOut, _ := b.run(t.Context(), Config{}, "migrate", "sql", "1")
	require.Equal(t, ExitOK, code)
	require.Equal(t, 1, strings.Count(sqlOut, "CREATE TABLE"), sqlOut)
}

func TestShardsUsage(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	run := func(args ...string) (int, string) {
		e := &syncBuffer{}
		code := Run(ctx, &Config{Args: args, Out: &syncBuffer{}, Err: e, Getenv: func(string) string { return "" }})
		return code, e.String()
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"get", "k", "--database-url", "postgres://h/db", "--database-url", "b=postgres://h/db"}, "each must be NAME=URL"},
		{[]string{"get", "k", "--database-url", "a=postgres://h/db", "--database-url", "host=h port=5432"}, "each must be NAME=URL"},
		{[]string{"get", "k", "--database-url", "a=postgres://h/db", "--database-url", "a=postgres://i/db"}, `two servers are named "a"`},
		{[]string{"get", "k", "--database-url", "a=postgres://u:secret@h/db", "--database-url", "b c=postgres://h/db"}, "each must be NAME=URL"},
		{[]string{"demo", "--database-url", "a=postgres://h/db", "--database-url", "b=postgres://h/db"}, "demo runs on one server"},
		{[]string{"cull", "--every", "1m", "--metrics-addr", ":0", "--database-url", "a=postgres://127.0.0.1:1/db", "--database-url", "b=postgres://127.0.0.1:1/db"}, "run one cull --every --metrics-addr per server"},
	} {
		code, errOut := run(tc.args...)
		require.Equal(t, ExitUsage, code, "%v: %s", tc.args, errOut)
		require.Contains(t, errOut, tc.want, tc.args)
		require.NotContains(t, errOut, "secret")
	}
	require.Equal(t, []string{"get", "k", "--json", "--", "--database-url"},
		withoutDatabaseURL([]string{"get", "--database-url", "x", "k", "--database-url=y", "--json", "--", "--database-url"}))
}

// Given once, --database-url is the single server as it always was, also
// as a key=value string (whose "=" is not a shard's name).
func TestSingleServerKeyValueDSN(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	cfg, err := pgx.ParseConfig(s.URL)
	require.NoError(t, err)
	dsn := fmt.Sprintf("host=%s port=%d dbname=%s user=%s search_path=%s sslmode=disable", cfg.Host, cfg.Port, cfg.Database, cfg.User, s.Name)
	b := &testBundle{conn: []string{"--database-url", dsn}, s: s}
	ctx := context.Background()
	code, out, errOut := b.run(ctx, Config{}, "set", "k", "v")
	require.Equal(t, ExitOK, code, errOut)
	require.Equal(t, "OK\n", out)
	code, out, _ = b.run(ctx, Config{}, "stats", "--json")
	require.Equal(t, ExitOK, code)
	require.NotContains(t, out, `"shards"`)
}
