// Package memstore is an in-memory dbcache.Store with dbcache's semantics,
// for unit tests of code that uses a cache, without PostgreSQL (as Go
// programs test against miniredis instead of a Redis):
//
//	store, _ := memstore.New(nil)
//	users, _ := typed.New[User](store, nil) // code under test takes a dbcache.Store
//	…
//	store.FastForward(time.Hour)            // entries age an hour at once
//
// It keeps Django's semantics as dbcache's tests define them, and package
// storetest checks it with the same suite as the PostgreSQL cache:
// timeouts (DefaultTimeout, Forever, ExpiresIn, 0 and negative durations
// expiring at once), an expired entry absent for every operation, Add,
// Incr and Decr on decimal integers (ErrNotInteger, ErrOverflow, the value
// left unchanged), Touch, the bulk forms (SetMany all or nothing), key
// making with a prefix and a version, key validation (ErrInvalidKey for
// the keys PostgreSQL cannot store, the memcached warnings as
// Config.KeyCheck says) and ErrClosed after Close. It has every optional
// capability of a *dbcache.Cache that one process can give: TTLReader,
// KeyLister, Versioner, KeyMaker, Loader (one load per key among its
// goroutines; stale-while-revalidate), Leaser (leases among its
// goroutines, by its clock) and CompareAndSwapper (its tokens count the
// store's writes, so none repeats). A Store is safe for concurrent use.
//
// What it does not model is the database: there is one process, so no
// cross-process coordination, no fail-open, no transaction (WithTx), no
// statement or pool limits, and its clock is the process's (moved by
// FastForward), where a Cache's is the database's.
package memstore

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/flight"
)

// Config configures a Store. The zero value (or nil) is a *dbcache.Cache's
// defaults, and every field follows dbcache.Config's rule: its zero value
// is its documented default.
type Config struct {
	// DefaultTimeout is the timeout of calls that pass
	// dbcache.DefaultTimeout. Defaults to
	// dbcache.ExpiresIn(dbcache.DefaultTimeoutDefault).
	DefaultTimeout dbcache.Timeout

	// KeyCheck says what to do with keys memcached could not store, as
	// dbcache.Config.KeyCheck. Defaults to dbcache.KeyCheckWarn.
	KeyCheck dbcache.KeyCheck

	// KeyFunc makes stored keys. Defaults to dbcache.DefaultKeyFunc.
	KeyFunc dbcache.KeyFunc

	// KeyPrefix is passed to KeyFunc. Defaults to "".
	KeyPrefix string

	// LogKeys lets the log lines name keys, as dbcache.Config.LogKeys.
	// Defaults to false.
	LogKeys bool

	// Logger receives key warnings and failed background refreshes.
	// Defaults to slog.Default().
	Logger *slog.Logger

	// Now is the store's clock, which decides expiry; FastForward moves
	// it on. Defaults to time.Now.
	Now func() time.Time

	// Version is the default key version. Defaults to
	// dbcache.VersionDefault (1); for version 0, set VersionZero.
	Version int

	// VersionZero makes 0 the default key version, as
	// dbcache.Config.VersionZero. Defaults to false.
	VersionZero bool
}

// Store is an in-memory cache. A Store value is a view: WithVersion
// returns another view of the same entries at another default version.
type Store struct {
	s       *state
	version int
}

// state is what every view of one store shares.
type state struct {
	cfg      Config
	keyCheck dbcache.KeyValidator

	mu      sync.Mutex
	entries map[string]entry // by made key
	// purgeAt is the size past which a write first drops the expired
	// entries: twice the live size at the last purge.
	purgeAt int
	// lastToken is the token of the latest write: one counter for the
	// whole store, so no two writes of any key share a token.
	lastToken uint64

	// leases are the held leases (lease.go), by made key, apart from
	// the entries; leaseSweep is the size past which an acquire drops
	// the expired ones.
	leases     map[string]lease
	leaseSweep int

	offset atomic.Int64 // FastForward's, in nanoseconds
	closed atomic.Bool

	flights    flight.Group
	refreshMu  sync.Mutex
	refreshing map[string]bool
	background sync.WaitGroup
	bgCtx      context.Context
	bgCancel   context.CancelFunc
}

// entry is a stored value; a zero expires never expires. token is the
// write that stored it (dbcache.CompareAndSwapper).
type entry struct {
	value   []byte
	expires time.Time
	token   uint64
}

// nextToken is the token of a new write. The caller holds mu.
func (s *state) nextToken() uint64 {
	s.lastToken++
	return s.lastToken
}

var (
	_ dbcache.Store     = (*Store)(nil)
	_ dbcache.TTLReader = (*Store)(nil)
	_ dbcache.KeyLister = (*Store)(nil)
	_ dbcache.Versioner = (*Store)(nil)
	_ dbcache.KeyMaker  = (*Store)(nil)
	_ dbcache.Loader    = (*Store)(nil)
	_ dbcache.Leaser    = (*Store)(nil)

	_ dbcache.CompareAndSwapper = (*Store)(nil)
)

// New returns an empty store. A Config a *dbcache.Cache would refuse
// (VersionZero beside another Version, an unknown KeyCheck) is an error.
func New(cfg *Config) (*Store, error) {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.DefaultTimeout.IsDefault() {
		c.DefaultTimeout = dbcache.ExpiresIn(dbcache.DefaultTimeoutDefault)
	}
	if c.KeyFunc == nil {
		c.KeyFunc = dbcache.DefaultKeyFunc
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	switch {
	case c.VersionZero && c.Version != 0:
		return nil, fmt.Errorf("memstore: Config.VersionZero is set with Config.Version %d: set one or the other", c.Version)
	case c.Version == 0 && !c.VersionZero:
		c.Version = dbcache.VersionDefault
	}
	if c.KeyCheck < dbcache.KeyCheckWarn || c.KeyCheck > dbcache.KeyCheckOff {
		return nil, fmt.Errorf("memstore: Config.KeyCheck %d is not a dbcache.KeyCheck", c.KeyCheck)
	}
	s := &state{cfg: c, entries: map[string]entry{}, purgeAt: 1024, leaseSweep: leaseSweepAt,
		keyCheck: dbcache.KeyValidator{Check: c.KeyCheck, LogKeys: c.LogKeys, Logger: c.Logger}}
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	return &Store{s: s, version: c.Version}, nil
}

// FastForward moves the store's clock d on: every entry is d closer to its
// expiry, as if d had passed (miniredis's FastForward). It moves every
// view's clock, since they share their entries. A negative d is ignored.
func (s *Store) FastForward(d time.Duration) {
	if d > 0 {
		s.s.offset.Add(int64(d))
	}
}

// now is the store's clock.
func (s *state) now() time.Time {
	return s.cfg.Now().Add(time.Duration(s.offset.Load()))
}

// WithVersion returns a view of the store whose operations use version
// instead of Config.Version: Django's per-call version argument.
func (s *Store) WithVersion(version int) *Store { return &Store{s: s.s, version: version} }

// Version returns the view's default key version.
func (s *Store) Version() int { return s.version }

// Len returns how many live entries the store holds, every prefix and
// version together.
func (s *Store) Len() int {
	st := s.s
	st.mu.Lock()
	defer st.mu.Unlock()
	now := st.now()
	n := 0
	for _, e := range st.entries {
		if e.live(now) {
			n++
		}
	}
	return n
}

// Close makes every later operation, on every view, return
// dbcache.ErrClosed and drops the entries. It cancels the background
// refreshes of GetOrRevalidate and waits for them to return. Calling it
// again is a no-op.
func (s *Store) Close() error {
	st := s.s
	if st.closed.Swap(true) {
		return nil
	}
	st.refreshMu.Lock() // no refresh starts after this
	st.refreshMu.Unlock()
	st.bgCancel()
	st.background.Wait()
	st.mu.Lock()
	st.entries = map[string]entry{}
	st.leases = nil
	st.mu.Unlock()
	return nil
}

func (s *Store) checkOpen() error {
	if s.s.closed.Load() {
		return dbcache.ErrClosed
	}
	return nil
}

// MakeKey returns the stored key for key at the view's version: Django's
// make_key. It does not validate; see ValidateKey.
func (s *Store) MakeKey(key string) string {
	return s.s.cfg.KeyFunc(key, s.s.cfg.KeyPrefix, s.version)
}

// ValidateKey checks a made key as a *dbcache.Cache does (see
// dbcache.KeyValidator), with Config.KeyCheck, LogKeys and Logger.
func (s *Store) ValidateKey(ctx context.Context, madeKey string) error {
	return s.s.keyCheck.Validate(ctx, madeKey)
}

// key makes and validates a key; an invalid one's error names the caller's
// key.
func (s *Store) key(ctx context.Context, key string) (string, error) {
	k := s.MakeKey(key)
	if err := s.ValidateKey(ctx, k); err != nil {
		var ik *dbcache.InvalidKeyError
		if errors.As(err, &ik) {
			ik.Key = key
		}
		return "", err
	}
	return k, nil
}

// keys makes and validates many keys, in the order given.
func (s *Store) keys(ctx context.Context, keys []string) ([]string, error) {
	made := make([]string, len(keys))
	for i, k := range keys {
		mk, err := s.key(ctx, k)
		if err != nil {
			return nil, err
		}
		made[i] = mk
	}
	return made, nil
}

func (e entry) live(now time.Time) bool { return e.expires.IsZero() || e.expires.After(now) }

// expiry is when an entry written now with timeout expires (zero for
// never), and whether it is live at all: a duration <= 0 expires at once.
// Durations are kept to the microsecond, as PostgreSQL keeps them.
func (s *state) expiry(timeout dbcache.Timeout, now time.Time) (time.Time, bool) {
	if timeout.IsDefault() {
		timeout = s.cfg.DefaultTimeout
	}
	if timeout.IsForever() {
		return time.Time{}, true
	}
	d, _ := timeout.Duration()
	if d <= 0 {
		return time.Time{}, false
	}
	d = max(d.Truncate(time.Microsecond), time.Microsecond)
	return now.Add(d), true
}

// get returns the live entry of k. The caller holds mu.
func (s *state) get(k string, now time.Time) (entry, bool) {
	e, ok := s.entries[k]
	if !ok || !e.live(now) {
		return entry{}, false
	}
	return e, true
}

// put stores value under k, or removes k for a timeout that expires at
// once. The caller holds mu.
func (s *state) put(k string, value []byte, timeout dbcache.Timeout, now time.Time) {
	expires, live := s.expiry(timeout, now)
	if !live {
		delete(s.entries, k)
		return
	}
	s.entries[k] = entry{value: append([]byte{}, value...), expires: expires, token: s.nextToken()}
	if len(s.entries) > s.purgeAt {
		for mk, e := range s.entries {
			if !e.live(now) {
				delete(s.entries, mk)
			}
		}
		s.purgeAt = max(1024, 2*len(s.entries))
	}
}

// copyOf is what a caller gets of a stored value: a copy of its own,
// never nil (an empty value is a hit).
func copyOf(v []byte) []byte { return append([]byte{}, v...) }

// with is every single-key operation's frame: key made and validated
// (ErrInvalidKey before ErrClosed, as a Cache orders them), the store open,
// then f under the lock with the made key and the store's clock.
func (s *Store) with(ctx context.Context, key string, f func(st *state, k string, now time.Time) error) error {
	k, err := s.key(ctx, key)
	if err != nil {
		return err
	}
	if err := s.checkOpen(); err != nil {
		return err
	}
	st := s.s
	st.mu.Lock()
	defer st.mu.Unlock()
	return f(st, k, st.now())
}

// Get returns the value stored under key, or dbcache.ErrMiss.
func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {
	v, _, err := s.GetWithTTL(ctx, key)
	return v, err
}

// GetWithTTL is Get that also returns the entry's remaining lifetime, as
// TTL reports it.
func (s *Store) GetWithTTL(ctx context.Context, key string) (v []byte, ttl dbcache.Timeout, err error) {
	err = s.with(ctx, key, func(st *state, k string, now time.Time) error {
		e, ok := st.get(k, now)
		if !ok {
			return dbcache.ErrMiss
		}
		v, ttl = copyOf(e.value), remaining(e, now)
		return nil
	})
	if err != nil {
		return nil, dbcache.Timeout{}, err
	}
	return v, ttl, nil
}

// remaining is e's remaining lifetime: Forever, or ExpiresIn(d) with d at
// least a microsecond.
func remaining(e entry, now time.Time) dbcache.Timeout {
	if e.expires.IsZero() {
		return dbcache.Forever
	}
	return dbcache.ExpiresIn(max(e.expires.Sub(now).Truncate(time.Microsecond), time.Microsecond))
}

// TTL returns the remaining lifetime of key's live entry: dbcache.Forever
// for one that never expires, dbcache.ExpiresIn(d) with d > 0 otherwise,
// and dbcache.ErrMiss when there is none.
func (s *Store) TTL(ctx context.Context, key string) (dbcache.Timeout, error) {
	_, ttl, err := s.GetWithTTL(ctx, key)
	return ttl, err
}

// HasKey reports whether key has a live entry.
func (s *Store) HasKey(ctx context.Context, key string) (bool, error) {
	_, err := s.Get(ctx, key)
	if errors.Is(err, dbcache.ErrMiss) {
		return false, nil
	}
	return err == nil, err
}

// GetMany returns the live entries among keys, keyed by the caller's keys.
func (s *Store) GetMany(ctx context.Context, keys []string) (map[string][]byte, error) {
	made, err := s.keys(ctx, keys)
	if err != nil {
		return nil, err
	}
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(keys))
	st := s.s
	st.mu.Lock()
	defer st.mu.Unlock()
	now := st.now()
	for i, k := range made {
		if e, ok := st.get(k, now); ok {
			out[keys[i]] = copyOf(e.value)
		}
	}
	return out, nil
}

// Set stores value under key, replacing any entry. A timeout that expires
// at once leaves nothing a Get can see.
func (s *Store) Set(ctx context.Context, key string, value []byte, timeout dbcache.Timeout) error {
	return s.with(ctx, key, func(st *state, k string, now time.Time) error {
		st.put(k, value, timeout, now)
		return nil
	})
}

// SetMany stores every item, all or nothing: a key it refuses fails the
// call before anything is stored, with every key returned as failed.
// Two caller keys that make one stored key (a custom KeyFunc) store the
// value of the last in sorted order, as a *dbcache.Cache does.
func (s *Store) SetMany(ctx context.Context, items map[string][]byte, timeout dbcache.Timeout) ([]string, error) {
	keys := make([]string, 0, len(items))
	for k := range items {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	made, err := s.keys(ctx, keys)
	if err != nil {
		return keys, err
	}
	if err := s.checkOpen(); err != nil {
		return keys, err
	}
	st := s.s
	st.mu.Lock()
	defer st.mu.Unlock()
	now := st.now()
	for i, k := range made {
		st.put(k, items[keys[i]], timeout, now)
	}
	return nil, nil
}

// Add stores value under key only if the key has no live entry, and
// reports whether it did (true too for a timeout that expires at once,
// which stores nothing visible, as Django's add returns).
func (s *Store) Add(ctx context.Context, key string, value []byte, timeout dbcache.Timeout) (stored bool, err error) {
	err = s.with(ctx, key, func(st *state, k string, now time.Time) error {
		if _, live := st.get(k, now); !live {
			st.put(k, value, timeout, now)
			stored = true
		}
		return nil
	})
	return stored && err == nil, err
}

// GetOrSet returns the value stored under key; on a miss it stores value
// and returns it (with a timeout that expires at once, it returns value
// and stores nothing visible).
func (s *Store) GetOrSet(ctx context.Context, key string, value []byte, timeout dbcache.Timeout) (v []byte, err error) {
	err = s.with(ctx, key, func(st *state, k string, now time.Time) error {
		v = st.getOrSet(k, value, timeout, now)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

// getOrSet is GetOrSet on the made key k. The caller holds mu.
func (s *state) getOrSet(k string, value []byte, timeout dbcache.Timeout, now time.Time) []byte {
	if e, ok := s.get(k, now); ok {
		return copyOf(e.value)
	}
	s.put(k, value, timeout, now)
	return copyOf(value)
}

// Touch gives a live entry a new expiry and reports whether there was
// one; an expired entry stays expired. A timeout that expires at once
// expires the entry and returns true.
func (s *Store) Touch(ctx context.Context, key string, timeout dbcache.Timeout) (live bool, err error) {
	err = s.with(ctx, key, func(st *state, k string, now time.Time) error {
		var e entry
		if e, live = st.get(k, now); live {
			// A new expiry, the same value and token.
			st.put(k, e.value, timeout, now)
			if t, ok := st.entries[k]; ok {
				t.token = e.token
				st.entries[k] = t
			}
		}
		return nil
	})
	return live && err == nil, err
}

// Incr adds delta to the integer stored under key (the decimal ASCII
// form of an int64, as Redis INCR reads it) and returns the new value:
// dbcache.ErrMiss without a live entry, dbcache.ErrNotInteger for another
// value, dbcache.ErrOverflow past an int64, and in those cases nothing
// changes. The entry keeps its expiry.
func (s *Store) Incr(ctx context.Context, key string, delta int64) (int64, error) {
	return s.incr(ctx, key, delta, false)
}

// Decr subtracts delta from the integer stored under key; see Incr.
func (s *Store) Decr(ctx context.Context, key string, delta int64) (int64, error) {
	return s.incr(ctx, key, delta, true)
}

func (s *Store) incr(ctx context.Context, key string, delta int64, negate bool) (n int64, err error) {
	err = s.with(ctx, key, func(st *state, k string, now time.Time) error {
		n, err = st.incr(key, k, now, delta, negate)
		return err
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// incr is Incr (Decr when negate) on key's made key k. The caller holds
// mu.
func (st *state) incr(key, k string, now time.Time, delta int64, negate bool) (int64, error) {
	e, ok := st.get(k, now)
	if !ok {
		return 0, dbcache.ErrMiss
	}
	cur, ok := dbcache.ParseInteger(e.value)
	if !ok {
		return 0, fmt.Errorf("%w: key %q", dbcache.ErrNotInteger, key)
	}
	var n int64
	switch {
	case negate && delta == math.MinInt64:
		// -MinInt64 is no int64, but cur - MinInt64 is one for any
		// negative cur, as the database's numeric arithmetic finds.
		if cur >= 0 {
			return 0, fmt.Errorf("%w: %d - %d on key %q", dbcache.ErrOverflow, cur, delta, key)
		}
		n = cur + math.MaxInt64 + 1
	default:
		if negate {
			delta = -delta
		}
		n = cur + delta
		if (delta > 0 && n < cur) || (delta < 0 && n > cur) {
			return 0, fmt.Errorf("%w: %d %+d on key %q", dbcache.ErrOverflow, cur, delta, key)
		}
	}
	st.entries[k] = entry{value: strconv.AppendInt(nil, n, 10), expires: e.expires, token: st.nextToken()}
	return n, nil
}

// IncrVersion moves the entry for key from the view's version to version
// + delta, value and expiry intact, and returns the new version; whatever
// the new version held is replaced. dbcache.ErrMiss without a live entry
// at the view's version.
func (s *Store) IncrVersion(ctx context.Context, key string, delta int) (int, error) {
	return s.moveVersion(ctx, key, delta)
}

// DecrVersion moves the entry to version - delta; see IncrVersion.
func (s *Store) DecrVersion(ctx context.Context, key string, delta int) (int, error) {
	if delta == math.MinInt {
		if _, err := s.key(ctx, key); err != nil {
			return 0, err
		}
		return 0, fmt.Errorf("%w: version delta %d", dbcache.ErrOverflow, delta)
	}
	return s.moveVersion(ctx, key, -delta)
}

func (s *Store) moveVersion(ctx context.Context, key string, delta int) (int, error) {
	from, err := s.key(ctx, key)
	if err != nil {
		return 0, err
	}
	if err := s.checkOpen(); err != nil {
		return 0, err
	}
	if (delta > 0 && s.version > math.MaxInt-delta) || (delta < 0 && s.version < math.MinInt-delta) {
		return 0, fmt.Errorf("%w: version %d %+d", dbcache.ErrOverflow, s.version, delta)
	}
	to := s.version + delta
	dest := from
	if delta != 0 {
		if dest, err = s.WithVersion(to).key(ctx, key); err != nil {
			return 0, err
		}
	}
	st := s.s
	st.mu.Lock()
	defer st.mu.Unlock()
	e, ok := st.get(from, st.now())
	if !ok {
		return 0, dbcache.ErrMiss
	}
	if dest != from {
		delete(st.entries, from)
		e.token = st.nextToken() // a new entry at dest
		st.entries[dest] = e
	}
	return to, nil
}

// Delete removes key and reports whether a live entry was removed.
func (s *Store) Delete(ctx context.Context, key string) (bool, error) {
	n, err := s.DeleteMany(ctx, []string{key})
	return n == 1, err
}

// DeleteMany removes keys and returns how many live entries it removed. A
// key it refuses fails the call before anything is removed.
func (s *Store) DeleteMany(ctx context.Context, keys []string) (int, error) {
	made, err := s.keys(ctx, keys)
	if err != nil {
		return 0, err
	}
	if err := s.checkOpen(); err != nil {
		return 0, err
	}
	return s.s.remove(slices.Values(made)), nil
}

// remove deletes the entries of the made keys in keys, expired ones
// too, and returns how many were live.
func (s *state) remove(keys iter.Seq[string]) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	n := 0
	for k := range keys {
		if e, ok := s.entries[k]; ok {
			n += b2i(e.live(now))
			delete(s.entries, k)
		}
	}
	return n
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Clear removes every entry: every prefix and version, every view's.
func (s *Store) Clear(ctx context.Context) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	st := s.s
	st.mu.Lock()
	defer st.mu.Unlock()
	st.entries = map[string]entry{}
	return nil
}

// stem returns the stored key of prefix and the part of every stored key
// before the caller's key, or dbcache.ErrPrefixUnsupported when the
// KeyFunc does not keep the caller's key at the end of the stored key,
// as a *dbcache.Cache decides it.
func (s *Store) stem(prefix string) (lo, stem string, err error) {
	stem, lo = s.MakeKey(""), s.MakeKey(prefix)
	if stem+prefix != lo {
		return "", "", dbcache.ErrPrefixUnsupported
	}
	for _, probe := range []string{"", "a", "Z~", "\u00e9\U0010FFFF"} {
		if s.MakeKey(prefix+probe) != lo+probe {
			return "", "", dbcache.ErrPrefixUnsupported
		}
	}
	if !utf8.ValidString(lo) || strings.IndexByte(lo, 0) >= 0 {
		return "", "", &dbcache.InvalidKeyError{Key: prefix, MadeKey: lo, Reason: "with the key prefix and version it is not text PostgreSQL can hold (invalid UTF-8 or a NUL byte)"}
	}
	return lo, stem, nil
}

// Keys returns the caller keys of the view's live entries that start with
// prefix, in the stored keys' byte order. The keys are read at once, when
// the sequence starts: writes while it runs are not seen. An error ends
// the sequence with ("", err).
func (s *Store) Keys(ctx context.Context, prefix string) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		lo, stem, err := s.stem(prefix)
		if err == nil {
			err = s.checkOpen()
		}
		if err != nil {
			yield("", err)
			return
		}
		st := s.s
		st.mu.Lock()
		now := st.now()
		var found []string
		for k, e := range st.entries {
			if strings.HasPrefix(k, lo) && e.live(now) {
				found = append(found, k)
			}
		}
		st.mu.Unlock()
		slices.Sort(found)
		for _, k := range found {
			if !yield(strings.TrimPrefix(k, stem), nil) {
				return
			}
		}
	}
}

// DeletePrefix removes every entry whose caller key starts with prefix,
// under the view's key prefix and version, and returns how many live
// entries it removed. An empty prefix removes the view's whole version.
func (s *Store) DeletePrefix(ctx context.Context, prefix string) (int, error) {
	lo, _, err := s.stem(prefix)
	if err != nil {
		return 0, err
	}
	if err := s.checkOpen(); err != nil {
		return 0, err
	}
	return s.s.remove(func(yield func(string) bool) {
		// remove holds the lock while it ranges over this sequence.
		for k := range s.s.entries {
			if strings.HasPrefix(k, lo) && !yield(k) {
				return
			}
		}
	}), nil
}

// GetOrSetFunc is GetOrSet with a loader: load runs only on a miss, once
// however many goroutines miss the key at once (they all return its
// value), and its result is stored unless another caller stored first,
// whose value is then returned. An error from load is a
// *dbcache.LoaderError, a panic a *dbcache.LoaderPanicError, and nothing
// is stored. The loader gets a context with the first caller's values,
// cancelled only when every caller waiting on it has gone.
func (s *Store) GetOrSetFunc(ctx context.Context, key string, load dbcache.LoadFunc, timeout dbcache.Timeout) ([]byte, error) {
	return s.getOrLoad(ctx, key, load, timeout, 0, false)
}

// GetOrRevalidate is GetOrSetFunc with stale-while-revalidate, as
// dbcache.Cache.GetOrRevalidate: an entry it stores expires after fresh +
// stale; a hit with at most stale left is returned at once while one
// background refresh (per key) stores a new value. A failed refresh is
// logged, and the stale value served until it expires.
func (s *Store) GetOrRevalidate(ctx context.Context, key string, load dbcache.LoadFunc, fresh, stale time.Duration) ([]byte, error) {
	fresh, stale = max(fresh, 0), max(stale, 0)
	return s.getOrLoad(ctx, key, load, dbcache.ExpiresIn(fresh+stale), stale, true)
}

func (s *Store) getOrLoad(ctx context.Context, key string, load dbcache.LoadFunc, timeout dbcache.Timeout, stale time.Duration, revalidate bool) ([]byte, error) {
	k, err := s.key(ctx, key)
	if err != nil {
		return nil, err
	}
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	if load == nil {
		return nil, errors.New("memstore: get_or_set: load is nil")
	}
	st := s.s
	st.mu.Lock()
	now := st.now()
	e, ok := st.get(k, now)
	var v []byte
	if ok {
		v = copyOf(e.value)
	}
	st.mu.Unlock()
	if ok {
		if revalidate && !e.expires.IsZero() && e.expires.Sub(now) <= stale {
			st.refresh(ctx, k, load, timeout)
		}
		return v, nil
	}
	return st.flights.Do(ctx, k, func(fctx context.Context) ([]byte, error) {
		v, err := dbcache.RunLoader(fctx, load)
		if err != nil {
			return nil, err
		}
		if err := s.checkOpen(); err != nil {
			return nil, err
		}
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.getOrSet(k, v, timeout, st.now()), nil
	})
}

// refresh reloads a stale entry in the background, at most one refresh
// per key at a time, under the store's own context (ended by Close) with
// the caller's values.
func (s *state) refresh(ctx context.Context, k string, load dbcache.LoadFunc, timeout dbcache.Timeout) {
	s.refreshMu.Lock()
	if s.refreshing == nil {
		s.refreshing = map[string]bool{}
	}
	if s.refreshing[k] || s.closed.Load() {
		s.refreshMu.Unlock()
		return
	}
	s.refreshing[k] = true
	s.background.Add(1)
	s.refreshMu.Unlock()
	go func() {
		defer s.background.Done()
		defer func() {
			s.refreshMu.Lock()
			delete(s.refreshing, k)
			s.refreshMu.Unlock()
		}()
		v, err := dbcache.RunLoader(valuesOnly{Context: s.bgCtx, values: ctx}, load)
		if err != nil {
			if s.bgCtx.Err() == nil {
				attrs := []any{"error_code", dbcache.ErrorCode(err)}
				if s.cfg.LogKeys {
					attrs = append(attrs, "key", k, "error", err)
				}
				s.cfg.Logger.WarnContext(ctx, "memstore: stale-while-revalidate refresh failed; serving the stale value until it expires", attrs...)
			}
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.closed.Load() {
			s.put(k, v, timeout, s.now())
		}
	}()
}

// valuesOnly is a context with one context's values and another's
// deadline and cancellation.
type valuesOnly struct {
	context.Context
	values context.Context
}

func (v valuesOnly) Value(key any) any { return v.values.Value(key) }
