package nearcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"iter"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
)

// Cache is a near cache: a dbcache.Store that keeps copies of the entries
// it reads in process memory, in front of another Store, and drops them
// as the database's feed reports changes. It is safe for concurrent use.
type Cache struct {
	store   dbcache.Store
	reader  dbcache.SnapshotReader
	caps    capabilities
	cfg     Config
	makeKey func(string) string
	target  target
	local   *local
	feed    *feed
	cnt     counters
	// flights shares one store read among the goroutines that miss the
	// same key at once: a hot key just invalidated is read once, not by
	// every reader. A read joins one only if it began within MaxStaleness
	// (see read).
	flightsMu sync.Mutex
	flights   map[string]*flight
	// sets serialises the Sets of one key through the layer.
	sets keyLocks
	// wb is the write-behind queue (Config.WriteBehind), nil without;
	// wbWG waits for its flusher.
	wb       *writeBehind
	wbWG     sync.WaitGroup
	closed   atomic.Bool
	base     time.Time // the origin of since
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	panicLog sync.Once
}

// New returns a near cache in front of store, whose table is on pool's
// database (pool runs the layer's heartbeats and checks; store's own
// operations run as store runs them, on the same server). store must be a
// dbcache.SnapshotReader (a *dbcache.Cache is): the layer keeps a copy
// only when the snapshot of the statement that read it proves it saw
// every change the feed delivered. It must also have the capabilities the
// layer serves through it (dbcache.TTLReader, KeyLister, Versioner,
// Loader and Leaser) and make keys (a dbcache.KeyMaker, or Config.MakeKey); a
// *dbcache.Cache does, and the error names what another store lacks. New
// checks what the feed needs and
// returns one clear error if the server cannot give it: ErrUnsupported
// (wal_level is not logical, the table is UNLOGGED, PostgreSQL before
// 14), ErrNoPublication (run Setup), ErrNoReplication (the feed's role
// lacks the REPLICATION attribute), dbcache.ErrNotMigrated, or the
// server's refusal of a replication connection (53300: every
// max_wal_senders in use; 53400: every max_replication_slots in use). It
// then starts the feed and waits, at most Config.StartTimeout, for its
// first session. Close stops the feed; the store and the pool stay open.
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
	reader, ok := store.(dbcache.SnapshotReader)
	if !ok {
		return nil, fmt.Errorf("nearcache: the store (%T) does not return its reads' snapshots (dbcache.SnapshotReader), which the layer needs to prove a copy is not older than a change; put the near cache directly in front of a *dbcache.Cache", store)
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
	if repl.RuntimeParams["wal_sender_timeout"] == "" {
		// The walsender ends a session whose process stopped confirming
		// (hung, paused, cut off) after this long, and its temporary
		// slot, with the WAL it retains, goes with it: FeedTimeout rather
		// than the server's 60 s (the feed confirms every second).
		repl.RuntimeParams["wal_sender_timeout"] = strconv.FormatInt(c.FeedTimeout.Milliseconds(), 10)
	}
	l, err := newLocal(c.MaxBytes, c.MaxEntryBytes)
	if err != nil {
		return nil, fmt.Errorf("nearcache: %w", err)
	}
	nc := &Cache{store: store, reader: reader, caps: caps, cfg: c, makeKey: makeKey, target: t, local: l, base: time.Now(), flights: map[string]*flight{}}
	nc.feed = newFeed(nc, pool, repl)
	bg, cancel := context.WithCancel(context.Background())
	nc.cancel = cancel
	nc.wg.Go(func() { nc.feed.run(bg) })
	nc.wg.Go(func() { nc.feed.heartbeats(bg) })
	if c.WriteBehind != nil {
		nc.wb = newWriteBehind(nc, *c.WriteBehind)
		nc.wbWG.Go(nc.wb.run)
	}
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
// every copy; every later call returns dbcache.ErrClosed. With
// write-behind it first commits the queued writes, each batch within
// WriteBehind.MaxDelay of its first write (those it cannot commit by then
// are given up, as the flusher gives them up), and stops the flusher. The
// store and the pool stay open: close them after. Calling it again is a
// no-op.
func (c *Cache) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	if c.wb != nil {
		c.wb.close()
		c.wbWG.Wait()
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
		FillsUnseen:   c.cnt.fillsUnseen.Load(),
		Panics:        c.cnt.panics.Load(),
		Invalidations: c.cnt.invalidations.Load(),
		Flushes:       c.cnt.flushes.Load(),
		Bypassed:      c.cnt.bypassed.Load(),
		FeedRestarts:  c.cnt.feedRestarts.Load(),
		FeedUp:        c.feed.slot.Load() != nil,
		Entries:       c.local.len(),
		Bytes:         c.local.bytes(),
	}
	if w := c.wb; w != nil {
		s.WritesQueued = w.cnt.queued.Load()
		s.WritesCoalesced = w.cnt.coalesced.Load()
		s.WriteBatches = w.cnt.batches.Load()
		s.WritesCommitted = w.cnt.committed.Load()
		s.WritesLost = w.cnt.lost.Load()
		s.WriteRetries = w.cnt.retries.Load()
		s.QueueWaits = w.cnt.waits.Load()
		s.WritesPending = int(w.pending.Load())
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

// flight is one store read shared by the goroutines that miss a key at
// once.
type flight struct {
	began int64     // c.since when it was sent
	start time.Time // the same, for expiries
	done  chan struct{}
	v     []byte
	ttl   dbcache.Timeout
	err   error
}

// read is fill shared among the goroutines reading mk at once. A caller
// joins a read in flight only if no read or write of mk has ended since it
// began (see seal) and it began within MaxStaleness before the caller did: a write that returned before the caller began,
// more than MaxStaleness before it, returned before such a read began too,
// so the read saw it. Otherwise (a read held up, on the network or by a
// busy server) the caller starts a newer one. The shared read runs
// without the first caller's cancellation (the store bounds it by its own
// time limit), so one caller giving up fails no other; each caller still
// returns as soon as its own context ends, and gets a value of its own.
func (c *Cache) read(ctx context.Context, key, mk string) ([]byte, dbcache.Timeout, error) {
	now := time.Now()
	at := c.since(now)
	c.flightsMu.Lock()
	f := c.flights[mk]
	if f == nil || at-f.began >= int64(c.cfg.MaxStaleness) {
		f = &flight{began: at, start: now, done: make(chan struct{})}
		c.flights[mk] = f
		go c.fly(context.WithoutCancel(ctx), key, mk, f)
	}
	c.flightsMu.Unlock()
	select {
	case <-f.done:
	case <-ctx.Done():
		return nil, dbcache.Timeout{}, ctx.Err()
	}
	if f.err != nil {
		return nil, dbcache.Timeout{}, f.err
	}
	ttl := f.ttl
	if d, ok := ttl.Duration(); ok {
		// Counted down from the read's start, for a caller that joined
		// later: never longer than the database's.
		ttl = dbcache.ExpiresIn(max(time.Until(f.start.Add(d)), time.Microsecond))
	}
	return clone(f.v), ttl, nil
}

// fly runs a shared read, on a goroutine of the layer's: a panic in the
// store (its tracer, say) is recovered and returned to every caller as
// ErrPanic.
func (c *Cache) fly(ctx context.Context, key, mk string, f *flight) {
	defer func() {
		c.flightsMu.Lock()
		if c.flights[mk] == f {
			delete(c.flights, mk)
		}
		c.flightsMu.Unlock()
		close(f.done)
	}()
	f.v, f.ttl, f.err = c.fill(context.WithValue(ctx, flightKey{}, f), key, mk, f.start)
}

// fill reads key from the store with its remaining lifetime and its
// statement's snapshot, and keeps a copy if the local store's checks allow
// (see local.endFill); start is when the read began.
func (c *Cache) fill(ctx context.Context, key, mk string, start time.Time) ([]byte, dbcache.Timeout, error) {
	tok := c.local.beginFill(mk)
	v, ttl, snap, err := c.storeRead(ctx, key, tok.snapshot)
	r := fillResult{snap: snap}
	if err == nil {
		r.found, r.value = true, v
		if len(v) <= c.cfg.MaxEntryBytes {
			r.value = bytes.Clone(v) // the caller owns v
		}
		if d, ok := ttl.Duration(); ok {
			// The database measured the remaining lifetime after this
			// read began, so counting it from start never outlives the
			// entry, whatever the offset between the clocks.
			r.expires = start.Add(d)
		}
	}
	c.filled(c.local.endFill(tok, r), r.found)
	c.seal(mk, flightOf(ctx))
	return v, ttl, err
}

type flightKey struct{}

// flightOf is the flight a fill runs for, if any.
func flightOf(ctx context.Context) *flight {
	f, _ := ctx.Value(flightKey{}).(*flight)
	return f
}

// seal keeps readers from joining the store read of mk in flight (but
// except): a read or a write of mk has just ended, and a read that began
// before it ended may return something older than it did, which a caller
// that begins after must not get (monotonic reads, own writes). Callers
// already waiting on it still get its answer; it just leaves the map.
func (c *Cache) seal(mk string, except *flight) {
	c.flightsMu.Lock()
	if f := c.flights[mk]; f != nil && f != except {
		delete(c.flights, mk)
	}
	c.flightsMu.Unlock()
}

// sealAll is seal for every key starting with prefix.
func (c *Cache) sealAll(prefix string) {
	c.flightsMu.Lock()
	for mk := range c.flights {
		if strings.HasPrefix(mk, prefix) {
			delete(c.flights, mk)
		}
	}
	c.flightsMu.Unlock()
}

func (c *Cache) filled(outcome int, found bool) {
	switch {
	case outcome == fillKept:
		c.cnt.fills.Add(1)
	case outcome == fillUnseen:
		c.cnt.fillsUnseen.Add(1)
		c.cnt.fillsRefused.Add(1)
	case found:
		c.cnt.fillsRefused.Add(1)
	}
}

// storeRead is the store's GetWithSnapshot, or its GetWithTTL when the
// fill needs no snapshot, a panic in either recovered as an error (it runs
// on the layer's goroutine).
func (c *Cache) storeRead(ctx context.Context, key string, snapshot bool) (v []byte, ttl dbcache.Timeout, snap dbcache.Snapshot, err error) {
	defer func() {
		if r := recover(); r != nil {
			v, ttl, snap, err = nil, dbcache.Timeout{}, dbcache.Snapshot{}, c.panicked("the store's read", r)
		}
	}()
	if snapshot {
		return c.reader.GetWithSnapshot(ctx, key)
	}
	v, ttl, err = c.caps.ttl.GetWithTTL(ctx, key)
	return v, ttl, dbcache.Snapshot{}, err
}

func clone(v []byte) []byte { return append([]byte{}, v...) }

// queuedValue is mk's value queued by write-behind and not yet known
// committed: found when there is one, live unless its lifetime has run
// out (then the key reads as absent: the database's copy expires no
// earlier, counted from the commit).
func (c *Cache) queuedValue(mk string, now time.Time) (v []byte, ttl dbcache.Timeout, found, live bool) {
	if c.wb == nil {
		return nil, dbcache.Timeout{}, false, false
	}
	v, expires, found, live := c.wb.lookup(mk, now)
	if !found || !live {
		return nil, dbcache.Timeout{}, found, false
	}
	if expires.IsZero() {
		return v, dbcache.Forever, true, true
	}
	return v, dbcache.ExpiresIn(max(expires.Sub(now), time.Microsecond)), true, true
}

// settle waits, with write-behind, for the queued writes of mks (of every
// key when none is given) to be committed or given up, so that a write or
// read sent to the store now comes after them.
func (c *Cache) settle(ctx context.Context, mks ...string) error {
	if c.wb == nil {
		return nil
	}
	return c.wb.settle(ctx, mks...)
}

// settleKeys is settle for caller keys.
func (c *Cache) settleKeys(ctx context.Context, keys ...string) error {
	if c.wb == nil {
		return nil
	}
	mks := make([]string, len(keys))
	for i, k := range keys {
		mks[i] = c.makeKey(k)
	}
	if len(mks) == 0 {
		return nil
	}
	return c.wb.settle(ctx, mks...)
}

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
	now := time.Now()
	if v, _, found, live := c.queuedValue(mk, now); found {
		c.traceRead(ctx, dbcache.OpGet, 1, 0)
		if !live {
			return nil, dbcache.ErrMiss
		}
		return clone(v), nil
	}
	if e, ok := c.lookup(mk, now); ok {
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
	if v, ttl, found, live := c.queuedValue(mk, now); found {
		c.traceRead(ctx, dbcache.OpGet, 1, 0)
		if !live {
			return nil, dbcache.Timeout{}, dbcache.ErrMiss
		}
		return clone(v), ttl, nil
	}
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
	now := time.Now()
	if _, _, found, live := c.queuedValue(c.makeKey(key), now); found {
		c.traceRead(ctx, dbcache.OpHasKey, 1, 0)
		return live, nil
	}
	if _, ok := c.lookup(c.makeKey(key), now); ok {
		c.traceRead(ctx, dbcache.OpHasKey, 1, 0)
		return true, nil
	}
	c.traceRead(ctx, dbcache.OpHasKey, 0, 1)
	ok, err := c.store.HasKey(ctx, key)
	if err == nil && !ok {
		// A copy held (a heartbeat late) is older than this answer: a
		// later Get must not find what this said is gone.
		mk := c.makeKey(key)
		c.local.invalidate(mk)
		c.seal(mk, nil)
	}
	return ok, err
}

// GetMany returns the live entries among keys: those with a coherent
// local copy from memory, the rest from the store in one statement
// (GetManyWithSnapshot), each kept as Get keeps it.
func (c *Cache) GetMany(ctx context.Context, keys []string) (map[string][]byte, error) {
	if c.closed.Load() {
		return nil, dbcache.ErrClosed
	}
	out := make(map[string][]byte, len(keys))
	now := time.Now()
	var rest []string
	queuedGone := 0 // queued writes whose lifetime ran out: absent
	asked := make(map[string]struct{}, len(keys))
	for _, k := range keys {
		if _, dup := asked[k]; dup {
			continue
		}
		asked[k] = struct{}{}
		if v, _, found, live := c.queuedValue(c.makeKey(k), now); found {
			if live {
				out[k] = clone(v)
			} else {
				queuedGone++
			}
		} else if e, ok := c.lookup(c.makeKey(k), now); ok {
			out[k] = clone(e.value)
		} else {
			rest = append(rest, k)
		}
	}
	c.traceRead(ctx, dbcache.OpGetMany, len(out)+queuedGone, len(rest))
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
	// Every key read is a fill: one statement, one snapshot for all.
	toks := make([]fillToken, len(rest))
	for i, k := range rest {
		toks[i] = c.local.beginFill(c.makeKey(k))
	}
	start := time.Now()
	got, snap, err := c.reader.GetManyWithSnapshot(ctx, rest)
	for i, k := range rest {
		r := fillResult{snap: snap}
		if e, ok := got[k]; ok && err == nil {
			r.found, r.value = true, e.Value
			if len(e.Value) <= c.cfg.MaxEntryBytes {
				r.value = bytes.Clone(e.Value)
			}
			if d, ok := e.TTL.Duration(); ok {
				r.expires = start.Add(d)
			}
		}
		c.filled(c.local.endFill(toks[i], r), r.found)
		c.seal(toks[i].key, nil)
	}
	if err != nil {
		return nil, err
	}
	for k, e := range got {
		out[k] = e.Value
	}
	return out, nil
}

// GetOrSet returns a coherent local copy when there is one; otherwise it
// is the store's GetOrSet, a write of the key through the layer (the
// key's copy is dropped when it returns).
func (c *Cache) GetOrSet(ctx context.Context, key string, value []byte, timeout dbcache.Timeout) ([]byte, error) {
	if c.closed.Load() {
		return nil, dbcache.ErrClosed
	}
	mk := c.makeKey(key)
	now := time.Now()
	if v, _, found, live := c.queuedValue(mk, now); found && live {
		c.traceRead(ctx, dbcache.OpGetOrSet, 1, 0)
		return clone(v), nil
	}
	if e, ok := c.lookup(mk, now); ok {
		c.traceRead(ctx, dbcache.OpGetOrSet, 1, 0)
		return clone(e.value), nil
	}
	c.traceRead(ctx, dbcache.OpGetOrSet, 0, 1)
	if err := c.settle(ctx, mk); err != nil {
		return nil, err
	}
	done := c.writing(mk)
	v, err := c.store.GetOrSet(ctx, key, value, timeout)
	done()
	return v, err
}

// GetOrSetFunc returns a coherent local copy when there is one; otherwise
// it is the store's GetOrSetFunc, with its stampede protection, a write of
// the key through the layer (the key's copy is dropped when it returns).
func (c *Cache) GetOrSetFunc(ctx context.Context, key string, load dbcache.LoadFunc, timeout dbcache.Timeout) ([]byte, error) {
	return c.getOrLoad(ctx, key, 0, false, func() ([]byte, error) {
		return c.caps.loader.GetOrSetFunc(ctx, key, load, timeout)
	})
}

// GetOrRevalidate returns a coherent local copy while it is fresh (more
// than stale of its lifetime left), so that the store refreshes stale
// entries as it would without the layer; otherwise it is the store's
// GetOrRevalidate, a write of the key through the layer.
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
	if v, expires, found, live := c.wbLookup(mk, now); found && live {
		if !swr || expires.IsZero() || expires.Sub(now) > stale {
			c.traceRead(ctx, dbcache.OpGetOrSet, 1, 0)
			return clone(v), nil
		}
	} else if e, ok := c.lookup(mk, now); ok && !found {
		if !swr || e.expires.IsZero() || e.expires.Sub(now) > stale {
			c.traceRead(ctx, dbcache.OpGetOrSet, 1, 0)
			return clone(e.value), nil
		}
	}
	c.traceRead(ctx, dbcache.OpGetOrSet, 0, 1)
	if err := c.settle(ctx, mk); err != nil {
		return nil, err
	}
	done := c.writing(mk)
	v, err := viaStore()
	done()
	return v, err
}

// wbLookup is the write-behind queue's lookup, none without one.
func (c *Cache) wbLookup(mk string, now time.Time) ([]byte, time.Time, bool, bool) {
	if c.wb == nil {
		return nil, time.Time{}, false, false
	}
	return c.wb.lookup(mk, now)
}

// writing registers a write of the made keys mks through the layer, before
// it is sent, and returns what to call when it has returned, whatever its
// outcome: the keys' copies are dropped, and fills in flight for them store
// nothing (they may have read the value from before the write), so this
// process reads its own write at once; other processes' copies go through
// the feed. A Set of one of the keys in flight meanwhile keeps no copy:
// the two writes' commit order is unknown.
func (c *Cache) writing(mks ...string) (done func()) {
	toks := make([]writeToken, len(mks))
	for i, mk := range mks {
		toks[i] = c.local.beginWrite(mk)
	}
	return func() {
		n := 0
		for _, t := range toks {
			_, dropped := c.local.endWrite(t, false, nil, time.Time{}, 0)
			c.seal(t.key, nil)
			n += b2i(dropped)
		}
		c.cnt.invalidations.Add(int64(len(mks)))
		if t := c.cfg.Tracer; t != nil {
			inv := Invalidation{Cause: CauseWrite, Keys: len(mks), Dropped: n}
			if len(mks) == 1 && c.cfg.TraceKeys {
				inv.Key = mks[0]
			}
			t.TraceInvalidate(inv)
		}
	}
}

// Set is the store's Set. With a timeout of Forever or a positive TTL, the
// value written is kept as the key's copy, so this process's next reads of
// it are hits (another process's copy is dropped by the feed); the copy
// expires the timeout after the Set began, never after the entry. Such
// Sets of one key through the layer run one at a time (the database runs
// them so anyway, on the row's lock), so that each keeps its copy. With
// DefaultTimeout (the store's default is not known here) or TTL(d <= 0),
// when another write of the key through the layer was in flight, or when
// the key changed meanwhile, the key's copy is dropped instead.
func (c *Cache) Set(ctx context.Context, key string, value []byte, timeout dbcache.Timeout) error {
	if c.closed.Load() {
		return dbcache.ErrClosed
	}
	mk := c.makeKey(key)
	if c.wb != nil {
		if deferrable(timeout) {
			return c.wb.enqueue(ctx, key, mk, value, timeout, time.Now())
		}
		if err := c.settle(ctx, mk); err != nil {
			return err
		}
	}
	d, ttl := timeout.Duration()
	if !(timeout.IsForever() || (ttl && d > 0)) || len(value) > c.cfg.MaxEntryBytes {
		done := c.writing(mk)
		err := c.store.Set(ctx, key, value, timeout)
		done()
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
	kept, dropped := c.local.endWrite(tok, err == nil, bytes.Clone(nonNil(value)), expires, c.since(time.Now()))
	c.seal(mk, nil)
	if kept {
		c.cnt.writesKept.Add(1)
		return err
	}
	c.cnt.invalidations.Add(1)
	if t := c.cfg.Tracer; t != nil {
		inv := Invalidation{Cause: CauseWrite, Keys: 1, Dropped: b2i(dropped)}
		if c.cfg.TraceKeys {
			inv.Key = mk
		}
		t.TraceInvalidate(inv)
	}
	return err
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// Add is the store's Add, a write of the key through the layer.
func (c *Cache) Add(ctx context.Context, key string, value []byte, timeout dbcache.Timeout) (bool, error) {
	if c.closed.Load() {
		return false, dbcache.ErrClosed
	}
	mk := c.makeKey(key)
	if err := c.settle(ctx, mk); err != nil {
		return false, err
	}
	done := c.writing(mk)
	ok, err := c.store.Add(ctx, key, value, timeout)
	done()
	return ok, err
}

// Touch is the store's Touch, a write of the key through the layer (its
// expiry moved).
func (c *Cache) Touch(ctx context.Context, key string, timeout dbcache.Timeout) (bool, error) {
	if c.closed.Load() {
		return false, dbcache.ErrClosed
	}
	mk := c.makeKey(key)
	if err := c.settle(ctx, mk); err != nil {
		return false, err
	}
	done := c.writing(mk)
	ok, err := c.store.Touch(ctx, key, timeout)
	done()
	return ok, err
}

// SetMany is the store's SetMany, a write of the keys through the layer.
func (c *Cache) SetMany(ctx context.Context, items map[string][]byte, timeout dbcache.Timeout) ([]string, error) {
	if c.closed.Load() {
		keys := make([]string, 0, len(items))
		for k := range items {
			keys = append(keys, k)
		}
		return keys, dbcache.ErrClosed
	}
	if c.wb != nil && deferrable(timeout) && int64(len(items)) <= c.wb.maxQ {
		// Queued all or nothing, as the store writes them.
		keys := make([]string, 0, len(items))
		for k := range items {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		if len(keys) == 0 {
			return nil, nil
		}
		if err := c.wb.enqueueMany(ctx, keys, items, timeout, time.Now()); err != nil {
			return keys, err
		}
		return nil, nil
	}
	mks := make([]string, 0, len(items))
	for k := range items {
		mks = append(mks, c.makeKey(k))
	}
	if len(mks) > 0 {
		if err := c.settle(ctx, mks...); err != nil {
			keys := make([]string, 0, len(items))
			for k := range items {
				keys = append(keys, k)
			}
			return keys, err
		}
	}
	done := c.writing(mks...)
	failed, err := c.store.SetMany(ctx, items, timeout)
	done()
	return failed, err
}

// Incr is the store's Incr, a write of the key through the layer.
func (c *Cache) Incr(ctx context.Context, key string, delta int64) (int64, error) {
	if c.closed.Load() {
		return 0, dbcache.ErrClosed
	}
	mk := c.makeKey(key)
	if err := c.settle(ctx, mk); err != nil {
		return 0, err
	}
	done := c.writing(mk)
	n, err := c.store.Incr(ctx, key, delta)
	done()
	return n, err
}

// Decr is the store's Decr, a write of the key through the layer.
func (c *Cache) Decr(ctx context.Context, key string, delta int64) (int64, error) {
	if c.closed.Load() {
		return 0, dbcache.ErrClosed
	}
	mk := c.makeKey(key)
	if err := c.settle(ctx, mk); err != nil {
		return 0, err
	}
	done := c.writing(mk)
	n, err := c.store.Decr(ctx, key, delta)
	done()
	return n, err
}

// IncrVersion is the store's IncrVersion, a write of the key through the
// layer. (The entry's new version is another view's key: a near cache in
// front of that view learns of it from the feed.)
func (c *Cache) IncrVersion(ctx context.Context, key string, delta int) (int, error) {
	if c.closed.Load() {
		return 0, dbcache.ErrClosed
	}
	mk := c.makeKey(key)
	if err := c.settle(ctx, mk); err != nil {
		return 0, err
	}
	done := c.writing(mk)
	v, err := c.caps.versions.IncrVersion(ctx, key, delta)
	done()
	return v, err
}

// DecrVersion is the store's DecrVersion, a write of the key through the
// layer.
func (c *Cache) DecrVersion(ctx context.Context, key string, delta int) (int, error) {
	if c.closed.Load() {
		return 0, dbcache.ErrClosed
	}
	mk := c.makeKey(key)
	if err := c.settle(ctx, mk); err != nil {
		return 0, err
	}
	done := c.writing(mk)
	v, err := c.caps.versions.DecrVersion(ctx, key, delta)
	done()
	return v, err
}

// Delete is the store's Delete, a write of the key through the layer.
func (c *Cache) Delete(ctx context.Context, key string) (bool, error) {
	if c.closed.Load() {
		return false, dbcache.ErrClosed
	}
	mk := c.makeKey(key)
	if err := c.settle(ctx, mk); err != nil {
		return false, err
	}
	done := c.writing(mk)
	ok, err := c.store.Delete(ctx, key)
	done()
	return ok, err
}

// DeleteMany is the store's DeleteMany, a write of the keys through the
// layer.
func (c *Cache) DeleteMany(ctx context.Context, keys []string) (int, error) {
	if c.closed.Load() {
		return 0, dbcache.ErrClosed
	}
	mks := make([]string, len(keys))
	for i, k := range keys {
		mks[i] = c.makeKey(k)
	}
	if len(mks) > 0 {
		if err := c.settle(ctx, mks...); err != nil {
			return 0, err
		}
	}
	done := c.writing(mks...)
	n, err := c.store.DeleteMany(ctx, keys)
	done()
	return n, err
}

// DeletePrefix is the store's DeletePrefix; when it returns, the copies of
// every key with the prefix are dropped, and fills and Sets of such keys in
// flight keep nothing.
func (c *Cache) DeletePrefix(ctx context.Context, prefix string) (int, error) {
	if c.closed.Load() {
		return 0, dbcache.ErrClosed
	}
	if err := c.settle(ctx); err != nil {
		return 0, err
	}
	n, err := c.caps.lister.DeletePrefix(ctx, prefix)
	dropped := c.local.invalidatePrefix(c.makeKey(prefix))
	c.sealAll(c.makeKey(prefix))
	c.cnt.invalidations.Add(int64(dropped))
	if t := c.cfg.Tracer; t != nil {
		t.TraceInvalidate(Invalidation{Cause: CauseClear, Keys: dropped, Dropped: dropped})
	}
	return n, err
}

// Clear is the store's Clear; when it returns, every copy is dropped, and
// fills and Sets in flight keep nothing.
func (c *Cache) Clear(ctx context.Context) error {
	if c.closed.Load() {
		return dbcache.ErrClosed
	}
	if err := c.settle(ctx); err != nil {
		return err
	}
	err := c.store.Clear(ctx)
	n := c.local.flush()
	c.sealAll("")
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
	if err := c.settleKeys(ctx, key); err != nil {
		return dbcache.Timeout{}, err
	}
	return c.caps.ttl.TTL(ctx, key)
}

// Keys is the store's Keys.
func (c *Cache) Keys(ctx context.Context, prefix string) iter.Seq2[string, error] {
	if c.closed.Load() {
		return func(yield func(string, error) bool) { yield("", dbcache.ErrClosed) }
	}
	if c.wb == nil {
		return c.caps.lister.Keys(ctx, prefix)
	}
	return func(yield func(string, error) bool) {
		if err := c.settle(ctx); err != nil {
			yield("", err)
			return
		}
		for k, err := range c.caps.lister.Keys(ctx, prefix) {
			if !yield(k, err) {
				return
			}
		}
	}
}
