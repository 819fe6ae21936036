package dbcache

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"time"
)

const (
	// DefaultTimeoutDefault is the default for Config.DefaultTimeout: 300
	// seconds, as Django's TIMEOUT.
	DefaultTimeoutDefault = 300 * time.Second

	// VersionDefault is the default for Config.Version, as Django's VERSION.
	VersionDefault = 1

	// TableName is the cache table the migrations create.
	TableName = "dbcache_entries"

	// MaxKeyBytes is the longest made key (prefix, version and key together)
	// the cache stores, in bytes. PostgreSQL's btree index refuses entries of
	// more than about 2700 bytes; 2048 leaves room for every page layout
	// without depending on compression. Longer keys get ErrInvalidKey.
	MaxKeyBytes = 2048

	// OpTimeoutDefault is the default for Config.OpTimeout. A cache
	// operation takes well under a millisecond on a healthy server and a
	// few when it is busy; five seconds is a thousand times that, long
	// enough that no working server trips it (a write waiting on a
	// row lock included), short enough that a server which stopped
	// answering costs a request seconds rather than hanging it. Redis
	// clients default to 3 s reads and 5 s connects for the same reason.
	OpTimeoutDefault = 5 * time.Second

	// CoalesceWritesFastDefault is what Config.CoalesceSets and
	// Config.CoalesceIncrs default to with Config.FastCommit: the most
	// statements of each kind running at once before concurrent writes
	// are coalesced.
	CoalesceWritesFastDefault = 2

	// MemcachedMaxKeyLength is Django's MEMCACHE_MAX_KEY_LENGTH: keys longer
	// than this many characters get a portability warning (see KeyCheck).
	MemcachedMaxKeyLength = 250
)

// KeyFunc makes the stored key from the caller's key, the cache's key prefix
// and the version, as Django's KEY_FUNCTION does.
type KeyFunc func(key, prefix string, version int) string

// DefaultKeyFunc is Django's default_key_func: "prefix:version:key".
func DefaultKeyFunc(key, prefix string, version int) string {
	return prefix + ":" + strconv.Itoa(version) + ":" + key
}

// KeyCheck says what the cache does with a key that memcached could not store
// (longer than 250 characters, or containing a space or control character).
// PostgreSQL stores such keys fine; the check is about portability, as in
// Django.
type KeyCheck int

const (
	// KeyCheckWarn logs a warning through the Logger, as Django warns with
	// CacheKeyWarning (quoting the key only with Config.LogKeys), and
	// stores the key. The default.
	KeyCheckWarn KeyCheck = iota
	// KeyCheckError returns ErrInvalidKey and writes nothing, as Django's
	// memcached backends raise InvalidCacheKey.
	KeyCheckError
	// KeyCheckOff skips the portability check. Keys PostgreSQL cannot store
	// are still refused.
	KeyCheckOff
)

// Config configures a Cache. The zero value (or a nil *Config) is Django's
// defaults: 300 s timeout, version 1, no prefix, table in the search_path
// schema.
//
// Every field follows one rule, as every Config of dbcache's packages does
// (culling, nearcache, sharded, memstore): its zero value is its documented
// default (an exported XxxDefault constant where the default is a fixed
// number); -1 turns a feature off or lifts a bound, where that means
// something; and where every value of a field means something (Version) an
// explicit field says the zero value is meant (VersionZero).
type Config struct {
	// CoalesceGets is the most Get queries the cache runs on the pool at
	// once; a Get that arrives while that many are running waits, and the
	// waiting Gets are answered together by one key = ANY($1) query as soon
	// as a running one finishes. A lone Get never waits, so latency at low
	// concurrency is unchanged; under load, throughput rises because
	// PostgreSQL's per-statement cost is shared by many keys. Gets in a
	// WithTx view are never coalesced. See docs/performance.md for figures.
	//
	// Defaults to 0, which means the smaller of the pool's MaxConns and
	// pgxpool's own default pool size for this machine (4 or the number of
	// CPUs, whichever is larger): Gets start coalescing once about as many
	// run at once as the database can work on in parallel, rather than
	// only once every connection of a large pool is busy, since past that
	// point a Get's own query only queues in the server for CPU. Over a
	// pool no larger than pgxpool's default, Gets are coalesced only when
	// they would otherwise queue for a connection. A smaller value
	// coalesces sooner: more throughput at high concurrency, at the price
	// of latency when just a few more Gets than that run at once; MaxConns
	// coalesces only Gets that would have waited for a connection. -1
	// turns coalescing off: every Get is its own query.
	CoalesceGets int

	// CoalesceSets, when positive, turns Set coalescing on: it is the most
	// Set statements the cache runs on the pool at once; a Set that
	// arrives while that many are running waits, and the waiting Sets are
	// written together by one multi-row upsert as soon as a running one
	// finishes. A lone Set never waits. Each caller still gets exactly its
	// own result: nil once the batch committed, the batch's error
	// otherwise; two Sets of one key keep their order. Under concurrency,
	// PostgreSQL's per-statement and per-commit cost is shared by many
	// rows. Sets in a WithTx view are never coalesced. Defaults to 0,
	// which means CoalesceWritesFastDefault with FastCommit, whose writes
	// are limited by the server's per-statement cost, which coalescing
	// shares, and off without: a durable Set's cost is mostly its WAL
	// flush, and a batch's error is then the error of every Set in it, a
	// trade for the application to make. -1 is off, as for CoalesceGets.
	CoalesceSets int

	// CoalesceIncrs is CoalesceSets for Incr and Decr: when positive, the
	// most Incr statements the cache runs on the pool at once; the Incrs
	// that wait meanwhile are applied together by one UPDATE, each key
	// changed once by the sum of its deltas (its row locked in key order),
	// and each caller gets the value its own Incr would have returned had
	// they run one after the other in the order they queued. A lone Incr
	// never waits. An Incr the batch cannot apply as that (the key missing
	// or not an integer, a result out of range, deltas of both signs on one
	// key) runs its own statement after it, so every caller gets exactly
	// its own result. Incrs in a WithTx view, and every Incr of a cache
	// using the Citus forms, are never coalesced. Defaults to 0, which
	// means CoalesceWritesFastDefault with FastCommit and off without; -1
	// is off.
	CoalesceIncrs int

	// DefaultTimeout is the timeout for calls that pass DefaultTimeout.
	// Forever makes entries never expire by default; ExpiresIn(0) makes them expire
	// at once (Django's TIMEOUT=0). Defaults to ExpiresIn(DefaultTimeoutDefault).
	DefaultTimeout Timeout

	// FailOpen makes the cache degrade instead of failing while the
	// database is unavailable: an operation whose failure IsTransient
	// (connection refused or reset, a server shutting down or starting, a
	// timeout, a deadlock) returns what it returns when there is nothing to
	// find or nothing was stored: Get, Incr, Decr, IncrVersion and
	// DecrVersion return ErrMiss, HasKey, Add, Touch and Delete false,
	// GetMany an empty map, SetMany every key as failed with a nil error,
	// DeleteMany and DeletePrefix 0, Set nil, and GetOrSetFunc the loader's
	// value without storing it. Configuration, permission and SQL errors
	// (ErrNotMigrated, a wrong password, a missing privilege) and a
	// cancelled context always surface, and so does every error of Clear
	// and of a WithTx view, whose callers must know. Each such failure is
	// counted in Stats().FailOpen and logged at most once every ten
	// seconds. Defaults to false: every error is returned.
	FailOpen bool

	// FastCommit makes every write statement the cache runs on the pool
	// commit with synchronous_commit off, set inside the statement itself
	// (set_config(…, true), which is SET LOCAL), so it costs no round trip,
	// leaves no session state and works behind PgBouncer's transaction
	// pooling. A write then returns before its WAL record is flushed to
	// disk: if the server crashes (power loss, kernel panic, or the
	// PostgreSQL server process being killed hard), writes acknowledged in
	// the last wal_writer_delay × 3 (600 ms by default) can be lost; the
	// database is never corrupted and stays consistent, and a clean restart
	// loses nothing. For a cache that is usually the right trade. Writes in
	// a WithTx view are left alone: they commit as the caller's transaction
	// says. Defaults to false: writes are as durable as the server's
	// synchronous_commit setting makes them.
	FastCommit bool

	// Citus chooses the statement forms for a table distributed by key on
	// a Citus cluster (docs/scale-out.md#citus): CitusAuto, the default,
	// uses them when New finds the table in pg_dist_partition; CitusOn
	// uses them anywhere (on plain PostgreSQL they answer as the plain
	// forms); CitusOff never.
	Citus CitusMode

	// KeyCheck says what to do with keys that memcached could not store.
	// Defaults to KeyCheckWarn.
	KeyCheck KeyCheck

	// KeyFunc makes stored keys. Defaults to DefaultKeyFunc.
	KeyFunc KeyFunc

	// KeyPrefix is passed to KeyFunc, to keep caches sharing a table apart.
	// Defaults to "".
	KeyPrefix string

	// LoadLease is how long the lease a GetOrSetFunc or GetOrRevalidate
	// loader takes on its key (dbcache_leases, migration 8) lasts: while
	// it is live, other processes wait for the loader's value rather than
	// load. The loader renews it every third of LoadLease while it runs,
	// so a loader of any length keeps it; a process killed mid-load frees
	// its keys at most LoadLease after its last renewal, by the
	// database's clock. Must be within [LeaseTTLMin, LeaseTTLMax].
	// Defaults to LoadLeaseDefault.
	LoadLease time.Duration

	// Deprecated: LoadLocks has no effect. Loads are coordinated across
	// processes by leases (LoadLease), which hold no connection, so there
	// is no lock slot to bound. -1 and values >= 0 are accepted (and
	// ignored); below -1 is refused, as before.
	LoadLocks int

	// LoadPollRate caps the statements per second that this cache's
	// loaders waiting on another process's lease send, all keys together
	// (each wait polls with back-off, 5 ms growing to 100 ms, and takes
	// its turn under this cap). -1 means no cap. Defaults to
	// LoadPollRateDefault.
	LoadPollRate int

	// LoadWait bounds how long GetOrSetFunc waits for another process that
	// is loading the same key before it loads the value itself. Defaults
	// to LoadWaitDefault.
	LoadWait time.Duration

	// LogKeys lets the cache's log lines name keys and carry what can
	// hold keys or values: the memcached key warning quotes the key, as
	// Django's does; a failed background refresh gives its key and its
	// error's text (a loader's error is the loader's own); a recovered
	// panic gives the value panicked with. Defaults to false: no log line
	// of the cache holds a key or a value, and errors appear as their
	// ErrorCode (a fail-open line keeps the transient error's text, which
	// is about the connection: a refused dial, a timeout).
	LogKeys bool

	// Logger receives key warnings, failed background refreshes, and, at
	// most one line every ten seconds each, fail-open and recovered
	// panics. Defaults to slog.Default().
	Logger *slog.Logger

	// OpTimeout bounds every database round trip an operation makes when the
	// caller's context has no deadline of its own (a context with a deadline
	// is used as it is): New, each Get, Set, …, each batch of Clear, and the
	// reads and writes of GetOrSetFunc (not its loader, which runs under the
	// caller's context). So no operation hangs on a server that stops
	// answering, even with context.Background(). -1 means no bound beyond
	// the caller's context. Defaults to OpTimeoutDefault.
	OpTimeout time.Duration

	// OnWrite, if set, is called after every write that may have added
	// entries (Set, Add that stored, SetMany, GetOrSet that stored) with the
	// number of entries written. It runs on the goroutine that wrote and
	// must not block: it exists so a culling worker can be nudged
	// (culling.Culler.NoteWrites) without this package importing it. That
	// goroutine is the caller's, where a panic propagates, or, for the
	// load GetOrSetFunc shares between callers and for background
	// refreshes, the cache's, where a panic is recovered and the waiting
	// callers get a *HookPanicError.
	OnWrite func(n int)

	// RefreshRetry is the least time between two refresh attempts of one
	// key by GetOrRevalidate, across every process sharing the table: a
	// refresh whose loader or write fails keeps its lease for
	// RefreshRetry (and the process remembers the key as long), so no
	// stale hit in any process refreshes it again before then, and the
	// stale value is served until its stale period ends. Must be within
	// [LeaseTTLMin, LeaseTTLMax]. Defaults to RefreshRetryDefault.
	RefreshRetry time.Duration

	// Schema is the schema that holds the cache table. Defaults to "", which
	// resolves the table through each connection's search_path.
	Schema string

	// Tracer sees every operation (name, keys, hits and misses, stores,
	// error, duration) for metrics and tracing; see Tracer. It must not
	// block. Defaults to nil: no tracing, at the cost of one nil check.
	Tracer Tracer

	// Version is the default key version, as Django's VERSION. Defaults
	// to VersionDefault (1); for version 0, set VersionZero.
	Version int

	// VersionZero makes 0 the default key version (Django's VERSION = 0),
	// which Version cannot say, its zero value being the default. Version
	// must then be 0. Defaults to false.
	VersionZero bool
}

// coalesceWrites is the slot count of a write coalescer configured as n
// (Config.CoalesceSets, Config.CoalesceIncrs): 0 for off.
func (c *Config) coalesceWrites(n int) int {
	switch {
	case n > 0:
		return n
	case n == 0 && c.FastCommit:
		return CoalesceWritesFastDefault
	}
	return 0
}

var schemaRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]{0,62}$`)

// withDefaults returns a copy of c with every default filled in.
func (c *Config) withDefaults() Config {
	var out Config
	if c != nil {
		out = *c
	}
	if out.DefaultTimeout.IsDefault() {
		out.DefaultTimeout = ExpiresIn(DefaultTimeoutDefault)
	}
	if out.KeyFunc == nil {
		out.KeyFunc = DefaultKeyFunc
	}
	if out.Logger == nil {
		out.Logger = slog.Default()
	}
	if out.Version == 0 && !out.VersionZero {
		out.Version = VersionDefault
	}
	if out.OpTimeout == 0 {
		out.OpTimeout = OpTimeoutDefault
	}
	if out.LoadWait == 0 {
		out.LoadWait = LoadWaitDefault
	}
	if out.LoadLease == 0 {
		out.LoadLease = LoadLeaseDefault
	}
	if out.LoadPollRate == 0 {
		out.LoadPollRate = LoadPollRateDefault
	}
	if out.RefreshRetry == 0 {
		out.RefreshRetry = RefreshRetryDefault
	}
	return out
}

func (c *Config) validate() error {
	var errs []error
	if c.Schema != "" && !schemaRE.MatchString(c.Schema) {
		errs = append(errs, fmt.Errorf("dbcache: Config.Schema %q is not a valid schema name (letters, digits, _ and $, at most 63)", c.Schema))
	}
	if c.Citus < CitusAuto || c.Citus > CitusOff {
		errs = append(errs, fmt.Errorf("dbcache: Config.Citus %d is not a CitusMode (CitusAuto, CitusOn or CitusOff)", int(c.Citus)))
	}
	if c.CoalesceIncrs < -1 {
		errs = append(errs, fmt.Errorf("dbcache: Config.CoalesceIncrs %d is negative (-1 turns coalescing off)", c.CoalesceIncrs))
	}
	if c.CoalesceSets < -1 {
		errs = append(errs, fmt.Errorf("dbcache: Config.CoalesceSets %d is negative (0 and -1 leave coalescing off)", c.CoalesceSets))
	}
	if c.VersionZero && c.Version != 0 {
		errs = append(errs, fmt.Errorf("dbcache: Config.VersionZero is set with Config.Version %d: set one or the other", c.Version))
	}
	if c.CoalesceGets < -1 {
		errs = append(errs, fmt.Errorf("dbcache: Config.CoalesceGets %d is negative (-1 turns coalescing off; 0 means the default)", c.CoalesceGets))
	}
	if c.OpTimeout < -1 {
		errs = append(errs, fmt.Errorf("dbcache: Config.OpTimeout %s is negative (-1 means no bound)", c.OpTimeout))
	}
	if c.LoadWait < 0 {
		errs = append(errs, fmt.Errorf("dbcache: Config.LoadWait %s is negative", c.LoadWait))
	}
	if c.LoadLease < LeaseTTLMin || c.LoadLease > LeaseTTLMax {
		errs = append(errs, fmt.Errorf("dbcache: Config.LoadLease %s is outside [%s, %s]", c.LoadLease, LeaseTTLMin, LeaseTTLMax))
	}
	if c.LoadPollRate < -1 {
		errs = append(errs, fmt.Errorf("dbcache: Config.LoadPollRate %d is negative (-1 means no cap)", c.LoadPollRate))
	}
	if c.RefreshRetry < LeaseTTLMin || c.RefreshRetry > LeaseTTLMax {
		errs = append(errs, fmt.Errorf("dbcache: Config.RefreshRetry %s is outside [%s, %s]", c.RefreshRetry, LeaseTTLMin, LeaseTTLMax))
	}
	if c.LoadLocks < -1 {
		errs = append(errs, fmt.Errorf("dbcache: Config.LoadLocks %d is negative (it is deprecated and ignored: leave it 0)", c.LoadLocks))
	}
	if c.KeyCheck < KeyCheckWarn || c.KeyCheck > KeyCheckOff {
		errs = append(errs, fmt.Errorf("dbcache: Config.KeyCheck %d is not a KeyCheck", c.KeyCheck))
	}
	return errors.Join(errs...)
}
