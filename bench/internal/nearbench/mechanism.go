package nearbench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/quantile"
	"github.com/dbcache/dbcache/nearcache"
)

// The two invalidation mechanisms measured:
//
//   - logical: the near cache's own feed (logical decoding of the table
//     through a temporary slot; nothing added to the write path);
//   - notify: a trigger on the table that calls pg_notify(channel, key)
//     for every changed row, and a LISTEN connection in the reader. Not
//     part of the library: it is built here only to be measured.
//
// For each, with durable writes and with FastCommit: the time from a
// write's return in one process to its invalidation's arrival in another
// (p50, p99, max, every write of a busy run), and the writers' throughput
// at each concurrency with the mechanism on against off.

const (
	mechLogical = "logical decoding"
	mechNotify  = "LISTEN/NOTIFY trigger"
	notifyChan  = "dbcache_near_bench"
)

// The trigger the notify mechanism needs (in the env's schema).
const (
	qNotifyFunc = `CREATE OR REPLACE FUNCTION %[1]s.dbcache_near_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN PERFORM pg_notify('` + notifyChan + `', OLD.key);
  ELSE PERFORM pg_notify('` + notifyChan + `', NEW.key); END IF;
  RETURN NULL;
END $$`
	qNotifyTrigger = `CREATE TRIGGER dbcache_near_notify AFTER INSERT OR UPDATE OR DELETE ON %[1]s.dbcache_entries
FOR EACH ROW EXECUTE FUNCTION %[1]s.dbcache_near_notify()`
	qTriggerOn  = `ALTER TABLE %[1]s.dbcache_entries ENABLE TRIGGER dbcache_near_notify`
	qTriggerOff = `ALTER TABLE %[1]s.dbcache_entries DISABLE TRIGGER dbcache_near_notify`
)

// arrivals records when each stored key's invalidation arrived.
type arrivals struct {
	mu sync.Mutex
	at map[string]time.Time
}

func (a *arrivals) note(key string) {
	now := time.Now()
	a.mu.Lock()
	if _, ok := a.at[key]; !ok {
		a.at[key] = now
	}
	a.mu.Unlock()
}

func (a *arrivals) get(key string) (time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, ok := a.at[key]
	return t, ok
}

// Mechanisms measures both mechanisms and prints two tables.
func Mechanisms(ctx context.Context, o *Options) error {
	e, err := newEnv(ctx, o, "mech")
	if err != nil {
		return err
	}
	defer e.close()
	sch := pgx.Identifier{e.schema}.Sanitize()
	for _, q := range []string{qNotifyFunc, qNotifyTrigger, qTriggerOff} {
		if _, err := e.admin.Exec(ctx, fmt.Sprintf(q, sch)); err != nil {
			return err
		}
	}
	if err := e.fill(ctx, o.Keys, o.ValueSize); err != nil {
		return err
	}
	wpool, err := e.pool(ctx, o.MaxConns)
	if err != nil {
		return err
	}
	defer wpool.Close()
	rpool, err := e.pool(ctx, 4)
	if err != nil {
		return err
	}
	defer rpool.Close()

	fmt.Fprintf(o.Out, "### Invalidation latency\n\nFrom a write's return in one process to its invalidation's arrival in another: every write of a %s run of %d goroutines writing as fast as they can (100-byte values over %d keys), on loopback. Load average %s at the start.\n\n",
		o.LatencyDuration, o.LatencyWriters, o.Keys, load())
	fmt.Fprintln(o.Out, "| mechanism | writes | writes measured | p50 | p99 | max | lost | load avg |")
	fmt.Fprintln(o.Out, "|---|---|---|---|---|---|---|---|")
	for _, fast := range []bool{false, true} {
		writer, err := dbcache.New(ctx, wpool, &dbcache.Config{FastCommit: fast, KeyCheck: dbcache.KeyCheckOff})
		if err != nil {
			return err
		}
		mode := "durable"
		if fast {
			mode = "FastCommit"
		}
		for _, mech := range []string{mechLogical, mechNotify} {
			o.logf("latency: %s, %s", mech, mode)
			res, err := latency(ctx, o, e, writer, rpool, mech)
			if err != nil {
				return fmt.Errorf("latency %s %s: %w", mech, mode, err)
			}
			p50, p99, mx := quantile.Percentile(res.lat, 50), quantile.Percentile(res.lat, 99), quantile.Percentile(res.lat, 100)
			fmt.Fprintf(o.Out, "| %s, %s | %d | %d | %s | %s | %s | %d | %s |\n", mech, mode, res.writes, len(res.lat), fmtDur(p50), fmtDur(p99), fmtDur(mx), res.lost, load())
		}
	}

	fmt.Fprintf(o.Out, "\n### What each mechanism costs the writers\n\nSets of 100-byte values over %d keys (uniform), ops/s with the mechanism on and off, %s per side per cell in %d interleaved rounds. Logical decoding on: a near cache's feed streaming (and its heartbeats); off: none (the server keeps wal_level = logical throughout). LISTEN/NOTIFY on: the trigger enabled and a listener connected; off: the trigger disabled.\n\n",
		o.Keys, o.Duration, o.Rounds)
	fmt.Fprintln(o.Out, "| mechanism | commit | goroutines | on | off | on ÷ off | load avg |")
	fmt.Fprintln(o.Out, "|---|---|---|---|---|---|---|")
	for _, fast := range []bool{false, true} {
		writer, err := dbcache.New(ctx, wpool, &dbcache.Config{FastCommit: fast, KeyCheck: dbcache.KeyCheckOff})
		if err != nil {
			return err
		}
		mode := "durable"
		if fast {
			mode = "FastCommit"
		}
		for _, mech := range []string{mechLogical, mechNotify} {
			for _, g := range o.Concurrency {
				o.logf("write cost: %s, %s, %d goroutines", mech, mode, g)
				on, off, err := writeCost(ctx, o, e, writer, rpool, mech, g)
				if err != nil {
					return fmt.Errorf("write cost %s %s: %w", mech, mode, err)
				}
				fmt.Fprintf(o.Out, "| %s | %s | %d | %s | %s | %.2f× | %s |\n", mech, mode, g, fmtRate(on), fmtRate(off), on/off, load())
			}
		}
	}
	fmt.Fprintln(o.Out)
	return nil
}

// mechanism is an invalidation mechanism, turned on: it calls note with
// the stored key of every change it delivers, until stop.
type mechanism struct {
	stop func()
}

func startMechanism(ctx context.Context, e *env, rpool *pgxpool.Pool, mech string, note func(string)) (*mechanism, error) {
	sch := pgx.Identifier{e.schema}.Sanitize()
	switch mech {
	case mechLogical:
		reader, err := dbcache.New(ctx, rpool, nil)
		if err != nil {
			return nil, err
		}
		var tr nearcache.Tracer
		if note != nil {
			tr = noteTracer(note)
		}
		nc, err := nearcache.New(ctx, reader, rpool, &nearcache.Config{Tracer: tr})
		if err != nil {
			return nil, err
		}
		return &mechanism{stop: func() { _ = nc.Close() }}, nil
	default:
		if _, err := e.admin.Exec(ctx, fmt.Sprintf(qTriggerOn, sch)); err != nil {
			return nil, err
		}
		conn, err := pgx.Connect(ctx, e.dsn)
		if err != nil {
			return nil, err
		}
		if _, err := conn.Exec(ctx, "LISTEN "+notifyChan); err != nil {
			conn.Close(ctx)
			return nil, err
		}
		lctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				n, err := conn.WaitForNotification(lctx)
				if err != nil {
					return
				}
				if note != nil {
					note(n.Payload)
				}
			}
		}()
		return &mechanism{stop: func() {
			cancel()
			<-done
			conn.Close(context.Background())
			_, _ = e.admin.Exec(context.Background(), fmt.Sprintf(qTriggerOff, sch))
		}}, nil
	}
}

type noteTracer func(string)

func (noteTracer) TraceRead(context.Context, string, int, int) {}
func (n noteTracer) TraceInvalidate(inv nearcache.Invalidation) {
	if inv.Cause == nearcache.CauseFeed {
		n(inv.Key)
	}
}
func (noteTracer) TraceFeed(bool, error) {}

type latencyResult struct {
	writes, lost int
	lat          []time.Duration
}

// latency runs the writers for o.LatencyDuration with mech on, and matches
// each write's return with its arrival.
func latency(ctx context.Context, o *Options, e *env, writer *dbcache.Cache, rpool *pgxpool.Pool, mech string) (*latencyResult, error) {
	arr := &arrivals{at: map[string]time.Time{}}
	m, err := startMechanism(ctx, e, rpool, mech, arr.note)
	if err != nil {
		return nil, err
	}
	defer m.stop()
	var (
		mu       sync.Mutex
		returned = map[string]time.Time{}
		seq      atomic.Int64
		wg       sync.WaitGroup
		firstErr atomic.Pointer[error]
	)
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	value := make([]byte, o.ValueSize)
	deadline := time.Now().Add(o.LatencyDuration)
	for range o.LatencyWriters {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				// A new key each write, so each arrival is one write's.
				k := "lat:" + run + ":" + strconv.FormatInt(seq.Add(1), 10)
				if err := writer.Set(ctx, k, value, dbcache.ExpiresIn(time.Hour)); err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				t := time.Now()
				mu.Lock()
				returned[":1:"+k] = t
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := firstErr.Load(); err != nil {
		return nil, *err
	}
	// Every arrival, or ten seconds.
	res := &latencyResult{writes: len(returned)}
	wait := time.Now().Add(10 * time.Second)
	for {
		missing := 0
		for k := range returned {
			if _, ok := arr.get(k); !ok {
				missing++
			}
		}
		if missing == 0 || time.Now().After(wait) {
			res.lost = missing
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for k, t := range returned {
		if a, ok := arr.get(k); ok {
			// A notification can arrive before the writer has read its
			// own result: that is no wait at all.
			res.lat = append(res.lat, max(a.Sub(t), 0))
		}
	}
	return res, nil
}

// writeCost measures Set throughput with g goroutines, mech on and off,
// interleaved.
func writeCost(ctx context.Context, o *Options, e *env, writer *dbcache.Cache, rpool *pgxpool.Pool, mech string, g int) (on, off float64, err error) {
	rounds := max(o.Rounds, 1)
	per := o.Duration / time.Duration(rounds)
	var onN, offN int64
	var onT, offT time.Duration
	value := make([]byte, o.ValueSize)
	for round := range rounds {
		for side := range 2 {
			withMech := (side+round)%2 == 0
			var m *mechanism
			if withMech {
				if m, err = startMechanism(ctx, e, rpool, mech, nil); err != nil {
					return 0, 0, err
				}
			}
			n, d, err := writeFor(ctx, writer, g, per, o.Keys, value)
			if m != nil {
				m.stop()
			}
			if err != nil {
				return 0, 0, err
			}
			if withMech {
				onN, onT = onN+n, onT+d
			} else {
				offN, offT = offN+n, offT+d
			}
		}
	}
	return float64(onN) / onT.Seconds(), float64(offN) / offT.Seconds(), nil
}

// writeFor runs Sets of uniformly chosen keys on g goroutines for d.
func writeFor(ctx context.Context, c *dbcache.Cache, g int, d time.Duration, keys int, value []byte) (int64, time.Duration, error) {
	var n atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for i := range g {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(i), uint64(start.UnixNano())))
			for time.Now().Before(deadline) {
				if err := c.Set(ctx, "key"+strconv.Itoa(r.IntN(keys)), value, dbcache.ExpiresIn(24*time.Hour)); err != nil {
					if !errors.Is(err, context.Canceled) {
						firstErr.CompareAndSwap(nil, &err)
					}
					return
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	if err := firstErr.Load(); err != nil {
		return 0, 0, *err
	}
	return n.Load(), time.Since(start), nil
}
