package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/migrations"
)

// The hardening and first-hour fixes (issues 9 and 10), each as a user
// meets it.

func TestHelpDocumentsExitCodesAndJSON(t *testing.T) {
	t.Parallel()
	r := run(t, opts{}, "--help")
	requireCode(t, 0, r)
	for _, want := range []string{"4  migrations pending", `{"error":CODE,"message":…,"exit_code":N}`, "DBCACHE_SCHEMA", "fold to lower case"} {
		require.Contains(t, r.stdout, want)
	}
	r = run(t, opts{}, "migrate", "--help")
	for _, want := range []string{"status", "sql", "--dry-run", "exits 4"} {
		require.Contains(t, r.stdout, want)
	}
}

func TestRootVersionFlag(t *testing.T) {
	t.Parallel()
	r := run(t, opts{}, "--version")
	requireCode(t, 0, r)
	require.Regexp(t, `^dbcache \S+.*go1\.\d+.*schema version \d+\n$`, r.stdout)
	require.Equal(t, run(t, opts{}, "version").stdout, r.stdout, "the same line as `dbcache version`")

	var v map[string]any
	r = run(t, opts{}, "--version", "--json")
	requireCode(t, 0, r)
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &v))
	for _, k := range []string{"version", "revision", "modified", "go", "schema_latest"} {
		require.Contains(t, v, k)
	}

	// On a cache command, --version is not the key version any more, and
	// the error says where both went.
	r = run(t, opts{}, "get", "k", "--version", "2")
	requireCode(t, 2, r)
	requireErrorLine(t, r, "unknown flag: --version", "--key-version", "`dbcache --version`")
	r = run(t, opts{}, "set", "k", "v", "--prefix", "p")
	requireCode(t, 2, r)
	requireErrorLine(t, r, "unknown flag: --prefix", "--key-prefix")
}

// dbcache version reports what Go embedded in the binary: the main
// module's version and the VCS commit (when the build was stamped).
func TestVersionCommit(t *testing.T) {
	t.Parallel()
	r := run(t, opts{}, "version", "--json")
	requireCode(t, 0, r)
	var v struct {
		Version  string `json:"version"`
		Revision string `json:"revision"`
		Modified bool   `json:"modified"`
		Go       string `json:"go"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &v))
	var raw map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &raw))
	require.Contains(t, raw, "modified", "whether the tree had changes is always said")

	out, err := exec.Command("go", "version", "-m", binary(t)).Output()
	require.NoError(t, err)
	info := string(out)
	// The main module: the CLI's own.
	mod := regexp.MustCompile(`(?m)^\tmod\tgithub\.com/dbcache/dbcache/cmd/dbcache\t(\S+)`).FindStringSubmatch(info)
	require.NotNil(t, mod, info)
	require.Equal(t, mod[1], v.Version)
	rev := regexp.MustCompile(`(?m)^\tbuild\tvcs\.revision=(\S+)`).FindStringSubmatch(info)
	if rev == nil {
		require.Empty(t, v.Revision, "no VCS stamp (a build outside a git clone), no commit")
	} else {
		require.Equal(t, rev[1], v.Revision)
		require.Equal(t, strings.Contains(info, "vcs.modified=true"), v.Modified)
		require.Contains(t, run(t, opts{}, "version").stdout, "(commit "+rev[1][:12])
	}
}

func TestNegativeDelta(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	b.ok(t, "set", "visits", "10")
	require.Equal(t, "15\n", b.ok(t, "decr", "visits", "-5"), "decr by -5 adds 5")
	require.Equal(t, "10\n", b.ok(t, "incr", "visits", "-5"))
	r := run(t, opts{}, append([]string{"--json", "incr", "visits", "-3"}, b.conn...)...)
	requireCode(t, 0, r)
	require.Equal(t, `{"key":"visits","found":true,"value":7}`+"\n", r.stdout)
	// "--" still works.
	r = run(t, opts{}, append(append([]string{"decr"}, b.conn...), "visits", "--", "-2")...)
	requireCode(t, 0, r)
	require.Equal(t, "9\n", r.stdout)
	require.Equal(t, "-9223372036854775799\n", b.ok(t, "incr", "visits", "-9223372036854775808"))
}

func TestDeltaOutOfRange(t *testing.T) {
	t.Parallel()
	dead := []string{"--database-url", "postgres://127.0.0.1:1/none?sslmode=disable"}
	for _, d := range []string{"99999999999999999999", "-9223372036854775809"} {
		r := run(t, opts{}, append([]string{"incr", "k", d}, dead...)...)
		requireCode(t, 2, r)
		requireErrorLine(t, r, `DELTA "`+d+`" is out of range`, "64-bit")
		require.NotContains(t, r.stderr, "not an integer")
	}
}

func TestStatementTimeoutNamesFlag(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	b.ok(t, "set", "k", "v")
	// Hold the row's lock, so the next write waits past the timeout.
	ctx := t.Context()
	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // rolling back is the point
	_, err = tx.Exec(ctx, `SELECT 1 FROM dbcache_entries WHERE key = ':1:k' FOR UPDATE`)
	require.NoError(t, err)

	r := b.run(t, opts{}, "set", "k", "w", "--statement-timeout", "200ms")
	requireCode(t, 1, r)
	requireErrorLine(t, r, "canceling statement due to statement timeout", "statement timeout of 200ms", "--statement-timeout")
	require.Equal(t, 1, countLines(r.stderr))
	r = b.run(t, opts{}, "set", "k", "w", "--statement-timeout", "200ms", "--json")
	requireCode(t, 1, r)
	e := jsonError(t, r)
	require.Equal(t, "statement_timeout", e["error"])
	require.Equal(t, "57014", e["sqlstate"])
}

// Connection failures print the driver's message once: pgx tries each
// address with and without TLS (sslmode=prefer, the default) and reports
// each attempt.
func TestConnectErrorsSaidOnce(t *testing.T) {
	t.Parallel()
	for url, cause := range map[string]string{
		"postgres://postgres@127.0.0.1:1/db":            "connection refused",
		"postgres://postgres@no-such-host.invalid:5/db": "no-such-host.invalid",
	} {
		r := run(t, opts{}, "get", "k", "--database-url", url)
		requireCode(t, 1, r)
		requireErrorLine(t, r, "failed to connect", cause)
		require.Equal(t, 1, countLines(r.stderr), r.stderr)
		require.Equal(t, 1, strings.Count(r.stderr, cause), "said once: %s", r.stderr)
	}
}

func TestNoConnectionSettings(t *testing.T) {
	t.Parallel()
	// No --database-url, DATABASE_URL or PG* variable: pgx falls back to
	// libpq's defaults (a local socket, the OS user), which fail here with
	// something like `role "root" does not exist`.
	r := run(t, opts{}, "get", "k")
	requireCode(t, 1, r)
	requireErrorLine(t, r, "no database configured", "--database-url", "DATABASE_URL")
	require.Equal(t, 1, countLines(r.stderr))
	require.Equal(t, "not_configured", jsonError(t, run(t, opts{}, "get", "k", "--json"))["error"])

	// With a setting, the connection error stands alone.
	r = run(t, opts{env: []string{"PGHOST=127.0.0.1", "PGPORT=1"}}, "get", "k")
	requireCode(t, 1, r)
	require.NotContains(t, r.stderr, "no database configured")
}

// jsonError requires stderr to be exactly one JSON error object whose
// exit_code is the process's, and returns it.
func jsonError(t *testing.T, r result) map[string]any {
	t.Helper()
	require.Equal(t, 1, countLines(r.stderr), "one line on stderr: %q", r.stderr)
	var e map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stderr), &e), "stderr: %q", r.stderr)
	require.IsType(t, "", e["error"], r.stderr)
	require.NotEmpty(t, e["message"], r.stderr)
	require.Equal(t, float64(r.code), e["exit_code"], r.stderr)
	return e
}

// Under --json every error, of every command, is one JSON object on stderr
// with a stable code.
func TestJSONErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	empty := setup(t, false)
	dirty := setup(t, true)
	_, err := dirty.pool.Exec(t.Context(), `UPDATE dbcache_schema_migrations SET dirty = true`)
	require.NoError(t, err)
	b.ok(t, "set", "word", "ten")
	b.ok(t, "set", "big", "9223372036854775807")
	refused := []string{"--database-url", "postgres://postgres@127.0.0.1:1/db?sslmode=disable"}

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"frobnicate"}, 2, "usage"},
		{[]string{"get", "--frob"}, 2, "usage"}, // --json after the bad flag counts too
		{[]string{"get"}, 2, "usage"},
		{[]string{"incr", "k", "x"}, 2, "usage"},
		{[]string{"demo"}, 2, "usage"},
		{[]string{"version", "extra"}, 2, "usage"},
		{[]string{"migrate", "sql", "99"}, 2, "usage"},
		{[]string{"stats", "--schema", "bad-name"}, 2, "usage"},
		{append([]string{"set", strings.Repeat("k", 3000), "v"}, b.conn...), 2, "invalid_key"},
		{append([]string{"clear"}, b.conn...), 2, "confirmation_required"},
		{append([]string{"migrate", "down"}, b.conn...), 2, "confirmation_required"},
		{append([]string{"get", "k"}, refused...), 1, "connect"},
		{[]string{"get", "k", "--database-url", "postgres://a b@/"}, 1, "invalid_database_url"},
		{append([]string{"get", "k"}, empty.conn...), 1, "not_migrated"},
		{append([]string{"stats"}, empty.conn...), 1, "not_migrated"},
		{append([]string{"cull"}, empty.conn...), 1, "not_migrated"},
		{append([]string{"bench", "-n", "1"}, empty.conn...), 1, "not_migrated"},
		{append([]string{"incr", "word"}, b.conn...), 1, "not_integer"},
		{append([]string{"incr", "big"}, b.conn...), 1, "overflow"},
		{append([]string{"migrate", "up"}, dirty.conn...), 1, "dirty"},
		{append([]string{"migrate", "force", "99"}, b.conn...), 2, "usage"},
		{[]string{"migrate", "up", "--database-url", b.schema.URL + "&options=-c%20search_path%3Dno_such_schema"}, 1, "no_schema"},
	} {
		r := run(t, opts{}, append(tc.args, "--json")...)
		requireCode(t, tc.code, r)
		e := jsonError(t, r)
		require.Equal(t, tc.want, e["error"], "%v: %s", tc.args, r.stderr)
		if tc.code == 2 {
			require.Contains(t, e["hint"], "--help", "%v", tc.args)
		}
		if tc.args[0] != "cull" { // cull prints each pass, failed ones too
			require.Empty(t, r.stdout, "%v", tc.args)
		}
	}

	// A command that reports and then fails (migrate version on a dirty
	// schema): the result on stdout, the error as JSON on stderr.
	r := dirty.run(t, opts{}, "migrate", "version", "--json")
	requireCode(t, 1, r)
	require.Equal(t, "dirty", jsonError(t, r)["error"])
	require.Contains(t, r.stdout, `"dirty":true`)

	// A miss is a result, not an error: its JSON is on stdout, stderr
	// stays empty.
	r = b.run(t, opts{}, "get", "nope", "--json")
	requireCode(t, 3, r)
	require.Empty(t, r.stderr)
	require.Equal(t, `{"key":"nope","found":false}`+"\n", r.stdout)
}

func TestInvalidKeyShowsTypedKey(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	r := b.run(t, opts{}, "set", "bad\xffkey", "v", "--key-prefix", "app")
	requireCode(t, 2, r)
	requireErrorLine(t, r, `invalid key "bad\xffkey": not valid UTF-8`)
	require.NotContains(t, r.stderr, "app:1:", "the made key is not what the user typed")

	r = b.run(t, opts{}, "get", strings.Repeat("k", 2045), "--key-prefix", "app")
	requireCode(t, 2, r)
	requireErrorLine(t, r, `invalid key "kkkk`, "2051 bytes with the key prefix and version, over the 2048-byte limit")
	require.NotContains(t, r.stderr, "app:1:")

	// A key memcached could not store (spaces, over 250 characters) is fine
	// in PostgreSQL: no portability warning from the command.
	r = b.run(t, opts{}, "set", "a key with spaces "+strings.Repeat("x", 300), "v")
	requireCode(t, 0, r)
	require.Empty(t, r.stderr)
}

func TestTTLNotPositiveSaysExpired(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	for _, ttl := range []string{"-1", "0", "-5s"} {
		out := b.ok(t, "set", "k", "v", "--ttl", ttl)
		require.Equal(t, "expired at once (--ttl "+ttl+" is not positive): nothing stored that a get can see\n", out)
		require.Equal(t, map[string]any{"key": "k", "stored": false, "expired": true, "ttl": b.json(t, 0, "set", "k", "v", "--ttl", ttl)["ttl"]},
			b.json(t, 0, "set", "k", "v", "--ttl", ttl))
		requireCode(t, 3, b.run(t, opts{}, "get", "k"))
	}
	// add: the key was free, and still nothing a get can see.
	require.Contains(t, b.ok(t, "add", "k", "v", "--ttl", "0"), "expired at once")
	require.Equal(t, map[string]any{"key": "k", "stored": false, "expired": true, "ttl": "0s"}, b.json(t, 0, "add", "k", "v", "--ttl", "0"))
	// touch --ttl 0 expires a live entry.
	b.ok(t, "set", "live", "v")
	require.Equal(t, map[string]any{"key": "live", "touched": true, "expired": true}, b.json(t, 0, "touch", "live", "--ttl", "0"))
	requireCode(t, 3, b.run(t, opts{}, "get", "live"))
	b.ok(t, "set", "live", "v")
	require.Equal(t, "expired (--ttl 0 is not positive)\n", b.ok(t, "touch", "live", "--ttl", "0"))
	// A positive TTL is still plain OK.
	require.Equal(t, "OK\n", b.ok(t, "set", "k", "v", "--ttl", "1m"))
	require.Equal(t, map[string]any{"key": "k", "stored": true, "ttl": "1m0s"}, b.json(t, 0, "set", "k", "v", "--ttl", "1m"))
}

func TestSchemaEnvAndFolding(t *testing.T) {
	t.Parallel()
	b := setup(t, true) // dbtest's schema names are lower case
	b.ok(t, "set", "k", "from the schema")
	url := []string{"--database-url", b.schema.URL}

	// DBCACHE_SCHEMA when there is no --schema.
	r := run(t, opts{env: []string{"DBCACHE_SCHEMA=" + b.schema.Name}}, append([]string{"get", "k"}, url...)...)
	requireCode(t, 0, r)
	require.Equal(t, "from the schema", r.stdout)
	// Unquoted names fold to lower case, as PostgreSQL reads them.
	upper := strings.ToUpper(b.schema.Name)
	r = run(t, opts{env: []string{"DBCACHE_SCHEMA=" + upper}}, append([]string{"get", "k"}, url...)...)
	requireCode(t, 0, r)
	r = run(t, opts{}, append([]string{"get", "k", "--schema", upper}, url...)...)
	requireCode(t, 0, r)
	require.Equal(t, "from the schema", r.stdout)
	// Quoted, the case is kept: "DBCT_…" is another schema.
	r = run(t, opts{}, append([]string{"get", "k", "--schema", `"` + upper + `"`}, url...)...)
	requireCode(t, 1, r)
	requireErrorLine(t, r, "no cache table", "in schema "+upper, `--schema '"`+upper+`"'`)
	// --schema beats DBCACHE_SCHEMA.
	r = run(t, opts{env: []string{"DBCACHE_SCHEMA=public_nope"}}, append([]string{"get", "k", "--schema", b.schema.Name}, url...)...)
	requireCode(t, 0, r)
	// An empty --schema is the search_path's schema, whatever DBCACHE_SCHEMA
	// says (the URL's search_path here has no cache table).
	r = run(t, opts{env: []string{"DBCACHE_SCHEMA=" + b.schema.Name}}, "get", "k", "--schema", "",
		"--database-url", b.schema.URL+"&options=-c%20search_path%3Dpg_catalog")
	requireCode(t, 1, r)
	requireErrorLine(t, r, "no cache table (dbcache_entries) on the search_path")
	// A bad DBCACHE_SCHEMA is a usage error that names the variable.
	r = run(t, opts{env: []string{"DBCACHE_SCHEMA=bad-name"}}, append([]string{"get", "k"}, url...)...)
	requireCode(t, 2, r)
	requireErrorLine(t, r, `DBCACHE_SCHEMA "bad-name" is not a valid schema name`)
}

func TestBenchPrefillAndCleanup(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	b.ok(t, "set", "mine", "kept")
	count := func() int { return scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries`) }

	// No counter operation: one row per key, and the run removes them.
	got := b.json(t, 0, "bench", "-n", "50", "-c", "2", "--keyspace", "40", "--ops", "get,set")
	require.Equal(t, 40.0, got["prefill_rows"], "one row per key, no counters")
	require.Equal(t, 40.0, got["removed"])
	require.Equal(t, false, got["kept"])
	require.Equal(t, 1, count(), "only the entry that was there before")

	// A counter operation asks for counters.
	out := b.ok(t, "bench", "-n", "50", "-c", "2", "--keyspace", "40", "--ops", "get,incr")
	require.Contains(t, out, "removed the 80 entries bench wrote (--keep leaves them)\n")
	require.Equal(t, 1, count())

	// --keep leaves them, and says where.
	got = b.json(t, 0, "bench", "-n", "50", "-c", "2", "--keyspace", "40", "--ops", "get,decr", "--keep")
	require.Equal(t, 80.0, got["prefill_rows"])
	require.Equal(t, true, got["kept"])
	require.Equal(t, 81, count())
	require.Equal(t, 40, scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries WHERE key LIKE ':1:bench:%:n'`))
	out = b.ok(t, "bench", "-n", "10", "-c", "1", "--keyspace", "40", "--ops", "get", "--keep")
	require.Contains(t, out, "kept the keys bench wrote (bench:0 … bench:39, under the key prefix and version)")

	// Reads only and no prefill: nothing written, nothing removed.
	b.ok(t, "clear", "--yes")
	b.ok(t, "set", "mine", "kept")
	got = b.json(t, 0, "bench", "-n", "20", "-c", "1", "--keyspace", "10", "--ops", "get", "--prefill=false")
	require.Equal(t, 0.0, got["removed"])
	require.Equal(t, 1, count())
}

func TestMigrateDownNeedsYes(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	latest := migrations.Latest()
	for _, args := range [][]string{{"migrate", "down"}, {"migrate", "down", "--steps", "2"}, {"migrate", "down", "--all"}} {
		r := b.run(t, opts{stdin: []byte("y\n")}, args...)
		requireCode(t, 2, r)
		requireErrorLine(t, r, "pass --yes to confirm (there is no terminal to ask on)")
		require.Equal(t, "Run 'dbcache migrate down --help' for usage.", lastLine(r.stderr))
		require.Equal(t, int(latest), scalar[int](t, b.pool, `SELECT version FROM dbcache_schema_migrations`), "%v: nothing reverted", args)
	}
	require.Equal(t, "migrated down from version 10 to 9\n", b.ok(t, "migrate", "down", "--yes"))
	require.Equal(t, "migrated down from version 9 to 0; dropped the cache table, which held 0 entries\n", b.ok(t, "migrate", "down", "--all", "-y"))
}

func TestMigrateStatusAndDryRun(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	name := b.schema.Name

	// status: exit 4 while anything is pending.
	r := b.run(t, opts{}, "migrate", "status")
	requireCode(t, 4, r)
	require.Equal(t, "schema "+name+": version 0 of 10, 10 pending (run `dbcache migrate up --schema "+name+"`)\n"+
		"    1  create_dbcache_entries             pending\n"+
		"    2  create_dbcache_culler_state        pending\n"+
		"    3  index_dbcache_entries_expires_key  pending\n"+
		"    4  add_dbcache_entries_written_at     pending\n"+
		"    5  index_dbcache_entries_written_at   pending\n"+
		"    6  create_dbcache_rate_limits         pending\n"+
		"    7  create_dbcache_certificates        pending\n"+
		"    8  create_dbcache_leases              pending\n"+
		"    9  add_dbcache_entries_token          pending\n"+
		"   10  create_dbcache_lock_fences         pending\n", r.stdout)
	requireCode(t, 4, b.run(t, opts{}, "migrate", "validate"))

	// up --dry-run runs nothing, not even the migrations table.
	require.Equal(t, "would migrate up from version 0 to 10 (dry run; nothing was run):\n"+
		"  001_create_dbcache_entries.up.sql\n  002_create_dbcache_culler_state.up.sql\n"+
		"  003_index_dbcache_entries_expires_key.up.sql\n  004_add_dbcache_entries_written_at.up.sql\n"+
		"  005_index_dbcache_entries_written_at.up.sql\n  006_create_dbcache_rate_limits.up.sql\n"+
		"  007_create_dbcache_certificates.up.sql\n  008_create_dbcache_leases.up.sql\n  009_add_dbcache_entries_token.up.sql\n  010_create_dbcache_lock_fences.up.sql\n", b.ok(t, "migrate", "up", "--dry-run"))
	sql := b.ok(t, "migrate", "up", "--dry-run", "--show-sql")
	require.False(t, scalar[bool](t, b.pool, `SELECT to_regclass('dbcache_schema_migrations') IS NOT NULL`), "a dry run creates nothing")
	require.Contains(t, sql, "SET search_path TO \""+name+"\";\n")
	require.Contains(t, sql, "-- 001_create_dbcache_entries.up.sql\nBEGIN;\n")
	require.Contains(t, sql, "CREATE TABLE IF NOT EXISTS dbcache_entries")
	require.Contains(t, sql, "`dbcache migrate force 10 --schema "+name+"`")
	plan := b.json(t, 0, "migrate", "up", "--dry-run", "--show-sql")
	require.Equal(t, true, plan["dry_run"])
	require.Len(t, plan["migrations"], 10)
	require.Contains(t, plan["migrations"].([]any)[0].(map[string]any)["sql"], "CREATE TABLE IF NOT EXISTS dbcache_entries")

	// The script a DBA gets is the migration: run by hand, then recorded
	// with force, the schema is where migrate up would have left it.
	_, err := b.pool.Exec(t.Context(), sql)
	require.NoError(t, err)
	b.ok(t, "migrate", "force", "10")
	require.Equal(t, "schema "+name+": version 10, up to date\n"+
		"    1  create_dbcache_entries             applied\n"+
		"    2  create_dbcache_culler_state        applied\n"+
		"    3  index_dbcache_entries_expires_key  applied\n"+
		"    4  add_dbcache_entries_written_at     applied\n"+
		"    5  index_dbcache_entries_written_at   applied\n"+
		"    6  create_dbcache_rate_limits         applied\n"+
		"    7  create_dbcache_certificates        applied\n"+
		"    8  create_dbcache_leases              applied\n"+
		"    9  add_dbcache_entries_token          applied\n"+
		"   10  create_dbcache_lock_fences         applied\n", b.ok(t, "migrate", "status"))
	b.ok(t, "set", "k", "v")
	require.Equal(t, "v", b.ok(t, "get", "k"))

	// down --dry-run needs no --yes and reverts nothing.
	require.Equal(t, "would migrate down from version 10 to 0 (dry run; nothing was run):\n"+
		"  010_create_dbcache_lock_fences.down.sql\n  009_add_dbcache_entries_token.down.sql\n  008_create_dbcache_leases.down.sql\n  007_create_dbcache_certificates.down.sql\n  006_create_dbcache_rate_limits.down.sql\n"+
		"  005_index_dbcache_entries_written_at.down.sql\n  004_add_dbcache_entries_written_at.down.sql\n"+
		"  003_index_dbcache_entries_expires_key.down.sql\n"+
		"  002_create_dbcache_culler_state.down.sql\n  001_create_dbcache_entries.down.sql\n",
		b.ok(t, "migrate", "down", "--all", "--dry-run"))
	down := b.ok(t, "migrate", "down", "--dry-run", "--show-sql")
	require.Contains(t, down, "DROP TABLE IF EXISTS dbcache_lock_fences")
	require.NotContains(t, down, "DROP TABLE IF EXISTS dbcache_entries")
	require.Contains(t, down, "`dbcache migrate force 9 --schema "+name+"`")
	require.Equal(t, "v", b.ok(t, "get", "k"))

	// Dirty: status exits 1 and says how out.
	_, err = b.pool.Exec(t.Context(), `UPDATE dbcache_schema_migrations SET dirty = true`)
	require.NoError(t, err)
	r = b.run(t, opts{}, "migrate", "status")
	requireCode(t, 1, r)
	require.Contains(t, r.stdout, "version 10, dirty")
	require.Contains(t, r.stdout, "create_dbcache_lock_fences         dirty")
	requireErrorLine(t, r, "dirty at version 10", "migrate force")

	// --show-sql alone is a mistake: it never runs anything.
	r = b.run(t, opts{}, "migrate", "up", "--show-sql")
	requireCode(t, 2, r)
	requireErrorLine(t, r, "--show-sql goes with --dry-run")
}

func TestMigrateSQLOffline(t *testing.T) {
	t.Parallel()
	// No database at all: migrate sql does not connect.
	dead := []string{"--database-url", "postgres://127.0.0.1:1/none?sslmode=disable"}
	r := run(t, opts{}, append([]string{"migrate", "sql"}, dead...)...)
	requireCode(t, 0, r)
	for _, m := range migrations.All() {
		require.Contains(t, r.stdout, "-- "+m.UpFile+"\nBEGIN;\n"+strings.TrimRight(m.Up, "\n")+"\nCOMMIT;\n")
	}
	require.Less(t, strings.Index(r.stdout, "001_"), strings.Index(r.stdout, "002_"), "oldest first")
	require.NotContains(t, r.stdout, "SET search_path")

	r = run(t, opts{}, append([]string{"migrate", "sql", "--down", "--schema", "MyCache"}, dead...)...)
	requireCode(t, 0, r)
	require.Contains(t, r.stdout, "SET search_path TO \"mycache\";\n")
	require.Less(t, strings.Index(r.stdout, "002_"), strings.Index(r.stdout, "001_"), "newest first")
	require.Contains(t, r.stdout, "`dbcache migrate force 0 --schema mycache`")

	r = run(t, opts{}, append([]string{"migrate", "sql", "2", "--json"}, dead...)...)
	requireCode(t, 0, r)
	var got struct {
		Direction  string `json:"direction"`
		Migrations []struct {
			Version int    `json:"version"`
			File    string `json:"file"`
			SQL     string `json:"sql"`
		} `json:"migrations"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &got))
	require.Equal(t, "up", got.Direction)
	require.Len(t, got.Migrations, 1)
	require.Equal(t, 2, got.Migrations[0].Version)
	require.Equal(t, migrations.All()[1].Up, got.Migrations[0].SQL)
}

func TestMigrateNoSchemaOnSearchPath(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	url := b.schema.URL + "&options=-c%20search_path%3Dno_such_schema"
	for _, args := range [][]string{{"migrate", "up"}, {"migrate", "version"}, {"migrate", "status"}} {
		r := run(t, opts{}, append(args, "--database-url", url)...)
		requireCode(t, 1, r)
		require.Equal(t, 1, countLines(r.stderr), r.stderr)
		requireErrorLine(t, r, "no schema to migrate in", "search_path (no_such_schema)", "--schema")
		require.NotContains(t, r.stderr, "NULL")
	}
}

// clear's prompt needs a terminal, which the in-process tests have; off one,
// the --yes refusal comes before any connection.
func TestClearRefusesBeforeConnecting(t *testing.T) {
	t.Parallel()
	r := run(t, opts{}, "clear", "--database-url", "postgres://postgres@127.0.0.1:1/db?sslmode=disable")
	requireCode(t, 2, r)
	requireErrorLine(t, r, "--yes")
	require.NotContains(t, r.stderr, "connect")
}

// The library bounds each operation to 5 s by default (an application's
// requests); the command's bound is --statement-timeout, which may be
// longer: a write waiting on a lock for longer than 5 s still succeeds.
func TestOperationsBoundedByStatementTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	b.ok(t, "set", "k", "v")
	ctx := t.Context()
	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // released by the commit below, or rolled back
	_, err = tx.Exec(ctx, `SELECT 1 FROM dbcache_entries WHERE key = ':1:k' FOR UPDATE`)
	require.NoError(t, err)

	cmd := exec.Command(binary(t), append([]string{"set", "k", "w", "--statement-timeout", "1m"}, b.conn...)...)
	cmd.Env = baseEnv()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	require.Eventually(t, func() bool {
		return scalar[int](t, b.pool, `SELECT count(*) FROM pg_stat_activity
WHERE application_name = 'dbcache-cli' AND wait_event_type = 'Lock'`) > 0
	}, 30*time.Second, 10*time.Millisecond, "the set never waited on the lock")
	// Longer than the library's default bound, which must not apply.
	time.Sleep(dbcache.OpTimeoutDefault + time.Second)
	require.NoError(t, tx.Commit(ctx))
	require.Equal(t, 0, waitExit(t, cmd), "stderr: %s", stderr.String())
	require.Equal(t, "w", b.ok(t, "get", "k"))
}
