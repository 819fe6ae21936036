package nearcachev0

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"iter"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/singleflight"

	"github.com/dbcache/dbcache/dbcache"
)

// Cache is a near cache: a dbcache.Store that keeps copies of the entries
// it reads in process memory, in front of another Store, and drops them
// as the database's feed reports changes. It is safe for concurrent use.
type Cache struct {
	store   dbcache.Store
	caps    capabilities
	cfg     Config
	makeKey func(string) string
	target  target
	local   *local
	feed    *feed
	cnt     counters
	// flights shares one store read among the goroutines that miss the
	// same key at once: a hot key just invalidated is read once, not by
	// every reader.
	flights singleflight.Group
	// sets serialises the Sets of one key through the layer.
	sets   keyLocks
	closed atomic.Bool
	base   time.Time // the origin of since
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New returns a near cache in front of store, whose table is on pool's
// database (pool runs the layer's heartbeats and checks; store's own
// operations run as store runs them). store must have the capabilities
// the layer serves through it (dbcache.TTLReader, KeyLister, Versioner and
// Loader) and make keys (a dbcache.KeyMaker, or Config.MakeKey): a
// *dbcache.Cache does; the error names what another store lacks. It
// checks what the feed needs and
// returns a clear error if the server cannot give it: ErrUnsupported
// (wal_level is not logical, the table is UNLOGGED, PostgreSQL before
// 14), ErrNoPublication (run Setup), dbcache.ErrNotMigrated, or the
// server's refusal of a replication connection (the role needs the
// REPLICATION attribute). It then starts the feed and waits, at most
// Config.StartTimeout, for its first session. Close stops the feed; the
// store and the pool stay open.
func New(ctx context.Context, store dbcache.Store, pool *pgxpool.Pool, cfg *Config) (*Cache, error) {
	if store == nil || pool == nil {
		return nil, errors.New("nearcache: store and pool are required")
	}
	c := cfg.withDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	makeKey := c.MakeKey
	if makeKey == nil {
		mk, ok := store.(dbcache.KeyMaker)
		if !ok {
			return nil, fmt.Errorf("nearcache: the store (%T) is not a dbcache.KeyMaker: set Config.MakeKey", store)
		}
		makeKey = mk.MakeKey
	}
	caps, err := capabilitiesOf(store)
	if err != nil {
		return nil, err
	}
	t, err := resolve(ctx, pool, c.Schema)
	if err != nil {
		return nil, err
	}
	if t.publication, err = publicationFor(c.Publication, t); err != nil {
		return nil, err
	}
	if err := checkPublication(ctx, pool, t); err != nil {
		return nil, err
	}
	repl := c.Replication
	if repl == nil {
		repl = &pool.Config().ConnConfig.Config
	}
	repl = repl.Copy()
	if repl.RuntimeParams == nil {
		repl.RuntimeParams = map[string]string{}
	}
	repl.RuntimeParams["replication"] = "database"
	if repl.RuntimeParams["application_name"] == "" {
		repl.RuntimeParams["application_name"] = "dbcache-nearcache"
	}
	l, err := newLocal(c.MaxBytes, c.MaxEntryBytes)
	if err != nil {
		return nil, fmt.Errorf("nearcache: %w", err)
	}
	nc := &Cache{store: store, caps: caps, cfg: c, makeKey: makeKey, target: t, local: l, base: time.Now()}
	nc.feed = newFeed(nc, pool, repl)
	bg, cancel := context.WithCancel(context.Background())
	nc.cancel = cancel
	nc.wg.Go(func() { nc.feed.run(bg) })
	nc.wg.Go(func() { nc.feed.heartbeats(bg) })
	wait := time.NewTimer(c.StartTimeout + time.Second)
	defer wait.Stop()
	var first error
	select {
	case first = <-nc.feed.first:
	case <-ctx.Done():
		first = ctx.Err()
	case <-wait.C:
		first = errors.New("nearcache: the feed did not start in time")
	}
	if first != nil {
		_ = nc.Close()
		return nil, first
	}
	return nc, nil
}

// Close stops the feed (the server drops its temporary slot) and drops
// every copy; every later call returns dbcache.ErrClosed. The store and
// the pool stay open: close them after. Calling it again is a no-op.
func (c *Cache) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.cancel()
	c.wg.Wait()
	c.local.close()
	return nil
}

// Store returns the store the layer is in front of.
func (c *Cache) Store() dbcache.Store { return c.store }

// Stats returns the layer's counters.
func (c *Cache) Stats() Stats {
	s := Stats{
		Hits:          c.cnt.hits.Load(),
		Misses:        c.cnt.misses.Load(),
		Fills:         c.cnt.fills.Load(),
		WritesKept:    c.cnt.writesKept.Load(),
		FillsRefused:  c.cnt.fillsRefused.Load(),
		Invalidations: c.cnt.invalidations.Load(),
		Flushes:       c.cnt.flushes.Load(),
		Bypassed:      c.cnt.bypassed.Load(),
		FeedRestarts:  c.cnt.feedRestarts.Load(),
		FeedUp:        c.feed.slot.Load() != nil,
		Entries:       c.local.len(),
		Bytes:         c.local.bytes(),
	}
	if conf := c.feed.confirmed.Load(); conf > 0 {
		s.Staleness = time.Duration(c.since(time.Now()) - conf)
	}
	return s
}

// since is t on the layer's monotonic clock, in nanoseconds.
func (c *Cache) since(t time.Time) int64 { return int64(t.Sub(c.base)) }

func (c *Cache) traceRead(ctx context.Context, op string, hits, misses int) {
	if hits > 0 {
		c.cnt.hits.Add(int64(hits))
	}
	if misses > 0 {
		c.cnt.misses.Add(int64(misses))
	}
	if t := c.cfg.Tracer; t != nil {
		t.TraceRead(ctx, op, hits, misses)
	}
}

// lookup returns the copy of the made key mk that may be served now.
func (c *Cache) lookup(mk string, now time.Time) (*entry, bool) {
	// The heartbeat is read before the copy: every change committed before
	// it was sent had been applied when it arrived, so before this read of
	// the copy. (Read after, it could vouch for a copy fetched before a
	// change that dropped it.)
	conf := c.feed.confirmed.Load()
	e, ok := c.local.get(mk, now)
	if !ok {
		return nil, false
	}
	if conf == 0 || c.since(now)-conf >= int64(c.cfg.MaxStaleness) {
		c.cnt.bypassed.Add(1)
		return nil, false
	}
	if a := e.absorbing.Load(); a != 0 && conf > a {
		// A heartbeat sent after the write that kept this copy has
		// arrived, so the write's own change has too, yet the copy still
		// waits for it: never expected, and not to be trusted.
		c.local.invalidate(mk)
		return nil, false
	}
	return e, true
}

type filled struct {
	v   []byte
	ttl dbcache.Timeout
}

// read is fill shared among the goroutines reading mk at once. The shared
// read runs without the first caller's cancellation (the store bounds it
// by its own time limit), so one caller giving up fails no other; each
// caller still returns as soon as its own context ends, and gets a value
// of its own.
func (c *Cache) read(ctx context.Context, key, mk string) ([]byte, dbcache.Timeout, error) {
	ch := c.flights.DoChan(mk, func() (any, error) {
		v, ttl, err := c.fill(context.WithoutCancel(ctx), key, mk)
		return filled{v, ttl}, err
	})
	select {
	case r := <-ch:
		f, _ := r.Val.(filled)
		if r.Err != nil {
			return nil, dbcache.Timeout{}, r.Err
		}
		if r.Shared {
			return clone(f.v), f.ttl, nil
		}
		return f.v, f.ttl, nil
	case <-ctx.Done():
		return nil, dbcache.Timeout{}, ctx.Err()
	}
}

// fill reads key from the store with its remaining lifetime, and keeps a
// copy unless the key changed meanwhile.
func (c *Cache) fill(ctx context.Context, key, mk string) ([]byte, dbcache.Timeout, error) {
	tok := c.local.beginFill(mk)
	start := time.Now()
	v, ttl, err := c.caps.ttl.GetWithTTL(ctx, key)
	var expires time.Time
	if err == nil && !ttl.IsForever() {
		// The database measured the remaining lifetime after this read
		// began, so counting it from start never outlives the entry,
		// whatever the offset between the clocks.
		d, _ := ttl.Duration()
		expires = start.Add(d)
	}
	var copied []byte
	if err == nil && len(v) <= c.cfg.MaxEntryBytes {
		copied = bytes.Clone(v) // the caller owns v
	}
	if c.local.endFill(tok, err == nil && copied != nil, copied, expires) {
		c.cnt.fills.Add(1)
	} else if err == nil {
		c.cnt.fillsRefused.Add(1)
	}
	return v, ttl, err
}

func clone(v []byte) []byte { return append([]byte{}, v...) }

func remaining(e *entry, now time.Time) dbcache.Timeout {
	if e.expires.IsZero() {
		return dbcache.Forever
	}
	return dbcache.ExpiresIn(max(e.expires.Sub(now), time.Microsecond))
}

// Get returns key's value: the local copy when there is one the feed has
// kept coherent, else the store's (dbcache.ErrMiss when absent), keeping a
// copy. Misses are not kept: a key absent now is read from the store each
// time.
func (c *Cache) Get(ctx context.Context, key string) ([]byte, error) {
	if c.closed.Load() {
		return nil, dbcache.ErrClosed
	}
	mk := c.makeKey(key)
	if e, ok := c.lookup(mk, time.Now()); ok {
		c.traceRead(ctx, dbcache.OpGet, 1, 0)
		return clone(e.value), nil
	}
	c.traceRead(ctx, dbcache.OpGet, 0, 1)
	v, _, err := c.read(ctx, key, mk)
	return v, err
}

// GetWithTTL is Get with the entry's remaining lifetime; from a local copy
// it is counted down from the database's figure when the copy was read, so
// it is never longer than the database's.
func (c *Cache) GetWithTTL(ctx context.Context, key string) ([]byte, dbcache.Timeout, error) {
	if c.closed.Load() {
		return nil, dbcache.Timeout{}, dbcache.ErrClosed
	}
	mk := c.makeKey(key)
	now := time.Now()
	if e, ok := c.lookup(mk, now); ok {
		c.traceRead(ctx, dbcache.OpGet, 1, 0)
		return clone(e.value), remaining(e, now), nil
	}
	c.traceRead(ctx, dbcache.OpGet, 0, 1)
	return c.read(ctx, key, mk)
}

// HasKey reports whether key has a live entry: true at once when a
// coherent copy is held, else the store's answer.
func (c *Cache) HasKey(ctx context.Context, key string) (bool, error) {
	if c.closed.Load() {
		return false, dbcache.ErrClosed
	}
	if _, ok := c.lookup(c.makeKey(key), time.Now()); ok {
		c.traceRead(ctx, dbcache.OpHasKey, 1, 0)
		return true, nil
	}
	c.traceRead(ctx, dbcache.OpHasKey, 0, 1)
	return c.store.HasKey(ctx, key)
}

// GetMany returns the live entries among keys: those with a coherent
// local copy from memory, the rest from the store in one GetMany. A lone
// key read from the store is kept as Get keeps it; several are not (the
// Store interface reads many keys without their expiries, and a copy
// whose expiry is unknown could outlive its entry).
func (c *Cache) GetMany(ctx context.Context, keys []string) (map[string][]byte, error) {
	if c.closed.Load() {
		return nil, dbcache.ErrClosed
	}
	out := make(map[string][]byte, len(keys))
	now := time.Now()
	var rest []string
	for _, k := range keys {
		if _, dup := out[k]; dup {
			continue
		}
		if e, ok := c.lookup(c.makeKey(k), now); ok {
			out[k] = clone(e.value)
		} else {
			rest = append(rest, k)
		}
	}
	c.traceRead(ctx, dbcache.OpGetMany, len(out), len(rest))
	switch len(rest) {
	case 0:
		return out, nil
	case 1:
		v, _, err := c.read(ctx, rest[0], c.makeKey(rest[0]))
		switch {
		case err == nil:
			out[rest[0]] = v
		case !errors.Is(err, dbcache.ErrMiss):
			return nil, err
		}
		return out, nil
	}
	got, err := c.store.GetMany(ctx, rest)
	if err != nil {
		return nil, err
	}
	for k, v := range got {
		out[k] = v
	}
	return out, nil
}

// GetOrSet returns a coherent local copy when there is one; otherwise it
// is the store's GetOrSet, after which the key's copy is dropped (it may
// have been written).
func (c *Cache) GetOrSet(ctx context.Context, key string, value []byte, timeout dbcache.Timeout) ([]byte, error) {
	if c.closed.Load() {
		return nil, dbcache.ErrClosed
	}
	mk := c.makeKey(key)
	if e, ok := c.lookup(mk, time.Now()); ok {
		c.traceRead(ctx, dbcache.OpGetOrSet, 1, 0)
		return clone(e.value), nil
	}
	c.traceRead(ctx, dbcache.OpGetOrSet, 0, 1)
	v, err := c.store.GetOrSet(ctx, key, value, timeout)
	c.wrote(mk)
	return v, err
}

// GetOrSetFunc returns a coherent local copy when there is one; otherwise
// it is the store's GetOrSetFunc, with its stampede protection, after
// which the key's copy is dropped.
func (c *Cache) GetOrSetFunc(ctx context.Context, key string, load dbcache.LoadFunc, timeout dbcache.Timeout) ([]byte, error) {
	return c.getOrLoad(ctx, key, 0, false, func() ([]byte, error) {
		return c.caps.loader.GetOrSetFunc(ctx, key, load, timeout)
	})
}

// GetOrRevalidate returns a coherent local copy while it is fresh (more
// than stale of its lifetime left), so that the store refreshes stale
// entries as it would without the layer; otherwise it is the store's
// GetOrRevalidate, after which the key's copy is dropped.
func (c *Cache) GetOrRevalidate(ctx context.Context, key string, load dbcache.LoadFunc, fresh, stale time.Duration) ([]byte, error) {
	return c.getOrLoad(ctx, key, stale, true, func() ([]byte, error) {
		return c.caps.loader.GetOrRevalidate(ctx, key, load, fresh, stale)
	})
}

func (c *Cache) getOrLoad(ctx context.Context, key string, stale time.Duration, swr bool, viaStore func() ([]byte, error)) ([]byte, error) {
	if c.closed.Load() {
		return nil, dbcache.ErrClosed
	}
	mk := c.makeKey(key)
	now := time.Now()
	if e, ok := c.lookup(mk, now); ok {
		if !swr || e.expires.IsZero() || e.expires.Sub(now) > stale {
			c.traceRead(ctx, dbcache.OpGetOrSet, 1, 0)
			return clone(e.value), nil
		}
	}
	c.traceRead(ctx, dbcache.OpGetOrSet, 0, 1)
	v, err := viaStore()
	c.wrote(mk)
	return v, err
}

// wrote drops the copy of a key written through the layer, so this process
// reads its own write at once (other processes' copies go through the
// feed). It runs after the write returns, whatever its outcome: a fill that
// read the old value before the write is turned away, one that stored it
// is removed.
func (c *Cache) wrote(mks ...string) {
	n := 0
	for _, mk := range mks {
		n += b2i(c.local.invalidate(mk))
	}
	c.cnt.invalidations.Add(int64(len(mks)))
	if t := c.cfg.Tracer; t != nil {
		key := ""
		if len(mks) == 1 {
			key = mks[0]
		}
		t.TraceInvalidate(Invalidation{Cause: CauseWrite, Keys: len(mks), Dropped: n, Key: key})
	}
}

// Set is the store's Set. With a timeout of Forever or a positive TTL, the
// value written is kept as the key's copy, so this process's next reads of
// it are hits (another process's copy is dropped by the feed); the copy
// expires the timeout after the Set began, never after the entry. Such
// Sets of one key through the layer run one at a time (the database runs
// them so anyway, on the row's lock), so that each keeps its copy. With
// DefaultTimeout (the store's default is not known here) or TTL(d <= 0),
// or when the key changed meanwhile, the key's copy is dropped instead.
func (c *Cache) Set(ctx context.Context, key string, value []byte, timeout dbcache.Timeout) error {
	if c.closed.Load() {
		return dbcache.ErrClosed
	}
	mk := c.makeKey(key)
	d, ttl := timeout.Duration()
	if !(timeout.IsForever() || (ttl && d > 0)) || len(value) > c.cfg.MaxEntryBytes {
		err := c.store.Set(ctx, key, value, timeout)
		c.wrote(mk)
		return err
	}
	unlock, err := c.sets.lock(ctx, mk)
	if err != nil {
		return err
	}
	defer unlock()
	tok := c.local.beginWrite(mk)
	start := time.Now()
	err = c.store.Set(ctx, key, value, timeout)
	var expires time.Time
	if ttl {
		expires = start.Add(d)
	}
	if c.local.endWrite(tok, err == nil, bytes.Clone(nonNil(value)), expires, c.since(time.Now())) {
		c.cnt.writesKept.Add(1)
		return err
	}
	c.cnt.invalidations.Add(1)
	if t := c.cfg.Tracer; t != nil {
		t.TraceInvalidate(Invalidation{Cause: CauseWrite, Keys: 1, Key: mk})
	}
	return err
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// Add is the store's Add; the key's copy is dropped.
func (c *Cache) Add(ctx context.Context, key string, value []byte, timeout dbcache.Timeout) (bool, error) {
	if c.closed.Load() {
		return false, dbcache.ErrClosed
	}
	ok, err := c.store.Add(ctx, key, value, timeout)
	c.wrote(c.makeKey(key))
	return ok, err
}

// Touch is the store's Touch; the key's copy is dropped (its expiry moved).
func (c *Cache) Touch(ctx context.Context, key string, timeout dbcache.Timeout) (bool, error) {
	if c.closed.Load() {
		return false, dbcache.ErrClosed
	}
	ok, err := c.store.Touch(ctx, key, timeout)
	c.wrote(c.makeKey(key))
	return ok, err
}

// SetMany is the store's SetMany; the keys' copies are dropped.
func (c *Cache) SetMany(ctx context.Context, items map[string][]byte, timeout dbcache.Timeout) ([]string, error) {
	if c.closed.Load() {
		keys := make([]string, 0, len(items))
		for k := range items {
			keys = append(keys, k)
		}
		return keys, dbcache.ErrClosed
	}
	failed, err := c.store.SetMany(ctx, items, timeout)
	mks := make([]string, 0, len(items))
	for k := range items {
		mks = append(mks, c.makeKey(k))
	}
	c.wrote(mks...)
	return failed, err
}

// Incr is the store's Incr; the key's copy is dropped.
func (c *Cache) Incr(ctx context.Context, key string, delta int64) (int64, error) {
	if c.closed.Load() {
		return 0, dbcache.ErrClosed
	}
	n, err := c.store.Incr(ctx, key, delta)
	c.wrote(c.makeKey(key))
	return n, err
}

// Decr is the store's Decr; the key's copy is dropped.
func (c *Cache) Decr(ctx context.Context, key string, delta int64) (int64, error) {
	if c.closed.Load() {
		return 0, dbcache.ErrClosed
	}
	n, err := c.store.Decr(ctx, key, delta)
	c.wrote(c.makeKey(key))
	return n, err
}

// IncrVersion is the store's IncrVersion; the key's copy is dropped. (The
// entry's new version is another view's key: a near cache in front of that
// view learns of it from the feed.)
func (c *Cache) IncrVersion(ctx context.Context, key string, delta int) (int, error) {
	if c.closed.Load() {
		return 0, dbcache.ErrClosed
	}
	v, err := c.caps.versions.IncrVersion(ctx, key, delta)
	c.wrote(c.makeKey(key))
	return v, err
}

// DecrVersion is the store's DecrVersion; the key's copy is dropped.
func (c *Cache) DecrVersion(ctx context.Context, key string, delta int) (int, error) {
	if c.closed.Load() {
		return 0, dbcache.ErrClosed
	}
	v, err := c.caps.versions.DecrVersion(ctx, key, delta)
	c.wrote(c.makeKey(key))
	return v, err
}

// Delete is the store's Delete; the key's copy is dropped.
func (c *Cache) Delete(ctx context.Context, key string) (bool, error) {
	if c.closed.Load() {
		return false, dbcache.ErrClosed
	}
	ok, err := c.store.Delete(ctx, key)
	c.wrote(c.makeKey(key))
	return ok, err
}

// DeleteMany is the store's DeleteMany; the keys' copies are dropped.
func (c *Cache) DeleteMany(ctx context.Context, keys []string) (int, error) {
	if c.closed.Load() {
		return 0, dbcache.ErrClosed
	}
	n, err := c.store.DeleteMany(ctx, keys)
	mks := make([]string, len(keys))
	for i, k := range keys {
		mks[i] = c.makeKey(k)
	}
	c.wrote(mks...)
	return n, err
}

// DeletePrefix is the store's DeletePrefix; the copies of every key with
// the prefix are dropped.
func (c *Cache) DeletePrefix(ctx context.Context, prefix string) (int, error) {
	if c.closed.Load() {
		return 0, dbcache.ErrClosed
	}
	n, err := c.caps.lister.DeletePrefix(ctx, prefix)
	dropped := c.local.invalidatePrefix(c.makeKey(prefix))
	c.cnt.invalidations.Add(int64(dropped))
	if t := c.cfg.Tracer; t != nil {
		t.TraceInvalidate(Invalidation{Cause: CauseClear, Keys: dropped, Dropped: dropped})
	}
	return n, err
}

// Clear is the store's Clear; every copy is dropped.
func (c *Cache) Clear(ctx context.Context) error {
	if c.closed.Load() {
		return dbcache.ErrClosed
	}
	err := c.store.Clear(ctx)
	n := c.local.flush()
	c.cnt.flushes.Add(1)
	if t := c.cfg.Tracer; t != nil {
		t.TraceInvalidate(Invalidation{Cause: CauseClear, Dropped: n})
	}
	return err
}

// TTL is the store's TTL.
func (c *Cache) TTL(ctx context.Context, key string) (dbcache.Timeout, error) {
	if c.closed.Load() {
		return dbcache.Timeout{}, dbcache.ErrClosed
	}
	return c.caps.ttl.TTL(ctx, key)
}

// Keys is the store's Keys.
func (c *Cache) Keys(ctx context.Context, prefix string) iter.Seq2[string, error] {
	if c.closed.Load() {
		return func(yield func(string, error) bool) { yield("", dbcache.ErrClosed) }
	}
	return c.caps.lister.Keys(ctx, prefix)
}
