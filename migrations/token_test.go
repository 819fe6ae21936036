package migrations_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
)

// Migration 9 adds the compare-and-swap token to a table that holds rows
// without rewriting it (a volatile default in ADD COLUMN would): the rows
// there have none, rows inserted later draw one, also from an INSERT that
// does not name the column (a binary older than the migration). And back.
func TestTokenMigration(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, m, pool := atVersion2(t)
	require.NoError(t, m.Up(ctx))
	require.NoError(t, m.Down(ctx, stepsAbove(8))) // below 9, with rows
	var file uint32
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_relation_filenode('dbcache_entries')`).Scan(&file))

	require.NoError(t, m.Up(ctx))
	var after uint32
	var withToken int
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_relation_filenode('dbcache_entries'), count(token) FROM dbcache_entries`).Scan(&after, &withToken))
	require.Equal(t, file, after, "the table was not rewritten")
	require.Zero(t, withToken, "the rows there have no token")

	dbtest.Exec(t, pool, `INSERT INTO dbcache_entries (key, value, expires) SELECT 'new' || g, '\x00', NULL FROM generate_series(1, 1000) AS g`)
	var n, distinct int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(token), count(DISTINCT token) FROM dbcache_entries WHERE key LIKE 'new%'`).Scan(&n, &distinct))
	require.Equal(t, 1000, n, "every insert draws a token")
	require.Equal(t, 1000, distinct)

	require.NoError(t, m.Down(ctx, stepsAbove(8)))
	var exists bool
	require.NoError(t, pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_attribute
		WHERE attrelid = to_regclass('dbcache_entries') AND attname = 'token' AND NOT attisdropped)`).Scan(&exists))
	require.False(t, exists)
	require.NoError(t, m.Up(ctx))
}
