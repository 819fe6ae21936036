package dbcache_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// The single-statement promises, attacked by real processes: each racer is
// a process of its own (the test binary in a role), with its own pool and
// Cache, sharing only the table, as application servers do. Every process
// lets its goroutines go at once through an advisory lock the test holds
// until all of them are ready.

// racerJob is what a racer process is told to do.
type racerJob struct {
	DSN        string
	Op         string // add, incr, cas, getorset, bulk
	Keys       int
	Goroutines int
	Rounds     int
	Process    int
	// FastCommit makes the racers' caches FastCommit ones, which coalesce
	// concurrent Sets and Incrs by default.
	FastCommit bool
}

// barrierLock is the advisory lock the test holds while the racers get
// ready.
const barrierLock = 7_1234_5678

func init() {
	dbtest.Role("dbcache-racer", runRacer)
}

// runRacer is a racer process: it prints "ready", waits at the barrier, runs
// its job on every goroutine, and prints one JSON line per result.
func runRacer(ctx context.Context, arg string) error {
	var job racerJob
	if err := json.Unmarshal([]byte(arg), &job); err != nil {
		return err
	}
	cfg, err := pgxpool.ParseConfig(job.DSN)
	if err != nil {
		return err
	}
	cfg.MaxConns = int32(job.Goroutines)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{OpTimeout: time.Minute, FastCommit: job.FastCommit})
	if err != nil {
		return err
	}
	defer cache.Close()
	// Each goroutine holds a connection at the barrier, so all of them
	// start when the test lets go.
	conns := make([]*pgxpool.Conn, job.Goroutines)
	for i := range conns {
		if conns[i], err = pool.Acquire(ctx); err != nil {
			return err
		}
	}
	fmt.Println("ready")
	var (
		mu   sync.Mutex
		out  []string
		errs []error
		wg   sync.WaitGroup
	)
	emit := func(format string, args ...any) {
		mu.Lock()
		out = append(out, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	for g := range job.Goroutines {
		wg.Go(func() {
			c := conns[g]
			if _, err := c.Exec(ctx, `SELECT pg_advisory_lock_shared($1)`, barrierLock); err != nil {
				c.Release()
				fail(err)
				return
			}
			_, _ = c.Exec(ctx, `SELECT pg_advisory_unlock_shared($1)`, barrierLock)
			c.Release()
			me := fmt.Sprintf("p%dg%d", job.Process, g)
			rng := rand.New(rand.NewPCG(uint64(job.Process), uint64(g)))
			for r := range job.Rounds {
				switch job.Op {
				case "add":
					k := fmt.Sprintf("add:%d", r%job.Keys)
					ok, err := cache.Add(ctx, k, []byte(me), dbcache.Forever)
					if err != nil {
						fail(err)
						return
					}
					if ok {
						emit("won %s %s", k, me)
					}
				case "incr":
					n, err := cache.Incr(ctx, "counter", 1)
					if err != nil {
						fail(err)
						return
					}
					emit("%d", n)
				case "cas":
					// Read-modify-write of one counter: each success
					// prints the token it swapped and the value it
					// stored.
					v, tok, err := cache.GetWithToken(ctx, "cas")
					if err != nil {
						fail(err)
						return
					}
					n, err := strconv.Atoi(string(v))
					if err != nil {
						fail(err)
						return
					}
					ok, err := cache.CompareAndSwap(ctx, "cas", tok, []byte(strconv.Itoa(n+1)), dbcache.Forever)
					if err != nil {
						fail(err)
						return
					}
					if ok {
						emit("won %d %d", tok, n+1)
					}
				case "getorset":
					k := fmt.Sprintf("gos:%d", r%job.Keys)
					v, err := cache.GetOrSet(ctx, k, []byte(me), dbcache.Forever)
					if err != nil {
						fail(err)
						return
					}
					emit("got %s %s", k, v)
				case "bulk":
					keys := make([]string, job.Keys)
					items := make(map[string][]byte, job.Keys)
					for i := range keys {
						keys[i] = bulkKey(i)
						items[keys[i]] = []byte(me)
					}
					rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
					var err error
					if rng.IntN(3) == 0 {
						_, err = cache.DeleteMany(ctx, keys[:job.Keys/2])
					} else {
						_, err = cache.SetMany(ctx, items, dbcache.Forever)
					}
					if err != nil {
						fail(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	for _, line := range out {
		fmt.Println(line)
	}
	return errors.Join(errs...)
}

// bulkKey mixes cases, so an ICU order and the "C" order of the keys
// differ ("a" < "aa" < "B" against "B" < "a" < "aa").
func bulkKey(i int) string {
	return []string{"a", "B", "aa", "Ab", "b", "C", "ab", "Ba"}[i%8] + strconv.Itoa(i/8)
}

// raceProcesses runs job in procs processes at once and returns every
// line they printed after "ready".
func raceProcesses(t *testing.T, pool *pgxpool.Pool, job racerJob, procs int) []string {
	t.Helper()
	ctx := context.Background()
	barrier, err := pool.Acquire(ctx)
	require.NoError(t, err)
	_, err = barrier.Exec(ctx, `SELECT pg_advisory_lock($1)`, barrierLock)
	require.NoError(t, err)
	ps := make([]*dbtest.Process, procs)
	for i := range ps {
		job.Process = i
		arg, err := json.Marshal(job)
		require.NoError(t, err)
		ps[i] = dbtest.Start(t, "dbcache-racer", string(arg), true)
	}
	for _, p := range ps {
		line, ok := <-p.Lines()
		if !ok || line != "ready" {
			_, err := p.Wait(time.Minute)
			t.Fatalf("racer %d did not get ready (%q): %v", p.Pid(), line, err)
		}
	}
	_, err = barrier.Exec(ctx, `SELECT pg_advisory_unlock($1)`, barrierLock)
	require.NoError(t, err)
	barrier.Release()
	var lines []string
	for _, p := range ps {
		for line := range p.Lines() {
			lines = append(lines, line)
		}
		_, err := p.Wait(2 * time.Minute)
		require.NoError(t, err)
	}
	return lines
}

// Of every Add of a key from 4 processes x 8 goroutines, exactly one
// returns true, also over an expired row (half the keys start as one).
func TestProcessesAddExactlyOneWins(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	b := setupOn(t, s.Pool(t), nil)
	ctx := context.Background()
	const keys = 40
	for i := 0; i < keys; i += 2 {
		require.NoError(t, b.cache.Set(ctx, fmt.Sprintf("add:%d", i), []byte("old"), dbcache.Forever))
	}
	_, err := b.pool.Exec(ctx, `UPDATE dbcache_entries SET expires = statement_timestamp() - interval '1 second'`)
	require.NoError(t, err)
	lines := raceProcesses(t, b.pool, racerJob{DSN: s.DSN(t), Op: "add", Keys: keys, Goroutines: 8, Rounds: keys}, 4)
	wins := map[string][]string{}
	for _, l := range lines {
		f := strings.Fields(l)
		require.Len(t, f, 3, l)
		wins[f[1]] = append(wins[f[1]], f[2])
	}
	for i := range keys {
		k := fmt.Sprintf("add:%d", i)
		require.Len(t, wins[k], 1, "winners of %s: %v", k, wins[k])
		v, err := b.cache.Get(ctx, k)
		require.NoError(t, err)
		require.Equal(t, wins[k][0], string(v), k)
	}
}

// 4 processes x 8 goroutines x 100 Incrs of one key: the exact total, and
// every Incr returned its own value (each of 1 … total exactly once), on a
// C and an ICU database, with durable caches and with FastCommit ones,
// whose Incrs are coalesced by default.
func TestProcessesIncrExactTotal(t *testing.T) {
	t.Parallel()
	for _, coll := range dbtest.Collations {
		for _, fast := range []bool{false, true} {
			// One at a time: each takes 32 connections.
			t.Run(fmt.Sprintf("%s/fast=%v", coll, fast), func(t *testing.T) {
				s := dbtest.SchemaWith(t, dbtest.Profile{Collation: coll})
				s.Migrate(t)
				b := setupOn(t, s.Pool(t), nil)
				ctx := context.Background()
				require.NoError(t, b.cache.Set(ctx, "counter", []byte("0"), dbcache.Forever))
				lines := raceProcesses(t, b.pool, racerJob{DSN: s.DSN(t), Op: "incr", Goroutines: 8, Rounds: 100, FastCommit: fast}, 4)
				const total = 4 * 8 * 100
				seen := make(map[int]bool, total)
				for _, l := range lines {
					n, err := strconv.Atoi(l)
					require.NoError(t, err, l)
					require.True(t, n >= 1 && n <= total && !seen[n], "an Incr returned %d: out of range or twice", n)
					seen[n] = true
				}
				require.Len(t, seen, total)
				v, err := b.cache.Get(ctx, "counter")
				require.NoError(t, err)
				require.Equal(t, strconv.Itoa(total), string(v))
			})
		}
	}
}

// Every racing GetOrSet of a key, in 4 processes, returns the first
// stored value: the one the table holds.
func TestProcessesGetOrSetConverges(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	b := setupOn(t, s.Pool(t), nil)
	ctx := context.Background()
	const keys = 20
	lines := raceProcesses(t, b.pool, racerJob{DSN: s.DSN(t), Op: "getorset", Keys: keys, Goroutines: 8, Rounds: keys}, 4)
	require.Len(t, lines, 4*8*keys)
	for _, l := range lines {
		f := strings.Fields(l)
		require.Len(t, f, 3, l)
		v, err := b.cache.Get(ctx, f[1])
		require.NoError(t, err)
		require.Equal(t, string(v), f[2], "a GetOrSet of %s returned a value the table does not hold", f[1])
	}
}

// SetMany and DeleteMany over the same keys in random orders, from 4
// processes in an ICU en-US database (where the database's order is not the
// key column's): none deadlocks or fails.
func TestProcessesBulkWritesNeverDeadlock(t *testing.T) {
	t.Parallel()
	s := dbtest.SchemaIn(t, dbtest.CollationLinguistic)
	s.Migrate(t)
	b := setupOn(t, s.Pool(t), nil)
	raceProcesses(t, b.pool, racerJob{DSN: s.DSN(t), Op: "bulk", Keys: 30, Goroutines: 6, Rounds: 30}, 4)
}
