// Command loaders measures GetOrSetFunc's stampede protection with real
// processes and prints the markdown tables of docs/loaders.md:
//
//	go run ./bench/loaders -dsn "$DBCACHE_TEST_DATABASE_URL"
//
// For each number of cold keys (-keys) and of processes (-procs), it makes
// a fresh schema and starts that many copies of itself, each with a pool of
// -conns connections and -g goroutines; every process asks for every key
// once in its own random order (for fewer keys than goroutines, each
// goroutine asks for a random one), with a loader that takes -load. It
// prints the loads per key (1 is the promise), the callers' errors, their
// p50 and p99 latency, the most sessions seen at once holding a connection
// for coordination (idle in a transaction, or holding or awaiting an
// advisory lock: pg_stat_activity and pg_locks sampled every 10 ms) and the
// most sessions in use. Then it compares a GetOrSetFunc hit with a plain
// Get on one cache: the median of -rounds interleaved rounds.
//
// It uses only the public API, so the same file runs against an older
// dbcache to measure "before".
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/migrations"
)

const childEnv = "DBCACHE_BENCH_LOADERS_CHILD"

// job is what a child process is told to do.
type job struct {
	DSN, Schema, App string
	Keys, Conns, G   int
	Load             time.Duration
	Seed             uint64
}

// result is a child's report.
type result struct {
	Loads     int64
	Errors    int
	Wrong     int
	Latencies []int64 // microseconds
}

func main() {
	if arg := os.Getenv(childEnv); arg != "" {
		if err := child(arg); err != nil {
			fmt.Fprintln(os.Stderr, "loaders child:", err)
			os.Exit(1)
		}
		return
	}
	dsn := flag.String("dsn", os.Getenv("DBCACHE_TEST_DATABASE_URL"), "PostgreSQL URL (default $DBCACHE_TEST_DATABASE_URL)")
	keysFlag := flag.String("keys", "1,20,1000", "cold key counts")
	procsFlag := flag.String("procs", "1,4,8", "process counts")
	conns := flag.Int("conns", 4, "pool size per process")
	g := flag.Int("g", 50, "goroutines per process")
	load := flag.Duration("load", 20*time.Millisecond, "loader duration")
	rounds := flag.Int("rounds", 7, "interleaved rounds of the hit-path comparison")
	hits := flag.Int("hits", 4000, "calls per side per round of the hit-path comparison")
	flag.Parse()
	if *dsn == "" {
		fmt.Fprintln(os.Stderr, "loaders: -dsn or DBCACHE_TEST_DATABASE_URL is required")
		os.Exit(2)
	}
	ctx := context.Background()
	if err := run(ctx, *dsn, ints(*keysFlag), ints(*procsFlag), *conns, *g, *load, *rounds, *hits); err != nil {
		fmt.Fprintln(os.Stderr, "loaders:", err)
		os.Exit(1)
	}
}

func ints(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			fmt.Fprintln(os.Stderr, "loaders: not a number:", f)
			os.Exit(2)
		}
		out = append(out, n)
	}
	return out
}

func run(ctx context.Context, dsn string, keyCounts, procCounts []int, conns, g int, load time.Duration, rounds, hits int) error {
	admin, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return err
	}
	defer admin.Close()
	fmt.Printf("Loaders: %d goroutines and a pool of %d per process, a %v loader; %s\n\n", g, conns, load, loadAverage())
	fmt.Println("| cold keys | processes | loads per key | errors | p50 | p99 | coordination sessions (max) | sessions in use (max) |")
	fmt.Println("|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, keys := range keyCounts {
		for _, procs := range procCounts {
			row, err := cell(ctx, admin, dsn, keys, procs, conns, g, load)
			if err != nil {
				return err
			}
			fmt.Println(row)
		}
	}
	fmt.Println()
	return hitPath(ctx, admin, dsn, rounds, hits)
}

// schema makes a fresh migrated schema and returns its name.
func schema(ctx context.Context, admin *pgxpool.Pool, dsn string) (string, func(), error) {
	name := fmt.Sprintf("bench_loaders_%d_%d", os.Getpid(), rand.Uint32())
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", nil, err
	}
	drop := func() {
		_, _ = admin.Exec(context.Background(), "DROP SCHEMA "+pgx.Identifier{name}.Sanitize()+" CASCADE")
	}
	cc, err := pgx.ParseConfig(dsn)
	if err != nil {
		drop()
		return "", nil, err
	}
	m, err := migrations.NewFromConnConfig(cc, &migrations.Config{Schema: name})
	if err != nil {
		drop()
		return "", nil, err
	}
	if err := m.Up(ctx); err != nil {
		drop()
		return "", nil, err
	}
	return name, drop, nil
}

// cell runs one measurement: procs child processes over keys cold keys.
func cell(ctx context.Context, admin *pgxpool.Pool, dsn string, keys, procs, conns, g int, load time.Duration) (string, error) {
	name, drop, err := schema(ctx, admin, dsn)
	if err != nil {
		return "", err
	}
	defer drop()
	app := "bench-loaders-" + name
	type child struct {
		cmd   *exec.Cmd
		stdin io.WriteCloser
		out   *bufio.Scanner
	}
	children := make([]child, procs)
	for i := range children {
		arg, _ := json.Marshal(job{DSN: dsn, Schema: name, App: app, Keys: keys, Conns: conns, G: g, Load: load, Seed: uint64(i + 1)})
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), childEnv+"="+string(arg))
		cmd.Stderr = os.Stderr
		in, err := cmd.StdinPipe()
		if err != nil {
			return "", err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			return "", err
		}
		if err := cmd.Start(); err != nil {
			return "", err
		}
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		children[i] = child{cmd: cmd, stdin: in, out: sc}
	}
	for _, c := range children {
		if !c.out.Scan() || c.out.Text() != "ready" {
			return "", fmt.Errorf("a child was not ready")
		}
	}
	var (
		coord, sessions int
		stop            = make(chan struct{})
		sampled         = make(chan struct{})
	)
	go func() {
		defer close(sampled)
		for {
			var c, s int
			err := admin.QueryRow(ctx, `SELECT count(*) FILTER (WHERE a.state LIKE 'idle in transaction%'
       OR EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory')), count(*) FILTER (WHERE a.state <> 'idle')
FROM pg_stat_activity a WHERE a.application_name = $1`, app).Scan(&c, &s)
			if err == nil {
				coord, sessions = max(coord, c), max(sessions, s)
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	for _, c := range children {
		if _, err := fmt.Fprintln(c.stdin, "go"); err != nil {
			return "", err
		}
	}
	var all result
	for _, c := range children {
		var last string
		for c.out.Scan() {
			last = c.out.Text()
		}
		if err := c.cmd.Wait(); err != nil {
			return "", fmt.Errorf("child: %w", err)
		}
		var r result
		if err := json.Unmarshal([]byte(last), &r); err != nil {
			return "", fmt.Errorf("child report %q: %w", last, err)
		}
		all.Loads += r.Loads
		all.Errors += r.Errors + r.Wrong
		all.Latencies = append(all.Latencies, r.Latencies...)
	}
	close(stop)
	<-sampled
	slices.Sort(all.Latencies)
	p := func(q float64) time.Duration {
		if len(all.Latencies) == 0 {
			return 0
		}
		return (time.Duration(all.Latencies[int(float64(len(all.Latencies)-1)*q)]) * time.Microsecond).Round(100 * time.Microsecond)
	}
	return fmt.Sprintf("| %d | %d | %.2f | %d | %v | %v | %d | %d |", keys, procs, float64(all.Loads)/float64(keys), all.Errors, p(0.5), p(0.99), coord, sessions), nil
}

// child is one process of a cell.
func child(arg string) error {
	var j job
	if err := json.Unmarshal([]byte(arg), &j); err != nil {
		return err
	}
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(j.DSN)
	if err != nil {
		return err
	}
	cfg.MaxConns = int32(j.Conns)
	cfg.ConnConfig.RuntimeParams["application_name"] = j.App
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{Schema: j.Schema, OpTimeout: time.Minute})
	if err != nil {
		return err
	}
	defer cache.Close()
	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(j.Seed, 7))
	calls := rng.Perm(j.Keys)
	for len(calls) < j.G {
		calls = append(calls, rng.IntN(j.Keys))
	}
	work := make(chan int, len(calls))
	for _, k := range calls {
		work <- k
	}
	close(work)
	var (
		mu  sync.Mutex
		res result
		wg  sync.WaitGroup
	)
	for range j.G {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range work {
				key := "key-" + strconv.Itoa(k)
				want := "value-of-" + key
				start := time.Now()
				v, err := cache.GetOrSetFunc(ctx, key, func(context.Context) ([]byte, error) {
					time.Sleep(j.Load)
					return []byte(want), nil
				}, dbcache.Forever)
				took := time.Since(start)
				mu.Lock()
				res.Latencies = append(res.Latencies, took.Microseconds())
				if err != nil {
					res.Errors++
				} else if string(v) != want {
					res.Wrong++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.Loads = cache.Stats().Loads
	out, err := json.Marshal(res)
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

// hitPath compares a GetOrSetFunc hit with a plain Get of a warm key on one
// cache: rounds interleaved rounds, each timing hits calls of either
// (which goes first alternates), and the median of the rounds' ratios.
func hitPath(ctx context.Context, admin *pgxpool.Pool, dsn string, rounds, hits int) error {
	name, drop, err := schema(ctx, admin, dsn)
	if err != nil {
		return err
	}
	defer drop()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return err
	}
	cfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{Schema: name})
	if err != nil {
		return err
	}
	defer cache.Close()
	if err := cache.Set(ctx, "warm", []byte("value"), dbcache.Forever); err != nil {
		return err
	}
	load := func(context.Context) ([]byte, error) { return []byte("value"), nil }
	timeIt := func(f func() error) (time.Duration, error) {
		start := time.Now()
		for range hits {
			if err := f(); err != nil {
				return 0, err
			}
		}
		return time.Since(start), nil
	}
	get := func() error { _, err := cache.Get(ctx, "warm"); return err }
	getOrSet := func() error { _, err := cache.GetOrSetFunc(ctx, "warm", load, dbcache.Forever); return err }
	var ratios []float64
	for r := range rounds {
		first, second := get, getOrSet
		if r%2 == 1 {
			first, second = getOrSet, get
		}
		a, err := timeIt(first)
		if err != nil {
			return err
		}
		b, err := timeIt(second)
		if err != nil {
			return err
		}
		tGet, tHit := a, b
		if r%2 == 1 {
			tGet, tHit = b, a
		}
		ratios = append(ratios, float64(tGet)/float64(tHit)) // throughput of a hit over a Get's
	}
	slices.Sort(ratios)
	fmt.Printf("Hit path: a GetOrSetFunc hit's throughput over a plain Get's, one goroutine, %d calls each, median of %d interleaved rounds: %.3fx (rounds: %s); %s\n",
		hits, rounds, ratios[len(ratios)/2], fmtRatios(ratios), loadAverage())
	return nil
}

func fmtRatios(r []float64) string {
	parts := make([]string, len(r))
	for i, x := range r {
		parts[i] = strconv.FormatFloat(x, 'f', 3, 64)
	}
	return strings.Join(parts, ", ")
}

// loadAverage is the machine's load average, read from /proc/loadavg.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "load average unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "load average unknown"
	}
	return "load average " + strings.Join(f[:3], ", ")
}
