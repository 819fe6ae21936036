package culling

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Phase names the step a pass is in, for Progress.
type Phase string

const (
	// PhaseSweep: removing expired rows. Progress.ExpiredRemoved grows.
	PhaseSweep Phase = "sweep"
	// PhaseCount: about to count the table. Sent once per pass.
	PhaseCount Phase = "count"
	// PhaseCull: removing live rows because the table is over MaxEntries.
	// Progress.Culled grows towards Progress.CullTarget.
	PhaseCull Phase = "cull"
	// PhaseDone: the pass ended; the Progress holds its totals.
	PhaseDone Phase = "done"
)

// Progress is what Config.OnProgress receives during a pass.
type Progress struct {
	// Count is the number of rows counted after the sweep (see
	// PassResult.Count); 0 until the pass has counted.
	Count int64
	// CountExact reports whether Count is exact rather than estimated.
	CountExact bool
	// CullTarget is how many rows the cull phase means to remove; 0 when the
	// table is not over MaxEntries, or not yet counted.
	CullTarget int64
	// Culled is the number of rows culled so far.
	Culled int64
	// Elapsed is the time since the pass began.
	Elapsed time.Duration
	// ExpiredRemoved is the number of expired rows removed so far.
	ExpiredRemoved int64
	// Phase is the step the pass is in.
	Phase Phase
}

// PassResult is what one pass did.
type PassResult struct {
	// Count is the number of rows (live or expired) after the expiry sweep:
	// exact when CountExact, else PostgreSQL's live-row estimate.
	Count int64
	// CountExact reports whether Count came from an exact, bounded walk.
	CountExact bool
	// Culled is the number of rows removed because the table was over
	// MaxEntries.
	Culled int64
	// Duration is how long the pass took.
	Duration time.Duration
	// ExpiredRemoved is the number of expired rows removed.
	ExpiredRemoved int64
	// Remaining is Count minus Culled: the rows left as the pass saw them,
	// not counting writes made during the pass.
	Remaining int64
	// Skipped reports that another culler held the lock, so this pass did
	// nothing.
	Skipped bool
	// StartedAt is when the pass began, by the database clock (the Go clock
	// when the pass failed before reaching the database).
	StartedAt time.Time
}

// RunOnce runs one pass: remove expired rows, then, if the table holds more
// than MaxEntries, cull it. It returns at once with Skipped set when another
// culler holds the lock. Every pass is bounded by Config.PassTimeout and ctx.
// On error the result still holds what was removed before it; removed rows
// stay removed. Returns ErrTableNotFound when the cache table is missing.
// RunOnce needs no Start and may run alongside a started Culler (the two
// take turns on the lock).
func (c *Culler) RunOnce(ctx context.Context) (*PassResult, error) {
	if c.cfg.PassTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.PassTimeout)
		defer cancel()
	}
	p := &pass{c: c, begun: time.Now(), res: &PassResult{StartedAt: time.Now()}}
	err := p.run(ctx)
	p.res.Duration = time.Since(p.begun)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
			err = fmt.Errorf("%w (%w)", ctxErr, err)
		}
		return p.res, err
	}
	c.logPass(ctx, p.res)
	return p.res, nil
}

func (c *Culler) logPass(ctx context.Context, r *PassResult) {
	if r.Skipped {
		c.cfg.Logger.DebugContext(ctx, "culling.Culler: pass skipped; another culler holds the lock")
		return
	}
	level := slog.LevelDebug
	if r.ExpiredRemoved+r.Culled > 0 {
		level = slog.LevelInfo
	}
	c.cfg.Logger.Log(ctx, level, "culling.Culler: pass done",
		slog.Int64("expired_removed", r.ExpiredRemoved),
		slog.Int64("culled", r.Culled),
		slog.Int64("count", r.Count),
		slog.Bool("count_exact", r.CountExact),
		slog.Int64("remaining", r.Remaining),
		slog.Int("max_entries", c.cfg.MaxEntries),
		slog.Duration("duration", r.Duration),
	)
}

type pass struct {
	c      *Culler
	begun  time.Time
	res    *PassResult
	target int64

	lockTx   pgx.Tx
	lockPID  uint32 // the lock transaction's backend, which batches check
	lastBeat time.Time
}

func (p *pass) progress(ph Phase) {
	if p.c.cfg.OnProgress == nil {
		return
	}
	r := p.res
	p.c.cfg.OnProgress(Progress{
		Count: r.Count, CountExact: r.CountExact, CullTarget: p.target, Culled: r.Culled,
		Elapsed: time.Since(p.begun), ExpiredRemoved: r.ExpiredRemoved, Phase: ph,
	})
}

// run is one pass. The lock is a transaction-level advisory lock held by an
// open transaction on its own connection, while the batches run as separate
// short transactions on a second connection. Ending that transaction, by
// rollback, by the connection closing or by the process dying, is the only
// way to release the lock, so no error path can leave it held: pgxpool
// destroys, rather than reuses, a connection returned mid-transaction.
func (p *pass) run(ctx context.Context) error {
	c := p.c
	lockConn, err := c.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("culling: acquire a connection: %w", err)
	}
	defer lockConn.Release()
	p.lockTx, err = lockConn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("culling: begin the lock transaction: %w", err)
	}
	defer func() {
		// A fresh context: the pass's may be cancelled, and the rollback
		// must still be tried. If it fails, the connection is closed or
		// left mid-transaction, and Release destroys it either way.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = p.lockTx.Rollback(rctx)
	}()
	// A culler that hangs between statements (a stopped process, a stuck
	// goroutine) must not keep every other culler out forever: the lock
	// query also sets idle_in_transaction_session_timeout for the lock
	// transaction, so the server ends the session, and the lock with it,
	// once it has idled for longer than a pass may last.
	var idleTimeout *string
	if c.cfg.PassTimeout > 0 {
		ms := strconv.FormatInt((c.cfg.PassTimeout + 30*time.Second).Milliseconds(), 10)
		idleTimeout = &ms
	}
	var (
		oid     *int64
		locked  *bool
		started time.Time
	)
	// The simple protocol matters here. With the extended protocol, the
	// unnamed portal of a SELECT outlives its execution until the next
	// Bind or the end of the transaction, and keeps its snapshot
	// registered: the idle lock transaction would then hold back the xmin
	// horizon for the whole pass, so no row the pass deletes could be
	// vacuumed, nor its index entries marked dead, until the pass ended.
	if err := p.lockTx.QueryRow(ctx, sqlLock, pgx.QueryExecModeSimpleProtocol,
		c.table, lockKeySpace, idleTimeout).Scan(&oid, &locked, &started); err != nil {
		return fmt.Errorf("culling: take the culler lock: %w", err)
	}
	if oid == nil {
		return fmt.Errorf("%w: %s", ErrTableNotFound, c.table)
	}
	p.res.StartedAt = started
	if locked == nil || !*locked {
		p.res.Skipped = true
		return nil
	}
	p.lastBeat = time.Now()
	p.lockPID = p.lockTx.Conn().PgConn().PID()

	work, err := c.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("culling: acquire a connection: %w", err)
	}
	defer work.Release()

	if err := p.sweep(ctx, work, started); err != nil {
		return err
	}
	if err := p.count(ctx, work, *oid); err != nil {
		return err
	}
	if err := p.cull(ctx, work); err != nil {
		return err
	}
	p.res.Remaining = max(p.res.Count-p.res.Culled, 0)
	p.record(ctx, work)
	p.progress(PhaseDone)
	return nil
}

// heartbeat checks, at most once every heartbeatEvery (or at once with
// force), that the lock's connection still holds its transaction; if it does
// not, another culler may already be running, so the pass stops. Batches
// themselves delete nothing once the lock is gone (see sqlCull), so between
// heartbeats a lost lock costs no more than a batch that finds nothing.
func (p *pass) heartbeat(ctx context.Context, force bool) error {
	if !force && time.Since(p.lastBeat) < heartbeatEvery {
		return nil
	}
	if _, err := p.lockTx.Exec(ctx, "SELECT 1", pgx.QueryExecModeSimpleProtocol); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: %w", ErrLockLost, err)
	}
	p.lastBeat = time.Now()
	return nil
}

// sweep removes rows that had expired when the pass began, soonest first,
// in batches until a batch comes back short. Rows that expire during the
// pass are left for the next one, so the sweep ends even while rows keep
// expiring.
func (p *pass) sweep(ctx context.Context, work *pgxpool.Conn, asOf time.Time) error {
	q := fmt.Sprintf(sqlSweep, p.c.table)
	batch := p.c.cfg.BatchSize
	for {
		if err := p.heartbeat(ctx, false); err != nil {
			return err
		}
		n, err := execAsync(ctx, work, q, asOf, batch, p.lockPID)
		if err != nil {
			return fmt.Errorf("culling: remove expired rows: %w", err)
		}
		p.res.ExpiredRemoved += n
		if n > 0 {
			p.progress(PhaseSweep)
		}
		if n < int64(batch) {
			// Short because the sweep is done, or because the lock is gone.
			return p.heartbeat(ctx, true)
		}
	}
}

// count sets res.Count. It reads PostgreSQL's live-row statistic first,
// which is free; when that says the table is within ExactCountLimit it then
// counts exactly with a walk that stops after ExactCountLimit+1 rows.
func (p *pass) count(ctx context.Context, work *pgxpool.Conn, oid int64) error {
	c := p.c
	// Writes noted from here on may not be in this count; earlier ones,
	// whose statements have returned, are.
	c.pending.Store(0)
	p.progress(PhaseCount)

	if p.res.ExpiredRemoved > 0 {
		if err := p.flushStats(ctx, work); err != nil {
			return err
		}
	}
	var estimate int64
	if err := work.QueryRow(ctx, sqlEstimate, oid).Scan(&estimate); err != nil {
		return fmt.Errorf("culling: read the table's row estimate: %w", err)
	}
	limit := int64(c.cfg.ExactCountLimit)
	if limit < 0 || estimate > limit {
		p.res.Count, p.res.CountExact = estimate, false
		return nil
	}
	var walked int64
	if err := work.QueryRow(ctx, fmt.Sprintf(sqlWalk, c.table), limit+1).Scan(&walked); err != nil {
		return fmt.Errorf("culling: count the table: %w", err)
	}
	if walked <= limit {
		p.res.Count, p.res.CountExact = walked, true
		return nil
	}
	// Bigger than the walk and the statistic has not caught up: use the
	// larger figure; the next pass will have a better one.
	p.res.Count, p.res.CountExact = max(estimate, walked), false
	return nil
}

// flushStats makes this session's deletes count in the table's live-row
// statistic now. A session otherwise flushes its statistics at most once a
// second, and an idle one only after ten: without this, the next estimate
// would still include the rows this pass removed, and cull them again.
// The flush happens when the statement returns, before the next one runs.
func (p *pass) flushStats(ctx context.Context, work *pgxpool.Conn) error {
	if p.c.noForceFlush.Load() {
		return nil
	}
	if _, err := work.Exec(ctx, "SELECT pg_stat_force_next_flush()"); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// PostgreSQL 14 or older, or revoked: the statistic catches up
		// on its own, within about a second.
		p.c.noForceFlush.Store(true)
	}
	return nil
}

// cull removes rows in eviction order until the table is back at or under
// MaxEntries, removing at least 1/CullFrequency of them, as Django does.
func (p *pass) cull(ctx context.Context, work *pgxpool.Conn) error {
	c := p.c
	p.target = cullTarget(p.res.Count, int64(c.cfg.MaxEntries), c.cfg.CullFrequency)
	if p.target == 0 {
		return nil
	}
	p.progress(PhaseCull)
	q := fmt.Sprintf(sqlCull, c.table)
	defer func() {
		if p.res.Culled > 0 {
			_ = p.flushStats(ctx, work) // best effort: the rows are gone either way
		}
	}()
	for p.res.Culled < p.target {
		if err := p.heartbeat(ctx, false); err != nil {
			return err
		}
		want := min(int64(c.cfg.BatchSize), p.target-p.res.Culled)
		n, err := execAsync(ctx, work, q, want, p.lockPID)
		if err != nil {
			return fmt.Errorf("culling: cull: %w", err)
		}
		p.res.Culled += n
		p.progress(PhaseCull)
		if n < want {
			// The table ran out of rows that are not locked by writers
			// (they are for the next pass), or the lock is gone.
			return p.heartbeat(ctx, true)
		}
	}
	return nil
}

// execAsync runs one statement as its own transaction, committed with
// synchronous_commit off. The commit then returns without waiting for its
// WAL to reach disk, which measured four to five times faster per batch
// where a WAL flush costs about 5 ms. It is safe for a cache: a crash can
// lose only the last fraction of a second of deletions, and the rows that
// come back are removed by the next pass (or, for the state row, the next
// pass records itself). The setting and the statement are sent as one
// pipeline with a single Sync, so they form one implicit transaction:
// set_config(…, true) ends with it and never outlives the statement on the
// pooled connection.
func execAsync(ctx context.Context, work *pgxpool.Conn, q string, args ...any) (int64, error) {
	b := &pgx.Batch{}
	b.Queue(sqlAsyncCommit)
	b.Queue(q, args...)
	br := work.SendBatch(ctx, b)
	_, err := br.Exec()
	var tag pgconn.CommandTag
	if err == nil {
		tag, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

// cullTarget is how many rows to remove from a table of count rows: none
// when count <= max; all with CullAll; otherwise count/freq (Django's
// arithmetic) or, when that would leave the table over the limit, count-max.
func cullTarget(count, maxEntries int64, freq int) int64 {
	if count <= maxEntries {
		return 0
	}
	if freq == CullAll {
		return count
	}
	return max(count/int64(freq), count-maxEntries)
}

// record writes the pass to the state table. It does not fail the pass: the
// rows are removed whether or not the record is written.
func (p *pass) record(ctx context.Context, work *pgxpool.Conn) {
	r := p.res
	_, err := execAsync(ctx, work, fmt.Sprintf(sqlRecord, p.c.state),
		r.StartedAt, r.ExpiredRemoved, r.Culled, r.Count, r.CountExact, r.Remaining, p.c.runner)
	if err == nil || ctx.Err() != nil {
		return
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table
		if p.c.warnedState.CompareAndSwap(false, true) {
			p.c.cfg.Logger.WarnContext(ctx, "culling.Culler: cannot record passes: "+StateTable+
				" is missing; apply the migrations (002) so `dbcache stats` can show the last cull")
		}
		return
	}
	p.c.cfg.Logger.WarnContext(ctx, "culling.Culler: cannot record the pass", "error", err)
}
