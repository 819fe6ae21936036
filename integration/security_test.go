package integration_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/migrations"
)

// The schema is migrated by its owner (the server's superuser here); the
// application connects as a role of its own that holds only what the grants
// give it.

// roleBundle is a migrated schema, its owner's pool and a login role.
type roleBundle struct {
	schema *dbtest.Schema
	owner  *pgxpool.Pool
	role   string
}

func setupRole(t *testing.T, grants ...string) *roleBundle {
	t.Helper()
	sc := sharedSchema(t)
	b := &roleBundle{schema: sc, owner: sc.Pool(t), role: "r_" + sc.Name}
	ctx := ctxT(t)
	role := pgx.Identifier{b.role}.Sanitize()
	dbtest.Exec(t, b.owner, "CREATE ROLE "+role+" LOGIN PASSWORD 'app-secret'")
	// Registered before any pool of the role opens, so it runs after they
	// close (cleanups run last-in first-out).
	t.Cleanup(func() {
		ctx := context.Background()
		_, _ = b.owner.Exec(ctx, "DROP OWNED BY "+role)
		_, _ = b.owner.Exec(ctx, "DROP ROLE "+role)
	})
	for _, g := range grants {
		g = strings.ReplaceAll(g, "{schema}", pgx.Identifier{sc.Name}.Sanitize())
		g = strings.ReplaceAll(g, "{table}", pgx.Identifier{sc.Name, dbcache.TableName}.Sanitize())
		_, err := b.owner.Exec(ctx, g+" TO "+role)
		require.NoError(t, err, g)
	}
	return b
}

// rolePool opens a pool that logs in as the role, on the schema.
func (b *roleBundle) rolePool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	cfg := b.schema.PoolConfig(t)
	cfg.ConnConfig.User = b.role
	cfg.ConnConfig.Password = "app-secret"
	return dbtest.NewPool(t, cfg)
}

func requirePgCode(t *testing.T, err error, code string, msgAndArgs ...any) *pgconn.PgError {
	t.Helper()
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr, msgAndArgs...)
	require.Equal(t, code, pgErr.Code, msgAndArgs...)
	return pgErr
}

// An application role with SELECT, INSERT, UPDATE and DELETE on the cache
// table, and nothing else, can use the whole API; it cannot change the schema.
func TestSecurityAppRoleDMLOnly(t *testing.T) {
	t.Parallel()
	b := setupRole(t, "GRANT USAGE ON SCHEMA {schema}", "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {table}")
	app := b.rolePool(t)
	c, _ := cacheOn(t, app, nil)
	ctx := ctxT(t)

	require.NoError(t, c.Set(ctx, "k", []byte("v"), dbcache.Forever))
	v, err := c.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v", string(v))
	ok, err := c.Add(ctx, "k", []byte("w"), dbcache.Forever)
	require.NoError(t, err)
	require.False(t, ok)
	ok, err = c.Add(ctx, "n", []byte("1"), dbcache.ExpiresIn(time.Hour))
	require.NoError(t, err)
	require.True(t, ok)
	n, err := c.Incr(ctx, "n", 41)
	require.NoError(t, err)
	require.EqualValues(t, 42, n)
	_, err = c.Decr(ctx, "n", 2)
	require.NoError(t, err)
	ok, err = c.Touch(ctx, "n", dbcache.Forever)
	require.NoError(t, err)
	require.True(t, ok)
	ok, err = c.HasKey(ctx, "n")
	require.NoError(t, err)
	require.True(t, ok)
	v, err = c.GetOrSet(ctx, "g", []byte("loaded"), dbcache.Forever)
	require.NoError(t, err)
	require.Equal(t, "loaded", string(v))
	failed, err := c.SetMany(ctx, map[string][]byte{"a": []byte("1"), "b": []byte("2")}, dbcache.Forever)
	require.NoError(t, err)
	require.Empty(t, failed)
	got, err := c.GetMany(ctx, []string{"a", "b", "missing"})
	require.NoError(t, err)
	require.Equal(t, map[string][]byte{"a": []byte("1"), "b": []byte("2")}, got)
	ver, err := c.IncrVersion(ctx, "a", 1)
	require.NoError(t, err)
	require.Equal(t, 2, ver)
	_, err = c.WithVersion(2).DecrVersion(ctx, "a", 1)
	require.NoError(t, err)
	removed, err := c.DeleteMany(ctx, []string{"a", "b"})
	require.NoError(t, err)
	require.Equal(t, 2, removed)
	ok, err = c.Delete(ctx, "k")
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, c.Clear(ctx))
	require.Empty(t, scanKeys(t, b.owner))

	// What the role may not do.
	_, err = app.Exec(ctx, "TRUNCATE "+dbcache.TableName)
	requirePgCode(t, err, "42501", "truncate")
	_, err = app.Exec(ctx, "DROP TABLE "+dbcache.TableName)
	requirePgCode(t, err, "42501", "drop table")
	_, err = app.Exec(ctx, "CREATE TABLE evil (x int)")
	requirePgCode(t, err, "42501", "create table")
	m, err := migrations.New(app, &migrations.Config{Schema: b.schema.Name})
	require.NoError(t, err)
	require.Error(t, m.DownAll(ctx), "the app role cannot revert the migrations")
	require.True(t, tableExists(t, b.owner, b.schema.Name+"."+migrations.Table))
}

// A read-only role reads, and every write fails with PostgreSQL's permission
// error (42501, "permission denied for table dbcache_entries"), reachable
// with errors.As, and writes nothing.
func TestSecurityReadOnlyRole(t *testing.T) {
	t.Parallel()
	b := setupRole(t, "GRANT USAGE ON SCHEMA {schema}", "GRANT SELECT ON TABLE {table}")
	owner, _ := cacheOn(t, b.owner, nil)
	ctx := ctxT(t)
	require.NoError(t, owner.Set(ctx, "k", []byte("7"), dbcache.Forever))
	before := scan(t, b.owner)

	ro, _ := cacheOn(t, b.rolePool(t), nil)
	v, err := ro.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "7", string(v))
	_, err = ro.Get(ctx, "missing")
	require.ErrorIs(t, err, dbcache.ErrMiss)
	ok, err := ro.HasKey(ctx, "k")
	require.NoError(t, err)
	require.True(t, ok)
	got, err := ro.GetMany(ctx, []string{"k", "missing"})
	require.NoError(t, err)
	require.Len(t, got, 1)

	writes := map[string]func() error{
		"set":          func() error { return ro.Set(ctx, "k", []byte("8"), dbcache.Forever) },
		"add":          func() error { _, err := ro.Add(ctx, "new", nil, dbcache.Forever); return err },
		"get_or_set":   func() error { _, err := ro.GetOrSet(ctx, "new", []byte("x"), dbcache.Forever); return err },
		"touch":        func() error { _, err := ro.Touch(ctx, "k", dbcache.ExpiresIn(time.Second)); return err },
		"delete":       func() error { _, err := ro.Delete(ctx, "k"); return err },
		"incr":         func() error { _, err := ro.Incr(ctx, "k", 1); return err },
		"decr":         func() error { _, err := ro.Decr(ctx, "k", 1); return err },
		"incr_version": func() error { _, err := ro.IncrVersion(ctx, "k", 1); return err },
		"set_many": func() error {
			_, err := ro.SetMany(ctx, map[string][]byte{"x": nil}, dbcache.Forever)
			return err
		},
		"delete_many": func() error { _, err := ro.DeleteMany(ctx, []string{"k"}); return err },
		"clear":       func() error { return ro.Clear(ctx) },
	}
	for name, write := range writes {
		err := write()
		pgErr := requirePgCode(t, err, "42501", name)
		require.Contains(t, pgErr.Message, "permission denied for table "+dbcache.TableName, name)
		require.Contains(t, err.Error(), "permission denied", name)
		for _, sentinel := range []error{dbcache.ErrMiss, dbcache.ErrNotMigrated, dbcache.ErrInvalidKey, dbcache.ErrNotInteger} {
			require.NotErrorIs(t, err, sentinel, "%s: a permission error is not %v", name, sentinel)
		}
	}
	require.Equal(t, before, scan(t, b.owner), "nothing written")
}

// A role without USAGE on the cache's schema, when the cache names the schema
// (Config.Schema), gets a permission error from New, not ErrNotMigrated.
func TestSecurityNoSchemaUsage(t *testing.T) {
	t.Parallel()
	b := setupRole(t, "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {table}")
	_, err := dbcache.New(ctxT(t), b.rolePool(t), &dbcache.Config{Schema: b.schema.Name})
	requirePgCode(t, err, "42501")
	require.NotErrorIs(t, err, dbcache.ErrNotMigrated)
	require.Contains(t, err.Error(), "permission denied for schema")
}

// metaStrings are keys and values built to break SQL that splices them
// anywhere: quotes, comments, statement separators, dollar quoting, LIKE
// wildcards, array and bytea literal syntax, escapes, placeholders.
var metaStrings = []string{
	`'`, `''`, `"`, `\`, `\'`, `\\`, `;`, `--`, `/*`, `*/`, `*/ --`,
	`'; DROP TABLE dbcache_entries; --`,
	`" OR 1=1 --`, `') OR ('1'='1`, `'); DELETE FROM dbcache_entries; --`,
	`$1`, `$2::text`, `$$`, `$tag$ x $tag$`, `?`, `:name`, `@p1`, `%s %d %v`,
	`%`, `_`, `a%`, `a_c`, `abc`, `[a-z]*`, `.*`,
	`E'\x41'`, `\x41`, `\\x00`, `\000`, `\N`, `NULL`, `null`, `Null`,
	`{}`, `{a,b}`, `{"a","b"}`, `{NULL}`, `ARRAY['x']`, `(1,2)`, `,`, `"a, b"`,
	`::text`, `::bytea`, `:1:`, `COLLATE "C"`,
	`unicode ✓ 日本語 🎉 ŝ`, "\u00a0nbsp", "zero\u200bwidth", "rtl\u202eltr",
	"tab\there", "new\nline", "cr\rlf", "del\x7f", "bell\x07",
	`${jndi:ldap://x}`, `<script>alert(1)</script>`, `../../etc/passwd`,
}

// Keys and values full of SQL metacharacters round-trip unchanged, in every
// pgx query mode (the simple protocol, which PgBouncer needs, interpolates
// arguments client-side), and nothing else is touched.
func TestSecuritySQLMetacharacters(t *testing.T) {
	t.Parallel()
	for _, mode := range []pgx.QueryExecMode{
		pgx.QueryExecModeCacheStatement,
		pgx.QueryExecModeCacheDescribe,
		pgx.QueryExecModeDescribeExec,
		pgx.QueryExecModeExec,
		pgx.QueryExecModeSimpleProtocol,
	} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			sc := sharedSchema(t)
			cfg := sc.PoolConfig(t)
			cfg.ConnConfig.DefaultQueryExecMode = mode
			pool := dbtest.NewPool(t, cfg)
			c, _ := cacheOn(t, pool, &dbcache.Config{KeyCheck: dbcache.KeyCheckOff})
			pc, _ := cacheOn(t, pool, &dbcache.Config{KeyCheck: dbcache.KeyCheckOff, KeyPrefix: `p'; DROP TABLE dbcache_entries; --`})
			ctx := ctxT(t)
			tablesBefore := schemaTables(t, pool)

			values := append([][]byte{nil, {0}, {0xff, 0xfe}, []byte("\\x"), []byte("\\\\x00"), allBytes()}, toBytes(metaStrings)...)
			want := map[string][]byte{} // made key -> value
			for i, k := range metaStrings {
				v := values[i%len(values)]
				require.NoError(t, c.Set(ctx, k, v, dbcache.Forever), "set %q", k)
				got, err := c.Get(ctx, k)
				require.NoError(t, err, "get %q", k)
				require.Equal(t, nonNil(v), got, "value of %q", k)
				want[c.MakeKey(k)] = nonNil(v)
			}
			// LIKE wildcards and similar keys stay distinct.
			for _, k := range []string{"%", "_", "a%", "a_c"} {
				got, err := c.Get(ctx, k)
				require.NoError(t, err)
				require.Equal(t, want[c.MakeKey(k)], got, "%q is its own entry", k)
			}
			ok, err := c.Add(ctx, `'`, []byte("again"), dbcache.Forever)
			require.NoError(t, err)
			require.False(t, ok)
			n, err := c.DeleteMany(ctx, []string{`%`})
			require.NoError(t, err)
			require.Equal(t, 1, n, "a %% key deletes itself only")
			delete(want, c.MakeKey(`%`))

			// Batches: every key at once, values swapped around.
			items := map[string][]byte{}
			for i, k := range metaStrings {
				items[k] = values[(i+7)%len(values)]
			}
			failed, err := pc.SetMany(ctx, items, dbcache.Forever)
			require.NoError(t, err)
			require.Empty(t, failed)
			got, err := pc.GetMany(ctx, metaStrings)
			require.NoError(t, err)
			require.Len(t, got, len(items))
			for k, v := range items {
				require.Equal(t, nonNil(v), got[k], "get_many under the caller's key %q", k)
				want[pc.MakeKey(k)] = nonNil(v)
			}
			// Counters under hostile keys.
			for _, k := range []string{`'; DROP TABLE dbcache_entries; --`, `$1`, `NULL`} {
				require.NoError(t, pc.Set(ctx, k, []byte("41"), dbcache.Forever))
				n, err := pc.Incr(ctx, k, 1)
				require.NoError(t, err)
				require.EqualValues(t, 42, n)
				want[pc.MakeKey(k)] = []byte("42")
			}

			rows := scan(t, pool)
			require.Len(t, rows, len(want))
			for k, v := range want {
				require.Contains(t, rows, k)
				require.Equal(t, v, nonNil(rows[k].value), "stored value of %q", k)
			}
			require.ElementsMatch(t, tablesBefore, schemaTables(t, pool), "no table created or dropped")
		})
	}

	t.Run("SchemaName", func(t *testing.T) {
		t.Parallel()
		pool := dbtest.Pool(t)
		for _, s := range []string{`x"; DROP TABLE dbcache_entries; --`, `a.b`, `"q"`, `x y`, "nul\x00", `public;`, strings.Repeat("s", 64)} {
			_, err := dbcache.New(ctxT(t), pool, &dbcache.Config{Schema: s})
			require.Error(t, err, "schema %q", s)
			require.False(t, errors.Is(err, dbcache.ErrNotMigrated), "schema %q is refused before any query: %v", s, err)
		}
		require.Equal(t, 0, dbtest.Count(t, pool), "the table is still there")
	})
}

// schemaTables lists the tables in the pool's current schema.
func schemaTables(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(ctxT(t), `SELECT tablename FROM pg_tables WHERE schemaname = current_schema()`)
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return names
}

func toBytes(ss []string) [][]byte {
	out := make([][]byte, len(ss))
	for i, s := range ss {
		out[i] = []byte(s)
	}
	return out
}

func allBytes() []byte {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
