package migrations

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/golang-migrate/migrate/v4/database"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	schema "github.com/dbcache/dbcache/internal/migrations"
)

// The Migrator runs golang-migrate (its source, its ordering, its dirty
// flag) over a database driver of its own rather than golang-migrate's pgx
// driver, because that driver relies on session state, which a connection
// pooler in transaction mode (PgBouncer's pool_mode = transaction) does not
// keep: it takes its lock with pg_advisory_lock, a session lock that the
// pooler leaves on whichever server connection ran it (the unlock may run
// on another, so the lock stays held), and it needs search_path and
// lock_timeout set for the session, as startup parameters PgBouncer
// refuses. This driver keeps nothing in the session:
//
//   - the lock is pg_advisory_xact_lock, held by a transaction left open on
//     a connection of its own for the whole run (a pooler keeps one server
//     connection for an open transaction), so ending that transaction, or
//     losing its connection, always releases it. Its key is the one
//     golang-migrate's pgx driver uses (database, schema, table), so it
//     excludes an application migrating dbcache's files with that driver;
//   - every statement runs in a transaction that first sets search_path,
//     lock_timeout and statement_timeout for itself only (set_config(…,
//     true), which is SET LOCAL), so they hold behind a pooler and never
//     outlive the transaction;
//   - the migrations table is named with its schema.
//
// golang-migrate's driver interface takes no context: the driver keeps the
// run's, which bounds every statement it sends.
type driver struct {
	ctx    context.Context
	m      *Migrator
	schema string // where the tables are: Config.Schema, or the session's current_schema()

	conn *pgx.Conn // the statements

	lockMu   sync.Mutex
	lockConn *pgx.Conn
	lockTx   pgx.Tx
	lockID   int64

	// From the run, for Result: the version found once the lock was held
	// (the first Version after Lock), the last version recorded clean, and
	// the entries counted in the transaction that dropped the cache table.
	res      Result
	resFrom  bool
	dropping bool
}

const sqlLockTx = `SELECT pg_advisory_xact_lock($1::int8)`

// openDriver connects for a run and makes sure the migrations table
// exists (golang-migrate's driver does the same when it opens).
func (m *Migrator) openDriver(ctx context.Context) (*driver, error) {
	conn, err := m.connect(ctx)
	if err != nil {
		return nil, err
	}
	d := &driver{ctx: ctx, m: m, conn: conn}
	fail := func(err error) (*driver, error) {
		d.closeConn(conn)
		return nil, err
	}
	schema, err := m.resolveSchema(ctx, conn)
	if err != nil {
		return fail(err)
	}
	d.schema = schema
	var db string
	if err := conn.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
		return fail(fmt.Errorf("migrations: read the database's name: %w", err))
	}
	id, _ := database.GenerateAdvisoryLockId(db, schema, MigrationsTable)
	d.lockID, _ = strconv.ParseInt(id, 10, 64)
	if err := d.ensureVersionTable(); err != nil {
		return fail(err)
	}
	return d, nil
}

// table is the migrations table's qualified name.
func (d *driver) table() string { return pgx.Identifier{d.schema, MigrationsTable}.Sanitize() }

// tx runs fn in a READ COMMITTED transaction on conn that first sets the
// session settings for itself only.
func (d *driver) tx(conn *pgx.Conn, fn func(pgx.Tx) error) error {
	return d.m.inTx(d.ctx, conn, d.schema, fn)
}

func (d *driver) ensureVersionTable() error {
	// Reading first lets a role that may not create anything still run
	// the read-only commands; creating under the lock keeps two
	// migrators' CREATE TABLE IF NOT EXISTS from colliding on the catalog.
	var exists bool
	if err := d.conn.QueryRow(d.ctx, `SELECT to_regclass($1) IS NOT NULL`, d.table()).Scan(&exists); err != nil {
		return fmt.Errorf("migrations: look up %s: %w", d.table(), err)
	}
	if exists {
		return nil
	}
	err := d.tx(d.conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(d.ctx, sqlLockTx, d.lockID); err != nil {
			return err
		}
		_, err := tx.Exec(d.ctx, `CREATE TABLE IF NOT EXISTS `+d.table()+` (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)`)
		return err
	})
	if err != nil {
		if isLockTimeout(err) {
			return fmt.Errorf("%w (waiting to create %s)", ErrLockTimeout, d.table())
		}
		return fmt.Errorf("migrations: create %s: %w", d.table(), err)
	}
	return nil
}

func (d *driver) Open(string) (database.Driver, error) {
	return nil, errors.New("migrations: the driver is opened by the Migrator only")
}

// Close ends the lock transaction, if any, and closes both connections.
func (d *driver) Close() error {
	d.lockMu.Lock()
	defer d.lockMu.Unlock()
	d.endLock()
	d.closeConn(d.conn)
	return nil
}

func (d *driver) closeConn(conn *pgx.Conn) {
	if conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(d.ctx), closeWait)
	defer cancel()
	_ = conn.Close(ctx)
}

// closeWait bounds saying goodbye to the server on a connection.
const closeWait = time.Second

// Lock takes the migration lock: a transaction-level advisory lock held by
// a transaction on a connection of its own until Unlock. The wait is
// bounded by Config.LockTimeout (lock_timeout, set for that transaction).
func (d *driver) Lock() error {
	d.lockMu.Lock()
	defer d.lockMu.Unlock()
	if d.lockTx != nil {
		return database.ErrLocked
	}
	conn, err := d.m.connect(d.ctx)
	if err != nil {
		return err
	}
	tx, err := d.m.beginTx(d.ctx, conn, d.schema)
	if err == nil {
		_, err = tx.Exec(d.ctx, sqlLockTx, d.lockID)
	}
	if err != nil {
		d.closeConn(conn)
		return &database.Error{OrigErr: err, Err: "take the migration lock", Query: []byte(sqlLockTx)}
	}
	d.lockConn, d.lockTx = conn, tx
	return nil
}

// Unlock ends the lock transaction, which releases the lock.
func (d *driver) Unlock() error {
	d.lockMu.Lock()
	defer d.lockMu.Unlock()
	if d.lockTx == nil {
		return database.ErrNotLocked
	}
	d.endLock()
	return nil
}

// endLock rolls back the lock transaction and closes its connection: if
// the rollback fails, closing the connection ends the transaction on the
// server anyway.
func (d *driver) endLock() {
	if d.lockTx == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(d.ctx), closeWait)
	_ = d.lockTx.Rollback(ctx)
	cancel()
	d.closeConn(d.lockConn)
	d.lockConn, d.lockTx = nil, nil
}

// Run applies one migration file in a transaction of its own, after the
// session settings. The transaction that drops the cache table (migration
// 1's down) first locks it and counts its entries, for Result.
func (d *driver) Run(migration io.Reader) error {
	body, err := io.ReadAll(migration)
	if err != nil {
		return err
	}
	dropping := d.dropping
	err = d.tx(d.conn, func(tx pgx.Tx) error {
		if dropping {
			n, err := countForDrop(d.ctx, tx)
			if err != nil {
				return err
			}
			d.res.DroppedEntries = n
		}
		return schema.Apply(d.ctx, tx, string(body))
	})
	if err != nil {
		// The file's transaction rolled back whole: the schema is still
		// at the last version recorded clean, which golang-migrate has
		// just marked dirty with the file's. Record that one clean again,
		// so the next Up runs the file again instead of refusing.
		if rerr := d.restoreClean(); rerr != nil {
			err = fmt.Errorf("%w (and recording version %d clean again failed: %w)", err, d.res.To, rerr)
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return database.Error{OrigErr: err, Err: "migration failed: " + pgErr.Message, Query: body}
		}
		return database.Error{OrigErr: err, Err: "migration failed", Query: body}
	}
	return nil
}

// countForDrop counts the cache table's entries in the transaction about to
// drop it, after taking the lock the DROP would take, so no write lands
// between the count and the drop. It returns nil when there is no table.
func countForDrop(ctx context.Context, tx pgx.Tx) (*int64, error) {
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, Table).Scan(&exists); err != nil || !exists {
		return nil, err
	}
	if _, err := tx.Exec(ctx, `LOCK TABLE `+pgx.Identifier{Table}.Sanitize()+` IN ACCESS EXCLUSIVE MODE`); err != nil {
		return nil, err
	}
	var n int64
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{Table}.Sanitize()).Scan(&n); err != nil {
		return nil, err
	}
	return &n, nil
}

// SetVersion records version and the dirty flag, as golang-migrate does
// before (dirty) and after (clean) each migration.
func (d *driver) SetVersion(version int, dirty bool) error {
	err := d.tx(d.conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(d.ctx, `TRUNCATE `+d.table()); err != nil {
			return err
		}
		if version >= 0 || (version == database.NilVersion && dirty) {
			_, err := tx.Exec(d.ctx, `INSERT INTO `+d.table()+` (version, dirty) VALUES ($1, $2)`, version, dirty)
			return err
		}
		return nil
	})
	if err != nil {
		return &database.Error{OrigErr: err, Err: "record the version"}
	}
	if dirty {
		// golang-migrate marks the version it migrates to dirty before
		// running the file: going down from the first migration, that is
		// no version, and the file drops the cache table.
		d.dropping = version == database.NilVersion
	} else {
		d.dropping = false
		d.res.To = uint(max(version, 0))
	}
	return nil
}

// Version reads the recorded version; -1 when none is.
func (d *driver) Version() (int, bool, error) {
	var (
		v     int64
		dirty bool
	)
	err := d.conn.QueryRow(d.ctx, `SELECT version, dirty FROM `+d.table()+` LIMIT 1`).Scan(&v, &dirty)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		v, dirty, err = int64(database.NilVersion), false, nil
	case err != nil:
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table
			v, dirty, err = int64(database.NilVersion), false, nil
		} else {
			return 0, false, &database.Error{OrigErr: err, Err: "read the version"}
		}
	}
	d.lockMu.Lock()
	locked := d.lockTx != nil
	d.lockMu.Unlock()
	if locked && !d.resFrom {
		d.res.From, d.res.To, d.resFrom = uint(max(v, 0)), uint(max(v, 0)), true
	}
	return int(v), dirty, nil
}

// Drop is golang-migrate's "drop everything"; the Migrator never calls it.
func (d *driver) Drop() error {
	return errors.New("migrations: Drop is not supported; use DownAll")
}

// restoreWait bounds recording the clean version again after a failed file.
const restoreWait = 5 * time.Second

// restoreClean records the last version recorded clean (the one the run
// found, or the last file it completed), after a file failed: its
// transaction rolled back, so that is the version the schema is at.
func (d *driver) restoreClean() error {
	v := int(d.res.To)
	if v == 0 {
		v = database.NilVersion
	}
	// The run's context may be what ended the file (its deadline): the
	// record gets a short time of its own.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(d.ctx), restoreWait)
	defer cancel()
	err := d.m.inTx(ctx, d.conn, d.schema, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `TRUNCATE `+d.table()); err != nil {
			return err
		}
		if v >= 0 {
			_, err := tx.Exec(ctx, `INSERT INTO `+d.table()+` (version, dirty) VALUES ($1, false)`, v)
			return err
		}
		return nil
	})
	if err == nil {
		d.dropping = false
	}
	return err
}
