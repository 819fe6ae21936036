// Package loadgen is a closed-loop load generator for key-value stores, in
// the manner of redis-benchmark: a number of workers each run one request
// after another, picking operations from a weighted mix over a key space, for
// a duration or a request count, and the run reports throughput and latency
// percentiles per operation.
//
// The package knows nothing of the store under test: an operation is a
// function given a [Request] (a key, a batch of keys and a value). Package
// dbcacheload supplies the operations for a dbcache.Cache; benchmarks of other
// stores (raw pgx, Redis) supply their own under the same names ([OpGet],
// [OpSet], …), so one mix runs against each and the results compare.
//
// # Example
//
//	ops, _ := loadgen.ParseMix("get:9,set:1", dbcacheload.Ops(cache, dbcache.DefaultTimeout))
//	res, err := loadgen.Run(ctx, &loadgen.Config{
//		Ops:         ops,
//		Concurrency: 8,
//		Duration:    10 * time.Second,
//	})
//	fmt.Println(res.Total.OpsPerSec, res.Total.P99)
//
// Progress is reported through [Config.Progress], a callback, so the caller
// chooses how to show it (a progress bar, log lines, nothing).
//
// The package is internal and its API may change.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Standard operation names. A store's operation set uses these names for the
// operations it has, so one mix string means the same work on every store.
const (
	OpAdd      = "add"
	OpDecr     = "decr"
	OpDelete   = "delete"
	OpGet      = "get"
	OpGetMany  = "get_many"
	OpGetOrSet = "get_or_set"
	OpHas      = "has"
	OpIncr     = "incr"
	OpSet      = "set"
	OpSetMany  = "set_many"
	OpTouch    = "touch"
)

// Defaults for the zero fields of Config.
const (
	BatchSizeDefault        = 10
	ConcurrencyDefault      = 4
	DurationDefault         = 10 * time.Second
	KeyPrefixDefault        = "loadgen:"
	KeySpaceDefault         = 10_000
	MaxErrorsDefault        = 100
	ProgressIntervalDefault = 200 * time.Millisecond
	ValueSizeDefault        = 100
)

// ErrMiss is what an operation returns (possibly wrapped) when it completed
// but found nothing: a get of an absent key, an add that stored nothing.
// It is counted as a miss, not an error, and its latency is recorded.
var ErrMiss = errors.New("loadgen: miss")

// Request is one operation's input. A worker reuses its Request for every
// operation it runs, so an OpFunc must not keep it, nor its Keys or Value,
// after returning.
type Request struct {
	// Key is a key drawn uniformly from the key space.
	Key string
	// Keys holds Config.BatchSize distinct keys from the key space, for an
	// Op with Batch set; nil otherwise. Keys[0] is Key.
	Keys []string
	// Value is Config.ValueSize random bytes, fixed per worker.
	Value []byte
	// Worker is the worker's index, from 0 to Concurrency-1.
	Worker int
}

// OpFunc runs one operation against the store under test. It returns nil on
// success, an error wrapping ErrMiss on a miss, and any other error on a
// failure.
type OpFunc func(ctx context.Context, req *Request) error

// Op is one operation of a mix.
type Op struct {
	// Name names the operation in results (OpGet, OpSet, …).
	Name string
	// Run runs it.
	Run OpFunc
	// Batch makes the worker fill Request.Keys before each run.
	Batch bool
	// Weight is the operation's share of requests relative to the other
	// operations' weights. ParseMix sets it; 0 means the operation never runs.
	Weight int
}

// ParseMix picks operations from ops (by name) as spec says: a
// comma-separated list of names, each optionally weighted with ":N", as in
// "get,set" (half each) or "get:9,set:1". Names are case-insensitive; "-"
// may stand for "_" (get-many).
func ParseMix(spec string, ops map[string]Op) ([]Op, error) {
	var out []Op
	seen := map[string]bool{}
	for part := range strings.SplitSeq(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, weightText, hasWeight := strings.Cut(part, ":")
		name = strings.ReplaceAll(strings.ToLower(strings.TrimSpace(name)), "-", "_")
		op, ok := ops[name]
		if !ok {
			return nil, fmt.Errorf("loadgen: unknown operation %q (known: %s)", name, strings.Join(OpNames(ops), ", "))
		}
		if seen[name] {
			return nil, fmt.Errorf("loadgen: operation %q listed twice", name)
		}
		seen[name] = true
		op.Name = name
		op.Weight = 1
		if hasWeight {
			w, err := strconv.Atoi(strings.TrimSpace(weightText))
			if err != nil || w < 1 {
				return nil, fmt.Errorf("loadgen: weight of %q must be a positive integer, got %q", name, weightText)
			}
			op.Weight = w
		}
		out = append(out, op)
	}
	if len(out) == 0 {
		return nil, errors.New("loadgen: no operations in the mix")
	}
	return out, nil
}

// OpNames returns the names in ops, sorted.
func OpNames(ops map[string]Op) []string {
	names := make([]string, 0, len(ops))
	for n := range ops {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Config configures a run. The zero value of each field means its default.
type Config struct {
	// BatchSize is the number of keys in Request.Keys for batch operations.
	// It must not exceed KeySpace. Defaults to BatchSizeDefault.
	BatchSize int

	// Concurrency is the number of workers, each running one operation at a
	// time (a closed loop, like redis-benchmark's clients). Defaults to
	// ConcurrencyDefault.
	Concurrency int

	// Duration bounds the run in time. If both Duration and Requests are
	// set, the run ends at whichever comes first. Defaults to DurationDefault
	// when Requests is 0, otherwise to no time limit.
	Duration time.Duration

	// KeyPrefix starts every generated key. Defaults to KeyPrefixDefault.
	KeyPrefix string

	// KeySpace is the number of distinct keys: keys are KeyPrefix followed by
	// a number from 0 to KeySpace-1 (see Key). Defaults to KeySpaceDefault.
	KeySpace int

	// MaxErrors ends the run early, with an error, once more than this many
	// operations failed, so a broken store is reported at once instead of
	// after Duration. Negative means never. Defaults to MaxErrorsDefault.
	MaxErrors int

	// Ops is the mix: which operations run, in what proportion (see
	// ParseMix). Required.
	Ops []Op

	// Progress, if set, is called every ProgressInterval during the run and
	// once at its end, from a single goroutine of its own. It must not block
	// for long.
	Progress func(Progress)

	// ProgressInterval is how often Progress is called. Defaults to
	// ProgressIntervalDefault.
	ProgressInterval time.Duration

	// Requests bounds the run in total operations, over all workers. 0 means
	// no count limit.
	Requests int64

	// Seed seeds the key and operation choices and the values, so two runs
	// with one seed issue the same requests per worker. Defaults to 0, which
	// is a seed like any other.
	Seed uint64

	// ValueSize is the size of Request.Value in bytes. Defaults to
	// ValueSizeDefault; use a negative number for empty values.
	ValueSize int
}

// WithDefaults returns a copy of c with every default filled in.
func (c *Config) WithDefaults() Config {
	var out Config
	if c != nil {
		out = *c
	}
	if out.BatchSize == 0 {
		out.BatchSize = BatchSizeDefault
	}
	if out.Concurrency == 0 {
		out.Concurrency = ConcurrencyDefault
	}
	if out.Duration == 0 && out.Requests == 0 {
		out.Duration = DurationDefault
	}
	if out.KeyPrefix == "" {
		out.KeyPrefix = KeyPrefixDefault
	}
	if out.KeySpace == 0 {
		out.KeySpace = KeySpaceDefault
	}
	if out.MaxErrors == 0 {
		out.MaxErrors = MaxErrorsDefault
	}
	if out.ProgressInterval == 0 {
		out.ProgressInterval = ProgressIntervalDefault
	}
	if out.ValueSize == 0 {
		out.ValueSize = ValueSizeDefault
	}
	if out.ValueSize < 0 {
		out.ValueSize = 0
	}
	return out
}

// Validate reports what is wrong with a config that has its defaults filled
// in, naming the field.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Ops) == 0 {
		errs = append(errs, errors.New("loadgen: Config.Ops is empty"))
	}
	total := 0
	for i, op := range c.Ops {
		if op.Run == nil {
			errs = append(errs, fmt.Errorf("loadgen: Config.Ops[%d] (%s) has no Run", i, op.Name))
		}
		if op.Weight < 0 {
			errs = append(errs, fmt.Errorf("loadgen: Config.Ops[%d] (%s) has a negative Weight", i, op.Name))
		}
		total += op.Weight
	}
	if len(c.Ops) > 0 && total == 0 {
		errs = append(errs, errors.New("loadgen: every Config.Ops weight is 0"))
	}
	if c.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("loadgen: Config.Concurrency must be at least 1, got %d", c.Concurrency))
	}
	if c.Duration < 0 {
		errs = append(errs, fmt.Errorf("loadgen: Config.Duration must not be negative, got %s", c.Duration))
	}
	if c.Requests < 0 {
		errs = append(errs, fmt.Errorf("loadgen: Config.Requests must not be negative, got %d", c.Requests))
	}
	if c.KeySpace < 1 {
		errs = append(errs, fmt.Errorf("loadgen: Config.KeySpace must be at least 1, got %d", c.KeySpace))
	}
	if c.BatchSize < 1 || c.BatchSize > c.KeySpace {
		errs = append(errs, fmt.Errorf("loadgen: Config.BatchSize must be from 1 to KeySpace (%d), got %d", c.KeySpace, c.BatchSize))
	}
	if c.ProgressInterval < 0 {
		errs = append(errs, fmt.Errorf("loadgen: Config.ProgressInterval must not be negative, got %s", c.ProgressInterval))
	}
	return errors.Join(errs...)
}

// Key returns the i-th key of the key space, as workers generate them, so a
// caller can prefill the store with exactly the keys a run reads.
func (c *Config) Key(i int) string {
	return c.KeyPrefix + strconv.Itoa(i)
}

// Progress is a snapshot of a running load.
type Progress struct {
	// Done is the number of operations completed so far (misses and errors
	// included).
	Done int64
	// Elapsed is the time since the run started.
	Elapsed time.Duration
	// Errors is the number of failed operations so far.
	Errors int64
	// Final is true for the last call, made once the run has ended.
	Final bool
}

// Result is what a run measured.
type Result struct {
	// Elapsed is the run's wall-clock time, from the first operation to the
	// last worker's end.
	Elapsed time.Duration `json:"elapsed_ns"`
	// FirstError is the first failure's message, or "" if none failed.
	FirstError string `json:"first_error,omitempty"`
	// Interrupted is true when the run ended because ctx was done.
	Interrupted bool `json:"interrupted"`
	// Ops holds each operation's figures, in Config.Ops order.
	Ops []OpResult `json:"ops"`
	// Total holds the figures over every operation.
	Total OpResult `json:"total"`
}

// OpResult is the figures for one operation (or, as Result.Total, for all).
// Latencies cover every completed request, misses and errors included.
type OpResult struct {
	// Name is the operation's name; "total" for Result.Total.
	Name string `json:"name"`
	// Requests is the number of completed requests.
	Requests int64 `json:"requests"`
	// Errors is the number of those that failed.
	Errors int64 `json:"errors"`
	// Misses is the number of those that returned ErrMiss.
	Misses int64 `json:"misses"`
	// OpsPerSec is Requests divided by the run's elapsed time.
	OpsPerSec float64 `json:"ops_per_sec"`

	// Latency figures: the mean, percentiles 50, 99 and 99.9, and the
	// extremes.
	Min  time.Duration `json:"min_ns"`
	Mean time.Duration `json:"mean_ns"`
	P50  time.Duration `json:"p50_ns"`
	P99  time.Duration `json:"p99_ns"`
	P999 time.Duration `json:"p999_ns"`
	Max  time.Duration `json:"max_ns"`
}

// opCounts is one worker's record of one operation.
type opCounts struct {
	hist           histogram
	errors, misses int64
}

// Run runs the load cfg describes and returns what it measured. It returns
// an error, with no result, for an invalid config. When more than MaxErrors
// operations fail it stops early and returns the result so far together with
// an error carrying the first failure. When ctx ends it stops, marks the
// result Interrupted and returns it with a nil error: operations cut short by
// the cancellation are not counted.
func Run(ctx context.Context, cfg *Config) (*Result, error) {
	c := cfg.WithDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}

	// Cumulative weights, for picking an operation with one random draw.
	cum := make([]int, len(c.Ops))
	total := 0
	for i, op := range c.Ops {
		total += op.Weight
		cum[i] = total
	}

	var (
		done, failed atomic.Int64
		claimed      atomic.Int64
		stop         atomic.Bool
		firstErr     error
		firstErrOnce sync.Once
		wg           sync.WaitGroup
	)
	counts := make([][]opCounts, c.Concurrency)
	start := time.Now()
	var deadline time.Time
	if c.Duration > 0 {
		deadline = start.Add(c.Duration)
	}

	// The time limit is checked between operations rather than by cancelling
	// ctx, so the last operations finish normally instead of being cut off
	// (which would also make pgx close their connections).
	for w := range c.Concurrency {
		counts[w] = make([]opCounts, len(c.Ops))
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(c.Seed, uint64(w)))
			req := &Request{Worker: w, Value: make([]byte, c.ValueSize)}
			for i := range req.Value {
				// Printable bytes, so values read well when inspected.
				req.Value[i] = byte('a' + rng.IntN(26))
			}
			keys := make([]string, c.BatchSize)
			mine := counts[w]
			for !stop.Load() && ctx.Err() == nil {
				if c.Requests > 0 && claimed.Add(1) > c.Requests {
					return
				}
				if !deadline.IsZero() && !time.Now().Before(deadline) {
					return
				}
				i := 0
				if len(c.Ops) > 1 {
					r := rng.IntN(total)
					for cum[i] <= r {
						i++
					}
				}
				op := &c.Ops[i]
				k := rng.IntN(c.KeySpace)
				req.Key = c.Key(k)
				req.Keys = nil
				if op.Batch {
					keys[0] = req.Key
					for j := 1; j < c.BatchSize; j++ {
						keys[j] = c.Key((k + j) % c.KeySpace)
					}
					req.Keys = keys
				}
				t0 := time.Now()
				err := op.Run(ctx, req)
				lat := time.Since(t0)
				if err != nil && ctx.Err() != nil {
					return // cut short by the caller: not a measurement
				}
				oc := &mine[i]
				oc.hist.record(lat)
				switch {
				case err == nil:
				case errors.Is(err, ErrMiss):
					oc.misses++
				default:
					oc.errors++
					firstErrOnce.Do(func() { firstErr = fmt.Errorf("%s: %w", op.Name, err) })
					if n := failed.Add(1); c.MaxErrors >= 0 && n > int64(c.MaxErrors) {
						stop.Store(true)
					}
				}
				done.Add(1)
			}
		})
	}

	finished := make(chan struct{})
	var progressDone sync.WaitGroup
	if c.Progress != nil {
		progressDone.Go(func() {
			t := time.NewTicker(c.ProgressInterval)
			defer t.Stop()
			for {
				select {
				case <-finished:
					return
				case <-t.C:
					c.Progress(Progress{Done: done.Load(), Errors: failed.Load(), Elapsed: time.Since(start)})
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(finished)
	progressDone.Wait()
	if c.Progress != nil {
		c.Progress(Progress{Done: done.Load(), Errors: failed.Load(), Elapsed: elapsed, Final: true})
	}

	res := &Result{Elapsed: elapsed, Interrupted: ctx.Err() != nil}
	var all opCounts
	for i, op := range c.Ops {
		var merged opCounts
		for w := range counts {
			merged.hist.merge(&counts[w][i].hist)
			merged.errors += counts[w][i].errors
			merged.misses += counts[w][i].misses
		}
		res.Ops = append(res.Ops, merged.result(op.Name, elapsed))
		all.hist.merge(&merged.hist)
		all.errors += merged.errors
		all.misses += merged.misses
	}
	res.Total = all.result("total", elapsed)
	if firstErr != nil {
		res.FirstError = firstErr.Error()
	}
	if stop.Load() {
		return res, fmt.Errorf("loadgen: stopped after %d failed operations; first: %w", failed.Load(), firstErr)
	}
	return res, nil
}

func (oc *opCounts) result(name string, elapsed time.Duration) OpResult {
	r := OpResult{
		Name:     name,
		Requests: int64(oc.hist.n),
		Errors:   oc.errors,
		Misses:   oc.misses,
		Min:      time.Duration(oc.hist.min),
		Mean:     oc.hist.mean(),
		P50:      oc.hist.quantile(0.50),
		P99:      oc.hist.quantile(0.99),
		P999:     oc.hist.quantile(0.999),
		Max:      time.Duration(oc.hist.max),
	}
	if elapsed > 0 {
		r.OpsPerSec = float64(r.Requests) / elapsed.Seconds()
	}
	return r
}
