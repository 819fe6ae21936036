package dbcache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/internal/citusmeta"
)

// CitusMode says whether the cache uses the statement forms a Citus
// cluster accepts on a table distributed by key (docs/scale-out.md).
type CitusMode int

const (
	// CitusAuto uses the Citus forms when New finds the citus extension
	// and the cache table in pg_dist_partition; the plain forms otherwise.
	CitusAuto CitusMode = iota
	// CitusOn always uses the Citus forms, on plain PostgreSQL too, where
	// they answer as the plain forms do.
	CitusOn
	// CitusOff never uses them.
	CitusOff
)

func (m CitusMode) String() string {
	switch m {
	case CitusAuto:
		return "auto"
	case CitusOn:
		return "on"
	case CitusOff:
		return "off"
	}
	return fmt.Sprintf("CitusMode(%d)", int(m))
}

// The Citus forms. Citus refuses a FOR UPDATE that reaches more than one
// shard and routes a statement to one worker only when it names one key
// (key = $1), so every operation the plain forms do in one multi-key
// statement is here one transaction of single-key statements, run in the
// stored keys' byte order (the key column's "C" order, as Go compares
// strings) so two of them never lock rows in opposite orders. Pages of keys
// for Clear and DeletePrefix are read without a lock (a multi-shard SELECT
// with ORDER BY … LIMIT, which Citus pushes down and merges); each key is
// then deleted by a statement that names it, which finds the row as it is
// then or not at all.
const (
	// The session's default isolation may be another level (see exec.go).
	qCitusBegin = `BEGIN ISOLATION LEVEL READ COMMITTED`
	// Config.FastCommit in a Citus transaction: for the whole transaction
	// instead of inside each statement (set_config in a modification's
	// FROM is VOLATILE, which Citus evaluates on the coordinator alone).
	qCitusFastCommit = `SET LOCAL synchronous_commit TO off`

	// Locks one key's row, if it exists: IncrVersion locks both versions'
	// rows this way, in key order, before it moves the entry.
	qCitusLockKey = `SELECT 1 FROM TABLE WHERE key = $1 FOR UPDATE`

	// A row that does not exist yet cannot be locked, so two moves between
	// the same two versions in opposite directions could each hold one
	// row and wait for the other's insert. Each move first takes a
	// transaction-scoped advisory lock per key (the table's OID and the
	// key's hash, the two-int lock space (the OID reduced to fit an int), apart from the load locks'
	// bigint one), in key order. A statement without a table runs on the
	// coordinator under Citus, so every move takes them on one node.
	qCitusLockName = `SELECT pg_advisory_xact_lock(($1::bigint % 2147483648)::int, hashtext($2::text))`

	// Takes a live entry off its key, returning what the move writes back
	// under the other version: bare columns in RETURNING, and
	// statement_timestamp() (STABLE, no column argument) in WHERE, which
	// Citus evaluates once on the coordinator.
	qCitusMoveTake = `DELETE FROM TABLE WHERE key = $1 AND (expires IS NULL OR expires > statement_timestamp())
RETURNING value, expires, written_at`

	qCitusMovePut = `INSERT INTO TABLE AS t (key, value, expires, written_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires, written_at = EXCLUDED.written_at, token = EXCLUDED.token`

	// Removes one key and counts it if it was live: DeleteMany's and
	// DeletePrefix's statement per key. The DELETE returns the bare column
	// and the query over it decides liveness, as qDelete does.
	qCitusDeleteKey = `WITH d AS (DELETE FROM TABLE WHERE key = $1 RETURNING expires)
SELECT count(*) FROM d WHERE expires IS NULL OR expires > statement_timestamp()`

	// Clear's statement per key: whatever the row holds.
	qCitusClearKey = `DELETE FROM TABLE WHERE key = $1`

	// A page of Clear's keys, from $1 on, in key order, unlocked.
	qCitusClearPage = `SELECT key FROM TABLE WHERE key >= $1 ORDER BY key LIMIT $2`

	// A page of DeletePrefix's keys, from $1 on and below $2, unlocked,
	// live or not (an expired row goes too, uncounted, as in the plain form).
	qCitusPrefixPage = `SELECT key FROM TABLE WHERE key >= $1 AND key < $2 ORDER BY key LIMIT $3`

	// Detection at New, in two steps so a server without Citus never sees
	// pg_dist_partition named: whether the extension is installed, then
	// whether the table is distributed.
)

// citusPageSize is the most keys one Clear or DeletePrefix transaction
// removes in the Citus forms: each is a statement of its own, run one
// after another by the coordinator, so a page is smaller than the plain
// forms' batch and each transaction holds its locks for as briefly.
const citusPageSize = 500

// rollbackTimeout bounds the rollback of a failed Citus transaction, which
// runs after the operation's own context may be done.
const rollbackTimeout = 5 * time.Second

func replaceTable(sql, table string) string { return strings.ReplaceAll(sql, "TABLE", table) }

// citusQueries holds the Citus forms with the table name filled in.
type citusQueries struct {
	lockKey, lockName, moveTake, movePut, deleteKey, clearKey, clearPage, prefixPage string
	// tableOID identifies the table in its database, for the move's
	// advisory locks.
	tableOID int64
}

func newCitusQueries(table string) *citusQueries {
	fill := func(sql string) string { return replaceTable(sql, table) }
	return &citusQueries{
		lockKey:    fill(qCitusLockKey),
		lockName:   qCitusLockName,
		moveTake:   fill(qCitusMoveTake),
		movePut:    fill(qCitusMovePut),
		deleteKey:  fill(qCitusDeleteKey),
		clearKey:   fill(qCitusClearKey),
		clearPage:  fill(qCitusClearPage),
		prefixPage: fill(qCitusPrefixPage),
	}
}

// detectCitus decides at New whether the cache uses the Citus forms.
func detectCitus(ctx context.Context, pool *pgxpool.Pool, mode CitusMode, tableOID int64) (bool, error) {
	switch mode {
	case CitusOn:
		return true, nil
	case CitusOff:
		return false, nil
	}
	distributed, err := citusmeta.DistributedOID(ctx, pool, tableOID)
	if err != nil {
		return false, fmt.Errorf("dbcache: check for Citus: %w", err)
	}
	return distributed, nil
}

// UsesCitus reports whether the cache runs the Citus forms (Config.Citus).
func (c *Cache) UsesCitus() bool { return c.s.cq.Load() != nil }

// batcher is what runs a pgx.Batch: the pool, or a caller's transaction.
type batcher interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// citusBatch runs b's statements as one transaction: on the pool, between
// BEGIN ISOLATION LEVEL READ COMMITTED (and SET LOCAL synchronous_commit
// with Config.FastCommit) and COMMIT, sent in one round trip; in a WithTx
// view, in the caller's transaction. read reads each queued statement's
// result in order.
func (c *Cache) citusBatch(ctx context.Context, b *pgx.Batch, read func(br pgx.BatchResults) error) error {
	var db batcher = c.s.pool
	if !c.onPool() {
		tx, ok := c.db.(batcher)
		if !ok {
			return errors.New("dbcache: the transaction given to WithTx cannot send a batch")
		}
		db = tx
	}
	run := b
	if c.onPool() {
		run = &pgx.Batch{}
		run.Queue(qCitusBegin)
		if c.s.cfg.FastCommit {
			run.Queue(qCitusFastCommit)
		}
		run.QueuedQueries = append(run.QueuedQueries, b.QueuedQueries...)
		run.Queue(qCommit)
	}
	err := c.sendCitusBatch(ctx, db, run, read)
	if err != nil && c.onPool() && ctx.Err() == nil && c.retryable(err) {
		err = c.sendCitusBatch(ctx, db, run, read)
	}
	return err
}

func (c *Cache) sendCitusBatch(ctx context.Context, db batcher, run *pgx.Batch, read func(br pgx.BatchResults) error) error {
	br := db.SendBatch(ctx, run)
	err := func() error {
		if c.onPool() {
			if _, err := br.Exec(); err != nil {
				return err
			}
			if c.s.cfg.FastCommit {
				if _, err := br.Exec(); err != nil {
					return err
				}
			}
		}
		if err := read(br); err != nil {
			return err
		}
		if c.onPool() {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		return nil
	}()
	// On an error the server skipped the rest and left the transaction
	// aborted; the pool discards a connection released in that state.
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return err
}

// citusExecKeys runs sql once per key (its other arguments from args, by
// index), in one transaction, and sums the counts the statements return
// when counted, else ignores them.
func (c *Cache) citusExecKeys(ctx context.Context, sql string, n int, args func(i int) []any, counted bool) (int, error) {
	b := &pgx.Batch{}
	for i := range n {
		b.Queue(sql, args(i)...)
	}
	total := 0
	err := c.citusBatch(ctx, b, func(br pgx.BatchResults) error {
		total = 0 // a retried batch counts afresh
		for range n {
			if counted {
				var k int
				if err := br.QueryRow().Scan(&k); err != nil {
					return err
				}
				total += k
				continue
			}
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		return nil
	})
	return total, err
}

// citusDeleteMany is DeleteMany's Citus form: one routed DELETE per key,
// in key order, in one transaction; made is sorted.
func (c *Cache) citusDeleteMany(ctx context.Context, made []string) (int, error) {
	return c.citusExecKeys(ctx, c.s.cq.Load().deleteKey, len(made), func(i int) []any { return []any{made[i]} }, true)
}

// citusSetMany is SetMany's and the coalesced Sets' Citus form: one routed
// Set per key, in key order, in one transaction, each with its own expiry
// (micros[i], nil for never, or one for all when len(micros) == 1).
func (c *Cache) citusSetMany(ctx context.Context, keys []string, values [][]byte, micros []any) error {
	order := make([]int, len(keys))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(keys[a], keys[b]) })
	_, err := c.citusExecKeys(ctx, c.s.qTx.set, len(keys), func(i int) []any {
		j := order[i]
		us := micros[0]
		if len(micros) > 1 {
			us = micros[j]
		}
		return []any{keys[j], values[j], us}
	}, false)
	return err
}

// citusPage reads a page of keys (sql with args) and deletes each with
// del, in one transaction; it returns the page's length, its last key and
// the sum of del's counts (when counted).
func (c *Cache) citusPage(ctx context.Context, page string, args []any, del string, counted bool) (n, deleted int, last string, err error) {
	rows, err := c.db.Query(ctx, page, args...)
	if err != nil {
		return 0, 0, "", err
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, 0, "", err
	}
	if len(keys) == 0 {
		return 0, 0, "", nil
	}
	deleted, err = c.citusExecKeys(ctx, del, len(keys), func(i int) []any { return []any{keys[i]} }, counted)
	if err != nil {
		return 0, 0, "", err
	}
	return len(keys), deleted, keys[len(keys)-1], nil
}

// citusClear is Clear's Citus form: pages of keys, each deleted by key.
func (c *Cache) citusClear(ctx context.Context) error {
	from := ""
	for {
		bctx, cancel := c.bound(ctx)
		n, _, last, err := c.citusPage(bctx, c.s.cq.Load().clearPage, []any{from, citusPageSize}, c.s.cq.Load().clearKey, false)
		cancel()
		if err != nil {
			return c.wrapErr("clear", err)
		}
		if n < citusPageSize {
			return nil
		}
		from = last
	}
}

// citusDeletePrefixBatch is one batch of DeletePrefix's Citus form: pages
// of citusPageSize keys, each its own transaction, until it has removed
// deletePrefixBatchSize rows (DeletePrefix's loop then goes on from last)
// or a page comes back short (no more keys in the range).
func (c *Cache) citusDeletePrefixBatch(ctx context.Context, from, to string) (live, rows int, last string, err error) {
	for rows < deletePrefixBatchSize {
		bctx, cancel := c.bound(ctx)
		n, deleted, pageLast, err := c.citusPage(bctx, c.s.cq.Load().prefixPage, []any{from, to, citusPageSize}, c.s.cq.Load().deleteKey, true)
		cancel()
		live += deleted
		if err != nil {
			return live, rows, last, err
		}
		rows += n
		if n < citusPageSize {
			return live, rows, last, nil
		}
		last, from = pageLast, pageLast
	}
	return live, rows, last, nil
}

// citusMove is IncrVersion's move in the Citus form: one transaction that
// locks both versions' rows by key in key order (two routed SELECT … FOR
// UPDATE, which is what the plain form's lock-order CTE does in one
// statement), takes the entry off from and writes it under dest. It
// returns pgx.ErrNoRows when from holds no live entry.
func (c *Cache) citusMove(ctx context.Context, from, dest string) error {
	run := func(db dbtx) error {
		first, second := min(from, dest), max(from, dest)
		for _, k := range []string{first, second} {
			if _, err := db.Exec(ctx, c.s.cq.Load().lockName, c.s.cq.Load().tableOID, k); err != nil {
				return err
			}
		}
		for _, k := range []string{first, second} {
			rows, err := db.Query(ctx, c.s.cq.Load().lockKey, k)
			if err != nil {
				return err
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
		}
		var (
			value            []byte
			expires, written pgtype.Timestamptz
		)
		if err := db.QueryRow(ctx, c.s.cq.Load().moveTake, from).Scan(&value, &expires, &written); err != nil {
			return err
		}
		_, err := db.Exec(ctx, c.s.cq.Load().movePut, dest, value, expires, written)
		return err
	}
	if !c.onPool() {
		return run(c.db)
	}
	err := c.citusMoveTx(ctx, run)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) && ctx.Err() == nil && c.retryable(err) {
		err = c.citusMoveTx(ctx, run)
	}
	return err
}

func (c *Cache) citusMoveTx(ctx context.Context, run func(db dbtx) error) error {
	tx, err := c.s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return err
	}
	// A failed move never leaves its transaction open: the rollback runs
	// even when ctx is done (bounded by its own short deadline).
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		_ = tx.Rollback(rctx)
	}()
	if c.s.cfg.FastCommit {
		if _, err := tx.Exec(ctx, qCitusFastCommit); err != nil {
			return err
		}
	}
	if err := run(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// setMany runs SetMany's write: the plain statement, or its Citus form.
func (c *Cache) setMany(ctx context.Context, made []string, values [][]byte, micros any) error {
	if c.s.cq.Load() != nil {
		return c.citusSetMany(ctx, made, values, []any{micros})
	}
	_, err := c.execWrite(ctx, c.q.setMany, made, values, micros)
	return err
}

// setBatch runs the coalesced Sets' write: the plain statement, or its
// Citus form.
func (c *Cache) setBatch(ctx context.Context, keys []string, values [][]byte, micros []*int64) error {
	if c.s.cq.Load() != nil {
		each := make([]any, len(micros))
		for i, us := range micros {
			if us != nil {
				each[i] = *us
			}
		}
		return c.citusSetMany(ctx, keys, values, each)
	}
	_, err := c.execWrite(ctx, c.q.setBatch, keys, values, micros)
	return err
}
