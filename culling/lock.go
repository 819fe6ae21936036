package culling

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// The pass's lock: taken in a transaction of its own, checked by a
// heartbeat between batches, released (and waited for) at the end.

// workBackend learns whether the work connection has a backend of its own:
// on a direct connection the server's PID for it is the client's, and a
// batch cut off mid-statement can be waited for by it (see release);
// behind a transaction pooler each transaction may run on another backend,
// none of which the pass can name.
func (p *pass) workBackend() error {
	var pid uint32
	if err := p.tx(p.work, nil, sqlServerPID, nil, func(r pgx.Row) error { return r.Scan(&pid) }); err != nil {
		return fmt.Errorf("culling: read the work connection's backend: %w", err)
	}
	if pid != p.work.clientPID() {
		pid = 0
	}
	p.work.pid = pid
	return nil
}

// takeLock begins the lock transaction and tries the lock; p.res.Skipped
// reports that another culler holds it.
func (p *pass) takeLock() error {
	c := p.c
	if err := p.stmt(p.lock, func(ctx context.Context) error {
		tx, err := p.lock.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
		p.lockTx = tx
		return err
	}); err != nil {
		return fmt.Errorf("culling: begin the lock transaction: %w", err)
	}
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
		pid     uint32
		vxid    *string
	)
	// The simple protocol matters here. With the extended protocol, the
	// unnamed portal of a SELECT outlives its execution until the next
	// Bind or the end of the transaction, and keeps its snapshot
	// registered: the idle lock transaction would then hold back the xmin
	// horizon for the whole pass, so no row the pass deletes could be
	// vacuumed, nor its index entries marked dead, until the pass ended.
	if err := p.stmt(p.lock, func(ctx context.Context) error {
		return p.lockTx.QueryRow(ctx, sqlLock, pgx.QueryExecModeSimpleProtocol,
			c.table, lockKeySpace, idleTimeout).Scan(&oid, &locked, &started, &pid, &vxid)
	}); err != nil {
		return fmt.Errorf("culling: take the culler lock: %w", err)
	}
	if oid == nil {
		return fmt.Errorf("%w: %s", ErrTableNotFound, c.table)
	}
	p.res.StartedAt, p.asOf = started, started
	// The open transaction pins its backend, even behind a pooler.
	p.lock.pid = pid
	if locked == nil || !*locked {
		p.res.Skipped = true
		return nil
	}
	if vxid == nil {
		return errors.New("culling: the lock transaction has no virtual transaction ID in pg_locks")
	}
	p.lastBeat = time.Now()
	p.lockVXID = *vxid
	return nil
}

// release ends the pass's hold on the database: it returns or closes the
// work connection, rolls back the lock transaction (which releases the
// lock), and if a connection had to be closed instead, waits (bounded by
// releaseWait) until the server shows its backend no longer holds the lock
// or runs a batch. Then the next culler's pass can start at once.
func (p *pass) release() {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(p.ctx), releaseWait)
	defer cancel()
	var busyPID, lockPID uint32
	if p.work != nil {
		if p.work.abandoned.Load() {
			busyPID = p.work.pid
		}
		p.work.done(ctx)
	}
	if p.lock != nil {
		interrupted := p.lock.cut.Load() || p.lock.abandoned.Load()
		released := false
		if p.lockTx != nil && !interrupted {
			// The rollback runs even though the pass's context may have
			// ended; if it fails, the connection is closed or left
			// mid-transaction, and the pool destroys it either way.
			released = p.lockTx.Rollback(ctx) == nil
		}
		if p.lockTx == nil && !interrupted {
			released = true // no transaction, so no lock
		}
		if !released {
			lockPID = p.lock.pid
		}
		p.lock.done(ctx)
	}
	// A PID that is no backend's (a pooler's cancel key, read before the
	// server could be asked) cannot be waited for.
	if busyPID > math.MaxInt32 {
		busyPID = 0
	}
	if lockPID > math.MaxInt32 {
		lockPID = 0
	}
	if busyPID == 0 && lockPID == 0 {
		return
	}
	if err := p.waitReleased(ctx, lockPID, busyPID); err != nil {
		p.c.log(ctx, slog.LevelWarn, "culling.Culler: could not confirm that a closed connection released the culler lock; "+
			"the next pass may be skipped until the server ends that session", "pid", lockPID, "error", err)
	}
}

// waitReleased waits until backend lockPID (unless 0) no longer holds the
// culler lock and backend busyPID (unless 0) no longer holds a lock on the
// cache table.
func (p *pass) waitReleased(ctx context.Context, lockPID, busyPID uint32) error {
	c := p.c
	conn, err := c.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	for {
		var held, busy bool
		if lockPID != 0 {
			if _, err := runTx(ctx, conn.Conn(), nil, sqlLockHeld, []any{lockPID, lockKeySpace, c.table},
				func(r pgx.Row) error { return r.Scan(&held) }); err != nil {
				return err
			}
		}
		if busyPID != 0 {
			if _, err := runTx(ctx, conn.Conn(), nil, sqlTableBusy, []any{busyPID, c.table},
				func(r pgx.Row) error { return r.Scan(&busy) }); err != nil {
				return err
			}
		}
		if !held && !busy {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(releasePoll):
		}
	}
}

// heartbeat checks, at most once every heartbeatEvery (or at once with
// force), that the lock's connection still holds its transaction; if it does
// not, another culler may already be running, so the pass stops. Batches
// themselves delete nothing once the lock is gone (see sqlSweep), so between
// heartbeats a lost lock costs no more than a batch that finds nothing.
func (p *pass) heartbeat(force bool) error {
	if !force && time.Since(p.lastBeat) < heartbeatEvery {
		return p.ctx.Err() // stop between batches
	}
	if err := p.stmt(p.lock, func(ctx context.Context) error {
		_, err := p.lockTx.Exec(ctx, sqlHeartbeat, pgx.QueryExecModeSimpleProtocol)
		return err
	}); err != nil {
		if p.ctx.Err() != nil {
			return p.ctx.Err()
		}
		return fmt.Errorf("%w: %w", ErrLockLost, err)
	}
	p.lastBeat = time.Now()
	return nil
}
