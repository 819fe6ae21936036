package sharded

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
)

// RetryEveryDefault is the default for Config.RetryEvery.
const RetryEveryDefault = time.Second

// Shard is one server of a sharded cache: its name on the ring and how to
// reach its cache table. Give exactly one of Cache, Pool and DSN.
type Shard struct {
	// Name places the shard on the ring: keys are spread by the shards'
	// names, never by their addresses or the order they are listed in, so
	// a server can move (a new host, a failover to a replica) without
	// moving a key, and every process that lists the same names places
	// every key alike. Letters, digits and . _ - only, at most 63 bytes.
	Name string

	// Cache is a cache the caller built on the server (with a culler's
	// OnWrite, a Tracer of its own, …). The sharded cache uses it as it is
	// and never closes it.
	Cache *dbcache.Cache

	// Pool is a pool on the server; the sharded cache builds the cache
	// over it with Config (this Shard's, else the sharded Config's) and
	// never closes the pool.
	Pool *pgxpool.Pool

	// DSN is a connection string for the server (a libpq URL or key=value
	// string); the sharded cache opens a pool of its own (dbcache.Open)
	// and closes it on Close.
	DSN string

	// Config configures the cache built for a Pool or DSN shard. Defaults
	// to the sharded Config's Cache. (One culler per shard, nudged by its
	// own shard's writes, is a Config per shard with OnWrite set to that
	// culler's NoteWrites.)
	Config *dbcache.Config
}

// Config configures a sharded Cache. The zero value (or nil) is valid.
type Config struct {
	// Cache configures the caches the sharded cache builds for Pool and
	// DSN shards that have no Config of their own: key prefix, version,
	// OpTimeout, FailOpen, Tracer, … Defaults to nil: dbcache's defaults.
	Cache *dbcache.Config

	// RetryEvery is how often a shard whose cache could not be opened (its
	// server was down at New) is tried again; operations on its keys in
	// between fail at once with the last error (or miss, with FailOpen).
	// Defaults to RetryEveryDefault.
	RetryEvery time.Duration

	// Logger receives a line when a shard cannot be opened, and when it
	// opens later. Defaults to slog.Default().
	Logger *slog.Logger
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,63}$`)

// Cache is one cache spread over several PostgreSQL servers: every key
// lives on the one server the ring picks for it, as if that server's cache
// were the only one. It implements dbcache.Store and is safe for
// concurrent use. A Cache value is a view; WithVersion returns another view
// of the same cache.
type Cache struct {
	s *state
	// version is the view's key version when versioned (WithVersion);
	// otherwise each shard's cache uses its own default.
	version   int
	versioned bool
}

// Every capability of a single cache that several servers can give: each
// is served by the key's shard (or by every shard, for Keys and
// DeletePrefix), whose cache is a *dbcache.Cache, so the sharded cache has
// them whatever its shards. Not dbcache.SnapshotReader: a snapshot belongs
// to one server.
var (
	_ dbcache.Store     = (*Cache)(nil)
	_ dbcache.TTLReader = (*Cache)(nil)
	_ dbcache.KeyLister = (*Cache)(nil)
	_ dbcache.Versioner = (*Cache)(nil)
	_ dbcache.KeyMaker  = (*Cache)(nil)
	_ dbcache.Loader    = (*Cache)(nil)
	_ dbcache.Leaser    = (*Cache)(nil)
)

// state is what every view of one sharded cache shares.
type state struct {
	shards []*shard
	ring   *ring
	names  []string

	// Routing: the shard of a caller key is picked by the hash of the key
	// made at routeVersion (the key prefix and the caller's key, the same
	// for every version), which is stem + key whenever the KeyFunc
	// appends the key (the default does), hashed without joining them.
	stem     string
	stemOK   bool
	route    *dbcache.Cache           // made keys at routeVersion, when a shard was given as a Cache
	makeKey  func(string, int) string // made keys at any version
	baseVer  int
	closed   atomic.Bool
	bg       context.Context // cancelled by Close: shard opens run under it
	bgCancel context.CancelFunc
	// opens counts the shard opens running; openMu orders starting one
	// after Close against Close waiting for them.
	openMu sync.Mutex
	opens  sync.WaitGroup

	retryEvery time.Duration
	log        *slog.Logger

	failOpenCount    atomic.Int64
	failOpenLogged   atomic.Int64
	failOpenUnlogged atomic.Int64

	// identMu orders the checks that no two open shards reach one table
	// (see identity.go).
	identMu sync.Mutex
}

// routeVersion is the version the routing key is made at: any fixed value
// would do; what matters is that it is the same whatever version an
// operation uses, so IncrVersion's two keys are on one server.
const routeVersion = 0

// shard is one server's cache, opened at New or, if its server was down
// then, on first use after that.
type shard struct {
	name     string
	cfg      dbcache.Config // for Pool and DSN shards
	pool     *pgxpool.Pool
	dsn      string
	given    bool // Cache given by the caller: never closed here
	failOpen bool

	cur atomic.Pointer[dbcache.Cache]
	// ownPool is a DSN shard's pool, opened with its cache and closed
	// with it; guarded by mu once New has returned.
	ownPool *pgxpool.Pool
	// ident is the table the shard's pool reaches, once known.
	ident atomic.Pointer[identity]

	mu      sync.Mutex
	opening chan struct{} // non-nil while an open runs; closed when it ends
	lastTry time.Time
	lastErr error
}

// New returns a cache spread over shards. Shards given as a Pool or DSN
// are opened in parallel (one round trip each, dbcache.New's table check).
// A shard that cannot be opened for a transient reason (dbcache.IsTransient:
// its server is down or unreachable) does not fail New: it is logged, its
// keys fail (or miss, with FailOpen) until it answers, and it is tried
// again at most every Config.RetryEvery. Any other failure (a missing
// table, a wrong password, bad input) fails New, which then closes what it
// opened.
//
// Every shard must make the same stored keys (the same KeyPrefix, Version
// and KeyFunc): New checks and refuses shards that disagree, since a key
// would then be stored under different names depending on its shard.
func New(ctx context.Context, shards []Shard, cfg *Config) (*Cache, error) {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.RetryEvery < 0 {
		return nil, fmt.Errorf("sharded: Config.RetryEvery %s is negative", c.RetryEvery)
	}
	if c.RetryEvery == 0 {
		c.RetryEvery = RetryEveryDefault
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if len(shards) == 0 {
		return nil, errors.New("sharded: no shards")
	}
	s := &state{retryEvery: c.RetryEvery, log: c.Logger}
	seen := map[string]bool{}
	for i, sh := range shards {
		if !nameRE.MatchString(sh.Name) {
			return nil, fmt.Errorf("sharded: shard %d: name %q: want 1 to 63 letters, digits, '.', '_' or '-'", i, sh.Name)
		}
		if seen[sh.Name] {
			return nil, fmt.Errorf("sharded: two shards are named %q", sh.Name)
		}
		seen[sh.Name] = true
		n := 0
		for _, set := range []bool{sh.Cache != nil, sh.Pool != nil, sh.DSN != ""} {
			if set {
				n++
			}
		}
		if n != 1 {
			return nil, fmt.Errorf("sharded: shard %q: give exactly one of Cache, Pool and DSN", sh.Name)
		}
		if sh.Cache != nil && sh.Config != nil {
			return nil, fmt.Errorf("sharded: shard %q: Config applies to a Pool or DSN shard, not to a Cache (configure the Cache itself)", sh.Name)
		}
		x := &shard{name: sh.Name, pool: sh.Pool, dsn: sh.DSN, given: sh.Cache != nil}
		if sh.Cache != nil {
			x.cur.Store(sh.Cache)
		} else {
			switch {
			case sh.Config != nil:
				x.cfg = *sh.Config
			case c.Cache != nil:
				x.cfg = *c.Cache
			}
			x.failOpen = x.cfg.FailOpen
		}
		s.shards = append(s.shards, x)
		s.names = append(s.names, sh.Name)
	}
	s.ring = newRing(s.names)
	for i := range s.ring.seeds {
		for j := range i {
			if s.ring.seeds[i] == s.ring.seeds[j] {
				return nil, fmt.Errorf("sharded: shards %q and %q hash alike: rename one", s.names[j], s.names[i])
			}
		}
	}
	if err := s.keyMaking(); err != nil {
		return nil, err
	}
	if err := s.checkAddresses(); err != nil {
		return nil, err
	}
	s.bg, s.bgCancel = context.WithCancel(context.Background())

	// Open the Pool and DSN shards, in parallel.
	errs := make([]error, len(s.shards))
	var wg sync.WaitGroup
	for i, x := range s.shards {
		if x.given {
			continue
		}
		wg.Go(func() {
			cache, pool, err := x.build(ctx)
			if err == nil {
				x.ownPool = pool
				x.cur.Store(cache)
				return
			}
			x.lastTry, x.lastErr = time.Now(), err
			errs[i] = err
		})
	}
	wg.Wait()
	var fatal []error
	for i, err := range errs {
		if err != nil && !dbcache.IsTransient(err) {
			fatal = append(fatal, &ShardError{Shard: s.names[i], Err: err})
		}
	}
	if len(fatal) > 0 {
		s.closeBuilt()
		s.bgCancel()
		return nil, errors.Join(fatal...)
	}
	for i, err := range errs {
		if err != nil {
			s.log.WarnContext(ctx, "dbcache: shard unavailable; its keys fail until it answers",
				"shard", s.names[i], "retry_every", s.retryEvery, "error", err)
		}
	}
	if err := s.checkOpened(); err != nil {
		s.closeBuilt()
		s.bgCancel()
		return nil, err
	}
	if err := s.checkTables(ctx); err != nil {
		s.closeBuilt()
		s.bgCancel()
		return nil, err
	}
	return &Cache{s: s}, nil
}

// keyMaking sets the routing and key-making functions, and checks that the
// shards' configurations make keys alike (the caches given are checked
// once opened, by checkOpened).
func (s *state) keyMaking() error {
	var first *shard
	for _, x := range s.shards {
		if !x.given {
			first = x
			break
		}
	}
	if first != nil {
		f := keyFuncOf(first.cfg)
		prefix := first.cfg.KeyPrefix
		s.makeKey = func(key string, version int) string { return f(key, prefix, version) }
		s.baseVer = versionOf(first.cfg)
		for _, x := range s.shards {
			if x.given {
				continue
			}
			g := keyFuncOf(x.cfg)
			if err := s.agree(x.name, versionOf(x.cfg), func(k string, v int) string { return g(k, x.cfg.KeyPrefix, v) }); err != nil {
				return err
			}
		}
	} else {
		c0 := s.shards[0].cur.Load()
		s.route = c0.WithVersion(routeVersion)
		s.makeKey = func(key string, version int) string {
			if version == c0.Version() {
				return c0.MakeKey(key)
			}
			return c0.WithVersion(version).MakeKey(key)
		}
		s.baseVer = c0.Version()
	}
	s.stem = s.makeKey("", routeVersion)
	s.stemOK = true
	for _, probe := range keyProbes {
		if s.makeKey(probe, routeVersion) != s.stem+probe {
			s.stemOK = false
		}
	}
	return nil
}

// checkOpened compares the key making of the caches given to the rest.
func (s *state) checkOpened() error {
	for _, x := range s.shards {
		if !x.given {
			continue
		}
		c := x.cur.Load()
		if err := s.agree(x.name, c.Version(), func(k string, v int) string { return c.WithVersion(v).MakeKey(k) }); err != nil {
			return err
		}
	}
	return nil
}

// keyProbes are the caller keys and versions key making is compared on.
var (
	keyProbes   = []string{"", "k", "user:42", "\u00e9\U0010FFFF", "a b"}
	probeVersns = []int{0, 1, 2, 7, -3}
)

func (s *state) agree(name string, version int, mk func(string, int) string) error {
	if version != s.baseVer {
		return fmt.Errorf("sharded: shard %q has default version %d where the others have %d: every shard must make the same keys", name, version, s.baseVer)
	}
	for _, k := range keyProbes {
		for _, v := range probeVersns {
			if got, want := mk(k, v), s.makeKey(k, v); got != want {
				return fmt.Errorf("sharded: shard %q makes key %q at version %d as %q where another makes %q: every shard must have the same KeyPrefix and KeyFunc", name, k, v, got, want)
			}
		}
	}
	return nil
}

func keyFuncOf(c dbcache.Config) dbcache.KeyFunc {
	if c.KeyFunc != nil {
		return c.KeyFunc
	}
	return dbcache.DefaultKeyFunc
}

func versionOf(c dbcache.Config) int {
	if c.Version != 0 || c.VersionZero {
		return c.Version
	}
	return dbcache.VersionDefault
}

// build opens the shard's cache, and for a DSN shard its pool (returned,
// for the caller to close with the cache; nil for a Pool shard), as
// dbcache.Open would.
func (x *shard) build(ctx context.Context) (*dbcache.Cache, *pgxpool.Pool, error) {
	if x.pool != nil {
		c, err := dbcache.New(ctx, x.pool, &x.cfg)
		return c, nil, err
	}
	pool, err := pgxpool.New(ctx, x.dsn)
	if err != nil {
		return nil, nil, fmt.Errorf("dbcache: open pool: %w", err)
	}
	c, err := dbcache.New(ctx, pool, &x.cfg)
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return c, pool, nil
}

// poolOf is the pool a built shard's cache runs on.
func (x *shard) poolOf(own *pgxpool.Pool) *pgxpool.Pool {
	if x.pool != nil {
		return x.pool
	}
	return own
}

// closeBuilt closes the caches New built, and the pools of DSN shards.
func (s *state) closeBuilt() {
	for _, x := range s.shards {
		if c := x.cur.Load(); c != nil && !x.given {
			_ = c.Close()
			x.mu.Lock()
			if x.ownPool != nil {
				x.ownPool.Close()
			}
			x.mu.Unlock()
		}
	}
}

// checkTables reads, in parallel, the table each opened Pool or DSN shard
// reaches, and refuses two shards on one table (see identity.go). A shard
// whose identity cannot be read now (it went down since it opened) is not
// compared.
func (s *state) checkTables(ctx context.Context) error {
	ids := make([]*identity, len(s.shards))
	var wg sync.WaitGroup
	for i, x := range s.shards {
		if x.given || x.cur.Load() == nil {
			continue
		}
		wg.Go(func() {
			if id, err := identify(ctx, x.poolOf(x.ownPool), x.cfg.Schema); err == nil {
				ids[i] = &id
			}
		})
	}
	wg.Wait()
	s.identMu.Lock()
	defer s.identMu.Unlock()
	for i, x := range s.shards {
		if ids[i] == nil {
			continue
		}
		if err := s.conflict(x, *ids[i]); err != nil {
			return err
		}
	}
	return nil
}

// cache returns the shard's cache, opening it if New could not: at most
// one open at a time, at most every RetryEvery; in between, and while one
// runs, callers get the last error at once. The open runs under the
// sharded cache's own context (bounded by the shard's OpTimeout), so a
// caller that gives up does not turn into the error every other caller
// sees; the caller waits for it no longer than its own context allows.
func (c *Cache) cache(ctx context.Context, x *shard) (*dbcache.Cache, error) {
	if sc := x.cur.Load(); sc != nil {
		return c.view(sc), nil
	}
	return c.open(ctx, x)
}

func (c *Cache) open(ctx context.Context, x *shard) (*dbcache.Cache, error) {
	s := c.s
	if s.closed.Load() {
		return nil, dbcache.ErrClosed
	}
	x.mu.Lock()
	if sc := x.cur.Load(); sc != nil {
		x.mu.Unlock()
		return c.view(sc), nil
	}
	if x.opening != nil || time.Since(x.lastTry) < s.retryEvery {
		err := x.lastErr
		x.mu.Unlock()
		return nil, err
	}
	s.openMu.Lock()
	if s.closed.Load() {
		s.openMu.Unlock()
		x.mu.Unlock()
		return nil, dbcache.ErrClosed
	}
	s.opens.Add(1)
	s.openMu.Unlock()
	done := make(chan struct{})
	x.opening = done
	x.mu.Unlock()
	go func() {
		defer s.opens.Done()
		sc, own, err := x.build(s.bg)
		if err == nil {
			// Not another shard's table under a second name (identity.go).
			s.identMu.Lock()
			if id, ierr := identify(s.bg, x.poolOf(own), x.cfg.Schema); ierr == nil {
				if cerr := s.conflict(x, id); cerr != nil {
					_ = sc.Close()
					if own != nil {
						own.Close()
					}
					sc, err = nil, cerr
				}
			}
			s.identMu.Unlock()
		}
		x.mu.Lock()
		defer x.mu.Unlock()
		x.opening = nil
		x.lastTry = time.Now()
		defer close(done)
		if err != nil {
			x.lastErr = err
			if s.closed.Load() { // Close cancelled it
				x.lastErr = dbcache.ErrClosed
			}
			return
		}
		if s.closed.Load() {
			_ = sc.Close()
			if own != nil {
				own.Close()
			}
			x.lastErr = dbcache.ErrClosed
			return
		}
		x.ownPool = own
		x.cur.Store(sc)
		s.log.InfoContext(s.bg, "dbcache: shard opened", "shard", x.name)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if sc := x.cur.Load(); sc != nil {
		return c.view(sc), nil
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	return nil, x.lastErr
}

// view is the shard's cache at the view's version.
func (c *Cache) view(sc *dbcache.Cache) *dbcache.Cache {
	if c.versioned {
		return sc.WithVersion(c.version)
	}
	return sc
}

// hash is the ring's hash of a caller key: that of the key made at
// routeVersion.
func (c *Cache) hash(key string) uint64 {
	s := c.s
	switch {
	case s.stemOK:
		return fmix64(fnvString(fnvString(fnvOffset, s.stem), key))
	case s.route != nil:
		return keyHash(s.route.MakeKey(key))
	default:
		return keyHash(s.makeKey(key, routeVersion))
	}
}

// shardFor returns the shard of a caller key.
func (c *Cache) shardFor(key string) *shard {
	s := c.s
	if len(s.shards) == 1 {
		return s.shards[0]
	}
	return s.shards[s.ring.pick(c.hash(key))]
}

// ShardOf returns the name of the shard that holds key, at every version.
func (c *Cache) ShardOf(key string) string { return c.shardFor(key).name }

// Shards returns the shards' names, in the order New was given them.
func (c *Cache) Shards() []string { return append([]string(nil), c.s.names...) }

// Shard returns the cache of the named shard, at the view's version: for
// what only one server can do (WithTx, its Stats, a culler's pool). A
// shard whose server was down at New is opened now, or the error says why
// it cannot be.
func (c *Cache) Shard(ctx context.Context, name string) (*dbcache.Cache, error) {
	for _, x := range c.s.shards {
		if x.name == name {
			sc, err := c.cache(ctx, x)
			if err != nil {
				return nil, c.fail(x, err, nil)
			}
			return sc, nil
		}
	}
	return nil, fmt.Errorf("sharded: no shard named %q", name)
}

// WithVersion returns a view of the cache whose operations use version
// instead of the default: Django's per-call version argument. Keys stay on
// their shards (the shard is picked without the version).
func (c *Cache) WithVersion(version int) *Cache {
	return &Cache{s: c.s, version: version, versioned: true}
}

// Version returns the view's default key version.
func (c *Cache) Version() int {
	if c.versioned {
		return c.version
	}
	return c.s.baseVer
}

// MakeKey returns the stored key for key at the view's version, as every
// shard makes it.
func (c *Cache) MakeKey(key string) string { return c.s.makeKey(key, c.Version()) }

// ValidateKey checks a made key as the shards' caches check the keys they
// are given: an error matching dbcache.ErrInvalidKey for a key PostgreSQL
// cannot store, or for one memcached could not store when a shard's
// KeyCheck is KeyCheckError. A made key does not say which shard holds
// it, so a shard that would refuse it is enough. (The operations check
// the key on its own shard: see each's doc.)
func (c *Cache) ValidateKey(ctx context.Context, madeKey string) error {
	if err := (dbcache.KeyValidator{Check: dbcache.KeyCheckOff}).Validate(ctx, madeKey); err != nil {
		return err
	}
	if len(dbcache.KeyWarnings(madeKey)) == 0 {
		return nil
	}
	for _, x := range c.s.shards {
		if err := c.checkOnShard(ctx, x, madeKey); err != nil {
			return err
		}
	}
	return nil
}

// Stats returns the shards' counters added up, with the operations this
// package failed open itself (on a shard that was never opened).
func (c *Cache) Stats() dbcache.Stats {
	var t dbcache.Stats
	for _, x := range c.s.shards {
		if sc := x.cur.Load(); sc != nil {
			st := sc.Stats()
			t.FailOpen += st.FailOpen
			t.Loads += st.Loads
			t.LoadWaits += st.LoadWaits
			t.Refreshes += st.Refreshes
			t.RefreshFailures += st.RefreshFailures
		}
	}
	t.FailOpen += c.s.failOpenCount.Load()
	return t
}

// Close closes the sharded cache: every later operation, on every view,
// returns dbcache.ErrClosed. It closes the caches it built (and the pools
// of DSN shards), never a Cache or Pool the caller gave. Calling it again
// is a no-op.
func (c *Cache) Close() error {
	s := c.s
	s.openMu.Lock()
	if s.closed.Swap(true) {
		s.openMu.Unlock()
		return nil
	}
	s.openMu.Unlock()
	s.bgCancel()
	s.opens.Wait()
	s.closeBuilt()
	return nil
}

func (c *Cache) checkOpen() error {
	if c.s.closed.Load() {
		return dbcache.ErrClosed
	}
	return nil
}

// ShardError is the failure of one shard's part of an operation. It
// unwraps to the shard cache's error, so errors.Is (dbcache.ErrNotMigrated,
// context.DeadlineExceeded, …), errors.As (*pgconn.PgError) and
// dbcache.IsTransient see through it. An operation over several shards
// that failed on more than one returns their ShardErrors joined
// (errors.Join).
type ShardError struct {
	// Shard is the shard's name.
	Shard string
	// Keys are the caller keys of the shard's part of a bulk operation
	// (GetMany, SetMany, DeleteMany); nil for other operations.
	Keys []string
	// Err is the shard cache's error.
	Err error
}

func (e *ShardError) Error() string {
	return "dbcache: shard " + e.Shard + ": " + strings.TrimPrefix(e.Err.Error(), "dbcache: ")
}

// Unwrap returns the shard's error.
func (e *ShardError) Unwrap() error { return e.Err }

// fail names the shard in err, unless err is a result rather than a
// failure of the server (a miss, a value that is not an integer, a key
// refused before anything was sent, a closed cache, the loader's own
// error), which reads the same whatever the shard.
func (c *Cache) fail(x *shard, err error, keys []string) error {
	if err == nil || err == dbcache.ErrMiss {
		return err
	}
	var le *dbcache.LoaderError
	var lp *dbcache.LoaderPanicError
	switch {
	case errors.Is(err, dbcache.ErrMiss), errors.Is(err, dbcache.ErrInvalidKey),
		errors.Is(err, dbcache.ErrNotInteger), errors.Is(err, dbcache.ErrOverflow),
		errors.Is(err, dbcache.ErrClosed), errors.Is(err, dbcache.ErrPrefixUnsupported),
		errors.As(err, &le), errors.As(err, &lp):
		return err
	}
	return &ShardError{Shard: x.name, Keys: keys, Err: err}
}

// failOpenLogEvery bounds how often failing open on an unopened shard is
// logged, as dbcache's own fail-open is.
const failOpenLogEvery = 10 * time.Second

// degrade reports whether err, the failure to open shard x, is to be
// swallowed under the shard's FailOpen, as the shard's cache would swallow
// it had it opened: a transient failure becomes a miss or a skipped write.
func (c *Cache) degrade(ctx context.Context, x *shard, op string, err error) bool {
	if !x.failOpen || !dbcache.IsTransient(err) {
		return false
	}
	s := c.s
	s.failOpenCount.Add(1)
	pending := s.failOpenUnlogged.Add(1)
	now := time.Now().UnixNano()
	last := s.failOpenLogged.Load()
	if now-last >= int64(failOpenLogEvery) && s.failOpenLogged.CompareAndSwap(last, now) {
		s.failOpenUnlogged.Add(-pending)
		s.log.WarnContext(ctx, "dbcache: shard unavailable; fail-open: reads miss and writes are skipped",
			"shard", x.name, "op", op, "failures", pending, "error", err)
	}
	return true
}
