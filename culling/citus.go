package culling

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/dbcache/dbcache/internal/citusmeta"
)

// CitusMode says whether the culler uses the statement forms a Citus
// cluster accepts on a cache table distributed by key (docs/culling.md#citus),
// as dbcache.Config.Citus does for the cache.
type CitusMode int

const (
	// CitusAuto uses the Citus forms when the culler finds the citus
	// extension and the cache table in pg_dist_partition (at Start, or at
	// the first pass of a Culler never started); the plain forms otherwise.
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

// The Citus forms. Citus refuses a SELECT … FOR UPDATE that reaches more
// than one shard, a non-IMMUTABLE function (pg_column_size) in a
// modification's RETURNING, and routes a modification to one worker only
// when it names one key (key = $1). A multi-key DELETE reaches every shard
// at once and locks each shard's rows in that shard's order, not in the
// key column's, so against dbcache's Citus SetMany (one routed statement
// per key, in key order) it could deadlock across workers.
//
// So each batch of the plain forms is here two transactions: a page of
// candidates read without a lock (a multi-shard SELECT with ORDER BY …
// LIMIT, which Citus pushes down to every shard and merges), then one
// transaction that checks the culler lock, as the plain forms' held CTE
// does, and deletes each picked key with a routed single-key DELETE, in
// key-column order (the "C" order, as Go compares strings), each
// re-checking in its WHERE what the plain form's DELETE re-checks (the
// cut-off, or the stretch of eviction order the page covered), so a row a
// writer rewrote between the page read and the delete is judged by what
// the writer committed. The DELETEs return nothing: the removed count is
// their command tags', and the bytes are the page's (computed by the
// SELECT, where pg_column_size is allowed), summed for the keys whose
// DELETE removed a row, as the plain forms sum the rows they read. The cull
// forms' pick (the rows a byte budget or a row count calls for) is the
// plain forms' window, computed in Go over the page.
//
// The settings reach the workers: Citus sends a transaction's SET LOCAL
// commands to the workers it opens the transaction on when
// citus.propagate_set_commands is 'local', and never set_config's. On plain
// PostgreSQL that setting is a placeholder, and SET LOCAL does what the
// plain forms' set_config does.
const (
	sqlCitusPropagate   = `SET LOCAL citus.propagate_set_commands TO 'local'`
	sqlCitusAsync       = `SET LOCAL synchronous_commit TO off`
	sqlCitusNoSeqScan   = `SET LOCAL enable_seqscan TO off`
	sqlCitusNoBitmap    = `SET LOCAL enable_bitmapscan TO off`
	sqlCitusLockTimeout = `SET LOCAL lock_timeout TO '50ms'`

	// sqlCitusHeld is the plain forms' held CTE as a statement of its own,
	// the first of the delete transaction: pg_locks is the coordinator's,
	// where the lock transaction holds the culler lock.
	sqlCitusHeld = `SELECT EXISTS (SELECT 1 FROM pg_locks
                WHERE locktype = 'advisory' AND granted AND virtualtransaction = $1)`

	// sqlCitusSweepPage is sqlSweep's batch: rows that had expired at $2,
	// from cursor ($3, $4), up to $1.
	sqlCitusSweepPage = `
SELECT expires, key FROM %[1]s
 WHERE expires <= $2 AND (expires, key) >= ($3, $4)
 ORDER BY expires, key
 LIMIT $1`

	// sqlCitusSweepKey is sqlSweep's DELETE for key $1: still expired at
	// the pass's start ($2).
	sqlCitusSweepKey = `DELETE FROM %[1]s WHERE key = $1 AND expires <= $2`

	// sqlCitusAgePage is sqlAgeOut's batch: rows written before $2, from
	// cursor (written_at $3, key $4), up to $1, through the partial index.
	sqlCitusAgePage = `
SELECT written_at, key FROM %[1]s
 WHERE (expires IS NULL OR expires - written_at > interval '1 hour')
   AND written_at < $2 AND (written_at, key) >= ($3, $4)
 ORDER BY written_at, key
 LIMIT $1`

	// sqlCitusAgeKey is sqlAgeOut's DELETE for key $1: still written
	// before the cut-off $2.
	sqlCitusAgeKey = `DELETE FROM %[1]s WHERE key = $1 AND written_at < $2`

	// sqlCitusCullBeforePage is sqlCullBefore's batch: rows with an expiry
	// from cursor ($2, $3) up to, not including, the boundary ($4, $5),
	// with their bytes (sqlRowBytes).
	sqlCitusCullBeforePage = `
SELECT expires, key, ` + sqlRowBytes + ` FROM %[1]s
 WHERE (expires, key) >= ($2, $3) AND (expires, key) < ($4, $5)
 ORDER BY expires, key
 LIMIT $1`

	// sqlCitusCullTimedPage is sqlCullTimed's batch: rows with an expiry
	// from cursor ($2, $3) on.
	sqlCitusCullTimedPage = `
SELECT expires, key, ` + sqlRowBytes + ` FROM %[1]s
 WHERE expires IS NOT NULL AND (expires, key) >= ($2, $3)
 ORDER BY expires, key
 LIMIT $1`

	// sqlCitusCullTimedKey is the DELETE for key $1 of sqlCullBefore and
	// sqlCullTimed: still in the stretch the page covered, from the cursor
	// ($2, $3) to the last row picked ($4, $5). A row rewritten with a
	// later expiry (or none) has left it and stays.
	sqlCitusCullTimedKey = `
DELETE FROM %[1]s
 WHERE key = $1 AND (expires, key) >= ($2, $3) AND (expires, key) <= ($4, $5)`

	// sqlCitusCullNullBeforePage is sqlCullNullBefore's batch:
	// never-expiring rows from cursor key $2 up to, not including, the
	// boundary's key $3.
	sqlCitusCullNullBeforePage = `
SELECT expires, key, ` + sqlRowBytes + ` FROM %[1]s
 WHERE expires IS NULL AND key >= $2 AND key < $3
 ORDER BY expires, key
 LIMIT $1`

	// sqlCitusCullNullPage is sqlCullNull's batch: never-expiring rows from
	// cursor key $2 on.
	sqlCitusCullNullPage = `
SELECT expires, key, ` + sqlRowBytes + ` FROM %[1]s
 WHERE expires IS NULL AND key >= $2
 ORDER BY expires, key
 LIMIT $1`

	// sqlCitusCullNullKey is the DELETE for key $1 of sqlCullNullBefore and
	// sqlCullNull: still never-expiring, in the stretch from cursor key $2
	// to the last key picked $3.
	sqlCitusCullNullKey = `
DELETE FROM %[1]s
 WHERE key = $1 AND expires IS NULL AND key >= $2 AND key <= $3`

	// sqlCitusEstimate is sqlEstimate over the shards: the sum of their
	// live-row statistics, each read on its worker by run_command_on_shards
	// ($2 is sqlCitusShardLiveRows; Citus fills in each shard's name for
	// %s), and whether every shard answered (and, if not, one's error). The
	// coordinator's table is an empty shell whose statistics say 0.
	sqlCitusEstimate = `
SELECT coalesce(sum(CASE WHEN success THEN result::int8 END), 0)::int8,
       coalesce(bool_and(success), true),
       coalesce(min(result) FILTER (WHERE NOT success), '')
  FROM run_command_on_shards(to_regclass($1), $2)`

	// sqlCitusShardLiveRows is the command each shard runs for
	// sqlCitusEstimate.
	sqlCitusShardLiveRows = `SELECT coalesce(pg_stat_get_live_tuples('%s'::regclass), 0)`

	// sqlCitusSizeInfo is sqlSizeInfo over the shards: their pages
	// (citus_relation_size sums the shards' main forks, what
	// pg_relation_size measures of a plain table), their TOAST tables' live
	// chunks ($2 is sqlCitusShardToastChunks, run on each shard), the block
	// size, and whether every shard answered (and one's error).
	sqlCitusSizeInfo = `
SELECT citus_relation_size(t.oid) / current_setting('block_size')::int8,
       s.chunks, current_setting('block_size')::int8, s.ok, s.err
  FROM (SELECT to_regclass($1) AS oid) t,
       LATERAL (SELECT coalesce(sum(CASE WHEN success THEN result::int8 END), 0)::int8 AS chunks,
                       coalesce(bool_and(success), true) AS ok,
                       coalesce(min(result) FILTER (WHERE NOT success), '') AS err
                  FROM run_command_on_shards(t.oid, $2)) s
 WHERE t.oid IS NOT NULL`

	// sqlCitusShardToastChunks is the command each shard runs for
	// sqlCitusSizeInfo.
	sqlCitusShardToastChunks = `SELECT coalesce(pg_stat_get_live_tuples(c.reltoastrelid), 0) FROM pg_class c WHERE c.oid = '%s'::regclass`

	// Detection, in two steps so a server without Citus never sees
	// pg_dist_partition named: whether the extension is installed, then
	// whether the cache table is distributed (dbcache's own check).
)

// citusBatchMax is the most keys one Citus delete transaction removes
// (dbcache's citusPageSize): each key is a statement of its own, run one
// after another by the coordinator, so a batch is smaller than the plain
// forms' and holds its row locks for as briefly.
const citusBatchMax = 500

// Each batch's settings in the Citus forms: for the reads, and for the
// delete transactions (with the plain forms' lock_timeout).
var (
	citusReadSettings   = []string{sqlCitusPropagate, sqlCitusAsync, sqlCitusNoSeqScan, sqlCitusNoBitmap}
	citusDeleteSettings = []string{sqlCitusPropagate, sqlCitusAsync, sqlCitusLockTimeout}
)

// citusForm is one batch delete's Citus form.
type citusForm struct {
	// page reads the batch: $1 the limit, then the plain statement's
	// arguments after the lock's (less a cull's two budget arguments).
	page string
	// del deletes one key ($1), re-checking; delArgs gives its other
	// arguments from the plain statement's and the last row picked.
	del     string
	delArgs func(args []any, last cursor) []any
	// sized: the page returns each row's bytes, and the last two of the
	// plain statement's arguments are the byte budget and the row count.
	sized bool
}

// citusForms are the Citus forms of the six batch deletes, filled in for
// one table, by the plain statement they stand for.
type citusForms struct {
	sweep, ageOut, cullBefore, cullTimed, cullNullBefore, cullNull citusForm
}

func newCitusForms(table string) *citusForms {
	fill := func(sql string) string { return fmt.Sprintf(sql, table) }
	cutoff := func(args []any, _ cursor) []any { return []any{args[0]} }
	timed := func(args []any, last cursor) []any { return []any{args[0], args[1], last.expires, last.key} }
	null := func(args []any, last cursor) []any { return []any{args[0], last.key} }
	return &citusForms{
		sweep:          citusForm{page: fill(sqlCitusSweepPage), del: fill(sqlCitusSweepKey), delArgs: cutoff},
		ageOut:         citusForm{page: fill(sqlCitusAgePage), del: fill(sqlCitusAgeKey), delArgs: cutoff},
		cullBefore:     citusForm{page: fill(sqlCitusCullBeforePage), del: fill(sqlCitusCullTimedKey), delArgs: timed, sized: true},
		cullTimed:      citusForm{page: fill(sqlCitusCullTimedPage), del: fill(sqlCitusCullTimedKey), delArgs: timed, sized: true},
		cullNullBefore: citusForm{page: fill(sqlCitusCullNullBeforePage), del: fill(sqlCitusCullNullKey), delArgs: null, sized: true},
		cullNull:       citusForm{page: fill(sqlCitusCullNullPage), del: fill(sqlCitusCullNullKey), delArgs: null, sized: true},
	}
}

// detectCitus reports whether the cache table is distributed by Citus.
func detectCitus(ctx context.Context, conn *pgx.Conn, table string) (bool, error) {
	distributed, err := citusmeta.Distributed(ctx, conn, table)
	if err != nil {
		return false, fmt.Errorf("culling: check for Citus: %w", err)
	}
	return distributed, nil
}

// The Culler's Citus state: decided by Config.Citus in New, or, with
// CitusAuto, by detectCitus at Start or at the first pass.
const (
	citusUnknown int32 = iota
	citusUsed
	citusUnused
)

// UsesCitus reports whether the Culler runs the Citus forms
// (Config.Citus): with CitusAuto, what Start or the first pass found,
// false until one has looked.
func (c *Culler) UsesCitus() bool { return c.citus.Load() == citusUsed }

// decideCitus runs the detection once, when Config.Citus is CitusAuto.
func (c *Culler) decideCitus(ctx context.Context, conn *pgx.Conn) error {
	if c.citus.Load() != citusUnknown {
		return nil
	}
	used, err := detectCitus(ctx, conn, c.table)
	if err != nil {
		return err
	}
	state := citusUnused
	if used {
		state = citusUsed
	}
	c.citus.CompareAndSwap(citusUnknown, state)
	return nil
}

// detectCitus is decideCitus at a pass's start, on its work connection.
func (p *pass) detectCitus() error {
	if err := p.stmt(p.work, func(ctx context.Context) error { return p.c.decideCitus(ctx, p.work.Conn.Conn()) }); err != nil {
		return err
	}
	p.citus = p.c.UsesCitus()
	return nil
}

// readSettings are the settings of the pass's reads in eviction order.
func (p *pass) readSettings() []string {
	if p.citus {
		return citusReadSettings
	}
	return []string{sqlBatchSettings}
}

// batchLimit caps a batch at citusBatchMax in the Citus forms.
func (p *pass) batchLimit() int64 {
	if p.citus {
		return min(int64(p.c.cfg.BatchSize), citusBatchMax)
	}
	return int64(p.c.cfg.BatchSize)
}

// citusRow is a row of a Citus page: its place in eviction order, and for
// a cull its bytes.
type citusRow struct {
	at    cursor
	bytes int64
}

// citusBatch is deleteBatch in the Citus forms (see the constants above):
// the same batchResult, from a page read and a delete transaction.
func (p *pass) citusBatch(f *citusForm, limit int64, remove bool, args []any) (batchResult, error) {
	var b batchResult
	pageArgs, budget := args, []any(nil)
	if f.sized {
		pageArgs, budget = args[:len(args)-2], args[len(args)-2:]
	}
	var page []citusRow
	err := p.tx2(p.work, citusReadSettings, func(bt *pgx.Batch) {
		bt.Queue(f.page, append([]any{limit}, pageArgs...)...)
	}, func(br pgx.BatchResults) error {
		rows, err := br.Query()
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				r   citusRow
				key string
			)
			dest := []any{&r.at.expires, &key}
			if f.sized {
				dest = append(dest, &r.bytes)
			}
			if err := rows.Scan(dest...); err != nil {
				return err
			}
			r.at.key = key
			page = append(page, r)
		}
		return rows.Err()
	})
	if err != nil {
		return b, err
	}
	picked := page
	if f.sized {
		picked = citusPick(page, budget[0].(*int64), budget[1].(int64))
	}
	b.read, b.picked = int64(len(page)), int64(len(picked))
	if len(picked) > 0 {
		b.last = picked[len(picked)-1].at
	}
	if hook := p.c.citusPageHook; hook != nil && remove && len(picked) > 0 {
		keys := make([]string, len(picked))
		for i, r := range picked {
			keys[i] = r.at.key
		}
		hook(keys)
	}

	// The keys in key-column order, so the routed DELETEs lock rows in the
	// order every dbcache statement does.
	order := slices.Clone(picked)
	slices.SortFunc(order, func(x, y citusRow) int { return strings.Compare(x.at.key, y.at.key) })
	var removed []bool
	b.held, removed, err = p.citusDelete(f, order, remove, args, b.last)
	for i, gone := range removed {
		if gone {
			b.removed++
			b.bytes += order[i].bytes
		}
	}
	return b, err
}

// citusPick is the cull forms' pick over a page in eviction order: every
// row while no budget is set, up to the count-th row, and every row that
// starts before the budget is spent.
func citusPick(page []citusRow, budget *int64, count int64) []citusRow {
	var run int64
	for i, r := range page {
		run += r.bytes
		if budget == nil || int64(i+1) <= count || run-r.bytes < *budget {
			continue
		}
		return page[:i]
	}
	return page
}

// citusDelete is a Citus batch's delete transaction: the lock check, then,
// when the lock is held and remove is set, one routed DELETE per row of
// order (in that order). removed says which of them removed a row.
func (p *pass) citusDelete(f *citusForm, order []citusRow, remove bool, args []any, last cursor) (held bool, removed []bool, err error) {
	err = p.stmt(p.work, func(ctx context.Context) error {
		conn := p.work.Conn.Conn()
		b := &pgx.Batch{}
		b.Queue(sqlBegin)
		for _, s := range citusDeleteSettings {
			b.Queue(s)
		}
		b.Queue(sqlCitusHeld, p.lockVXID)
		err := func() error {
			br := conn.SendBatch(ctx, b)
			defer br.Close()
			for range 1 + len(citusDeleteSettings) {
				if _, err := br.Exec(); err != nil {
					return err
				}
			}
			if err := br.QueryRow().Scan(&held); err != nil {
				return err
			}
			return br.Close()
		}()
		if err == nil {
			err = p.citusDeleteKeys(ctx, conn, f, order, remove && held, args, last, &removed)
		}
		if err != nil {
			rollback(ctx, conn)
		}
		return err
	})
	return held, removed, err
}

// citusDeleteKeys sends a delete transaction's DELETEs (when del is set)
// and its COMMIT.
func (p *pass) citusDeleteKeys(ctx context.Context, conn *pgx.Conn, f *citusForm, order []citusRow, del bool, args []any, last cursor, removed *[]bool) error {
	b := &pgx.Batch{}
	n := 0
	if del {
		n = len(order)
		extra := f.delArgs(args, last)
		for _, r := range order {
			b.Queue(f.del, append([]any{r.at.key}, extra...)...)
		}
	}
	b.Queue(sqlCommit)
	br := conn.SendBatch(ctx, b)
	defer br.Close()
	out := make([]bool, n)
	for i := range n {
		tag, err := br.Exec()
		if err != nil {
			return err
		}
		out[i] = tag.RowsAffected() == 1
	}
	if _, err := br.Exec(); err != nil {
		return err
	}
	if err := br.Close(); err != nil {
		return err
	}
	*removed = out
	return nil
}

// tx2 runs runTxWith on pc, under stmt.
func (p *pass) tx2(pc *passConn, settings []string, queue func(*pgx.Batch), read func(pgx.BatchResults) error) error {
	return p.stmt(pc, func(ctx context.Context) error {
		return runTxWith(ctx, pc.Conn.Conn(), settings, queue, read)
	})
}

// shardAnswers turns a Citus statement's "did every shard answer" into an
// error naming one failure.
func shardAnswers(ok bool, msg string) error {
	if ok {
		return nil
	}
	return fmt.Errorf("culling: a shard of the cache table did not answer: %s", msg)
}
