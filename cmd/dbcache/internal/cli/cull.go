package cli

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/prommetrics"
)

// passJSON is one line of `cull --json`: one object per pass.
type passJSON struct {
	Pass            int       `json:"pass"`
	StartedAt       time.Time `json:"started_at"`
	DurationSeconds float64   `json:"duration_seconds"`
	ExpiredRemoved  int64     `json:"expired_removed"`
	Culled          int64     `json:"culled"`
	// Count and Remaining are null when the pass ended before it counted
	// the table (interrupted or failed early).
	Count       *int64 `json:"count"`
	CountExact  bool   `json:"count_exact"`
	Remaining   *int64 `json:"remaining"`
	Skipped     bool   `json:"skipped"`
	Interrupted bool   `json:"interrupted"`
	DryRun      bool   `json:"dry_run"`
	AgedOut     int64  `json:"aged_out"`
	CulledBytes int64  `json:"culled_bytes"`
	// Size and RemainingSize are null unless --max-bytes is given.
	Size          *int64 `json:"size"`
	SizeExact     bool   `json:"size_exact"`
	RemainingSize *int64 `json:"remaining_size"`
	Error         string `json:"error,omitempty"`
}

func (a *app) cullCommand() *cobra.Command {
	var (
		every         time.Duration
		maxEntries    int
		cullFrequency int
		batchSize     int
		passTimeout   time.Duration
		dryRun        bool
		maxBytes      string
		maxAge        string
		metricsAddr   string
	)
	cmd := &cobra.Command{
		Use:   "cull",
		Short: "Remove expired entries; with --max-entries, --max-bytes or --max-age, cull down to them",
		Long: `Run one culling pass: remove expired entries. With --max-age D, then remove
every entry written more than D ago, whatever its expiry (at least 1h; needs
migration 5). With --max-entries N, then, if the table still holds more than
N entries, remove 1/--cull-frequency of them (those closest to expiry first,
never-expiring ones last), as Django's database cache culls; a pass never
goes below N. With --max-bytes SIZE (2GB, 500MiB, or bytes), remove entries
in the same order until the cache's estimated size (keys and values as
stored, plus 44 bytes an entry) is back under SIZE. Without one of these no
live entry is ever removed. With --every, run a pass at that interval until
interrupted.

--dry-run reports what a pass would remove (expired entries, and entries it
would cull) and removes nothing.

SIGINT or SIGTERM ends the command cleanly once the batch in progress
commits: what was removed stays removed. A second signal kills it at once.
With --every, an interrupted run exits 0; a pass that fails is reported and
the next one runs, except the first, which ends the command (exit 1) since
it usually means a wrong connection or schema.

Any number of cullers may run against one table: one pass runs at a time,
and a pass that finds another running is reported as skipped.

With several servers (--database-url NAME=URL, repeated) each server is
culled by a culler of its own, in turn (with --every, all at once), each
line prefixed with the server's name; the limits apply to each server.

Progress: a bar on a terminal for passes longer than half a second, a line
on stderr every 5s otherwise. One result line per pass on stdout (with
--json, one JSON object per line).`,
		Example: `  dbcache cull
  dbcache cull --max-entries 100000 --dry-run
  dbcache cull --max-entries 50000 --cull-frequency 4
  dbcache cull --max-bytes 2GB --max-age 720h
  dbcache cull --every 30s --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			limited := cmd.Flags().Changed("max-entries")
			switch {
			case every < 0:
				return usagef("--every must not be negative, got %s", every)
			case batchSize < 1:
				return usagef("--batch-size must be at least 1, got %d", batchSize)
			case passTimeout < 0:
				return usagef("--pass-timeout must not be negative (0 means no limit), got %s", passTimeout)
			case limited && maxEntries < 1:
				return usagef("--max-entries must be at least 1, got %d (leave it out to remove only expired entries)", maxEntries)
			case cullFrequency < 0:
				return usagef("--cull-frequency must not be negative (0 culls everything), got %d", cullFrequency)
			case cmd.Flags().Changed("cull-frequency") && !limited:
				return usagef("--cull-frequency needs --max-entries: without a limit no live entry is culled")
			case dryRun && every > 0:
				return usagef("--dry-run runs one pass; leave out --every")
			}
			var bytesLimit int64
			if cmd.Flags().Changed("max-bytes") {
				n, err := parseBytes(maxBytes)
				if err != nil || n < 1 {
					return usagef("--max-bytes wants a size such as 2GB, 500MiB or 1048576, got %q", maxBytes)
				}
				bytesLimit = n
			}
			var ageLimit time.Duration
			if cmd.Flags().Changed("max-age") {
				d, err := parseAge(maxAge)
				if err != nil || d < culling.MaxAgeMin {
					return usagef("--max-age wants a duration of at least %s, such as 720h or 30d, got %q", culling.MaxAgeMin, maxAge)
				}
				ageLimit = d
			}
			limit := culling.NoLimit
			if limited {
				limit = maxEntries
			}
			if ageLimit > 0 {
				a.needVersion = maxAgeVersion
			}
			freq := cullFrequency
			if freq == 0 {
				// Django's CULL_FREQUENCY = 0; culling spells it CullAll
				// because its zero value means "the default".
				freq = culling.CullAll
			}
			ctx := cmd.Context()
			// The culler holds its lock on one connection and deletes on
			// another.
			pool, err := a.openPool(ctx, 3)
			if err != nil {
				return err
			}
			defer pool.Close()

			r := &cullRun{a: a, dryRun: dryRun, aged: ageLimit > 0, sized: bytesLimit > 0, passTimeout: passTimeout}
			libTimeout := passTimeout
			if libTimeout == 0 {
				libTimeout = -1 // culling's "no limit"; its 0 is "the default"
			}
			culler, err := culling.New(pool, &culling.Config{
				BatchSize:     batchSize,
				CullFrequency: freq,
				Logger:        a.log,
				MaxAge:        ageLimit,
				MaxBytes:      bytesLimit,
				MaxEntries:    limit,
				NudgeEvery:    -1,
				OnProgress:    r.onProgress,
				PassTimeout:   libTimeout,
				Schema:        a.g.schema,
			})
			if err != nil {
				return &usageError{err: flagNames(err)}
			}
			stopMetrics, err := r.serveMetrics(metricsAddr, every, pool, culler)
			if err != nil {
				return err
			}
			defer stopMetrics()
			return r.loop(ctx, culler, every)
		},
	}
	f := cmd.Flags()
	f.DurationVar(&every, "every", 0, "run a pass at this interval until interrupted (0: one pass)")
	f.IntVar(&maxEntries, "max-entries", 0, "most entries to keep (Django's MAX_ENTRIES); without it only expired entries are removed")
	f.IntVar(&cullFrequency, "cull-frequency", culling.CullFrequencyDefault, "over --max-entries, remove 1/N of the entries; 0 removes all (Django's CULL_FREQUENCY)")
	f.IntVar(&batchSize, "batch-size", culling.BatchSizeDefault, "most rows one DELETE removes")
	f.DurationVar(&passTimeout, "pass-timeout", culling.PassTimeoutDefault, "bound on one pass (0: no limit)")
	f.BoolVar(&dryRun, "dry-run", false, "report what a pass would remove, and remove nothing")
	f.StringVar(&maxBytes, "max-bytes", "", "most bytes the entries may take (2GB, 500MiB, bytes); over it, cull in eviction order")
	f.StringVar(&maxAge, "max-age", "", "remove every entry written longer ago than this (720h, 30d; at least 1h)")
	f.StringVar(&metricsAddr, "metrics-addr", "", metricsAddrHelp)
	return cmd
}

// cullRun is one cull command's state: the progress display and whether a
// stop was asked for.
type cullRun struct {
	a           *app
	dryRun      bool
	aged        bool // --max-age was given
	sized       bool // --max-bytes was given
	passTimeout time.Duration

	mu      sync.Mutex
	tick    *ticker
	counted bool                   // the pass in progress has counted the table
	metrics *prommetrics.Collector // --metrics-addr; nil without
}

// onProgress is the culler's progress hook: it draws progress.
func (r *cullRun) onProgress(p culling.Progress) {
	r.mu.Lock()
	t := r.tick
	if p.Phase == culling.PhaseCull || p.Phase == culling.PhaseDone {
		r.counted = true
	}
	r.mu.Unlock()
	if t == nil {
		return
	}
	switch p.Phase {
	case culling.PhaseSweep, culling.PhaseCount:
		t.update(-1, p.ExpiredRemoved, fmt.Sprintf("removing expired: %s", humanCount(p.ExpiredRemoved)),
			fmt.Sprintf("cull: %s expired entries removed so far", humanCount(p.ExpiredRemoved)))
	case culling.PhaseCull:
		if p.CullTarget > 0 {
			t.update(p.CullTarget, p.Culled, "culling",
				fmt.Sprintf("cull: %s of at most %s entries culled", humanCount(p.Culled), humanCount(p.CullTarget)))
		}
	}
}

func (r *cullRun) loop(ctx context.Context, culler *culling.Culler, every time.Duration) error {
	for pass := 1; ; pass++ {
		// A signal cancels ctx, and with it the pass: the library lets the
		// batch in progress commit, stops before the next one and returns
		// once its lock is released, so what the command reports is what
		// was removed.
		r.mu.Lock()
		r.tick = r.a.newTicker(true)
		r.counted = false
		r.mu.Unlock()

		var (
			res *culling.PassResult
			err error
		)
		if r.dryRun {
			res, err = culler.DryRun(ctx)
		} else {
			res, err = culler.RunOnce(ctx)
			r.observe(res, err)
		}

		r.mu.Lock()
		r.tick.finish()
		r.tick = nil
		r.mu.Unlock()

		interrupted := err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled)
		if interrupted {
			err = nil
		}
		err = r.passTimedOut(ctx, err)
		r.mu.Lock()
		counted := r.counted || (err == nil && !interrupted)
		r.mu.Unlock()
		if perr := r.print(pass, every > 0, res, err, interrupted, counted); perr != nil {
			return perr
		}
		switch {
		case interrupted && every > 0:
			return nil
		case interrupted:
			return &exitError{code: ExitFailure, err: errors.New("cull interrupted; what was removed stays removed")}
		case err != nil && (pass == 1 || every == 0):
			return err
		case err != nil:
			r.a.log.ErrorContext(ctx, "cull pass failed; next pass as scheduled", "pass", pass, "err", err)
		}
		if every == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(every):
		}
	}
}

// passTimedOut says a pass that ran past --pass-timeout in those terms: it
// is the pass's own bound that ended it (the server answered throughout),
// not the statement timeout nor a silent server.
func (r *cullRun) passTimedOut(ctx context.Context, err error) error {
	var na *noAnswerError
	if err == nil || r.passTimeout <= 0 || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) || errors.As(err, &na) {
		return err
	}
	return &codedError{code: CodePassTimeout, err: withCause(fmt.Sprintf(
		"the pass ran past --pass-timeout (%s) and stopped; what it removed stays removed: run cull again to go on, or raise --pass-timeout",
		r.passTimeout), err)}
}

// print writes one pass's result line.
func (r *cullRun) print(pass int, numbered bool, res *culling.PassResult, err error, interrupted, counted bool) error {
	a := r.a
	if res == nil {
		res = &culling.PassResult{}
	}
	if a.g.json {
		pj := passJSON{
			Pass: pass, StartedAt: res.StartedAt, DurationSeconds: res.Duration.Seconds(),
			ExpiredRemoved: res.ExpiredRemoved, Culled: res.Culled,
			CountExact: res.CountExact, Skipped: res.Skipped, Interrupted: interrupted,
			DryRun: res.DryRun, AgedOut: res.AgedOut, CulledBytes: res.CulledBytes, SizeExact: res.SizeExact,
		}
		if counted || res.Skipped {
			pj.Count, pj.Remaining = &res.Count, &res.Remaining
		}
		if r.sized && (counted || res.Skipped) {
			pj.Size, pj.RemainingSize = &res.Size, &res.RemainingSize
		}
		if err != nil {
			pj.Error = errorLine(err, a.g.connectTimeout)
		}
		return a.writeJSON(pj)
	}
	prefix := ""
	if numbered {
		prefix = fmt.Sprintf("%s pass %d: ", timestamp(time.Now()), pass)
	}
	switch {
	case res.Skipped:
		a.println("%sskipped: another culler is running a pass", prefix)
	case err != nil && numbered:
		a.println("%sfailed after removing %s expired%s and culling %s: %s", prefix,
			humanCount(res.ExpiredRemoved), r.agedText(res), humanCount(res.Culled), errorLine(err, a.g.connectTimeout))
	case err != nil && (res.ExpiredRemoved+res.AgedOut+res.Culled > 0 || midPass(err)):
		// The error follows on stderr; what was removed before it stays
		// removed, and is said here.
		a.println("failed after removing %s expired%s and culling %s; what was removed stays removed", humanCount(res.ExpiredRemoved),
			r.agedText(res), humanCount(res.Culled))
	case interrupted:
		a.println("%sinterrupted after removing %s expired%s and culling %s", prefix,
			humanCount(res.ExpiredRemoved), r.agedText(res), humanCount(res.Culled))
	case res.DryRun:
		a.println("%sdry run: would remove %s expired%s and cull %s%s; %s entries would be left (%s)%s; nothing was removed", prefix,
			humanCount(res.ExpiredRemoved), r.agedText(res), humanCount(res.Culled), r.bytesText(res),
			humanCount(res.Remaining), countKind(res), r.sizeText(res))
	default:
		a.println("%sremoved %s expired%s, culled %s%s; %s entries left (%s)%s; took %s", prefix,
			humanCount(res.ExpiredRemoved), r.agedText(res), humanCount(res.Culled), r.bytesText(res),
			humanCount(res.Remaining), countKind(res), r.sizeText(res), roundDuration(res.Duration))
	}
	return nil
}

func countKind(res *culling.PassResult) string {
	if res.CountExact {
		return "exact count"
	}
	return "estimate"
}

// agedText, bytesText and sizeText are the parts of a pass's line that
// --max-age and --max-bytes add.
func (r *cullRun) agedText(res *culling.PassResult) string {
	if !r.aged {
		return ""
	}
	return fmt.Sprintf(" and %s past --max-age", humanCount(res.AgedOut))
}

func (r *cullRun) bytesText(res *culling.PassResult) string {
	if !r.sized {
		return ""
	}
	return fmt.Sprintf(" (%s)", humanBytes(res.CulledBytes))
}

func (r *cullRun) sizeText(res *culling.PassResult) string {
	if !r.sized {
		return ""
	}
	kind := "estimate"
	if res.SizeExact {
		kind = "measured"
	}
	return fmt.Sprintf(", %s of entries (%s)", humanBytes(res.RemainingSize), kind)
}

// parseBytes reads a size: a number of bytes, or a number with a unit, B,
// kB/KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (of 1024), in
// any case, with or without a space.
func parseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 || math.IsInf(v, 0) {
		return 0, fmt.Errorf("not a size: %q", s)
	}
	mult, ok := map[string]float64{
		"": 1, "b": 1,
		"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
		"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
	}[unit]
	if !ok {
		return 0, fmt.Errorf("unknown size unit in %q", s)
	}
	n := v * mult
	if n > math.MaxInt64/2 {
		return 0, fmt.Errorf("size too large: %q", s)
	}
	return int64(n), nil
}

// parseAge reads a duration as Go writes one (720h, 90m) or a number of
// days (30d).
func parseAge(s string) (time.Duration, error) {
	t := strings.TrimSpace(s)
	if days, ok := strings.CutSuffix(t, "d"); ok {
		v, err := strconv.ParseFloat(days, 64)
		if err != nil || v < 0 || v > 100*365 {
			return 0, fmt.Errorf("not a number of days: %q", s)
		}
		return time.Duration(v * float64(24*time.Hour)), nil
	}
	return time.ParseDuration(t)
}

// flagNames says a culling configuration error in the command's terms: the
// flag, not the library's Config field.
func flagNames(err error) error {
	msg := err.Error()
	for field, flag := range map[string]string{
		"Config.BatchSize": "--batch-size", "Config.CullFrequency": "--cull-frequency", "Config.MaxAge": "--max-age",
		"Config.MaxBytes": "--max-bytes", "Config.MaxEntries": "--max-entries", "Config.PassTimeout": "--pass-timeout",
		"Config.Schema": "--schema", "Config.Interval": "--every",
	} {
		msg = strings.ReplaceAll(msg, field, flag)
	}
	return withCause(strings.TrimPrefix(msg, "culling: "), err)
}

// midPass reports an error that can end a pass part way, after it removed
// rows: the server stopped answering, or the pass ran out of time.
func midPass(err error) bool {
	var na *noAnswerError
	var ce *codedError
	return errors.As(err, &na) || (errors.As(err, &ce) && ce.code == CodePassTimeout) ||
		errors.Is(err, context.DeadlineExceeded)
}
