package cli

import (
	"context"
	"fmt"
	"math"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/loadgen"
	"github.com/dbcache/dbcache/internal/loadgen/dbcacheload"
)

// benchKeyPrefix starts every key bench writes (before dbcache's own
// prefix and version), so bench data is easy to tell apart.
const benchKeyPrefix = "bench:"

// benchJSON is bench's --json output.
type benchJSON struct {
	Ops           string  `json:"ops"`
	Concurrency   int     `json:"concurrency"`
	ValueSize     int     `json:"value_size"`
	KeySpace      int     `json:"keyspace"`
	BatchSize     int     `json:"batch_size"`
	DurationLimit float64 `json:"duration_limit_seconds"`
	RequestsLimit int64   `json:"requests_limit"`
	Prefilled     bool    `json:"prefilled"`
	PrefillRows   int64   `json:"prefill_rows"`
	Removed       int64   `json:"removed"`
	// Left is the most entries of bench's that the cleanup could not
	// remove (0 when it removed them all, or with --keep).
	Left           int64           `json:"left"`
	Kept           bool            `json:"kept"`
	ElapsedSeconds float64         `json:"elapsed_seconds"`
	Interrupted    bool            `json:"interrupted"`
	FirstError     string          `json:"first_error,omitempty"`
	Results        []benchOpResult `json:"results"`
	Total          benchOpResult   `json:"total"`
}

type benchOpResult struct {
	Op        string       `json:"op"`
	Requests  int64        `json:"requests"`
	Errors    int64        `json:"errors"`
	Misses    int64        `json:"misses"`
	OpsPerSec float64      `json:"ops_per_sec"`
	LatencyMs benchLatency `json:"latency_ms"`
}

// benchLatency holds latencies in milliseconds, to the microsecond.
type benchLatency struct {
	Min  float64 `json:"min"`
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
}

func toBenchOp(r loadgen.OpResult) benchOpResult {
	ms := func(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }
	return benchOpResult{
		Op: r.Name, Requests: r.Requests, Errors: r.Errors, Misses: r.Misses,
		OpsPerSec: math.Round(r.OpsPerSec*10) / 10,
		LatencyMs: benchLatency{
			Min: ms(r.Min), Mean: ms(r.Mean), P50: ms(r.P50), P99: ms(r.P99), P999: ms(r.P999), Max: ms(r.Max),
		},
	}
}

// benchCleanupTimeout bounds removing bench's keys after the run, which
// goes ahead after an interrupt too.
const benchCleanupTimeout = time.Minute

// benchCleanupAttempts is how many times the cleanup tries one batch of
// keys: a failure on a network that drops a connection, or on a statement
// that waited too long for a row lock, is retried after a pause
// (benchCleanupPause, doubling). Once one batch still fails, the cleanup
// stops (the server is likely gone) and reports that batch and those
// after it as left.
const (
	benchCleanupAttempts = 3
	benchCleanupPause    = 250 * time.Millisecond
)

// benchBatch is how many keys one prefill or cleanup statement covers.
const benchBatch = 500

func (a *app) benchCommand() *cobra.Command {
	var (
		cf       cacheFlags
		mix      string
		lc       loadgen.Config
		prefill  bool
		keep     bool
		ttl      string
		duration time.Duration
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load the cache with a mix of operations and report throughput and latency",
		Long: `Run a load against the cache on this server, as redis-benchmark does against
Redis: --concurrency workers each run one operation after another, picked
from the --ops mix, over --keyspace keys with --value-size byte values, for
--duration or --requests, and report requests per second and latency
percentiles (p50, p99, p99.9) per operation.

Operations: get, set, add, delete, touch, has, incr, decr, get_or_set,
get_many and set_many (the _many ones on --batch-size keys). Weight them
with ":N", e.g. --ops get:9,set:1. Keys are "bench:N" (under --key-prefix
and --key-version); counters for incr/decr are "bench:N:n". Unless
--prefill=false, every key is written first so reads hit: one row per key,
plus a counter per key when the mix has incr or decr.

When the run ends (or is interrupted) bench removes every key it may have
written, so it leaves the cache as it found it, except that it overwrites
and then removes entries that were already under those keys. --keep leaves
them (to look at them with stats, or to cull them). Each batch of that
cleanup is tried up to three times; if one still fails, bench exits 1 and
says which keys may be left and how to remove them.`,
		Example: `  dbcache bench
  dbcache bench --ops get:9,set:1 -c 16 --duration 30s
  dbcache bench --ops get_many,set_many --batch-size 50 -n 10000 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			timeout, err := parseTTL(ttl)
			if err != nil {
				return err
			}
			// -n alone means "until that many requests"; the default time
			// limit applies only when neither is given. --duration 0 means
			// no time limit, which needs -n.
			lc.Duration = duration
			if lc.Requests > 0 && !cmd.Flags().Changed("duration") {
				lc.Duration = 0
			}
			if cmd.Flags().Changed("duration") && duration == 0 && lc.Requests == 0 {
				return usagef("--duration 0 means no time limit: give -n/--requests too, or a positive --duration")
			}
			if lc.Duration < 0 || lc.Requests < 0 || lc.Concurrency < 1 || lc.KeySpace < 1 || lc.ValueSize < 0 {
				return usagef("--duration, --requests and --value-size must not be negative; --concurrency and --keyspace must be at least 1")
			}
			if lc.Concurrency > 1000 {
				return usagef("--concurrency %d is more connections than is sensible (at most 1000)", lc.Concurrency)
			}
			if lc.ValueSize == 0 {
				lc.ValueSize = -1 // loadgen's "empty values"; 0 would mean its default
			}
			lc.KeyPrefix = benchKeyPrefix
			if err := cf.validate(); err != nil {
				return err
			}
			if err := a.useAppQueryMode(ctx); err != nil {
				return err
			}
			o, err := a.openStore(ctx, cmd, &cf, int32(lc.Concurrency))
			if err != nil {
				return err
			}
			defer o.close()
			cache := o.store
			ops, err := loadgen.ParseMix(mix, dbcacheload.Ops(cache, timeout))
			if err != nil {
				return &usageError{err: err}
			}
			lc.Ops = ops
			full := lc.WithDefaults()
			if err := full.Validate(); err != nil {
				return &usageError{err: err}
			}
			counters, writes := false, prefill
			for _, op := range ops {
				switch op.Name {
				case loadgen.OpIncr, loadgen.OpDecr:
					counters, writes = true, true
				case loadgen.OpSet, loadgen.OpAdd, loadgen.OpGetOrSet, loadgen.OpSetMany:
					writes = true
				}
			}

			// bench removes what it may have written once the run ends: also
			// after an interrupt, or a failure part way through the prefill.
			var (
				removed int64
				left    *benchLeft
			)
			cleanup := func() {
				if !writes || keep {
					return
				}
				cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), benchCleanupTimeout)
				defer cancel()
				removed, left = a.benchCleanup(cctx, cache, &full, counters)
			}

			var prefillRows int64
			if prefill {
				prefillRows, err = a.benchPrefill(ctx, cache, &full, timeout, counters)
				if err != nil {
					cleanup()
					a.sayLeft(ctx, left, &full, counters, &cf, cmd)
					return err
				}
			}

			t := a.newTicker(full.Duration == 0)
			lc.Progress = func(p loadgen.Progress) {
				if p.Final {
					return
				}
				rate := float64(p.Done) / max(p.Elapsed.Seconds(), 1e-9)
				desc := fmt.Sprintf("bench %s ops/s", humanCount(int64(rate)))
				line := fmt.Sprintf("bench: %s requests, %s ops/s, %s errors", humanCount(p.Done), humanCount(int64(rate)), humanCount(p.Errors))
				if full.Duration == 0 {
					t.update(full.Requests, p.Done, desc, line)
				} else {
					secs := int64(math.Ceil(full.Duration.Seconds()))
					t.update(secs, int64(p.Elapsed.Seconds()), desc, line)
				}
			}
			res, runErr := loadgen.Run(ctx, &lc)
			t.finish()
			cleanup()
			// A cleanup that left keys fails the command (after the
			// results, which say what was left), unless the run failed
			// already: its error is the one reported.
			if runErr == nil && left != nil {
				runErr = left.err
			}
			if res == nil {
				a.sayLeft(ctx, left, &full, counters, &cf, cmd)
				return runErr
			}
			if a.g.json {
				out := benchJSON{
					Ops: mix, Concurrency: full.Concurrency, ValueSize: full.ValueSize, KeySpace: full.KeySpace,
					BatchSize: full.BatchSize, DurationLimit: full.Duration.Seconds(), RequestsLimit: full.Requests,
					Prefilled: prefill, PrefillRows: prefillRows, Removed: removed, Left: left.rows(), Kept: keep && writes,
					ElapsedSeconds: res.Elapsed.Seconds(), Interrupted: res.Interrupted,
					FirstError: res.FirstError, Total: toBenchOp(res.Total),
				}
				for _, op := range res.Ops {
					out.Results = append(out.Results, toBenchOp(op))
				}
				if err := a.writeJSON(out); err != nil {
					return err
				}
				return runErr
			}
			a.printBench(mix, &full, prefill, res)
			switch {
			case keep && writes:
				a.println("kept the keys bench wrote (bench:0 … bench:%d%s, under the key prefix and version)", full.KeySpace-1,
					map[bool]string{true: " and their :n counters", false: ""}[counters])
			case left != nil:
				a.println("%s", a.leftLine(left, &full, counters, &cf, cmd))
			case writes:
				a.println("removed the %s entries bench wrote (--keep leaves them)", humanCount(removed))
			}
			return runErr
		},
	}
	f := cmd.Flags()
	cf.add(f)
	f.StringVarP(&mix, "ops", "t", "get,set", "operations to run, optionally weighted: get:9,set:1")
	f.IntVarP(&lc.Concurrency, "concurrency", "c", 8, "workers (and connections), each running one request at a time")
	f.IntVarP(&lc.ValueSize, "value-size", "d", loadgen.ValueSizeDefault, "value size in bytes")
	f.IntVarP(&lc.KeySpace, "keyspace", "r", loadgen.KeySpaceDefault, "number of distinct keys")
	f.Int64VarP(&lc.Requests, "requests", "n", 0, "stop after this many requests (0: no limit)")
	f.DurationVar(&duration, "duration", loadgen.DurationDefault, "stop after this long (default 10s unless -n is given)")
	f.IntVar(&lc.BatchSize, "batch-size", loadgen.BatchSizeDefault, "keys per get_many / set_many")
	f.BoolVar(&prefill, "prefill", true, "write every key before the run so reads hit")
	f.BoolVar(&keep, "keep", false, "leave the keys bench wrote in the cache (default: remove them at the end)")
	f.StringVar(&ttl, "ttl", "default", ttlHelp)
	f.Uint64Var(&lc.Seed, "seed", 0, "seed for keys, operations and values")
	return cmd
}

// benchPrefill writes every key of the key space with a value of the run's
// size, and a counter of 0 beside each when counters is set (the mix has
// incr or decr), benchBatch keys per statement. It returns the rows written;
// progress shows them too.
func (a *app) benchPrefill(ctx context.Context, cache dbcache.Store, c *loadgen.Config, timeout dbcache.Timeout, counters bool) (int64, error) {
	value := make([]byte, max(c.ValueSize, 0))
	for i := range value {
		value[i] = 'a' + byte(i%26)
	}
	perKey := int64(1)
	if counters {
		perKey = 2
	}
	total := int64(c.KeySpace) * perKey
	zero := []byte("0")
	t := a.newTicker(true)
	defer t.finish()
	var rows int64
	for start := 0; start < c.KeySpace; start += benchBatch {
		end := min(start+benchBatch, c.KeySpace)
		items := make(map[string][]byte, int64(end-start)*perKey)
		for i := start; i < end; i++ {
			k := c.Key(i)
			items[k] = value
			if counters {
				items[k+dbcacheload.CounterSuffix] = zero
			}
		}
		if _, err := cache.SetMany(ctx, items, timeout); err != nil {
			return rows, fmt.Errorf("bench: prefill: %w", err)
		}
		rows += int64(len(items))
		t.update(total, rows, "prefill", fmt.Sprintf("bench: prefilled %s of %s rows", humanCount(rows), humanCount(total)))
	}
	return rows, nil
}

// benchLeft is what the cleanup could not remove: the key space from
// index from on (each key with its counter when counters), and why.
type benchLeft struct {
	from, keys int // the first key left, and how many keys from there
	perKey     int // rows per key: 2 with counters
	err        error
}

// rows is how many entries may be left: nil leaves none.
func (l *benchLeft) rows() int64 {
	if l == nil {
		return 0
	}
	return int64(l.keys * l.perKey)
}

// benchCleanup removes every key bench may have written: the key space, and
// the counters when counters is set, benchBatch keys per statement, each
// batch tried up to benchCleanupAttempts times. It returns how many live
// entries it removed, and what it left (nil when nothing).
func (a *app) benchCleanup(ctx context.Context, cache dbcache.Store, c *loadgen.Config, counters bool) (int64, *benchLeft) {
	t := a.newTicker(true)
	defer t.finish()
	perKey := 1
	if counters {
		perKey = 2
	}
	var removed int64
	for start := 0; start < c.KeySpace; start += benchBatch {
		end := min(start+benchBatch, c.KeySpace)
		keys := make([]string, 0, perKey*(end-start))
		for i := start; i < end; i++ {
			keys = append(keys, c.Key(i))
			if counters {
				keys = append(keys, c.Key(i)+dbcacheload.CounterSuffix)
			}
		}
		var err error
		pause := benchCleanupPause
		for attempt := 1; ; attempt++ {
			var n int
			n, err = cache.DeleteMany(ctx, keys)
			if err == nil {
				removed += int64(n)
				break
			}
			if attempt == benchCleanupAttempts || ctx.Err() != nil {
				break
			}
			a.log.WarnContext(ctx, "bench: removing its keys failed; trying again", "attempt", attempt, "err", errorLine(err, a.g.connectTimeout))
			select {
			case <-ctx.Done():
			case <-time.After(pause):
			}
			pause *= 2
		}
		if err != nil {
			return removed, &benchLeft{from: start, keys: c.KeySpace - start, perKey: perKey,
				err: fmt.Errorf("bench: remove its keys: %w", err)}
		}
		t.update(int64(c.KeySpace), int64(end), "removing bench keys",
			fmt.Sprintf("bench: removed %s entries so far", humanCount(removed)))
	}
	return removed, nil
}

// sayLeft says what the cleanup left, if anything, where the results go
// (under --json, where no results were printed, as a log line).
func (a *app) sayLeft(ctx context.Context, l *benchLeft, c *loadgen.Config, counters bool, cf *cacheFlags, cmd *cobra.Command) {
	switch {
	case l == nil:
	case a.g.json:
		a.log.ErrorContext(ctx, a.leftLine(l, c, counters, cf, cmd), "left", l.rows())
	default:
		a.println("%s", a.leftLine(l, c, counters, cf, cmd))
	}
}

// leftLine says which of bench's keys the cleanup left, and how to remove
// them.
func (a *app) leftLine(l *benchLeft, c *loadgen.Config, counters bool, cf *cacheFlags, cmd *cobra.Command) string {
	what := fmt.Sprintf("%s … %s", c.Key(l.from), c.Key(l.from+l.keys-1))
	if counters {
		what += " and their :n counters"
	}
	flags := ""
	if cf.prefix != "" {
		flags += " --key-prefix " + shellQuote(cf.prefix)
	}
	if cmd.Flags().Changed("key-version") {
		flags += fmt.Sprintf(" --key-version %d", cf.version)
	}
	return fmt.Sprintf("could not remove all the keys bench wrote: up to %s left (%s, under the key prefix and version); "+
		"`dbcache delete-prefix %s --yes%s%s` removes them (and any other key starting %s)",
		countOf(l.rows(), "entry", "entries"), what, benchKeyPrefix, flags, a.schemaFlag(), benchKeyPrefix)
}

// shellQuote quotes s for a shell, unless it needs no quotes.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r == '-' || r == '_' || r == ':' || r == '.' || r == '/' || (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z'))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func (a *app) printBench(mix string, c *loadgen.Config, prefill bool, res *loadgen.Result) {
	limit := fmt.Sprintf("%s requests", humanCount(c.Requests))
	if c.Requests == 0 {
		limit = c.Duration.String()
	} else if c.Duration > 0 {
		limit += " or " + c.Duration.String()
	}
	filled := ""
	if prefill {
		filled = ", prefilled"
	}
	a.println("bench: %s; %d workers; %s keys%s; %d-byte values; %s", mix, c.Concurrency,
		humanCount(int64(c.KeySpace)), filled, c.ValueSize, limit)
	tw := tabwriter.NewWriter(a.out, 0, 0, 2, ' ', tabwriter.AlignRight)
	// The table is right-aligned for the numbers; padding the names to one
	// width keeps the first column left-aligned.
	width := len("total")
	for _, op := range res.Ops {
		width = max(width, len(op.Name))
	}
	pad := func(s string) string { return s + strings.Repeat(" ", width-len(s)) }
	fmt.Fprintf(tw, "%s\trequests\tops/s\tmean\tp50\tp99\tp99.9\tmax\tmisses\terrors\t\n", pad("op"))
	row := func(r loadgen.OpResult) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", pad(r.Name), humanCount(r.Requests),
			humanCount(int64(math.Round(r.OpsPerSec))), latency(r.Mean), latency(r.P50), latency(r.P99),
			latency(r.P999), latency(r.Max), humanCount(r.Misses), humanCount(r.Errors))
	}
	for _, op := range res.Ops {
		row(op)
	}
	if len(res.Ops) > 1 {
		row(res.Total)
	}
	_ = tw.Flush()
	end := "in"
	if res.Interrupted {
		end = "interrupted after"
	}
	a.println("%s requests %s %s", humanCount(res.Total.Requests), end, roundDuration(res.Elapsed))
	if res.FirstError != "" {
		a.println("first error: %s", errorLine(fmt.Errorf("%s", res.FirstError), a.g.connectTimeout))
	}
}

// latency renders a latency in milliseconds with three significant digits.
func latency(d time.Duration) string {
	ms := float64(d) / 1e6
	switch {
	case ms >= 1000:
		return fmt.Sprintf("%.2fs", ms/1000)
	case ms >= 100:
		return fmt.Sprintf("%.0fms", ms)
	case ms >= 10:
		return fmt.Sprintf("%.1fms", ms)
	default:
		return fmt.Sprintf("%.2fms", ms)
	}
}
