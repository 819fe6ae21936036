package ratelimit_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/ratelimit"
)

// The bound of docs/ratelimit.md, checked from a log of admissions: for one
// key and one Limit, the units admitted with database timestamps in any
// closed interval [a, b] total at most Burst + ⌊(b − a) / T⌋.

// admission is one admitted check: its database timestamp (ns), its units,
// and the key's state it left (At + ResetAfter), for the crash test.
type admission struct {
	At  int64 `json:"at"`
	N   int   `json:"n"`
	Tat int64 `json:"tat"`
}

// boundViolation returns "" when every interval meets the bound, else the
// first interval found that does not. It also returns how close the worst
// interval came: the most units any interval held over Burst + ⌊len / T⌋
// (0 at the bound, negative below it). The worst interval starts and ends
// at admissions, so checking those pairs checks every interval.
func boundViolation(log []admission, burst int, t time.Duration) (string, int64) {
	if len(log) == 0 {
		return "", 0
	}
	log = slices.Clone(log)
	slices.SortFunc(log, func(a, b admission) int { return compare(a.At, b.At) })
	// Group the admissions by timestamp: an interval that starts (or ends)
	// at a time holds every admission made at that time.
	type moment struct {
		at    int64
		units int64
	}
	var ms []moment
	for _, a := range log {
		if len(ms) > 0 && ms[len(ms)-1].at == a.At {
			ms[len(ms)-1].units += int64(a.N)
			continue
		}
		ms = append(ms, moment{a.At, int64(a.N)})
	}
	worst := int64(-1 << 62)
	for i := range ms {
		var sum int64
		for j := i; j < len(ms); j++ {
			sum += ms[j].units
			bound := int64(burst) + (ms[j].at-ms[i].at)/int64(t)
			if over := sum - bound; over > worst {
				worst = over
			}
			if sum > bound {
				return fmt.Sprintf("%d units admitted in [%d, %d] (%s long), bound %d", sum, ms[i].at, ms[j].at,
					time.Duration(ms[j].at-ms[i].at), bound), worst
			}
		}
	}
	return "", worst
}

func compare(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// The checker catches what it must: a burst too many at one instant, one
// unit too early, and passes a log exactly at the bound.
func TestBoundChecker(t *testing.T) {
	t.Parallel()
	const T = int64(time.Second)
	atBound := []admission{{At: 0, N: 2}, {At: 0, N: 1}, {At: T, N: 1}, {At: 2 * T, N: 1}, {At: 2*T + 1, N: 0}}
	v, worst := boundViolation(atBound, 3, time.Second)
	require.Empty(t, v)
	require.Zero(t, worst, "the log reaches the bound exactly")

	v, _ = boundViolation([]admission{{At: 5, N: 3}, {At: 5, N: 1}}, 3, time.Second)
	require.Contains(t, v, "4 units admitted")

	v, _ = boundViolation([]admission{{At: 0, N: 3}, {At: T - 1, N: 1}}, 3, time.Second)
	require.Contains(t, v, "bound 3", "the fourth unit came a nanosecond early")

	v, _ = boundViolation([]admission{{At: 10 * T, N: 1}, {At: 0, N: 3}, {At: 10*T - 1, N: 10}}, 3, time.Second)
	require.NotEmpty(t, v, "order of the log does not matter")
}

// hammerJob is what one hammering process, or the test itself, runs.
type hammerJob struct {
	DSN        string          `json:"dsn"`
	Schema     string          `json:"schema,omitempty"`
	Key        string          `json:"key"`
	Limit      ratelimit.Limit `json:"limit"`
	Goroutines int             `json:"goroutines"`
	Conns      int32           `json:"conns"`
	// For runs this long, or Rounds checks per goroutine.
	For    time.Duration `json:"for,omitempty"`
	Rounds int           `json:"rounds,omitempty"`
	// MaxN: each check asks for 1..MaxN units.
	MaxN       int    `json:"max_n"`
	FastCommit bool   `json:"fast_commit,omitempty"`
	Sweep      bool   `json:"sweep,omitempty"`
	Seed       uint64 `json:"seed"`
}

// hammerResult is what a hammer saw.
type hammerResult struct {
	Admitted []admission `json:"admitted"`
	Denied   int         `json:"denied"`
	Lost     int         `json:"lost"` // denied with RetryAfter 0: lost a race
	Errors   []string    `json:"errors,omitempty"`
}

// hammer runs job's goroutines against lim until job.For has passed or
// each has made job.Rounds checks, starting together when start is closed.
// Errors are recorded, not fatal: the crash test expects some.
func hammer(ctx context.Context, lim *ratelimit.Limiter, job hammerJob, start <-chan struct{}) hammerResult {
	var (
		mu  sync.Mutex
		res hammerResult
		wg  sync.WaitGroup
	)
	<-start
	deadline := time.Now().Add(job.For)
	for g := range job.Goroutines {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(job.Seed, uint64(g)))
			for r := 0; ; r++ {
				if job.Rounds > 0 && r >= job.Rounds || job.Rounds == 0 && time.Now().After(deadline) || ctx.Err() != nil {
					return
				}
				n := 1 + rng.IntN(job.MaxN)
				got, err := lim.AllowN(ctx, job.Key, job.Limit, n)
				mu.Lock()
				switch {
				case err != nil:
					if len(res.Errors) < 20 {
						res.Errors = append(res.Errors, err.Error())
					}
				case got.Allowed:
					at := got.At.UnixNano()
					res.Admitted = append(res.Admitted, admission{At: at, N: n, Tat: at + int64(got.ResetAfter)})
				case got.RetryAfter == 0:
					res.Lost++
					res.Denied++
				default:
					res.Denied++
				}
				mu.Unlock()
			}
		})
	}
	if job.Sweep {
		// A sweeper beside the checks: it walks and locks the rows the
		// checks use, and must change no answer.
		wg.Go(func() {
			for ctx.Err() == nil && (job.Rounds > 0 || time.Now().Before(deadline)) {
				if _, err := lim.Sweep(ctx, ratelimit.SweepGraceMin); err != nil && !errors.Is(err, context.Canceled) {
					mu.Lock()
					res.Errors = append(res.Errors, "sweep: "+err.Error())
					mu.Unlock()
					return
				}
				if job.Rounds > 0 {
					mu.Lock()
					done := len(res.Admitted)+res.Denied >= job.Rounds*job.Goroutines
					mu.Unlock()
					if done {
						return
					}
				}
			}
		})
	}
	wg.Wait()
	return res
}

// requireBound fails the test when the admissions break the bound, and
// logs how close they came.
func requireBound(t *testing.T, res hammerResult, limit ratelimit.Limit) {
	t.Helper()
	require.Empty(t, res.Errors)
	var units int
	for _, a := range res.Admitted {
		units += a.N
	}
	burst := limit.Burst
	if burst == 0 {
		burst = limit.Rate
	}
	v, worst := boundViolation(res.Admitted, burst, limit.Interval())
	require.Empty(t, v)
	t.Logf("%d checks admitted (%d units), %d denied (%d after losing a race); the fullest interval was %d units under its bound",
		len(res.Admitted), units, res.Denied, res.Lost, -worst)
	// Not a timing: the first burst is there for whoever comes first.
	require.GreaterOrEqual(t, units, burst-2, "the first burst was admitted")
}
