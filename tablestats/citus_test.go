package tablestats_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/citustest"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/tablestats"
)

// In forced Citus mode on a plain table (no shards: the stand-ins answer
// from the table itself), the Citus path reads from run_command_on_shards
// what the plain path reads from the table's own catalog row.
func TestCitusSizesMatchPlain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	pool := s.Pool(t)
	require.NoError(t, citustest.CreateStandIns(ctx, pool, s.Name))
	fill(t, s, "live", 30, "now() + interval '1 hour'")
	fill(t, s, "old", 20, "now() - interval '1 minute'")
	dbtest.Exec(t, pool, `ANALYZE dbcache_entries`)

	for _, limit := range []int{0, 10} {
		plain, err := tablestats.Size(ctx, pool, "", limit)
		require.NoError(t, err)
		citus, err := tablestats.SizeCitus(ctx, pool, "", limit)
		require.NoError(t, err)
		require.Equal(t, plain.Rows, citus.Rows, "limit %d", limit)
		require.Equal(t, plain.RowsExact, citus.RowsExact, "limit %d", limit)
		require.Equal(t, plain.Expired, citus.Expired, "limit %d", limit)
		require.Equal(t, plain.TableBytes, citus.TableBytes, "limit %d", limit)
		require.Equal(t, plain.IndexBytes, citus.IndexBytes, "limit %d", limit)
	}

	plain, err := tablestats.Read(ctx, pool, "")
	require.NoError(t, err)
	citus, err := tablestats.ReadCitus(ctx, pool, "")
	require.NoError(t, err)
	require.Equal(t, plain.Entries, citus.Entries)
	require.Equal(t, plain.Expired, citus.Expired)
	require.Equal(t, plain.Size, citus.Size)
	require.Equal(t, plain.TableBytes, citus.TableBytes)
	require.Equal(t, plain.IndexBytes, citus.IndexBytes)
}

// On Citus the coordinator's table (the shell) has reltuples 0 and its own
// tiny sizes; the rows are in the shards. With two shard tables standing
// in for the workers' shards, holding other rows than the shell, the
// Citus path's estimate and sizes are the shards' sums, not the shell's.
func TestCitusSizesFromShards(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	pool := s.Pool(t)
	require.NoError(t, citustest.CreateStandIns(ctx, pool, s.Name))
	fill(t, s, "shell", 20, "NULL") // more than the count limit: estimated
	var shards []string
	for i, n := range []int{30, 40} {
		name, err := citustest.AddShard(ctx, pool, s.Name, "dbcache_entries", int64(102008+i))
		require.NoError(t, err)
		dbtest.Exec(t, pool, `INSERT INTO `+name+` (key, value, expires) SELECT 'k' || i, 'v'::bytea, NULL FROM generate_series(1, $1) AS i`, n)
		dbtest.Exec(t, pool, `ANALYZE `+name)
		shards = append(shards, name)
	}
	var tableBytes, indexBytes int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT sum(pg_table_size(x::regclass))::int8, sum(pg_indexes_size(x::regclass))::int8 FROM unnest($1::text[]) AS x`, shards).Scan(&tableBytes, &indexBytes))

	sz, err := tablestats.SizeCitus(ctx, pool, "", 10)
	require.NoError(t, err)
	require.False(t, sz.RowsExact)
	require.Equal(t, int64(70), sz.Rows, "the shards' reltuples summed")
	require.Equal(t, tableBytes, sz.TableBytes)
	require.Equal(t, indexBytes, sz.IndexBytes)

	st, err := tablestats.ReadCitus(ctx, pool, "")
	require.NoError(t, err)
	require.Equal(t, tableBytes, st.TableBytes)
	require.Equal(t, indexBytes, st.IndexBytes)

	var relSize, tblSize int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT citus_relation_size('dbcache_entries'), citus_table_size('dbcache_entries')`).Scan(&relSize, &tblSize))
	require.Equal(t, tableBytes, tblSize, "the stand-in of citus_table_size")
	require.Positive(t, relSize)
}

// A shard's answer that is an error, or not the eight figures asked for
// (crafted by a replaced run_command_on_shards), is an error naming the
// shard, never a made-up size.
func TestCitusShardAnswersChecked(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct{ rows, want string }{
		{`(1, true, '1 2 3 4 5 6 - -'), (2, false, 'relation does not exist')`, "shard 2: relation does not exist"},
		{`(1, true, '1 2 3')`, "shard 1: 3 fields"},
		{`(7, true, '1 2 x 4 5 6 - -')`, "shard 7: field 3"},
		{`(7, true, '1 2 -3 4 5 6 - -')`, "shard 7: field 3"},
		{`(7, true, '1 2 3 4 5 6 NaN -')`, "shard 7: field 7"},
	} {
		s := dbtest.NewSchema(t)
		s.Migrate(t)
		pool := s.Pool(t)
		dbtest.Exec(t, pool, `CREATE FUNCTION run_command_on_shards(regclass, text, OUT shardid bigint, OUT success boolean, OUT result text)
RETURNS SETOF record LANGUAGE sql AS $$ VALUES `+tc.rows+` $$`)
		_, err := tablestats.SizeCitus(ctx, pool, "", 0)
		require.ErrorContains(t, err, tc.want)
		_, err = tablestats.ReadCitus(ctx, pool, "")
		require.ErrorContains(t, err, tc.want)
	}
}
