// Package migrations holds dbcache's schema, its SQL migration files, and a
// small applier of them for the library's own tests.
//
// The public package github.com/dbcache/dbcache/migrations (a module of its
// own, since it brings golang-migrate) re-exports [FS] and is the migrator
// applications and the CLI use. This one lives in the library module so the
// library's tests can migrate a schema without golang-migrate in the
// library's module graph: its applier records versions in the same table
// and format (golang-migrate's: one row of version and dirty flag), so a
// schema it migrated is one the public migrator continues from. It is not
// for library code, and not for applications.
//
// New migration files go here, as NNN_title.up.sql and NNN_title.down.sql.
package migrations

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// FS holds the migration files (golang-migrate's layout: source "iofs",
// path ".").
//
//go:embed *.sql
var FS embed.FS

const (
	// Table is the name of the cache table the migrations create.
	Table = "dbcache_entries"

	// MigrationsTable is where dbcache records its applied migrations.
	MigrationsTable = "dbcache_schema_migrations"
)

// Versions lists the versions of the embedded migrations, ascending.
func Versions() []uint {
	entries, _ := fs.ReadDir(FS, ".")
	var out []uint
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		if !ok {
			continue
		}
		v, err := strconv.ParseUint(num, 10, 32)
		if err != nil || slices.Contains(out, uint(v)) {
			continue
		}
		out = append(out, uint(v))
	}
	slices.Sort(out)
	return out
}

// Latest is the highest embedded migration version.
func Latest() uint {
	vs := Versions()
	if len(vs) == 0 {
		return 0
	}
	return vs[len(vs)-1]
}

// file returns the SQL of version v's migration in direction dir ("up" or
// "down").
func file(v uint, dir string) (string, error) {
	matches, err := fs.Glob(FS, fmt.Sprintf("%03d_*.%s.sql", v, dir))
	if err != nil || len(matches) != 1 {
		return "", fmt.Errorf("migrations: no single %s file for version %d", dir, v)
	}
	b, err := fs.ReadFile(FS, matches[0])
	return string(b), err
}

// Config says where a Migrator applies the migrations. A nil *Config means
// the first schema of the connection's search_path.
type Config struct {
	// Schema holds the cache table and the migrations table; Up creates it
	// if it does not exist. Empty: the connection's current schema.
	Schema string
}

// Migrator applies the embedded migrations, for tests: each file in one
// transaction on a connection of its own, its statements sent one at a
// time (Apply), serialised with other Migrators of this package on the
// same schema by a transaction-level advisory lock.
type Migrator struct {
	connConfig *pgx.ConnConfig
	schema     string
}

// New returns a Migrator that connects like pool does.
func New(pool *pgxpool.Pool, cfg *Config) (*Migrator, error) {
	if pool == nil {
		return nil, errors.New("migrations: pool is nil")
	}
	return NewFromConnConfig(pool.Config().ConnConfig, cfg)
}

// NewFromConnConfig returns a Migrator that connects with connConfig.
func NewFromConnConfig(connConfig *pgx.ConnConfig, cfg *Config) (*Migrator, error) {
	if connConfig == nil {
		return nil, errors.New("migrations: conn config is nil")
	}
	m := &Migrator{connConfig: connConfig.Copy()}
	if cfg != nil {
		m.schema = cfg.Schema
	}
	return m, nil
}

// Up applies every pending migration, each in a transaction of its own
// (as the public migrator does): a file that fails is rolled back whole and
// leaves the version recorded at the one before it, clean, so the next Up
// runs it again.
func (m *Migrator) Up(ctx context.Context) error {
	return m.run(ctx, "up", func(v uint) (uint, uint, bool) {
		for _, x := range Versions() {
			if x > v {
				return x, x, true
			}
		}
		return 0, 0, false
	}, -1)
}

// Down reverts steps migrations (at least one), fewer if fewer are applied,
// each in a transaction of its own.
func (m *Migrator) Down(ctx context.Context, steps int) error {
	if steps < 1 {
		return fmt.Errorf("migrations: Down needs at least one step, got %d", steps)
	}
	return m.run(ctx, "down", func(v uint) (uint, uint, bool) {
		var applied []uint
		for _, x := range Versions() {
			if x <= v {
				applied = append(applied, x)
			}
		}
		if len(applied) == 0 {
			return 0, 0, false
		}
		to := uint(0)
		if len(applied) > 1 {
			to = applied[len(applied)-2]
		}
		return applied[len(applied)-1], to, true
	}, steps)
}

// run applies, one transaction per file, the file next returns for the
// recorded version (its version, and the version to record after it),
// until next has none or steps files ran (steps < 0: no limit). Each
// statement of a file is sent alone (Apply), as a Citus coordinator needs.
func (m *Migrator) run(ctx context.Context, dir string, next func(uint) (uint, uint, bool), steps int) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, m.connConfig)
	if err != nil {
		return fmt.Errorf("migrations: connect: %w", err)
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	for n := 0; steps < 0 || n < steps; n++ {
		more := false
		err = pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
			schema := m.schema
			if schema == "" {
				if err := tx.QueryRow(ctx, `SELECT coalesce(current_schema(), '')`).Scan(&schema); err != nil {
					return err
				}
				if schema == "" {
					return errors.New("no schema on the search_path exists")
				}
			}
			// The lock, then this transaction's search_path and, for a
			// test schema, a commit that does not wait for its WAL flush
			// (one transaction per file would otherwise wait for one
			// each): the next commit that does wait, the first write of
			// a test that needs durability, flushes these with it, since
			// the WAL is flushed in order.
			ident := pgx.Identifier{schema}.Sanitize()
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('dbcache migrations ' || $1::text)),
       set_config('search_path', $2, true), set_config('synchronous_commit', 'off', true)`, schema, ident); err != nil {
				return err
			}
			table := pgx.Identifier{schema, MigrationsTable}.Sanitize()
			if n == 0 {
				if _, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+ident); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+table+` (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)`); err != nil {
					return err
				}
			}
			var (
				v     int64
				dirty bool
			)
			err := tx.QueryRow(ctx, `SELECT version, dirty FROM `+table+` LIMIT 1`).Scan(&v, &dirty)
			switch {
			case errors.Is(err, pgx.ErrNoRows):
				v = 0
			case err != nil:
				return err
			case dirty:
				return fmt.Errorf("the schema is dirty at version %d", v)
			}
			x, to, ok := next(uint(max(v, 0)))
			if !ok {
				return nil
			}
			more = true
			body, err := file(x, dir)
			if err != nil {
				return err
			}
			if err := Apply(ctx, tx, body); err != nil {
				return fmt.Errorf("version %d %s: %w", x, dir, err)
			}
			if _, err := tx.Exec(ctx, `TRUNCATE `+table); err != nil {
				return err
			}
			if to > 0 {
				_, err = tx.Exec(ctx, `INSERT INTO `+table+` (version, dirty) VALUES ($1, false)`, int64(to))
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("migrations: %s: %w", dir, err)
		}
		if !more {
			break
		}
	}
	return nil
}
