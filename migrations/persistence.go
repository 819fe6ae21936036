package migrations

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dbcache/dbcache/internal/notmigrated"
)

// Persistence says how PostgreSQL writes the cache table.
type Persistence string

const (
	// Logged is PostgreSQL's default: every write goes to the WAL, so the
	// table survives a crash, is replicated to standbys and is in base
	// backups and point-in-time recovery.
	Logged Persistence = "logged"
	// Unlogged skips the WAL: writes are cheaper, but after a crash (not a
	// clean restart) PostgreSQL empties the table, standbys cannot read it
	// (queries on a hot standby fail), and backups hold it empty. For a
	// cache whose loss is only a cold start, often the right trade.
	Unlogged Persistence = "unlogged"
)

// ErrNoTable is returned by Persistence and SetPersistence when the cache
// table does not exist: run Up first. It matches dbcache.ErrNotMigrated too.
var ErrNoTable = notmigrated.New("migrations: the cache table does not exist (run the migrations first)", notmigrated.Err)

const sqlPersistence = `SELECT c.relpersistence FROM pg_class c WHERE c.oid = to_regclass($1)`

// Persistence reports whether the cache table is logged or unlogged.
func (m *Migrator) Persistence(ctx context.Context) (Persistence, error) {
	conn, err := m.connect(ctx)
	if err != nil {
		return "", err
	}
	defer closeConn(ctx, conn)
	schema, err := m.resolveSchema(ctx, conn)
	if err != nil {
		return "", err
	}
	return persistence(ctx, conn, schema)
}

func persistence(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, schema string) (Persistence, error) {
	var p string
	err := q.QueryRow(ctx, sqlPersistence, pgx.Identifier{schema, Table}.Sanitize()).Scan(&p)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return "", ErrNoTable
	case err != nil:
		return "", fmt.Errorf("migrations: read the cache table's persistence: %w", err)
	case p == "u":
		return Unlogged, nil
	default:
		return Logged, nil
	}
}

// SetPersistence makes the cache table logged or unlogged, with ALTER TABLE
// … SET LOGGED or SET UNLOGGED. Either way PostgreSQL rewrites the table and
// its indexes under an ACCESS EXCLUSIVE lock: every read and write of the
// cache waits until it is done (seconds per gigabyte), and SET LOGGED also
// writes the whole table to the WAL (and so to standbys). The wait for the
// lock is bounded by Config.LockTimeout. Already so is a no-op.
func (m *Migrator) SetPersistence(ctx context.Context, p Persistence) error {
	var verb string
	switch p {
	case Logged:
		verb = " SET LOGGED"
	case Unlogged:
		verb = " SET UNLOGGED"
	default:
		return fmt.Errorf("migrations: persistence %q is neither %q nor %q", p, Logged, Unlogged)
	}
	conn, err := m.connect(ctx)
	if err != nil {
		return err
	}
	defer closeConn(ctx, conn)
	schema, err := m.resolveSchema(ctx, conn)
	if err != nil {
		return err
	}
	return m.inTx(ctx, conn, "", func(tx pgx.Tx) error {
		cur, err := persistence(ctx, tx, schema)
		if err != nil || cur == p {
			return err
		}
		if _, err := tx.Exec(ctx, "ALTER TABLE "+pgx.Identifier{schema, Table}.Sanitize()+verb); err != nil {
			if isLockTimeout(err) {
				return fmt.Errorf("%w (waiting to rewrite the cache table as %s)", ErrLockTimeout, p)
			}
			return fmt.Errorf("migrations: set the cache table %s: %w", p, err)
		}
		return nil
	})
}

func isLockTimeout(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "55P03" // lock_not_available
}
