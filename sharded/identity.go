package sharded

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Two shard names on one cache table would give every key two homes: a
// value set through one name would be read as missing (or stale) through
// the other, and each shard's culler would count the other's rows. New
// refuses it twice over:
//
//   - by address, before anything is opened: the host (loopback names are
//     one), port, database and schema of each Pool or DSN shard, so a shard
//     whose server is down at New is checked too;
//   - by the table itself, once a shard is open: the server's system
//     identifier, the database's OID and the table's OID, which also catch
//     two addresses of one server (a DNS alias, a PgBouncer in front). A
//     shard opened after New, when its server comes back, is checked then:
//     if it turns out to be another's table, it stays unopened and its keys
//     fail with the error that says so.
//
// A shard given as a *dbcache.Cache is checked by neither: the sharded
// cache never sees its pool.

// cacheTable is the cache table the migrations create (migrations.Table,
// kept here so this package does not import golang-migrate; a test checks
// the two agree).
const cacheTable = "dbcache_entries"

// identityTimeout bounds the identity query at New and at a late open when
// the context has no deadline of its own.
const identityTimeout = 10 * time.Second

// address is where a Pool or DSN shard's table is, as its configuration
// says: comparable, and printable for the error.
type address struct {
	host     string
	port     uint16
	database string
	// schema is Config.Schema ("schema x"), else the pool's search_path
	// ("search_path x"); implicit (neither) also keys on the user, whose
	// name the default search_path ("$user", public) may resolve.
	schema string
	user   string
}

func (a address) String() string {
	s := fmt.Sprintf("%s:%d/%s, %s", a.host, a.port, a.database, a.schema)
	if a.user != "" {
		s += ", user " + a.user
	}
	return s
}

// addressOf returns the shard's address, or false when it has none to
// compare (a Cache shard, a DSN that does not parse: New reports that).
func (x *shard) addressOf() (address, bool) {
	var cc *pgx.ConnConfig
	switch {
	case x.pool != nil:
		cc = x.pool.Config().ConnConfig
	case x.dsn != "":
		cfg, err := pgxpool.ParseConfig(x.dsn)
		if err != nil {
			return address{}, false
		}
		cc = cfg.ConnConfig
	default:
		return address{}, false
	}
	a := address{host: normalHost(cc.Host), port: cc.Port, database: cc.Database}
	switch sp := normalPath(cc.RuntimeParams["search_path"]); {
	case x.cfg.Schema != "":
		a.schema = "schema " + strconv.Quote(x.cfg.Schema)
	case sp != "":
		a.schema = "search_path " + sp
	default:
		a.schema, a.user = "the default search_path", cc.User
	}
	return a, true
}

// normalPath writes a search_path one way: its schemas without the quotes
// and spaces around them (a schema name with upper case or a comma is
// compared quoted, as written).
func normalPath(p string) string {
	parts := strings.Split(p, ",")
	for i, s := range parts {
		s = strings.TrimSpace(s)
		if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' && !strings.ContainsAny(s[1:len(s)-1], `",`) && s[1:len(s)-1] == strings.ToLower(s[1:len(s)-1]) {
			s = s[1 : len(s)-1]
		}
		parts[i] = s
	}
	return strings.Join(parts, ",")
}

// normalHost folds the names of this machine's loopback interface into
// one, and case.
func normalHost(h string) string {
	h = strings.ToLower(strings.TrimSuffix(strings.Trim(h, "[]"), "."))
	switch h {
	case "localhost", "127.0.0.1", "::1", "localhost.localdomain":
		return "localhost"
	}
	return h
}

// checkAddresses refuses two Pool or DSN shards at one address.
func (s *state) checkAddresses() error {
	seen := map[address]string{}
	for _, x := range s.shards {
		a, ok := x.addressOf()
		if !ok {
			continue
		}
		if other, dup := seen[a]; dup {
			return fmt.Errorf("sharded: shards %q and %q are the same server and schema (%s): every key would have two homes; give each shard its own server or schema", other, x.name, a)
		}
		seen[a] = x.name
	}
	return nil
}

// identity is the cache table a shard's pool reaches, as the server names
// it.
type identity struct {
	system   string // pg_control_system().system_identifier; "" when the role may not read it
	database int64  // the database's OID
	table    int64  // the cache table's OID
	name     string // for the error: database and table
}

func (i identity) same(o identity) bool {
	return i.system == o.system && i.database == o.database && i.table == o.table && i.table != 0
}

// sqlIdentity reads the server's system identifier (when the role may:
// managed servers can revoke pg_control_system), the database's OID and
// the OID of cache table $1.
const sqlIdentity = `
SELECT CASE WHEN has_function_privilege('pg_control_system()', 'EXECUTE')
            THEN (SELECT system_identifier::text FROM pg_control_system()) ELSE '' END,
       (SELECT oid::int8 FROM pg_database WHERE datname = current_database()),
       coalesce(to_regclass($1)::oid::int8, 0),
       current_database() || '.' ||
         coalesce((SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.oid = to_regclass($1)), $1)`

// identify reads the identity of the table pool reaches for a shard with
// the given schema.
func identify(ctx context.Context, pool *pgxpool.Pool, schema string) (identity, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, identityTimeout)
		defer cancel()
	}
	table := pgx.Identifier{cacheTable}.Sanitize()
	if schema != "" {
		table = pgx.Identifier{schema, cacheTable}.Sanitize()
	}
	var id identity
	err := pool.QueryRow(ctx, sqlIdentity, table).Scan(&id.system, &id.database, &id.table, &id.name)
	return id, err
}

// sameTableError says that two shards reach one table.
func sameTableError(a, b string, id identity) error {
	sys := ""
	if id.system != "" {
		sys = "server " + id.system + ", "
	}
	return fmt.Errorf("sharded: shards %q and %q reach the same cache table (%stable %s): every key would have two homes; give each shard its own server or schema", a, b, sys, id.name)
}

// conflict returns the error for x, whose identity is id, if another open
// shard has the same table; else it records id as x's. Callers hold
// identMu, so two shards opened at once are compared with each other.
func (s *state) conflict(x *shard, id identity) error {
	for _, o := range s.shards {
		if o == x {
			continue
		}
		if oid := o.ident.Load(); oid != nil && oid.same(id) {
			return sameTableError(o.name, x.name, id)
		}
	}
	x.ident.Store(&id)
	return nil
}
