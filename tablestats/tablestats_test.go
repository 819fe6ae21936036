package tablestats_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/tablestats"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

func fill(t *testing.T, s *dbtest.Schema, prefix string, n int, expires string) {
	t.Helper()
	dbtest.Exec(t, s.Pool(t), `INSERT INTO dbcache_entries (key, value, expires)
SELECT $1 || i, 'v'::bytea, `+expires+` FROM generate_series(0, $2 - 1) AS i`, prefix, n)
}

func TestRead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	pool := s.Pool(t)
	fill(t, s, "live", 3, "now() + interval '1 hour'")
	fill(t, s, "old", 2, "now() - interval '1 minute'")
	fill(t, s, "forever", 1, "NULL")

	for _, schema := range []string{"", s.Name} {
		st, err := tablestats.Read(ctx, pool, schema)
		require.NoError(t, err)
		require.Equal(t, s.Name, st.Schema)
		require.Equal(t, dbcache.TableName, st.Table)
		require.Equal(t, int64(6), st.Entries)
		require.Equal(t, int64(4), st.Live)
		require.Equal(t, int64(2), st.Expired)
		require.Equal(t, int64(1), st.NeverExpire)
		require.NotNil(t, st.EarliestExpiry)
		require.True(t, st.EarliestExpiry.Before(st.Now))
		require.True(t, st.LatestExpiry.After(st.Now))
		require.Positive(t, st.TableBytes)
		require.Positive(t, st.IndexBytes)
		require.Equal(t, "never", st.CullerState)
		require.Nil(t, st.LastPass)
	}

	culler, err := culling.New(pool, nil)
	require.NoError(t, err)
	_, err = culler.RunOnce(ctx)
	require.NoError(t, err)
	st, err := tablestats.Read(ctx, pool, "")
	require.NoError(t, err)
	require.Equal(t, "ok", st.CullerState)
	require.Equal(t, int64(2), st.LastPass.ExpiredRemoved)
	require.Equal(t, int64(1), st.LastPass.Passes)
	require.Nil(t, st.LastPass.LastCullAt)

	empty := dbtest.NewSchema(t)
	_, err = tablestats.Read(ctx, empty.Pool(t), "")
	require.ErrorIs(t, err, dbcache.ErrNotMigrated)
	_, err = tablestats.Read(ctx, pool, empty.Name)
	require.ErrorIs(t, err, dbcache.ErrNotMigrated)
	_, err = tablestats.Read(ctx, nil, "")
	require.Error(t, err)
}

func TestSize(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	pool := s.Pool(t)
	fill(t, s, "live", 30, "now() + interval '1 hour'")
	fill(t, s, "old", 20, "now() - interval '1 minute'")

	sz, err := tablestats.Size(ctx, pool, "", 0)
	require.NoError(t, err)
	require.Equal(t, s.Name, sz.Schema)
	require.Equal(t, int64(50), sz.Rows)
	require.True(t, sz.RowsExact)
	require.Equal(t, int64(20), sz.Expired)
	require.False(t, sz.ExpiredAtLeast)
	require.Positive(t, sz.TableBytes)
	require.Positive(t, sz.IndexBytes)

	// Over the limit: the statistics, and a lower bound on expired rows.
	dbtest.Exec(t, pool, `ANALYZE dbcache_entries`)
	sz, err = tablestats.Size(ctx, pool, s.Name, 10)
	require.NoError(t, err)
	require.False(t, sz.RowsExact)
	require.Equal(t, int64(50), sz.Rows, "reltuples after ANALYZE")
	require.Equal(t, int64(10), sz.Expired)
	require.True(t, sz.ExpiredAtLeast)

	empty := dbtest.NewSchema(t)
	_, err = tablestats.Size(ctx, empty.Pool(t), "", 0)
	require.ErrorIs(t, err, dbcache.ErrNotMigrated)
	// Bounded by the caller's context, like every query.
	cctx, cancel := context.WithTimeout(ctx, time.Nanosecond)
	defer cancel()
	<-cctx.Done()
	_, err = tablestats.Size(cctx, pool, "", 0)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}
