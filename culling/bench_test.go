package culling_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/migrations"
	"github.com/dbcache/dbcache/internal/quantile"
)

const benchRows = 1_000_000

// loadTable fills a fresh schema's cache table with rows entries of 200-byte
// values: rows-setKeys keys k… expiring one millisecond apart from an hour
// on, and setKeys keys s… (for setters) expiring in ten hours, after every
// k… key. It then vacuums and analyzes the table, as autovacuum would have.
func loadTable(b *testing.B, rows, setKeys int) *pgxpool.Pool {
	b.Helper()
	s := dbtest.NewSchema(b)
	s.Migrate(b)
	cfg := s.PoolConfig(b)
	cfg.MaxConns = 12
	pool := dbtest.NewPool(b, cfg)
	ctx := context.Background()
	// One session, whose statistics are flushed before VACUUM: a flush
	// after it would add the inserts to VACUUM's count a second time.
	conn, err := pool.Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Release()
	exec := func(sql string, args ...any) {
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			b.Fatal(err)
		}
	}
	load := func(prefix string, n int, expires string) {
		for from := 0; from < n; from += 100_000 {
			exec(`INSERT INTO `+migrations.Table+` (key, value, expires)
				SELECT $3 || lpad(g::text, 8, '0'), decode(repeat('ab', 200), 'hex'), `+expires+`
				  FROM generate_series($1::int + 1, $1::int + $2::int) g`, from, min(100_000, n-from), prefix)
		}
	}
	load("k", rows-setKeys, "now() + interval '1 hour' + g * interval '1 ms'")
	load("s", setKeys, "now() + interval '10 hours'")
	exec("SELECT pg_stat_force_next_flush()")
	exec("VACUUM (ANALYZE) " + migrations.Table)
	return pool
}

// timeCount is the median time of a full COUNT(*) over three runs.
func timeCount(b *testing.B, pool *pgxpool.Pool) time.Duration {
	b.Helper()
	var ds []time.Duration
	for range 3 {
		t0 := time.Now()
		var n int64
		if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM "+migrations.Table).Scan(&n); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(t0))
	}
	slices.Sort(ds)
	return ds[1]
}

// refill inserts n rows that expire after every other row, on one session
// that then flushes its statistics, as any session does within about a
// second of its writes (see docs/culling.md).
func refill(b *testing.B, pool *pgxpool.Pool, prefix string, n int) {
	b.Helper()
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Release()
	for from := 0; from < n; from += 100_000 {
		if _, err := conn.Exec(ctx, `INSERT INTO `+migrations.Table+` (key, value, expires)
			SELECT $3 || lpad(g::text, 8, '0'), decode(repeat('ab', 200), 'hex'), now() + interval '3 hours' + g * interval '1 ms'
			  FROM generate_series($1::int + 1, $1::int + $2::int) g`, from, min(100_000, n-from), prefix); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, "SELECT pg_stat_force_next_flush()"); err != nil {
		b.Fatal(err)
	}
}

// setters runs cache-style upserts of random keys s00000001…s<keySpace>
// (which loadTable created, so the table does not grow, and which expire
// last, so passes do not remove them) on workers goroutines until stop is
// closed, recording each latency under the label
// that label() returns when the set starts ("" = not recorded).
type setters struct {
	mu   sync.Mutex
	lats map[string][]time.Duration
	wg   sync.WaitGroup
	stop chan struct{}
	errs atomic.Value
}

func startSetters(pool *pgxpool.Pool, workers, keySpace int, label func() string) *setters {
	s := &setters{lats: map[string][]time.Duration{}, stop: make(chan struct{})}
	for w := range workers {
		s.wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 7))
			val := make([]byte, 200)
			for {
				select {
				case <-s.stop:
					return
				default:
				}
				key := fmt.Sprintf("s%08d", 1+r.IntN(keySpace))
				l := label()
				t0 := time.Now()
				_, err := pool.Exec(context.Background(), `INSERT INTO `+migrations.Table+` (key, value, expires)
					VALUES ($1, $2, now() + interval '10 hours')
					ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires`, key, val)
				d := time.Since(t0)
				if err != nil {
					s.errs.Store(err)
					return
				}
				if l != "" {
					s.mu.Lock()
					s.lats[l] = append(s.lats[l], d)
					s.mu.Unlock()
				}
			}
		})
	}
	return s
}

func (s *setters) halt(b *testing.B) map[string][]time.Duration {
	b.Helper()
	close(s.stop)
	s.wg.Wait()
	if err, ok := s.errs.Load().(error); ok {
		b.Fatal(err)
	}
	return s.lats
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkPass1M times culling passes over a 1M-row table next to a full
// COUNT(*) of it, and the p99 latency of concurrent sets (4 goroutines of
// upserts to 50k keys the passes do not remove) during a pass next to the
// same sets with no pass.
//
//   - noop: the table is under MaxEntries. The pass costs a lock, an index
//     probe for expired rows and a statistics read.
//   - over1pct: 1% over MaxEntries with CullFrequency 100, so a pass culls
//     10,000 rows.
//   - over1pctDjango: 1% over with Django's CullFrequency 3, so a pass culls
//     a third of the table, 333,333 rows.
//
// The timed loop runs passes alone, each after putting back (untimed) the
// rows the last one culled. Then one more pass runs under the sets:
// pass_loaded_ms is its time, set_p99_pass_ms the p99 of the sets started
// while it ran, and estimate_err the difference between the rows it
// believed it left and a COUNT(*) after it.
func BenchmarkPass1M(b *testing.B) {
	if testing.Short() {
		b.Skip("loads a 1M-row table; run without -short")
	}
	const setKeys = 50_000
	pool := loadTable(b, benchRows, setKeys)
	countTime := timeCount(b, pool)

	for _, bc := range []struct {
		name       string
		maxEntries int
		freq       int
	}{
		{"noop", 2 * benchRows, 3},
		{"over1pct", benchRows * 99 / 100, 100},
		{"over1pctDjango", benchRows * 99 / 100, 3},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			c, err := culling.New(pool, &culling.Config{MaxEntries: bc.maxEntries, CullFrequency: bc.freq,
				NudgeEvery: -1, PassTimeout: -1})
			if err != nil {
				b.Fatal(err)
			}
			fillTo := func(iter int) {
				if over := benchRows - dbtest.Count(b, pool); over > 0 && bc.name != "noop" {
					refill(b, pool, fmt.Sprintf("r%s%d_", bc.name, iter), over)
				}
			}
			fillTo(0)

			var passTotal time.Duration
			var culled int64
			iter := 0
			for b.Loop() {
				b.StopTimer()
				if iter > 0 {
					fillTo(iter)
				}
				iter++
				b.StartTimer()
				t0 := time.Now()
				res, err := c.RunOnce(ctx)
				passTotal += time.Since(t0)
				if err != nil {
					b.Fatal(err)
				}
				if res.Skipped {
					b.Fatal("pass skipped")
				}
				culled += res.Culled
			}
			b.StopTimer()
			b.ReportMetric(ms(passTotal)/float64(iter), "pass_ms")
			b.ReportMetric(ms(countTime), "count_ms")
			b.ReportMetric(float64(culled)/float64(iter), "culled/pass")

			// Sets with no pass, then during one.
			fillTo(iter + 1)
			var label atomic.Value
			label.Store("idle")
			st := startSetters(pool, 4, setKeys, func() string { return label.Load().(string) })
			time.Sleep(2 * time.Second) // the idle measuring window, not a wait for an event
			label.Store("pass")
			t0 := time.Now()
			res, err := c.RunOnce(ctx)
			loaded := time.Since(t0)
			label.Store("")
			lats := st.halt(b)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(ms(loaded), "pass_loaded_ms")
			b.ReportMetric(ms(quantile.Percentile(lats["idle"], 99)), "set_p99_idle_ms")
			b.ReportMetric(ms(quantile.Percentile(lats["pass"], 99)), "set_p99_pass_ms")
			b.ReportMetric(float64(len(lats["pass"])), "sets_in_pass")
			b.ReportMetric(float64(res.Remaining-int64(dbtest.Count(b, pool))), "estimate_err")
		})
	}
}

// BenchmarkPassExactCount times a pass that culls nothing over tables small
// enough to be counted exactly (ExactCountLimit): the cost of the bounded
// walk, which the default configuration pays on every pass.
func BenchmarkPassExactCount(b *testing.B) {
	if testing.Short() {
		b.Skip("loads a 200k-row table; run without -short")
	}
	for _, rows := range []int{10_000, 100_000, culling.ExactCountLimitDefault} {
		b.Run(fmt.Sprintf("rows=%d", rows), func(b *testing.B) {
			pool := loadTable(b, rows, 0)
			c, err := culling.New(pool, &culling.Config{MaxEntries: 2 * rows})
			if err != nil {
				b.Fatal(err)
			}
			var res *culling.PassResult
			for b.Loop() {
				if res, err = c.RunOnce(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
			if !res.CountExact || res.Count != int64(rows) {
				b.Fatalf("count %d exact=%v, want %d exact", res.Count, res.CountExact, rows)
			}
			b.ReportMetric(ms(timeCount(b, pool)), "count_ms")
		})
	}
}

// BenchmarkSweepHeldSnapshot times a pass that sweeps 100,000 expired rows
// (half of them sharing one expiry, as a SetMany or a bulk INSERT leaves
// them) while another transaction holds an old snapshot, next to the same
// pass with no snapshot held, and reports the index entries the pass read
// per removed row (pg_stat_user_indexes). The held snapshot keeps the index
// entries of removed rows from being marked dead; a pass that resumes each
// batch after the last row removed (the keyset walk) never reads them
// again, so the two cost the same.
func BenchmarkSweepHeldSnapshot(b *testing.B) {
	if testing.Short() {
		b.Skip("loads 100k rows per iteration; run without -short")
	}
	const rows = 100_000
	for _, held := range []bool{false, true} {
		b.Run(fmt.Sprintf("held=%v", held), func(b *testing.B) {
			s := dbtest.NewSchema(b)
			s.Migrate(b)
			pool := s.Pool(b)
			ctx := context.Background()
			if held {
				conn, err := pool.Acquire(ctx)
				if err != nil {
					b.Fatal(err)
				}
				tx, err := conn.Begin(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := tx.Exec(ctx, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"); err != nil {
					b.Fatal(err)
				}
				if _, err := tx.Exec(ctx, "SELECT 1 FROM "+migrations.Table+" LIMIT 1"); err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() {
					_ = tx.Rollback(context.Background())
					conn.Release()
				})
			}
			c, err := culling.New(pool, &culling.Config{MaxEntries: culling.NoLimit, ExactCountLimit: -1, PassTimeout: -1})
			if err != nil {
				b.Fatal(err)
			}
			reads := func() int64 {
				var n int64
				if err := pool.QueryRow(ctx, `SELECT coalesce(sum(idx_tup_read), 0)::int8 FROM pg_stat_user_indexes
					WHERE relid = to_regclass($1) AND indexrelname <> $2`, migrations.Table, migrations.Table+"_pkey").Scan(&n); err != nil {
					b.Fatal(err)
				}
				return n
			}
			var removed, read int64
			iter := 0
			for b.Loop() {
				b.StopTimer()
				for _, q := range []string{
					`INSERT INTO ` + migrations.Table + ` (key, value, expires)
					 SELECT $1 || 't' || g, '\x00', now() - interval '1 hour' FROM generate_series(1, $2) g`,
					`INSERT INTO ` + migrations.Table + ` (key, value, expires)
					 SELECT $1 || 's' || g, '\x00', now() - interval '30 minutes' + g * interval '1 ms' FROM generate_series(1, $2) g`,
				} {
					if _, err := pool.Exec(ctx, q, fmt.Sprintf("i%d_", iter), rows/2); err != nil {
						b.Fatal(err)
					}
				}
				iter++
				before := reads()
				b.StartTimer()
				res, err := c.RunOnce(ctx)
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				removed += res.ExpiredRemoved
				read += reads() - before
				b.StartTimer()
			}
			b.ReportMetric(float64(read)/float64(removed), "index_reads/row")
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(removed), "µs/row")
		})
	}
}

// loadMixed fills a fresh schema's cache table with rows entries of
// incompressible values: 99.5% drawn log-uniformly from 100 B to 4 kB
// (inline, or just out of line), 0.5% from 16 kB to 1 MB (out of line),
// expiring one millisecond apart from an hour on. It then vacuums and
// analyzes the table, as autovacuum would have.
func loadMixed(b *testing.B, rows int) (*pgxpool.Pool, string) {
	b.Helper()
	s := dbtest.NewSchema(b)
	s.Migrate(b)
	pool := s.Pool(b)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(1, 2))
	noise := make([]byte, 2<<20)
	for i := range noise {
		noise[i] = byte(r.Uint32())
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Release()
	start := time.Now()
	batch := make([][]any, 0, 10_000)
	flush := func() {
		if _, err := conn.CopyFrom(ctx, pgx.Identifier{migrations.Table}, []string{"key", "value", "expires"},
			pgx.CopyFromRows(batch)); err != nil {
			b.Fatal(err)
		}
		batch = batch[:0]
	}
	for i := range rows {
		n := int(100 * math.Pow(40.96, r.Float64()))
		if r.IntN(200) == 0 {
			n = int(16 << 10 * math.Pow(64, r.Float64()))
		}
		off := r.IntN(len(noise) - n)
		v := noise[off : off+n : off+n]
		batch = append(batch, []any{fmt.Sprintf(":1:user:%08d", i), v, start.Add(time.Hour + time.Duration(i)*time.Millisecond)})
		if len(batch) == cap(batch) {
			flush()
		}
	}
	flush()
	for _, q := range []string{"SELECT pg_stat_force_next_flush()", "VACUUM (ANALYZE) " + migrations.Table} {
		if _, err := conn.Exec(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
	return pool, s.Name
}

// BenchmarkSizeEstimate1M measures, over a 1M-row table of mixed value
// sizes (100 B to 1 MB; loadMixed), what MaxBytes costs: the size
// estimate's time and error against exact sums (sum(pg_column_size), the
// size MaxBytes counts, and sum(octet_length), the raw bytes), and a pass
// that culls 1% of the bytes beside a pass that culls 1% of the rows.
//
//   - estimate_ms, err_min_pct, err_max_pct: culling.EstimateSize over
//     every iteration (a fresh sample each), against the exact size;
//   - err_octet_pct: the median estimate against sum(octet_length) plus
//     RowOverhead a row;
//   - exact_ms, octet_ms: the two exact sums (full scans);
//   - pass_bytes_ms, pass_count_ms: one pass with MaxBytes at 99% of the
//     size, then one with MaxEntries at 99% of the rows left.
func BenchmarkSizeEstimate1M(b *testing.B) {
	if testing.Short() {
		b.Skip("loads a 1M-row, ~2 GB table; run without -short")
	}
	pool, schema := loadMixed(b, benchRows)
	ctx := context.Background()
	timeIt := func(q string) (time.Duration, int64) {
		t0 := time.Now()
		var n int64
		if err := pool.QueryRow(ctx, q).Scan(&n); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0), n
	}
	exactTime, exact := timeIt(fmt.Sprintf(`SELECT sum(pg_column_size(key) + pg_column_size(value) + %d)::int8 FROM %s`,
		culling.RowOverhead, migrations.Table))
	octetTime, octet := timeIt(fmt.Sprintf(`SELECT sum(octet_length(key) + octet_length(value) + %d)::int8 FROM %s`,
		culling.RowOverhead, migrations.Table))

	var errs []float64
	var est *culling.SizeEstimate
	var took time.Duration
	for b.Loop() {
		t0 := time.Now()
		var err error
		if est, err = culling.EstimateSize(ctx, pool, schema, 0); err != nil {
			b.Fatal(err)
		}
		took += time.Since(t0)
		errs = append(errs, 100*float64(est.Bytes-exact)/float64(exact))
	}
	slices.Sort(errs)
	b.StopTimer()
	b.ReportMetric(ms(took)/float64(len(errs)), "estimate_ms")
	b.ReportMetric(errs[0], "err_min_pct")
	b.ReportMetric(errs[len(errs)-1], "err_max_pct")
	b.ReportMetric(100*(float64(exact)*(1+errs[len(errs)/2]/100)-float64(octet))/float64(octet), "err_octet_pct")
	b.ReportMetric(ms(exactTime), "exact_ms")
	b.ReportMetric(ms(octetTime), "octet_ms")
	b.ReportMetric(float64(exact)/1e6, "size_MB")

	pass := func(cfg *culling.Config) (time.Duration, *culling.PassResult) {
		cfg.PassTimeout, cfg.NudgeEvery = -1, -1
		c, err := culling.New(pool, cfg)
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		res, err := c.RunOnce(ctx)
		if err != nil {
			b.Fatal(err)
		}
		return time.Since(t0), res
	}
	d, res := pass(&culling.Config{MaxEntries: culling.NoLimit, MaxBytes: exact * 99 / 100})
	b.ReportMetric(ms(d), "pass_bytes_ms")
	b.ReportMetric(float64(res.Culled), "bytes_culled_rows")
	d, res = pass(&culling.Config{MaxEntries: int(benchRows - res.Culled - (benchRows-res.Culled)/100), CullFrequency: 100})
	b.ReportMetric(ms(d), "pass_count_ms")
	b.ReportMetric(float64(res.Culled), "count_culled_rows")
}

// BenchmarkCullBloat shows what the disk does when a pass culls half of a
// 200k-row table of 512-byte values: table (heap and TOAST) and index sizes and
// dead tuples right after the cull, after a VACUUM, and after as many new
// entries as were culled are written again. The files do not shrink; vacuum
// makes the space reusable, and the new entries fill it instead of growing
// the files.
func BenchmarkCullBloat(b *testing.B) {
	if testing.Short() {
		b.Skip("loads a 200k-row table; run without -short")
	}
	const rows = 200_000
	for b.Loop() {
		b.StopTimer()
		s := dbtest.NewSchema(b)
		s.Migrate(b)
		pool := s.Pool(b)
		ctx := context.Background()
		conn, err := pool.Acquire(ctx)
		if err != nil {
			b.Fatal(err)
		}
		exec := func(q string, args ...any) {
			if _, err := conn.Exec(ctx, q, args...); err != nil {
				b.Fatal(err)
			}
		}
		load := func(prefix string, n int) {
			exec(`INSERT INTO `+migrations.Table+` (key, value, expires)
				SELECT $1 || g, decode(repeat(md5($1 || g), 32), 'hex'), now() + interval '1 hour' + g * interval '1 ms'
				  FROM generate_series(1, $2::int) g`, prefix, n)
			exec("SELECT pg_stat_force_next_flush()")
		}
		sizes := func(label string) {
			var table, index, dead int64
			if err := conn.QueryRow(ctx, `SELECT pg_table_size(c.oid), pg_indexes_size(c.oid),
				pg_stat_get_dead_tuples(c.oid) + coalesce(pg_stat_get_dead_tuples(c.reltoastrelid), 0)
				FROM pg_class c WHERE c.oid = to_regclass($1)`, migrations.Table).Scan(&table, &index, &dead); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(table)/1e6, label+"_table_MB")
			b.ReportMetric(float64(index)/1e6, label+"_index_MB")
			b.ReportMetric(float64(dead), label+"_dead")
		}
		load("a", rows)
		exec("VACUUM (ANALYZE) " + migrations.Table)
		sizes("1_loaded")
		c, err := culling.New(pool, &culling.Config{MaxEntries: rows / 2, CullFrequency: 2, PassTimeout: -1})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		res, err := c.RunOnce(ctx)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		if res.Culled != rows/2 {
			b.Fatalf("culled %d", res.Culled)
		}
		exec("SELECT pg_stat_force_next_flush()")
		sizes("2_culled")
		exec("VACUUM " + migrations.Table)
		sizes("3_vacuumed")
		load("b", rows/2)
		sizes("4_refilled")
		conn.Release()
		b.StartTimer()
	}
}
