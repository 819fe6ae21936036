package culling

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// Phase names the step a pass is in, for Progress.
type Phase string

const (
	// PhaseSweep: removing expired rows. Progress.ExpiredRemoved grows.
	PhaseSweep Phase = "sweep"
	// PhaseAge: removing rows older than MaxAge. Progress.AgedOut grows.
	PhaseAge Phase = "age"
	// PhaseCount: about to count the table. Sent once per pass.
	PhaseCount Phase = "count"
	// PhaseCull: removing live rows because the table is over MaxEntries
	// or MaxBytes. Progress.Culled grows towards Progress.CullTarget.
	PhaseCull Phase = "cull"
	// PhaseDone: the pass ended; the Progress holds its totals.
	PhaseDone Phase = "done"
)

// Progress is what Config.OnProgress receives during a pass.
type Progress struct {
	// AgedOut is the number of rows older than MaxAge removed so far.
	AgedOut int64
	// Count is the number of rows counted after the sweep (see
	// PassResult.Count); 0 until the pass has counted.
	Count int64
	// CountExact reports whether Count is exact rather than estimated.
	CountExact bool
	// CullTarget is the most rows the cull phase will remove for
	// MaxEntries, or about how many it will remove for MaxBytes; 0 when
	// the table is under its limits, or not yet counted. When Count is an
	// estimate the cull can end sooner: it never removes any of the
	// entries that keep the table at its limit (see docs/culling.md).
	CullTarget int64
	// Culled is the number of rows culled so far.
	Culled int64
	// CulledBytes is their size, as MaxBytes counts it.
	CulledBytes int64
	// Elapsed is the time since the pass began.
	Elapsed time.Duration
	// ExpiredRemoved is the number of expired rows removed so far.
	ExpiredRemoved int64
	// Phase is the step the pass is in.
	Phase Phase
}

// PassResult is what one pass did, or, from DryRun, what it would do.
type PassResult struct {
	// AgedOut is the number of rows removed because they were older than
	// MaxAge (after the sweep, so none of them had expired).
	AgedOut int64
	// Count is the number of rows (live or expired) after the expiry sweep:
	// exact when CountExact, else PostgreSQL's live-row estimate, corrected
	// by what the cull phase found when it had to look.
	Count int64
	// CountExact reports whether Count came from an exact, bounded walk.
	CountExact bool
	// Culled is the number of rows removed because the table was over
	// MaxEntries or MaxBytes.
	Culled int64
	// CulledBytes is the size of the culled rows as MaxBytes counts them
	// (exact: each batch returns what it removed).
	CulledBytes int64
	// DryRun reports that the result comes from DryRun: nothing was
	// removed, and ExpiredRemoved and Culled are what a pass would remove.
	DryRun bool
	// Duration is how long the pass took.
	Duration time.Duration
	// ExpiredRemoved is the number of expired rows removed.
	ExpiredRemoved int64
	// Remaining is Count minus Culled: the rows left as the pass saw them,
	// not counting writes made during the pass.
	Remaining int64
	// RemainingSize is Size minus CulledBytes; 0 when Size is.
	RemainingSize int64
	// Size is the entries' size in bytes as MaxBytes counts it, estimated
	// after the sweep and the age phase (see SizeExact); 0 when MaxBytes is
	// not set, as the pass does not estimate it then.
	Size int64
	// SizeExact reports whether Size was measured over the whole table,
	// which a table of at most SizeSamplePages pages is.
	SizeExact bool
	// Skipped reports that another culler held the lock, so this pass did
	// nothing.
	Skipped bool
	// StartedAt is when the pass began, by the database clock (the Go clock
	// when the pass failed before reaching the database).
	StartedAt time.Time
}

// RunOnce runs one pass: remove expired rows and, with MaxAge, rows older
// than it; then, if the table holds more than MaxEntries or its size is over
// MaxBytes, cull it. It returns at once with Skipped set when another culler
// holds the lock. Every pass is bounded by Config.PassTimeout and ctx.
//
// When ctx ends (or PassTimeout passes) the pass stops after the statement
// in progress, which has stopGrace (2 s) to finish before it is cancelled on
// the server; RunOnce returns once the pass's lock is released (see
// docs/culling.md). On error the result still holds what was removed before
// it; removed rows stay removed. Returns ErrTableNotFound when the cache
// table is missing, ErrNoPrivilege when the role may not cull it, and
// ErrMigrationNeeded when MaxAge is set on a schema without written_at,
// ErrLockLost when the lock went with its connection mid-pass, and
// ErrHookPanicked when Config.OnProgress panicked.
// RunOnce needs no Start and may run alongside a started Culler (the two
// take turns on the lock).
func (c *Culler) RunOnce(ctx context.Context) (*PassResult, error) {
	return c.runPass(ctx, false)
}

// DryRun reports what a pass would remove now, removing nothing: the rows
// that have expired (PassResult.ExpiredRemoved), those older than MaxAge
// (AgedOut) and those the cull would remove (Culled, CulledBytes), found as
// a pass finds them (the size from a sample of its own, so a cull for
// MaxBytes can differ by the estimate's error). It takes no lock,
// so it runs even while another culler's pass does, and it is not recorded
// in the state table nor in Health. It costs what counting those rows
// costs: an index walk over them. Bounded by Config.PassTimeout and ctx.
func (c *Culler) DryRun(ctx context.Context) (*PassResult, error) {
	return c.runPass(ctx, true)
}

func (c *Culler) runPass(callerCtx context.Context, dry bool) (*PassResult, error) {
	ctx := callerCtx
	if c.cfg.PassTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.PassTimeout)
		defer cancel()
	}
	p := &pass{c: c, ctx: ctx, dry: dry, begun: time.Now(), res: &PassResult{StartedAt: time.Now(), DryRun: dry}}
	c.inPass.Add(1)
	err := p.guarded(dry)
	p.res.Duration = time.Since(p.begun)
	err = classify(err)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
			err = fmt.Errorf("%w (%w)", ctxErr, err)
		}
	}
	if !dry {
		c.noteHealth(callerCtx, p.res, err)
	}
	c.inPass.Add(-1)
	if err != nil {
		return p.res, err
	}
	c.logPass(ctx, p.res)
	return p.res, nil
}

// guarded runs the pass, turning a panic (from a hook, or a bug) into the
// pass's error: a started worker's goroutine is the Culler's, and nothing
// may crash the process from there. The pass's deferred release has run
// by the time the panic reaches here, so the lock is released as after
// any other error.
func (p *pass) guarded(dry bool) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", errPanicked, r)
		}
	}()
	if dry {
		return p.runDry()
	}
	return p.run()
}

// errPanicked is the error of a pass that panicked.
var errPanicked = errors.New("culling: the pass panicked")

// classify maps the PostgreSQL errors a caller acts on to the package's
// sentinels, keeping the original in the chain.
func classify(err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return err
	}
	switch pgErr.Code {
	case "42501": // insufficient_privilege
		return fmt.Errorf("%w: %w", ErrNoPrivilege, err)
	case "42P01": // undefined_table
		return fmt.Errorf("%w: %w", ErrTableNotFound, err)
	case "42703": // undefined_column: written_at, before migration 004
		return fmt.Errorf("%w: %w", ErrMigrationNeeded, err)
	}
	return err
}

// log logs through Config.Logger. A handler that panics loses its line
// and nothing else: the culler's goroutine must not die of it.
func (c *Culler) log(ctx context.Context, level slog.Level, msg string, args ...any) {
	defer func() { _ = recover() }()
	c.cfg.Logger.Log(ctx, level, msg, args...)
}

func (c *Culler) logPass(ctx context.Context, r *PassResult) {
	if r.Skipped {
		c.log(ctx, slog.LevelDebug, "culling.Culler: pass skipped; another culler holds the lock")
		return
	}
	level := slog.LevelDebug
	if r.ExpiredRemoved+r.Culled > 0 && !r.DryRun {
		level = slog.LevelInfo
	}
	msg := "culling.Culler: pass done"
	if r.DryRun {
		msg = "culling.Culler: dry run done (nothing removed)"
	}
	c.log(ctx, level, msg,
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
	c     *Culler
	ctx   context.Context // ends on Stop, the caller's cancel and PassTimeout
	dry   bool
	citus bool // the pass runs the Citus forms

	begun       time.Time
	res         *PassResult
	target      int64     // rows the cull removes for MaxEntries
	bytesTarget int64     // bytes the cull removes for MaxBytes
	bytesRows   int64     // about how many rows that is, for Progress
	agedBytes   int64     // a dry run's: the bytes of the rows MaxAge would remove
	asOf        time.Time // rows that expired by then are swept

	lock     *passConn
	lockTx   pgx.Tx
	lockVXID string // the lock transaction's virtual ID, which batches check; "" until locked
	lastBeat time.Time
	work     *passConn
	stepped  int64 // rows a batch could not remove for a writer's lock, stepped over
}

// progress calls Config.OnProgress. A callback that panics fails the pass
// with ErrHookPanicked (the lock is released as after any error), and
// never the goroutine it runs on.
func (p *pass) progress(ph Phase) (err error) {
	if p.c.cfg.OnProgress == nil || p.dry {
		return nil
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", ErrHookPanicked, r)
		}
	}()
	r := p.res
	p.c.cfg.OnProgress(Progress{
		AgedOut: r.AgedOut, Count: r.Count, CountExact: r.CountExact, CullTarget: max(p.target, p.bytesRows),
		Culled: r.Culled, CulledBytes: r.CulledBytes, Elapsed: time.Since(p.begun), ExpiredRemoved: r.ExpiredRemoved,
		Phase: ph,
	})
	return nil
}

// run is one pass. The lock is a transaction-level advisory lock held by an
// open transaction on its own connection, while the batches run as separate
// short transactions on a second connection. Ending that transaction, by
// rollback, by the connection closing or by the process dying, is the only
// way to release the lock, so no error path can leave it held: pgxpool
// destroys, rather than reuses, a connection returned mid-transaction, and
// release closes one whose statement was interrupted, then waits for the
// server to show the lock gone.
func (p *pass) run() error {
	c := p.c
	lockConn, err := c.pool.Acquire(p.ctx)
	if err != nil {
		return fmt.Errorf("culling: acquire a connection: %w", err)
	}
	p.lock = newPassConn(lockConn)
	defer p.release()
	if err := p.takeLock(); err != nil || p.res.Skipped {
		return err
	}

	work, err := c.pool.Acquire(p.ctx)
	if err != nil {
		return fmt.Errorf("culling: acquire a connection: %w", err)
	}
	p.work = newPassConn(work)
	if err := p.workBackend(); err != nil {
		return err
	}
	if err := p.detectCitus(); err != nil {
		return err
	}

	if err := p.sweep(); err != nil {
		return err
	}
	if err := p.ageOut(); err != nil {
		return err
	}
	if err := p.count(); err != nil {
		return err
	}
	if err := p.size(); err != nil {
		return err
	}
	if err := p.cull(); err != nil {
		return err
	}
	p.finish()
	p.record()
	return p.progress(PhaseDone)
}

func (p *pass) finish() {
	p.res.Remaining = max(p.res.Count-p.res.Culled, 0)
	if p.res.Size > 0 {
		p.res.RemainingSize = max(p.res.Size-p.res.CulledBytes, 0)
	}
}

// runDry is DryRun's pass: no lock, one connection, nothing removed.
func (p *pass) runDry() error {
	work, err := p.c.pool.Acquire(p.ctx)
	if err != nil {
		return fmt.Errorf("culling: acquire a connection: %w", err)
	}
	p.work = newPassConn(work)
	defer p.release()
	if err := p.detectCitus(); err != nil {
		return err
	}
	if err := p.tx(p.work, nil, fmt.Sprintf(sqlExpired, p.c.table), nil, func(r pgx.Row) error {
		return r.Scan(&p.asOf, &p.res.ExpiredRemoved)
	}); err != nil {
		return fmt.Errorf("culling: count expired rows: %w", err)
	}
	p.res.StartedAt = p.asOf
	if err := p.ageOut(); err != nil {
		return err
	}
	if err := p.count(); err != nil {
		return err
	}
	if err := p.size(); err != nil {
		return err
	}
	if err := p.cull(); err != nil {
		return err
	}
	p.finish()
	return nil
}

// cursor is a position in eviction order: where the next batch starts.
type cursor struct {
	expires pgtype.Timestamptz // NULL for a never-expiring row
	key     string
}

// startTimed is before every row with an expiry; a key never sorts before "".
var startTimed = cursor{expires: pgtype.Timestamptz{InfinityModifier: pgtype.NegativeInfinity, Valid: true}}

// after is the first position past c: the same expiry and the next key in
// the key column's C collation (the key followed by the smallest
// character a text value can hold), so a batch that starts there reads
// none of the rows up to c.
func (c cursor) after() cursor {
	return cursor{expires: c.expires, key: c.key + "\x01"}
}

// batchResult is what one batch delete did: the rows it read, those it
// picked of them to remove (see the batch deletes), those it removed,
// their bytes, whether the lock transaction still held the culler lock,
// and the last row picked.
type batchResult struct {
	read, picked, removed, bytes int64
	held                         bool
	last                         cursor
}

// deleteBatch runs one of the batch deletes (see sqlSweep) over up to limit
// rows, removing them unless remove is false, with args after the lock.
func (p *pass) deleteBatch(st stretch, limit int64, remove bool, args []any) (batchResult, error) {
	if p.citus {
		return p.citusBatch(st.citus, limit, remove, args)
	}
	q := st.q
	var (
		b       batchResult
		lastKey *string
	)
	all := append([]any{limit, p.lockVXID, remove}, args...)
	err := p.tx(p.work, []string{sqlDeleteSettings}, q, all, func(r pgx.Row) error {
		return r.Scan(&b.read, &b.picked, &b.removed, &b.bytes, &b.held, &b.last.expires, &lastKey)
	})
	if lastKey != nil {
		b.last.key = *lastKey
	}
	return b, err
}

// stretch is one range of eviction order that one batch delete walks.
type stretch struct {
	q     string
	citus *citusForm // q's Citus form
	start cursor
	// args are the statement's arguments after the lock's: the range from
	// cursor cur, and for a cull the budget.
	args func(cur cursor) []any
}

// rowLockWait reports an error that says a batch waited too long for a
// row lock (lock_timeout, see sqlDeleteSettings), or that PostgreSQL
// chose it to break a deadlock with an application's transaction.
func rowLockWait(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "55P03" || pgErr.Code == "40P01") // lock_not_available, deadlock_detected
}

// walk runs st's batches from its start, limit() rows each, until a batch
// reads fewer rows than it asked for (the stretch is done) or enough()
// says so. After each batch it calls took with what it did.
//
// A batch that waits longer than its lock_timeout (50 ms) on a row a
// writer holds fails and removes nothing. The pass then halves the batch
// and tries again from the same place, and keeps halving (a batch that
// succeeds moves on, at the size that succeeded) until a batch of one row
// fails: that row is the held one. It is stepped over (read without
// deleting, the cursor put past it) and left for the next pass, like any
// row a writer changes during a pass, and batches go back to full size.
// One held row costs about log2(BatchSize) timeouts (0.5 s at the
// default) and as many short batches, and never stops the pass. (A lock
// on the table itself, an ALTER TABLE's, is waited for as by any
// statement: pgx prepares a statement again after an error, and the
// prepare, outside the batch's transaction, has no lock_timeout. A stop
// or PassTimeout ends that wait, see stmt.)
func (p *pass) walk(st stretch, what string, limit func() int64, enough func() bool, took func(batchResult) error) error {
	cur := st.start
	var capped int64 // after a timeout: the most rows a batch may take
	for {
		if enough() {
			return nil
		}
		if err := p.heartbeat(false); err != nil {
			return err
		}
		n := limit()
		if capped > 0 {
			n = min(n, capped)
		}
		b, err := p.deleteBatch(st, n, true, st.args(cur))
		if err != nil && rowLockWait(err) && p.ctx.Err() == nil {
			if n > 1 {
				capped = n / 2
				continue
			}
			if b, err = p.deleteBatch(st, 1, false, st.args(cur)); err != nil {
				return fmt.Errorf("culling: %s: %w", what, err)
			}
			if !b.held {
				return p.lockLost()
			}
			if b.read == 0 {
				return nil
			}
			p.stepped++
			capped = 0
			cur = b.last.after()
			continue
		}
		if err != nil {
			return fmt.Errorf("culling: %s: %w", what, err)
		}
		if !b.held {
			return p.lockLost()
		}
		if err := took(b); err != nil {
			return err
		}
		if b.read < n {
			return nil
		}
		cur = b.last.after()
	}
}

// lockLost reports a batch that found the culler lock gone from its lock
// transaction: another culler may be running, so the pass stops.
func (p *pass) lockLost() error {
	if err := p.heartbeat(true); err != nil {
		return err
	}
	return fmt.Errorf("%w: a batch found the lock released", ErrLockLost)
}

// sweep removes rows that had expired when the pass began, soonest first,
// in batches until a batch comes back short. Rows that expire during the
// pass are left for the next one, so the sweep ends even while rows keep
// expiring.
func (p *pass) sweep() error {
	return p.removeBefore(fmt.Sprintf(sqlSweep, p.c.table), &p.c.cf.sweep, p.asOf, PhaseSweep, &p.res.ExpiredRemoved, "remove expired rows")
}

// removeBefore runs the keyset batch delete q (sqlSweep or sqlAgeOut) with
// cutoff from the start of its index until a batch comes back short,
// adding what each removed to *removed and reporting progress in phase ph.
func (p *pass) removeBefore(q string, cf *citusForm, cutoff time.Time, ph Phase, removed *int64, what string) error {
	batch := p.batchLimit()
	st := stretch{q: q, citus: cf, start: startTimed, args: func(cur cursor) []any { return []any{cutoff, cur.expires, cur.key} }}
	if err := p.walk(st, what, func() int64 { return batch }, func() bool { return false }, func(b batchResult) error {
		*removed += b.removed
		if b.removed > 0 {
			return p.progress(ph)
		}
		return nil
	}); err != nil {
		return err
	}
	// The range is done but for rows writers held or moved.
	return p.heartbeat(true)
}

// count sets res.Count. It reads PostgreSQL's live-row statistic first,
// which is free; when that says the table is within ExactCountLimit it then
// counts exactly with a walk that stops after ExactCountLimit+1 rows. A dry
// run, which swept nothing, leaves out the expired rows it counted.
func (p *pass) count() error {
	c := p.c
	if !p.dry {
		// Writes noted from here on may not be in this count; earlier
		// ones, whose statements have returned, are.
		c.pending.Store(0)
	}
	if err := p.progress(PhaseCount); err != nil {
		return err
	}

	if p.res.ExpiredRemoved+p.res.AgedOut > 0 && !p.dry {
		if err := p.flushStats(); err != nil {
			return err
		}
	}
	var estimate int64
	if err := p.stmt(p.work, func(ctx context.Context) error {
		var err error
		estimate, err = estimateRows(ctx, p.work.Conn.Conn(), c.table, p.citus)
		return err
	}); err != nil {
		return fmt.Errorf("culling: read the table's row estimate: %w", err)
	}
	limit := int64(c.cfg.ExactCountLimit)
	switch {
	case limit < 0 || estimate > limit:
		p.res.Count, p.res.CountExact = estimate, false
	default:
		var walked int64
		if err := p.tx(p.work, nil, fmt.Sprintf(sqlWalk, c.table), []any{limit + 1}, func(r pgx.Row) error {
			return r.Scan(&walked)
		}); err != nil {
			return fmt.Errorf("culling: count the table: %w", err)
		}
		if walked <= limit {
			p.res.Count, p.res.CountExact = walked, true
		} else {
			// Bigger than the walk and the statistic has not caught up:
			// use the larger figure; the cull phase checks it before
			// removing anything.
			p.res.Count, p.res.CountExact = max(estimate, walked), false
		}
	}
	if p.dry {
		p.res.Count = max(p.res.Count-p.res.ExpiredRemoved-p.res.AgedOut, 0)
	}
	return nil
}

// ageOut removes, when MaxAge is set, the rows written more than MaxAge
// before the pass began, oldest first, in keyset batches over the index on
// (written_at, key) as the sweep does over (expires, key). A dry run counts
// them instead.
func (p *pass) ageOut() error {
	c := p.c
	if c.cfg.MaxAge == 0 {
		return nil
	}
	cutoff := p.asOf.Add(-c.cfg.MaxAge)
	if p.dry {
		if err := p.tx(p.work, p.readSettings(), fmt.Sprintf(sqlCountAged, c.table), []any{cutoff, p.asOf},
			func(r pgx.Row) error { return r.Scan(&p.res.AgedOut, &p.agedBytes) }); err != nil {
			return fmt.Errorf("culling: count entries older than MaxAge: %w", err)
		}
		return nil
	}
	return p.removeBefore(fmt.Sprintf(sqlAgeOut, c.table), &c.cf.ageOut, cutoff, PhaseAge, &p.res.AgedOut, "remove entries older than MaxAge")
}

// size sets res.Size when MaxBytes is set (see estimateSize).
func (p *pass) size() error {
	if p.c.cfg.MaxBytes == 0 {
		return nil
	}
	est, err := p.estimateSize()
	if err != nil {
		return err
	}
	p.res.Size, p.res.SizeExact = est.Bytes, est.Exact
	if p.dry && est.Exact {
		// The dry run read the rows MaxAge would remove; a pass would not.
		p.res.Size = max(p.res.Size-p.agedBytes, 0)
	}
	return nil
}

// flushStats makes this session's deletes count in the table's live-row
// statistic now. A session otherwise flushes its statistics at most once a
// second, and an idle one only after ten: without this, the next estimate
// would still include the rows this pass removed. The flush happens when
// the transaction ends, before the next statement runs.
func (p *pass) flushStats() error {
	if p.c.noForceFlush.Load() {
		return nil
	}
	if err := p.tx(p.work, nil, sqlFlushStats, nil, nil); err != nil {
		if p.ctx.Err() != nil {
			return p.ctx.Err()
		}
		if errors.Is(err, errConnCut) {
			return err
		}
		// PostgreSQL 14 or older, or revoked: the statistic catches up
		// on its own, within about a second.
		p.c.noForceFlush.Store(true)
	}
	return nil
}

// cull removes rows in eviction order when the table holds more than
// MaxEntries: max(count/CullFrequency, count − MaxEntries) of them, as
// Django does (all of them with CullAll); and, when its size is over
// MaxBytes, at least the estimated excess in bytes.
//
// The count may be PostgreSQL's estimate, which lags deletions as well as
// insertions, so nothing live is removed on its word. A walk back from the
// end of eviction order over at most MaxEntries + 1 rows first confirms,
// exactly, that the table is over the limit, and finds the boundary: the
// earliest of the `keep` latest rows, keep = min(MaxEntries,
// count − count/CullFrequency). The count cull then removes rows from the
// front of eviction order up to, never including, that boundary, and no
// more than count − keep. So for MaxEntries a pass never removes an entry
// while the table is at or under the limit, never leaves fewer than keep of
// the entries it walked, and never removes more than the estimate implies.
//
// The byte cull removes rows from the front of eviction order, summing
// their exact sizes (each batch returns them), until the sum reaches the
// estimated excess: the table ends within the estimate's error of
// MaxBytes.
func (p *pass) cull() error {
	c := p.c
	countOver := c.cfg.MaxEntries != NoLimit && p.res.Count > int64(c.cfg.MaxEntries)
	bytesOver := c.cfg.MaxBytes > 0 && p.res.Size > c.cfg.MaxBytes
	if !countOver && !bytesOver {
		return nil
	}
	var b boundary
	if countOver {
		var err error
		if b, err = p.countBoundary(); err != nil {
			return err
		}
		countOver = b.over
	}
	keep, found, bound, before := b.keep, b.found, b.at, b.before
	if !countOver && !bytesOver {
		return nil
	}
	if countOver {
		p.target = p.res.Count - keep
	}
	if bytesOver {
		p.bytesTarget = p.res.Size - c.cfg.MaxBytes
		p.bytesRows = p.rowsFor(p.bytesTarget)
	}

	// The byte budget, when MaxBytes calls for it, and the rows MaxEntries
	// still calls for whatever their bytes: the last arguments of each
	// cull statement.
	budget := func() []any {
		var left *int64
		if bytesOver {
			l := p.bytesTarget - p.res.CulledBytes
			left = &l
		}
		return []any{left, max(p.target-p.res.Culled, 0)}
	}
	var steps []stretch
	timed := stretch{q: fmt.Sprintf(sqlCullTimed, c.table), citus: &c.cf.cullTimed, start: startTimed, args: func(cur cursor) []any {
		return append([]any{cur.expires, cur.key}, budget()...)
	}}
	switch {
	case bytesOver || !found: // everything may go, rows with an expiry first
		steps = []stretch{timed, {q: fmt.Sprintf(sqlCullNull, c.table), citus: &c.cf.cullNull, args: func(cur cursor) []any {
			return append([]any{cur.key}, budget()...)
		}}}
	case bound.expires.Valid: // the boundary has an expiry
		steps = []stretch{{q: fmt.Sprintf(sqlCullBefore, c.table), citus: &c.cf.cullBefore, start: startTimed, args: func(cur cursor) []any {
			return append([]any{cur.expires, cur.key, bound.expires, bound.key}, budget()...)
		}}}
	default: // the boundary never expires: every row with an expiry goes first
		steps = []stretch{timed, {q: fmt.Sprintf(sqlCullNullBefore, c.table), citus: &c.cf.cullNullBefore, args: func(cur cursor) []any {
			return append([]any{cur.key, bound.key}, budget()...)
		}}}
	}

	if p.dry {
		return p.dryCull(countOver, bytesOver, before, keep)
	}
	if err := p.progress(PhaseCull); err != nil {
		return err
	}
	defer func() {
		if p.res.Culled > 0 {
			_ = p.flushStats() // best effort: the rows are gone either way
		}
	}()
	done := func() bool {
		return (!countOver || p.res.Culled >= p.target) && (!bytesOver || p.res.CulledBytes >= p.bytesTarget)
	}
	batch := p.batchLimit()
	want := func() int64 {
		var want int64
		if countOver {
			want = p.target - p.res.Culled
		}
		if bytesOver {
			// Batches shrink to about the rows the rest of the excess
			// takes, so the last one overshoots by about a row, not by a
			// batch of large values.
			want = max(want, p.rowsFor(p.bytesTarget-p.res.CulledBytes))
		}
		return min(max(want, 1), batch)
	}
	for _, st := range steps {
		if err := p.walk(st, "cull", want, done, func(b batchResult) error {
			p.res.Culled += b.removed
			p.res.CulledBytes += b.bytes
			return p.progress(PhaseCull)
		}); err != nil {
			return err
		}
	}
	if done() {
		return nil
	}
	// Every row before the boundary is gone (but those writers held), and
	// the walk left keep rows from it on: a better count than an estimate.
	if !p.res.CountExact && !bytesOver {
		p.res.Count = p.res.Culled + keep
	}
	return p.heartbeat(true)
}

// boundary is where the count cull stops (see cull and countBoundary).
type boundary struct {
	// keep is how many rows, from the end of eviction order, the cull
	// keeps.
	keep int64
	// found reports whether the keep-th row from the end exists; at is
	// that row when it does.
	found bool
	at    cursor
	// before is how many rows come before at (counted up to what the
	// pass needs).
	before int64
	// over is false when the table turned out not to be over MaxEntries.
	over bool
}

// countBoundary confirms that the table is over MaxEntries and finds the
// count cull's boundary (see cull). over is false when the table turned out
// not to be over the limit; the count is then corrected.
func (p *pass) countBoundary() (boundary, error) {
	var (
		keep   int64
		found  bool
		bound  cursor
		before int64
	)
	c := p.c
	maxEntries := int64(c.cfg.MaxEntries)
	if c.cfg.CullFrequency != CullAll {
		keep = min(maxEntries, p.res.Count-p.res.Count/int64(c.cfg.CullFrequency))
	}
	// The boundary: the keep-th row from the end.
	if keep > 0 {
		var bKey *string
		err := p.tx(p.work, p.readSettings(), fmt.Sprintf(sqlBoundary, c.table), []any{p.asOf, keep - 1},
			func(r pgx.Row) error { return r.Scan(&bound.expires, &bKey) })
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			// Fewer than keep rows: under the limit (the count below says so).
		case err != nil:
			return boundary{}, fmt.Errorf("culling: find the cull boundary: %w", err)
		default:
			found, bound.key = true, *bKey
		}
	}
	// The rows before it, counted up to what proves the table over the
	// limit (and, in a dry run, up to what the cull would remove).
	need := maxEntries + 1 - keep
	if p.dry {
		need = max(need, p.res.Count-keep)
	}
	if keep > 0 && !found {
		keep, need = 0, maxEntries+1
	}
	if err := p.countBefore(found, bound, need, &before); err != nil {
		return boundary{}, err
	}
	if walked := keep + min(before, maxEntries+1-keep); walked <= maxEntries {
		// Not over the limit after all: the count was an estimate that had
		// not caught up with deletions. The walk counted every row.
		p.res.Count, p.res.CountExact = keep+before, true
		return boundary{keep: keep, found: found, at: bound, before: before}, nil
	}
	return boundary{keep: keep, found: found, at: bound, before: before, over: true}, nil
}

// rowsFor is about how many rows hold bytes, at the mean size of the rows
// culled so far, or else of the table.
func (p *pass) rowsFor(bytes int64) int64 {
	mean := float64(p.res.Size) / float64(max(p.res.Count, 1))
	if p.res.Culled > 0 {
		mean = float64(p.res.CulledBytes) / float64(p.res.Culled)
	}
	if bytes <= 0 {
		return 0
	}
	return int64(math.Ceil(float64(bytes) / max(mean, 1)))
}

// dryCull is the dry run's cull: it counts the rows the cull would remove,
// and for MaxBytes their bytes, walking eviction order without removing.
func (p *pass) dryCull(countOver, bytesOver bool, before, keep int64) error {
	if countOver {
		p.res.Culled = min(before, p.target)
		if before < p.target && !p.res.CountExact && !bytesOver {
			p.res.Count = before + keep
		}
	}
	if !bytesOver {
		return nil
	}
	// Walk the front of eviction order, doubling the walk until it covers
	// both targets or the table.
	minRows := p.res.Culled
	for limit := max(p.rowsFor(p.bytesTarget)*2, minRows, int64(p.c.cfg.BatchSize)); ; limit *= 2 {
		var n, run, walked int64
		if err := p.tx(p.work, p.readSettings(), fmt.Sprintf(sqlSizeFront, p.c.table), []any{p.asOf, limit, p.bytesTarget, minRows},
			func(r pgx.Row) error { return r.Scan(&n, &run, &walked) }); err != nil {
			return fmt.Errorf("culling: count the rows to cull: %w", err)
		}
		if walked < limit || n < walked {
			p.res.Culled, p.res.CulledBytes = n, run
			return nil
		}
	}
}

// countBefore counts, up to limit, the rows that had not expired at the
// pass's start and come before the boundary in eviction order (all of them
// when there is no boundary).
func (p *pass) countBefore(found bool, bound cursor, limit int64, n *int64) error {
	var (
		q    string
		args []any
	)
	switch {
	case !found:
		q, args = sqlCountLive, []any{p.asOf, limit}
	case bound.expires.Valid:
		q, args = sqlCountBefore, []any{p.asOf, bound.expires, bound.key, limit}
	default:
		q, args = sqlCountBeforeNull, []any{p.asOf, bound.key, limit}
	}
	if err := p.tx(p.work, p.readSettings(), fmt.Sprintf(q, p.c.table), args, func(r pgx.Row) error {
		return r.Scan(n)
	}); err != nil {
		return fmt.Errorf("culling: count the rows before the cull boundary: %w", err)
	}
	return nil
}

// record writes the pass to the state table. It does not fail the pass: the
// rows are removed whether or not the record is written. On a schema
// without migration 004 it records what the state table has columns for.
func (p *pass) record() {
	c := p.c
	r := p.res
	var (
		size, maxEntries, maxBytes *int64
		maxAge                     *time.Duration
	)
	if c.cfg.MaxBytes > 0 {
		size, maxBytes = &r.Size, &c.cfg.MaxBytes
	}
	if c.cfg.MaxEntries != NoLimit {
		n := int64(c.cfg.MaxEntries)
		maxEntries = &n
	}
	if c.cfg.MaxAge > 0 {
		maxAge = &c.cfg.MaxAge
	}
	err := p.tx(p.work, []string{sqlAsyncCommit}, fmt.Sprintf(sqlRecordV4, c.state),
		[]any{r.StartedAt, r.ExpiredRemoved, r.Culled, r.Count, r.CountExact, r.Remaining, c.runner,
			r.AgedOut, r.CulledBytes, size, maxEntries, maxBytes, maxAge}, nil)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42703" { // undefined_column: no migration 004
		if c.warnedState.CompareAndSwap(false, true) {
			c.log(p.ctx, slog.LevelWarn, "culling.Culler: "+StateTable+" lacks the columns of migration 004; "+
				"apply the migrations so `dbcache stats` can show the limits, the size and what MaxAge removed")
		}
		err = p.tx(p.work, []string{sqlAsyncCommit}, fmt.Sprintf(sqlRecord, c.state),
			[]any{r.StartedAt, r.ExpiredRemoved, r.Culled, r.Count, r.CountExact, r.Remaining, c.runner}, nil)
	}
	if err == nil || p.ctx.Err() != nil {
		return
	}
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table
		if c.warnedState.CompareAndSwap(false, true) {
			c.log(p.ctx, slog.LevelWarn, "culling.Culler: cannot record passes: "+StateTable+
				" is missing; apply the migrations (002) so `dbcache stats` can show the last cull")
		}
		return
	}
	c.log(p.ctx, slog.LevelWarn, "culling.Culler: cannot record the pass", "error", err)
}
