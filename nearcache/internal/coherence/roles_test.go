package coherence_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/nearcache"
	"github.com/dbcache/dbcache/nearcache/internal/coherence"
)

// The processes of a history: writers and readers, each the test binary in
// a role, with its own pool, dbcache and (readers, and the own-writes
// writer) near cache. Each prints "ready", waits at a barrier (an advisory
// lock the test holds until every process is ready), runs its job for the
// job's duration, then prints its operations (coherence.Prefix lines) and
// a "stats" line.

// job is what a process is told.
type job struct {
	Case       string
	Proc       string
	DSN        string // the pool's: the case's schema as search_path
	ReplAddr   string // where the feed connects (a proxy), when not the DSN's server
	Keys       []string
	Goroutines int
	Duration   time.Duration
	Bound      time.Duration
	FeedTime   time.Duration // Config.FeedTimeout; 0 for the default
	FastCommit bool
	OpTimeout  time.Duration
	// WriteBehind, when positive, is the writer's WriteBehind.MaxDelay:
	// it writes through a write-behind near cache.
	WriteBehind time.Duration
	Barrier     int64
}

// stats is a process's last line.
type stats struct {
	Near   nearcache.Stats
	Errors int64
}

func init() {
	dbtest.Role("coherence-reader", func(ctx context.Context, arg string) error { return runProc(ctx, arg, true) })
	dbtest.Role("coherence-writer", func(ctx context.Context, arg string) error { return runProc(ctx, arg, false) })
}

// env is a process's connections.
type procEnv struct {
	job   job
	pool  *pgxpool.Pool
	cache *dbcache.Cache
	near  *nearcache.Cache
	rec   *coherence.Recorder
	errs  int64
	errMu sync.Mutex
}

func (e *procEnv) failed(err error) {
	e.errMu.Lock()
	e.errs++
	n := e.errs
	e.errMu.Unlock()
	if n <= 5 {
		fmt.Fprintf(os.Stderr, "%s: %v\n", e.job.Proc, err)
	}
}

func runProc(ctx context.Context, arg string, isReader bool) error {
	body := writer
	if isReader {
		body = reader
	}
	var j job
	if err := json.Unmarshal([]byte(arg), &j); err != nil {
		return err
	}
	pcfg, err := pgxpool.ParseConfig(j.DSN)
	if err != nil {
		return err
	}
	pcfg.MaxConns = int32(j.Goroutines + 4)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	opTimeout := j.OpTimeout
	if opTimeout == 0 {
		opTimeout = 10 * time.Second
	}
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{FastCommit: j.FastCommit, OpTimeout: opTimeout})
	if err != nil {
		return err
	}
	defer cache.Close()
	e := &procEnv{job: j, pool: pool, cache: cache, rec: coherence.NewRecorder(j.Proc)}
	if j.Case == "own" || isReader || j.WriteBehind > 0 {
		rc := pool.Config().ConnConfig.Config.Copy()
		rc.RuntimeParams["application_name"] = "coherence_" + j.Proc
		if j.ReplAddr != "" {
			host, port, err := net.SplitHostPort(j.ReplAddr)
			if err != nil {
				return err
			}
			p, _ := strconv.Atoi(port)
			rc.Host, rc.Port = host, uint16(p)
			rc.Fallbacks = nil
		}
		cfg := &nearcache.Config{MaxStaleness: j.Bound, FeedTimeout: j.FeedTime, Replication: rc,
			Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
		if j.WriteBehind > 0 && !isReader {
			cfg.WriteBehind = &nearcache.WriteBehind{MaxDelay: j.WriteBehind}
		}
		if e.near, err = nearcache.New(ctx, cache, pool, cfg); err != nil {
			return err
		}
		defer e.near.Close()
	}
	if isReader {
		// Every key read once: copies held from the start.
		for _, k := range j.Keys {
			_, _ = e.near.Get(ctx, k)
		}
	}
	fmt.Println("ready")
	if err := barrier(ctx, pool, j.Barrier); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, j.Duration)
	defer cancel()
	if err := body(ctx, e); err != nil {
		return err
	}
	if e.near != nil && j.WriteBehind > 0 {
		// What is queued is committed before the stats are taken.
		fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		err := e.near.Flush(fctx)
		fcancel()
		if err != nil {
			return err
		}
	}
	if _, err := e.rec.WriteTo(os.Stdout); err != nil {
		return err
	}
	st := stats{Errors: e.errs}
	if e.near != nil {
		st.Near = e.near.Stats()
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	fmt.Printf("stats %s\n", b)
	return nil
}

// barrier waits until the test releases its advisory lock.
func barrier(ctx context.Context, pool *pgxpool.Pool, id int64) error {
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

// each runs f on every goroutine until ctx ends.
func each(ctx context.Context, e *procEnv, f func(g int, r *rand.Rand)) {
	var wg sync.WaitGroup
	for g := range e.job.Goroutines {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), uint64(os.Getpid())))
			for ctx.Err() == nil {
				f(g, r)
			}
		})
	}
	wg.Wait()
}

// pause sleeps up to d, or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// opCtx is the context of one operation: not ended by the run's end, so
// that a write is never cut short by it (its outcome would be unknown for
// no reason).
func opCtx(ctx context.Context) context.Context { return context.WithoutCancel(ctx) }

// reader reads keys through the near cache: Get mostly, GetMany and
// HasKey too.
func reader(ctx context.Context, e *procEnv) error {
	keys := e.job.Keys
	each(ctx, e, func(_ int, r *rand.Rand) {
		oc := opCtx(ctx)
		switch n := r.IntN(20); {
		case n == 0:
			k := keys[r.IntN(len(keys))]
			s := coherence.Now()
			ok, err := e.near.HasKey(oc, k)
			end := coherence.Now()
			if err != nil {
				e.failed(err)
				return
			}
			e.rec.Add(coherence.Op{Kind: coherence.Read, Key: k, Present: ok, Absent: !ok, Start: s, End: end})
		case n <= 2:
			ks := []string{keys[r.IntN(len(keys))], keys[r.IntN(len(keys))], keys[r.IntN(len(keys))]}
			s := coherence.Now()
			got, err := e.near.GetMany(oc, ks)
			end := coherence.Now()
			if err != nil {
				e.failed(err)
				return
			}
			seen := map[string]bool{}
			for _, k := range ks {
				if seen[k] {
					continue
				}
				seen[k] = true
				v, ok := got[k]
				e.rec.Add(coherence.Op{Kind: coherence.Read, Key: k, Value: string(v), Absent: !ok, Start: s, End: end})
			}
		default:
			k := keys[r.IntN(len(keys))]
			s := coherence.Now()
			v, err := e.near.Get(oc, k)
			end := coherence.Now()
			switch {
			case errors.Is(err, dbcache.ErrMiss):
				e.rec.Add(coherence.Op{Kind: coherence.Read, Key: k, Absent: true, Start: s, End: end})
			case err != nil:
				e.failed(err)
				return
			default:
				e.rec.Add(coherence.Op{Kind: coherence.Read, Key: k, Value: string(v), Start: s, End: end})
			}
		}
		pause(ctx, time.Duration(r.IntN(800))*time.Microsecond)
	})
	return nil
}

// owned is the keys goroutine g of n writes.
func owned(keys []string, g, n int) []string {
	var out []string
	for i, k := range keys {
		if i%n == g {
			out = append(out, k)
		}
	}
	return out
}

func outcome(err error) coherence.Outcome {
	if err != nil {
		return coherence.Unknown
	}
	return coherence.OK
}

// writer writes as its case says.
func writer(ctx context.Context, e *procEnv) error {
	switch e.job.Case {
	case "durable", "fastcommit", "syncrep", "feedstall", "writebehind":
		return writeCounts(ctx, e)
	case "rawsql":
		return writeSQL(ctx, e)
	case "clear", "deleteprefix":
		return writeClears(ctx, e)
	case "incrversion":
		return writeVersions(ctx, e)
	case "touch", "ttl":
		return writeExpiries(ctx, e)
	case "own":
		return writeOwn(ctx, e)
	}
	return fmt.Errorf("no case %q", e.job.Case)
}

// counter is a goroutine's next value of each of its keys: values only
// grow, so a value names its write.
type counter map[string]int

func (c counter) next(k string) string {
	c[k]++
	return strconv.Itoa(c[k])
}

// set records a Set of v.
func (e *procEnv) set(ctx context.Context, k, v string, timeout dbcache.Timeout) {
	var store dbcache.Store = e.cache
	if e.job.WriteBehind > 0 {
		store = e.near // a Set returns once queued
	}
	s := coherence.Now()
	err := store.Set(opCtx(ctx), k, []byte(v), timeout)
	end := coherence.Now()
	op := coherence.Op{Kind: coherence.Write, Key: k, Value: v, Start: s, End: end, Outcome: outcome(err)}
	if d, ok := timeout.Duration(); ok {
		op.TTL = int64(d)
	}
	e.rec.Add(op)
	if err != nil {
		e.failed(err)
	}
}

// writeCounts stores increasing integers in each goroutine's keys.
func writeCounts(ctx context.Context, e *procEnv) error {
	cs := make([]counter, e.job.Goroutines)
	for g := range cs {
		cs[g] = counter{}
	}
	each(ctx, e, func(g int, r *rand.Rand) {
		own := owned(e.job.Keys, g, e.job.Goroutines)
		k := own[r.IntN(len(own))]
		e.set(ctx, k, cs[g].next(k), dbcache.Forever)
		pause(ctx, time.Duration(r.IntN(3000))*time.Microsecond)
	})
	return nil
}

// writeSQL changes entries as an operator's or another application's SQL
// does: two keys updated in one transaction, deletes, upserts.
func writeSQL(ctx context.Context, e *procEnv) error {
	cs := make([]counter, e.job.Goroutines)
	for g := range cs {
		cs[g] = counter{}
	}
	made := func(k string) string { return e.cache.MakeKey(k) }
	each(ctx, e, func(g int, r *rand.Rand) {
		own := owned(e.job.Keys, g, e.job.Goroutines)
		oc := opCtx(ctx)
		switch n := r.IntN(10); {
		case n < 6: // two keys in one transaction, locked in key order
			a, b := own[r.IntN(len(own))], own[r.IntN(len(own))]
			if a == b {
				return
			}
			if made(a) > made(b) {
				a, b = b, a
			}
			va, vb := cs[g].next(a), cs[g].next(b)
			s := coherence.Now()
			err := pgx.BeginFunc(oc, e.pool, func(tx pgx.Tx) error {
				for _, kv := range [][2]string{{a, va}, {b, vb}} {
					if _, err := tx.Exec(oc, `INSERT INTO dbcache_entries (key, value, expires) VALUES ($1, $2, NULL)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = NULL`, made(kv[0]), []byte(kv[1])); err != nil {
						return err
					}
				}
				return nil
			})
			end := coherence.Now()
			for _, kv := range [][2]string{{a, va}, {b, vb}} {
				e.rec.Add(coherence.Op{Kind: coherence.Write, Key: kv[0], Value: kv[1], Start: s, End: end, Outcome: outcome(err)})
			}
			if err != nil {
				e.failed(err)
			}
		case n < 8: // an UPDATE of the value alone
			k := own[r.IntN(len(own))]
			v := cs[g].next(k)
			s := coherence.Now()
			tag, err := e.pool.Exec(oc, `UPDATE dbcache_entries SET value = $2 WHERE key = $1`, made(k), []byte(v))
			end := coherence.Now()
			if err == nil && tag.RowsAffected() == 0 {
				return // absent: nothing written (the next upsert writes a value again)
			}
			e.rec.Add(coherence.Op{Kind: coherence.Write, Key: k, Value: v, Start: s, End: end, Outcome: outcome(err)})
		default: // a DELETE
			k := own[r.IntN(len(own))]
			s := coherence.Now()
			_, err := e.pool.Exec(oc, `DELETE FROM dbcache_entries WHERE key = $1`, made(k))
			end := coherence.Now()
			e.rec.Add(coherence.Op{Kind: coherence.Write, Key: k, Absent: true, Start: s, End: end, Outcome: outcome(err)})
		}
		pause(ctx, time.Duration(r.IntN(3000))*time.Microsecond)
	})
	return nil
}

// writeClears sets every key, then clears (Clear) or deletes a prefix
// (DeletePrefix) of them, over and over, on one goroutine.
func writeClears(ctx context.Context, e *procEnv) error {
	r := rand.New(rand.NewPCG(1, uint64(os.Getpid())))
	round := 0
	for ctx.Err() == nil {
		round++
		v := strconv.Itoa(round)
		items := map[string][]byte{}
		for _, k := range e.job.Keys {
			items[k] = []byte(v)
		}
		s := coherence.Now()
		_, err := e.cache.SetMany(opCtx(ctx), items, dbcache.Forever)
		end := coherence.Now()
		for _, k := range e.job.Keys {
			e.rec.Add(coherence.Op{Kind: coherence.Write, Key: k, Value: v, Start: s, End: end, Outcome: outcome(err)})
		}
		pause(ctx, time.Duration(50+r.IntN(300))*time.Millisecond)
		if ctx.Err() != nil {
			break
		}
		gone := e.job.Keys
		s = coherence.Now()
		if e.job.Case == "clear" {
			err = e.cache.Clear(opCtx(ctx))
		} else {
			prefix := []string{"a:", "b:"}[round%2]
			gone = nil
			for _, k := range e.job.Keys {
				if k[:2] == prefix {
					gone = append(gone, k)
				}
			}
			_, err = e.cache.DeletePrefix(opCtx(ctx), prefix)
		}
		end = coherence.Now()
		for _, k := range gone {
			e.rec.Add(coherence.Op{Kind: coherence.Write, Key: k, Absent: true, Start: s, End: end, Outcome: outcome(err)})
		}
		pause(ctx, time.Duration(50+r.IntN(300))*time.Millisecond)
	}
	return nil
}

// writeVersions sets keys and moves them to version 2 (IncrVersion): the
// readers, at version 1, must see them gone.
func writeVersions(ctx context.Context, e *procEnv) error {
	cs := make([]counter, e.job.Goroutines)
	for g := range cs {
		cs[g] = counter{}
	}
	v2 := e.cache.WithVersion(2)
	each(ctx, e, func(g int, r *rand.Rand) {
		own := owned(e.job.Keys, g, e.job.Goroutines)
		k := own[r.IntN(len(own))]
		e.set(ctx, k, cs[g].next(k), dbcache.Forever)
		pause(ctx, time.Duration(r.IntN(100))*time.Millisecond)
		s := coherence.Now()
		_, err := e.cache.IncrVersion(opCtx(ctx), k, 1)
		end := coherence.Now()
		e.rec.Add(coherence.Op{Kind: coherence.Write, Key: k, Absent: true, Start: s, End: end, Outcome: outcome(err)})
		if err != nil {
			e.failed(err)
		}
		_, _ = v2.Delete(opCtx(ctx), k)
		pause(ctx, time.Duration(r.IntN(100))*time.Millisecond)
	})
	return nil
}

// writeExpiries writes entries that expire: with a TTL (ttl), or by a
// Touch that shortens a lifetime (touch), each followed by no write of the
// key until it has expired.
func writeExpiries(ctx context.Context, e *procEnv) error {
	cs := make([]counter, e.job.Goroutines)
	for g := range cs {
		cs[g] = counter{}
	}
	each(ctx, e, func(g int, r *rand.Rand) {
		own := owned(e.job.Keys, g, e.job.Goroutines)
		k := own[r.IntN(len(own))]
		d := time.Duration(100+r.IntN(300)) * time.Millisecond
		if e.job.Case == "ttl" {
			e.set(ctx, k, cs[g].next(k), dbcache.ExpiresIn(d))
		} else {
			e.set(ctx, k, cs[g].next(k), dbcache.Forever)
			pause(ctx, time.Duration(50+r.IntN(200))*time.Millisecond)
			s := coherence.Now()
			_, err := e.cache.Touch(opCtx(ctx), k, dbcache.ExpiresIn(d))
			end := coherence.Now()
			e.rec.Add(coherence.Op{Kind: coherence.Touch, Key: k, TTL: int64(d), Start: s, End: end, Outcome: outcome(err)})
		}
		// No write of the key until it has surely expired.
		time.Sleep(d + 50*time.Millisecond)
	})
	return nil
}

// writeOwn is one process writing a key through its own near cache from
// three goroutines at once (Set, Delete, Incr), then, once all three have
// returned, reading it through the layer and from the database: with no
// other writer the two must agree, whatever the interleaving.
func writeOwn(ctx context.Context, e *procEnv) error {
	round := 0
	var mu sync.Mutex
	each(ctx, e, func(g int, r *rand.Rand) {
		own := owned(e.job.Keys, g, e.job.Goroutines)
		k := own[r.IntN(len(own))]
		oc := opCtx(ctx)
		mu.Lock()
		round++
		v := strconv.Itoa(round * 10)
		mu.Unlock()
		if r.IntN(2) == 0 {
			_, _ = e.near.Get(oc, k) // a copy to go stale
		}
		var wg sync.WaitGroup
		for w := range 3 {
			delay := time.Duration(r.IntN(300)) * time.Microsecond
			wg.Go(func() {
				time.Sleep(delay)
				switch w {
				case 0:
					_ = e.near.Set(oc, k, []byte(v), dbcache.Forever)
				case 1:
					_, _ = e.near.Delete(oc, k)
				case 2:
					_, _ = e.near.Incr(oc, k, 1)
				}
			})
		}
		wg.Wait()
		s := coherence.Now()
		got, err := e.near.Get(oc, k)
		op := coherence.Op{Kind: coherence.Own, Key: k, Value: string(got), Absent: errors.Is(err, dbcache.ErrMiss), Start: s}
		if err != nil && !op.Absent {
			e.failed(err)
			return
		}
		db, err := e.cache.Get(oc, k)
		op.End = coherence.Now()
		op.DBValue, op.DBAbsent = string(db), errors.Is(err, dbcache.ErrMiss)
		if err != nil && !op.DBAbsent {
			e.failed(err)
			return
		}
		e.rec.Add(op)
	})
	return nil
}
