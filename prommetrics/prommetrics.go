// Package prommetrics exports a dbcache cache's operations, its loaders,
// its culler, its table and its rate limiters' checks as Prometheus metrics
// (github.com/prometheus/client_golang). It hooks in through
// dbcache.Config.Tracer, so the core imports no metrics library, and it is
// in its own package so that only programs that use it build
// client_golang.
//
//	metrics, err := prommetrics.New(&prommetrics.Config{Pool: pool}) // Pool: table metrics
//	prometheus.MustRegister(metrics)
//	cache, err := dbcache.New(ctx, pool, &dbcache.Config{Tracer: metrics})
//	culler, err := culling.New(pool, &culling.Config{OnProgress: metrics.OnProgress(nil)})
//	metrics.WatchCuller(culler)
//	logins, err := ratelimit.New(ctx, pool, &ratelimit.Config{Name: "login", Tracer: metrics})
//
// # Metrics
//
// With the default namespace "dbcache" (every name below starts with it)
// and Config.ConstLabels on every series:
//
//	dbcache_operations_total{op, result}       operations; result: ok, error, fail_open
//	dbcache_operation_keys_total{op, outcome}  keys; outcome: hit, miss, stored, not_stored
//	dbcache_operation_errors_total{op, kind}   errors by kind (see ErrorKind)
//	dbcache_operation_duration_seconds{op}     histogram of each operation's wall time
//	dbcache_loads_total{trigger, result}       loader runs (GetOrSetFunc, GetOrRevalidate);
//	                                           trigger: miss, refresh; result: ok, error, panic
//	dbcache_load_duration_seconds{trigger}     histogram of loader runs
//	dbcache_cull_passes_total{result}          culling passes; result: done, skipped, error
//	dbcache_cull_rows_removed_total{reason}    rows removed; reason: expired, culled
//	                                           (over MaxEntries or MaxBytes), aged_out (MaxAge)
//	dbcache_cull_bytes_culled_total            bytes culled to stay under MaxBytes
//	dbcache_cull_pass_duration_seconds         histogram of passes that ran
//
// and, for a ratelimit.Limiter whose Config.Tracer is the Collector, one
// series per limiter (limiter is ratelimit.Config.Name, never a key):
//
//	dbcache_ratelimit_checks_total{limiter, result}  checks; result: allowed,
//	                                           rejected, error
//	dbcache_ratelimit_check_duration_seconds{limiter}  histogram of each check's
//	                                           wall time
//
// and, once WatchCuller has named a Culler, read from its Health() at each
// scrape (memory only):
//
//	dbcache_culler_running                     1 while its started worker runs
//	dbcache_culler_in_pass                     1 while a pass is in progress
//	dbcache_culler_consecutive_failures        passes failed since the last success
//	dbcache_culler_last_success_timestamp_seconds, dbcache_culler_last_error_timestamp_seconds
//
// and, once WatchLocks has named a lock.Client, read from its Stats() at
// each scrape (memory only):
//
//	dbcache_lock_grants_total                  locks granted
//	dbcache_lock_waits_total                   Acquire calls that found the lock held and waited
//	dbcache_lock_refusals_total                attempts that found the lock held by another owner
//	dbcache_lock_expiries_total                Refresh, Release and Check calls that found the lock lost
//	dbcache_lock_forced_releases_total         ForceRelease calls that freed a live lock
//
// and, with Config.Pool, read at each scrape (tablestats.Size: the catalog
// and walks of at most Config.CountLimit + 1 rows, whatever the table's
// size, bounded in time by Config.TableTimeout):
//
//	dbcache_table_rows                         rows, live or expired (exact up to
//	                                           Config.CountLimit, the statistics above)
//	dbcache_table_expired_rows                 expired rows not yet removed (capped at
//	                                           Config.CountLimit)
//	dbcache_table_bytes{part}                  part: table (heap and TOAST), indexes
//	dbcache_table_dead_tuples                  PostgreSQL's statistics
//	dbcache_cull_last_pass_timestamp_seconds   when the last pass of any culler, in any
//	                                           process, finished (from its state table)
//	dbcache_table_stats_up                     1 when the scrape's read worked, else 0
//
// op is the operation's Django name (dbcache.OpGet, …). The table's series
// describe one table: when several processes export them, aggregate with
// max, not sum.
//
// # Culling passes
//
// A Culler started in the application reports its passes through
// OnProgress; a program that runs passes itself with RunOnce (as `dbcache
// cull` does) hands each result to ObservePass instead, which also sees
// skipped and failed passes. Use one of the two for a culler, not both.
package prommetrics

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/lock"
	"github.com/dbcache/dbcache/ratelimit"
	"github.com/dbcache/dbcache/tablestats"
)

var (
	// OpBucketsDefault are the default buckets of the operation duration
	// histogram, in seconds: a get on loopback is a few hundred
	// microseconds, a write that waits for an fsync a few milliseconds,
	// and OpTimeout (5 s) is the end.
	OpBucketsDefault = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}
	// LoadBucketsDefault are the default buckets of the loader duration
	// histogram: loaders are queries and HTTP calls.
	LoadBucketsDefault = []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	// CullBucketsDefault are the default buckets of the pass duration
	// histogram: a no-op pass takes milliseconds, a large cull seconds,
	// PassTimeout (one minute) is the end.
	CullBucketsDefault = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
)

const (
	// NamespaceDefault is the default for Config.Namespace.
	NamespaceDefault = "dbcache"
	// TableTimeoutDefault is the default for Config.TableTimeout.
	TableTimeoutDefault = 3 * time.Second
)

// Config configures a Collector. A nil *Config means all defaults.
type Config struct {
	// ConstLabels are added to every series, for example {"cache":
	// "sessions"} when a process has several caches, each with a Collector
	// of its own. Defaults to none.
	ConstLabels prometheus.Labels

	// CountLimit bounds the table walks of each scrape (see
	// tablestats.Size). Defaults to tablestats.CountLimitDefault.
	CountLimit int

	// CullBuckets, LoadBuckets and OpBuckets are the histograms' buckets, in
	// seconds. Default to CullBucketsDefault, LoadBucketsDefault and
	// OpBucketsDefault.
	CullBuckets, LoadBuckets, OpBuckets []float64

	// Logger receives the error of a scrape whose table read failed (at
	// most one line a minute). Defaults to slog.Default().
	Logger *slog.Logger

	// Namespace prefixes every metric name. Defaults to NamespaceDefault.
	Namespace string

	// Pool, when set, is read at each scrape for the table metrics.
	// Defaults to nil: no table metrics.
	Pool *pgxpool.Pool

	// Schema is the cache table's schema for the table metrics. Defaults
	// to "", the pool's search_path.
	Schema string

	// TableTimeout bounds each scrape's table read. Defaults to
	// TableTimeoutDefault.
	TableTimeout time.Duration
}

// Collector is a prometheus.Collector, a dbcache.Tracer (and LoadTracer
// and LoadEventTracer)
// and a ratelimit.Tracer: register it, and set it as the cache's (and the
// limiters') Config.Tracer. It is
// safe for concurrent use, and one Collector may trace several caches
// (their operations add up).
type Collector struct {
	cfg Config

	ops      *prometheus.CounterVec
	keys     *prometheus.CounterVec
	errs     *prometheus.CounterVec
	duration *prometheus.HistogramVec

	loads        *prometheus.CounterVec
	loadDuration *prometheus.HistogramVec
	loadEvents   *prometheus.CounterVec

	passes       *prometheus.CounterVec
	removed      *prometheus.CounterVec
	culledBytes  prometheus.Counter
	passDuration prometheus.Histogram

	checks        *prometheus.CounterVec
	checkDuration *prometheus.HistogramVec

	// byOp holds each operation's series, resolved once: the hot path
	// does one map read instead of hashing label values.
	byOp   map[string]*opSeries
	others sync.Map // op name → *opSeries, for names New did not know

	tableRows, tableExpired, tableBytes, tableDead, lastPass, tableUp *prometheus.Desc

	cullerRunning, cullerInPass, cullerFailures, cullerSuccessAt, cullerErrorAt *prometheus.Desc
	culler                                                                      atomic.Pointer[culling.Culler]

	lockGrants, lockWaits, lockRefusals, lockExpiries, lockForced *prometheus.Desc
	locks                                                         atomic.Pointer[lock.Client]

	logMu     sync.Mutex
	lastLogAt time.Time
}

type opSeries struct {
	ok, errored, failOpen        prometheus.Counter
	hit, miss, stored, notStored prometheus.Counter
	duration                     prometheus.Observer
}

var knownOps = []string{
	dbcache.OpAdd, dbcache.OpClear, dbcache.OpDecr, dbcache.OpDecrVersion, dbcache.OpDelete,
	dbcache.OpDeleteMany, dbcache.OpDeletePrefix, dbcache.OpGet, dbcache.OpGetMany, dbcache.OpGetOrSet,
	dbcache.OpHasKey, dbcache.OpIncr, dbcache.OpIncrVersion, dbcache.OpKeys, dbcache.OpSet,
	dbcache.OpSetMany, dbcache.OpTouch, dbcache.OpTTL,
	dbcache.OpGetWithToken, dbcache.OpCompareAndSwap, dbcache.OpCompareAndDelete,
}

// New returns a Collector. It returns an error for a negative
// TableTimeout or CountLimit, or buckets that are not increasing.
func New(cfg *Config) (*Collector, error) {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.Namespace == "" {
		c.Namespace = NamespaceDefault
	}
	if c.OpBuckets == nil {
		c.OpBuckets = OpBucketsDefault
	}
	if c.LoadBuckets == nil {
		c.LoadBuckets = LoadBucketsDefault
	}
	if c.CullBuckets == nil {
		c.CullBuckets = CullBucketsDefault
	}
	if c.TableTimeout == 0 {
		c.TableTimeout = TableTimeoutDefault
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	var errs []error
	if c.TableTimeout < 0 {
		errs = append(errs, errors.New("prommetrics: Config.TableTimeout is negative"))
	}
	if c.CountLimit < 0 {
		errs = append(errs, errors.New("prommetrics: Config.CountLimit is negative"))
	}
	for name, b := range map[string][]float64{"OpBuckets": c.OpBuckets, "LoadBuckets": c.LoadBuckets, "CullBuckets": c.CullBuckets} {
		for i := 1; i < len(b); i++ {
			if b[i] <= b[i-1] {
				errs = append(errs, errors.New("prommetrics: Config."+name+" are not increasing"))
				break
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	ns, cl := c.Namespace, c.ConstLabels
	col := &Collector{cfg: c, byOp: make(map[string]*opSeries, len(knownOps))}
	col.ops = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "operations_total", ConstLabels: cl,
		Help: "Cache operations by name and result: ok, error (returned to the caller), fail_open (a transient error Config.FailOpen swallowed)."},
		[]string{"op", "result"})
	col.keys = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "operation_keys_total", ConstLabels: cl,
		Help: "Keys of cache operations by outcome: hit, miss (reads), stored, not_stored (writes)."},
		[]string{"op", "outcome"})
	col.errs = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "operation_errors_total", ConstLabels: cl,
		Help: "Errors returned by cache operations, by kind."},
		[]string{"op", "kind"})
	col.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "operation_duration_seconds", ConstLabels: cl,
		Help: "Wall time of cache operations.", Buckets: c.OpBuckets},
		[]string{"op"})
	col.loads = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "loads_total", ConstLabels: cl,
		Help: "GetOrSetFunc loader runs, by trigger (miss, refresh: stale-while-revalidate) and result (ok, error, panic)."},
		[]string{"trigger", "result"})
	col.loadDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "load_duration_seconds", ConstLabels: cl,
		Help: "Wall time of GetOrSetFunc loader runs.", Buckets: c.LoadBuckets},
		[]string{"trigger"})
	col.loadEvents = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "load_events_total", ConstLabels: cl,
		Help: "Loader coordination events (dbcache.LoadEvent): joined (a caller joined a load in flight in its process), lease_wait (a load waited for another process's), lease_expired (a loader outlived its lease; its value was not stored), refresh_failed, refresh_backoff (a stale hit started no refresh)."},
		[]string{"event"})
	for _, e := range []dbcache.LoadEvent{dbcache.LoadJoined, dbcache.LoadLeaseWait, dbcache.LoadLeaseExpired, dbcache.LoadRefreshFailed, dbcache.LoadRefreshBackoff} {
		col.loadEvents.WithLabelValues(string(e))
	}
	col.passes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "cull_passes_total", ConstLabels: cl,
		Help: "Culling passes observed in this process, by result: done, skipped (another culler held the lock), error."},
		[]string{"result"})
	col.removed = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "cull_rows_removed_total", ConstLabels: cl,
		Help: "Rows removed by culling passes observed in this process, by reason: expired, culled (over MaxEntries or MaxBytes), aged_out (MaxAge)."},
		[]string{"reason"})
	col.culledBytes = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "cull_bytes_culled_total", ConstLabels: cl,
		Help: "Bytes culled to keep the table under MaxBytes by passes observed in this process."})
	col.passDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "cull_pass_duration_seconds", ConstLabels: cl,
		Help: "Wall time of culling passes that ran (not skipped) in this process.", Buckets: c.CullBuckets})
	col.checks = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "ratelimit_checks_total", ConstLabels: cl,
		Help: "Rate-limit checks by limiter (ratelimit.Config.Name) and result: allowed, rejected, error (the check may or may not have counted)."},
		[]string{"limiter", "result"})
	col.checkDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "ratelimit_check_duration_seconds", ConstLabels: cl,
		Help: "Wall time of rate-limit checks.", Buckets: c.OpBuckets},
		[]string{"limiter"})
	for _, reason := range []string{"expired", "culled", "aged_out"} {
		col.removed.WithLabelValues(reason)
	}
	for _, r := range []string{"done", "skipped", "error"} {
		col.passes.WithLabelValues(r)
	}
	for _, op := range knownOps {
		col.byOp[op] = col.newSeries(op)
	}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(ns, "", name), help, labels, cl)
	}
	col.tableRows = desc("table_rows", "Rows in the cache table, live or expired: exact up to the count limit, PostgreSQL's statistics above.")
	col.tableExpired = desc("table_expired_rows", "Expired rows not yet removed from the cache table (counted up to the count limit).")
	col.tableBytes = desc("table_bytes", "Size of the cache table: part=table is the heap with TOAST, part=indexes every index.", "part")
	col.tableDead = desc("table_dead_tuples", "Dead tuples in the cache table (PostgreSQL's statistics).")
	col.lastPass = desc("cull_last_pass_timestamp_seconds", "When the last culling pass over the table finished, by any culler in any process.")
	col.tableUp = desc("table_stats_up", "1 when this scrape read the table's statistics, 0 when the read failed.")
	col.cullerRunning = desc("culler_running", "1 while the culler's started worker runs.")
	col.cullerInPass = desc("culler_in_pass", "1 while a pass of the culler is in progress.")
	col.cullerFailures = desc("culler_consecutive_failures", "Passes of the culler that failed since the last one that succeeded.")
	col.cullerSuccessAt = desc("culler_last_success_timestamp_seconds", "When a pass of the culler last ended without error (a skipped pass counts).")
	col.cullerErrorAt = desc("culler_last_error_timestamp_seconds", "When a pass of the culler last failed.")
	col.lockGrants = desc("lock_grants_total", "Locks granted by the watched lock client.")
	col.lockWaits = desc("lock_waits_total", "Acquire calls of the watched lock client that found the lock held and waited.")
	col.lockRefusals = desc("lock_refusals_total", "Attempts of the watched lock client that found the lock held by another owner.")
	col.lockExpiries = desc("lock_expiries_total", "Refresh, Release and Check calls of the watched lock client that found the lock lost (lease ran out, or forced free).")
	col.lockForced = desc("lock_forced_releases_total", "ForceRelease calls of the watched lock client that freed a live lock.")
	return col, nil
}

func (c *Collector) newSeries(op string) *opSeries {
	return &opSeries{
		ok:        c.ops.WithLabelValues(op, "ok"),
		errored:   c.ops.WithLabelValues(op, "error"),
		failOpen:  c.ops.WithLabelValues(op, "fail_open"),
		hit:       c.keys.WithLabelValues(op, "hit"),
		miss:      c.keys.WithLabelValues(op, "miss"),
		stored:    c.keys.WithLabelValues(op, "stored"),
		notStored: c.keys.WithLabelValues(op, "not_stored"),
		duration:  c.duration.WithLabelValues(op),
	}
}

func (c *Collector) series(op string) *opSeries {
	if s, ok := c.byOp[op]; ok {
		return s
	}
	if s, ok := c.others.Load(op); ok {
		return s.(*opSeries)
	}
	s, _ := c.others.LoadOrStore(op, c.newSeries(op))
	return s.(*opSeries)
}

// TraceOpStart implements dbcache.Tracer; it adds nothing to ctx.
func (c *Collector) TraceOpStart(ctx context.Context, _ dbcache.OpStart) context.Context { return ctx }

// TraceOpEnd implements dbcache.Tracer.
func (c *Collector) TraceOpEnd(_ context.Context, e dbcache.OpEnd) {
	s := c.series(e.Op)
	s.duration.Observe(e.Duration.Seconds())
	switch {
	case e.Err != nil:
		s.errored.Inc()
		c.errs.WithLabelValues(e.Op, ErrorKind(e.Err)).Inc()
	case e.FailedOpen != nil:
		s.failOpen.Inc()
	default:
		s.ok.Inc()
	}
	add := func(ctr prometheus.Counter, n int) {
		if n > 0 {
			ctr.Add(float64(n))
		}
	}
	add(s.hit, e.Hits)
	add(s.miss, e.Misses)
	add(s.stored, e.Stored)
	add(s.notStored, e.NotStored)
}

// TraceLoad implements dbcache.LoadTracer.
func (c *Collector) TraceLoad(_ context.Context, l dbcache.LoadEnd) {
	trigger := "miss"
	if l.Refresh {
		trigger = "refresh"
	}
	result := "ok"
	var panicked *dbcache.LoaderPanicError
	switch {
	case errors.As(l.Err, &panicked):
		result = "panic"
	case l.Err != nil:
		result = "error"
	}
	c.loads.WithLabelValues(trigger, result).Inc()
	c.loadDuration.WithLabelValues(trigger).Observe(l.Duration.Seconds())
}

// TraceLoadEvent implements dbcache.LoadEventTracer.
func (c *Collector) TraceLoadEvent(_ context.Context, e dbcache.LoadEvent) {
	c.loadEvents.WithLabelValues(string(e)).Inc()
}

// TraceCheck implements ratelimit.Tracer: set the Collector as a
// Limiter's Config.Tracer to count its checks, rejections included. The
// series are labelled with the limiter's Config.Name, never with a key.
func (c *Collector) TraceCheck(_ context.Context, e ratelimit.CheckEnd) {
	result := "allowed"
	switch {
	case e.Err != nil:
		result = "error"
	case !e.Result.Allowed:
		result = "rejected"
	}
	c.checks.WithLabelValues(e.Name, result).Inc()
	c.checkDuration.WithLabelValues(e.Name).Observe(e.Duration.Seconds())
}

// ErrorKind classifies an operation's error for the kind label: it is
// dbcache.ErrorCode, so a series never carries an error's text (which can
// name a key):
//
//	canceled            the caller's context was cancelled
//	invalid_key         dbcache.ErrInvalidKey
//	not_integer         dbcache.ErrNotInteger
//	overflow            dbcache.ErrOverflow
//	closed              dbcache.ErrClosed
//	not_migrated        dbcache.ErrNotMigrated
//	prefix_unsupported  dbcache.ErrPrefixUnsupported
//	loader_panic        a *dbcache.LoaderPanicError
//	hook_panic          a *dbcache.HookPanicError
//	loader              a *dbcache.LoaderError: the loader's own error
//	(its own code)      an error that is a dbcache.ErrorCoder
//	timeout             an operation or pool wait ran out of time
//	transient           any other dbcache.IsTransient error (connection lost,
//	                    server shutting down, deadlock, too many connections)
//	database            any other PostgreSQL error (permission, SQL)
//	other               anything else
func ErrorKind(err error) string { return dbcache.ErrorCode(err) }

// OnProgress returns a culling.Config.OnProgress hook that records each
// pass that ran to its end and then calls next (nil for none), for a
// Culler started in the application.
func (c *Collector) OnProgress(next func(culling.Progress)) func(culling.Progress) {
	return func(p culling.Progress) {
		if p.Phase == culling.PhaseDone {
			c.passes.WithLabelValues("done").Inc()
			c.removedBy(p.ExpiredRemoved, p.Culled, p.AgedOut, p.CulledBytes)
			c.passDuration.Observe(p.Elapsed.Seconds())
		}
		if next != nil {
			next(p)
		}
	}
}

// ObservePass records the result of culling.Culler.RunOnce: a pass that
// ran, was skipped or failed (rows it removed before failing stay removed
// and are counted). A dry run's result (PassResult.DryRun) removed nothing
// and is ignored.
func (c *Collector) ObservePass(res *culling.PassResult, err error) {
	if res == nil {
		res = &culling.PassResult{}
	}
	if res.DryRun {
		return
	}
	switch {
	case err != nil:
		c.passes.WithLabelValues("error").Inc()
	case res.Skipped:
		c.passes.WithLabelValues("skipped").Inc()
		return
	default:
		c.passes.WithLabelValues("done").Inc()
	}
	c.removedBy(res.ExpiredRemoved, res.Culled, res.AgedOut, res.CulledBytes)
	c.passDuration.Observe(res.Duration.Seconds())
}

func (c *Collector) removedBy(expired, culled, agedOut, culledBytes int64) {
	for _, r := range []struct {
		reason string
		n      int64
	}{{"expired", expired}, {"culled", culled}, {"aged_out", agedOut}} {
		if r.n > 0 {
			c.removed.WithLabelValues(r.reason).Add(float64(r.n))
		}
	}
	if culledBytes > 0 {
		c.culledBytes.Add(float64(culledBytes))
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, v := range c.collectors() {
		v.Describe(ch)
	}
	// Every Desc, whether or not it will be collected: a culler may be
	// watched after the Collector is registered.
	for _, d := range []*prometheus.Desc{c.tableRows, c.tableExpired, c.tableBytes, c.tableDead, c.lastPass, c.tableUp,
		c.cullerRunning, c.cullerInPass, c.cullerFailures, c.cullerSuccessAt, c.cullerErrorAt,
		c.lockGrants, c.lockWaits, c.lockRefusals, c.lockExpiries, c.lockForced} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. With Config.Pool it reads the
// table's figures, bounded by Config.TableTimeout; a failed read is
// table_stats_up 0 (and a log line), not a failed scrape.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, v := range c.collectors() {
		v.Collect(ch)
	}
	if cu := c.culler.Load(); cu != nil {
		c.collectHealth(ch, cu.Health())
	}
	if l := c.locks.Load(); l != nil {
		st := l.Stats()
		for d, v := range map[*prometheus.Desc]int64{c.lockGrants: st.Grants, c.lockWaits: st.Waits,
			c.lockRefusals: st.Refusals, c.lockExpiries: st.Expiries, c.lockForced: st.ForcedReleases} {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
		}
	}
	if c.cfg.Pool == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.TableTimeout)
	defer cancel()
	sz, err := tablestats.Size(ctx, c.cfg.Pool, c.cfg.Schema, c.cfg.CountLimit)
	if err != nil {
		c.logScrapeError(err)
		ch <- prometheus.MustNewConstMetric(c.tableUp, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.tableUp, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(c.tableRows, prometheus.GaugeValue, float64(sz.Rows))
	ch <- prometheus.MustNewConstMetric(c.tableExpired, prometheus.GaugeValue, float64(sz.Expired))
	ch <- prometheus.MustNewConstMetric(c.tableBytes, prometheus.GaugeValue, float64(sz.TableBytes), "table")
	ch <- prometheus.MustNewConstMetric(c.tableBytes, prometheus.GaugeValue, float64(sz.IndexBytes), "indexes")
	ch <- prometheus.MustNewConstMetric(c.tableDead, prometheus.GaugeValue, float64(sz.DeadTuples))
	// The state table is the culler's own record, shared by every
	// process: no pass yet, or no state table (migration 002), is no
	// series rather than a made-up time.
	if rec, err := culling.LastPass(ctx, c.cfg.Pool, sz.Schema); err == nil {
		ch <- prometheus.MustNewConstMetric(c.lastPass, prometheus.GaugeValue, float64(rec.FinishedAt.UnixNano())/1e9)
	} else if !errors.Is(err, culling.ErrNoPass) && !errors.Is(err, culling.ErrTableNotFound) {
		c.logScrapeError(err)
	}
}

// WatchCuller makes every scrape read cu's Health() (memory only, no
// query) for the culler_* gauges. Call it once the Culler exists: it is
// built after the Collector when its OnProgress is the Collector's. A later
// call replaces the Culler watched.
func (c *Collector) WatchCuller(cu *culling.Culler) { c.culler.Store(cu) }

// WatchLocks makes every scrape read l's Stats() (memory only, no query)
// for the lock_* counters. A later call replaces the client watched; for
// several clients, use a Collector each, with ConstLabels.
func (c *Collector) WatchLocks(l *lock.Client) { c.locks.Store(l) }

func (c *Collector) collectors() []prometheus.Collector {
	return []prometheus.Collector{c.ops, c.keys, c.errs, c.duration, c.loads, c.loadDuration, c.loadEvents,
		c.passes, c.removed, c.culledBytes, c.passDuration, c.checks, c.checkDuration}
}

func (c *Collector) collectHealth(ch chan<- prometheus.Metric, h culling.Health) {
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	ch <- prometheus.MustNewConstMetric(c.cullerRunning, prometheus.GaugeValue, b(h.Running))
	ch <- prometheus.MustNewConstMetric(c.cullerInPass, prometheus.GaugeValue, b(h.InPass))
	ch <- prometheus.MustNewConstMetric(c.cullerFailures, prometheus.GaugeValue, float64(h.ConsecutiveFailures))
	// Never is no series rather than 1970.
	if !h.LastSuccessAt.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.cullerSuccessAt, prometheus.GaugeValue, float64(h.LastSuccessAt.UnixNano())/1e9)
	}
	if !h.LastErrorAt.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.cullerErrorAt, prometheus.GaugeValue, float64(h.LastErrorAt.UnixNano())/1e9)
	}
}

// scrapeLogEvery bounds the log lines of failing scrapes: Prometheus
// scrapes every few seconds.
const scrapeLogEvery = time.Minute

func (c *Collector) logScrapeError(err error) {
	c.logMu.Lock()
	if time.Since(c.lastLogAt) < scrapeLogEvery {
		c.logMu.Unlock()
		return
	}
	c.lastLogAt = time.Now()
	c.logMu.Unlock()
	c.cfg.Logger.Warn("prommetrics: reading the cache table's statistics failed", "error", err)
}
