// Package tablestats reads what a dbcache table holds: entries (live,
// expired, never expiring), expiry range, sizes (the table's, and the
// entries' as culling's MaxBytes counts them), dead tuples, vacuum times,
// the oldest write and the last culling pass. It is what `dbcache stats` prints and what
// the Prometheus collector (package github.com/dbcache/dbcache/prommetrics)
// exports, in one implementation. It needs pgx only, so applications may
// import it too.
//
// Read is exact and costs a full scan of the table (an admin command's
// figure); Size is cheap at any table size (a scrape's figure).
//
// On Citus, when the cache table is in pg_dist_partition (distributed, or a
// reference table), the sizes, row estimates, dead tuples and vacuum times
// are the sums over its shards, read with run_command_on_shards: the
// coordinator's own table (the shell) is empty and its catalog reads 0
// (docs/scale-out.md#citus).
package tablestats

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/dbcache"
)

// Stats is what Read reports; its JSON form is `dbcache stats --json`.
type Stats struct {
	// Schema and Table name the cache table.
	Schema string `json:"schema"`
	Table  string `json:"table"`
	// Now is the database's clock when the entries were counted; expiry and
	// ages are against it.
	Now time.Time `json:"now"`

	// Entries counts every row, live or expired, exactly (a full count, not
	// PostgreSQL's estimate). Expired rows are still stored until a cull or
	// an overwrite removes them; NeverExpire rows have no expiry.
	Entries     int64 `json:"entries"`
	Live        int64 `json:"live"`
	Expired     int64 `json:"expired"`
	NeverExpire int64 `json:"never_expire"`
	// EarliestExpiry and LatestExpiry are the smallest and largest expiry
	// over all rows that have one (the earliest is in the past when expired
	// rows remain); null when no row has one.
	EarliestExpiry *time.Time `json:"earliest_expiry"`
	LatestExpiry   *time.Time `json:"latest_expiry"`

	// TableBytes is the heap with its TOAST and maps (pg_table_size),
	// IndexBytes every index (pg_indexes_size).
	TableBytes int64 `json:"table_bytes"`
	IndexBytes int64 `json:"index_bytes"`
	// DeadTuples and the vacuum times come from PostgreSQL's cumulative
	// statistics (pg_stat_user_tables): approximate and a little behind.
	DeadTuples     int64      `json:"dead_tuples"`
	LastVacuum     *time.Time `json:"last_vacuum"`
	LastAutovacuum *time.Time `json:"last_autovacuum"`
	// ToastDeadTuples are the dead chunks of out-of-line values (the TOAST
	// table's statistics): most of the bytes a cull of large entries frees,
	// until vacuum reclaims them.
	ToastDeadTuples int64 `json:"toast_dead_tuples"`

	// Size is the entries' size as culling's MaxBytes counts it (keys and
	// values as stored plus culling.RowOverhead each), measured exactly by
	// this command's scan; SizeEstimate is what a culling pass would
	// estimate instead (culling.EstimateSize), for comparison.
	Size         int64 `json:"size"`
	SizeEstimate int64 `json:"size_estimate"`
	// OldestWrite is the earliest written_at (migration 4; null before it,
	// or when the table is empty).
	OldestWrite *time.Time `json:"oldest_write"`

	// LastPass is the last completed culling pass, null if none was
	// recorded (or the culler's state table does not exist: CullerState
	// says which).
	LastPass *PassStats `json:"last_pass"`
	// CullerState is "ok" (a pass is recorded), "never" (none yet) or
	// "not migrated" (the culler's state table, migration 002, is
	// missing).
	CullerState string `json:"culler_state"`
}

// PassStats is the last culling pass, from culling.LastPass.
type PassStats struct {
	// The limits the last pass enforced (null for none, or before
	// migration 4), what MaxAge removed, the bytes it culled and the size
	// it estimated (null without MaxBytes).
	MaxEntries    *int64   `json:"max_entries"`
	MaxBytes      *int64   `json:"max_bytes"`
	MaxAgeSeconds *float64 `json:"max_age_seconds"`
	AgedOut       int64    `json:"aged_out"`
	TotalAgedOut  int64    `json:"total_aged_out"`
	CulledBytes   int64    `json:"culled_bytes"`
	Size          *int64   `json:"size"`

	FinishedAt          time.Time  `json:"finished_at"`
	SecondsSince        float64    `json:"seconds_since"`
	DurationSeconds     float64    `json:"duration_seconds"`
	ExpiredRemoved      int64      `json:"expired_removed"`
	Culled              int64      `json:"culled"`
	Remaining           int64      `json:"remaining"`
	Runner              string     `json:"runner"`
	Passes              int64      `json:"passes"`
	LastCullAt          *time.Time `json:"last_cull_at"`
	SecondsSinceCull    *float64   `json:"seconds_since_cull"`
	TotalExpiredRemoved int64      `json:"total_expired_removed"`
	TotalCulled         int64      `json:"total_culled"`
}

// The statements. The table name is spliced in as a quoted identifier, as
// the library does; everything else is a parameter.
const (
	// One row when the table exists, none when not. pg_stat_user_tables
	// has no row until the statistics system has seen the table.
	qTable = `SELECT n.nspname, pg_table_size(c.oid), pg_indexes_size(c.oid),
       coalesce(s.n_dead_tup, 0), s.last_vacuum, s.last_autovacuum,
       coalesce(pg_stat_get_dead_tuples(c.reltoastrelid), 0),
       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'written_at' AND NOT a.attisdropped),
       c.reltuples::bigint, coalesce(s.n_live_tup, 0),
       EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = to_regclass($1)`

	// An exact count is a full scan: fine for an admin command, and it
	// agrees with what a Get would see (statement_timestamp, as the
	// library's liveness test uses).
	qEntries = `SELECT statement_timestamp(), count(*),
       count(*) FILTER (WHERE expires <= statement_timestamp()),
       count(*) FILTER (WHERE expires IS NULL),
       min(expires), max(expires),
       coalesce(sum(pg_column_size(key) + pg_column_size(value) + ROW_OVERHEAD), 0)::int8
FROM TABLE`

	// qOldest is the earliest write, from migration 4 on.
	qOldest = `SELECT min(written_at) FROM TABLE`

	// Bounded counts for Size: each walks at most $1 + 1 rows (the
	// expired ones through the expires index).
	qBoundedCounts = `SELECT (SELECT count(*) FROM (SELECT 1 FROM TABLE LIMIT $1 + 1) a),
       (SELECT count(*) FROM (SELECT 1 FROM TABLE WHERE expires <= statement_timestamp() LIMIT $1 + 1) e)`
)

// The Citus forms (docs/scale-out.md#citus). A distributed table's rows
// are in its shards, on the workers; the coordinator's table (the shell)
// stays empty, so its pg_class row (reltuples, relpages), its sizes and
// its statistics all read 0. When the cache table is distributed (or
// referenced: one shard), the sizes, estimates and statistics are read
// from each shard instead and summed (the vacuum times: the latest of any
// shard).
const (
	// Whether the table is in Citus's metadata, asked only once qTable
	// found the citus extension installed (a plain server never sees
	// pg_dist_partition named).
	qCitusDistributed = `SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass($1))`

	// One row per shard: run_command_on_shards runs qShardCommand on each
	// shard's own node, %1$L replaced by the shard's qualified name as a
	// literal, and returns its one text value (or the error's message with
	// success false).
	qShards = `SELECT shardid, success, result FROM run_command_on_shards($1::regclass, $2)`

	// A shard's figures as one text of eight fields: table bytes, index
	// bytes, reltuples (0 for a shard never analysed, whose reltuples is
	// -1), live and dead tuples and the TOAST table's dead tuples from the
	// statistics, and the vacuum times in Unix seconds ("-" for none).
	qShardCommand = `SELECT concat_ws(' ', pg_table_size(c.oid), pg_indexes_size(c.oid), greatest(c.reltuples, 0)::bigint,
       coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0), coalesce(pg_stat_get_dead_tuples(c.reltoastrelid), 0),
       coalesce(extract(epoch FROM s.last_vacuum)::text, '-'), coalesce(extract(epoch FROM s.last_autovacuum)::text, '-'))
FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = %1$L::regclass`
)

// citusMode says whether table reads the shards: citusAuto when the table
// is in Citus's metadata, citusOn always (the tests' forced mode, with
// stand-ins of Citus's functions on plain PostgreSQL).
type citusMode int

const (
	citusAuto citusMode = iota
	citusOn
)

// distributed reports whether the cache table named qualified is in
// Citus's metadata.
func distributed(ctx context.Context, pool *pgxpool.Pool, qualified string) (bool, error) {
	var dist bool
	err := pool.QueryRow(ctx, qCitusDistributed, qualified).Scan(&dist)
	return dist, err
}

// fromShards replaces t's sizes, estimates and statistics by the sums
// over the shards of the table named qualified.
func fromShards(ctx context.Context, pool *pgxpool.Pool, qualified string, t *tableRow) error {
	rows, err := pool.Query(ctx, qShards, qualified, qShardCommand)
	if err != nil {
		return err
	}
	type shard struct {
		id     int64
		ok     bool
		result string
	}
	shards, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (shard, error) {
		var s shard
		err := r.Scan(&s.id, &s.ok, &s.result)
		return s, err
	})
	if err != nil {
		return err
	}
	var sum tableRow
	for _, s := range shards {
		if !s.ok {
			return fmt.Errorf("shard %d: %s", s.id, s.result)
		}
		f := strings.Fields(s.result)
		if len(f) != 8 {
			return fmt.Errorf("shard %d: %d fields in its answer, want 8", s.id, len(f))
		}
		var n [6]int64
		for i := range n {
			v, err := strconv.ParseInt(f[i], 10, 64)
			if err != nil || v < 0 {
				return fmt.Errorf("shard %d: field %d of its answer is not a count", s.id, i+1)
			}
			n[i] = v
		}
		sum.tableBytes += n[0]
		sum.indexBytes += n[1]
		sum.reltuples += n[2]
		sum.statTuples += n[3]
		sum.deadTuples += n[4]
		sum.toastDeadTuples += n[5]
		for i, dst := range []**time.Time{&sum.lastVacuum, &sum.lastAutovacuum} {
			if f[6+i] == "-" {
				continue
			}
			sec, err := strconv.ParseFloat(f[6+i], 64)
			if err != nil || math.IsNaN(sec) || math.Abs(sec) > 1e11 {
				return fmt.Errorf("shard %d: field %d of its answer is not a time", s.id, 7+i)
			}
			at := time.Unix(0, 0).Add(time.Duration(sec * float64(time.Second)))
			if *dst == nil || at.After(**dst) {
				*dst = &at
			}
		}
	}
	t.tableBytes, t.indexBytes, t.reltuples, t.statTuples = sum.tableBytes, sum.indexBytes, sum.reltuples, sum.statTuples
	t.deadTuples, t.toastDeadTuples, t.lastVacuum, t.lastAutovacuum = sum.deadTuples, sum.toastDeadTuples, sum.lastVacuum, sum.lastAutovacuum
	return nil
}

// table finds the cache table in schema ("" for the search_path's): its
// schema and sizes, or an error wrapping dbcache.ErrNotMigrated.
func table(ctx context.Context, pool *pgxpool.Pool, schema string, citus citusMode) (nsp string, t tableRow, err error) {
	if pool == nil {
		return "", t, errors.New("tablestats: pool is nil")
	}
	ident := pgx.Identifier{dbcache.TableName}
	if schema != "" {
		ident = pgx.Identifier{schema, dbcache.TableName}
	}
	err = pool.QueryRow(ctx, qTable, ident.Sanitize()).Scan(&nsp, &t.tableBytes, &t.indexBytes,
		&t.deadTuples, &t.lastVacuum, &t.lastAutovacuum, &t.toastDeadTuples, &t.hasWritten, &t.reltuples, &t.statTuples, &t.citusInstalled)
	if errors.Is(err, pgx.ErrNoRows) {
		where := "on the search_path"
		if schema != "" {
			where = fmt.Sprintf("in schema %q", schema)
		}
		return "", t, fmt.Errorf("%w (no table %s %s)", dbcache.ErrNotMigrated, dbcache.TableName, where)
	}
	if err != nil {
		return "", t, fmt.Errorf("stats: table: %w", err)
	}
	qualified := pgx.Identifier{nsp, dbcache.TableName}.Sanitize()
	shards := citus == citusOn
	if !shards && t.citusInstalled {
		if shards, err = distributed(ctx, pool, qualified); err != nil {
			return "", t, fmt.Errorf("stats: check for Citus: %w", err)
		}
	}
	if shards {
		if err := fromShards(ctx, pool, qualified, &t); err != nil {
			return "", t, fmt.Errorf("stats: the shards' sizes: %w", err)
		}
	}
	return nsp, t, nil
}

type tableRow struct {
	tableBytes, indexBytes, deadTuples int64
	lastVacuum, lastAutovacuum         *time.Time
	toastDeadTuples                    int64
	hasWritten                         bool // migration 4's written_at
	reltuples, statTuples              int64
	citusInstalled                     bool
}

// Read reads the cache table's statistics in schema ("" means the
// search_path's table), with an exact count of its entries: a full scan,
// bounded only by ctx. It returns an error wrapping dbcache.ErrNotMigrated
// when there is no cache table.
func Read(ctx context.Context, pool *pgxpool.Pool, schema string) (*Stats, error) {
	return read(ctx, pool, schema, citusAuto)
}

func read(ctx context.Context, pool *pgxpool.Pool, schema string, citus citusMode) (*Stats, error) {
	nsp, t, err := table(ctx, pool, schema, citus)
	if err != nil {
		return nil, err
	}
	st := Stats{TableBytes: t.tableBytes, IndexBytes: t.indexBytes, DeadTuples: t.deadTuples,
		LastVacuum: t.lastVacuum, LastAutovacuum: t.lastAutovacuum, ToastDeadTuples: t.toastDeadTuples}
	hasWritten := t.hasWritten
	st.Schema, st.Table = nsp, dbcache.TableName
	qualified := pgx.Identifier{nsp, dbcache.TableName}.Sanitize()
	entries := strings.NewReplacer("TABLE", qualified, "ROW_OVERHEAD", strconv.Itoa(culling.RowOverhead)).Replace(qEntries)
	err = pool.QueryRow(ctx, entries).Scan(&st.Now, &st.Entries, &st.Expired,
		&st.NeverExpire, &st.EarliestExpiry, &st.LatestExpiry, &st.Size)
	if err != nil {
		return nil, fmt.Errorf("stats: count: %w", err)
	}
	st.Live = st.Entries - st.Expired
	if hasWritten {
		if err := pool.QueryRow(ctx, strings.Replace(qOldest, "TABLE", qualified, 1)).Scan(&st.OldestWrite); err != nil {
			return nil, fmt.Errorf("stats: oldest write: %w", err)
		}
	}
	est, err := culling.EstimateSize(ctx, pool, nsp, 0)
	if err != nil {
		return nil, fmt.Errorf("stats: size estimate: %w", err)
	}
	st.SizeEstimate = est.Bytes

	rec, err := culling.LastPass(ctx, pool, nsp)
	switch {
	case errors.Is(err, culling.ErrNoPass):
		st.CullerState = "never"
	case errors.Is(err, culling.ErrTableNotFound):
		st.CullerState = "not migrated"
	case err != nil:
		return nil, fmt.Errorf("stats: last cull: %w", err)
	default:
		st.CullerState = "ok"
		p := &PassStats{
			FinishedAt:          rec.FinishedAt,
			SecondsSince:        rec.SinceLastPass.Seconds(),
			DurationSeconds:     rec.Duration.Seconds(),
			ExpiredRemoved:      rec.ExpiredRemoved,
			Culled:              rec.Culled,
			Remaining:           rec.Remaining,
			Runner:              rec.Runner,
			Passes:              rec.Passes,
			TotalExpiredRemoved: rec.TotalExpiredRemoved,
			TotalCulled:         rec.TotalCulled,
		}
		if !rec.LastCullAt.IsZero() {
			t, s := rec.LastCullAt, rec.SinceLastCull.Seconds()
			p.LastCullAt, p.SecondsSinceCull = &t, &s
		}
		if rec.Limits {
			p.AgedOut, p.TotalAgedOut, p.CulledBytes = rec.AgedOut, rec.TotalAgedOut, rec.CulledBytes
			if rec.MaxEntries != culling.NoLimit {
				n := rec.MaxEntries
				p.MaxEntries = &n
			}
			if rec.MaxBytes > 0 {
				n, sz := rec.MaxBytes, rec.Size
				p.MaxBytes, p.Size = &n, &sz
			}
			if rec.MaxAge > 0 {
				sec := rec.MaxAge.Seconds()
				p.MaxAgeSeconds = &sec
			}
		}
		st.LastPass = p
	}
	return &st, nil
}

// CountLimitDefault is Size's default countLimit.
const CountLimitDefault = 10_000

// Sizes is what Size reports: figures cheap enough to read on every
// metrics scrape, whatever the table's size.
type Sizes struct {
	// Schema is the schema of the cache table.
	Schema string
	// Rows is the number of rows, live or expired: exact when RowsExact,
	// otherwise PostgreSQL's statistics (the larger of pg_class.reltuples
	// and pg_stat_user_tables.n_live_tup; expired rows are live tuples
	// until removed), which lag writes a little.
	Rows      int64
	RowsExact bool
	// Expired is the number of expired rows not yet removed, exact up to
	// the count limit; ExpiredAtLeast reports that there are at least that
	// many (the walk stopped at the limit).
	Expired        int64
	ExpiredAtLeast bool
	// TableBytes, IndexBytes and DeadTuples are as in Stats.
	TableBytes, IndexBytes, DeadTuples int64
}

// Size reads the cache table's sizes in schema ("" for the search_path's)
// at a bounded cost: two index or heap walks of at most countLimit+1 rows
// (CountLimitDefault when countLimit <= 0) and the catalog's sizes. A
// table of more rows than countLimit is counted from PostgreSQL's
// statistics instead. It returns an error wrapping dbcache.ErrNotMigrated
// when there is no cache table.
func Size(ctx context.Context, pool *pgxpool.Pool, schema string, countLimit int) (*Sizes, error) {
	return size(ctx, pool, schema, countLimit, citusAuto)
}

func size(ctx context.Context, pool *pgxpool.Pool, schema string, countLimit int, citus citusMode) (*Sizes, error) {
	if countLimit <= 0 {
		countLimit = CountLimitDefault
	}
	nsp, t, err := table(ctx, pool, schema, citus)
	if err != nil {
		return nil, err
	}
	s := Sizes{Schema: nsp, TableBytes: t.tableBytes, IndexBytes: t.indexBytes, DeadTuples: t.deadTuples}
	qualified := pgx.Identifier{nsp, dbcache.TableName}.Sanitize()
	var rows, expired int64
	if err := pool.QueryRow(ctx, strings.ReplaceAll(qBoundedCounts, "TABLE", qualified), countLimit).Scan(&rows, &expired); err != nil {
		return nil, fmt.Errorf("stats: count: %w", err)
	}
	limit := int64(countLimit)
	s.Rows, s.RowsExact = rows, rows <= limit
	if !s.RowsExact {
		s.Rows = max(t.reltuples, t.statTuples, limit+1)
	}
	s.Expired, s.ExpiredAtLeast = min(expired, limit), expired > limit
	return &s, nil
}
