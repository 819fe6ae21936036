package dbcache

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/internal/flight"
)

// dbtx is what the cache needs from the database: both *pgxpool.Pool and
// pgx.Tx satisfy it, which is how WithTx runs the same statements inside a
// caller's transaction.
type dbtx interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// shared is the state every view of one cache shares.
type shared struct {
	cfg      Config
	keyCheck KeyValidator
	pool     *pgxpool.Pool
	ownsPool bool
	closed   atomic.Bool
	// q are the statements run on the pool; qTx those run in a caller's
	// transaction. They differ only with Config.FastCommit, which must not
	// change the durability of a transaction the caller commits.
	q, qTx *queries
	// cq are the Citus forms (citus.go); nil when the cache uses the plain
	// forms (Config.Citus). Set by the table check, which a cache New
	// started unchecked (FailOpen, the database down) runs in the
	// background: until it has, the plain forms run.
	cq atomic.Pointer[citusQueries]
	// gets coalesces concurrent Gets on the pool (Config.CoalesceGets);
	// nil when off.
	gets *coalescer
	// sets coalesces concurrent Sets on the pool (Config.CoalesceSets);
	// nil when off.
	sets *setCoalescer
	// incrs coalesces concurrent Incrs and Decrs on the pool
	// (Config.CoalesceIncrs); nil when off.
	incrs *incrCoalescer
	// wrapWrites makes writes on the pool run in a READ COMMITTED
	// transaction of their own: the session default is another level (see
	// exec.go).
	wrapWrites atomic.Bool
	// deadlines bounds operations by Config.OpTimeout; nil when off.
	deadlines *deadlines

	// flights are GetOrSetFunc loads in progress, by made key; polls
	// caps the statements of the flights waiting on another process's
	// lease (Config.LoadPollRate; nil for no cap).
	flights flight.Group
	polls   *pollLimiter
	// noLeasesOnce logs once that the schema has no leases table.
	noLeasesOnce sync.Once

	// Background refreshes of stale entries: at most one per made key,
	// under bgCtx, which Close cancels before it waits for them; and,
	// by made key, when a failed one's back-off ends.
	refreshMu    sync.Mutex
	refreshing   map[string]bool
	refreshAfter map[string]time.Time
	background   sync.WaitGroup
	bgCtx        context.Context
	bgCancel     context.CancelFunc

	stats stats
	failOpenState

	// checkErr is the error of the table check of a cache New started
	// unchecked (FailOpen with the database away), once it failed other
	// than transiently; nil until then, and for good once it succeeded.
	checkErr atomic.Pointer[error]

	// testBeforeGetOrSetWrite runs between GetOrSet's read and its write, so
	// tests can make another writer win the race.
	testBeforeGetOrSetWrite func()
}

// Cache is a cache in one PostgreSQL table. It is safe for concurrent use by
// many goroutines. A Cache value is a view: WithVersion and WithTx return
// other views of the same cache that differ only in their default version or
// in running inside a transaction.
type Cache struct {
	s       *shared
	db      dbtx
	q       *queries // s.q, or s.qTx in a WithTx view
	version int
}

// New returns a cache over a pool the caller owns (Close never closes it).
// It checks that the cache table exists, and returns ErrNotMigrated if not.
// With Config.FailOpen, a database that does not answer (a transient
// error: IsTransient) does not stop New: the cache starts unchecked, its
// operations fail open while the database is away, and the table is
// checked in the background once it answers (retried with back-off, 100
// ms growing to 5 s, until Close); a check that then fails for another
// reason (no table) is the error every operation returns.
func New(ctx context.Context, pool *pgxpool.Pool, cfg *Config) (*Cache, error) {
	if pool == nil {
		return nil, errors.New("dbcache: pool is nil")
	}
	c := cfg.withDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	s := &shared{cfg: c, pool: pool, q: newQueries(c.Schema, c.FastCommit), qTx: newQueries(c.Schema, false),
		keyCheck: KeyValidator{Check: c.KeyCheck, LogKeys: c.LogKeys, Logger: c.Logger}}
	if c.OpTimeout > 0 {
		s.deadlines = newDeadlines(c.OpTimeout)
	}
	s.polls = newPollLimiter(c.LoadPollRate)
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	switch {
	case c.CoalesceGets > 0:
		s.gets = newCoalescer(pool, s.q, c.CoalesceGets)
	case c.CoalesceGets == 0:
		s.gets = newCoalescer(pool, s.q, defaultCoalesceGets(pool.Config().MaxConns))
	}
	cache := &Cache{s: s, db: pool, q: s.q, version: c.Version}
	if n := c.coalesceWrites(c.CoalesceSets); n > 0 {
		s.sets = newSetCoalescer(cache, n)
	}
	if n := c.coalesceWrites(c.CoalesceIncrs); n > 0 {
		s.incrs = newIncrCoalescer(cache, n)
	}
	err := cache.checkTable(ctx)
	if err != nil && c.FailOpen && IsTransient(err) {
		// The database is away: with FailOpen the application starts
		// all the same, its operations failing open, and the table is
		// checked as soon as the database answers.
		c.Logger.WarnContext(ctx, "dbcache: the database did not answer at New; fail-open: starting unchecked, the cache table is checked once it answers", "error", err)
		s.background.Add(1)
		go cache.checkLater()
		return cache, nil
	}
	if err != nil {
		s.bgCancel()
		return nil, err
	}
	return cache, nil
}

// defaultCoalesceGets is Config.CoalesceGets 0 over a pool of maxConns:
// the smaller of that and pgxpool's default pool size, max(4, NumCPU).
func defaultCoalesceGets(maxConns int32) int {
	return max(1, min(int(maxConns), max(4, runtime.NumCPU())))
}

// checkTable checks the pool's query mode and the cache table, and learns
// the session's default isolation.
func (c *Cache) checkTable(ctx context.Context) error {
	s, pool := c.s, c.s.pool
	ctx, cancel := c.bound(ctx)
	defer cancel()
	if err := checkQueryMode(ctx, pool); err != nil {
		return err
	}
	var (
		oid        int64
		isolation  string
		hasWritten bool
	)
	if err := pool.QueryRow(ctx, qCheck, s.q.table).Scan(&oid, &isolation, &hasWritten); err != nil {
		return fmt.Errorf("dbcache: check for the cache table: %w", wrapQueryMode(err))
	}
	s.wrapWrites.Store(isolation != "read committed")
	ok := oid != 0
	if !ok && s.cfg.Schema == "" {
		// search_path silently skips schemas the role may not use, so a
		// table that is there but out of reach looks missing: say so
		// rather than send the operator to run migrations for nothing.
		var hidden string
		err := pool.QueryRow(ctx, qTableHidden, TableName).Scan(&hidden)
		if err == nil {
			return fmt.Errorf("dbcache: table %s is in schema %q on the search_path, but this role lacks USAGE on that schema (GRANT USAGE ON SCHEMA %s TO the role)",
				TableName, hidden, pgx.Identifier{hidden}.Sanitize())
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("dbcache: check for the cache table: %w", err)
		}
	}
	if !ok {
		where := "on the search_path"
		if s.cfg.Schema != "" {
			where = "in schema " + strconv.Quote(s.cfg.Schema)
		}
		return fmt.Errorf("%w (no table %s %s)", ErrNotMigrated, TableName, where)
	}
	if !hasWritten {
		return fmt.Errorf("%w: the cache table predates migration %d (the written_at and token columns), which this version's writes need: run `dbcache migrate up` (instant at any table size)", ErrSchemaBehind, SchemaVersion)
	}
	useCitus, err := detectCitus(ctx, pool, s.cfg.Citus, oid)
	if err != nil {
		return err
	}
	if useCitus {
		cq := newCitusQueries(s.q.table)
		cq.tableOID = oid
		s.cq.Store(cq)
	}
	return nil
}

// checkLaterFirst and checkLaterMax space out the checks of a cache that
// New started unchecked.
const (
	checkLaterFirst = 100 * time.Millisecond
	checkLaterMax   = 5 * time.Second
)

// checkLater checks the table of a cache New started unchecked, retrying
// with back-off while the database does not answer, until Close. A check
// that fails otherwise (no table, a query mode the pooler breaks) is what
// every operation returns from then on.
func (c *Cache) checkLater() {
	defer c.s.background.Done()
	pause := checkLaterFirst
	for {
		t := time.NewTimer(pause)
		select {
		case <-c.s.bgCtx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		err := c.checkTable(c.s.bgCtx)
		switch {
		case err == nil:
			return
		case c.s.bgCtx.Err() != nil:
			return
		case !IsTransient(err):
			c.s.checkErr.Store(&err)
			c.s.cfg.Logger.Error("dbcache: the cache table check failed once the database answered; every operation returns this error", "error", err)
			return
		}
		pause = min(pause*2, checkLaterMax)
	}
}

// Open connects to the database at dsn (a libpq URL or key=value string)
// with a pool the cache owns and closes on Close, then behaves as New.
func Open(ctx context.Context, dsn string, cfg *Config) (*Cache, error) {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("dbcache: open pool: %w", err)
	}
	c, err := New(ctx, pool, cfg)
	if err != nil {
		pool.Close()
		return nil, err
	}
	c.s.ownsPool = true
	return c, nil
}

// Close closes the cache: every later operation, on every view, returns
// ErrClosed. It cancels the background refreshes of stale entries
// (GetOrRevalidate) and waits for them to return, which they do as soon as their
// loader honours its context. It closes the pool only if Open created it.
// Calling it again is a no-op.
func (c *Cache) Close() error {
	if c.s.closed.Swap(true) {
		return nil
	}
	c.s.refreshMu.Lock() // no refresh starts after this
	c.s.refreshMu.Unlock()
	c.s.bgCancel()
	c.s.background.Wait()
	if c.s.ownsPool {
		c.s.pool.Close()
	}
	return nil
}

// WithVersion returns a view of the cache whose operations use version
// instead of Config.Version: Django's per-call version argument.
func (c *Cache) WithVersion(version int) *Cache {
	v := *c
	v.version = version
	return &v
}

// WithTx returns a view of the cache whose operations run in tx, so cache
// writes commit or roll back with the caller's own writes. Every statement is
// safe inside a transaction: none relies on catching an error, which would
// abort it. The view must not be used after tx ends.
func (c *Cache) WithTx(tx pgx.Tx) *Cache {
	v := *c
	v.db = tx
	v.q = c.s.qTx
	return &v
}

// Version returns the view's default key version.
func (c *Cache) Version() int { return c.version }

// degrade applies Config.FailOpen: whether err, a failure of operation op
// on the pool, is transient and to be swallowed. Errors in a WithTx view
// always surface: the caller's transaction is aborted and must know.
func (c *Cache) degrade(ctx context.Context, op string, err error) bool {
	return c.onPool() && c.failOpen(ctx, op, err)
}

func (c *Cache) checkOpen() error {
	if c.s.closed.Load() {
		return ErrClosed
	}
	if err := c.s.checkErr.Load(); err != nil {
		return *err
	}
	return nil
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (c *Cache) wrote(n int) {
	if n > 0 && c.s.cfg.OnWrite != nil {
		c.s.cfg.OnWrite(n)
	}
}

// nonNil keeps an empty value distinct from a missing one: pgx sends a nil
// slice as NULL, which the NOT NULL column refuses.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// opening is a one-key operation after its opening steps (begin): its
// made key, its context (traced and bounded), its trace, and the bound's
// cancel, which the operation defers.
type opening struct {
	k    string
	ctx  context.Context
	tr   *opTrace
	done context.CancelFunc
}

// begin opens a one-key operation as every one of them opens, in this
// order: make and validate the key (an invalid key is neither traced nor
// run), start the trace, check the cache is open (a closed cache's
// refusal is traced), and bound the context by OpTimeout. On an error the
// operation returns it, still ending its trace (o.tr is nil when there is
// none, and its methods are then no-ops); otherwise it defers o.done.
func (c *Cache) begin(ctx context.Context, op, key string) (o opening, err error) {
	o.done = noop
	if o.k, err = c.key(ctx, key); err != nil {
		return o, err
	}
	o.ctx, o.tr = c.trace(ctx, op, 1)
	if err := c.checkOpen(); err != nil {
		return o, err
	}
	o.ctx, o.done = c.bound(o.ctx)
	return o, nil
}

// Get returns the value stored under key, or ErrMiss if there is no live
// entry. An empty stored value is a hit with a non-nil empty slice.
func (c *Cache) Get(ctx context.Context, key string) (_ []byte, err error) {
	o, err := c.begin(ctx, OpGet, key)
	defer func() { o.tr.read(err) }()
	if err != nil {
		return nil, err
	}
	defer o.done()
	ctx, k := o.ctx, o.k
	v, err := c.get(ctx, k)
	if err != nil && !errors.Is(err, ErrMiss) && c.degrade(ctx, "get", err) {
		return nil, ErrMiss
	}
	return v, err
}

// get reads the made (and validated) key k.
func (c *Cache) get(ctx context.Context, k string) ([]byte, error) {
	if c.s.gets != nil && c.onPool() {
		v, err := c.s.gets.get(ctx, k)
		if err != nil && !errors.Is(err, ErrMiss) {
			return nil, c.wrapErr("get", err)
		}
		return v, err
	}
	var v []byte
	var err error
	if c.onPool() {
		err = queryRowBounded(ctx, c.s.pool, c.q.get, k).Scan(&v)
	} else {
		err = c.db.QueryRow(ctx, c.q.get, k).Scan(&v)
	}
	if err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, ErrMiss
		}
		return nil, c.wrapErr("get", err)
	}
	return nonNil(v), nil
}

// Set stores value under key, replacing any entry, expiring as timeout says.
// A timeout of ExpiresIn(d <= 0) leaves nothing a Get can see.
func (c *Cache) Set(ctx context.Context, key string, value []byte, timeout Timeout) (err error) {
	o, err := c.begin(ctx, OpSet, key)
	defer func() { o.tr.wrote(1, 1, err) }()
	if err != nil {
		return err
	}
	defer o.done()
	ctx, k := o.ctx, o.k
	if c.s.sets != nil && c.onPool() {
		err = c.s.sets.set(ctx, k, nonNil(value), timeout.micros(c.s.cfg.DefaultTimeout))
	} else {
		_, err = c.execWrite(ctx, c.q.set, k, nonNil(value), timeout.micros(c.s.cfg.DefaultTimeout))
	}
	if err != nil {
		if c.degrade(ctx, "set", err) {
			return nil
		}
		return c.wrapErr("set", err)
	}
	c.wrote(1)
	return nil
}

// Add stores value under key only if the key has no live entry, and reports
// whether it did. An expired entry is taken over. Exactly one of any number
// of concurrent Adds of a key returns true. With ExpiresIn(d <= 0) it returns what
// Django returns (true when no live entry exists) and stores nothing visible.
func (c *Cache) Add(ctx context.Context, key string, value []byte, timeout Timeout) (stored bool, err error) {
	o, err := c.begin(ctx, OpAdd, key)
	defer func() { o.tr.wrote(1, b2i(stored), err) }()
	if err != nil {
		return false, err
	}
	defer o.done()
	ctx, k := o.ctx, o.k
	err = c.rowWrite(ctx, c.q.add, []any{k, nonNil(value), timeout.micros(c.s.cfg.DefaultTimeout)}, &stored)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		if c.degrade(ctx, "add", err) {
			return false, nil
		}
		return false, c.wrapErr("add", err)
	}
	c.wrote(1)
	return true, nil
}

// Touch gives a live entry a new expiry and reports whether there was one.
// An expired entry stays expired (false): Touch never brings a value back.
// ExpiresIn(d <= 0) expires the entry at once and returns true.
func (c *Cache) Touch(ctx context.Context, key string, timeout Timeout) (ok bool, err error) {
	o, err := c.begin(ctx, OpTouch, key)
	defer func() { o.tr.found(ok, err) }()
	if err != nil {
		return false, err
	}
	defer o.done()
	ctx, k := o.ctx, o.k
	tag, err := c.execWrite(ctx, c.q.touch, k, timeout.micros(c.s.cfg.DefaultTimeout))
	if err != nil {
		if c.degrade(ctx, "touch", err) {
			return false, nil
		}
		return false, c.wrapErr("touch", err)
	}
	return tag.RowsAffected() > 0, nil
}

// Delete removes key and reports whether a live entry was removed. An expired
// entry is removed too, but reported as absent (false).
func (c *Cache) Delete(ctx context.Context, key string) (wasLive bool, err error) {
	o, err := c.begin(ctx, OpDelete, key)
	defer func() { o.tr.found(wasLive, err) }()
	if err != nil {
		return false, err
	}
	defer o.done()
	ctx, k := o.ctx, o.k
	err = c.rowWrite(ctx, c.q.del, []any{k}, &wasLive)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		if c.degrade(ctx, "delete", err) {
			return false, nil
		}
		return false, c.wrapErr("delete", err)
	}
	return wasLive, nil
}

// HasKey reports whether key has a live entry.
func (c *Cache) HasKey(ctx context.Context, key string) (ok bool, err error) {
	o, err := c.begin(ctx, OpHasKey, key)
	defer func() { o.tr.found(ok, err) }()
	if err != nil {
		return false, err
	}
	defer o.done()
	ctx, k := o.ctx, o.k
	if c.onPool() {
		err = queryRowBounded(ctx, c.s.pool, c.q.hasKey, k).Scan(&ok)
	} else {
		err = c.db.QueryRow(ctx, c.q.hasKey, k).Scan(&ok)
	}
	if err != nil {
		if c.degrade(ctx, "has_key", err) {
			return false, nil
		}
		return false, c.wrapErr("has_key", err)
	}
	return ok, nil
}

// GetOrSet returns the value stored under key; on a miss it stores value
// (as Add would) and returns it. Between concurrent callers the first stored
// value wins and every caller returns it. With ExpiresIn(d <= 0) value is returned
// and nothing a read can see is stored, as Django does. (With a value in
// hand there is nothing to protect from a stampede: GetOrSet is a read and,
// on a miss, one write.)
func (c *Cache) GetOrSet(ctx context.Context, key string, value []byte, timeout Timeout) (_ []byte, err error) {
	k, err := c.key(ctx, key)
	if err != nil {
		return nil, err
	}
	ctx, tr := c.trace(ctx, OpGetOrSet, 1)
	if tr != nil {
		defer func() { tr.finish(err) }()
	}
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	rctx, cancel := c.bound(ctx)
	v, err := c.get(rctx, k)
	cancel()
	switch {
	case err == nil:
		tr.mark(1, 0, 0)
		return v, nil
	case errors.Is(err, ErrMiss), c.degrade(ctx, "get_or_set", err):
		tr.mark(0, 1, 1)
		return c.storeFirst(ctx, k, value, timeout)
	default:
		return nil, err
	}
}

// GetOrSetFunc is GetOrSet with a loader: load runs only on a miss, and its
// result is stored unless another caller stored first, in which case that
// value is returned instead. An error from load is returned (wrapped) and
// nothing is stored; a panic in load is returned as a *LoaderPanicError.
//
// The loader runs once per key however many callers miss at once: once
// among the goroutines of this process, which all return its value, and
// once across the processes sharing the table, through the key's lease
// (see Config.LoadLease and docs/loaders.md): a process that finds
// another loading the key waits for its value, holding no connection, for
// at most Config.LoadWait, then loads it itself. The loader's write is
// fenced by its lease, so a loader that outlived its lease stores nothing
// (its callers still get its value). The loader gets a context with the
// first caller's values, cancelled only when every caller waiting on it
// has gone; it is not bounded by Config.OpTimeout. With Config.FailOpen,
// a transient failure of any of the cache's statements runs the loader
// unprotected (shared among this process's callers only) and returns its
// value unstored.
func (c *Cache) GetOrSetFunc(ctx context.Context, key string, load LoadFunc, timeout Timeout) ([]byte, error) {
	return c.getOrLoad(ctx, key, load, timeout)
}

// GetOrRevalidate is GetOrSetFunc with stale-while-revalidate: an entry it
// stores is fresh for fresh, then stale for up to stale more, and then
// expired. A fresh entry is returned as it is; a stale one is returned at
// once while one background refresh runs (one across every process sharing
// the table), and an expired one is loaded as on a miss. The entry's
// expiry is fresh + stale, as every other operation sees it: the
// database's clock decides when the entry expires, and, from the remaining
// lifetime, whether it is stale. Negative durations count as 0: stale <= 0
// is GetOrSetFunc with ExpiresIn(fresh), and fresh <= 0 makes every hit
// refresh. A failed refresh is logged and counted (Stats.RefreshFailures),
// the key's refresh then waits Config.RefreshRetry in every process (the
// failed refresh keeps the key's lease that long), and the stale value
// keeps being served until it expires.
func (c *Cache) GetOrRevalidate(ctx context.Context, key string, load LoadFunc, fresh, stale time.Duration) ([]byte, error) {
	return c.getOrLoad(ctx, key, load, revalidate(fresh, stale))
}

func (c *Cache) getOrLoad(ctx context.Context, key string, load LoadFunc, timeout Timeout) (_ []byte, err error) {
	k, err := c.key(ctx, key)
	if err != nil {
		return nil, err
	}
	ctx, tr := c.trace(ctx, OpGetOrSet, 1)
	if tr != nil {
		defer func() { tr.finish(err) }()
	}
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	if load == nil {
		return nil, errors.New("dbcache: get_or_set: load is nil")
	}
	rctx, cancel := c.bound(ctx)
	var v []byte
	if stale, ok := timeout.staleFor(); ok {
		var remaining time.Duration
		v, remaining, err = c.getRemaining(rctx, k)
		if err == nil && remaining != remainingForever && remaining <= stale && c.onPool() {
			c.refreshStale(ctx, k, load, timeout)
		}
	} else {
		v, err = c.get(rctx, k)
	}
	cancel()
	switch {
	case err == nil:
		tr.mark(1, 0, 0)
		return v, nil
	case errors.Is(err, ErrMiss):
		tr.mark(0, 1, 1)
		return c.loadOnce(ctx, k, load, timeout)
	case c.degrade(ctx, "get_or_set", err):
		// The read failed open (a silent server takes all of OpTimeout
		// to say so): ask the server nothing more, so the call answers
		// within that one OpTimeout, plus the loader.
		tr.mark(0, 1, 0)
		return c.loadUnprotected(ctx, k, load)
	default:
		return nil, err
	}
}

// Incr adds delta to the integer stored under key and returns the new value.
// A value is an integer when it is the decimal ASCII form of an int64, as
// Redis INCR reads it. It returns ErrMiss when the key has no live entry,
// ErrNotInteger when the value is not an integer, and ErrOverflow when the
// result would not fit in an int64; in those cases nothing changes. The
// entry keeps its expiry. Concurrent Incrs never lose an update.
func (c *Cache) Incr(ctx context.Context, key string, delta int64) (n int64, err error) {
	o, err := c.begin(ctx, OpIncr, key)
	defer func() { o.tr.read(err) }()
	if err != nil {
		return 0, err
	}
	defer o.done()
	return c.incr(o.ctx, "incr", key, o.k, strconv.FormatInt(delta, 10))
}

// Decr subtracts delta from the integer stored under key; see Incr.
func (c *Cache) Decr(ctx context.Context, key string, delta int64) (n int64, err error) {
	o, err := c.begin(ctx, OpDecr, key)
	defer func() { o.tr.read(err) }()
	if err != nil {
		return 0, err
	}
	defer o.done()
	neg := strconv.FormatInt(-delta, 10)
	if delta == math.MinInt64 { // -MinInt64 does not fit in an int64
		neg = "9223372036854775808"
	}
	return c.incr(o.ctx, "decr", key, o.k, neg)
}

// incr runs Incr and Decr on k, key's made and validated key, in an
// opened operation (begin).
func (c *Cache) incr(ctx context.Context, op, key, k, delta string) (int64, error) {
	// Coalesced Incrs have no Citus form: a cache using the Citus forms
	// runs each on its own.
	if c.s.incrs != nil && c.onPool() && c.s.cq.Load() == nil {
		return c.s.incrs.incr(ctx, op, k, delta, func() (int64, error) { return c.incrOne(ctx, op, key, k, delta) })
	}
	return c.incrOne(ctx, op, key, k, delta)
}

// incrOne is incr as its own statement.
func (c *Cache) incrOne(ctx context.Context, op, key, k, delta string) (int64, error) {
	// The UPDATE is the whole operation. When it changes nothing, a second
	// read says why; if the entry changed in between so that the UPDATE
	// would now succeed, try again.
	for attempt := 0; ; attempt++ {
		var v []byte
		err := c.rowWrite(ctx, c.q.incr, []any{k, delta, newToken()}, &v)
		if err == nil {
			n, ok := ParseInteger(v)
			if !ok {
				return 0, fmt.Errorf("dbcache: %s: database returned %q", op, v)
			}
			return n, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			if c.degrade(ctx, op, err) {
				return 0, ErrMiss
			}
			return 0, c.wrapErr(op, err)
		}
		err = c.db.QueryRow(ctx, c.q.incrCheck, k).Scan(&v)
		if errors.Is(err, pgx.ErrNoRows) {
			return 0, ErrMiss
		}
		if err != nil {
			if c.degrade(ctx, op, err) {
				return 0, ErrMiss
			}
			return 0, c.wrapErr(op, err)
		}
		cur, ok := ParseInteger(v)
		if !ok {
			return 0, fmt.Errorf("%w: key %q", ErrNotInteger, key)
		}
		d, _ := strconv.ParseInt(delta, 10, 64) // fails only for -MinInt64
		if delta == "9223372036854775808" || (d > 0 && cur > math.MaxInt64-d) || (d < 0 && cur < math.MinInt64-d) {
			return 0, fmt.Errorf("%w: %d %+d on key %q", ErrOverflow, cur, d, key)
		}
		if attempt >= 10 {
			return 0, fmt.Errorf("dbcache: %s: key %q kept changing", op, key)
		}
	}
}

// IncrVersion moves the entry for key from the view's version to version +
// delta, value and expiry intact, in one statement, and returns the new
// version. Whatever the new version held is replaced. It returns ErrMiss if
// the key has no live entry at the current version.
func (c *Cache) IncrVersion(ctx context.Context, key string, delta int) (to int, err error) {
	from, err := c.key(ctx, key)
	if err != nil {
		return 0, err
	}
	ctx, tr := c.trace(ctx, OpIncrVersion, 1)
	if tr != nil {
		defer func() { tr.read(err) }()
	}
	return c.incrVersion(ctx, key, from, delta)
}

// incrVersion moves from, key's made and validated key, by delta versions.
func (c *Cache) incrVersion(ctx context.Context, key, from string, delta int) (int, error) {
	if err := c.checkOpen(); err != nil {
		return 0, err
	}
	if (delta > 0 && c.version > math.MaxInt-delta) || (delta < 0 && c.version < math.MinInt-delta) {
		return 0, fmt.Errorf("%w: version %d %+d", ErrOverflow, c.version, delta)
	}
	to := c.version + delta
	ctx, cancel := c.bound(ctx)
	defer cancel()
	if delta == 0 {
		// Moving an entry onto itself is a no-op; the statement below would
		// delete and re-insert one key in one command, which PostgreSQL
		// refuses. Only the miss needs reporting.
		var ok bool
		if err := c.db.QueryRow(ctx, c.q.hasKey, from).Scan(&ok); err != nil {
			if c.degrade(ctx, "incr_version", err) {
				return 0, ErrMiss
			}
			return 0, c.wrapErr("incr_version", err)
		}
		if !ok {
			return 0, ErrMiss
		}
		return to, nil
	}
	dest, err := c.WithVersion(to).key(ctx, key)
	if err != nil {
		return 0, err
	}
	var moved bool
	if c.s.cq.Load() != nil {
		err = c.citusMove(ctx, from, dest)
	} else {
		err = c.rowWrite(ctx, c.q.move, []any{from, dest}, &moved)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, ErrMiss
	}
	if err != nil {
		if c.degrade(ctx, "incr_version", err) {
			return 0, ErrMiss
		}
		return 0, c.wrapErr("incr_version", err)
	}
	return to, nil
}

// DecrVersion moves the entry to version - delta; see IncrVersion.
func (c *Cache) DecrVersion(ctx context.Context, key string, delta int) (to int, err error) {
	from, err := c.key(ctx, key)
	if err != nil {
		return 0, err
	}
	ctx, tr := c.trace(ctx, OpDecrVersion, 1)
	if tr != nil {
		defer func() { tr.read(err) }()
	}
	if delta == math.MinInt {
		return 0, fmt.Errorf("%w: version delta %d", ErrOverflow, delta)
	}
	return c.incrVersion(ctx, key, from, -delta)
}

// GetMany returns the live entries among keys, in one query, keyed by the
// caller's keys. Missing keys are absent from the map.
func (c *Cache) GetMany(ctx context.Context, keys []string) (out map[string][]byte, err error) {
	ks, err := c.keys(ctx, keys)
	if err != nil {
		return nil, err
	}
	ctx, tr := c.trace(ctx, OpGetMany, len(keys))
	if tr != nil {
		defer func() { tr.many(len(keys), len(out), err) }()
	}
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	out = make(map[string][]byte, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	if err = c.getManyByKey(ctx, ks, out); err != nil {
		if c.degrade(ctx, "get_many", err) {
			return map[string][]byte{}, nil
		}
		return nil, c.wrapErr("get_many", err)
	}
	return out, nil
}

// getManyByKey reads the made keys into out by caller key (qGetMany).
// (Reading by position, unnest($1) WITH ORDINALITY returning each key's
// index, was measured and lost: docs/performance.md.)
func (c *Cache) getManyByKey(ctx context.Context, ks *keySet, out map[string][]byte) error {
	var rows pgx.Rows
	var err error
	if c.onPool() {
		rows, err = queryBounded(ctx, c.s.pool, c.q.getMany, ks.made)
	} else {
		rows, err = c.db.Query(ctx, c.q.getMany, ks.made)
	}
	if err != nil {
		return err
	}
	var k string
	var v []byte
	_, err = pgx.ForEachRow(rows, []any{&k, &v}, func() error {
		// A second caller key of the same stored key (a custom KeyFunc)
		// gets a copy of its own, since callers own what they get.
		i, ok := ks.index[k]
		if !ok {
			return nil
		}
		out[ks.first[i]] = nonNil(v)
		for _, orig := range ks.more[k] {
			out[orig] = append([]byte{}, v...)
		}
		return nil
	})
	return err
}

// SetMany stores every entry of items in one statement, all or nothing, and
// returns the keys it failed to store (Django's set_many contract): none on
// success, and every key when it returns an error, since the batch is one
// statement. Concurrent SetManys over overlapping keys never deadlock.
func (c *Cache) SetMany(ctx context.Context, items map[string][]byte, timeout Timeout) (failed []string, err error) {
	keys := allKeys(items)
	ks, err := c.keys(ctx, keys)
	if err != nil {
		return keys, err
	}
	ctx, tr := c.trace(ctx, OpSetMany, len(items))
	if tr != nil {
		defer func() { tr.wrote(len(items), len(items)-len(failed), err) }()
	}
	if err := c.checkOpen(); err != nil {
		return keys, err
	}
	if len(items) == 0 {
		return nil, nil
	}
	made := ks.made
	values := make([][]byte, len(made))
	for i := range made {
		// Two caller keys can make one stored key only through a custom
		// KeyFunc; the last in sorted order wins, deterministically.
		values[i] = nonNil(items[ks.last(i)])
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	if err := c.setMany(ctx, made, values, timeout.micros(c.s.cfg.DefaultTimeout)); err != nil {
		if c.degrade(ctx, "set_many", err) {
			return keys, nil
		}
		return keys, c.wrapErr("set_many", err)
	}
	c.wrote(len(made))
	return nil, nil
}

// allKeys returns the keys of items, sorted so batches are deterministic.
func allKeys(items map[string][]byte) []string {
	keys := make([]string, 0, len(items))
	for k := range items {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// DeleteMany removes keys in one statement and returns how many live entries
// it removed.
func (c *Cache) DeleteMany(ctx context.Context, keys []string) (n int, err error) {
	ks, err := c.keys(ctx, keys)
	if err != nil {
		return 0, err
	}
	ctx, tr := c.trace(ctx, OpDeleteMany, len(keys))
	if tr != nil {
		defer func() { tr.many(len(keys), n, err) }()
	}
	if err := c.checkOpen(); err != nil {
		return 0, err
	}
	if len(keys) == 0 {
		return 0, nil
	}
	made := ks.made
	// Sorted, so concurrent batches lock rows in one order.
	slices.Sort(made)
	ctx, cancel := c.bound(ctx)
	defer cancel()
	if c.s.cq.Load() != nil {
		n, err = c.citusDeleteMany(ctx, made)
	} else {
		err = c.rowWrite(ctx, c.q.deleteMany, []any{made}, &n)
	}
	if err != nil {
		if c.degrade(ctx, "delete_many", err) {
			return 0, nil
		}
		return 0, c.wrapErr("delete_many", err)
	}
	return n, nil
}

// Clear removes every entry in the table: every prefix, version and cache
// that shares it, as Django's clear does. It deletes in batches of a few
// thousand rows in key order, each its own statement (bounded by
// Config.OpTimeout), so no statement holds many locks for long and none
// deadlocks with a concurrent bulk write. Entries written while Clear runs
// may survive it. In a WithTx view every batch runs in the transaction, so
// the clear commits or rolls back as a whole.
func (c *Cache) Clear(ctx context.Context) (err error) {
	ctx, tr := c.trace(ctx, OpClear, 0)
	if tr != nil {
		defer func() { tr.finish(err) }()
	}
	if err := c.checkOpen(); err != nil {
		return err
	}
	if c.s.cq.Load() != nil {
		return c.citusClear(ctx)
	}
	from := ""
	for {
		n, last, err := c.clearBatch(ctx, from)
		if err != nil {
			return c.wrapErr("clear", err)
		}
		if n < clearBatchSize {
			return nil
		}
		from = last
	}
}

func (c *Cache) clearBatch(ctx context.Context, from string) (int, string, error) {
	ctx, cancel := c.bound(ctx)
	defer cancel()
	var (
		n    int
		last *string
	)
	if err := c.rowWrite(ctx, c.q.clearBatch, []any{from, clearBatchSize}, &n, &last); err != nil {
		return 0, "", err
	}
	if last == nil {
		return n, "", nil
	}
	return n, *last, nil
}
