package ratelimit_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/ratelimit"
)

// The bound, attacked by real processes: each hammer is a process of its
// own (the test binary in a role) with its own pool and Limiter, sharing
// only the table, as application servers do. They start together at an
// advisory lock the test holds until every one is ready.

// barrierLock is the advisory lock the test holds while the hammers get
// ready.
const barrierLock = 29_0008_0001

func init() {
	dbtest.Role("ratelimit-hammer", runHammer)
}

// runHammer is a hammer process: it prints "ready", waits at the barrier,
// runs its job, and prints its hammerResult as one JSON line.
func runHammer(ctx context.Context, arg string) error {
	var job hammerJob
	if err := json.Unmarshal([]byte(arg), &job); err != nil {
		return err
	}
	cfg, err := pgxpool.ParseConfig(job.DSN)
	if err != nil {
		return err
	}
	cfg.MaxConns = job.Conns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	lim, err := ratelimit.New(ctx, pool, &ratelimit.Config{FastCommit: job.FastCommit, Schema: job.Schema})
	if err != nil {
		return err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	start := make(chan struct{})
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock_shared($1)`, barrierLock); err != nil {
		conn.Release()
		return err
	}
	_, _ = conn.Exec(ctx, `SELECT pg_advisory_unlock_shared($1)`, barrierLock)
	conn.Release()
	close(start)
	res := hammer(ctx, lim, job, start)
	out, err := json.Marshal(res)
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

// hammerProcesses runs job in procs processes at once (each with its own
// seed) and returns everything they saw, merged.
func hammerProcesses(t *testing.T, pool *pgxpool.Pool, job hammerJob, procs int) hammerResult {
	t.Helper()
	ctx := context.Background()
	barrier, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer barrier.Release()
	_, err = barrier.Exec(ctx, `SELECT pg_advisory_lock($1)`, barrierLock)
	require.NoError(t, err)
	ps := make([]*dbtest.Process, procs)
	for i := range ps {
		j := job
		j.Seed = uint64(i)
		j.Sweep = job.Sweep && i == 0
		arg, err := json.Marshal(j)
		require.NoError(t, err)
		ps[i] = dbtest.Start(t, "ratelimit-hammer", string(arg), true)
	}
	for _, p := range ps {
		line, ok := <-p.Lines()
		if !ok || line != "ready" {
			_, err := p.Wait(time.Minute)
			t.Fatalf("hammer %d did not get ready (%q): %v", p.Pid(), line, err)
		}
	}
	_, err = barrier.Exec(ctx, `SELECT pg_advisory_unlock($1)`, barrierLock)
	require.NoError(t, err)
	var all hammerResult
	for _, p := range ps {
		var lines []string
		for line := range p.Lines() {
			lines = append(lines, line)
		}
		_, err := p.Wait(2 * time.Minute)
		require.NoError(t, err)
		require.Len(t, lines, 1, "one result line per hammer")
		var res hammerResult
		require.NoError(t, json.Unmarshal([]byte(lines[0]), &res))
		all.Admitted = append(all.Admitted, res.Admitted...)
		all.Denied += res.Denied
		all.Lost += res.Lost
		all.Errors = append(all.Errors, res.Errors...)
	}
	return all
}

// 8 processes x 16 goroutines hammer one key for 10 s, asking for 1 to 3
// units each time, with a Sweep running beside them: no interval of the
// admissions, dated by the database's clock, holds more than the bound.
// Each process has 4 connections, so its goroutines also queue for them,
// and the pool hands connections over in every order.
func TestProcessesNeverExceedBound(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	limit := ratelimit.Limit{Rate: 100, Period: time.Second, Burst: 20}
	job := hammerJob{DSN: s.DSN(t), Key: "hot", Limit: limit, Goroutines: 16, Conns: 4, For: 10 * time.Second, MaxN: 3, Sweep: true}
	res := hammerProcesses(t, s.Pool(t), job, 8)
	requireBound(t, res, limit)
	require.Positive(t, res.Denied, "the limit was hit")
	// The corollary, checked directly: Burst + Rate - 1 in a window of
	// one Period.
	requireWindow(t, res.Admitted, limit.Period, limit.Burst+limit.Rate-1)
}

// The same with FastCommit (the bound does not depend on durability while
// the server runs) and Burst 1, the strict sliding window: at most Rate
// units in any window of length Period.
func TestProcessesNeverExceedBoundFastCommit(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	limit := ratelimit.Limit{Rate: 50, Period: time.Second, Burst: 1}
	job := hammerJob{DSN: s.DSN(t), Key: "hot", Limit: limit, Goroutines: 8, Conns: 4, For: 3 * time.Second, MaxN: 1, FastCommit: true}
	res := hammerProcesses(t, s.Pool(t), job, 4)
	requireBound(t, res, limit)
	// The bound's corollary, checked directly: windows of one Period.
	requireWindow(t, res.Admitted, limit.Period, limit.Rate)
}

// requireWindow checks that no half-open window [a, a+w) holds more than
// max units.
func requireWindow(t *testing.T, log []admission, w time.Duration, max int) {
	t.Helper()
	for i, a := range log {
		units := 0
		for _, b := range log {
			if b.At >= a.At && b.At < a.At+int64(w) {
				units += b.N
			}
		}
		require.LessOrEqual(t, units, max, "window starting at admission %d", i)
	}
}
