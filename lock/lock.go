package lock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/pgexec"
)

var (
	// ErrLocked is returned by TryAcquire when another owner holds the
	// lock, and (joined with the context's error) by Acquire when its
	// context ends before the lock is granted.
	ErrLocked = errors.New("lock: held by another owner")

	// ErrNotHeld is returned by Refresh, Release, Check and Restore when
	// the owner no longer holds the lock: it was released, its lease ran
	// out by the database's clock, or it was forced free (and perhaps
	// granted to another since). Nothing changes.
	ErrNotHeld = errors.New("lock: not held by this owner (released, lease expired, or forced free)")

	// ErrInvalidName is returned for an empty lock name. A name
	// PostgreSQL cannot store (a NUL byte, invalid UTF-8, too long) is
	// dbcache.ErrInvalidKey.
	ErrInvalidName = errors.New("lock: the lock name is empty")

	// ErrInvalidLease is returned for a lease outside
	// [dbcache.LeaseTTLMin, dbcache.LeaseTTLMax] (so for a lease <= 0),
	// or an owner token that is not one a grant returned. It is
	// dbcache.ErrInvalidLease.
	ErrInvalidLease = dbcache.ErrInvalidLease
)

// Defaults of Config.
const (
	KeyPrefixDefault = "lock"
	PollMinDefault   = 25 * time.Millisecond
	PollMaxDefault   = time.Second
)

// Config configures a Client. A nil *Config means all defaults, and each
// field's zero value is its default.
type Config struct {
	// Schema holds the tables (the pool's search_path when empty), as
	// dbcache.Config.Schema. Defaults to "".
	Schema string

	// KeyPrefix is the prefix of the leases' keys, apart from those of
	// the cache's loaders (whose leases are the cache's entry keys): two
	// Clients with the same KeyPrefix share their locks, as two processes
	// of one application must. Defaults to KeyPrefixDefault.
	KeyPrefix string

	// PollMin and PollMax bound Acquire's waits between attempts: it
	// waits for what the holder's lease has left, jittered, but at least
	// PollMin and at most PollMax, so a waiter sends at most 1/PollMin
	// statements per second (40 by default). Default to PollMinDefault
	// and PollMaxDefault.
	PollMin, PollMax time.Duration

	// OpTimeout bounds each statement when the caller's context has no
	// deadline, as dbcache.Config.OpTimeout. Defaults to
	// dbcache.OpTimeoutDefault.
	OpTimeout time.Duration

	// Citus selects the forms of the grant and of Restore that a Citus
	// cluster routes (docs/scale-out.md#citus), as dbcache.Config.Citus
	// does for the cache: CitusAuto uses them when New finds the citus
	// extension and the leases table in pg_dist_partition; CitusOn
	// always (on plain PostgreSQL they answer as the plain forms do);
	// CitusOff never. Defaults to dbcache.CitusAuto.
	Citus dbcache.CitusMode

	// Logger receives what the client logs (a failed clean-up of a
	// half-made grant), never a lock name. Defaults to slog.Default().
	Logger *slog.Logger
}

// Stats are a Client's counters since New.
type Stats struct {
	// Grants is how many locks it was granted (Acquire, TryAcquire).
	Grants int64
	// Waits is how many Acquire calls found the lock held and waited.
	Waits int64
	// Refusals is how many attempts found the lock held by another owner
	// (each TryAcquire that returned ErrLocked, each attempt of a
	// waiting Acquire).
	Refusals int64
	// Expiries is how many Refresh, Release and Check calls of its locks
	// found the lock no longer held (ErrNotHeld): the lease had run out
	// or been forced free.
	Expiries int64
	// ForcedReleases is how many ForceRelease calls freed a live lock.
	ForcedReleases int64
}

// Client grants locks. It is safe for concurrent use.
type Client struct {
	cache *dbcache.Cache
	pool  *pgxpool.Pool
	q     queries
	// cq is the Citus forms when the client uses them (Config.Citus), nil
	// otherwise.
	cq  *citusQueries
	cfg Config
	// run runs the writes READ COMMITTED whatever the session default
	// (as dbcache's writes run), one round trip each.
	run *pgexec.Runner

	grants, waits, refusals, expiries, forced atomic.Int64
}

// New returns a Client over pool. The schema must be migrated (package
// migrations) through migration 10; otherwise the error matches
// dbcache.ErrNotMigrated. New never closes the pool.
func New(ctx context.Context, pool *pgxpool.Pool, cfg *Config) (*Client, error) {
	if pool == nil {
		return nil, errors.New("lock: pool is nil")
	}
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.KeyPrefix == "" {
		c.KeyPrefix = KeyPrefixDefault
	}
	if c.PollMin == 0 {
		c.PollMin = PollMinDefault
	}
	if c.PollMax == 0 {
		c.PollMax = PollMaxDefault
	}
	if c.OpTimeout == 0 {
		c.OpTimeout = dbcache.OpTimeoutDefault
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	switch {
	case c.PollMin < time.Millisecond:
		return nil, fmt.Errorf("lock: Config.PollMin %v is below 1ms", c.PollMin)
	case c.PollMax < c.PollMin:
		return nil, fmt.Errorf("lock: Config.PollMax %v is below Config.PollMin %v", c.PollMax, c.PollMin)
	case c.OpTimeout < 0:
		return nil, fmt.Errorf("lock: Config.OpTimeout %v is negative", c.OpTimeout)
	}
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{
		Schema: c.Schema, KeyPrefix: c.KeyPrefix, OpTimeout: c.OpTimeout, Logger: c.Logger,
		// Lock names are not memcached keys: only what PostgreSQL
		// cannot store is refused.
		KeyCheck: dbcache.KeyCheckOff,
		Citus:    c.Citus,
	})
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	cl := &Client{cache: cache, pool: pool, q: newQueries(c.Schema), cfg: c}
	bctx, cancel := cl.bound(ctx)
	defer cancel()
	var leases, fences bool
	var isolation string
	if err := pool.QueryRow(bctx, qTables, cl.q.leases, cl.q.fences).Scan(&leases, &fences, &isolation); err != nil {
		_ = cache.Close()
		return nil, fmt.Errorf("lock: check for the tables: %w", err)
	}
	if !leases || !fences {
		_ = cache.Close()
		return nil, fmt.Errorf("lock: %w: the leases table (migration 8) or the fences table (%s, migration 10) is missing: run `dbcache migrate up`", dbcache.ErrSchemaBehind, FencesTableName)
	}
	citus, err := detectCitus(bctx, pool, c.Citus, cl.q.leases)
	if err != nil {
		_ = cache.Close()
		return nil, err
	}
	if citus {
		cl.cq = newCitusQueries(cl.q)
	}
	cl.run = pgexec.New(pool, c.OpTimeout, pgexec.NeedsWrap(isolation))
	return cl, nil
}

// Close releases the Client's resources; its locks stay held until they
// are released or their leases run out. The pool stays open.
func (c *Client) Close() error { return c.cache.Close() }

// Stats returns the Client's counters.
func (c *Client) Stats() Stats {
	return Stats{Grants: c.grants.Load(), Waits: c.waits.Load(), Refusals: c.refusals.Load(),
		Expiries: c.expiries.Load(), ForcedReleases: c.forced.Load()}
}

// Lock is a granted lock: its name, its owner token and its fencing token.
// Its methods are safe for concurrent use, but a Lock is meant for one
// holder at a time.
type Lock struct {
	c     *Client
	name  string
	key   string // the made key of its lease
	owner dbcache.LeaseToken
	fence int64

	// By the database's clock: when the lease was taken, when it ends as
	// far as this process knows, and when Release removed it (tests read
	// them to check grants against each other).
	acquired, expires, released atomic.Pointer[time.Time]
}

// Name is the lock's name.
func (l *Lock) Name() string { return l.name }

// Owner is the lock's owner token: 128 random bits, unique to this grant.
// Restore rebuilds the Lock from it in another process.
func (l *Lock) Owner() dbcache.LeaseToken { return l.owner }

// Fence is the lock's fencing token: 1 for a name's first grant, and
// strictly greater for each later grant of the name, whatever was
// released, culled or cleared between, and across server crashes. Storage
// that keeps the greatest fence it has seen and refuses a write with a
// smaller one refuses a holder whose lease ran out.
func (l *Lock) Fence() int64 { return l.fence }

func (c *Client) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.cfg.OpTimeout)
}

func checkName(name string) error {
	if name == "" {
		return ErrInvalidName
	}
	return nil
}

// made returns name's lease key, validated.
func (c *Client) made(ctx context.Context, name string) (string, error) {
	if err := checkName(name); err != nil {
		return "", err
	}
	k := c.cache.MakeKey(name)
	if err := c.cache.ValidateKey(ctx, k); err != nil {
		return "", err
	}
	return k, nil
}

// TryAcquire takes the lock name for lease, by the database's clock, if no
// live lease holds it: one attempt, two statements (the lease, then its
// fence, committed durably). It returns ErrLocked when another owner
// holds it.
func (c *Client) TryAcquire(ctx context.Context, name string, lease time.Duration) (*Lock, error) {
	k, err := c.made(ctx, name)
	if err != nil {
		return nil, err
	}
	if err := dbcache.CheckLeaseTTL(lease); err != nil {
		return nil, err
	}
	l, _, err := c.try(ctx, name, k, lease)
	return l, err
}

// try is one attempt; on ErrLocked it also returns what the holder's lease
// has left.
func (c *Client) try(ctx context.Context, name, k string, lease time.Duration) (*Lock, time.Duration, error) {
	got, err := c.cache.AcquireLease(ctx, name, lease)
	if err != nil {
		return nil, 0, fmt.Errorf("lock: acquire: %w", err)
	}
	if !got.Acquired {
		c.refusals.Add(1)
		return nil, got.Remaining, ErrLocked
	}
	l := &Lock{c: c, name: name, key: k, owner: got.Token}
	var acquired, expires time.Time
	bctx, cancel := c.bound(ctx)
	if c.cq != nil {
		l.fence, acquired, expires, err = c.citusGrant(bctx, k, got.Token)
	} else {
		err = c.run.WriteRow(bctx, c.q.fence, []any{k, string(got.Token)}, &l.fence, &acquired, &expires)
	}
	cancel()
	if errors.Is(err, pgx.ErrNoRows) {
		// The lease ended between the two statements (shorter than the
		// round trip, or forced free): nothing was granted.
		c.refusals.Add(1)
		return nil, 0, ErrLocked
	}
	if err != nil {
		// The fence may or may not have committed; either way the caller
		// gets no lock, so free the lease rather than hold it to its end.
		c.abandon(ctx, k, got.Token)
		return nil, 0, fmt.Errorf("lock: fence: %w", err)
	}
	l.acquired.Store(&acquired)
	l.expires.Store(&expires)
	c.grants.Add(1)
	return l, 0, nil
}

// abandon releases a lease the caller will never see, bounded by OpTimeout
// even when ctx has ended.
func (c *Client) abandon(ctx context.Context, k string, owner dbcache.LeaseToken) {
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.OpTimeout)
	defer cancel()
	var live bool
	var at time.Time
	if err := c.run.WriteRow(bctx, c.q.release, []any{k, string(owner)}, &live, &at); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		c.cfg.Logger.WarnContext(ctx, "lock: releasing the lease of a failed grant failed; it ends with its lease", "error", err)
	}
}

// Acquire waits for the lock name and takes it for lease, by the
// database's clock. Between attempts it waits for what the holder's lease
// has left (jittered), within [Config.PollMin, Config.PollMax], so it
// sends at most 1/PollMin statements per second while it waits, and holds
// no connection meanwhile. When ctx ends first, while waiting or during
// an attempt, the error matches both ErrLocked and ctx.Err().
func (c *Client) Acquire(ctx context.Context, name string, lease time.Duration) (*Lock, error) {
	k, err := c.made(ctx, name)
	if err != nil {
		return nil, err
	}
	if err := dbcache.CheckLeaseTTL(lease); err != nil {
		return nil, err
	}
	waited := false
	for {
		l, left, err := c.try(ctx, name, k, lease)
		if err != nil && !errors.Is(err, ErrLocked) && ctx.Err() != nil {
			// The context ended during an attempt's statement: as if it
			// had ended while waiting. (An attempt cut short may have
			// taken a lease no one will release: it ends with its
			// lease.)
			return nil, errors.Join(ErrLocked, ctx.Err())
		}
		if !errors.Is(err, ErrLocked) {
			return l, err
		}
		if !waited {
			waited = true
			c.waits.Add(1)
		}
		d := max(c.cfg.PollMin, min(c.cfg.PollMax, time.Duration(float64(left)*(0.5+rand.Float64()/2))))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, errors.Join(ErrLocked, ctx.Err())
		case <-t.C:
		}
	}
}

// Refresh gives the lock a new lease from now, by the database's clock, if
// its owner still holds it; otherwise it returns ErrNotHeld and changes
// nothing (a lock whose lease ran out is never revived, even if no one
// took it since).
func (l *Lock) Refresh(ctx context.Context, lease time.Duration) error {
	if err := dbcache.CheckLeaseTTL(lease); err != nil {
		return err
	}
	ctx, cancel := l.c.bound(ctx)
	defer cancel()
	var expires time.Time
	err := l.c.run.WriteRow(ctx, l.c.q.refresh, []any{l.key, string(l.owner), lease.Microseconds()}, &expires)
	if errors.Is(err, pgx.ErrNoRows) {
		l.c.expiries.Add(1)
		return ErrNotHeld
	}
	if err != nil {
		return fmt.Errorf("lock: refresh: %w", err)
	}
	l.expires.Store(&expires)
	return nil
}

// Release frees the lock if its owner still holds it; otherwise it returns
// ErrNotHeld and frees nothing (a lock granted to another owner since is
// left alone).
func (l *Lock) Release(ctx context.Context) error {
	ctx, cancel := l.c.bound(ctx)
	defer cancel()
	var (
		live bool
		at   time.Time
	)
	err := l.c.run.WriteRow(ctx, l.c.q.release, []any{l.key, string(l.owner)}, &live, &at)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && !live) {
		l.c.expiries.Add(1)
		return ErrNotHeld
	}
	if err != nil {
		return fmt.Errorf("lock: release: %w", err)
	}
	l.released.Store(&at)
	return nil
}

// Check verifies, inside the caller's transaction tx, that the owner holds
// the lock now, and keeps it so for the rest of tx: it locks the lease's
// row (FOR SHARE), so no other owner can be granted the lock until tx
// ends, whatever the lease has left. Writes made in tx after a Check that
// returned nil therefore commit before any later grant of the name, which
// is stronger than fencing when the protected data lives in the same
// database. It returns ErrNotHeld when the owner no longer holds it. A
// Refresh of the lock waits for tx too.
func (l *Lock) Check(ctx context.Context, tx pgx.Tx) error {
	if tx == nil {
		return errors.New("lock: check: tx is nil")
	}
	var n int
	if err := tx.QueryRow(ctx, l.c.q.check, l.key, string(l.owner)).Scan(&n); err != nil {
		return fmt.Errorf("lock: check: %w", err)
	}
	if n == 0 {
		l.c.expiries.Add(1)
		return ErrNotHeld
	}
	return nil
}

// Restore rebuilds, in any process, the Lock that owner (a Lock's Owner)
// holds on name, with its fencing token, if its lease is still live by the
// database's clock; otherwise it returns ErrNotHeld.
func (c *Client) Restore(ctx context.Context, name string, owner dbcache.LeaseToken) (*Lock, error) {
	k, err := c.made(ctx, name)
	if err != nil {
		return nil, err
	}
	if err := dbcache.CheckLeaseToken(owner); err != nil {
		return nil, err
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	l := &Lock{c: c, name: name, key: k, owner: owner}
	var acquired, expires time.Time
	if c.cq != nil {
		l.fence, acquired, expires, err = c.citusRestore(ctx, k, owner)
	} else {
		err = c.run.WriteRow(ctx, c.q.restore, []any{k, string(owner)}, &l.fence, &acquired, &expires)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotHeld
	}
	if err != nil {
		return nil, fmt.Errorf("lock: restore: %w", err)
	}
	l.acquired.Store(&acquired)
	l.expires.Store(&expires)
	return l, nil
}

// ForceRelease frees the lock name whoever holds it, for operators (a
// holder known to be gone), and reports whether a live lease was removed.
// The holder's later Refresh, Release and Check return ErrNotHeld; its
// fencing token stays below every later grant's.
func (c *Client) ForceRelease(ctx context.Context, name string) (bool, error) {
	k, err := c.made(ctx, name)
	if err != nil {
		return false, err
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	var live bool
	err = c.run.WriteRow(ctx, c.q.forceRelease, []any{k}, &live)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("lock: force release: %w", err)
	}
	if live {
		c.forced.Add(1)
	}
	return live, nil
}

// LatestFence returns the fencing token of name's latest grant, 0 if it
// was never granted: what storage that fences by name can compare with.
func (c *Client) LatestFence(ctx context.Context, name string) (int64, error) {
	k, err := c.made(ctx, name)
	if err != nil {
		return 0, err
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	var f int64
	if err := c.pool.QueryRow(ctx, c.q.latestFence, k).Scan(&f); err != nil {
		return 0, fmt.Errorf("lock: latest fence: %w", err)
	}
	return f, nil
}
