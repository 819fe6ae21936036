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
// Migrators serialise on a PostgreSQL advisory lock, held by a transaction
// left open for the whole run. [Migrator] bounds the wait for it: the
// transaction that takes it sets lock_timeout = [Config.LockTimeout], so a
// second migrator waits at most that long and then returns [ErrLockTimeout]
// instead of hanging. Every statement also carries the caller's deadline as
// its statement_timeout.
//
// # Statements, failures and Citus
//
// Each file is applied in one transaction, its statements (see [Statements])
// sent one at a time through the extended protocol, never the file as one
// query: a Citus coordinator propagates CREATE INDEX and DROP INDEX on a
// distributed table only from a query of one statement. A file that fails
// is rolled back whole, and the version recorded is the last file
// completed, clean, so the next Up runs the failed file again.
//
// # Connection poolers
//
// The Migrator keeps no state in the session: search_path ([Config.Schema]),
// lock_timeout and statement_timeout are set inside each transaction
// (set_config(…, true)), the lock is a transaction-level one and the
// migrations table is named with its schema. So it runs through PgBouncer in
// transaction pooling, which refuses such settings as startup parameters and
// moves a client between server connections from one transaction to the
// next. A connection config that does carry a refused startup parameter fails
// with an error that names it and the way out.
package migrations

import (
	"context"
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
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	schema "github.com/dbcache/dbcache/internal/migrations"
	"github.com/dbcache/dbcache/internal/pooler"
)

// FS holds the migration files, for applications that run golang-migrate
// themselves (source "iofs", path "."). The files live in the library
// module (internal/migrations), whose own tests apply them without
// golang-migrate; this module adds golang-migrate and the Migrator.
var FS embed.FS = schema.FS

const (
	// Table is the name of the cache table the migrations create.
	Table = schema.Table

	// MigrationsTable is where dbcache records its applied migrations. It is
	// distinct from golang-migrate's default schema_migrations so dbcache never
	// collides with the application's own migrations (nor waits on their lock).
	MigrationsTable = schema.MigrationsTable

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

// DirtyError is returned when the migrations table is marked dirty at
// Version: a migrator lost its connection while it applied that version (so
// whether the file's transaction committed is unknown), or another tool
// (golang-migrate's own driver) failed part way. A file this package's
// Migrator applies and that fails is rolled back whole and leaves the
// previous version recorded clean instead. Nothing more runs until an
// operator checks the schema, repairs it by hand if needed, and forces the
// version the schema really is at (Migrator.Force, or `dbcache migrate force
// N`).
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

// Result says what one UpResult, DownResult or DownAllResult call did, for
// a caller that reports it.
type Result struct {
	// From is the version the call found once it held the migration lock:
	// a migrator that waited for another finds that one's work done, and
	// runs nothing.
	From uint
	// To is the version it left: From when it ran nothing.
	To uint
	// DroppedEntries is how many entries the cache table held when the
	// call dropped it (reverting migration 1), counted in the transaction
	// that dropped it, under the lock the drop takes; nil when the call
	// dropped no table.
	DroppedEntries *int64
}

// Up applies every pending migration. Already up to date is success.
func (m *Migrator) Up(ctx context.Context) error {
	_, err := m.UpResult(ctx)
	return err
}

// UpResult is Up, and reports what it did.
func (m *Migrator) UpResult(ctx context.Context) (Result, error) {
	if m.cfg.Schema != "" {
		if err := m.createSchema(ctx); err != nil {
			return Result{}, err
		}
	}
	creates := false
	if m.cfg.Unlogged {
		_, err := m.Persistence(ctx)
		if err != nil && !errors.Is(err, ErrNoTable) {
			return Result{}, err
		}
		creates = errors.Is(err, ErrNoTable)
	}
	res, err := m.run(ctx, func(mg *migrate.Migrate) error { return mg.Up() })
	if err != nil {
		return res, err
	}
	if creates {
		// A fresh, empty table: the rewrite costs nothing.
		return res, m.SetPersistence(ctx, Unlogged)
	}
	return res, nil
}

// Down reverts steps migrations (at least one). Nothing left to revert is
// success.
func (m *Migrator) Down(ctx context.Context, steps int) error {
	_, err := m.DownResult(ctx, steps)
	return err
}

// DownResult is Down, and reports what it did.
func (m *Migrator) DownResult(ctx context.Context, steps int) (Result, error) {
	if steps < 1 {
		return Result{}, fmt.Errorf("migrations: Down needs at least one step, got %d", steps)
	}
	return m.run(ctx, func(mg *migrate.Migrate) error {
		v, _, err := mg.Version()
		if errors.Is(err, migrate.ErrNilVersion) {
			return nil
		}
		if err != nil {
			return err
		}
		n := steps
		if applied := appliedCount(v); n > applied {
			n = applied
		}
		if n == 0 {
			return nil
		}
		return mg.Steps(-n)
	})
}

// DownAll reverts every migration, dropping the cache table.
func (m *Migrator) DownAll(ctx context.Context) error {
	_, err := m.DownAllResult(ctx)
	return err
}

// DownAllResult is DownAll, and reports what it did.
func (m *Migrator) DownAllResult(ctx context.Context) (Result, error) {
	return m.run(ctx, func(mg *migrate.Migrate) error { return mg.Down() })
}

// Force marks the schema as being at version without running anything, and
// clears the dirty flag. Use it after repairing a failed migration by hand.
// Version 0 means no migration applied.
func (m *Migrator) Force(ctx context.Context, version int) error {
	if version != 0 && !hasVersion(uint(version)) {
		return fmt.Errorf("%w: %d (known: %v)", ErrNoSuchVersion, version, Versions())
	}
	_, err := m.run(ctx, func(mg *migrate.Migrate) error {
		if version == 0 {
			return mg.Force(-1) // golang-migrate's "no version"
		}
		return mg.Force(version)
	})
	return err
}

// Version returns the applied version (0 when none) and whether a failed
// migration left it dirty. It only reads: unlike golang-migrate's own Version
// it creates no migrations table, so it is safe for status checks and dry
// runs, and works for a role that may not create anything. A Config.Schema
// that does not exist yet is at version 0; an empty Config.Schema with no
// existing schema on the search_path is ErrNoSchema.
func (m *Migrator) Version(ctx context.Context) (version uint, dirty bool, err error) {
	conn, err := m.connect(ctx)
	if err != nil {
		return 0, false, err
	}
	defer closeConn(ctx, conn)
	schema, err := m.resolveSchema(ctx, conn)
	if err != nil {
		return 0, false, err
	}
	// golang-migrate keeps its table in the schema it migrates; a
	// Config.Schema that does not exist yet has none (to_regclass is then
	// NULL): nothing applied.
	table := pgx.Identifier{schema, MigrationsTable}.Sanitize()
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

func (m *Migrator) createSchema(ctx context.Context) error {
	conn, err := m.connect(ctx)
	if err != nil {
		return err
	}
	defer closeConn(ctx, conn)
	// A plain CREATE SCHEMA IF NOT EXISTS can still fail with a unique
	// violation when two migrators race, so check first and accept a racing
	// creator's success.
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, m.cfg.Schema).Scan(&exists); err != nil {
		return fmt.Errorf("migrations: look up schema %q: %w", m.cfg.Schema, err)
	}
	if exists {
		return nil
	}
	err = m.inTx(ctx, conn, "", func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{m.cfg.Schema}.Sanitize())
		return err
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return nil
	}
	if err != nil {
		return fmt.Errorf("migrations: create schema %q: %w", m.cfg.Schema, err)
	}
	return nil
}

// sessionConfig is the connection config for the migrator's sessions: the
// caller's, with an application_name and a connect timeout. It adds no
// other startup parameter: what a session needs is set per transaction
// (inTx), which a pooler in transaction mode accepts and keeps.
func (m *Migrator) sessionConfig() *pgx.ConnConfig {
	cc := m.connConfig.Copy()
	if cc.RuntimeParams == nil {
		cc.RuntimeParams = map[string]string{}
	}
	if _, ok := cc.RuntimeParams["application_name"]; !ok {
		cc.RuntimeParams["application_name"] = "dbcache-migrate"
	}
	if cc.ConnectTimeout == 0 {
		cc.ConnectTimeout = 10 * time.Second
	}
	return cc
}

// connect opens one of the migrator's sessions.
func (m *Migrator) connect(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, m.sessionConfig())
	if err != nil {
		if name, ok := pooler.RefusedStartupParam(err); ok {
			return nil, fmt.Errorf("migrations: connect: %w (the server, or a connection pooler in front of it such as PgBouncer, refuses the startup parameter %s: "+
				"remove it from the connection string or ConnConfig.RuntimeParams; the Migrator sets search_path (Config.Schema), lock_timeout and statement_timeout inside each transaction)", err, name)
		}
		return nil, fmt.Errorf("migrations: connect: %w", err)
	}
	return conn, nil
}

// closeConn closes a migrator's session, waiting at most closeWait for the
// server to hear the goodbye.
func closeConn(ctx context.Context, conn *pgx.Conn) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeWait)
	defer cancel()
	_ = conn.Close(cctx)
}

// resolveSchema is the schema migrations run in: Config.Schema, else the
// session's current_schema(), the first existing schema of its
// search_path (ErrNoSchema when none exists).
func (m *Migrator) resolveSchema(ctx context.Context, conn *pgx.Conn) (string, error) {
	if m.cfg.Schema != "" {
		return m.cfg.Schema, nil
	}
	var schema *string
	var searchPath string
	if err := conn.QueryRow(ctx, `SELECT current_schema(), current_setting('search_path')`).Scan(&schema, &searchPath); err != nil {
		return "", fmt.Errorf("migrations: read the session's schema: %w", translate(err))
	}
	if schema == nil {
		return "", noSchemaError(searchPath)
	}
	return *schema, nil
}

// sqlSettings sets, for the current transaction only: search_path to $1
// unless it is empty, lock_timeout to $2, and statement_timeout to $3
// unless it is empty (the session's own applies then).
const sqlSettings = `SELECT CASE WHEN $1::text <> '' THEN set_config('search_path', $1::text, true) END,
       set_config('lock_timeout', $2::text, true),
       CASE WHEN $3::text <> '' THEN set_config('statement_timeout', $3::text, true) END`

// beginTx begins a READ COMMITTED transaction on conn with the migrator's
// settings for it: search_path to Config.Schema (when set and searchPath is
// not ""), lock_timeout to Config.LockTimeout, and statement_timeout to
// what is left of ctx's deadline, if it has one.
func (m *Migrator) beginTx(ctx context.Context, conn *pgx.Conn, searchPath string) (pgx.Tx, error) {
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return nil, err
	}
	path := ""
	if m.cfg.Schema != "" && searchPath != "" {
		path = pgx.Identifier{m.cfg.Schema}.Sanitize()
	}
	stmt := ""
	if dl, ok := ctx.Deadline(); ok {
		stmt = strconv.FormatInt(max(time.Until(dl).Milliseconds(), 1), 10)
	}
	if _, err := tx.Exec(ctx, sqlSettings, path, strconv.FormatInt(m.cfg.LockTimeout.Milliseconds(), 10), stmt); err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeWait)
		_ = tx.Rollback(rctx)
		cancel()
		return nil, err
	}
	return tx, nil
}

// inTx runs fn in a transaction begun by beginTx, and commits it.
func (m *Migrator) inTx(ctx context.Context, conn *pgx.Conn, searchPath string, fn func(pgx.Tx) error) error {
	tx, err := m.beginTx(ctx, conn, searchPath)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeWait)
		_ = tx.Rollback(rctx)
		cancel()
		return err
	}
	return tx.Commit(ctx)
}

// lockTimeoutSlack is how much longer than Config.LockTimeout golang-migrate
// itself waits for the lock: the server's lock_timeout ends the wait first,
// and the waiting statement with it.
const lockTimeoutSlack = 5 * time.Second

// run runs fn over a golang-migrate instance on this package's driver and
// translates golang-migrate's errors into this package's.
func (m *Migrator) run(ctx context.Context, fn func(*migrate.Migrate) error) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	d, err := m.openDriver(ctx)
	if err != nil {
		return Result{}, err
	}
	src, err := iofs.New(FS, ".")
	if err != nil {
		_ = d.Close()
		return Result{}, translate(err)
	}
	mg, err := migrate.NewWithInstance("iofs", src, "dbcache", d)
	if err != nil {
		_ = d.Close()
		return Result{}, translate(err)
	}
	defer mg.Close()
	mg.LockTimeout = m.cfg.LockTimeout + lockTimeoutSlack
	mg.Log = migrateLogger{ctx: ctx, log: m.cfg.Logger}

	// golang-migrate takes no context: ask it to stop between migrations
	// when ctx ends (the driver's statements end with ctx themselves).
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			mg.GracefulStop <- true
		case <-done:
		}
	}()
	err = fn(mg)
	res := d.res
	if err != nil {
		if errors.Is(err, migrate.ErrNoChange) {
			return res, nil
		}
		return res, translate(err)
	}
	return res, ctx.Err()
}

func noSchemaError(searchPath string) error {
	return fmt.Errorf("%w: no schema on the search_path (%s) exists; create one, or set Config.Schema (Up creates it)", ErrNoSchema, searchPath)
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
