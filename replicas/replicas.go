package replicas

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
)

const (
	// MaxLagDefault is Config.MaxLag's default.
	MaxLagDefault = time.Second
	// RefreshIntervalDefault is Config.RefreshInterval's default.
	RefreshIntervalDefault = 50 * time.Millisecond
)

// Config configures a Cache. The zero value (or nil) is valid.
type Config struct {
	// Cache configures the caches New builds over the primary's pool and
	// each standby's: the one configuration of the cache, as for
	// dbcache.New (the same key prefix, version, key function and schema
	// on every server, or the standbys would read other keys). On the
	// standbys' caches FailOpen, OnWrite and Tracer are left unset (a
	// standby's failure is the router's to handle, by reading the
	// primary) and OpTimeout is this Config's. Defaults to dbcache's
	// defaults.
	Cache *dbcache.Config

	// Logger gets a line when a standby stops or starts serving reads.
	// Defaults to slog.Default().
	Logger *slog.Logger

	// MaxLag is how stale a read from a standby may be: a standby serves
	// a read only if it has replayed every write the primary had
	// acknowledged MaxLag before the read began, as measured by this
	// process's clock alone. -1 sends every read to the primary. Defaults
	// to MaxLagDefault.
	MaxLag time.Duration

	// OpTimeout bounds each position sample, and a standby whose last
	// successful sample began more than OpTimeout ago serves no read.
	// Defaults to dbcache.OpTimeoutDefault.
	OpTimeout time.Duration

	// RefreshInterval is how often the primary's WAL position and each
	// standby's replay position are sampled while reads arrive. A MaxLag
	// under about two intervals sends most reads to the primary. Defaults
	// to RefreshIntervalDefault.
	RefreshInterval time.Duration
}

func (c *Config) withDefaults() (Config, error) {
	var cfg Config
	if c != nil {
		cfg = *c
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Cache == nil {
		cfg.Cache = &dbcache.Config{}
	}
	for _, f := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
		off  bool
	}{
		{"MaxLag", &cfg.MaxLag, MaxLagDefault, true},
		{"OpTimeout", &cfg.OpTimeout, dbcache.OpTimeoutDefault, false},
		{"RefreshInterval", &cfg.RefreshInterval, RefreshIntervalDefault, false},
	} {
		switch {
		case *f.v == 0:
			*f.v = f.def
		case *f.v == -1 && f.off:
		case *f.v < 0:
			return cfg, fmt.Errorf("replicas: Config.%s is %v: want a positive duration, or 0 for the default", f.name, *f.v)
		}
	}
	return cfg, nil
}

// Stats counts a Cache's reads and samples since New.
type Stats struct {
	// Decisions counts the reads routed: one per read operation.
	Decisions uint64
	// StandbyReads counts reads a standby answered; PrimaryReads those the
	// primary answered, fallbacks included.
	StandbyReads, PrimaryReads uint64
	// Fallbacks counts standby reads that failed with a transient error
	// and were run again on the primary; RecoveryConflicts counts those
	// among them that the standby cancelled for a recovery conflict
	// (SQLSTATE 40001).
	Fallbacks, RecoveryConflicts uint64
	// Samples counts position samples taken; SampleErrors those that
	// failed.
	Samples, SampleErrors uint64
}

// Cache routes a cache's reads between a primary and its hot standbys. It
// implements dbcache.Store, TTLReader, KeyLister, Versioner, KeyMaker,
// Loader and io.Closer. It is safe for concurrent use. A Cache value is a
// view: WithVersion returns another over the same servers and state.
type Cache struct {
	s        *state
	primary  *dbcache.Cache
	standbys []*dbcache.Cache // views, by the index of s.standbys
}

// state is what every view of a Cache shares.
type state struct {
	cfg      Config
	epoch    time.Time // now() is the monotonic time since it
	pool     *pgxpool.Pool
	standbys []*standby

	// wrote is now() when the last write through the cache ended: a
	// standby serves a read only once it has replayed what the primary
	// had written after that (read-your-writes).
	wrote atomic.Int64
	// read is set by each read and cleared by each tick: an idle cache
	// samples nothing.
	read atomic.Bool
	next atomic.Uint32 // round robin over the usable standbys

	// samples are the primary's recent WAL positions, oldest first; only
	// the sampler goroutine touches them.
	samples []sample

	decisions, standbyReads, primaryReads, fallbacks, conflicts atomic.Uint64
	sampled, sampleErrors                                       atomic.Uint64

	closeOnce sync.Once
	stop      context.CancelFunc
	done      chan struct{}
}

// sample is the primary's WAL insert position, read by a statement sent
// at time at (now()): every write the primary acknowledged before at
// lies before lsn.
type sample struct {
	at  int64
	lsn int64
}

// samplesKept bounds the primary's samples kept; at the default interval
// they span 6.4 s, past MaxLagDefault.
const samplesKept = 128

// standby is one standby's cache and what the sampler last learnt of it.
type standby struct {
	name  string // host:port, for logs
	pool  *pgxpool.Pool
	cache *dbcache.Cache

	// covered is the send time (now()) of the newest primary sample the
	// standby had replayed at its last sample: it holds every write the
	// primary acknowledged before covered. -1: none yet.
	covered atomic.Int64
	// sampledAt is the send time of the last successful sample; downAt
	// the time of the last failure (a read's or a sample's). The standby
	// serves reads only while sampledAt > downAt.
	sampledAt, downAt atomic.Int64
	serving           atomic.Bool // for the log lines only
}

// New returns a Cache over the primary's pool and the standbys' (each a
// hot standby streaming from the primary, directly or in cascade): it
// builds a dbcache.Cache over each with cfg.Cache, which returns
// ErrNotMigrated if the table is missing. New never closes the pools it
// is given. Writes and read-modify-writes always go to the primary. A
// standby needs nothing beyond what a dbcache read needs: the positions
// come from pg_current_wal_insert_lsn() and pg_last_wal_replay_lsn(),
// which any role may call.
func New(ctx context.Context, primary *pgxpool.Pool, standbys []*pgxpool.Pool, cfg *Config) (*Cache, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if primary == nil {
		return nil, errors.New("replicas: the primary's pool is nil")
	}
	pc, err := dbcache.New(ctx, primary, c.Cache)
	if err != nil {
		return nil, fmt.Errorf("replicas: primary: %w", err)
	}
	s := &state{cfg: c, epoch: time.Now(), pool: primary, done: make(chan struct{})}
	cache := &Cache{s: s, primary: pc}
	scfg := *c.Cache
	scfg.FailOpen, scfg.OnWrite, scfg.Tracer, scfg.OpTimeout = false, nil, nil, c.OpTimeout
	fail := func(err error) (*Cache, error) {
		_ = pc.Close()
		for _, sb := range s.standbys {
			_ = sb.cache.Close()
		}
		return nil, err
	}
	for i, pool := range standbys {
		if pool == nil {
			return fail(fmt.Errorf("replicas: standby %d: the pool is nil", i))
		}
		sc, err := dbcache.New(ctx, pool, &scfg)
		if err != nil {
			return fail(fmt.Errorf("replicas: standby %d: %w", i, err))
		}
		cc := pool.Config().ConnConfig
		sb := &standby{name: fmt.Sprintf("%s:%d", cc.Host, cc.Port), pool: pool, cache: sc}
		sb.covered.Store(-1)
		sb.sampledAt.Store(-1)
		s.standbys = append(s.standbys, sb)
		cache.standbys = append(cache.standbys, sc)
	}
	s.wrote.Store(-1)
	sctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	go s.run(sctx)
	return cache, nil
}

// now is the time since the state was made, by the monotonic clock.
func (s *state) now() int64 { return int64(time.Since(s.epoch)) }

// Primary returns the primary's cache, for what only the primary can do
// (WithTx, GetWithSnapshot). Writes made through it are not this Cache's
// own: its reads see them within MaxLag, not at once.
func (c *Cache) Primary() *dbcache.Cache { return c.primary }

// WithVersion returns a view of the cache at another default key version
// (Django's version argument), sharing its servers and state.
func (c *Cache) WithVersion(version int) *Cache {
	v := &Cache{s: c.s, primary: c.primary.WithVersion(version)}
	for _, sc := range c.standbys {
		v.standbys = append(v.standbys, sc.WithVersion(version))
	}
	return v
}

// Version returns the view's default key version.
func (c *Cache) Version() int { return c.primary.Version() }

// Stats returns the cache's counts so far.
func (c *Cache) Stats() Stats {
	s := c.s
	return Stats{
		Decisions: s.decisions.Load(), StandbyReads: s.standbyReads.Load(), PrimaryReads: s.primaryReads.Load(),
		Fallbacks: s.fallbacks.Load(), RecoveryConflicts: s.conflicts.Load(),
		Samples: s.sampled.Load(), SampleErrors: s.sampleErrors.Load(),
	}
}

// Close stops the sampler and closes the caches New built (every later
// operation returns dbcache.ErrClosed), not the pools. Calling it again is
// a no-op.
func (c *Cache) Close() error {
	s := c.s
	s.closeOnce.Do(func() {
		s.stop()
		<-s.done
		_ = c.primary.Close()
		for _, sb := range s.standbys {
			_ = sb.cache.Close()
		}
	})
	return nil
}

// pick returns the index of a standby to read from now, or -1 for the
// primary. It costs a clock read and a few atomic loads: no round trip.
func (c *Cache) pick() int {
	s := c.s
	s.decisions.Add(1)
	if !s.read.Load() {
		s.read.Store(true)
	}
	if len(s.standbys) == 0 || s.cfg.MaxLag < 0 {
		return -1
	}
	now := s.now()
	// Writes before New were acknowledged before time 0: a standby covers
	// them only once it covers a sample (covered >= 0).
	need := max(now-int64(s.cfg.MaxLag), s.wrote.Load(), 0)
	n := len(s.standbys)
	first := int(s.next.Add(1))
	for i := range n {
		j := (first + i) % n
		if s.standbys[j].usable(now, need, int64(s.cfg.OpTimeout)) {
			return j
		}
	}
	return -1
}

// usable reports whether the standby may serve a read decided at now that
// must see every write acknowledged before need.
func (sb *standby) usable(now, need, opTimeout int64) bool {
	at := sb.sampledAt.Load()
	return at > sb.downAt.Load() && now-at <= opTimeout && sb.covered.Load() >= need
}

// markDown stops the standby serving reads until a sample sent after now
// succeeds.
func (s *state) markDown(sb *standby, why error) {
	now := s.now()
	for {
		old := sb.downAt.Load()
		if old >= now || sb.downAt.CompareAndSwap(old, now) {
			break
		}
	}
	if sb.serving.Swap(false) {
		s.cfg.Logger.Warn("replicas: standby stops serving reads", "standby", sb.name, "error", why)
	}
}

// standbyCtx bounds a standby read by OpTimeout when the caller's
// deadline is later: the standby cache applies OpTimeout itself only to a
// context without one. A context without a deadline costs nothing here.
func (c *Cache) standbyCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if d, ok := ctx.Deadline(); ok && time.Until(d) > c.s.cfg.OpTimeout {
		return context.WithTimeout(ctx, c.s.cfg.OpTimeout)
	}
	return ctx, noop
}

func noop() {}

// fallBack reports whether a standby read's error sends the read to the
// primary: a transient failure (the standby down, slow, or cancelling the
// read for a recovery conflict) while the caller's context lives. It
// counts it, and a failure other than a recovery conflict takes the
// standby out of service until it answers a sample again.
func (c *Cache) fallBack(ctx context.Context, sb int, err error) bool {
	if err == nil || errors.Is(err, dbcache.ErrMiss) || ctx.Err() != nil || !dbcache.IsTransient(err) {
		if err == nil || errors.Is(err, dbcache.ErrMiss) {
			c.s.standbyReads.Add(1)
		}
		return false
	}
	c.s.fallbacks.Add(1)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "40001" {
		c.s.conflicts.Add(1)
	} else {
		c.s.markDown(c.s.standbys[sb], err)
	}
	return true
}

// wrote records the end of a write: reads after it see it.
func (c *Cache) wrote() {
	s := c.s
	now := s.now()
	for {
		old := s.wrote.Load()
		if old >= now || s.wrote.CompareAndSwap(old, now) {
			return
		}
	}
}

// Get returns the value stored under key, or dbcache.ErrMiss, from a
// standby within the lag bound or else the primary.
func (c *Cache) Get(ctx context.Context, key string) ([]byte, error) {
	if i := c.pick(); i >= 0 {
		sctx, cancel := c.standbyCtx(ctx)
		v, err := c.standbys[i].Get(sctx, key)
		cancel()
		if !c.fallBack(ctx, i, err) {
			return v, err
		}
	}
	c.s.primaryReads.Add(1)
	return c.primary.Get(ctx, key)
}

// GetMany returns the live entries among keys, read as Get.
func (c *Cache) GetMany(ctx context.Context, keys []string) (map[string][]byte, error) {
	if i := c.pick(); i >= 0 {
		sctx, cancel := c.standbyCtx(ctx)
		v, err := c.standbys[i].GetMany(sctx, keys)
		cancel()
		if !c.fallBack(ctx, i, err) {
			return v, err
		}
	}
	c.s.primaryReads.Add(1)
	return c.primary.GetMany(ctx, keys)
}

// HasKey reports whether key has a live entry, read as Get.
func (c *Cache) HasKey(ctx context.Context, key string) (bool, error) {
	if i := c.pick(); i >= 0 {
		sctx, cancel := c.standbyCtx(ctx)
		v, err := c.standbys[i].HasKey(sctx, key)
		cancel()
		if !c.fallBack(ctx, i, err) {
			return v, err
		}
	}
	c.s.primaryReads.Add(1)
	return c.primary.HasKey(ctx, key)
}

// GetWithTTL is Get that also returns the entry's remaining lifetime, by
// the clock of the server that answered.
func (c *Cache) GetWithTTL(ctx context.Context, key string) ([]byte, dbcache.Timeout, error) {
	if i := c.pick(); i >= 0 {
		sctx, cancel := c.standbyCtx(ctx)
		v, t, err := c.standbys[i].GetWithTTL(sctx, key)
		cancel()
		if !c.fallBack(ctx, i, err) {
			return v, t, err
		}
	}
	c.s.primaryReads.Add(1)
	return c.primary.GetWithTTL(ctx, key)
}

// TTL returns the remaining lifetime of key's live entry, read as
// GetWithTTL.
func (c *Cache) TTL(ctx context.Context, key string) (dbcache.Timeout, error) {
	if i := c.pick(); i >= 0 {
		sctx, cancel := c.standbyCtx(ctx)
		t, err := c.standbys[i].TTL(sctx, key)
		cancel()
		if !c.fallBack(ctx, i, err) {
			return t, err
		}
	}
	c.s.primaryReads.Add(1)
	return c.primary.TTL(ctx, key)
}

// Keys returns the caller keys of the live entries that start with
// prefix, in byte order, from a standby within the lag bound or else the
// primary. A standby that fails mid-listing hands over to the primary,
// which goes on after the last key yielded.
func (c *Cache) Keys(ctx context.Context, prefix string) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		last, yielded := "", false
		if i := c.pick(); i >= 0 {
			var failed error
			for k, err := range c.standbys[i].Keys(ctx, prefix) {
				if err != nil {
					failed = err
					break
				}
				if !yield(k, nil) {
					c.s.standbyReads.Add(1)
					return
				}
				last, yielded = k, true
			}
			if !c.fallBack(ctx, i, failed) {
				if failed != nil {
					yield("", failed)
				}
				return
			}
		}
		c.s.primaryReads.Add(1)
		for k, err := range c.primary.Keys(ctx, prefix) {
			if err == nil && yielded && k <= last {
				continue
			}
			if !yield(k, err) || err != nil {
				return
			}
		}
	}
}
