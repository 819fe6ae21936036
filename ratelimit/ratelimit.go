package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/internal/pgexec"
)

const (
	// TableName is the table migration 006 creates.
	TableName = "dbcache_rate_limits"

	// OpTimeoutDefault is the default for Config.OpTimeout: a check takes
	// well under a millisecond on a healthy server; five seconds is long
	// enough that no working server trips it, short enough that a server
	// which stopped answering costs a request seconds, as dbcache's.
	OpTimeoutDefault = 5 * time.Second

	// MaxKeyBytes is the longest stored key (Config.KeyPrefix and the
	// caller's key together), in bytes, as dbcache's: PostgreSQL's btree
	// refuses entries of more than about 2700 bytes.
	MaxKeyBytes = 2048

	// MaxSpan is the longest Burst × T a Limit may have (T its emission
	// interval, Period / Rate rounded up to a whole nanosecond): 2^61 ns,
	// about 73 years, so that no sum the check computes can overflow a
	// bigint for centuries.
	MaxSpan = time.Duration(1 << 61)

	// SweepGraceDefault is Sweep's default grace: rows whose time passed
	// more than an hour ago are removed.
	SweepGraceDefault = time.Hour

	// SweepGraceMin is the smallest grace Sweep accepts (see Sweep).
	SweepGraceMin = time.Minute

	// sweepBatch is the most rows one statement of Sweep walks.
	sweepBatch = 1000
)

var (
	// ErrInvalidKey is returned for a key the table cannot hold: empty, a
	// NUL byte, invalid UTF-8, or more than MaxKeyBytes with the prefix.
	// Nothing is read or written. The error never quotes the key.
	ErrInvalidKey = errors.New("ratelimit: invalid key")

	// ErrInvalidLimit is returned for a Limit that bounds nothing (Rate or
	// Period not positive, Burst negative, Burst × T beyond MaxSpan) and for
	// AllowN's n below 0 or above the Burst (such a check could never be
	// admitted). Nothing is read or written.
	ErrInvalidLimit = errors.New("ratelimit: invalid limit")

	// ErrNotMigrated is returned by New when the rate-limit table does not
	// exist: apply the migrations (006) first.
	ErrNotMigrated = errors.New("ratelimit: table dbcache_rate_limits not found (apply the migrations)")
)

// Limit is a rate: Rate units per Period, with bursts of up to Burst units.
// One key should always be checked with the same Limit: the state is a
// time, and a key checked under two Limits is bounded by neither.
type Limit struct {
	// Rate is how many units are admitted per Period in the long run. At
	// least 1.
	Rate int

	// Period is the time Rate is counted over. Positive.
	Period time.Duration

	// Burst is the most units admitted at once from a key's full state,
	// and the most a single AllowN may ask for. 0 means Rate. Burst 1
	// makes the limit a strict sliding window: at most Rate units in any
	// window of length Period (docs/ratelimit.md).
	Burst int
}

// PerSecond is rate units a second, in bursts of up to rate.
func PerSecond(rate int) Limit { return Limit{Rate: rate, Period: time.Second, Burst: rate} }

// PerMinute is rate units a minute, in bursts of up to rate.
func PerMinute(rate int) Limit { return Limit{Rate: rate, Period: time.Minute, Burst: rate} }

// PerHour is rate units an hour, in bursts of up to rate.
func PerHour(rate int) Limit { return Limit{Rate: rate, Period: time.Hour, Burst: rate} }

// String describes the limit ("10 per 1m0s, burst 10").
func (l Limit) String() string {
	return fmt.Sprintf("%d per %s, burst %d", l.Rate, l.Period, l.burst())
}

func (l Limit) burst() int {
	if l.Burst == 0 {
		return l.Rate
	}
	return l.Burst
}

// Interval is the limit's emission interval T: Period / Rate rounded up to
// a whole nanosecond, the time one unit takes to come back. The rounding
// only ever makes the limit stricter. It returns 0 for an invalid limit.
func (l Limit) Interval() time.Duration {
	if l.Rate <= 0 || l.Period <= 0 {
		return 0
	}
	t := l.Period / time.Duration(l.Rate)
	if l.Period%time.Duration(l.Rate) != 0 {
		t++
	}
	return t
}

// params returns the check's T and span (Burst × T), or an error naming
// what is wrong.
func (l Limit) params() (t, span int64, err error) {
	switch {
	case l.Rate <= 0:
		return 0, 0, fmt.Errorf("%w: Rate %d is not positive", ErrInvalidLimit, l.Rate)
	case l.Period <= 0:
		return 0, 0, fmt.Errorf("%w: Period %s is not positive", ErrInvalidLimit, l.Period)
	case l.Burst < 0:
		return 0, 0, fmt.Errorf("%w: Burst %d is negative", ErrInvalidLimit, l.Burst)
	}
	t = int64(l.Interval())
	b := int64(l.burst())
	if b > int64(MaxSpan)/t {
		return 0, 0, fmt.Errorf("%w: Burst × Period / Rate is beyond %s", ErrInvalidLimit, MaxSpan)
	}
	return t, b * t, nil
}

// Result is what a check found.
type Result struct {
	// Allowed says whether the check's units were admitted (and counted).
	Allowed bool

	// Remaining is how many units a check could take right after this
	// one, as the state this check read shows.
	Remaining int

	// RetryAfter, when Allowed is false, is how long after At the same
	// check could first be admitted, as the state this check read shows:
	// the state only ever moves later, so no such check is admitted
	// sooner, and one made then is admitted unless other checks took the
	// units first. 0 when Allowed. A check that finds units free and
	// loses them to a concurrent check runs once more on the new state;
	// if it loses them again, it returns Allowed false with RetryAfter
	// and Remaining 0: retry at once.
	RetryAfter time.Duration

	// ResetAfter is how long after At the key is back to its full Burst if
	// nothing more is admitted, as the state this check read shows.
	ResetAfter time.Duration

	// At is the database clock's reading the check was decided at: the
	// time the bound of docs/ratelimit.md counts admissions by.
	At time.Time
}

// Config configures a Limiter. A nil *Config means all defaults.
type Config struct {
	// FastCommit makes every admission (and Reset) commit with
	// synchronous_commit off, set inside the statement itself, as
	// dbcache.Config.FastCommit does: a check returns before its WAL
	// record is flushed. If the server crashes, admissions acknowledged
	// in the last moments before it (PostgreSQL documents at most three
	// times wal_writer_delay, 600 ms by default) can be forgotten, and
	// the key admits those units again: docs/ratelimit.md says exactly
	// how far over the bound that can go. A denial writes nothing either
	// way. Defaults to false: an acknowledged admission survives a crash.
	FastCommit bool

	// KeyPrefix is put before every key, to keep limiters sharing the table
	// apart ("login:", "api:"). Defaults to "".
	KeyPrefix string

	// Name names the limiter to its Tracer (a metric label, say). It is
	// the application's name for the limiter, never a key. Defaults to "".
	Name string

	// OpTimeout bounds every round trip a call makes when the caller's
	// context has no deadline of its own (a context with a deadline is
	// used as it is), so no check hangs on a server that stops answering.
	// -1 means no bound beyond the caller's context. Defaults to
	// OpTimeoutDefault.
	OpTimeout time.Duration

	// Schema is the schema of the rate-limit table. Defaults to "", which
	// resolves the table through each connection's search_path (behind
	// PgBouncer in transaction pooling, name the schema here).
	Schema string

	// Tracer sees every check that reached the database (its Name, Limit,
	// n, Result or error and duration; never its key). It runs on the
	// caller's goroutine after the check and must not block; a panic in it
	// reaches the caller. Defaults to nil.
	Tracer Tracer
}

// Tracer receives each check's outcome, for metrics
// (prommetrics.Collector implements it).
type Tracer interface {
	TraceCheck(ctx context.Context, c CheckEnd)
}

// CheckEnd is one check, as a Tracer sees it. It carries no key.
type CheckEnd struct {
	// Name is Config.Name.
	Name string
	// Limit and N are what was asked.
	Limit Limit
	N     int
	// Result is the check's result; zero when Err is set.
	Result Result
	// Err is the check's error: the admission may or may not have been
	// counted.
	Err error
	// Duration is the check's wall time.
	Duration time.Duration
}

// Limiter checks rate limits kept in the database, shared by every process
// that uses the table. It is safe for concurrent use.
type Limiter struct {
	cfg  Config
	run  *pgexec.Runner
	stmt statements
}

// New returns a Limiter over pool, whose database must have migration 006
// applied (ErrNotMigrated otherwise). It reads the session's default
// isolation, in one round trip bounded by OpTimeout; the pool stays the
// caller's.
func New(ctx context.Context, pool *pgxpool.Pool, cfg *Config) (*Limiter, error) {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if pool == nil {
		return nil, errors.New("ratelimit: New needs a pool")
	}
	if c.OpTimeout == 0 {
		c.OpTimeout = OpTimeoutDefault
	}
	var errs []error
	if !pgexec.ValidSchema(c.Schema) {
		errs = append(errs, fmt.Errorf("ratelimit: Config.Schema %q is not a valid schema name (letters, digits, _ and $, at most 63)", c.Schema))
	}
	if c.OpTimeout < -1 {
		errs = append(errs, fmt.Errorf("ratelimit: Config.OpTimeout %s is negative (-1 means no bound)", c.OpTimeout))
	}
	if p := pgexec.TextProblem(c.KeyPrefix); p != "" {
		errs = append(errs, fmt.Errorf("ratelimit: Config.KeyPrefix has %s", p))
	}
	if len(c.KeyPrefix) >= MaxKeyBytes {
		errs = append(errs, fmt.Errorf("ratelimit: Config.KeyPrefix is %d bytes, leaving no room for keys (MaxKeyBytes %d)", len(c.KeyPrefix), MaxKeyBytes))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	table := pgexec.Qualify(c.Schema, TableName)
	exists, iso, err := pgexec.TableExists(ctx, pool, table, c.OpTimeout)
	if err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	if !exists {
		return nil, ErrNotMigrated
	}
	return &Limiter{cfg: c, run: pgexec.New(pool, c.OpTimeout, pgexec.NeedsWrap(iso)), stmt: newStatements(table, c.FastCommit)}, nil
}

// Allow checks one unit of key against limit: AllowN(ctx, key, limit, 1).
func (l *Limiter) Allow(ctx context.Context, key string, limit Limit) (Result, error) {
	return l.AllowN(ctx, key, limit, 1)
}

// AllowN checks n units of key against limit and, if the limit admits them
// all now, counts them: one statement, atomic, correct under any
// interleaving of any number of processes, by the database's clock. n = 0
// reads the state and counts nothing. An n above the limit's Burst, or
// below 0, is ErrInvalidLimit; a bad key ErrInvalidKey; neither reads or
// writes anything.
//
// On an error (a lost connection, a timeout) the units may or may not have
// been counted: treat the check as not admitted, never as admitted.
func (l *Limiter) AllowN(ctx context.Context, key string, limit Limit, n int) (Result, error) {
	t, span, err := limit.params()
	if err != nil {
		return Result{}, err
	}
	if n < 0 || n > limit.burst() {
		return Result{}, fmt.Errorf("%w: n %d is outside 0..Burst (%d)", ErrInvalidLimit, n, limit.burst())
	}
	k, err := l.key(key)
	if err != nil {
		return Result{}, err
	}
	start := time.Now()
	res, err := l.check(ctx, k, t, span, limit.burst(), n)
	if l.cfg.Tracer != nil {
		l.cfg.Tracer.TraceCheck(ctx, CheckEnd{Name: l.cfg.Name, Limit: limit, N: n, Result: res, Err: err, Duration: time.Since(start)})
	}
	return res, err
}

func (l *Limiter) check(ctx context.Context, key string, t, span int64, burst, n int) (Result, error) {
	var now, tat0 int64
	if n == 0 {
		if err := l.run.Read(ctx, l.stmt.peek, []any{key}, &now, &tat0); err != nil {
			return Result{}, fmt.Errorf("ratelimit: check: %w", err)
		}
		return Result{Allowed: true, Remaining: remaining(now+span-tat0, t, burst), ResetAfter: time.Duration(tat0 - now), At: at(now)}, nil
	}
	inc := int64(n) * t
	for attempt := 0; ; attempt++ {
		var tatNew *int64
		if err := l.run.WriteRow(ctx, l.stmt.check, []any{key, inc, span}, &now, &tat0, &tatNew); err != nil {
			return Result{}, fmt.Errorf("ratelimit: check: %w", err)
		}
		switch {
		case tatNew != nil: // admitted
			return Result{Allowed: true, Remaining: remaining(now+span-*tatNew, t, burst), ResetAfter: time.Duration(*tatNew - now), At: at(now)}, nil
		case tat0+inc-span > now: // denied by the state read
			return Result{Remaining: remaining(now+span-tat0, t, burst), RetryAfter: time.Duration(tat0 + inc - span - now), ResetAfter: time.Duration(tat0 - now), At: at(now)}, nil
		case attempt == 0:
			// The state read admitted the check, the row's newest version
			// did not: a concurrent check took the units first. The
			// statement changed nothing, so run it once more, to answer
			// from the new state.
		default:
			return Result{ResetAfter: time.Duration(tat0 - now), At: at(now)}, nil
		}
	}
}

// remaining is how many whole intervals t fit in d, at most burst (more
// only from a crafted row).
func remaining(d, t int64, burst int) int {
	if d <= 0 {
		return 0
	}
	return int(min(d/t, int64(burst)))
}

func at(ns int64) time.Time { return time.Unix(0, ns).UTC() }

// key validates key and returns it with the prefix.
func (l *Limiter) key(key string) (string, error) {
	if key == "" {
		return "", fmt.Errorf("%w: empty", ErrInvalidKey)
	}
	if p := pgexec.TextProblem(key); p != "" {
		return "", fmt.Errorf("%w: it has %s", ErrInvalidKey, p)
	}
	k := l.cfg.KeyPrefix + key
	if len(k) > MaxKeyBytes {
		return "", fmt.Errorf("%w: %d bytes with the prefix, more than MaxKeyBytes (%d)", ErrInvalidKey, len(k), MaxKeyBytes)
	}
	return k, nil
}

// Reset forgets key's state: its next check finds the full Burst. It is
// for an operator's or a test's use (a user who proved who they are); it
// lets a whole burst through again, outside the bound.
func (l *Limiter) Reset(ctx context.Context, key string) error {
	k, err := l.key(key)
	if err != nil {
		return err
	}
	if _, err := l.run.Exec(ctx, l.stmt.reset, k); err != nil {
		return fmt.Errorf("ratelimit: reset: %w", err)
	}
	return nil
}

// Sweep removes the rows of every key (of every prefix: the table's)
// whose state passed more than grace ago, so the table holds only keys
// checked lately; run it now and then (every few minutes, from one process
// or several). A removed row says nothing a missing row does not, so
// Sweep changes no check's answer, provided no check is held up for longer
// than grace between its clock reading and its row (docs/ratelimit.md: a
// stalled backend; grace is an hour by default for that reason). It walks
// the table in batches of at most 1000 rows, each one statement bounded by
// Config.OpTimeout, never waits for a row an admission holds, and returns
// how many rows it removed. grace 0 means SweepGraceDefault; below
// SweepGraceMin it is ErrInvalidLimit.
func (l *Limiter) Sweep(ctx context.Context, grace time.Duration) (int64, error) {
	if grace == 0 {
		grace = SweepGraceDefault
	}
	if grace < SweepGraceMin {
		return 0, fmt.Errorf("%w: Sweep's grace %s is below SweepGraceMin (%s)", ErrInvalidLimit, grace, SweepGraceMin)
	}
	var total int64
	after := ""
	for {
		var walked, deleted int64
		var last *string
		if err := l.run.WriteRow(ctx, l.stmt.sweep, []any{after, sweepBatch, int64(grace)}, &walked, &last, &deleted); err != nil {
			return total, fmt.Errorf("ratelimit: sweep: %w", err)
		}
		total += deleted
		if walked < sweepBatch || last == nil {
			return total, nil
		}
		after = *last
	}
}
