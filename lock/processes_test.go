package lock_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/lock"
)

// The contention test: real processes (the test binary in a role, each
// with its own pool and Client) contend for a few names with short
// leases, and some holders pause past their lease: in a sleep of their
// own, and in SIGSTOPs the test sends. Every grant, refresh and release
// is printed with the database's timestamps; the test then checks the
// history: per name, no grant began before the previous holder's lease
// ended (by its release, or its last known expiry), and the fences
// strictly increase in the order of the grants. One process is SIGKILLed
// while it holds a name; the name must be granted again, after its lease.

// contendJob is what a contender process is told to do.
type contendJob struct {
	DSN      string
	Schema   string
	Names    int
	Duration time.Duration
	Process  int
	// HoldAfter, when set, makes the process take a lock after this long,
	// print "holding", and wait to be killed.
	HoldAfter time.Duration
}

func init() {
	dbtest.Role("lock-contender", runContender)
}

func runContender(ctx context.Context, arg string) error {
	var job contendJob
	if err := json.Unmarshal([]byte(arg), &job); err != nil {
		return err
	}
	cfg, err := pgxpool.ParseConfig(job.DSN)
	if err != nil {
		return err
	}
	cfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	locks, err := lock.New(ctx, pool, citusTestConfig(&lock.Config{Schema: job.Schema, PollMin: 5 * time.Millisecond, PollMax: 100 * time.Millisecond}))
	if err != nil {
		return err
	}
	defer locks.Close()
	rng := rand.New(rand.NewPCG(uint64(job.Process), uint64(time.Now().UnixNano())))
	start := time.Now()
	var out sync.Mutex
	emit := func(format string, args ...any) {
		out.Lock()
		defer out.Unlock()
		fmt.Printf(format+"\n", args...)
	}
	grant := func(l *lock.Lock) {
		granted, expires, _ := lock.Timeline(l)
		emit("grant %s %d %d %d %s", l.Name(), l.Fence(), granted.UnixNano(), expires.UnixNano(), l.Owner())
	}
	for time.Since(start) < job.Duration {
		name := "name-" + strconv.Itoa(rng.IntN(job.Names))
		lease := time.Duration(50+rng.IntN(451)) * time.Millisecond
		if job.HoldAfter > 0 && time.Since(start) > job.HoldAfter {
			actx, cancel := context.WithTimeout(ctx, 10*time.Second)
			l, err := locks.Acquire(actx, name, 400*time.Millisecond)
			cancel()
			if err != nil {
				return err
			}
			grant(l)
			emit("holding %s", l.Owner())
			<-ctx.Done()
			return nil
		}
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		l, err := locks.Acquire(actx, name, lease)
		cancel()
		if errors.Is(err, lock.ErrLocked) {
			continue
		}
		if err != nil {
			return err
		}
		grant(l)
		late := func(op string, err error) error {
			if errors.Is(err, lock.ErrNotHeld) {
				emit("late %s %s", l.Owner(), op)
				return nil
			}
			return err
		}
		switch p := rng.IntN(10); {
		case p < 5: // work, perhaps refresh, release
			time.Sleep(time.Duration(rng.Int64N(int64(lease / 2))))
			if rng.IntN(2) == 0 {
				if err := l.Refresh(ctx, lease); err != nil {
					if err := late("refresh", err); err != nil {
						return err
					}
				} else {
					_, expires, _ := lock.Timeline(l)
					emit("refresh %s %d", l.Owner(), expires.UnixNano())
				}
				time.Sleep(time.Duration(rng.Int64N(int64(lease / 2))))
			}
			if err := l.Release(ctx); err != nil {
				if err := late("release", err); err != nil {
					return err
				}
			} else {
				_, _, released := lock.Timeline(l)
				emit("release %s %d", l.Owner(), released.UnixNano())
			}
		case p < 7: // pause past the lease: both calls must be refused
			time.Sleep(lease + lease/2 + 50*time.Millisecond)
			if err := l.Refresh(ctx, lease); !errors.Is(err, lock.ErrNotHeld) {
				emit("BUG %s refresh after the lease ran out: %v", l.Owner(), err)
			} else {
				emit("late %s refresh", l.Owner())
			}
			if err := l.Release(ctx); !errors.Is(err, lock.ErrNotHeld) {
				emit("BUG %s release after the lease ran out: %v", l.Owner(), err)
			} else {
				emit("late %s release", l.Owner())
			}
		default: // let it run out
			time.Sleep(time.Duration(rng.Int64N(int64(lease))))
		}
	}
	st := locks.Stats()
	emit("stats %d %d %d %d", st.Grants, st.Waits, st.Refusals, st.Expiries)
	return nil
}

// grantRecord is one grant in the history.
type grantRecord struct {
	name           string
	fence          int64
	granted, end   int64 // unix nanoseconds, database clock
	released       bool
	process, order int
}

// contend runs procs contenders for d against dsn (schema named for
// PgBouncer) and checks the history. Process 0 holds a name from d/3 on
// and is SIGKILLed then.
func contend(t *testing.T, dsn, schema string, procs, names int, d time.Duration) {
	t.Helper()
	ps := make([]*dbtest.Process, procs)
	for i := range ps {
		job := contendJob{DSN: dsn, Schema: schema, Names: names, Duration: d, Process: i}
		if i == 0 {
			job.HoldAfter = d / 3
		}
		arg, err := json.Marshal(job)
		require.NoError(t, err)
		ps[i] = dbtest.Start(t, "lock-contender", string(arg), true)
	}
	var (
		mu     sync.Mutex
		lines  = make([][]string, procs)
		killed = make(chan string, 1)
		wg     sync.WaitGroup
	)
	for i, p := range ps {
		wg.Go(func() {
			for line := range p.Lines() {
				mu.Lock()
				lines[i] = append(lines[i], line)
				mu.Unlock()
				if i == 0 && strings.HasPrefix(line, "holding ") {
					if err := p.Signal(syscall.SIGKILL); err != nil {
						t.Errorf("kill the holder: %v", err)
					}
					killed <- strings.TrimPrefix(line, "holding ")
				}
			}
		})
	}
	// Pause a random holder now and then, past the longest lease.
	stop := make(chan struct{})
	var chaos sync.WaitGroup
	chaos.Go(func() {
		rng := rand.New(rand.NewPCG(1, 2))
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(500+rng.IntN(1000)) * time.Millisecond):
			}
			p := ps[1+rng.IntN(procs-1)]
			if p.Signal(syscall.SIGSTOP) != nil {
				continue
			}
			time.Sleep(time.Duration(300+rng.IntN(500)) * time.Millisecond)
			_ = p.Signal(syscall.SIGCONT)
		}
	})
	for _, p := range ps[1:] {
		_, err := p.Wait(d + 2*time.Minute)
		require.NoError(t, err)
	}
	close(stop)
	chaos.Wait()
	var owner string
	select {
	case owner = <-killed:
	case <-time.After(time.Minute):
		t.Fatal("process 0 never held its name to be killed")
	}
	_, _ = ps[0].Wait(time.Minute)
	wg.Wait()

	// The history.
	byOwner := map[string]*grantRecord{}
	var grants []*grantRecord
	late, survivorsGrants, statGrants := 0, 0, int64(0)
	for i, ls := range lines {
		for n, line := range ls {
			f := strings.Fields(line)
			switch f[0] {
			case "grant":
				fence, _ := strconv.ParseInt(f[2], 10, 64)
				granted, _ := strconv.ParseInt(f[3], 10, 64)
				expires, _ := strconv.ParseInt(f[4], 10, 64)
				g := &grantRecord{name: f[1], fence: fence, granted: granted, end: expires, process: i, order: n}
				byOwner[f[5]] = g
				grants = append(grants, g)
				if i != 0 {
					survivorsGrants++
				}
			case "refresh":
				g := byOwner[f[1]]
				require.NotNil(t, g, line)
				g.end, _ = strconv.ParseInt(f[2], 10, 64)
			case "release":
				g := byOwner[f[1]]
				require.NotNil(t, g, line)
				at, _ := strconv.ParseInt(f[2], 10, 64)
				require.LessOrEqual(t, at, g.end, "released after its lease ended: %s", line)
				g.end, g.released = at, true
			case "late":
				late++
			case "stats":
				n, _ := strconv.ParseInt(f[1], 10, 64)
				statGrants += n
			case "BUG":
				t.Errorf("process %d: %s", i, line)
			case "holding":
			default:
				t.Errorf("process %d printed %q", i, line)
			}
		}
	}
	require.Positive(t, late, "some late Refresh or Release was refused")
	require.Equal(t, int64(survivorsGrants), statGrants, "Stats.Grants counts the grants")

	perName, err := checkGrants(grants)
	require.NoError(t, err)
	// The killed holder's name was granted again, after its lease.
	dead := byOwner[owner]
	require.NotNil(t, dead)
	var after *grantRecord
	for _, g := range perName[dead.name] {
		if g.fence > dead.fence {
			after = g
			break
		}
	}
	if after == nil {
		// No contender asked for it after the kill: take it here.
		t.Logf("no contender took %s after the kill; nothing more to check", dead.name)
		return
	}
	require.GreaterOrEqual(t, after.granted, dead.end, "the killed holder's name was granted before its lease ended")
	t.Logf("%d grants over %d names, %d late calls refused; killed holder's %s granted again %v after its lease ended",
		len(grants), len(perName), late, dead.name, time.Duration(after.granted-dead.end))
}

func contendDuration() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("DBCACHE_TEST_LOCK_CONTEND")); err == nil && d > 0 {
		return d
	}
	return 12 * time.Second
}

// 8 processes, 5 names, leases of 50-500 ms, holders paused past their
// leases by sleeps and SIGSTOPs, one SIGKILLed while holding.
func TestProcessesContend(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	contend(t, b.s.DSN(t), "", 8, 5, contendDuration())
}

// The same through PgBouncer in transaction pooling: every statement of a
// grant may reach another server connection.
func TestProcessesContendPgBouncer(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	bouncer := dbtest.NewPgBouncer(t, nil)
	dsn := bouncer.SchemaURL(t, b.s) + "&default_query_exec_mode=exec"
	contend(t, dsn, b.s.Name, 8, 5, max(10*time.Second, contendDuration()*5/6))
}

// checkGrants checks a history of grants, per name: each was granted on a
// live lease, fences strictly increase in the order of the grants, and no
// grant began before every earlier grant's lease had ended (its release,
// or its last known expiry). It returns the grants by name, each name's
// sorted by grant time.
func checkGrants(grants []*grantRecord) (map[string][]*grantRecord, error) {
	perName := map[string][]*grantRecord{}
	for _, g := range grants {
		perName[g.name] = append(perName[g.name], g)
	}
	for name, gs := range perName {
		for _, g := range gs {
			if g.end <= g.granted {
				return nil, fmt.Errorf("%s: fence %d granted on a lease that had ended", name, g.fence)
			}
		}
		slices.SortFunc(gs, func(a, b *grantRecord) int { return int(a.granted - b.granted) })
		end := gs[0].end
		for i := 1; i < len(gs); i++ {
			prev, g := gs[i-1], gs[i]
			if g.fence <= prev.fence {
				return nil, fmt.Errorf("%s: fence %d granted after fence %d", name, g.fence, prev.fence)
			}
			if g.granted < end {
				return nil, fmt.Errorf("%s: fence %d (process %d) granted %v before an earlier grant's lease ended",
					name, g.fence, g.process, time.Duration(end-g.granted))
			}
			end = max(end, g.end)
		}
	}
	return perName, nil
}

// The history check catches what it is there to catch: two holders at
// once (a grant inside a lease, refreshed or not, not released), fences
// out of order, a grant on a lapsed lease; and lets a history without them
// pass.
func TestCheckGrants(t *testing.T) {
	t.Parallel()
	g := func(name string, fence, granted, end int64) *grantRecord {
		return &grantRecord{name: name, fence: fence, granted: granted, end: end}
	}
	_, err := checkGrants([]*grantRecord{g("a", 1, 0, 10), g("a", 2, 10, 20), g("b", 1, 5, 30), g("a", 3, 25, 26)})
	require.NoError(t, err)
	for name, h := range map[string][]*grantRecord{
		"overlap":            {g("a", 1, 0, 10), g("a", 2, 9, 20)},
		"overlap an earlier": {g("a", 1, 0, 100), g("a", 2, 100, 110), g("a", 3, 50, 60)},
		"fence out of order": {g("a", 2, 0, 10), g("a", 1, 10, 20)},
		"fence repeated":     {g("a", 1, 0, 10), g("a", 1, 10, 20)},
		"lapsed lease":       {g("a", 1, 10, 10)},
	} {
		_, err := checkGrants(h)
		require.Error(t, err, name)
	}
}
