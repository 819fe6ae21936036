package culling

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/internal/notmigrated"
)

const (
	// BatchSizeDefault is the default for Config.BatchSize. A batch of 1000
	// rows is one DELETE of a few milliseconds (measured 1.5–5 ms on a
	// 1M-row table), short enough that row locks are never held for long and
	// vacuum can reclaim what earlier batches removed.
	BatchSizeDefault = 1000

	// CullAll is the Config.CullFrequency that clears the whole table when it
	// holds more than MaxEntries: Django's CULL_FREQUENCY = 0. It is not 0
	// because 0 is Go's zero value, which means "the default".
	CullAll = -1

	// CullFrequencyDefault is the default for Config.CullFrequency, as in
	// Django: over the limit, remove a third of the entries.
	CullFrequencyDefault = 3

	// ExactCountLimitDefault is the default for Config.ExactCountLimit. A
	// pass over a table this size, counted by a bounded walk, measured
	// 27–110 ms (11–34 ms at 100,000 rows) on a loaded 2-core machine; at a
	// few times this size the walk costs what the COUNT(*) it replaces does.
	ExactCountLimitDefault = 200_000

	// IntervalDefault is the default for Config.Interval.
	IntervalDefault = 30 * time.Second

	// MaxEntriesDefault is the default for Config.MaxEntries. Django's 300 is
	// sized for a development machine: a real site's working set does not
	// fit and nearly every write culls. 100,000 entries of a few kilobytes
	// are a few hundred megabytes, which a modest database keeps in memory,
	// and lie well inside ExactCountLimitDefault, so the default
	// configuration counts exactly.
	MaxEntriesDefault = 100_000

	// MaxAgeMin is the smallest Config.MaxAge. The index that finds old
	// entries (migration 005) holds only entries that never expire or
	// expire more than an hour after they were written, so that writes
	// with shorter timeouts pay nothing for it; every live entry older than
	// an hour is among those, so a maximum age of an hour or more finds
	// them all.
	MaxAgeMin = time.Hour

	// NoLimit is the Config.MaxEntries that bounds nothing: passes only
	// remove expired entries and never cull live ones.
	NoLimit = -1

	// RowOverhead is what MaxBytes counts for each entry on top of its key
	// and value as stored: the row's header (24 bytes), its expiry and
	// write time (8 each) and its line pointer (4). Index entries, free
	// space and dead rows are not counted (see docs/culling.md).
	RowOverhead = 44

	// SizeSamplePagesDefault is the default for Config.SizeSamplePages:
	// 16 MB read per estimate with 8 kB pages. The estimate's error falls
	// with the square root of the pages read; where entries of similar
	// sizes were written together, so that pages differ much, 500 pages
	// measured ±7% and 2,000 ±4% (docs/culling.md).
	SizeSamplePagesDefault = 2000

	// NudgeEveryDefault is the default for Config.NudgeEvery: 1% of
	// MaxEntriesDefault, so a write burst overshoots the default limit by
	// about 1% plus what is written while a pass runs.
	NudgeEveryDefault = 1000

	// PassTimeoutDefault is the default for Config.PassTimeout. Culling a
	// third of a 1M-row table took 4–8 s on a loaded 2-core machine; a
	// minute leaves room for a slow server without letting a stuck pass hold
	// the lock for long. A pass that times out keeps what it removed, and
	// the next one carries on.
	PassTimeoutDefault = time.Minute

	// cacheTable is the cache table the migrations create (migrations.Table,
	// kept here so this package does not import golang-migrate through the
	// migrations package; a test checks the two agree).
	cacheTable = "dbcache_entries"

	// StateTable is the table (created by migration 002) where every
	// completed pass is recorded for LastPass.
	StateTable = "dbcache_culler_state"

	// lockKeySpace is the first half of the two-int advisory lock key; the
	// second half is the cache table's OID. The two-int form lives in its
	// own key space, apart from the single-bigint locks applications and
	// golang-migrate take, and an OID is unique in its database, so two
	// cache tables never share a lock. The value spells "dbCC".
	lockKeySpace = 0x64624343

	// skipRetryDelay is how soon a worker whose pass was skipped (another
	// culler held the lock) tries again while it has writes that no pass
	// has counted yet.
	skipRetryDelay = 500 * time.Millisecond

	// heartbeatEvery is how often a pass checks that the connection holding
	// its lock is still alive, between batches.
	heartbeatEvery = time.Second

	// startCheckTimeout bounds Start's check when its context has no
	// deadline.
	startCheckTimeout = 10 * time.Second
)

var (
	// ErrLockLost is returned when the connection holding the culler lock
	// failed during a pass. The pass stops so that two cullers never run at
	// once; what it removed so far stays removed.
	ErrLockLost = errors.New("culling: lost the culler lock (its connection failed)")

	// ErrHookPanicked is returned when Config.OnProgress panicked during a
	// pass: the pass stops there, releases its lock as after any error, and
	// keeps what it removed. The panic goes no further than the pass, so a
	// started Culler's worker carries on with its next pass.
	ErrHookPanicked = errors.New("culling: Config.OnProgress panicked")

	// ErrMigrationNeeded is returned when the configuration needs a
	// migration the schema lacks: Config.MaxAge needs migrations 004 and
	// 005 (the written_at column and its index).
	// It matches dbcache.ErrSchemaBehind and dbcache.ErrNotMigrated too.
	ErrMigrationNeeded = notmigrated.New("culling: the schema lacks a migration this configuration needs (apply the migrations)", notmigrated.Behind)

	// ErrNoPass is returned by LastPass when no pass has been recorded yet.
	ErrNoPass = errors.New("culling: no culling pass recorded yet")

	// ErrNoPrivilege is returned when the role may not cull the cache
	// table: it needs USAGE on the table's schema and SELECT, UPDATE (for
	// the row locks) and DELETE on the table.
	ErrNoPrivilege = errors.New("culling: permission denied")

	// ErrTableNotFound is returned when the cache table (or, for LastPass,
	// the state table) does not exist: apply the migrations first.
	// It matches dbcache.ErrNotMigrated too.
	ErrTableNotFound = notmigrated.New("culling: table not found (apply the migrations first)", notmigrated.Err)
)

// Config configures a Culler. A nil *Config means all defaults. Fields are
// read once, by New.
type Config struct {
	// BatchSize is the most rows one DELETE removes. Every batch is its own
	// short transaction. Defaults to BatchSizeDefault.
	BatchSize int

	// CullFrequency keeps Django's CULL_FREQUENCY meaning: when the table
	// holds more than MaxEntries, a pass removes 1/CullFrequency of the
	// entries, or more if that is what it takes to get back to MaxEntries.
	// CullAll removes every entry (Django's 0). Defaults to
	// CullFrequencyDefault (3); 0 means the default, not CullAll.
	CullFrequency int

	// ExactCountLimit is the largest table, in rows, that a pass counts
	// exactly, with a walk of at most ExactCountLimit+1 rows. A larger table
	// is counted with PostgreSQL's live-row statistic instead, which costs
	// nothing but can lag writes by up to about ten seconds (see
	// docs/culling.md). Set it above MaxEntries plus the expected overshoot.
	// -1 means never walk. Defaults to ExactCountLimitDefault.
	ExactCountLimit int

	// Interval is the time between passes of a started Culler; the first
	// pass runs at Start. Defaults to IntervalDefault.
	Interval time.Duration

	// Logger receives one line per pass (Info when it removed rows, Debug
	// otherwise) and errors of started passes; never a key or a value. A
	// line whose handler panics is lost, and nothing else. Defaults to
	// slog.Default().
	Logger *slog.Logger

	// MaxAge, when set, is the oldest an entry may be: no entry whose
	// written_at is more than MaxAge before a pass began survives it,
	// whatever its timeout, Forever included. written_at is set when the
	// row is inserted (the column's default) and by the statements that
	// overwrite it and set it (see docs/culling.md for which of the
	// cache's writes do). 0 means no limit; otherwise at least MaxAgeMin.
	// Needs migrations 004 and 005. Defaults to 0.
	MaxAge time.Duration

	// MaxBytes, when set, is the most bytes the entries should take: keys
	// and values as stored (after compression) plus RowOverhead each. A
	// pass estimates the size from a sample of SizeSamplePages pages and
	// PostgreSQL's statistics (never a scan; see docs/culling.md for the
	// error) and, over the limit, culls in eviction order until the
	// estimate is back under it. 0 means no limit. Defaults to 0.
	MaxBytes int64

	// MaxEntries is the most entries the table should hold, expired or not,
	// as Django's MAX_ENTRIES. NoLimit (-1) bounds nothing: passes only
	// remove expired entries. Defaults to MaxEntriesDefault.
	MaxEntries int

	// NudgeEvery makes a started Culler run a pass as soon as NoteWrites has
	// been told of this many written rows since the last pass began
	// counting, so a write burst cannot grow the table far past MaxEntries
	// between ticks.
	// -1 disables nudges. Defaults to NudgeEveryDefault.
	NudgeEvery int

	// OnProgress, if set, is called during every pass that holds the lock:
	// before counting, after every batch and at the end. It runs on the
	// pass's goroutine and must not block; it exists so a command can draw a
	// progress bar. If it panics, the pass stops with ErrHookPanicked.
	// Defaults to nil.
	OnProgress func(Progress)

	// PassTimeout bounds each pass, in RunOnce as in a started Culler. -1
	// means no limit beyond the caller's context. Defaults to
	// PassTimeoutDefault.
	PassTimeout time.Duration

	// SizeSamplePages is how many of the table's pages the MaxBytes
	// estimate reads (TABLESAMPLE SYSTEM); a table this small or smaller is
	// measured exactly. Defaults to SizeSamplePagesDefault.
	SizeSamplePages int

	// Citus chooses the statement forms for a cache table distributed by
	// key on a Citus cluster (docs/culling.md#citus), as
	// dbcache.Config.Citus does for the cache: CitusAuto, the default, uses
	// them when Start (or the first pass of a Culler never started) finds
	// the table in pg_dist_partition; CitusOn always (plain PostgreSQL
	// answers them as the plain forms); CitusOff never. Defaults to
	// CitusAuto.
	Citus CitusMode

	// Schema is the schema of the cache table. Defaults to "", which
	// resolves the table through the pool's search_path, as the cache does.
	Schema string
}

var schemaRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]{0,62}$`)

// WithDefaults returns a copy of the config with every unset field at its
// default.
func (c *Config) WithDefaults() *Config {
	var out Config
	if c != nil {
		out = *c
	}
	if out.BatchSize == 0 {
		out.BatchSize = BatchSizeDefault
	}
	if out.CullFrequency == 0 {
		out.CullFrequency = CullFrequencyDefault
	}
	if out.ExactCountLimit == 0 {
		out.ExactCountLimit = ExactCountLimitDefault
	}
	if out.Interval == 0 {
		out.Interval = IntervalDefault
	}
	if out.Logger == nil {
		out.Logger = slog.Default()
	}
	if out.MaxEntries == 0 {
		out.MaxEntries = MaxEntriesDefault
	}
	if out.NudgeEvery == 0 {
		out.NudgeEvery = NudgeEveryDefault
	}
	if out.PassTimeout == 0 {
		out.PassTimeout = PassTimeoutDefault
	}
	if out.SizeSamplePages == 0 {
		out.SizeSamplePages = SizeSamplePagesDefault
	}
	return &out
}

func (c *Config) validate() error {
	switch {
	case c.BatchSize < 1:
		return fmt.Errorf("culling: Config.BatchSize must be at least 1, got %d", c.BatchSize)
	case c.CullFrequency < CullAll:
		return fmt.Errorf("culling: Config.CullFrequency must be positive or CullAll (-1), got %d", c.CullFrequency)
	case c.ExactCountLimit < -1:
		return fmt.Errorf("culling: Config.ExactCountLimit must be positive or -1, got %d", c.ExactCountLimit)
	case c.Interval < 0:
		return fmt.Errorf("culling: Config.Interval must be positive, got %s", c.Interval)
	case c.MaxAge < 0 || (c.MaxAge > 0 && c.MaxAge < MaxAgeMin):
		return fmt.Errorf("culling: Config.MaxAge must be 0 (no limit) or at least %s, got %s", MaxAgeMin, c.MaxAge)
	case c.MaxBytes < 0:
		return fmt.Errorf("culling: Config.MaxBytes must be positive or 0 (no limit), got %d", c.MaxBytes)
	case c.SizeSamplePages < 1:
		return fmt.Errorf("culling: Config.SizeSamplePages must be at least 1, got %d", c.SizeSamplePages)
	case c.MaxEntries < NoLimit:
		return fmt.Errorf("culling: Config.MaxEntries must be positive or NoLimit (-1), got %d", c.MaxEntries)
	case c.NudgeEvery < -1:
		return fmt.Errorf("culling: Config.NudgeEvery must be positive or -1, got %d", c.NudgeEvery)
	case c.PassTimeout < -1:
		return fmt.Errorf("culling: Config.PassTimeout must be positive or -1, got %s", c.PassTimeout)
	case c.Citus < CitusAuto || c.Citus > CitusOff:
		return fmt.Errorf("culling: Config.Citus %d is not a CitusMode (CitusAuto, CitusOn or CitusOff)", int(c.Citus))
	case c.Schema != "" && !schemaRE.MatchString(c.Schema):
		return fmt.Errorf("culling: Config.Schema %q is not a valid schema name (letters, digits, _ and $, at most 63)", c.Schema)
	}
	return nil
}

// Culler removes expired entries and keeps the cache table at or under
// Config.MaxEntries. Run it in the application (Start, Stop, NoteWrites) or
// as a job (RunOnce). Any number of Cullers, in any number of processes, may
// share a table: one pass runs at a time and the others skip. A Culler is
// safe for concurrent use.
type Culler struct {
	cfg    *Config
	pool   *pgxpool.Pool
	runner string

	// Schema-qualified (or, with no Config.Schema, bare) sanitized names,
	// built once.
	state string
	table string

	// pending counts rows written (NoteWrites) since the last pass began counting.
	pending atomic.Int64
	nudge   chan struct{}

	// noForceFlush is set once pg_stat_force_next_flush turns out to be
	// unavailable (PostgreSQL 14 or older, or revoked).
	noForceFlush atomic.Bool
	// warnedState is set once a failure to record a pass has been logged.
	warnedState atomic.Bool

	// inPass counts passes in progress (RunOnce and the worker's).
	inPass atomic.Int32
	// hmu guards health, the record of ended passes Health reports.
	hmu    sync.Mutex
	health Health

	mu  sync.Mutex
	run *runState

	// citus is citusUnknown until the forms are decided (see UsesCitus);
	// cf holds the Citus forms, filled in for the table.
	citus atomic.Int32
	cf    *citusForms
	// citusPageHook, set by tests only, runs in a Citus batch between its
	// page read and its delete transaction, with the keys it picked.
	citusPageHook func(keys []string)
}

type runState struct {
	cancel   context.CancelFunc
	done     chan struct{}
	stopping bool // guarded by Culler.mu
}

// New returns a Culler over pool, which must reach the database and schema
// the cache uses and allow at least two connections (a pass holds two). The
// pool is never closed by the Culler. Returns an error naming the field when
// the config is invalid.
func New(pool *pgxpool.Pool, cfg *Config) (*Culler, error) {
	if pool == nil {
		return nil, errors.New("culling: pool is nil")
	}
	if n := pool.Config().MaxConns; n < 2 {
		// A pass holds one connection for the lock and one for its
		// batches; with one it would wait on itself until PassTimeout.
		return nil, fmt.Errorf("culling: the pool allows %d connection(s); a pass needs 2", n)
	}
	c := cfg.WithDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	cu := &Culler{
		cfg:    c,
		pool:   pool,
		runner: host + ":" + strconv.Itoa(os.Getpid()),
		nudge:  make(chan struct{}, 1),
	}
	cu.table, cu.state = qualify(c.Schema, cacheTable), qualify(c.Schema, StateTable)
	cu.cf = newCitusForms(cu.table)
	switch c.Citus {
	case CitusOn:
		cu.citus.Store(citusUsed)
	case CitusOff:
		cu.citus.Store(citusUnused)
	}
	return cu, nil
}

func qualify(schema, table string) string {
	if schema == "" {
		return pgx.Identifier{table}.Sanitize()
	}
	return pgx.Identifier{schema, table}.Sanitize()
}

// Config returns a copy of the Culler's config, with defaults filled in.
func (c *Culler) Config() Config { return *c.cfg }

// NoteWrites tells the Culler that n rows were written. Wire it to the
// cache's write hook (dbcache.Config.OnWrite = culler.NoteWrites). It never
// blocks: it adds n to a counter and, once Config.NudgeEvery rows have been
// written since the last pass began counting, wakes a started Culler for a
// pass.
// Before Start and after Stop it only counts.
func (c *Culler) NoteWrites(n int) {
	if n <= 0 || c.cfg.NudgeEvery < 0 {
		return
	}
	if c.pending.Add(int64(n)) >= int64(c.cfg.NudgeEvery) {
		select {
		case c.nudge <- struct{}{}:
		default: // a nudge is already waiting
		}
	}
}

func (c *Culler) nudgeDue() bool {
	return c.cfg.NudgeEvery >= 0 && c.pending.Load() >= int64(c.cfg.NudgeEvery)
}

// Start checks that the cache table is there and that the role may cull
// it, then runs passes in a goroutine until Stop is called or ctx ends, and
// returns. The first pass runs immediately, then one every Config.Interval,
// and one whenever NoteWrites reaches Config.NudgeEvery. Errors of
// individual passes are logged, never returned; Health reports them.
//
// The check is one query, bounded by ctx and, when ctx has no deadline, by
// startCheckTimeout (10 s). It returns ErrTableNotFound (naming the table
// and schema) when the table is missing, ErrNoPrivilege (naming what is
// missing) when the role lacks USAGE on its schema or SELECT, UPDATE or
// DELETE on it, or the database error. Starting a started Culler does
// nothing; a stopped one can be started again. Returns an error if ctx has
// already ended, or if a Stop that timed out is still waiting for the
// worker (call Stop again first).
func (c *Culler) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if running, err := c.startable(); running || err != nil {
		return err
	}
	cctx := ctx
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		cctx, cancel = context.WithTimeout(ctx, startCheckTimeout)
		defer cancel()
	}
	if err := c.check(cctx); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if running, err := c.startableLocked(); running || err != nil {
		return err // another Start won the race
	}
	runCtx, cancel := context.WithCancel(ctx)
	r := &runState{cancel: cancel, done: make(chan struct{})}
	c.run = r
	go c.loop(runCtx, r.done)
	return nil
}

// startable reports whether a worker is running, or why none can start.
func (c *Culler) startable() (running bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.startableLocked()
}

func (c *Culler) startableLocked() (running bool, err error) {
	if c.run == nil {
		return false, nil
	}
	select {
	case <-c.run.done:
		// Stopped, or a Stop timed out earlier but the worker has ended
		// since.
		return false, nil
	default:
	}
	if c.run.stopping {
		return false, errors.New("culling: Start while a timed-out Stop is still waiting for the worker; call Stop again first")
	}
	return true, nil
}

// check is Start's: the table resolves and the role may cull it.
func (c *Culler) check(ctx context.Context) error {
	conn, err := c.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("culling: acquire a connection: %w", err)
	}
	defer conn.Release()
	var (
		exists        bool
		sel, upd, del *bool
		user          string
	)
	_, err = runTx(ctx, conn.Conn(), nil, sqlCheck, []any{c.table}, func(r pgx.Row) error {
		return r.Scan(&exists, &sel, &upd, &del, &user)
	})
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "42501":
		// to_regclass names a schema the role may not use.
		return fmt.Errorf("%w: this role lacks USAGE on schema %q, which holds the cache table (GRANT USAGE ON SCHEMA %s TO the role): %w",
			ErrNoPrivilege, c.cfg.Schema, pgx.Identifier{c.cfg.Schema}.Sanitize(), err)
	case err != nil:
		return fmt.Errorf("culling: check for the cache table: %w", err)
	}
	if !exists {
		if c.cfg.Schema == "" {
			// search_path silently skips schemas the role may not use, so a
			// table that is there but out of reach looks missing.
			var hidden string
			_, err := runTx(ctx, conn.Conn(), nil, sqlHidden, []any{cacheTable}, func(r pgx.Row) error { return r.Scan(&hidden) })
			if err == nil {
				return fmt.Errorf("%w: table %s is in schema %q on the search_path, but role %s lacks USAGE on that schema (GRANT USAGE ON SCHEMA %s TO %s)",
					ErrNoPrivilege, cacheTable, hidden, user, pgx.Identifier{hidden}.Sanitize(), pgx.Identifier{user}.Sanitize())
			}
			if !errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("culling: check for the cache table: %w", err)
			}
			return fmt.Errorf("%w: no table %s on the search_path", ErrTableNotFound, cacheTable)
		}
		return fmt.Errorf("%w: no table %s in schema %q", ErrTableNotFound, cacheTable, c.cfg.Schema)
	}
	if c.cfg.MaxAge > 0 {
		var column, index bool
		if _, err := runTx(ctx, conn.Conn(), nil, sqlCheckAge, []any{c.table}, func(r pgx.Row) error {
			return r.Scan(&column, &index)
		}); err != nil {
			return fmt.Errorf("culling: check for the written_at column: %w", err)
		}
		if !column || !index {
			return fmt.Errorf("%w: Config.MaxAge needs the written_at column and its index (migrations 004 and 005)", ErrMigrationNeeded)
		}
	}
	if err := c.decideCitus(ctx, conn.Conn()); err != nil {
		return err
	}
	var missing []string
	for _, p := range []struct {
		name string
		ok   *bool
	}{{"SELECT", sel}, {"UPDATE", upd}, {"DELETE", del}} {
		if p.ok == nil || !*p.ok {
			missing = append(missing, p.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: role %s lacks %s on %s (GRANT SELECT, UPDATE, DELETE ON %s TO %s; UPDATE is for the row locks)",
			ErrNoPrivilege, user, strings.Join(missing, ", "), c.table, c.table, pgx.Identifier{user}.Sanitize())
	}
	return nil
}

// Stop stops the worker and waits for it to end. A pass in progress stops
// after the statement it is running (a batch of milliseconds; one still
// running after 2 s is cancelled on the server), and releases its lock
// before the worker ends, so once Stop returns nil another culler's pass
// can start at once. Batches already committed stay committed. It is safe
// to call before Start and more than once. Returns ctx.Err() if ctx ends
// first; the worker still ends on its own soon after.
func (c *Culler) Stop(ctx context.Context) error {
	c.mu.Lock()
	r := c.run
	if r != nil {
		r.stopping = true
	}
	c.mu.Unlock()
	if r == nil {
		return nil
	}
	r.cancel()
	select {
	case <-r.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	c.mu.Lock()
	if c.run == r {
		c.run = nil
	}
	c.mu.Unlock()
	return nil
}

func (c *Culler) loop(ctx context.Context, done chan struct{}) {
	defer close(done)
	ticker := time.NewTicker(c.cfg.Interval)
	defer ticker.Stop()
	for {
		res, err := c.RunOnce(ctx)
		if err != nil {
			c.logError(ctx, err)
		}
		// A skipped pass leaves this process's writes uncounted by any
		// pass; the culler that held the lock may have counted before
		// they landed. Try again soon rather than a whole Interval later.
		var retry <-chan time.Time
		if err == nil && res.Skipped && c.nudgeDue() {
			retry = time.After(skipRetryDelay)
		}
		if !c.wait(ctx, ticker.C, retry) {
			return
		}
	}
}

// wait blocks until the next pass is due and reports whether it is (false:
// the worker is stopping).
func (c *Culler) wait(ctx context.Context, tick, retry <-chan time.Time) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case <-tick:
			return true
		case <-retry:
			return true
		case <-c.nudge:
			// A nudge sent before the last pass began counting is stale:
			// that pass has seen those writes.
			if c.nudgeDue() {
				return true
			}
		}
	}
}

func (c *Culler) logError(ctx context.Context, err error) {
	switch {
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		// Stopping; nothing went wrong.
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		c.log(ctx, slog.LevelWarn, "culling.Culler: pass timed out; the next pass continues where it stopped",
			"pass_timeout", c.cfg.PassTimeout, "error", err)
	case ctx.Err() != nil:
		// The worker's context ended mid-pass: also a stop.
	default:
		c.log(ctx, slog.LevelError, "culling.Culler: pass failed", "error", err)
	}
}
