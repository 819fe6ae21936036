package culling_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/migrations"
)

// citusTestMode is Config.Citus for a test's culler:
// DBCACHE_TEST_CITUS=forced runs every test's culler in the Citus forms on
// plain PostgreSQL (a test that sets a mode of its own keeps it), as the
// cache's tests do.
func citusTestMode(m culling.CitusMode) culling.CitusMode {
	if m == culling.CitusAuto && os.Getenv("DBCACHE_TEST_CITUS") == "forced" {
		return culling.CitusOn
	}
	return m
}

// standIns are stand-ins, on plain PostgreSQL, for the two Citus
// functions the Citus forms call, created in a test's schema (%[1]s),
// where the forms' unqualified calls find them through the search_path (on
// a Citus coordinator they find pg_catalog's first). They have Citus's
// signatures and result shapes and answer from the plain table, as one
// shard: run_command_on_shards runs the command with the table's name for
// %%s (as Citus runs it on each shard with the shard's name), and reports a
// failure as Citus does, success false and the error as the result;
// citus_relation_size is the main fork's size (Citus sums its shards').
const standIns = `
CREATE OR REPLACE FUNCTION %[1]s.run_command_on_shards(table_name regclass, command text, parallel boolean DEFAULT true)
RETURNS TABLE (shardid bigint, success boolean, result text) LANGUAGE plpgsql AS $f$
BEGIN
  shardid := 102008;
  BEGIN
    EXECUTE replace(command, '%%s', table_name::text) INTO result;
    success := true;
  EXCEPTION WHEN OTHERS THEN
    success := false;
    result := SQLERRM;
  END;
  RETURN NEXT;
END $f$;
CREATE OR REPLACE FUNCTION %[1]s.citus_relation_size(logicalrelid regclass) RETURNS bigint
LANGUAGE sql AS $f$ SELECT pg_relation_size(logicalrelid) $f$;`

// citusStandIns creates the stand-ins in the test schema the pool's
// search_path names (none for a pool without one, or whose search_path is
// not a test schema), once however many
// cullers of one schema ask at once, as the server's own role (the pool's
// may be a test's restricted one). They are never created anywhere else:
// the server is shared.
func citusStandIns(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	schema := pool.Config().ConnConfig.RuntimeParams["search_path"]
	if !strings.HasPrefix(strings.Trim(schema, `"`), "dbct_") || strings.Contains(schema, ",") {
		return // not a test schema alone (TestSchemaConfig's is pg_catalog)
	}
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, dbtest.URL(t))
	require.NoError(t, err)
	defer func() { _ = admin.Close(ctx) }()
	tx, err := admin.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext($1))`, schema)
	require.NoError(t, err)
	var there bool
	require.NoError(t, tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_proc
		WHERE proname = 'run_command_on_shards' AND pronamespace = $1::regnamespace)`, schema).Scan(&there))
	if !there {
		_, err = tx.Exec(ctx, fmt.Sprintf(standIns, schema), pgx.QueryExecModeSimpleProtocol)
		require.NoError(t, err)
	}
	require.NoError(t, tx.Commit(ctx))
}

// TestCitusDetection: on plain PostgreSQL CitusAuto finds no citus
// extension (and never names pg_dist_partition, which is not there) and
// keeps the plain forms, at Start and at the first pass of a Culler never
// started; CitusOn forces the Citus forms; CitusOff and a mode out of range
// are honoured and refused.
func TestCitusDetection(t *testing.T) {
	t.Parallel()
	b := setup(t)
	citusStandIns(t, b.pool)
	for _, tc := range []struct {
		mode culling.CitusMode
		want bool
	}{{culling.CitusAuto, false}, {culling.CitusOn, true}, {culling.CitusOff, false}} {
		c, err := culling.New(b.pool, &culling.Config{Citus: tc.mode, Interval: time.Hour})
		require.NoError(t, err)
		runOnce(t, c)
		require.Equal(t, tc.want, c.UsesCitus(), tc.mode.String())
		started, err := culling.New(b.pool, &culling.Config{Citus: tc.mode, Interval: time.Hour})
		require.NoError(t, err)
		require.NoError(t, started.Start(context.Background()))
		require.Equal(t, tc.want, started.UsesCitus(), tc.mode.String())
		require.NoError(t, started.Stop(context.Background()))
	}
	_, err := culling.New(b.pool, &culling.Config{Citus: culling.CitusMode(7)})
	require.ErrorContains(t, err, "Config.Citus 7")
}

// citusScenario is one data set and configuration, run once in each form.
type citusScenario struct {
	name string
	cfg  culling.Config
	fill func(t *testing.T, pool *pgxpool.Pool)
}

func citusScenarios() []citusScenario {
	mixed := func(t *testing.T, pool *pgxpool.Pool) {
		insert(t, pool, "exp", 60, "now() - g * interval '1 second'")
		insert(t, pool, "live", 90, "now() + (g % 30) * interval '1 minute'")
		insert(t, pool, "never", 60, "NULL")
	}
	return []citusScenario{
		{"sweep", culling.Config{MaxEntries: culling.NoLimit, BatchSize: 7}, mixed},
		{"cull before a timed boundary", culling.Config{MaxEntries: 50, BatchSize: 7}, func(t *testing.T, pool *pgxpool.Pool) {
			insert(t, pool, "exp", 20, "now() - g * interval '1 second'")
			insert(t, pool, "live", 150, "now() + (g % 40) * interval '1 minute'")
		}},
		{"cull to a never-expiring boundary", culling.Config{MaxEntries: 50, BatchSize: 7}, mixed},
		{"cull all", culling.Config{MaxEntries: 50, CullFrequency: culling.CullAll, BatchSize: 7}, mixed},
		{"cull frequency 2", culling.Config{MaxEntries: 100, CullFrequency: 2, BatchSize: 5}, mixed},
		{"max bytes", culling.Config{MaxEntries: culling.NoLimit, MaxBytes: 60_000, BatchSize: 9}, func(t *testing.T, pool *pgxpool.Pool) {
			dbtest.Exec(t, pool, `INSERT INTO `+migrations.Table+` (key, value, expires)
				SELECT 'v' || lpad(g::text, 8, '0'), decode(repeat('ab', 100 + (g * 37) % 900), 'hex'),
				       CASE WHEN g % 4 = 0 THEN NULL ELSE now() + (g % 25) * interval '1 minute' END
				  FROM generate_series(1, 200) g`)
		}},
		{"max bytes and entries", culling.Config{MaxEntries: 120, MaxBytes: 90_000, BatchSize: 9}, func(t *testing.T, pool *pgxpool.Pool) {
			dbtest.Exec(t, pool, `INSERT INTO `+migrations.Table+` (key, value, expires)
				SELECT 'v' || lpad(g::text, 8, '0'), decode(repeat('cd', 50 + (g * 53) % 700), 'hex'),
				       CASE WHEN g % 3 = 0 THEN NULL ELSE now() + (g % 17) * interval '1 minute' END
				  FROM generate_series(1, 200) g`)
		}},
		{"max age", culling.Config{MaxEntries: culling.NoLimit, MaxAge: 2 * time.Hour, BatchSize: 6}, func(t *testing.T, pool *pgxpool.Pool) {
			mixed(t, pool)
			dbtest.Exec(t, pool, `UPDATE `+migrations.Table+` SET written_at = now() - interval '3 hours'
				WHERE key LIKE 'never%' AND right(key, 1) IN ('1', '3', '5', '7')
				   OR key LIKE 'live%' AND right(key, 1) = '2'`)
			// Rows that expire within an hour of their write stay off
			// the age index, as the migration's predicate says.
		}},
	}
}

// comparable is a PassResult without what differs between two runs of one
// pass (its timing).
func comparable(r *culling.PassResult) culling.PassResult {
	out := *r
	out.Duration, out.StartedAt = 0, time.Time{}
	return out
}

// TestCitusFormsAnswerAsPlain runs every culler path (the expiry sweep,
// MaxAge, the four cull statements, with a row count, a byte budget and
// both) in the plain forms and in the Citus forms, forced on plain
// PostgreSQL, over the same rows in two schemas, in small batches so each
// takes many: the two passes report the same counts and bytes and leave
// the same keys, and so do their dry runs before them.
func TestCitusFormsAnswerAsPlain(t *testing.T) {
	t.Parallel()
	for _, sc := range citusScenarios() {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			var (
				results [2][2]culling.PassResult
				left    [2][]string
			)
			for i, mode := range []culling.CitusMode{culling.CitusOff, culling.CitusOn} {
				b := setup(t)
				sc.fill(t, b.pool)
				cfg := sc.cfg
				cfg.Citus = mode
				c, _ := newCuller(t, b.pool, &cfg)
				require.Equal(t, mode == culling.CitusOn, c.UsesCitus())
				dry, err := c.DryRun(context.Background())
				require.NoError(t, err)
				results[i][0] = comparable(dry)
				results[i][1] = comparable(runOnce(t, c))
				left[i] = keys(t, b.pool)
			}
			require.Equal(t, results[0][0], results[1][0], "dry runs")
			require.Equal(t, results[0][1], results[1][1], "passes")
			require.Equal(t, left[0], left[1])
			// Each scenario reaches the phase it is named for.
			got := results[0][1]
			switch {
			case strings.Contains(sc.name, "cull"), strings.Contains(sc.name, "bytes"):
				require.Positive(t, got.Culled)
			case strings.Contains(sc.name, "age"):
				require.Positive(t, got.AgedOut)
			default:
				require.Positive(t, got.ExpiredRemoved)
			}
		})
	}
}

// waitLiveTuples waits until the table's live-row statistic says n.
func waitLiveTuples(t *testing.T, pool *pgxpool.Pool, n int64) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		var got int64
		require.NoError(t, pool.QueryRow(context.Background(),
			`SELECT coalesce(pg_stat_get_live_tuples(to_regclass($1)), 0)`, migrations.Table).Scan(&got))
		if got == n {
			return
		}
		require.True(t, time.Now().Before(deadline), "the live-row statistic says %d, not %d", got, n)
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCitusEstimates: the estimate paths of the Citus forms (the live-row
// estimate summed over the shards through run_command_on_shards, the
// table's pages through citus_relation_size and its TOAST chunks through
// run_command_on_shards), answered here by the stand-ins from the plain
// table, give what the plain forms read from the table itself: a table too
// large for the size sample (estimated, TOAST included) and a pass that
// counts by the estimate (ExactCountLimit -1).
func TestCitusEstimates(t *testing.T) {
	t.Parallel()
	b := setup(t)
	citusStandIns(t, b.pool)
	fillMixed(t, b.pool, "m", 600, 3)
	waitLiveTuples(t, b.pool, 600)
	ctx := context.Background()
	for _, pages := range []int{3, 2000} {
		plain, err := culling.EstimateSizeForms(ctx, b.pool, pages, false)
		require.NoError(t, err)
		citus, err := culling.EstimateSizeForms(ctx, b.pool, pages, true)
		require.NoError(t, err)
		require.Equal(t, int64(600), plain.Rows)
		require.Equal(t, plain.Rows, citus.Rows, "pages %d", pages)
		require.Equal(t, plain.Exact, citus.Exact, "pages %d", pages)
		if plain.Exact {
			require.Equal(t, plain.Bytes, citus.Bytes)
		} else {
			// A sample of a few pages reads different rows each time: the
			// two answers share the rows' overhead and the TOAST chunks.
			require.Positive(t, citus.Bytes)
		}
	}
	// A shard that fails: the stand-in reports it as Citus does, and the
	// estimate is an error, not a made-up figure.
	dbtest.Exec(t, b.pool, `CREATE OR REPLACE FUNCTION `+pgx.Identifier{b.schema.Name}.Sanitize()+`.run_command_on_shards(table_name regclass, command text, parallel boolean DEFAULT true)
		RETURNS TABLE (shardid bigint, success boolean, result text) LANGUAGE plpgsql AS $f$
		BEGIN
		  shardid := 102008;
		  EXECUTE replace(command, '%s', table_name::text) INTO result;
		  success := true;
		  RETURN NEXT;
		  shardid := 102009;
		  success := false;
		  result := 'connection to the remote node w2:5432 failed';
		  RETURN NEXT;
		END $f$`)
	_, err := culling.EstimateSizeForms(ctx, b.pool, 2000, true)
	require.ErrorContains(t, err, "did not answer: connection to the remote node")

	// A pass by the estimate, in both forms, over two copies of a table.
	var res [2]culling.PassResult
	for i, mode := range []culling.CitusMode{culling.CitusOff, culling.CitusOn} {
		s := setup(t)
		conn, err := s.pool.Acquire(ctx)
		require.NoError(t, err)
		_, err = conn.Exec(ctx, `INSERT INTO `+migrations.Table+` (key, value, expires)
			SELECT 'k' || lpad(g::text, 8, '0'), '\x00', CASE WHEN g <= 100 THEN now() - interval '1 minute' END
			  FROM generate_series(1, 400) g`)
		require.NoError(t, err)
		_, err = conn.Exec(ctx, "SELECT pg_stat_force_next_flush()")
		require.NoError(t, err)
		conn.Release()
		waitLiveTuples(t, s.pool, 400)
		c, _ := newCuller(t, s.pool, &culling.Config{Citus: mode, MaxEntries: 200, ExactCountLimit: -1, BatchSize: 30})
		res[i] = comparable(runOnce(t, c))
		require.Equal(t, mode == culling.CitusOn, c.UsesCitus())
		require.Equal(t, 200, len(keys(t, s.pool)))
	}
	require.False(t, res[0].CountExact)
	require.Equal(t, res[0], res[1])
}

// TestCitusRewrittenRowSurvives: a row a writer rewrites between a Citus
// batch's page read and its delete transaction is judged by what the
// writer committed, in every form: an expired row given a later expiry, an
// aged row written again, a culled row moved to the end of eviction order
// (a later expiry, or none) all stay, and the rest of the page goes.
func TestCitusRewrittenRowSurvives(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		cfg     culling.Config
		fill    func(t *testing.T, pool *pgxpool.Pool)
		rewrite string
		left    int
	}{
		{"sweep", culling.Config{MaxEntries: culling.NoLimit, BatchSize: 10}, func(t *testing.T, pool *pgxpool.Pool) {
			insert(t, pool, "k", 40, "now() - g * interval '1 second'")
		}, `UPDATE ` + migrations.Table + ` SET expires = now() + interval '1 hour', written_at = now() WHERE key = $1`, 2},
		{"max age", culling.Config{MaxEntries: culling.NoLimit, MaxAge: time.Hour, BatchSize: 10}, func(t *testing.T, pool *pgxpool.Pool) {
			insert(t, pool, "k", 40, "NULL")
			dbtest.Exec(t, pool, `UPDATE `+migrations.Table+` SET written_at = now() - interval '2 hours'`)
		}, `UPDATE ` + migrations.Table + ` SET written_at = now() WHERE key = $1`, 2},
		// 40 rows over MaxEntries 20: the cull removes the 20 before the
		// boundary, but the two moved past it.
		{"cull, later expiry", culling.Config{MaxEntries: 20, BatchSize: 10}, func(t *testing.T, pool *pgxpool.Pool) {
			insert(t, pool, "k", 40, "now() + g * interval '1 minute'")
		}, `UPDATE ` + migrations.Table + ` SET expires = now() + interval '1 day' WHERE key = $1`, 22},
		{"cull, never expiring", culling.Config{MaxEntries: 20, BatchSize: 10}, func(t *testing.T, pool *pgxpool.Pool) {
			insert(t, pool, "k", 40, "now() + g * interval '1 minute'")
		}, `UPDATE ` + migrations.Table + ` SET expires = NULL WHERE key = $1`, 22},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			tc.fill(t, b.pool)
			cfg := tc.cfg
			cfg.Citus = culling.CitusOn
			c, _ := newCuller(t, b.pool, &cfg)
			var (
				mu        sync.Mutex
				rewritten []string
			)
			culling.SetCitusPageHook(c, func(ks []string) {
				mu.Lock()
				defer mu.Unlock()
				if len(rewritten) >= 2 {
					return
				}
				// The page's last key and one in its middle.
				for _, k := range []string{ks[len(ks)-1], ks[len(ks)/2]} {
					if !slices.Contains(rewritten, k) {
						require.EqualValues(t, 1, dbtest.Exec(t, b.pool, tc.rewrite, k))
						rewritten = append(rewritten, k)
					}
				}
			})
			res := runOnce(t, c)
			require.Len(t, rewritten, 2)
			left := keys(t, b.pool)
			for _, k := range rewritten {
				require.Contains(t, left, k, "a row rewritten after the page read")
			}
			// Everything else the pass reached went.
			require.EqualValues(t, 40-len(left), res.ExpiredRemoved+res.AgedOut+res.Culled)
			require.Len(t, left, tc.left)
		})
	}
}

// TestCitusKeyOrderNoDeadlock: forced-Citus passes over a table that
// dbcache's Citus forms write at the same time (SetMany over overlapping
// keys in random orders, one routed statement per key in key order, and
// single Sets), with every key's rows due for the culler: the culler's
// delete transactions lock their keys in key order too, so no statement on
// either side fails with a deadlock and every pass completes.
func TestCitusKeyOrderNoDeadlock(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	cache, err := dbcache.New(ctx, b.schema.Pool(t), &dbcache.Config{Citus: dbcache.CitusOn})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cache.Close() })
	require.True(t, cache.UsesCitus())
	c, _ := newCuller(t, b.pool, &culling.Config{Citus: culling.CitusOn, MaxEntries: 40, CullFrequency: 2, BatchSize: 25})
	const nkeys = 120
	key := func(i int) string { return fmt.Sprintf("d%04d", i) }
	stop := make(chan struct{})
	var (
		wg     sync.WaitGroup
		writes atomic.Int64
		errs   = make(chan error, 8)
	)
	for w := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 11))
			for {
				select {
				case <-stop:
					return
				default:
				}
				var err error
				if w%2 == 0 {
					items := map[string][]byte{}
					for range 30 {
						items[key(rng.IntN(nkeys))] = []byte("v")
					}
					_, err = cache.SetMany(ctx, items, dbcache.ExpiresIn(time.Duration(1+rng.IntN(3))*time.Millisecond))
				} else {
					err = cache.Set(ctx, key(rng.IntN(nkeys)), []byte("v"), dbcache.ExpiresIn(time.Duration(1+rng.IntN(3))*time.Millisecond))
				}
				if err != nil {
					errs <- err
					return
				}
				writes.Add(1)
			}
		})
	}
	var removed int64
	for range 30 {
		res, err := c.RunOnce(ctx)
		var pgErr *pgconn.PgError
		require.False(t, errors.As(err, &pgErr) && pgErr.Code == "40P01", "the culler deadlocked: %v", err)
		require.NoError(t, err)
		removed += res.ExpiredRemoved + res.Culled
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err, "a writer failed")
	}
	require.Positive(t, writes.Load())
	require.Positive(t, removed)
}

// TestCitusBatchCap: a Citus batch deletes at most 500 keys in one
// transaction, whatever BatchSize, and a pass still removes every due row.
func TestCitusBatchCap(t *testing.T) {
	t.Parallel()
	b := setup(t)
	insert(t, b.pool, "k", 1300, "now() - g * interval '1 second'")
	c, _ := newCuller(t, b.pool, &culling.Config{Citus: culling.CitusOn, MaxEntries: culling.NoLimit, BatchSize: 1000})
	var (
		mu    sync.Mutex
		sizes []int
	)
	culling.SetCitusPageHook(c, func(ks []string) {
		mu.Lock()
		defer mu.Unlock()
		sizes = append(sizes, len(ks))
	})
	res := runOnce(t, c)
	require.EqualValues(t, 1300, res.ExpiredRemoved)
	require.Equal(t, []int{500, 500, 300}, sizes)
	require.Zero(t, dbtest.Count(t, b.pool))
}

// deleteTracer records, for every pipeline sent on its pool, the keys of
// the DELETEs in it, in the order sent.
type deleteTracer struct {
	mu      sync.Mutex
	batches [][]string
	cur     map[*pgx.Conn][]string
}

func (d *deleteTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}
func (d *deleteTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (d *deleteTracer) TraceBatchStart(ctx context.Context, conn *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cur[conn] = nil
	return ctx
}

func (d *deleteTracer) TraceBatchQuery(_ context.Context, conn *pgx.Conn, data pgx.TraceBatchQueryData) {
	if !strings.HasPrefix(strings.TrimSpace(data.SQL), "DELETE") || len(data.Args) == 0 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cur[conn] = append(d.cur[conn], data.Args[0].(string))
}

func (d *deleteTracer) TraceBatchEnd(_ context.Context, conn *pgx.Conn, _ pgx.TraceBatchEndData) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.cur[conn]) > 0 {
		d.batches = append(d.batches, d.cur[conn])
	}
	delete(d.cur, conn)
}

// TestCitusDeletesInKeyOrder: the Citus forms' delete transactions send
// their DELETEs in key-column order, whatever the eviction order: here
// every page is in the reverse of key order (later keys expire sooner),
// for the sweep and for the cull, and every pipeline of DELETEs recorded
// by a tracer on the culler's pool is sorted.
func TestCitusDeletesInKeyOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	insert(t, b.pool, "e", 60, "now() - (100 - g) * interval '1 second'")
	insert(t, b.pool, "l", 120, "now() + (200 - g) * interval '1 minute'")
	tr := &deleteTracer{cur: map[*pgx.Conn][]string{}}
	cfg := b.schema.PoolConfig(t)
	cfg.ConnConfig.Tracer = tr
	pool := dbtest.NewPool(t, cfg)
	c, _ := newCuller(t, pool, &culling.Config{Citus: culling.CitusOn, MaxEntries: 60, BatchSize: 16})
	res := runOnce(t, c)
	require.EqualValues(t, 60, res.ExpiredRemoved)
	require.Positive(t, res.Culled)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var deleted int64
	for _, ks := range tr.batches {
		require.True(t, slices.IsSorted(ks), "a delete transaction's keys out of key order: %v", ks)
		deleted += int64(len(ks))
	}
	require.Greater(t, len(tr.batches), 4)
	require.Equal(t, res.ExpiredRemoved+res.Culled, deleted)
}
