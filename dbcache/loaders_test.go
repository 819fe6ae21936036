package dbcache_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// The loaders attacked by real processes: each is the test binary in a
// role, with its own pool of 4 and its own Cache, sharing only the table.

// loaderJob is what a loader process is told to do.
type loaderJob struct {
	DSN        string
	App        string
	Keys       int
	Goroutines int
	Conns      int
	LoadMillis int
	Seed       uint64
	// Hang makes the loader of key "hang" print "loading" and block, for
	// the SIGKILL test.
	Hang      bool
	LeaseMS   int
	TimeoutMS int
	// Schema and ExecMode, for a DSN through PgBouncer (which takes no
	// search_path): Config.Schema and the pool's query mode.
	Schema   string
	ExecMode string
}

// loaderResult is a loader process's report.
type loaderResult struct {
	Loads, JoinedWaits, LoadWaits, LeaseExpiries int64
	Errors                                       []string
	Calls                                        int
	Wrong                                        int
	LatenciesUS                                  []int64
}

// loaderBarrier is the advisory lock the test holds until every loader
// process is ready.
const loaderBarrier = 7_2345_6789

func init() {
	dbtest.Role("dbcache-loader", runLoaderProcess)
}

func loaderValue(key string) string { return "value-of-" + key }

// runLoaderProcess asks for every key once, in a random order spread over
// its goroutines, and prints its counts as JSON.
func runLoaderProcess(ctx context.Context, arg string) error {
	var job loaderJob
	if err := json.Unmarshal([]byte(arg), &job); err != nil {
		return err
	}
	cfg, err := pgxpool.ParseConfig(job.DSN)
	if err != nil {
		return err
	}
	cfg.MaxConns = int32(job.Conns)
	cfg.ConnConfig.RuntimeParams["application_name"] = job.App
	if job.ExecMode == "exec" {
		cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	cc := &dbcache.Config{OpTimeout: time.Duration(job.TimeoutMS) * time.Millisecond, Schema: job.Schema}
	if job.LeaseMS > 0 {
		cc.LoadLease = time.Duration(job.LeaseMS) * time.Millisecond
	}
	cache, err := dbcache.New(ctx, pool, cc)
	if err != nil {
		return err
	}
	defer cache.Close()
	if job.Hang {
		fmt.Println("ready")
		_, err := cache.GetOrSetFunc(ctx, "hang", func(context.Context) ([]byte, error) {
			fmt.Println("loading")
			select {} // until SIGKILL
		}, dbcache.Forever)
		return err
	}
	// The barrier: one connection waits for the test to let go.
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock_shared($1)`, loaderBarrier); err != nil {
		return err
	}
	_, _ = conn.Exec(ctx, `SELECT pg_advisory_unlock_shared($1)`, loaderBarrier)
	conn.Release()

	order := rand.New(rand.NewPCG(job.Seed, 1)).Perm(job.Keys)
	work := make(chan int)
	go func() {
		defer close(work)
		for _, k := range order {
			work <- k
		}
	}()
	var (
		mu  sync.Mutex
		res loaderResult
		wg  sync.WaitGroup
	)
	for range job.Goroutines {
		wg.Go(func() {
			for k := range work {
				key := "key-" + strconv.Itoa(k)
				start := time.Now()
				v, err := cache.GetOrSetFunc(ctx, key, func(context.Context) ([]byte, error) {
					time.Sleep(time.Duration(job.LoadMillis) * time.Millisecond)
					return []byte(loaderValue(key)), nil
				}, dbcache.Forever)
				took := time.Since(start)
				mu.Lock()
				res.Calls++
				res.LatenciesUS = append(res.LatenciesUS, took.Microseconds())
				switch {
				case err != nil:
					res.Errors = append(res.Errors, err.Error())
				case string(v) != loaderValue(key):
					res.Wrong++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	st := cache.Stats()
	res.Loads, res.JoinedWaits, res.LoadWaits, res.LeaseExpiries = st.Loads, st.JoinedWaits, st.LoadWaits, st.LeaseExpiries
	out, err := json.Marshal(res)
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

// loaderRun is one run's outcome, all processes together.
type loaderRun struct {
	results []loaderResult
	// coordination is the most sessions of the run's processes seen at
	// once holding a connection for coordination rather than a statement:
	// idle in a transaction, or holding or awaiting an advisory lock
	// (other than the test's start barrier).
	coordination int
	// sessions is the most sessions of the run's processes seen at once.
	sessions int
}

// runLoaders starts procs loader processes on job and samples
// pg_stat_activity while they run.
func runLoaders(t *testing.T, pool *pgxpool.Pool, job loaderJob, procs int) loaderRun {
	t.Helper()
	ctx := ctxT(t)
	barrier, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer barrier.Release()
	_, err = barrier.Exec(ctx, `SELECT pg_advisory_lock($1)`, loaderBarrier)
	require.NoError(t, err)
	ps := make([]*dbtest.Process, procs)
	for i := range ps {
		job.Seed = uint64(i + 1)
		arg, err := json.Marshal(job)
		require.NoError(t, err)
		ps[i] = dbtest.Start(t, "dbcache-loader", string(arg), true)
	}
	for _, p := range ps {
		line, ok := <-p.Lines()
		if !ok || line != "ready" {
			_, err := p.Wait(time.Minute)
			t.Fatalf("loader process not ready (%q): %v", line, err)
		}
	}
	var run loaderRun
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			var coord, sessions int
			err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE a.state LIKE 'idle in transaction%'
       OR EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory'
                  AND NOT (l.classid = 0 AND l.objid = $2))), count(*)
FROM pg_stat_activity a WHERE a.application_name = $1`, job.App, loaderBarrier).Scan(&coord, &sessions)
			if err == nil {
				run.coordination = max(run.coordination, coord)
				run.sessions = max(run.sessions, sessions)
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	_, err = barrier.Exec(ctx, `SELECT pg_advisory_unlock($1)`, loaderBarrier)
	require.NoError(t, err)
	for _, p := range ps {
		var last string
		for line := range p.Lines() {
			last = line
		}
		_, err := p.Wait(2 * time.Minute)
		require.NoError(t, err)
		var r loaderResult
		require.NoError(t, json.Unmarshal([]byte(last), &r), "report %q", last)
		run.results = append(run.results, r)
	}
	close(stop)
	<-sampled
	return run
}

// Cold keys, real processes with pools of 4, 50 goroutines each asking for
// every key in its own random order: every key is loaded exactly once
// across all of them, every caller gets its key's value, none errs, and no
// session ever holds a connection for coordination (no lock, no open
// transaction): 1,000 keys over 8 processes, 8,000 calls.
func TestProcessesLoadEachKeyOnce(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	pool := s.Pool(t)
	const keys, procs = 1000, 8
	run := runLoaders(t, pool, loaderJob{DSN: s.DSN(t), App: appName(t), Keys: keys, Goroutines: 50, Conns: 4, LoadMillis: 5, TimeoutMS: 60_000}, procs)
	var loads, calls, wrong int64
	var errs []string
	for _, r := range run.results {
		loads += r.Loads
		calls += int64(r.Calls)
		wrong += int64(r.Wrong)
		errs = append(errs, r.Errors...)
	}
	require.Empty(t, errs)
	require.EqualValues(t, keys*procs, calls)
	require.Zero(t, wrong, "a caller got another key's value")
	require.EqualValues(t, keys, loads, "each key loaded exactly once across %d processes", procs)
	require.Equal(t, keys, dbtest.Count(t, pool))
	require.Zero(t, run.coordination, "a session held a connection for coordination")
	require.LessOrEqual(t, run.sessions, 4*procs, "a process used more than its pool of 4")
	var leases int
	require.NoError(t, pool.QueryRow(ctxT(t), `SELECT count(*) FROM dbcache_leases`).Scan(&leases))
	require.Zero(t, leases, "every lease was released")
}

// A process SIGKILLed while loading: its lease outlives it for at most
// LoadLease (1 s here), after which a waiting process takes the key over
// and loads it, long before its LoadWait (a minute) would have let it load
// unprotected.
func TestProcessesKilledLoaderReleasesItsKey(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	pool := s.Pool(t)
	job := loaderJob{DSN: s.DSN(t), App: appName(t), Conns: 4, Hang: true, LeaseMS: 1000, TimeoutMS: 60_000}
	arg, err := json.Marshal(job)
	require.NoError(t, err)
	p := dbtest.Start(t, "dbcache-loader", string(arg), true)
	loading := false
	for line := range p.Lines() {
		if line == "loading" {
			loading = true
			break
		}
	}
	if !loading {
		_, err := p.Wait(time.Minute)
		t.Fatalf("the loader process never loaded: %v", err)
	}
	require.NoError(t, p.Signal(syscall.SIGKILL))
	<-p.Done()
	b := setupOn(t, pool, &dbcache.Config{LoadWait: time.Minute, LoadLease: time.Second})
	ctx := ctxT(t)
	held, err := b.cache.AcquireLease(ctx, "hang", time.Minute)
	require.NoError(t, err)
	require.False(t, held.Acquired, "the killed process's lease outlives it")
	require.LessOrEqual(t, held.Remaining, time.Second)
	v, err := b.cache.GetOrSetFunc(ctx, "hang", func(context.Context) ([]byte, error) { return []byte("mine"), nil }, dbcache.Forever)
	require.NoError(t, err)
	require.Equal(t, "mine", string(v))
	st := b.cache.Stats()
	require.EqualValues(t, 1, st.Loads)
	require.EqualValues(t, 1, st.LoadWaits, "it waited for the lease, not LoadWait")
	require.EqualValues(t, 1, st.LeaseExpiries, "the killed process's lease ran out and was taken over")
}

// The same loads behind PgBouncer in transaction pooling: 4 real
// processes (pools of 4 through the bouncer) x 50 goroutines over 200
// cold keys. Every statement is a transaction of its own, so leases work
// where session state (an advisory lock) would be lost.
func TestPgBouncerProcessesLoadEachKeyOnce(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	bouncer := dbtest.NewPgBouncer(t, nil)
	const keys, procs = 200, 4
	run := runLoaders(t, s.Pool(t), loaderJob{DSN: bouncer.SchemaURL(t, s), Schema: s.Name, ExecMode: "exec", App: appName(t),
		Keys: keys, Goroutines: 50, Conns: 4, LoadMillis: 5, TimeoutMS: 60_000}, procs)
	var loads, calls, wrong int64
	var errs []string
	for _, r := range run.results {
		loads += r.Loads
		calls += int64(r.Calls)
		wrong += int64(r.Wrong)
		errs = append(errs, r.Errors...)
	}
	require.Empty(t, errs)
	require.EqualValues(t, keys*procs, calls)
	require.Zero(t, wrong)
	require.EqualValues(t, keys, loads, "each key loaded exactly once across %d processes behind PgBouncer", procs)
	require.Zero(t, run.coordination)
}

// The fence: a loader whose lease lapsed (here, expired under it while it
// ran) stores nothing, so the value of the loader that took the lease over
// stands; its own callers still get its value, and it counts the expiry.
func TestLoaderFencedWrite(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	other := setupOn(t, b.pool, nil)
	ctx := ctxT(t)
	loading := make(chan struct{})
	release := make(chan struct{})
	got := make(chan string, 1)
	go func() {
		v, err := b.cache.GetOrSetFunc(ctx, "k", func(context.Context) ([]byte, error) {
			close(loading)
			<-release
			return []byte("late"), nil
		}, dbcache.Forever)
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		got <- string(v)
	}()
	<-loading
	dbtest.Exec(t, b.pool, `UPDATE dbcache_leases SET expires = statement_timestamp() - interval '1 second'`)
	v, err := other.cache.GetOrSetFunc(ctx, "k", func(context.Context) ([]byte, error) { return []byte("new"), nil }, dbcache.Forever)
	require.NoError(t, err)
	require.Equal(t, "new", string(v))
	require.NoError(t, other.cache.Set(ctx, "k", []byte("newer"), dbcache.Forever), "then the key is written again")
	// Take the lease over once more, as the next loader would, and let the
	// late one write.
	_, err = other.cache.AcquireLease(ctx, "k", time.Minute)
	require.NoError(t, err)
	close(release)
	require.Equal(t, "late", <-got, "the late loader's callers get its value")
	require.Equal(t, "newer", mustGet(t, b.cache, "k"), "the late loader overwrote a newer value")
	require.EqualValues(t, 1, b.cache.Stats().LeaseExpiries)
}

// A loader's fenced write and a takeover of its lease, raced: the taker
// polls for the lease while it expires and then writes; whichever commits
// first, the late loader's value never replaces the taker's. 20 rounds.
func TestLoaderFenceRacesTakeover(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	other := setupOn(t, b.pool, nil)
	ctx := ctxT(t)
	for round := range 20 {
		key := "k" + strconv.Itoa(round)
		lease, err := b.cache.AcquireLease(ctx, key, 20*time.Millisecond)
		require.NoError(t, err)
		require.True(t, lease.Acquired)
		taken := make(chan error, 1)
		go func() {
			for {
				took, err := other.cache.AcquireLease(ctx, key, time.Minute)
				if err != nil || took.Acquired {
					if err == nil {
						err = other.cache.Set(ctx, key, []byte("taker"), dbcache.Forever)
					}
					taken <- err
					return
				}
			}
		}()
		for range 50 {
			if _, err := dbcache.SetLeased(ctx, b.cache, key, lease.Token, []byte("late")); err != nil {
				require.NoError(t, err)
			}
		}
		require.NoError(t, <-taken)
		_, err = dbcache.SetLeased(ctx, b.cache, key, lease.Token, []byte("late"))
		require.NoError(t, err)
		require.Equal(t, "taker", mustGet(t, b.cache, key), "round %d: the late loader's write replaced the taker's", round)
	}
}
