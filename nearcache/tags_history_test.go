package nearcache_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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
	"github.com/dbcache/dbcache/tags"
)

// The history tests: writer processes write tagged entries and invalidate
// their tags while reader processes read them, each the test binary in a
// role with its own pool and caches, sharing nothing but the database.
// Every operation is recorded with its start and end (internal/coherence)
// and the history is checked: no read returns a value older than a write
// or an invalidation that returned more than the bound before the read
// began (0 over the cache itself; the near cache's MaxStaleness through
// it), nor a value no write had begun to store.

// histJob is what a process is told.
type histJob struct {
	Proc       string
	DSN        string
	Keys       []string // every key, for readers
	Groups     int      // writers: goroutines, each with its group of keys
	Goroutines int      // readers
	Duration   time.Duration
	Near       bool // readers: through a near cache
	NoOrigin   bool // readers through a near cache: without Config.Origin
	Bound      time.Duration
	Barrier    int64
}

// groupKeys are the keys of writer proc's goroutine g: each carries the
// group's tag and a tag of its own.
func groupKeys(proc string, g int) []string {
	out := make([]string, 4)
	for i := range out {
		out[i] = fmt.Sprintf("%s.g%d.k%d", proc, g, i)
	}
	return out
}

func groupTag(key string) string { return key[:strings.LastIndex(key, ".")] }

func init() {
	dbtest.Role("tags-writer", func(ctx context.Context, arg string) error { return runHist(ctx, arg, false) })
	dbtest.Role("tags-reader", func(ctx context.Context, arg string) error { return runHist(ctx, arg, true) })
}

func runHist(ctx context.Context, arg string, reader bool) error {
	var j histJob
	if err := json.Unmarshal([]byte(arg), &j); err != nil {
		return err
	}
	pcfg, err := pgxpool.ParseConfig(j.DSN)
	if err != nil {
		return err
	}
	pcfg.MaxConns = int32(max(j.Groups, j.Goroutines) + 4)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{OpTimeout: 20 * time.Second})
	if err != nil {
		return err
	}
	defer cache.Close()
	var store dbcache.Store = cache
	var near *nearcache.Cache
	if j.Near { // readers; writers too when told
		if near, err = nearcache.New(ctx, cache, pool, &nearcache.Config{MaxStaleness: j.Bound}); err != nil {
			return err
		}
		defer near.Close()
		store = near
	}
	var tcfg *tags.Config
	if near != nil && !j.NoOrigin {
		tcfg = &tags.Config{Origin: cache}
	}
	tc, err := tags.New(store, tcfg)
	if err != nil {
		return err
	}
	rec := coherence.NewRecorder(j.Proc)
	var failures atomic.Int64
	failed := func(err error) {
		if failures.Add(1) <= 5 {
			fmt.Fprintf(os.Stderr, "%s: %v\n", j.Proc, err)
		}
	}
	if reader {
		for _, k := range j.Keys { // copies held from the start
			_, _ = tc.Get(ctx, k)
		}
	}
	fmt.Println("ready")
	if err := histBarrier(ctx, pool, j.Barrier); err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, j.Duration)
	defer cancel()
	oc := context.WithoutCancel(rctx) // an operation is never cut short by the run's end
	var wg sync.WaitGroup
	if reader {
		for g := range j.Goroutines {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(g), uint64(os.Getpid())))
				for rctx.Err() == nil {
					readOnce(oc, tc, rec, j.Keys, r, failed)
					histPause(rctx, time.Duration(r.IntN(500))*time.Microsecond)
				}
			})
		}
	} else {
		for g := range j.Groups {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(g), uint64(os.Getpid())))
				own := groupKeys(j.Proc, g)
				carries := map[string]bool{}
				n := 0
				for rctx.Err() == nil {
					n++
					writeOnce(oc, tc, rec, own, carries, fmt.Sprintf("%s.%d.%d", j.Proc, g, n), r, failed)
					histPause(rctx, time.Duration(r.IntN(2000))*time.Microsecond)
				}
			})
		}
	}
	wg.Wait()
	if _, err := rec.WriteTo(os.Stdout); err != nil {
		return err
	}
	hits := int64(0)
	if near != nil {
		hits = near.Stats().Hits
	}
	fmt.Printf("stats %d %d\n", failures.Load(), hits)
	return nil
}

// readOnce reads one key (Get) or three (GetMany) and records what it got.
func readOnce(ctx context.Context, tc *tags.Cache, rec *coherence.Recorder, keys []string, r *rand.Rand, failed func(error)) {
	if r.IntN(5) == 0 {
		ks := []string{keys[r.IntN(len(keys))], keys[r.IntN(len(keys))], keys[r.IntN(len(keys))]}
		s := coherence.Now()
		got, err := tc.GetMany(ctx, ks)
		end := coherence.Now()
		if err != nil {
			failed(err)
			return
		}
		seen := map[string]bool{}
		for _, k := range ks {
			if !seen[k] {
				seen[k] = true
				v, ok := got[k]
				rec.Add(coherence.Op{Kind: coherence.Read, Key: k, Value: string(v), Absent: !ok, Start: s, End: end})
			}
		}
		return
	}
	k := keys[r.IntN(len(keys))]
	s := coherence.Now()
	v, err := tc.Get(ctx, k)
	end := coherence.Now()
	switch {
	case errors.Is(err, dbcache.ErrMiss):
		rec.Add(coherence.Op{Kind: coherence.Read, Key: k, Absent: true, Start: s, End: end})
	case err != nil:
		failed(err)
	default:
		rec.Add(coherence.Op{Kind: coherence.Read, Key: k, Value: string(v), Start: s, End: end})
	}
}

// writeOnce writes one of a group's keys with its own tag, mostly the
// group's tag and sometimes a third, invalidates the group's tag (every
// key of the group that carries it absent), a key's own tag, or deletes
// a key. carries is, per key, whether its entry carries the group's tag.
func writeOnce(ctx context.Context, tc *tags.Cache, rec *coherence.Recorder, own []string, carries map[string]bool, value string, r *rand.Rand, failed func(error)) {
	k := own[r.IntN(len(own))]
	outcome := func(err error) coherence.Outcome {
		if err != nil {
			failed(err)
			return coherence.Unknown
		}
		return coherence.OK
	}
	s := coherence.Now()
	switch n := r.IntN(20); {
	case n < 13:
		ts := []string{"own:" + k}
		group := r.IntN(3) > 0
		if group {
			ts = append(ts, groupTag(k))
		}
		if r.IntN(3) == 0 {
			ts = append(ts, "extra:"+k)
		}
		err := tc.Set(ctx, k, []byte(value), dbcache.Forever, ts...)
		rec.Add(coherence.Op{Kind: coherence.Write, Key: k, Value: value, Start: s, End: coherence.Now(), Outcome: outcome(err)})
		carries[k] = group || err != nil // unknown: count it as carrying
	case n < 16:
		err := tc.Invalidate(ctx, groupTag(k))
		end := coherence.Now()
		o := outcome(err)
		for _, gk := range own {
			if carries[gk] {
				rec.Add(coherence.Op{Kind: coherence.Write, Key: gk, Absent: true, Start: s, End: end, Outcome: o})
			}
		}
	case n < 19:
		err := tc.Invalidate(ctx, "own:"+k)
		rec.Add(coherence.Op{Kind: coherence.Write, Key: k, Absent: true, Start: s, End: coherence.Now(), Outcome: outcome(err)})
	default:
		err := tc.Delete(ctx, k)
		rec.Add(coherence.Op{Kind: coherence.Write, Key: k, Absent: true, Start: s, End: coherence.Now(), Outcome: outcome(err)})
	}
}

func histBarrier(ctx context.Context, pool *pgxpool.Pool, id int64) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock_shared($1)", id); err != nil {
		return err
	}
	_, err = conn.Exec(ctx, "SELECT pg_advisory_unlock_shared($1)", id)
	return err
}

func histPause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// histProc is a started process whose stdout is gathered.
type histProc struct {
	name  string
	p     *dbtest.Process
	ready chan struct{}
	done  chan struct{}
	lines []string
}

func startHist(t *testing.T, role string, j histJob) *histProc {
	arg, err := json.Marshal(j)
	require.NoError(t, err)
	h := &histProc{name: j.Proc, p: dbtest.Start(t, role, string(arg), true), ready: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		var once sync.Once
		for l := range h.p.Lines() {
			if l == "ready" {
				once.Do(func() { close(h.ready) })
				continue
			}
			h.lines = append(h.lines, l)
		}
	}()
	return h
}

// historyRun is a history's outcome.
type historyRun struct {
	rep        *coherence.Report
	hits       int64
	load0, ld1 float64
}

// runHistory runs 2 writer processes (4 groups each) and 2 reader
// processes (4 goroutines each) on dsn, and checks their history with
// bound.
func runHistory(t *testing.T, dsn string, near, noOrigin, nearWriters bool, bound, d time.Duration) *historyRun {
	ctx := ctxT(t)
	pool, err := pgxpool.New(ctx, dsn)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	h := fnv.New64a()
	h.Write([]byte(t.Name() + dsn))
	barrier := int64(h.Sum64() >> 2)
	hold, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer hold.Release()
	_, err = hold.Exec(ctx, "SELECT pg_advisory_lock($1)", barrier)
	require.NoError(t, err)

	var keys []string
	for _, w := range []string{"w0", "w1"} {
		for g := range 4 {
			keys = append(keys, groupKeys(w, g)...)
		}
	}
	var procs []*histProc
	for _, w := range []string{"w0", "w1"} {
		procs = append(procs, startHist(t, "tags-writer", histJob{Proc: w, DSN: dsn, Groups: 4, Duration: d, Barrier: barrier,
			Near: nearWriters, Bound: bound}))
	}
	for _, r := range []string{"r0", "r1"} {
		procs = append(procs, startHist(t, "tags-reader", histJob{Proc: r, DSN: dsn, Keys: keys, Goroutines: 4, Duration: d,
			Near: near, NoOrigin: noOrigin, Bound: bound, Barrier: barrier}))
	}
	for _, p := range procs {
		select {
		case <-p.ready:
		case <-p.p.Done():
			_, err := p.p.Wait(time.Second)
			t.Fatalf("%s exited before it was ready: %v", p.name, err)
		case <-time.After(2 * time.Minute):
			t.Fatalf("%s never got ready", p.name)
		}
	}
	_, err = hold.Exec(ctx, "SELECT pg_advisory_unlock($1)", barrier)
	require.NoError(t, err)
	run := &historyRun{}
	run.load0, _ = benchpair.LoadAverage()
	var ops []coherence.Op
	for _, p := range procs {
		_, err := p.p.Wait(d + 2*time.Minute)
		require.NoError(t, err)
		<-p.done
		got, err := coherence.Parse(p.lines)
		require.NoError(t, err)
		ops = append(ops, got...)
		i := slices.IndexFunc(p.lines, func(l string) bool { return strings.HasPrefix(l, "stats ") })
		require.GreaterOrEqual(t, i, 0, "%s printed no stats", p.name)
		var failures, hits int64
		_, err = fmt.Sscanf(p.lines[i], "stats %d %d", &failures, &hits)
		require.NoError(t, err)
		require.Zero(t, failures, "%s: operations failed", p.name)
		run.hits += hits
	}
	run.ld1, _ = benchpair.LoadAverage()
	run.rep = coherence.Check(ops, bound)
	// Through a near cache, reads are not monotonic (an entry read from
	// Origin or the store is newer than a copy a later read is served,
	// within the bound), and without Origin a read can miss when its
	// entry is newer than the near cache's copy of a tag's version (a
	// miss the model calls stale or not monotonic: no value is). Every
	// other violation fails: a stale or impossible value, a miss through
	// Origin older than the bound allows.
	var monotonic, spurious, failed int
	for _, v := range run.rep.Violations {
		switch {
		case near && v.What == "monotonic":
			monotonic++
			continue
		case near && noOrigin && v.What == "stale" && v.Op.Absent:
			spurious++
			continue
		}
		if failed++; failed <= 20 {
			t.Error(v)
		}
	}
	p50, p99, mx := run.rep.Quantiles()
	if near {
		t.Logf("origin %v: %d reads not monotonic, %d misses of entries newer than a version's copy", !noOrigin, monotonic, spurious)
	}
	t.Logf("%d reads, %d writes and invalidations; %d behind the newest; staleness p50 %s p99 %s max %s; %d violations failed; near-cache hits %d; load average %.1f-%.1f",
		run.rep.Reads, run.rep.Writes, run.rep.Behind(), p50, p99, mx, failed, run.hits, run.load0, run.ld1)
	require.Greater(t, run.rep.Reads, 500, "the readers read")
	require.Greater(t, run.rep.Writes, 200, "the writers wrote")
	absentReads := 0
	for _, op := range ops {
		if op.Kind == coherence.Read && op.Absent {
			absentReads++
		}
	}
	require.Positive(t, absentReads, "some reads saw an invalidation")
	return run
}

// TestTagsProcessesInvalidate: over the cache itself, bound 0: once an
// Invalidate has returned, no read begun afterwards, in any process,
// returns an entry written before it; and no read returns a value older
// than a write that had returned before it began. Run on every test
// profile (.ci/run runs the package on ICU and repeatable-read databases).
func TestTagsProcessesInvalidate(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	runHistory(t, s.DSN(t), false, false, false, 0, 6*time.Second)
}

// TestTagsNearCacheInvalidate: readers through near caches (bound
// MaxStaleness), writers through the cache, with Config.Origin and
// without, then writers through near caches with Origin too: an invalidated tag's entries are misses in every reader within
// the staleness bound, and no read returns a value older than the bound
// allows or one never written, checked from the history. Through Origin
// no miss is older than the bound allows either; without it a read can
// miss an entry newer than the near cache's copy of its tag's version.
func TestTagsNearCacheInvalidate(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	srv, err := pgserver.Start(ctx, pgserver.Config{Kind: pgserver.Installed, Database: "tags_near", Settings: logicalSettings})
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Remove(context.Background()) })
	bound := 500 * time.Millisecond
	for _, c := range []struct {
		schema                string
		noOrigin, nearWriters bool
	}{
		{"tags_near_origin", false, false},
		{"tags_near_no_origin", true, false},
		{"tags_near_writers", false, true}, // the writers through near caches with Origin too
	} {
		schema := c.schema
		ccfg, err := pgx.ParseConfig(srv.URL(""))
		require.NoError(t, err)
		m, err := migrations.NewFromConnConfig(ccfg, &migrations.Config{Schema: schema})
		require.NoError(t, err)
		require.NoError(t, m.Up(ctx))
		u, err := url.Parse(srv.URL(""))
		require.NoError(t, err)
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		pool, err := pgxpool.New(ctx, u.String())
		require.NoError(t, err)
		require.NoError(t, nearcache.Setup(ctx, pool, nil))
		pool.Close()
		run := runHistory(t, u.String(), true, c.noOrigin, c.nearWriters, bound, 8*time.Second)
		require.Positive(t, run.hits, "some reads were served from memory")
	}
}
