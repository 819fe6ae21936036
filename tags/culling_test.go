package tags_test

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/tags"
)

// What culling counts: a tagged entry's tags are in its stored value (the
// header) and the tags' versions are entries of the cache table, so
// MaxBytes and MaxEntries count both, with nothing added to culling. A
// culler at a tight MaxBytes over entries whose headers are most of their
// bytes brings the table, tag storage included, under the limit; culling
// a tag's version makes the entries carrying it misses, never errors or
// other values.
func TestCullingCountsTagStorage(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	tagNames := make([]string, 40)
	for i := range tagNames {
		tagNames[i] = fmt.Sprintf("tag-%02d-%s", i, strings.Repeat("x", 30))
	}
	want := map[string]string{}
	for i := range 300 {
		k := fmt.Sprintf("k%03d", i)
		ts := make([]string, 16)
		for j := range ts {
			ts[j] = tagNames[(i+j*3)%len(tagNames)]
		}
		timeout := dbcache.ExpiresIn(time.Hour + time.Duration(i)*time.Second)
		if i%3 == 0 {
			timeout = dbcache.Forever
		}
		want[k] = fmt.Sprintf("v%d", i)
		require.NoError(t, b.tc.Set(ctx, k, []byte(want[k]), timeout, ts...))
	}
	var rows, payload, stored int64
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*), sum(pg_column_size(key) + pg_column_size(value) + 44) FROM dbcache_entries`).Scan(&rows, &stored))
	for _, v := range want {
		payload += int64(len(v))
	}
	require.EqualValues(t, 300+len(tagNames), rows, "the tags' versions are rows of the table")
	var expiring int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM dbcache_entries WHERE strpos(key, $1) > 0 AND expires IS NOT NULL`, tags.PrefixDefault).Scan(&expiring))
	require.Zero(t, expiring, "versions never expire")
	est, err := culling.EstimateSize(ctx, b.pool, "", 0)
	require.NoError(t, err)
	require.True(t, est.Exact)
	require.Equal(t, stored, est.Bytes, "the size MaxBytes counts is every row's, headers and versions included")
	require.Greater(t, stored, 10*payload, "the tag storage is most of the bytes")

	limit := stored / 3
	c, err := culling.New(b.pool, &culling.Config{MaxBytes: limit, MaxEntries: culling.NoLimit, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	res, err := c.RunOnce(ctx)
	require.NoError(t, err)
	require.Positive(t, res.Culled)
	var after int64
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT coalesce(sum(pg_column_size(key) + pg_column_size(value) + 44), 0) FROM dbcache_entries`).Scan(&after))
	require.LessOrEqual(t, after, limit, "tag storage included, the table is under MaxBytes")
	require.Positive(t, readBack(t, b.tc, want), "entries and their versions survived")

	// MaxEntries far below the tags' count: versions go too (never
	// expiring, they are culled last), and their entries are misses.
	c, err = culling.New(b.pool, &culling.Config{MaxEntries: 20, CullFrequency: culling.CullAll, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	_, err = c.RunOnce(ctx)
	require.NoError(t, err)
	var versions int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM dbcache_entries WHERE key LIKE '%' || $1 || '%'`, tags.PrefixDefault).Scan(&versions))
	require.Less(t, versions, len(tagNames), "some tags' versions were culled")
	hits := readBack(t, b.tc, want)
	t.Logf("%d rows, %d stored bytes for %d payload bytes; culled to %d bytes; %d hits after culling versions", rows, stored, payload, after, hits)
}

// readBack reads every key: the value written, or a miss.
func readBack(t *testing.T, tc *tags.Cache, want map[string]string) (hits int) {
	t.Helper()
	for k, w := range want {
		v, err := tc.Get(ctxT(t), k)
		switch {
		case errors.Is(err, dbcache.ErrMiss):
		case err != nil:
			t.Fatalf("%s: %v", k, err)
		default:
			require.Equal(t, w, string(v), k)
			hits++
		}
	}
	return hits
}
