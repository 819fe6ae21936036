package cli

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/prommetrics"
)

// stopGrace bounds how long an interrupted pass may take to reach the end of
// its current batch before it is cancelled outright. Batches take
// milliseconds; a batch stuck on a lock should not hold the command.
const stopGrace = 5 * time.Second

// passJSON is one line of `cull --json`: one object per pass.
type passJSON struct {
	Pass            int       `json:"pass"`
	StartedAt       time.Time `json:"started_at"`
	DurationSeconds float64   `json:"duration_seconds"`
	ExpiredRemoved  int64     `json:"expired_removed"`
	Culled          int64     `json:"culled"`
	Count           int64     `json:"count"`
	CountExact      bool      `json:"count_exact"`
	Remaining       int64     `json:"remaining"`
	Skipped         bool      `json:"skipped"`
	Interrupted     bool      `json:"interrupted"`
	Error           string    `json:"error,omitempty"`
}

func (a *app) cullCommand() *cobra.Command {
	var (
		every         time.Duration
		maxEntries    int
		cullFrequency int
		batchSize     int
		passTimeout   time.Duration
		metricsAddr   string
	)
	cmd := &cobra.Command{
		Use:   "cull",
		Short: "Remove expired entries and cull the table down to --max-entries",
		Long: `Run one culling pass: remove expired entries, then, if the table still holds
more than --max-entries, remove 1/--cull-frequency of the entries (those
closest to expiry first), as Django's database cache culls. With --every,
run a pass at that interval until interrupted.

SIGINT or SIGTERM ends the command cleanly once the batch in progress
commits: what was removed stays removed. A second signal kills it at once.
With --every, an interrupted run exits 0; a pass that fails is reported and
the next one runs, except the first, which ends the command (exit 1) since
it usually means a wrong connection or schema.

Any number of cullers may run against one table: one pass runs at a time,
and a pass that finds another running is reported as skipped.

Progress: a bar on a terminal for passes longer than half a second, a line
on stderr every 5s otherwise. One result line per pass on stdout (with
--json, one JSON object per line).`,
		Example: `  dbcache cull
  dbcache cull --max-entries 50000 --cull-frequency 4
  dbcache cull --every 30s --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if every < 0 {
				return usagef("--every must not be negative, got %s", every)
			}
			if maxEntries < 0 {
				return usagef("--max-entries must not be negative, got %d", maxEntries)
			}
			if cullFrequency < 0 {
				return usagef("--cull-frequency must not be negative (0 culls everything), got %d", cullFrequency)
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

			r := &cullRun{a: a}
			culler, err := culling.New(pool, &culling.Config{
				BatchSize:     batchSize,
				CullFrequency: freq,
				Logger:        a.log,
				MaxEntries:    maxEntries,
				NudgeEvery:    -1,
				OnProgress:    r.onProgress,
				PassTimeout:   passTimeout,
				Schema:        a.g.schema,
			})
			if err != nil {
				return &usageError{err: err}
			}
			stopMetrics, err := r.serveMetrics(metricsAddr, every, pool)
			if err != nil {
				return err
			}
			defer stopMetrics()
			return r.loop(ctx, culler, every)
		},
	}
	f := cmd.Flags()
	f.DurationVar(&every, "every", 0, "run a pass at this interval until interrupted (0: one pass)")
	f.IntVar(&maxEntries, "max-entries", culling.MaxEntriesDefault, "most entries to keep (Django's MAX_ENTRIES)")
	f.IntVar(&cullFrequency, "cull-frequency", culling.CullFrequencyDefault, "over the limit, remove 1/N of the entries; 0 removes all (Django's CULL_FREQUENCY)")
	f.IntVar(&batchSize, "batch-size", culling.BatchSizeDefault, "most rows one DELETE removes")
	f.DurationVar(&passTimeout, "pass-timeout", culling.PassTimeoutDefault, "bound on one pass")
	f.StringVar(&metricsAddr, "metrics-addr", "", metricsAddrHelp)
	return cmd
}

// cullRun is one cull command's state: the progress display and the
// stop-after-this-batch request.
type cullRun struct {
	a *app

	stopping   atomic.Bool
	mu         sync.Mutex
	cancelPass context.CancelFunc
	tick       *ticker
	metrics    *prommetrics.Collector // --metrics-addr; nil without
}

// onProgress is the culler's progress hook: it draws progress and, once a
// stop was asked for, cancels the pass between batches, where a cancel
// leaves nothing half done.
func (r *cullRun) onProgress(p culling.Progress) {
	if r.stopping.Load() {
		r.cancel()
		return
	}
	r.mu.Lock()
	t := r.tick
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
				fmt.Sprintf("cull: %s of %s entries culled", humanCount(p.Culled), humanCount(p.CullTarget)))
		}
	}
}

func (r *cullRun) cancel() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cancelPass != nil {
		r.cancelPass()
	}
}

func (r *cullRun) loop(ctx context.Context, culler *culling.Culler, every time.Duration) error {
	// A signal cancels ctx. The pass runs on a context of its own, so the
	// signal does not cut a batch short: it sets stopping, and the next
	// progress call (at the end of the batch) cancels the pass. stopGrace
	// is the backstop for a batch that never ends.
	stopWatch := make(chan struct{})
	defer close(stopWatch)
	go func() {
		select {
		case <-ctx.Done():
			r.stopping.Store(true)
			select {
			case <-time.After(stopGrace):
				r.cancel()
			case <-stopWatch:
			}
		case <-stopWatch:
		}
	}()

	for pass := 1; ; pass++ {
		passCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		r.mu.Lock()
		r.cancelPass = cancel
		r.tick = r.a.newTicker(true)
		r.mu.Unlock()
		if r.stopping.Load() {
			cancel()
		}

		res, err := culler.RunOnce(passCtx)
		r.observe(res, err)

		r.mu.Lock()
		r.tick.finish()
		r.tick, r.cancelPass = nil, nil
		r.mu.Unlock()
		cancel()

		interrupted := err != nil && r.stopping.Load() && errors.Is(err, context.Canceled)
		if interrupted {
			err = nil
		}
		if perr := r.print(pass, every > 0, res, err, interrupted); perr != nil {
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

// print writes one pass's result line.
func (r *cullRun) print(pass int, numbered bool, res *culling.PassResult, err error, interrupted bool) error {
	a := r.a
	if res == nil {
		res = &culling.PassResult{}
	}
	if a.g.json {
		pj := passJSON{
			Pass: pass, StartedAt: res.StartedAt, DurationSeconds: res.Duration.Seconds(),
			ExpiredRemoved: res.ExpiredRemoved, Culled: res.Culled, Count: res.Count,
			CountExact: res.CountExact, Remaining: res.Remaining, Skipped: res.Skipped, Interrupted: interrupted,
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
	case err != nil:
		if numbered {
			a.println("%sfailed after removing %s expired and culling %s: %s", prefix,
				humanCount(res.ExpiredRemoved), humanCount(res.Culled), errorLine(err, a.g.connectTimeout))
		}
	case interrupted:
		a.println("%sinterrupted after removing %s expired and culling %s", prefix,
			humanCount(res.ExpiredRemoved), humanCount(res.Culled))
	default:
		what := "exact count"
		if !res.CountExact {
			what = "estimate"
		}
		a.println("%sremoved %s expired, culled %s; %s entries left (%s); took %s", prefix,
			humanCount(res.ExpiredRemoved), humanCount(res.Culled), humanCount(res.Remaining), what,
			roundDuration(res.Duration))
	}
	return nil
}
