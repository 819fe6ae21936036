// Package migrations holds dbcache's schema as embedded golang-migrate SQL
// files and a small migrator over them.
//
// The SQL files are plain golang-migrate migrations (NNN_title.up.sql /
// .down.sql), exported as [FS] so an application can also apply them with its
// own golang-migrate setup. Whichever way they are applied, record them in
// [MigrationsTable], never in the application's own schema_migrations.
//
// # Schemas
//
// The cache table is created in the schema first on the connection's
// search_path, or in [Config.Schema] when set. Two independent caches in one
// database are two schemas, each with its own cache table and its own
// migrations table.
//
// # Concurrency and time limits
//
// golang-migrate serialises migrators with a PostgreSQL advisory lock whose
// wait has no limit of its own. [Migrator] bounds it: every connection it opens
// carries lock_timeout = [Config.LockTimeout], so a second migrator waits at
// most that long and then returns [ErrLockTimeout] instead of hanging.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/golang-migrate/migrate/v4"
	"github.com/golang-migrate/migrate/v4/database"
	pgxmigrate "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
)

// FS holds the migration files, for applications that run golang-migrate
// themselves (source "iofs", path ".").
//
//go:embed *.sql
var FS embed.FS

const (
	// Table is the name of the cache table the migrations create.
	Table = "dbcache_entries"

	// MigrationsTable is where dbcache records its applied migrations. It is
	// distinct from golang-migrate's default schema_migrations so dbcache never
	// collides with the application's own migrations (nor waits on their lock).
	MigrationsTable = "dbcache_schema_migrations"

	// LockTimeoutDefault is the default for Config.LockTimeout.
	LockTimeoutDefault = 15 * time.Second
)

var (
	// ErrLockTimeout is returned when another migrator held the migration lock
	// for longer than Config.LockTimeout.
	ErrLockTimeout = errors.New("migrations: timed out waiting for the migration lock (another migrator is running)")

	// ErrDirty is matched (errors.Is) by a *DirtyError.
	ErrDirty = errors.New("migrations: database is dirty")

	// ErrNoSuchVersion is returned by Force for a version with no migration file.
	ErrNoSuchVersion = errors.New("migrations: no such migration version")

	// ErrNoSchema is returned when Config.Schema is empty and no schema on the
	// connection's search_path exists, so there is nowhere to create (or look
	// for) the tables. Create the schema, fix the search_path, or set
	// Config.Schema (which Up creates).
	ErrNoSchema = errors.New("migrations: no schema to migrate in")
)

// DirtyError is returned when a previous migration failed halfway and left the
// migrations table marked dirty at Version. Nothing more runs until an operator
// checks the schema, repairs it by hand if needed, and forces the version the
// schema really is at (Migrator.Force, or `dbcache migrate force N`).
type DirtyError struct {
	Version int
}

func (e *DirtyError) Error() string {
	return fmt.Sprintf("migrations: database is dirty at version %d: a migration failed part way; "+
		"check the schema, then mark the version it is really at with `dbcache migrate force N` (or Migrator.Force)", e.Version)
}

// Is reports whether target is ErrDirty.
func (e *DirtyError) Is(target error) bool { return target == ErrDirty }

// Config configures a Migrator. A nil *Config means all defaults.
type Config struct {
	// LockTimeout bounds the wait for the migration lock held by another
	// migrator, and every other lock a migration waits on. Defaults to
	// LockTimeoutDefault.
	LockTimeout time.Duration

	// Logger receives golang-migrate's progress lines at debug level.
	// Defaults to slog.Default().
	Logger *slog.Logger

	// Schema is the schema that holds the cache table and the migrations
	// table. Up creates it if it does not exist. Defaults to the first schema
	// on the connection's search_path.
	Schema string

	// Unlogged makes Up create the cache table UNLOGGED (see Unlogged): no
	// WAL, emptied after a crash, unreadable on standbys. It applies only
	// when Up creates the table; an existing table is changed only by
	// SetPersistence, which rewrites it. Defaults to false: logged.
	Unlogged bool
}

var schemaRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]{0,62}$`)

func (c *Config) withDefaults() Config {
	var out Config
	if c != nil {
		out = *c
	}
	if out.LockTimeout <= 0 {
		out.LockTimeout = LockTimeoutDefault
	}
	if out.Logger == nil {
		out.Logger = slog.Default()
	}
	return out
}

// Migrator applies the embedded migrations to one schema. It opens its own
// short-lived connection for each call (from the pool's connection settings),
// so nothing it sets leaks into the application's pool. Safe for concurrent
// use; concurrent calls serialise on the database's migration lock.
type Migrator struct {
	connConfig *pgx.ConnConfig
	cfg        Config
}

// New returns a Migrator that connects like pool does. The pool itself is not
// used for migrations and is never closed by the Migrator.
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
	c := cfg.withDefaults()
	if c.Schema != "" && !schemaRE.MatchString(c.Schema) {
		return nil, fmt.Errorf("migrations: Config.Schema %q is not a valid schema name (letters, digits, _ and $, at most 63)", c.Schema)
	}
	return &Migrator{connConfig: connConfig.Copy(), cfg: c}, nil
}

// Up applies every pending migration. Already up to date is success.
func (m *Migrator) Up(ctx context.Context) error {
	if m.cfg.Schema != "" {
		if err := m.createSchema(ctx); err != nil {
			return err
		}
	}
	creates := false
	if m.cfg.Unlogged {
		_, err := m.Persistence(ctx)
		if err != nil && !errors.Is(err, ErrNoTable) {
			return err
		}
		creates = errors.Is(err, ErrNoTable)
	}
	if err := m.run(ctx, func(mg *migrate.Migrate) error { return mg.Up() }); err != nil {
		return err
	}
	if creates {
		// A fresh, empty table: the rewrite costs nothing.
		return m.SetPersistence(ctx, Unlogged)
	}
	return nil
}

// Down reverts steps migrations (at least one). Nothing left to revert is
// success.
func (m *Migrator) Down(ctx context.Context, steps int) error {
	if steps < 1 {
		return fmt.Errorf("migrations: Down needs at least one step, got %d", steps)
	}
	return m.run(ctx, func(mg *migrate.Migrate) error {
		v, _, err := mg.Version()
		if errors.Is(err, migrate.ErrNilVersion) {
			return nil
		}
		if err != nil {
			return err
		}
		if applied := appliedCount(v); steps > applied {
			steps = applied
		}
		if steps == 0 {
			return nil
		}
		return mg.Steps(-steps)
	})
}

// DownAll reverts every migration, dropping the cache table.
func (m *Migrator) DownAll(ctx context.Context) error {
	return m.run(ctx, func(mg *migrate.Migrate) error { return mg.Down() })
}

// Force marks the schema as being at version without running anything, and
// clears the dirty flag. Use it after repairing a failed migration by hand.
// Version 0 means no migration applied.
func (m *Migrator) Force(ctx context.Context, version int) error {
	if version != 0 && !hasVersion(uint(version)) {
		return fmt.Errorf("%w: %d (known: %v)", ErrNoSuchVersion, version, Versions())
	}
	return m.run(ctx, func(mg *migrate.Migrate) error {
		if version == 0 {
			return mg.Force(-1) // golang-migrate's "no version"
		}
		return mg.Force(version)
	})
}

// Version returns the applied version (0 when none) and whether a failed
// migration left it dirty. It only reads: unlike golang-migrate's own Version
// it creates no migrations table, so it is safe for status checks and dry
// runs, and works for a role that may not create anything. A Config.Schema
// that does not exist yet is at version 0; an empty Config.Schema with no
// existing schema on the search_path is ErrNoSchema.
func (m *Migrator) Version(ctx context.Context) (version uint, dirty bool, err error) {
	conn, err := pgx.ConnectConfig(ctx, m.sessionConfig(ctx))
	if err != nil {
		return 0, false, fmt.Errorf("migrations: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var schema *string
	var searchPath string
	if err := conn.QueryRow(ctx, `SELECT current_schema(), current_setting('search_path')`).Scan(&schema, &searchPath); err != nil {
		return 0, false, fmt.Errorf("migrations: read the session's schema: %w", translate(err))
	}
	if schema == nil {
		if m.cfg.Schema != "" {
			return 0, false, nil // Up has not created it yet: nothing applied
		}
		return 0, false, noSchemaError(searchPath)
	}
	// golang-migrate keeps its table in current_schema().
	table := pgx.Identifier{*schema, MigrationsTable}.Sanitize()
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, table).Scan(&exists); err != nil {
		return 0, false, fmt.Errorf("migrations: look up %s: %w", table, translate(err))
	}
	if !exists {
		return 0, false, nil
	}
	// golang-migrate's format: at most one row; version -1 (with dirty set)
	// is a first migration that failed.
	var v int64
	err = conn.QueryRow(ctx, `SELECT version, dirty FROM `+table+` LIMIT 1`).Scan(&v, &dirty)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("migrations: read %s: %w", table, translate(err))
	}
	return uint(max(v, 0)), dirty, nil
}

// Pending reports whether migrations remain to be applied.
func (m *Migrator) Pending(ctx context.Context) (bool, error) {
	v, dirty, err := m.Version(ctx)
	if err != nil {
		return false, err
	}
	if dirty {
		return false, &DirtyError{Version: int(v)}
	}
	return v < Latest(), nil
}

// Versions lists the versions of the embedded migrations, ascending.
func Versions() []uint {
	entries, _ := fs.ReadDir(FS, ".")
	seen := map[uint]bool{}
	var out []uint
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		if !ok {
			continue
		}
		v, err := strconv.ParseUint(num, 10, 32)
		if err != nil || seen[uint(v)] {
			continue
		}
		seen[uint(v)] = true
		out = append(out, uint(v))
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
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

func hasVersion(v uint) bool {
	for _, x := range Versions() {
		if x == v {
			return true
		}
	}
	return false
}

// appliedCount is how many embedded migrations are at or below v.
func appliedCount(v uint) int {
	n := 0
	for _, x := range Versions() {
		if x <= v {
			n++
		}
	}
	return n
}

func (m *Migrator) schemaExists(ctx context.Context) (bool, error) {
	conn, err := pgx.ConnectConfig(ctx, m.sessionConfig(ctx))
	if err != nil {
		return false, fmt.Errorf("migrations: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, m.cfg.Schema).Scan(&exists); err != nil {
		return false, fmt.Errorf("migrations: look up schema %q: %w", m.cfg.Schema, err)
	}
	return exists, nil
}

func (m *Migrator) createSchema(ctx context.Context) error {
	// A plain CREATE SCHEMA IF NOT EXISTS can still fail with a unique
	// violation when two migrators race, so check first and accept a racing
	// creator's success.
	exists, err := m.schemaExists(ctx)
	if err != nil || exists {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, m.sessionConfig(ctx))
	if err != nil {
		return fmt.Errorf("migrations: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{m.cfg.Schema}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return nil
	}
	if err != nil {
		return fmt.Errorf("migrations: create schema %q: %w", m.cfg.Schema, err)
	}
	return nil
}

// sessionConfig is the connection config for one migration session:
// search_path pinned to the schema, and lock and statement waits bounded.
func (m *Migrator) sessionConfig(ctx context.Context) *pgx.ConnConfig {
	cc := m.connConfig.Copy()
	if cc.RuntimeParams == nil {
		cc.RuntimeParams = map[string]string{}
	}
	if m.cfg.Schema != "" {
		cc.RuntimeParams["search_path"] = pgx.Identifier{m.cfg.Schema}.Sanitize()
	}
	// lock_timeout also applies to pg_advisory_lock, which is how
	// golang-migrate's otherwise unbounded lock wait gets its limit.
	cc.RuntimeParams["lock_timeout"] = strconv.FormatInt(m.cfg.LockTimeout.Milliseconds(), 10)
	if dl, ok := ctx.Deadline(); ok {
		if ms := time.Until(dl).Milliseconds(); ms > 0 {
			cc.RuntimeParams["statement_timeout"] = strconv.FormatInt(ms, 10)
		}
	}
	if _, ok := cc.RuntimeParams["application_name"]; !ok {
		cc.RuntimeParams["application_name"] = "dbcache-migrate"
	}
	if cc.ConnectTimeout == 0 {
		cc.ConnectTimeout = 10 * time.Second
	}
	return cc
}

// run opens a golang-migrate instance on a fresh connection, runs fn and
// translates golang-migrate's errors into this package's.
func (m *Migrator) run(ctx context.Context, fn func(*migrate.Migrate) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	db := stdlib.OpenDB(*m.sessionConfig(ctx))
	defer db.Close()
	db.SetMaxOpenConns(2)
	// golang-migrate pings without a context; ping here first so an
	// unreachable server fails within ctx.
	if err := db.PingContext(ctx); err != nil {
		return fmt.Errorf("migrations: connect: %w", err)
	}
	if err := checkSchema(ctx, db); err != nil {
		return err
	}
	mg, err := newMigrate(db)
	if err != nil {
		return translate(err)
	}
	defer mg.Close()
	mg.LockTimeout = m.cfg.LockTimeout
	mg.Log = migrateLogger{ctx: ctx, log: m.cfg.Logger}

	// golang-migrate takes no context: ask it to stop between migrations
	// when ctx ends.
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			mg.GracefulStop <- true
		case <-done:
		}
	}()
	if err := fn(mg); err != nil {
		if errors.Is(err, migrate.ErrNoChange) {
			return nil
		}
		return translate(err)
	}
	return ctx.Err()
}

// checkSchema makes sure the session has a schema to work in.
// golang-migrate reads current_schema() into a string, and a search_path whose
// schemas do not exist makes that NULL: its error ("converting NULL to string
// is unsupported") says nothing of the cause.
func checkSchema(ctx context.Context, db *sql.DB) error {
	var current sql.NullString
	var searchPath string
	if err := db.QueryRowContext(ctx, `SELECT current_schema(), current_setting('search_path')`).Scan(&current, &searchPath); err != nil {
		return fmt.Errorf("migrations: read the session's schema: %w", err)
	}
	if !current.Valid {
		return noSchemaError(searchPath)
	}
	return nil
}

func noSchemaError(searchPath string) error {
	return fmt.Errorf("%w: no schema on the search_path (%s) exists; create one, or set Config.Schema (Up creates it)", ErrNoSchema, searchPath)
}

func newMigrate(db *sql.DB) (*migrate.Migrate, error) {
	drv, err := pgxmigrate.WithInstance(db, &pgxmigrate.Config{MigrationsTable: MigrationsTable})
	if err != nil {
		return nil, err
	}
	src, err := iofs.New(FS, ".")
	if err != nil {
		return nil, err
	}
	return migrate.NewWithInstance("iofs", src, "pgx5", drv)
}

// translate maps golang-migrate's error types to this package's errors so
// callers never need to import golang-migrate.
func translate(err error) error {
	var dirty migrate.ErrDirty
	if errors.As(err, &dirty) {
		return &DirtyError{Version: dirty.Version}
	}
	if errors.Is(err, migrate.ErrLockTimeout) {
		return ErrLockTimeout
	}
	var dbErr database.Error
	if p := (*database.Error)(nil); errors.As(err, &p) {
		dbErr = *p
	} else {
		errors.As(err, &dbErr)
	}
	if dbErr.OrigErr != nil {
		var pgErr *pgconn.PgError
		if errors.As(dbErr.OrigErr, &pgErr) && pgErr.Code == "55P03" { // lock_not_available
			return ErrLockTimeout
		}
		msg := dbErr.Err
		if msg == "" {
			msg = "migration failed"
		}
		return fmt.Errorf("migrations: %s: %w", msg, dbErr.OrigErr)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "55P03" {
		return ErrLockTimeout
	}
	return fmt.Errorf("migrations: %w", err)
}

type migrateLogger struct {
	ctx context.Context
	log *slog.Logger
}

func (l migrateLogger) Printf(format string, v ...any) {
	l.log.DebugContext(l.ctx, "dbcache migrations: "+strings.TrimSpace(fmt.Sprintf(format, v...)))
}

func (l migrateLogger) Verbose() bool { return false }
