package dbcache

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"runtime"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// Stampede protection for GetOrSetFunc: the loader of a missing key runs
// once, among the goroutines of one process and across processes.
//
// In a process, callers of one made key join one flight (internal/flight):
// the first starts it, on its own goroutine, and everyone waits for its
// result (or their own context). The flight's context carries the first
// caller's values and is cancelled only when every caller waiting on it has
// left, so one caller giving up never fails the others.
//
// Across processes, a flight takes a PostgreSQL transaction-level advisory
// lock on a hash of the table and the made key, with pg_try_advisory_xact_lock
// (it never waits on the server). The process that gets it reads the key
// once more, runs the loader and stores the value; its lock transaction
// holds one pool connection for as long as the loader runs, and at most
// Config.LoadLocks flights of one cache hold one at a time. A flight that
// finds the lock taken holds no connection while it waits: it polls the key
// (one short query with backoff) until the value is there, or the lock is
// free again (the loader failed: it competes for the lock anew), or
// Config.LoadWait has passed, and then loads itself. The lock transaction
// carries idle_in_transaction_session_timeout = LoadWait + 5 s, so even a
// process that hangs mid-load (stopped, deadlocked) releases the lock: the
// server ends the session. A loader that panics is recovered and its panic
// returned as a *LoaderPanicError; the lock is released with the
// transaction. A panic in anything else the flight's goroutine runs (a
// LoadTracer, Config.OnWrite) is recovered too, and the waiting callers
// get a *HookPanicError.

const (
	// LoadWaitDefault is the default for Config.LoadWait: long enough for a
	// typical loader (a query, an HTTP call), short enough that a loader
	// that hangs costs other processes seconds, not a request timeout.
	LoadWaitDefault = 10 * time.Second

	// loadLockSpace salts the advisory lock key so dbcache's locks do not
	// collide with an application's own bigint advisory locks on the same
	// numbers.
	loadLockSpace = "dbcache-load\x00"

	loadPollFirst = 5 * time.Millisecond
	loadPollMax   = 100 * time.Millisecond
)

// LoaderPanicError is returned by GetOrSetFunc when its loader panicked. The
// panic never reaches other goroutines, and nothing is stored.
type LoaderPanicError struct {
	// Value is what the loader panicked with.
	Value any
	// Stack is the loader goroutine's stack at the panic.
	Stack []byte
}

func (e *LoaderPanicError) Error() string {
	return fmt.Sprintf("dbcache: get_or_set: loader panicked: %v", e.Value)
}

// HookPanicError is returned to the callers waiting on work the cache runs
// on a goroutine of its own (the shared load of GetOrSetFunc) when
// something other than the loader panicked there: a LoadTracer's
// TraceLoad, Config.OnWrite, the Logger's handler. A panic on a goroutine
// the caller does not own would end the process, so the cache recovers
// it, counts it in Stats.Panics, logs it (see Config.LogKeys) and returns
// this; the goroutine's lock and connection are released as it unwinds.
// What was done before the panic stays done: a loaded value is stored
// when OnWrite panics (it runs after the write), not when TraceLoad does
// (it runs before).
type HookPanicError struct {
	// Value is what was panicked with.
	Value any
	// Stack is the panicking goroutine's stack.
	Stack []byte
}

func (e *HookPanicError) Error() string {
	return fmt.Sprintf("dbcache: get_or_set: a hook panicked on the cache's goroutine: %v", e.Value)
}

// LoaderError is returned by GetOrSetFunc when its loader returned an
// error: nothing was stored. It unwraps to the loader's error, so errors.Is
// and errors.As reach it, and lets callers (and metrics) tell a failing
// loader from a failing cache.
type LoaderError struct {
	Err error
}

func (e *LoaderError) Error() string { return "dbcache: get_or_set: loader: " + e.Err.Error() }

// Unwrap returns the loader's error.
func (e *LoaderError) Unwrap() error { return e.Err }

// loadLockKey is the advisory lock key of a made key: FNV-1a 64 of the
// salt, the table's OID (advisory locks are per database, and two caches
// in two schemas are two tables) and the key.
func loadLockKey(tableOID int64, k string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(loadLockSpace))
	_, _ = h.Write([]byte(strconv.FormatInt(tableOID, 10)))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write([]byte(k))
	return int64(h.Sum64())
}

// runLoader calls load, turning a panic into a *LoaderPanicError.
func (c *Cache) runLoader(ctx context.Context, load func(context.Context) ([]byte, error)) (v []byte, err error) {
	return c.runLoaderFor(ctx, false, load)
}

func (c *Cache) runLoaderFor(ctx context.Context, refresh bool, load func(context.Context) ([]byte, error)) (v []byte, err error) {
	c.s.stats.loads.Add(1)
	start := time.Now()
	defer func() {
		if r := recover(); r != nil {
			pe := &LoaderPanicError{Value: r, Stack: debug.Stack()}
			c.notePanic(ctx, "loader", r, pe.Stack)
			v, err = nil, pe
		}
		if c.s.cfg.Tracer != nil {
			c.traceLoad(ctx, refresh, start, err)
		}
	}()
	v, err = load(ctx)
	if err != nil {
		return nil, &LoaderError{Err: err}
	}
	return nonNil(v), nil
}

// recovered, deferred at the top of work on one of the cache's own
// goroutines, turns a panic there into a *HookPanicError in *err (what the
// goroutine returns to the callers waiting on it), counted and logged.
func (c *Cache) recovered(ctx context.Context, where string, err *error) {
	r := recover()
	if r == nil {
		return
	}
	stack := debug.Stack()
	c.notePanic(ctx, where, r, stack)
	*err = &HookPanicError{Value: r, Stack: stack}
}

// panicLogEvery bounds how often recovered panics are logged: a hook that
// panics on every call must not flood the log.
const panicLogEvery = 10 * time.Second

// notePanic counts a recovered panic and logs it at a bounded rate, with
// the panic's type and stack; its value only with Config.LogKeys (a value
// can hold anything), or when the runtime raised it (an index out of
// range, a nil map).
func (c *Cache) notePanic(ctx context.Context, where string, value any, stack []byte) {
	c.s.stats.panics.Add(1)
	pending := c.s.stats.panicUnlogged.Add(1)
	now := time.Now().UnixNano()
	last := c.s.stats.panicLogged.Load()
	if now-last < int64(panicLogEvery) || !c.s.stats.panicLogged.CompareAndSwap(last, now) {
		return
	}
	c.s.stats.panicUnlogged.Add(-pending)
	attrs := []any{"where", where, "panics", pending, "value_type", fmt.Sprintf("%T", value), "stack", string(stack)}
	var re runtime.Error
	if c.s.cfg.LogKeys {
		attrs = append(attrs, "value", fmt.Sprint(value))
	} else if e, ok := value.(error); ok && errors.As(e, &re) {
		attrs = append(attrs, "value", re.Error())
	}
	c.s.cfg.Logger.ErrorContext(ctx, "dbcache: recovered a panic on the cache's goroutine; the callers waiting on it get an error", attrs...)
}

// loadOnce is GetOrSetFunc after a miss: one flight per made key in this
// process.
func (c *Cache) loadOnce(ctx context.Context, k string, load func(context.Context) ([]byte, error), timeout Timeout) ([]byte, error) {
	if !c.onPool() {
		// In a caller's transaction the value must be loaded and written
		// there; no other goroutine or process can share it.
		return c.loadAndStore(ctx, k, load, timeout)
	}
	return c.s.flights.Do(ctx, k, func(fctx context.Context) (_ []byte, err error) {
		// The flight's goroutine is the cache's: nothing may panic out
		// of it (a loader's panic is already an error; this is for the
		// hooks it calls).
		defer c.recovered(fctx, "get_or_set load", &err)
		return c.loadShared(fctx, k, load, timeout)
	})
}

// loadAndStore runs the loader and stores its value unless another caller
// stored first, returning what the entry holds.
func (c *Cache) loadAndStore(ctx context.Context, k string, load func(context.Context) ([]byte, error), timeout Timeout) ([]byte, error) {
	value, err := c.runLoader(ctx, load)
	if err != nil {
		return nil, err
	}
	return c.storeFirst(ctx, k, value, timeout)
}

// storeFirst stores value under k unless a live entry exists, and returns
// what the entry holds then: the first stored value wins.
func (c *Cache) storeFirst(ctx context.Context, k string, value []byte, timeout Timeout) ([]byte, error) {
	value = nonNil(value)
	if c.s.testBeforeGetOrSetWrite != nil {
		c.s.testBeforeGetOrSetWrite()
	}
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	wctx, cancel := c.bound(ctx)
	defer cancel()
	var got []byte
	if err := c.rowWrite(wctx, c.q.getOrSet, []any{k, value, timeout.micros(c.s.cfg.DefaultTimeout)}, &got); err != nil {
		if c.failOpen(ctx, "get_or_set", err) {
			return value, nil // the caller gets its value; nothing was stored
		}
		return nil, c.wrapErr("get_or_set", err)
	}
	c.wrote(1)
	return nonNil(got), nil
}

// loadShared is one process's flight for k: take the cross-process lock and
// load, or wait for the process that holds it.
func (c *Cache) loadShared(ctx context.Context, k string, load func(context.Context) ([]byte, error), timeout Timeout) ([]byte, error) {
	if c.s.loadLocks == nil {
		return c.loadAndStore(ctx, k, load, timeout)
	}
	lockKey := loadLockKey(c.s.tableOID, k)
	deadline := time.Now().Add(c.s.cfg.LoadWait)
	for {
		v, done, err := c.loadUnderLock(ctx, k, lockKey, load, timeout)
		if done {
			return v, err
		}
		// Another process holds the lock: wait for its value.
		v, found, free, err := c.waitForLoad(ctx, k, lockKey, deadline)
		switch {
		case err != nil:
			return nil, err
		case found:
			return v, nil
		case free && time.Now().Before(deadline):
			continue // its loader failed or it gave up: compete again
		default:
			return c.loadAndStore(ctx, k, load, timeout) // waited long enough
		}
	}
}

// loadUnderLock tries the lock; done reports that the flight is over (with
// v or err), !done that another process holds the lock.
func (c *Cache) loadUnderLock(ctx context.Context, k string, lockKey int64, load func(context.Context) ([]byte, error), timeout Timeout) (v []byte, done bool, err error) {
	select {
	case c.s.loadLocks <- struct{}{}:
		defer func() { <-c.s.loadLocks }()
	default:
		// Every lock slot is busy loading other keys: load without the
		// cross-process lock rather than wait on unrelated keys.
		v, err := c.loadAndStore(ctx, k, load, timeout)
		return v, true, err
	}
	lctx, cancel := c.bound(ctx)
	conn, err := c.s.pool.Acquire(lctx)
	if err != nil {
		cancel()
		if c.failOpen(ctx, "get_or_set", err) {
			v, err := c.runLoader(ctx, load)
			return v, true, err
		}
		return nil, true, c.wrapErr("get_or_set", err)
	}
	defer conn.Release()
	// The simple protocol, so no statement of the idle lock transaction
	// keeps a snapshot (an unnamed portal does, with the extended
	// protocol) that would hold back vacuum while the loader runs.
	var got bool
	_, err = conn.Exec(lctx, "BEGIN ISOLATION LEVEL READ COMMITTED", pgx.QueryExecModeSimpleProtocol)
	if err == nil {
		idle := strconv.FormatInt((c.s.cfg.LoadWait + 5*time.Second).Milliseconds(), 10)
		err = conn.QueryRow(lctx, qLoadLock, pgx.QueryExecModeSimpleProtocol, lockKey, idle).Scan(&got)
	}
	cancel()
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.rollbackBound())
		defer cancel()
		_, _ = conn.Exec(rctx, "ROLLBACK", pgx.QueryExecModeSimpleProtocol)
	}()
	if err != nil {
		if c.failOpen(ctx, "get_or_set", err) {
			v, err := c.runLoader(ctx, load)
			return v, true, err
		}
		return nil, true, c.wrapErr("get_or_set", err)
	}
	if !got {
		return nil, false, nil
	}
	// Another process may have stored the value between our miss and the
	// lock.
	rctx, cancel := c.bound(ctx)
	v, err = c.get(rctx, k)
	cancel()
	if !errors.Is(err, ErrMiss) {
		return v, true, err
	}
	v, err = c.loadAndStore(ctx, k, load, timeout)
	return v, true, err
}

func (c *Cache) rollbackBound() time.Duration {
	if c.s.cfg.OpTimeout > 0 {
		return c.s.cfg.OpTimeout
	}
	return OpTimeoutDefault
}

// waitForLoad polls k until its value is stored (found), the lock is free
// (free: the holder ended without storing), or deadline passes.
func (c *Cache) waitForLoad(ctx context.Context, k string, lockKey int64, deadline time.Time) (v []byte, found, free bool, err error) {
	c.s.stats.loadWaits.Add(1)
	pause := loadPollFirst
	for {
		wait := min(pause, time.Until(deadline))
		if wait <= 0 {
			return nil, false, false, nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, false, false, ctx.Err()
		case <-t.C:
		}
		pause = min(pause*3/2, loadPollMax)
		pctx, cancel := c.bound(ctx)
		var value []byte
		err := c.s.pool.QueryRow(pctx, c.q.loadPoll, k, lockKey).Scan(&value, &found, &free)
		cancel()
		if err != nil {
			if c.failOpen(ctx, "get_or_set", err) {
				return nil, false, true, nil
			}
			return nil, false, false, c.wrapErr("get_or_set", err)
		}
		if found {
			return nonNil(value), true, false, nil
		}
		if free {
			return nil, false, true, nil
		}
	}
}

// refreshStale refreshes a stale entry in the background, once per process
// (a flight) and once across processes (the lock, never waited for: another
// process holding it is already refreshing). A failed refresh is logged and
// counted, and the stale value keeps being served until it expires.
func (c *Cache) refreshStale(ctx context.Context, k string, load func(context.Context) ([]byte, error), timeout Timeout) {
	stale, _ := timeout.staleFor()
	c.s.refreshMu.Lock()
	if c.s.refreshing == nil {
		c.s.refreshing = map[string]bool{}
	}
	if c.s.refreshing[k] || c.s.closed.Load() {
		c.s.refreshMu.Unlock()
		return
	}
	c.s.refreshing[k] = true
	c.s.background.Add(1)
	c.s.refreshMu.Unlock()
	// The refresh outlives the caller's request, so it runs under the
	// cache's own context (ended by Close), with the caller's values, for
	// at most the stale period: past it, callers load on their own.
	rctx, cancel := context.WithTimeout(c.s.bgCtx, max(stale, time.Second))
	go func() {
		defer c.s.background.Done()
		defer cancel()
		defer func() {
			c.s.refreshMu.Lock()
			delete(c.s.refreshing, k)
			c.s.refreshMu.Unlock()
		}()
		err := c.refreshRecovered(valuesOnly{Context: rctx, values: ctx}, k, load, timeout)
		if err != nil && rctx.Err() == nil {
			c.s.stats.refreshFailures.Add(1)
			attrs := []any{"error_code", ErrorCode(err)}
			if c.s.cfg.LogKeys {
				attrs = append(attrs, "key", k, "error", err)
			}
			c.s.cfg.Logger.WarnContext(ctx, "dbcache: stale-while-revalidate refresh failed; serving the stale value until it expires", attrs...)
		}
	}()
}

// refreshRecovered is refresh on the refresh's own goroutine: a panic
// there is recovered (see recovered) and is the refresh's error.
func (c *Cache) refreshRecovered(ctx context.Context, k string, load func(context.Context) ([]byte, error), timeout Timeout) (err error) {
	defer c.recovered(ctx, "get_or_set refresh", &err)
	return c.refresh(ctx, k, load, timeout)
}

func (c *Cache) refresh(ctx context.Context, k string, load func(context.Context) ([]byte, error), timeout Timeout) error {
	c.s.stats.refreshes.Add(1)
	if c.s.loadLocks == nil {
		return c.refreshStore(ctx, k, load, timeout)
	}
	select {
	case c.s.loadLocks <- struct{}{}:
		defer func() { <-c.s.loadLocks }()
	default:
		return c.refreshStore(ctx, k, load, timeout)
	}
	lctx, cancel := c.bound(ctx)
	defer cancel()
	conn, err := c.s.pool.Acquire(lctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.rollbackBound())
		defer cancel()
		_, _ = conn.Exec(rctx, "ROLLBACK", pgx.QueryExecModeSimpleProtocol)
	}()
	var got bool
	if _, err := conn.Exec(lctx, "BEGIN ISOLATION LEVEL READ COMMITTED", pgx.QueryExecModeSimpleProtocol); err != nil {
		return err
	}
	idle := strconv.FormatInt((c.s.cfg.LoadWait + 5*time.Second).Milliseconds(), 10)
	if err := conn.QueryRow(lctx, qLoadLock, pgx.QueryExecModeSimpleProtocol, loadLockKey(c.s.tableOID, k), idle).Scan(&got); err != nil {
		return err
	}
	if !got {
		return nil // another process is refreshing it
	}
	// Another process may have refreshed it just before we took the lock.
	rctx, rcancel := c.bound(ctx)
	_, remaining, err := c.getRemaining(rctx, k)
	rcancel()
	stale, _ := timeout.staleFor()
	if err == nil && (remaining < 0 || remaining > stale) {
		return nil
	}
	return c.refreshStore(ctx, k, load, timeout)
}

// refreshStore runs the loader and overwrites the entry with a fresh one.
func (c *Cache) refreshStore(ctx context.Context, k string, load func(context.Context) ([]byte, error), timeout Timeout) error {
	value, err := c.runLoaderFor(ctx, true, load)
	if err != nil {
		return err
	}
	wctx, cancel := c.bound(ctx)
	defer cancel()
	if _, err := c.execWrite(wctx, c.q.set, k, value, timeout.micros(c.s.cfg.DefaultTimeout)); err != nil {
		return c.wrapErr("get_or_set", err)
	}
	c.wrote(1)
	return nil
}

// valuesOnly is a context with one context's values and another's
// deadline and cancellation: a background refresh keeps the request's
// values (trace IDs, say) without ending when the request does.
type valuesOnly struct {
	context.Context
	values context.Context
}

func (v valuesOnly) Value(key any) any { return v.values.Value(key) }
