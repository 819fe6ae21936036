package dbcache

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Stampede protection for GetOrSetFunc and GetOrRevalidate: the loader of
// a missing key runs once, among the goroutines of one process and across
// processes, and the cache holds no connection while it runs.
//
// In a process, callers of one made key join one flight (internal/flight):
// the first starts it, on its own goroutine, and everyone waits for its
// result (or their own context). The flight's context carries the first
// caller's values and is cancelled only when every caller waiting on it has
// left, so one caller giving up never fails the others.
//
// Across processes, a flight takes the key's lease (lease.go: a row of
// dbcache_leases, Config.LoadLease long by the database's clock). The
// flight that gets it reads the key once more (another process may have
// stored it meanwhile), runs the loader, renewing the lease every third of
// LoadLease while it runs, and stores the value with a fenced write: one
// statement that stores only while its lease row with its token is live
// (qGetOrSetLeased), so a loader whose lease lapsed (a pause longer than
// the lease) stores nothing and cannot overwrite the value of the loader
// that took the lease over; it returns its value to its callers all the
// same. It then releases the lease. A flight that finds the lease held
// waits: it polls the key with back-off (5 ms growing by half up to 100
// ms, never past the holder's remaining lease), each statement taking its
// turn under Config.LoadPollRate, until the value is there, or the lease
// is free again (the loader failed or its process died: it competes for
// the lease anew), or Config.LoadWait has passed, and then loads itself
// and stores the first value (qGetOrSet). Nothing holds a connection
// between statements: coordination takes no connection of its own, and
// each statement is a single-key one, so it runs behind PgBouncer in
// transaction pooling and Citus routes it to the key's worker.
//
// A process killed while loading leaves its lease to expire: its keys are
// free at most LoadLease after its last renewal, when a waiter's next
// poll takes the lease over.
//
// A loader that panics is recovered and its panic returned as a
// *LoaderPanicError; its lease is released. A panic in anything else the
// flight's goroutine runs (a LoadTracer, Config.OnWrite) is recovered too,
// and the waiting callers get a *HookPanicError.

const (
	// LoadWaitDefault is the default for Config.LoadWait: long enough for a
	// typical loader (a query, an HTTP call), short enough that a loader
	// that hangs costs other processes seconds, not a request timeout.
	LoadWaitDefault = 10 * time.Second

	// LoadLeaseDefault is the default for Config.LoadLease: a process
	// killed mid-load holds its keys at most this long, and a loader
	// renews its lease every 5/3 s.
	LoadLeaseDefault = 5 * time.Second

	// LoadPollRateDefault is the default for Config.LoadPollRate: at most
	// 200 poll statements a second per cache, a small share of what one
	// connection serves.
	LoadPollRateDefault = 200

	// RefreshRetryDefault is the default for Config.RefreshRetry: a
	// failing backend sees at most one refresh attempt per key every 5 s
	// from all the processes together.
	RefreshRetryDefault = 5 * time.Second

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
	v, joined, err := c.s.flights.DoJoined(ctx, k, func(fctx context.Context) (_ []byte, err error) {
		// The flight's goroutine is the cache's: nothing may panic out
		// of it (a loader's panic is already an error; this is for the
		// hooks it calls).
		defer c.recovered(fctx, "get_or_set load", &err)
		return c.loadShared(fctx, k, load, timeout)
	})
	if joined {
		c.s.stats.joinedWaits.Add(1)
		c.loadEvent(ctx, LoadJoined)
	}
	return v, err
}

// loadUnprotected is GetOrSetFunc when the database failed open: the
// loader runs once among this process's callers (a flight), asks nothing
// more of the server, and its value is returned, not stored.
func (c *Cache) loadUnprotected(ctx context.Context, k string, load func(context.Context) ([]byte, error)) ([]byte, error) {
	v, joined, err := c.s.flights.DoJoined(ctx, k, func(fctx context.Context) (_ []byte, err error) {
		defer c.recovered(fctx, "get_or_set load", &err)
		return c.runLoader(fctx, load)
	})
	if joined {
		c.s.stats.joinedWaits.Add(1)
		c.loadEvent(ctx, LoadJoined)
	}
	return v, err
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
		if c.degrade(ctx, "get_or_set", err) {
			return value, nil // the caller gets its value; nothing was stored
		}
		return nil, c.wrapErr("get_or_set", err)
	}
	c.wrote(1)
	return nonNil(got), nil
}

// errFailedOpen stands for a coordination statement that failed open: the
// flight then runs its loader unprotected.
var errFailedOpen = errors.New("dbcache: failed open")

// coordinate runs one coordination statement of a flight (bounded by
// OpTimeout), and turns a failure FailOpen swallows into errFailedOpen.
func (c *Cache) coordinate(ctx context.Context, run func(context.Context) error) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	sctx, cancel := c.bound(ctx)
	err := run(sctx)
	cancel()
	if err != nil && !errors.Is(err, ErrMiss) && c.failOpen(ctx, "get_or_set", err) {
		return errFailedOpen
	}
	return err
}

// loadShared is one process's flight for k: take the key's lease and
// load, or wait for the process that holds it.
func (c *Cache) loadShared(ctx context.Context, k string, load func(context.Context) ([]byte, error), timeout Timeout) ([]byte, error) {
	deadline := time.Now().Add(c.s.cfg.LoadWait)
	pause := loadPollFirst
	// holderEnds is when the holder's lease ends, as its last report put
	// it (by this process's monotonic clock, only to classify): a lease
	// taken at or after it was not released but ran out, its holder gone
	// or stalled.
	var holderEnds time.Time
	for first := true; ; first = false {
		if !first {
			if err := c.s.polls.wait(ctx); err != nil {
				return nil, err
			}
		}
		var lease Lease
		err := c.coordinate(ctx, func(sctx context.Context) (err error) {
			lease, err = c.acquireLease(sctx, k, c.s.cfg.LoadLease)
			return err
		})
		switch {
		case errors.Is(err, errFailedOpen):
			return c.runLoader(ctx, load)
		case errors.Is(err, ErrSchemaBehind):
			// No leases table yet (a deploy ahead of migration 8): load
			// as a single process would, the first stored value winning.
			c.warnNoLeases(ctx)
			return c.loadAndStore(ctx, k, load, timeout)
		case err != nil:
			return nil, err
		case lease.Acquired:
			if !first && !time.Now().Before(holderEnds) {
				c.leaseLost(ctx) // the holder's lease expired: taken over
			}
			return c.loadLeased(ctx, k, lease.Token, load, timeout)
		}
		holderEnds = time.Now().Add(lease.Remaining)
		if first {
			c.s.stats.leaseWaits.Add(1)
			c.loadEvent(ctx, LoadLeaseWait)
		}
		// Another process holds the lease: wait for its value, never
		// past the end of its lease (then it is ours to take), and at
		// most until deadline.
		wait := min(pause, lease.Remaining+time.Millisecond, time.Until(deadline))
		pause = min(pause*3/2, loadPollMax)
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			case <-t.C:
			}
		}
		if err := c.s.polls.wait(ctx); err != nil {
			return nil, err
		}
		var v []byte
		err = c.coordinate(ctx, func(sctx context.Context) (err error) {
			v, err = c.get(sctx, k)
			return err
		})
		switch {
		case err == nil:
			return v, nil
		case errors.Is(err, errFailedOpen):
			return c.runLoader(ctx, load)
		case !errors.Is(err, ErrMiss):
			return nil, err
		case !time.Now().Before(deadline):
			// Waited long enough for a loader that still holds its
			// lease: load, and store the first value.
			return c.loadAndStore(ctx, k, load, timeout)
		}
		// Still missing: the holder is loading, or its loader failed or
		// its process died (then its lease is free or lapsing): ask for
		// the lease again.
	}
}

// loadLeased is the flight that holds k's lease: read once more, load
// while renewing the lease, store with the fenced write, release.
func (c *Cache) loadLeased(ctx context.Context, k string, token LeaseToken, load func(context.Context) ([]byte, error), timeout Timeout) ([]byte, error) {
	defer c.releaseLoadLease(ctx, k, token)
	// Another process may have stored the value between our miss and the
	// lease.
	var v []byte
	err := c.coordinate(ctx, func(sctx context.Context) (err error) {
		v, err = c.get(sctx, k)
		return err
	})
	switch {
	case err == nil:
		return v, nil
	case errors.Is(err, errFailedOpen):
		return c.runLoader(ctx, load)
	case !errors.Is(err, ErrMiss):
		return nil, err
	}
	value, lost, err := c.runLeased(ctx, k, token, false, load)
	if err != nil {
		return nil, err
	}
	if c.s.testBeforeGetOrSetWrite != nil {
		c.s.testBeforeGetOrSetWrite()
	}
	var got []byte
	err = c.coordinate(ctx, func(sctx context.Context) error {
		return c.fencedWrite(sctx, c.q.getOrSetLeased, c.q.citusGetOrSetLeased, []any{k, value, timeout.micros(c.s.cfg.DefaultTimeout), string(token)}, &got)
	})
	switch {
	case errors.Is(err, errFailedOpen):
		return value, nil // the caller gets its value; nothing was stored
	case errors.Is(err, ErrMiss) || isNoRows(err):
		// The lease lapsed before the write: another loader may hold it
		// now, and its value wins. Ours goes to our callers, unstored.
		if !lost {
			c.leaseLost(ctx)
		}
		return value, nil
	case err != nil:
		return nil, c.wrapErr("get_or_set", err)
	}
	c.wrote(1)
	return nonNil(got), nil
}

// runLeased runs load while renewing k's lease every third of LoadLease;
// lost reports that a renewal found the lease gone (counted then).
func (c *Cache) runLeased(ctx context.Context, k string, token LeaseToken, refresh bool, load func(context.Context) ([]byte, error)) (v []byte, lost bool, err error) {
	var (
		done = make(chan struct{})
		wg   sync.WaitGroup
		gone bool
	)
	wg.Go(func() {
		// The cache's own goroutine: a hook that panics here (a
		// LoadEventTracer) is recovered and counted.
		var hookErr error
		defer c.recovered(ctx, "get_or_set lease renewal", &hookErr)
		every := c.s.cfg.LoadLease / 3
		t := time.NewTimer(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			var ok bool
			err := c.coordinate(ctx, func(sctx context.Context) (err error) {
				ok, err = c.extendLease(sctx, k, token, c.s.cfg.LoadLease)
				return err
			})
			if err == nil && !ok {
				gone = true
				c.leaseLost(ctx)
				return
			}
			t.Reset(every)
		}
	})
	v, err = c.runLoaderFor(ctx, refresh, load)
	close(done)
	wg.Wait()
	return v, gone, err
}

// warnNoLeases logs, once per cache, that the schema has no leases table.
func (c *Cache) warnNoLeases(ctx context.Context) {
	c.s.noLeasesOnce.Do(func() {
		c.s.cfg.Logger.WarnContext(ctx, "dbcache: the schema predates migration 8 (dbcache_leases): GetOrSetFunc loads without cross-process protection until `dbcache migrate up`")
	})
}

// leaseLost counts a lease that ran out under a loader: this process's
// (it outlived it), or another's (taken over here after it expired).
func (c *Cache) leaseLost(ctx context.Context) {
	c.s.stats.leaseExpiries.Add(1)
	c.loadEvent(ctx, LoadLeaseExpired)
}

// releaseLoadLease releases a flight's lease, bounded, even when the
// flight's context has ended: a lease left behind would make other
// processes wait out LoadLease.
func (c *Cache) releaseLoadLease(ctx context.Context, k string, token LeaseToken) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.rollbackBound())
	defer cancel()
	_, _ = c.releaseLease(rctx, k, token)
}

func (c *Cache) rollbackBound() time.Duration {
	if c.s.cfg.OpTimeout > 0 {
		return c.s.cfg.OpTimeout
	}
	return OpTimeoutDefault
}

// valuesOnly is a context with one context's values and another's
// deadline and cancellation: a background refresh keeps the request's
// values (trace IDs, say) without ending when the request does.
type valuesOnly struct {
	context.Context
	values context.Context
}

func (v valuesOnly) Value(key any) any { return v.values.Value(key) }

// refreshStale refreshes a stale entry in the background: at most one
// refresh per key in this process at a time, none while a failed one's
// back-off (Config.RefreshRetry) lasts, and one across processes (the
// key's lease, never waited for: another process holding it is refreshing,
// or backing off from a failed refresh). A failed refresh is logged and
// counted, and the stale value keeps being served until it expires.
func (c *Cache) refreshStale(ctx context.Context, k string, load func(context.Context) ([]byte, error), timeout Timeout) {
	stale, _ := timeout.staleFor()
	now := time.Now()
	c.s.refreshMu.Lock()
	if c.s.refreshing == nil {
		c.s.refreshing = map[string]bool{}
		c.s.refreshAfter = map[string]time.Time{}
	}
	if c.s.refreshing[k] || c.s.closed.Load() {
		c.s.refreshMu.Unlock()
		return
	}
	if after, ok := c.s.refreshAfter[k]; ok {
		if now.Before(after) {
			c.s.refreshMu.Unlock()
			c.s.stats.refreshBackoffs.Add(1)
			c.loadEvent(ctx, LoadRefreshBackoff)
			return
		}
		delete(c.s.refreshAfter, k)
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
		err := c.refreshRecovered(valuesOnly{Context: rctx, values: ctx}, k, load, timeout)
		failed := err != nil && rctx.Err() == nil
		c.s.refreshMu.Lock()
		delete(c.s.refreshing, k)
		if failed {
			c.backOff(k, time.Now().Add(c.s.cfg.RefreshRetry))
		}
		c.s.refreshMu.Unlock()
		if failed {
			c.s.stats.refreshFailures.Add(1)
			c.refreshFailed(ctx, k, err)
		}
	}()
}

// refreshFailed reports a failed refresh, on the refresh's goroutine: a
// LoadEventTracer or a log handler that panics there is recovered.
func (c *Cache) refreshFailed(ctx context.Context, k string, err error) {
	var hookErr error
	defer c.recovered(ctx, "get_or_set refresh", &hookErr)
	c.loadEvent(ctx, LoadRefreshFailed)
	attrs := []any{"error_code", ErrorCode(err)}
	if c.s.cfg.LogKeys {
		attrs = append(attrs, "key", k, "error", err)
	}
	c.s.cfg.Logger.WarnContext(ctx, "dbcache: stale-while-revalidate refresh failed; serving the stale value until it expires", attrs...)
}

// refreshAfterMax is the most keys the process remembers backing off: past
// it, the ones whose back-off has ended are forgotten first (the lease
// still backs off across processes).
const refreshAfterMax = 4096

// backOff remembers that k's refreshes wait until after. The caller holds
// refreshMu.
func (c *Cache) backOff(k string, after time.Time) {
	if len(c.s.refreshAfter) >= refreshAfterMax {
		now := time.Now()
		for key, t := range c.s.refreshAfter {
			if now.After(t) {
				delete(c.s.refreshAfter, key)
			}
		}
		if len(c.s.refreshAfter) >= refreshAfterMax {
			return
		}
	}
	c.s.refreshAfter[k] = after
}

// refreshRecovered is refresh on the refresh's own goroutine: a panic
// there is recovered (see recovered) and is the refresh's error.
func (c *Cache) refreshRecovered(ctx context.Context, k string, load func(context.Context) ([]byte, error), timeout Timeout) (err error) {
	defer c.recovered(ctx, "get_or_set refresh", &err)
	return c.refresh(ctx, k, load, timeout)
}

// refresh is one refresh attempt of k under its lease. A failed attempt
// keeps the lease for Config.RefreshRetry, so no process retries sooner.
func (c *Cache) refresh(ctx context.Context, k string, load func(context.Context) ([]byte, error), timeout Timeout) error {
	var lease Lease
	err := c.coordinate(ctx, func(sctx context.Context) (err error) {
		lease, err = c.acquireLease(sctx, k, c.s.cfg.LoadLease)
		return err
	})
	if errors.Is(err, ErrSchemaBehind) {
		// No leases table yet: refresh as a single process would.
		c.warnNoLeases(ctx)
		c.s.stats.refreshes.Add(1)
		value, err := c.runLoaderFor(ctx, true, load)
		if err != nil {
			return err
		}
		err = c.coordinate(ctx, func(sctx context.Context) error {
			_, err := c.execWrite(sctx, c.q.set, k, value, timeout.micros(c.s.cfg.DefaultTimeout))
			return err
		})
		if err != nil && !errors.Is(err, errFailedOpen) {
			return c.wrapErr("get_or_set", err)
		}
		c.wrote(1)
		return nil
	}
	if err != nil {
		if errors.Is(err, errFailedOpen) {
			return nil // the database is away; the stale value stands
		}
		return err
	}
	if !lease.Acquired {
		c.s.stats.refreshBackoffs.Add(1)
		c.loadEvent(ctx, LoadRefreshBackoff)
		return nil // another process is refreshing it, or backing off
	}
	release := true
	defer func() {
		if release {
			c.releaseLoadLease(ctx, k, lease.Token)
		}
	}()
	// Another process may have refreshed it just before we took the
	// lease.
	var remaining time.Duration
	err = c.coordinate(ctx, func(sctx context.Context) (err error) {
		_, remaining, err = c.getRemaining(sctx, k)
		return err
	})
	stale, _ := timeout.staleFor()
	switch {
	case errors.Is(err, errFailedOpen):
		return nil
	case err == nil && (remaining < 0 || remaining > stale):
		return nil
	case err != nil && !errors.Is(err, ErrMiss):
		return err
	}
	c.s.stats.refreshes.Add(1)
	value, lost, err := c.runLeased(ctx, k, lease.Token, true, load)
	if err == nil {
		var stored bool
		err = c.coordinate(ctx, func(sctx context.Context) error {
			return c.fencedWrite(sctx, c.q.setLeased, c.q.citusSetLeased, []any{k, value, timeout.micros(c.s.cfg.DefaultTimeout), string(lease.Token)}, &stored)
		})
		switch {
		case errors.Is(err, errFailedOpen):
			return nil
		case isNoRows(err):
			if !lost {
				c.leaseLost(ctx)
			}
			return nil
		case err != nil:
			err = c.wrapErr("get_or_set", err)
		default:
			c.wrote(1)
			return nil
		}
	}
	// Failed: hold the lease as the back-off of every process.
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.rollbackBound())
	defer cancel()
	if ok, xerr := c.extendLease(bctx, k, lease.Token, c.s.cfg.RefreshRetry); xerr == nil && ok {
		release = false
	}
	return err
}

// extendLease is ExtendLease of the made key k.
func (c *Cache) extendLease(ctx context.Context, k string, token LeaseToken, ttl time.Duration) (bool, error) {
	if err := c.checkOpen(); err != nil {
		return false, err
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	tag, err := c.execWrite(ctx, c.q.leaseExtend, k, string(token), ttl.Microseconds())
	if err != nil {
		return false, c.wrapLeaseErr("extend_lease", err)
	}
	return tag.RowsAffected() == 1, nil
}

func isNoRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }

// pollLimiter spaces statements out to at most rate a second: each wait
// takes the next free slot. nil means no cap.
type pollLimiter struct {
	mu    sync.Mutex
	every time.Duration
	next  time.Time
}

func newPollLimiter(rate int) *pollLimiter {
	if rate <= 0 {
		return nil
	}
	return &pollLimiter{every: time.Second / time.Duration(rate)}
}

// wait returns when the caller's slot comes, or ctx's error first.
func (l *pollLimiter) wait(ctx context.Context) error {
	if l == nil {
		return ctx.Err()
	}
	l.mu.Lock()
	now := time.Now()
	slot := l.next
	if slot.Before(now) {
		slot = now
	}
	l.next = slot.Add(l.every)
	l.mu.Unlock()
	d := slot.Sub(now)
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
