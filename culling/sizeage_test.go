package culling_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/migrations"
)

// exactSize is the cache's size as MaxBytes counts it, by a full scan.
func exactSize(t *testing.T, pool *pgxpool.Pool) int64 {
	t.Helper()
	var n int64
	require.NoError(t, pool.QueryRow(context.Background(), fmt.Sprintf(
		`SELECT coalesce(sum(pg_column_size(key) + pg_column_size(value) + %d), 0)::int8 FROM %s`,
		culling.RowOverhead, migrations.Table)).Scan(&n))
	return n
}

// fillMixed inserts n entries named prefix00000001… with incompressible
// values of mixed sizes, drawn log-uniformly from 100 B to 4 kB for most and
// from 16 kB to 1 MB for one in ten, expiring one minute apart in the order
// of their names, on one session that then flushes its statistics.
func fillMixed(t *testing.T, pool *pgxpool.Pool, prefix string, n int, seed uint64) {
	t.Helper()
	ctx := context.Background()
	r := rand.New(rand.NewPCG(seed, 7))
	rows := make([][]any, 0, n)
	now := time.Now()
	for i := 1; i <= n; i++ {
		size := int(100 * math.Pow(40.96, r.Float64()))
		if r.IntN(10) == 0 {
			size = int(16 << 10 * math.Pow(64, r.Float64()))
		}
		v := make([]byte, size)
		for j := range v {
			v[j] = byte(r.Uint32())
		}
		rows = append(rows, []any{fmt.Sprintf("%s%08d", prefix, i), v, now.Add(time.Hour + time.Duration(i)*time.Minute)})
	}
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	_, err = conn.CopyFrom(ctx, pgx.Identifier{migrations.Table}, []string{"key", "value", "expires"}, pgx.CopyFromRows(rows))
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "SELECT pg_stat_force_next_flush()")
	require.NoError(t, err)
}

// maxEntrySize is the largest entry fillMixed writes, as MaxBytes counts
// it: a cull for MaxBytes ends within one entry of its target.
const maxEntrySize = 1<<20 + 100

// sizeErrorBound is the error of the size estimate that the tests allow:
// what docs/culling.md documents for a sample of a few pages over a table
// whose bytes are mostly in out-of-line values.
const sizeErrorBound = 0.10

// A pass over MaxBytes culls in eviction order until the estimated size is
// under it: the exact size ends within the estimate's error of the limit,
// the survivors are the latest in eviction order, and a cache under the
// limit loses nothing. Values of 100 B to 1 MB, inline and out of line.
func TestMaxBytes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		pages int // SizeSamplePages
	}{
		{"exact", 0},   // the default sample covers this small table
		{"sampled", 3}, // a few of its pages: the estimator proper
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			fillMixed(t, b.pool, "m", 600, 42)
			total := exactSize(t, b.pool)
			t.Logf("total %d bytes", total)

			// Under the limit: nothing goes.
			under, _ := newCuller(t, b.pool, &culling.Config{MaxEntries: culling.NoLimit, MaxBytes: total * 2, SizeSamplePages: tc.pages})
			res := runOnce(t, under)
			require.Zero(t, res.Culled)
			require.InEpsilon(t, float64(total), float64(res.Size), sizeErrorBound)
			require.Equal(t, tc.pages == 0, res.SizeExact)
			require.Equal(t, 600, dbtest.Count(t, b.pool))

			limit := total * 6 / 10
			c, _ := newCuller(t, b.pool, &culling.Config{MaxEntries: culling.NoLimit, MaxBytes: limit, SizeSamplePages: tc.pages})
			res = runOnce(t, c)
			left := exactSize(t, b.pool)
			t.Logf("estimate %d, culled %d rows (%d bytes), left %d bytes for a limit of %d (%+.1f%%)",
				res.Size, res.Culled, res.CulledBytes, left, limit, 100*float64(left-limit)/float64(limit))
			require.Positive(t, res.Culled)
			require.Equal(t, total-res.CulledBytes, left, "CulledBytes is exact")
			// Within the estimate's error of the limit, and under it by at
			// most the last entry culled, which crossed it.
			require.LessOrEqual(t, float64(left), float64(limit)*(1+sizeErrorBound))
			require.GreaterOrEqual(t, float64(left), float64(limit)*(1-sizeErrorBound)-maxEntrySize)
			if tc.pages == 0 {
				require.LessOrEqual(t, left, limit, "an exact size ends at or under the limit")
				require.Greater(t, left, limit-maxEntrySize)
			}
			// The survivors are the latest to expire.
			n := dbtest.Count(t, b.pool)
			require.Equal(t, names("m", 600-n+1, 600), keys(t, b.pool))
		})
	}
}

// MaxBytes and MaxEntries together: the cull satisfies both.
func TestMaxBytesAndEntries(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fillMixed(t, b.pool, "m", 300, 7)
	total := exactSize(t, b.pool)
	// The byte limit is the one that bites…
	c, _ := newCuller(t, b.pool, &culling.Config{MaxEntries: 250, MaxBytes: total / 2})
	res := runOnce(t, c)
	require.Less(t, dbtest.Count(t, b.pool), 250)
	require.LessOrEqual(t, exactSize(t, b.pool), total/2)
	// …then the count limit.
	n := dbtest.Count(t, b.pool)
	c2, _ := newCuller(t, b.pool, &culling.Config{MaxEntries: n - 10, CullFrequency: 100, MaxBytes: total})
	res = runOnce(t, c2)
	require.EqualValues(t, 10, res.Culled)
}

// EstimateSize, from another process: within the documented error of the
// exact size, reading a sample.
func TestEstimateSize(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fillMixed(t, b.pool, "m", 600, 3)
	dbtest.Exec(t, b.pool, "VACUUM "+migrations.Table) // the statistics, as autovacuum leaves them
	exact := exactSize(t, b.pool)
	for _, pages := range []int{0, 3} {
		est, err := culling.EstimateSize(context.Background(), b.pool, "", pages)
		require.NoError(t, err)
		t.Logf("pages %d: estimate %d of %d (%+.1f%%), %d rows sampled", pages, est.Bytes, exact,
			100*float64(est.Bytes-exact)/float64(exact), est.SampledRows)
		require.InEpsilon(t, float64(exact), float64(est.Bytes), sizeErrorBound)
		require.Equal(t, pages == 0, est.Exact)
	}
	_, err := culling.EstimateSize(context.Background(), dbtest.NewSchema(t).Pool(t), "", 0)
	require.ErrorIs(t, err, culling.ErrTableNotFound)
}

// setWritten backdates the write time of the rows whose keys start with
// prefix.
func setWritten(t *testing.T, pool *pgxpool.Pool, prefix string, ago time.Duration) {
	t.Helper()
	dbtest.Exec(t, pool, "UPDATE "+migrations.Table+" SET written_at = now() - $2::interval WHERE key LIKE $1 || '%'", prefix, ago)
}

// No entry older than MaxAge survives a pass, whatever its timeout,
// Forever included; younger ones all stay.
func TestMaxAge(t *testing.T) {
	t.Parallel()
	b := setup(t)
	insert(t, b.pool, "a-old-forever", 30, "NULL")
	insert(t, b.pool, "b-old-long", 30, "now() + interval '30 days'")
	insert(t, b.pool, "c-old-soon", 30, "now() + interval '10 minutes'")
	insert(t, b.pool, "d-young-forever", 30, "NULL")
	insert(t, b.pool, "e-young-short", 30, "now() + interval '5 minutes'")
	insert(t, b.pool, "f-young-long", 30, "now() + interval '30 days'")
	// 2,000 old rows written by one statement: one write time for all.
	insert(t, b.pool, "g-old-tie", 2000, "NULL")
	for _, p := range []string{"a-old", "b-old", "c-old", "g-old"} {
		setWritten(t, b.pool, p, 3*time.Hour)
	}
	setWritten(t, b.pool, "d-young", 90*time.Minute)
	setWritten(t, b.pool, "f-young", 90*time.Minute)

	c, _ := newCuller(t, b.pool, &culling.Config{MaxEntries: culling.NoLimit, MaxAge: 2 * time.Hour, BatchSize: 100})
	require.NoError(t, c.Start(context.Background()), "the schema has what MaxAge needs")
	require.NoError(t, c.Stop(context.Background()))
	res := runOnce(t, c) // the worker's first pass may have done it all
	rec, err := culling.LastPass(context.Background(), b.pool, "")
	require.NoError(t, err)
	require.EqualValues(t, 2090, rec.TotalAgedOut)
	require.Zero(t, res.ExpiredRemoved+res.Culled)
	require.Equal(t, append(append(names("d-young-forever", 1, 30), names("e-young-short", 1, 30)...),
		names("f-young-long", 1, 30)...), keys(t, b.pool))
	require.Equal(t, 2*time.Hour, rec.MaxAge)
	require.True(t, rec.Limits)

	// Under the age: nothing goes.
	res = runOnce(t, c)
	require.Zero(t, res.AgedOut)
	require.Equal(t, 90, dbtest.Count(t, b.pool))
}

// MaxAge is at least MaxAgeMin and needs migrations 004 and 005.
func TestMaxAgeConfig(t *testing.T) {
	t.Parallel()
	pool := dbtest.NewSchema(t).Pool(t)
	for _, bad := range []time.Duration{-time.Second, time.Minute, culling.MaxAgeMin - 1} {
		_, err := culling.New(pool, &culling.Config{MaxAge: bad})
		require.ErrorContains(t, err, "Config.MaxAge")
	}
	_, err := culling.New(pool, &culling.Config{MaxBytes: -1})
	require.ErrorContains(t, err, "Config.MaxBytes")

	s := dbtest.NewSchema(t)
	s.Migrate(t)
	m, err := migrations.New(s.Pool(t), &migrations.Config{Schema: s.Name})
	require.NoError(t, err)
	require.NoError(t, m.Down(context.Background(), stepsAbove(3))) // version 3: no written_at
	c, _ := newCuller(t, s.Pool(t), &culling.Config{MaxAge: culling.MaxAgeMin})
	require.ErrorIs(t, c.Start(context.Background()), culling.ErrMigrationNeeded)
	_, err = c.RunOnce(context.Background())
	require.ErrorIs(t, err, culling.ErrMigrationNeeded, "so does a pass")
	// Without MaxAge the culler works on that schema, and records what the
	// state table has room for.
	plain, sink := newCuller(t, s.Pool(t), &culling.Config{MaxEntries: 30})
	insert(t, s.Pool(t), "k", 40, "NULL")
	require.EqualValues(t, 13, runOnce(t, plain).Culled)
	require.Contains(t, sink.String(), "migration 004")
	rec, err := culling.LastPass(context.Background(), s.Pool(t), "")
	require.NoError(t, err)
	require.EqualValues(t, 13, rec.Culled)
	require.False(t, rec.Limits)
}

// A dry run reports what the next pass removes for MaxAge and MaxBytes.
func TestDryRunSizeAndAge(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fillMixed(t, b.pool, "m", 200, 11)
	insert(t, b.pool, "old", 20, "NULL")
	setWritten(t, b.pool, "old", 5*time.Hour)
	insert(t, b.pool, "x-expired", 5, "now() - interval '1 minute'")
	total := exactSize(t, b.pool)
	c, _ := newCuller(t, b.pool, &culling.Config{MaxEntries: culling.NoLimit, MaxAge: 4 * time.Hour, MaxBytes: total / 2})
	dry, err := c.DryRun(context.Background())
	require.NoError(t, err)
	require.Equal(t, total, exactSize(t, b.pool), "nothing was removed")
	res := runOnce(t, c)
	t.Logf("dry: %+v\nreal: %+v", *dry, *res)
	require.EqualValues(t, 5, res.ExpiredRemoved)
	require.EqualValues(t, 20, res.AgedOut)
	require.Equal(t, res.ExpiredRemoved, dry.ExpiredRemoved)
	require.Equal(t, res.AgedOut, dry.AgedOut)
	require.Equal(t, res.Culled, dry.Culled)
	require.Equal(t, res.CulledBytes, dry.CulledBytes)
}

// stepsAbove is how many migrations a Down from the latest reverts to reach
// version v.
func stepsAbove(v uint) int {
	n := 0
	for _, x := range migrations.Versions() {
		if x > v {
			n++
		}
	}
	return n
}
