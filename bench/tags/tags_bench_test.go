// Package tagsbench measures the two designs for tags, in one run, as
// docs/tags.md reports them:
//
//   - versions (package tags): each entry's value carries its tags'
//     versions, the versions are entries of the cache, a read checks them
//     (in the same GetMany when the Cache knows the key's tags, else with
//     a second read); invalidating a tag deletes its version;
//
//   - a tag table: rows (tag, key) with a primary key on (tag, key) and an
//     index on key, written with the entry in one statement; a read is a
//     plain Get; invalidating a tag deletes its entries and rows in one
//     statement. Built here only, for the comparison.
//
//     go test ./bench/tags -run '^$' -bench . -benchtime 1x
//
// PostgreSQL is DBCACHE_TEST_DATABASE_URL, or a throwaway server
// (internal/dbtest). Figures depend on the machine and its load: compare
// the ratios within one run.
package tagsbench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/benchpair"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/tags"
)

// TestMain starts the test server (dbtest.Main) only when benchmarks run.
func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
		os.Exit(m.Run())
	}
	dbtest.Main(m)
}

const (
	// The tag table's statements (the design not taken).
	sqlTableSchema = `
CREATE TABLE bench_entry_tags (
    tag text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    PRIMARY KEY (tag, key)
);
CREATE INDEX bench_entry_tags_key_idx ON bench_entry_tags (key)`
	// sqlTableSet writes the entry and replaces its tag rows, in one
	// statement.
	sqlTableSet = `
WITH e AS (
    INSERT INTO dbcache_entries (key, value, expires) VALUES ($1, $2, NULL)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires = NULL, written_at = EXCLUDED.written_at
    RETURNING key
), old AS (
    DELETE FROM bench_entry_tags t WHERE t.key = $1 AND t.tag <> ALL ($3::text[])
)
INSERT INTO bench_entry_tags (tag, key) SELECT unnest($3::text[]), key FROM e
ON CONFLICT DO NOTHING`
	// sqlTableInvalidate deletes a tag's entries and its rows.
	sqlTableInvalidate = `
WITH d AS (DELETE FROM bench_entry_tags WHERE tag = $1 RETURNING key)
DELETE FROM dbcache_entries e USING d WHERE e.key = d.key`
	// sqlFillEntries makes $3 entries under key prefix $1 holding $2 (a
	// tagged entry's stored form, for the versions); sqlFillTagRows gives
	// $2 of them tag rows for $3 and two more tags each.
	sqlFillEntries = `
INSERT INTO dbcache_entries (key, value, expires)
SELECT $1 || ':' || i, $2::bytea, NULL FROM generate_series(1, $3::int) i
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value`
	sqlFillTagRows = `
INSERT INTO bench_entry_tags (tag, key)
SELECT t, $1 || ':' || i FROM generate_series(1, $2::int) i, unnest(ARRAY[$3, $3 || '-b', $3 || '-c']) t
ON CONFLICT DO NOTHING`
)

func BenchmarkDesigns(b *testing.B) {
	ctx := context.Background()
	s := dbtest.NewSchema(b)
	s.Migrate(b)
	cfg := s.PoolConfig(b)
	cfg.MaxConns = 4
	pool := dbtest.NewPool(b, cfg)
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{CoalesceGets: -1, CoalesceSets: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer cache.Close()
	tc, err := tags.New(cache, nil)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, sqlTableSchema); err != nil {
		b.Fatal(err)
	}
	value := []byte(strings.Repeat("v", 100))
	three := []string{"user:42", "team:7", "page:home"}
	must := func(err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	must(cache.Set(ctx, "plain", value, dbcache.Forever))
	must(tc.Set(ctx, "t0", value, dbcache.Forever))
	must(tc.Set(ctx, "t3", value, dbcache.Forever, three...))
	_, err = pool.Exec(ctx, sqlTableSet, cache.MakeKey("table"), value, three)
	must(err)

	load0, _ := benchpair.LoadAverage()
	n, bulk := 3000, 100_000
	if testing.Short() { // CI's one iteration: that the benchmark still runs
		n, bulk = 20, 1000
	}
	type cell struct {
		name string
		op   func() error
	}
	cold := func(key string) func() error { // a Cache that has not seen the key: another process's
		return func() error {
			c, err := tags.New(cache, nil)
			if err != nil {
				return err
			}
			_, err = c.Get(ctx, key)
			return err
		}
	}
	reads := []cell{
		{"read: dbcache Get, no tags", func() error { _, err := cache.Get(ctx, "plain"); return err }},
		{"read: tags Get, 0 tags", func() error { _, err := tc.Get(ctx, "t0"); return err }},
		{"read: tags Get, 3 tags, key known to the Cache (one GetMany)", func() error { _, err := tc.Get(ctx, "t3"); return err }},
		{"read: tags Get, 3 tags, key new to the Cache (Get, then GetMany)", cold("t3")},
		{"read: tag table, 3 tags (a plain Get)", func() error { _, err := cache.Get(ctx, "table"); return err }},
	}
	writes := []cell{
		{"write: dbcache Set, no tags", func() error { return cache.Set(ctx, "plain", value, dbcache.Forever) }},
		{"write: tags Set, 3 tags (versions)", func() error { return tc.Set(ctx, "t3", value, dbcache.Forever, three...) }},
		{"write: tag table, 3 tags", func() error {
			_, err := pool.Exec(ctx, sqlTableSet, cache.MakeKey("table"), value, three)
			return err
		}},
	}
	var out strings.Builder
	fmt.Fprintf(&out, "\n| operation | median | ratio |\n|---|---|---|\n")
	for _, cells := range [][]cell{reads, writes} {
		// Round-robin, one operation of each cell in turn, so every cell
		// sees the same load; medians, which a stall does not move.
		times := make([][]time.Duration, len(cells))
		ops := n
		if cells[0].name[0] == 'w' {
			ops = n / 3
		}
		for range ops {
			for i, c := range cells {
				start := time.Now()
				must(c.op())
				times[i] = append(times[i], time.Since(start))
			}
		}
		var base time.Duration
		for i, c := range cells {
			slices.Sort(times[i])
			med := times[i][len(times[i])/2]
			if i == 0 {
				base = med
			}
			fmt.Fprintf(&out, "| %s | %s | %.2f |\n", c.name, med.Round(time.Microsecond), float64(med)/float64(base))
		}
	}
	out.WriteString("\n(ratios to the first row of reads and of writes)\n")

	// Invalidation of a tag carried by 1 and by 100,000 entries.
	raw, err := cache.Get(ctx, "t3") // a tagged entry's stored form
	must(err)
	fmt.Fprintf(&out, "\n| invalidate a tag carried by (median of 3) | versions (tags.Invalidate) | tag table (DELETE) | table / versions |\n|---|---|---|---|\n")
	for _, entries := range []int{1, bulk} {
		var dvs, dts []time.Duration
		const reps = 3
		for r := range reps {
			tag := fmt.Sprintf("bulk%d-%d", entries, r)
			// Versions: the entries carry the tag's version; Invalidate
			// deletes the version whatever their number.
			must(tc.Set(ctx, "seed-"+tag, value, dbcache.Forever, tag))
			seed, err := rawOf(ctx, pool, cache.MakeKey("seed-"+tag))
			must(err)
			_, err = pool.Exec(ctx, sqlFillEntries, cache.MakeKey("v-"+tag), seed, entries)
			must(err)
			start := time.Now()
			must(tc.Invalidate(ctx, tag))
			dvs = append(dvs, time.Since(start))
			// The tag table: the entries and their rows, deleted.
			_, err = pool.Exec(ctx, sqlFillEntries, cache.MakeKey("t-"+tag), value, entries)
			must(err)
			_, err = pool.Exec(ctx, sqlFillTagRows, cache.MakeKey("t-"+tag), entries, tag)
			must(err)
			_, err = pool.Exec(ctx, "ANALYZE dbcache_entries; ANALYZE bench_entry_tags")
			must(err)
			start = time.Now()
			tag2, err := pool.Exec(ctx, sqlTableInvalidate, tag)
			dts = append(dts, time.Since(start))
			must(err)
			if tag2.RowsAffected() != int64(entries) {
				b.Fatalf("the tag table's invalidation removed %d entries, not %d", tag2.RowsAffected(), entries)
			}
		}
		slices.Sort(dvs)
		slices.Sort(dts)
		dv, dt := dvs[reps/2], dts[reps/2]
		fmt.Fprintf(&out, "| %d entries | %s | %s | %.0f |\n", entries, dv.Round(time.Microsecond), dt.Round(time.Microsecond), float64(dt)/float64(dv))
	}

	// What culling counts: 100,000 entries with 3 tags each.
	var tableBytes int64
	header := int64(len(raw) - len(value))
	_, err = pool.Exec(ctx, "TRUNCATE bench_entry_tags")
	must(err)
	_, err = pool.Exec(ctx, sqlFillTagRows, cache.MakeKey("size"), bulk, "size")
	must(err)
	must(pool.QueryRow(ctx, `SELECT pg_total_relation_size('bench_entry_tags')`).Scan(&tableBytes))
	fmt.Fprintf(&out, "\nTag storage for %d entries with 3 tags: versions, %d header bytes an entry (%.1f MB, in the cache table, which culling counts) plus one row per tag; tag table, %.1f MB (rows and indexes, in a table culling does not count).\n",
		bulk, header, float64(header*int64(bulk))/1e6, float64(tableBytes)/1e6)
	load1, _ := benchpair.LoadAverage()
	fmt.Fprintf(&out, "\nLoad average %.1f before, %.1f after (a loaded machine: 2 cores shared).\n", load0, load1)
	b.Log(out.String())
	fmt.Print(out.String())
}

func rawOf(ctx context.Context, pool *pgxpool.Pool, madeKey string) ([]byte, error) {
	var v []byte
	err := pool.QueryRow(ctx, `SELECT value FROM dbcache_entries WHERE key = $1`, madeKey).Scan(&v)
	return v, err
}
