package nearcache

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
)

// What the feed needs from the server, checked at New so that a server
// that cannot give it fails at start with one clear error, never later with
// stale reads.

var (
	// ErrUnsupported is wrapped by New's error when the server or the table
	// cannot feed a near cache: wal_level is not logical, the table is
	// UNLOGGED (logical decoding never sees its writes), or the server is
	// older than PostgreSQL 14.
	ErrUnsupported = errors.New("nearcache: this server or table cannot feed a near cache")
	// ErrNoPublication is wrapped by New's error when the publication the
	// feed reads is missing or does not cover the table: run Setup.
	ErrNoPublication = errors.New("nearcache: no publication of the cache table for the feed (run nearcache.Setup once)")
	// ErrNoReplication is wrapped by New's error when the server refuses
	// the feed's replication connection for want of a privilege: the role
	// lacks the REPLICATION attribute (42501), or pg_hba.conf has no
	// replication entry for it (28000). The server's own error is wrapped
	// too.
	ErrNoReplication = errors.New("nearcache: the feed's role may not open a replication connection: give it the REPLICATION attribute (ALTER ROLE … WITH REPLICATION; on Amazon RDS and Aurora grant rds_replication, on other managed servers the provider's replication role) or set Config.Replication to a role that has it")
)

// explainStart makes a feed start's failure one clear error: the
// privilege the role lacks, or the server setting that ran out, with the
// server's own error wrapped.
func explainStart(err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return err
	}
	switch pgErr.Code {
	case "42501", "28000": // insufficient_privilege; invalid_authorization_specification (pg_hba.conf)
		return fmt.Errorf("%w: %w", ErrNoReplication, err)
	case "53300": // too_many_connections: every walsender in use
		return fmt.Errorf("nearcache: the server has no walsender free for the feed (each process with a near cache holds one: raise max_wal_senders, and max_connections, past them plus whatever else replicates): %w", err)
	case "53400": // configuration_limit_exceeded: every replication slot in use
		return fmt.Errorf("nearcache: the server has no replication slot free for the feed (each process with a near cache holds one temporary slot: raise max_replication_slots past them plus whatever else replicates): %w", err)
	}
	return err
}

// identRE is what a schema or publication name may look like.
var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]{0,62}$`)

// PublicationName is the default publication of the cache table in schema:
// dbcache_near_<schema>. Longer names than PostgreSQL allows are refused
// by Setup and New: set Config.Publication then.
func PublicationName(schema string) string { return "dbcache_near_" + schema }

// The server's version, wal_level, and the table's OID, persistence and
// schema (resolved through search_path when $1 is unqualified).
const qServer = `SELECT current_setting('server_version_num')::int, current_setting('wal_level'),
       coalesce(c.oid::bigint, 0), coalesce(c.relpersistence::text, ''), coalesce(n.nspname, '')
FROM (SELECT to_regclass($1) AS oid) AS r
LEFT JOIN pg_class c ON c.oid = r.oid
LEFT JOIN pg_namespace n ON n.oid = c.relnamespace`

// Whether publication $1 exists, publishes every kind of change, and
// covers table $2.
const qPublication = `SELECT p.pubinsert AND p.pubupdate AND p.pubdelete AND p.pubtruncate,
       p.puballtables OR EXISTS (SELECT 1 FROM pg_publication_rel r WHERE r.prpubid = p.oid AND r.prrelid = $2::bigint::oid)
FROM pg_publication p WHERE p.pubname = $1`

// target is the cache table as the feed sees it.
type target struct {
	oid         uint32
	schema      string
	table       string // qualified and quoted
	publication string
}

// resolve finds the cache table in schema (or on the search_path) and
// checks what the feed needs from the server and the table.
func resolve(ctx context.Context, pool *pgxpool.Pool, schema string) (target, error) {
	name := pgx.Identifier{dbcache.TableName}
	if schema != "" {
		name = pgx.Identifier{schema, dbcache.TableName}
	}
	var (
		version        int
		walLevel, pers string
		oid            int64
		resolvedSchema string
	)
	if err := pool.QueryRow(ctx, qServer, name.Sanitize()).Scan(&version, &walLevel, &oid, &pers, &resolvedSchema); err != nil {
		return target{}, fmt.Errorf("nearcache: check the server: %w", err)
	}
	switch {
	case version < 140000:
		return target{}, fmt.Errorf("%w: PostgreSQL %d.%d; the feed needs 14 or later (pgoutput's logical messages)", ErrUnsupported, version/10000, version%10000/100)
	case walLevel != "logical":
		return target{}, fmt.Errorf("%w: wal_level is %q; the feed reads the table by logical decoding, which needs wal_level = logical (set it in postgresql.conf and restart the server)", ErrUnsupported, walLevel)
	case oid == 0:
		where := "on the search_path"
		if schema != "" {
			where = fmt.Sprintf("in schema %q", schema)
		}
		return target{}, fmt.Errorf("%w (no table %s %s)", dbcache.ErrNotMigrated, dbcache.TableName, where)
	case pers != "p":
		return target{}, fmt.Errorf("%w: table %s.%s is UNLOGGED (or temporary): its writes never reach the WAL, so logical decoding cannot see them; make it logged (dbcache migrate persistence logged) to use a near cache", ErrUnsupported, resolvedSchema, dbcache.TableName)
	}
	return target{oid: uint32(oid), schema: resolvedSchema, table: pgx.Identifier{resolvedSchema, dbcache.TableName}.Sanitize()}, nil
}

// publicationFor returns the publication name to use for t.
func publicationFor(configured string, t target) (string, error) {
	if configured != "" {
		return configured, nil
	}
	p := PublicationName(t.schema)
	if !identRE.MatchString(p) {
		return "", fmt.Errorf("nearcache: the default publication name %q is not a name PostgreSQL takes (at most 63 characters): set Config.Publication", p)
	}
	return p, nil
}

// checkPublication checks that publication covers the table and publishes
// every kind of change.
func checkPublication(ctx context.Context, pool *pgxpool.Pool, t target) error {
	var all, covers bool
	err := pool.QueryRow(ctx, qPublication, t.publication, int64(t.oid)).Scan(&all, &covers)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: publication %q does not exist", ErrNoPublication, t.publication)
	}
	if err != nil {
		return fmt.Errorf("nearcache: check publication %q: %w", t.publication, err)
	}
	if !covers {
		return fmt.Errorf("%w: publication %q does not include %s", ErrNoPublication, t.publication, t.table)
	}
	if !all {
		return fmt.Errorf("%w: publication %q does not publish every insert, update, delete and truncate", ErrNoPublication, t.publication)
	}
	return nil
}

// SetupConfig configures Setup.
type SetupConfig struct {
	// Schema is the cache table's schema. Defaults to the pool's
	// search_path.
	Schema string
	// Publication is the publication to create. Defaults to
	// PublicationName(schema).
	Publication string
}

// Setup creates the publication the near cache's feed reads, once per
// cache table (it is idempotent): CREATE PUBLICATION … FOR TABLE
// dbcache_entries (key) WITH (publish = 'insert, update, delete,
// truncate'). The column list (PostgreSQL 15 and later; 14 publishes whole
// rows) keeps values out of the feed: it carries the keys of changed
// entries only. It needs a role that owns the table and may create in the
// database, and wal_level = logical. It changes nothing in dbcache's write
// path: the feed decodes the WAL every write already produces.
func Setup(ctx context.Context, pool *pgxpool.Pool, cfg *SetupConfig) error {
	var c SetupConfig
	if cfg != nil {
		c = *cfg
	}
	if c.Schema != "" && !identRE.MatchString(c.Schema) {
		return fmt.Errorf("nearcache: SetupConfig.Schema %q is not a valid schema name", c.Schema)
	}
	if c.Publication != "" && !identRE.MatchString(c.Publication) {
		return fmt.Errorf("nearcache: SetupConfig.Publication %q is not a valid publication name", c.Publication)
	}
	t, err := resolve(ctx, pool, c.Schema)
	if err != nil {
		return err
	}
	if t.publication, err = publicationFor(c.Publication, t); err != nil {
		return err
	}
	err = checkPublication(ctx, pool, t)
	if !errors.Is(err, ErrNoPublication) {
		return err // nil: already set up
	}
	var version int
	if err := pool.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&version); err != nil {
		return fmt.Errorf("nearcache: setup: %w", err)
	}
	pub := pgx.Identifier{t.publication}.Sanitize()
	// Written out per version rather than spliced: 15 takes a column list.
	sql := "CREATE PUBLICATION " + pub + " FOR TABLE " + t.table + " WITH (publish = 'insert, update, delete, truncate')"
	if version >= 150000 {
		sql = "CREATE PUBLICATION " + pub + " FOR TABLE " + t.table + " (key) WITH (publish = 'insert, update, delete, truncate')"
	}
	if _, err := pool.Exec(ctx, sql); err != nil {
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42710" { // duplicate_object: a racing Setup
			return fmt.Errorf("nearcache: create publication %s: %w", t.publication, err)
		}
	}
	return checkPublication(ctx, pool, t)
}
