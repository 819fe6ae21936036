package coherence_test

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/benchpair"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/migrations"
	"github.com/dbcache/dbcache/internal/pgserver"
	"github.com/dbcache/dbcache/nearcache"
	"github.com/dbcache/dbcache/nearcache/internal/coherence"
)

// bound is the readers' MaxStaleness: the default.
const bound = nearcache.MaxStalenessDefault

// historyCase is one history: its writer's job, its readers, the faults
// the test injects while it runs.
type historyCase struct {
	name      string
	keys      []string
	readers   int // processes, 4 goroutines each
	writers   int // the writer's goroutines
	duration  time.Duration
	fast      bool
	opTimeout time.Duration // the writer's; 0 for 10 s
	feedTime  time.Duration // the readers' FeedTimeout; 0 for the default
	syncrep   bool          // on a primary with a synchronous standby of its own
	feedProxy bool          // the readers' feeds through a proxy the faults freeze
	// writeBehind, when positive, is the writer's WriteBehind.MaxDelay:
	// the bound checked is then the readers' plus it.
	writeBehind time.Duration
	faults      func(ctx context.Context, t *testing.T, c *caseRun)
}

// caseRun is a case while it runs.
type caseRun struct {
	srv     *pgserver.Server
	standby *pgserver.Server
	proxy   *dbtest.Proxy
}

func keys(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = prefix + strconv.Itoa(i)
	}
	return out
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

var cases = []historyCase{
	{name: "durable", keys: keys("k", 50), readers: 2, writers: 4, duration: 8 * time.Second},
	{name: "fastcommit", keys: keys("k", 50), readers: 2, writers: 4, duration: 8 * time.Second, fast: true},
	{name: "syncrep", keys: keys("k", 50), readers: 2, writers: 4, duration: 10 * time.Second, syncrep: true, opTimeout: time.Second,
		faults: func(ctx context.Context, t *testing.T, c *caseRun) {
			// The standby stops confirming (its walreceiver stopped) for
			// 2.5 s at a time: every durable commit waits, committed and
			// decoded but invisible, and the writer's 1 s timeout cancels
			// some waits (committed locally all the same).
			for sleepCtx(ctx, 1500*time.Millisecond) {
				pid, err := c.standby.WalReceiverPID(context.WithoutCancel(ctx))
				if err != nil {
					t.Logf("walreceiver: %v", err)
					continue
				}
				require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
				sleepCtx(ctx, 2500*time.Millisecond)
				require.NoError(t, syscall.Kill(pid, syscall.SIGCONT))
			}
		}},
	{name: "feedstall", keys: keys("k", 50), readers: 2, writers: 4, duration: 11 * time.Second, feedProxy: true, feedTime: 2 * time.Second,
		faults: func(ctx context.Context, t *testing.T, c *caseRun) {
			// A stall shorter than FeedTimeout (the heartbeats stop
			// arriving), then one longer (the feed is lost and comes back).
			for _, d := range []time.Duration{time.Second, 4 * time.Second} {
				if !sleepCtx(ctx, 2*time.Second) {
					return
				}
				c.proxy.Freeze()
				sleepCtx(ctx, d)
				c.proxy.Thaw()
			}
		}},
	{name: "rawsql", keys: keys("k", 50), readers: 2, writers: 4, duration: 8 * time.Second},
	{name: "clear", keys: keys("k", 30), readers: 2, writers: 1, duration: 8 * time.Second},
	{name: "deleteprefix", keys: append(keys("a:", 15), keys("b:", 15)...), readers: 2, writers: 1, duration: 8 * time.Second},
	{name: "incrversion", keys: keys("k", 30), readers: 2, writers: 4, duration: 8 * time.Second},
	{name: "touch", keys: keys("k", 30), readers: 2, writers: 6, duration: 8 * time.Second},
	{name: "ttl", keys: keys("k", 30), readers: 2, writers: 6, duration: 8 * time.Second},
	{name: "own", keys: keys("k", 8), readers: 0, writers: 4, duration: 8 * time.Second},
	{name: "writebehind", keys: keys("k", 50), readers: 2, writers: 4, duration: 8 * time.Second, writeBehind: 500 * time.Millisecond},
}

// TestHistory runs each case's writer and reader processes and checks
// their history: zero violations of the staleness bound, of monotonic
// reads and of a process's own writes. It logs each case's staleness
// distribution as a row of docs/nearcache.md's table.
func TestHistory(t *testing.T) {
	t.Parallel()
	// Two cases at a time: each is several processes, and the machine has
	// two cores (and other work).
	sem := make(chan struct{}, 2)
	var (
		mu   sync.Mutex
		rows = map[string]string{}
	)
	t.Cleanup(func() {
		var b strings.Builder
		b.WriteString("\n| case | reads | behind the newest | staleness p50 | p99 | max | violations | hit ratio | fills refused unseen | feed restarts | load avg |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, c := range cases {
			b.WriteString(rows[c.name])
		}
		t.Log(b.String())
	})
	for _, hc := range cases {
		t.Run(hc.name, func(t *testing.T) {
			t.Parallel()
			sem <- struct{}{}
			defer func() { <-sem }()
			row := runCase(t, hc)
			mu.Lock()
			rows[hc.name] = row
			mu.Unlock()
		})
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// startSyncRep starts a primary with a synchronous standby.
func startSyncRep(t *testing.T, ctx context.Context) (primary, standby *pgserver.Server) {
	primary, err := pgserver.Start(ctx, pgserver.Config{Kind: pgserver.Installed, Database: "coherence", Settings: logicalSettings})
	require.NoError(t, err)
	t.Cleanup(func() { _ = primary.Remove(context.Background()) })
	standby, err = pgserver.StartStandby(ctx, primary, "coherence_standby")
	require.NoError(t, err)
	t.Cleanup(func() { _ = standby.Remove(context.Background()) })
	conn, err := pgx.Connect(ctx, primary.URL("postgres"))
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "ALTER SYSTEM SET synchronous_standby_names = 'coherence_standby'")
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "SELECT pg_reload_conf()")
	require.NoError(t, err)
	for {
		var state string
		require.NoError(t, conn.QueryRow(ctx, "SELECT coalesce((SELECT sync_state FROM pg_stat_replication WHERE application_name = 'coherence_standby'), '')").Scan(&state))
		if state == "sync" {
			return primary, standby
		}
		require.True(t, sleepCtx(ctx, 20*time.Millisecond), "the standby never became synchronous")
	}
}

// runCase runs one case and returns its table row.
func runCase(t *testing.T, hc historyCase) string {
	ctx := ctxFor(t, 4*time.Minute)
	run := &caseRun{srv: server}
	if hc.syncrep {
		run.srv, run.standby = startSyncRep(t, ctx)
	}
	schema := "coh_" + hc.name
	ccfg, err := pgx.ParseConfig(run.srv.URL(""))
	require.NoError(t, err)
	m, err := migrations.NewFromConnConfig(ccfg, &migrations.Config{Schema: schema})
	require.NoError(t, err)
	require.NoError(t, m.Up(ctx))
	u, err := url.Parse(run.srv.URL(""))
	require.NoError(t, err)
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	dsn := u.String()
	pcfg, err := pgxpool.ParseConfig(dsn)
	require.NoError(t, err)
	pcfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	require.NoError(t, nearcache.Setup(ctx, pool, nil))
	if hc.feedProxy {
		host, port := run.srv.Addr()
		run.proxy = dbtest.NewProxy(t, fmt.Sprintf("%s:%d", host, port))
	}

	// Every key holds "0" before the processes start: recorded, as the
	// writes they are.
	setup := coherence.NewRecorder("setup")
	cache, err := dbcache.New(ctx, pool, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = cache.Close() })
	for _, k := range hc.keys {
		s := coherence.Now()
		require.NoError(t, cache.Set(ctx, k, []byte("0"), dbcache.Forever))
		setup.Add(coherence.Op{Kind: coherence.Write, Key: k, Value: "0", Start: s, End: coherence.Now(), Outcome: coherence.OK})
	}

	h := fnv.New64a()
	h.Write([]byte("coherence " + hc.name))
	barrierID := int64(h.Sum64() >> 2)
	hold, err := pool.Acquire(ctx)
	require.NoError(t, err)
	_, err = hold.Exec(ctx, "SELECT pg_advisory_lock($1)", barrierID)
	require.NoError(t, err)

	base := job{Case: hc.name, DSN: dsn, Keys: hc.keys, Duration: hc.duration, Bound: bound, FeedTime: hc.feedTime, Barrier: barrierID}
	var procs []*collected
	wj := base
	wj.Proc, wj.Goroutines, wj.FastCommit, wj.OpTimeout, wj.WriteBehind = "writer", hc.writers, hc.fast, hc.opTimeout, hc.writeBehind
	procs = append(procs, collect(t, "coherence-writer", wj))
	for i := range hc.readers {
		rj := base
		rj.Proc, rj.Goroutines = "reader"+strconv.Itoa(i), 4
		if run.proxy != nil {
			rj.ReplAddr = run.proxy.Addr()
		}
		procs = append(procs, collect(t, "coherence-reader", rj))
	}
	for _, p := range procs {
		p.waitReady(t, 3*time.Minute)
	}
	_, err = hold.Exec(ctx, "SELECT pg_advisory_unlock($1)", barrierID)
	require.NoError(t, err)
	hold.Release()
	loadBefore, _ := benchpair.LoadAverage()
	if hc.faults != nil {
		fctx, cancel := context.WithTimeout(ctx, hc.duration)
		done := make(chan struct{})
		go func() { defer close(done); hc.faults(fctx, t, run) }()
		t.Cleanup(func() { cancel(); <-done })
	}

	ops := slices.Clone(setup.Ops())
	var readerStats []stats
	for _, p := range procs {
		lines, err := p.wait(hc.duration + 2*time.Minute)
		require.NoError(t, err)
		got, err := coherence.Parse(lines)
		require.NoError(t, err)
		ops = append(ops, got...)
		st := p.stats(t, lines)
		if !(hc.syncrep && p.role == "coherence-writer") { // there writes time out, by design
			require.Zero(t, st.Errors, "%s: operations failed", p.name)
		}
		if p.role == "coherence-reader" {
			readerStats = append(readerStats, st)
		} else if hc.writeBehind > 0 {
			t.Logf("%s: write-behind: %d Sets queued, %d rows committed in %d batches, %d given up", p.name,
				st.Near.WritesQueued, st.Near.WritesCommitted, st.Near.WriteBatches, st.Near.WritesLost)
		}
	}
	loadAfter, _ := benchpair.LoadAverage()
	rep := coherence.Check(ops, bound+hc.writeBehind)
	for i, v := range rep.Violations {
		if i == 20 {
			t.Errorf("… and %d more", len(rep.Violations)-20)
			break
		}
		t.Error(v)
	}
	var hits, misses, unseen, restarts int64
	for _, st := range readerStats {
		hits += st.Near.Hits
		misses += st.Near.Misses
		unseen += st.Near.FillsUnseen
		restarts += st.Near.FeedRestarts
	}
	p50, p99, mx := rep.Quantiles()
	t.Logf("%s: %d reads, %d writes, %d own checks; %d behind the newest; staleness p50 %s p99 %s max %s; %d violations; hits %d misses %d unseen %d restarts %d",
		hc.name, rep.Reads, rep.Writes, rep.Own, rep.Behind(), p50, p99, mx, len(rep.Violations), hits, misses, unseen, restarts)
	if hc.readers > 0 {
		require.Greater(t, rep.Reads, 1000, "the readers read")
		require.Positive(t, hits, "some reads were served from memory")
		require.Greater(t, rep.Writes, len(hc.keys), "the writer wrote")
	} else {
		require.Greater(t, rep.Own, 100, "the own-writes process checked")
	}
	ratio := "–"
	if hits+misses > 0 {
		ratio = fmt.Sprintf("%.3f", float64(hits)/float64(hits+misses))
	}
	reads := rep.Reads
	if hc.readers == 0 {
		reads = rep.Own
	}
	return fmt.Sprintf("| %s | %d | %d | %s | %s | %s | %d | %s | %d | %d | %.1f–%.1f |\n", hc.name, reads, rep.Behind(),
		fmtDur(p50), fmtDur(p99), fmtDur(mx), len(rep.Violations), ratio, unseen, restarts, loadBefore, loadAfter)
}

func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	}
}

// collected is a process whose stdout lines are gathered as they come.
type collected struct {
	name, role string
	p          *dbtest.Process
	mu         sync.Mutex
	lines      []string
	ready      chan struct{}
	done       chan struct{}
}

func collect(t *testing.T, role string, j job) *collected {
	arg, err := json.Marshal(j)
	require.NoError(t, err)
	c := &collected{name: j.Proc, role: role, p: dbtest.Start(t, role, string(arg), true), ready: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		once := sync.Once{}
		for l := range c.p.Lines() {
			if l == "ready" {
				once.Do(func() { close(c.ready) })
				continue
			}
			c.mu.Lock()
			c.lines = append(c.lines, l)
			c.mu.Unlock()
		}
	}()
	return c
}

func (c *collected) waitReady(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case <-c.ready:
	case <-c.p.Done():
		_, err := c.p.Wait(time.Second)
		t.Fatalf("%s exited before it was ready: %v", c.name, err)
	case <-time.After(d):
		t.Fatalf("%s never got ready", c.name)
	}
}

func (c *collected) wait(d time.Duration) ([]string, error) {
	if _, err := c.p.Wait(d); err != nil {
		return nil, err
	}
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lines, nil
}

func (c *collected) stats(t *testing.T, lines []string) stats {
	t.Helper()
	for _, l := range slices.Backward(lines) {
		if rest, ok := strings.CutPrefix(l, "stats "); ok {
			var st stats
			require.NoError(t, json.Unmarshal([]byte(rest), &st))
			return st
		}
	}
	t.Fatalf("%s printed no stats", c.name)
	return stats{}
}

// A process killed (SIGKILL, no Close) leaves no replication slot behind:
// its feed's slot is temporary, and the server drops it with the session.
func TestKilledProcessLeavesNoSlot(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 3*time.Minute)
	schema := "coh_killed"
	ccfg, err := pgx.ParseConfig(server.URL(""))
	require.NoError(t, err)
	m, err := migrations.NewFromConnConfig(ccfg, &migrations.Config{Schema: schema})
	require.NoError(t, err)
	require.NoError(t, m.Up(ctx))
	u, err := url.Parse(server.URL(""))
	require.NoError(t, err)
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	pool, err := pgxpool.New(ctx, u.String())
	require.NoError(t, err)
	defer pool.Close()
	require.NoError(t, nearcache.Setup(ctx, pool, nil))
	// The reader waits at a barrier the test never releases.
	const barrierID = 7_2026_1203
	hold, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer hold.Release()
	_, err = hold.Exec(ctx, "SELECT pg_advisory_lock($1)", barrierID)
	require.NoError(t, err)
	p := collect(t, "coherence-reader", job{Case: "killed", Proc: "killed_reader", DSN: u.String(), Keys: keys("k", 3),
		Goroutines: 1, Duration: time.Minute, Bound: bound, Barrier: barrierID})
	p.waitReady(t, 3*time.Minute)
	var slot string
	require.NoError(t, pool.QueryRow(ctx, `SELECT s.slot_name FROM pg_replication_slots s
		JOIN pg_stat_activity a ON a.pid = s.active_pid WHERE a.application_name = 'coherence_killed_reader'`).Scan(&slot), "the reader's feed holds a slot")
	require.NoError(t, p.p.Signal(syscall.SIGKILL))
	<-p.p.Done()
	for {
		var exists bool
		require.NoError(t, pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)", slot).Scan(&exists))
		if !exists {
			return
		}
		require.True(t, sleepCtx(ctx, 20*time.Millisecond), "the killed process's slot %s was never dropped", slot)
	}
}
