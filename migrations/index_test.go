package migrations_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/migrations"
)

// indexes lists the cache table's indexes but the one on written_at
// (migration 005), with whether each is valid.
func indexes(t *testing.T, pool *pgxpool.Pool, s *dbtest.Schema) map[string]bool {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
		SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
		 WHERE i.indrelid = to_regclass($1) AND c.relname <> 'dbcache_entries_written_at_idx'`,
		pgx.Identifier{s.Name, migrations.Table}.Sanitize())
	require.NoError(t, err)
	out := map[string]bool{}
	for rows.Next() {
		var name string
		var valid bool
		require.NoError(t, rows.Scan(&name, &valid))
		out[name] = valid
	}
	require.NoError(t, rows.Err())
	return out
}

// stepsAbove is how many migrations Down must revert, from the latest, to
// reach version v: versions need not be consecutive (numbers can be
// reserved for migrations still to come).
func stepsAbove(v uint) int {
	n := 0
	for _, x := range migrations.Versions() {
		if x > v {
			n++
		}
	}
	return n
}

// atVersion2 returns a schema migrated to version 2 (the index on expires
// alone) holding rows, and a pool on it.
func atVersion2(t *testing.T) (*dbtest.Schema, *migrations.Migrator, *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	s := dbtest.NewSchema(t)
	m := newMigrator(t, s, &migrations.Config{Schema: s.Name})
	require.NoError(t, m.Up(ctx))
	require.NoError(t, m.Down(ctx, stepsAbove(2)))
	v, _, err := m.Version(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 2, v)
	pool := s.Pool(t)
	dbtest.Exec(t, pool, `INSERT INTO dbcache_entries (key, value, expires)
		SELECT 'k' || g, '\x00', CASE WHEN g % 3 = 0 THEN NULL ELSE now() + g * interval '1 s' END
		  FROM generate_series(1, 5000) g`)
	return s, m, pool
}

// Migration 3 replaces the index on expires with one on (expires, key), in
// one transaction, over a table that holds rows, and back.
func TestIndexMigration(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, m, pool := atVersion2(t)
	require.Equal(t, map[string]bool{"dbcache_entries_pkey": true, "dbcache_entries_expires_idx": true}, indexes(t, pool, s))

	require.NoError(t, m.Up(ctx))
	require.Equal(t, map[string]bool{"dbcache_entries_pkey": true, "dbcache_entries_expires_key_idx": true}, indexes(t, pool, s))
	require.Equal(t, 5000, dbtest.Count(t, pool))
	var def string
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_get_indexdef(to_regclass('dbcache_entries_expires_key_idx'))`).Scan(&def))
	require.Contains(t, def, "(expires, key)")

	require.NoError(t, m.Down(ctx, stepsAbove(2)))
	require.Equal(t, map[string]bool{"dbcache_entries_pkey": true, "dbcache_entries_expires_idx": true}, indexes(t, pool, s))
	require.Equal(t, 5000, dbtest.Count(t, pool))
}

// An operator who built the index by hand with CREATE INDEX CONCURRENTLY
// (to keep writes flowing on a large table) keeps it; an INVALID one, left
// by a concurrent build that failed, is rebuilt rather than trusted.
func TestIndexMigrationPrebuilt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	t.Run("valid", func(t *testing.T) {
		t.Parallel()
		s, m, pool := atVersion2(t)
		dbtest.Exec(t, pool, `CREATE INDEX CONCURRENTLY dbcache_entries_expires_key_idx ON dbcache_entries (expires, key)`)
		var before uint32
		require.NoError(t, pool.QueryRow(ctx, `SELECT to_regclass('dbcache_entries_expires_key_idx')::oid`).Scan(&before))
		require.NoError(t, m.Up(ctx))
		require.Equal(t, map[string]bool{"dbcache_entries_pkey": true, "dbcache_entries_expires_key_idx": true}, indexes(t, pool, s))
		var after uint32
		require.NoError(t, pool.QueryRow(ctx, `SELECT to_regclass('dbcache_entries_expires_key_idx')::oid`).Scan(&after))
		require.Equal(t, before, after, "the index built by hand was kept, not rebuilt")
	})
	t.Run("invalid", func(t *testing.T) {
		t.Parallel()
		s, m, pool := atVersion2(t)
		// A concurrent build that fails part way (here: division by zero
		// on one row) leaves an INVALID index behind.
		dbtest.Exec(t, pool, `INSERT INTO dbcache_entries VALUES ('bad', '\x00', NULL)`)
		_, err := pool.Exec(ctx, `CREATE INDEX CONCURRENTLY dbcache_entries_expires_key_idx ON dbcache_entries ((1 / (length(key) - 3)))`)
		require.ErrorContains(t, err, "division by zero")
		require.False(t, indexes(t, pool, s)["dbcache_entries_expires_key_idx"], "left invalid")

		require.NoError(t, m.Up(ctx))
		require.Equal(t, map[string]bool{"dbcache_entries_pkey": true, "dbcache_entries_expires_key_idx": true}, indexes(t, pool, s))
		var def string
		require.NoError(t, pool.QueryRow(ctx, `SELECT pg_get_indexdef(to_regclass('dbcache_entries_expires_key_idx'))`).Scan(&def))
		require.Contains(t, def, "(expires, key)")
	})
}

// Migrations 4 and 5 add written_at and its partial index to a table that
// holds rows without rewriting it: the rows there count as written when the
// migration ran. And back.
func TestWrittenAtMigration(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, m, pool := atVersion2(t)
	require.NoError(t, m.Up(ctx))
	require.NoError(t, m.Down(ctx, stepsAbove(3))) // at version 3, with rows
	var file uint32
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_relation_filenode('dbcache_entries')`).Scan(&file))

	require.NoError(t, m.Up(ctx))
	var after uint32
	var oldest, newest, now time.Time
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_relation_filenode('dbcache_entries'), min(written_at), max(written_at), now()
		FROM dbcache_entries`).Scan(&after, &oldest, &newest, &now))
	require.Equal(t, file, after, "the table was not rewritten")
	require.True(t, oldest.Equal(newest), "the rows there share the migration's time")
	require.WithinDuration(t, now, oldest, time.Minute)

	// New rows take the time of their statement.
	dbtest.Exec(t, pool, `INSERT INTO dbcache_entries (key, value, expires) VALUES ('new', '\x00', NULL)`)
	var written time.Time
	require.NoError(t, pool.QueryRow(ctx, `SELECT written_at FROM dbcache_entries WHERE key = 'new'`).Scan(&written))
	require.True(t, written.After(oldest))

	// The index holds the never-expiring rows and those expiring more than
	// an hour after they were written, and nothing else.
	var def string
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_get_indexdef(to_regclass('dbcache_entries_written_at_idx'))`).Scan(&def))
	require.Contains(t, def, "(written_at, key)")
	require.Contains(t, def, "WHERE ((expires IS NULL) OR ((expires - written_at) > '01:00:00'::interval))")

	require.NoError(t, m.Down(ctx, stepsAbove(3)))
	var exists bool
	require.NoError(t, pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_attribute
		WHERE attrelid = to_regclass('dbcache_entries') AND attname = 'written_at' AND NOT attisdropped)`).Scan(&exists))
	require.False(t, exists)
	require.Equal(t, 5001, dbtest.Count(t, pool))
	require.NoError(t, m.Up(ctx))
}
