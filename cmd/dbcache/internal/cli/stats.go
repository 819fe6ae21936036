package cli

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/dbcache"
)

// Stats is what `dbcache stats` reports. Its JSON form is the --json output.
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
	LastPass    *PassStats `json:"last_pass"`
	CullerState string     `json:"culler_state"`
}

// PassStats is the last culling pass as stats reports it.
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

// The stats statements. The table name is spliced in as a quoted
// identifier, as the library does; everything else is a parameter.
const (
	// One row when the table exists, none when not. pg_stat_user_tables
	// has no row until the statistics system has seen the table.
	qStatsTable = `SELECT n.nspname, pg_table_size(c.oid), pg_indexes_size(c.oid),
       coalesce(s.n_dead_tup, 0), s.last_vacuum, s.last_autovacuum,
       coalesce(pg_stat_get_dead_tuples(c.reltoastrelid), 0),
       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'written_at' AND NOT a.attisdropped)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = to_regclass($1)`

	// An exact count is a full scan: fine for an admin command, and it
	// agrees with what a Get would see (statement_timestamp, as the
	// library's liveness test uses).
	qStatsEntries = `SELECT statement_timestamp(), count(*),
       count(*) FILTER (WHERE expires <= statement_timestamp()),
       count(*) FILTER (WHERE expires IS NULL),
       min(expires), max(expires),
       coalesce(sum(pg_column_size(key) + pg_column_size(value) + ROW_OVERHEAD), 0)::int8
FROM TABLE`

	// qStatsOldest is the earliest write, from migration 4 on.
	qStatsOldest = `SELECT min(written_at) FROM TABLE`
)

// CollectStats reads the cache table's statistics. schema "" means the
// search_path's table. It returns an error wrapping dbcache.ErrNotMigrated
// when there is no cache table.
func CollectStats(ctx context.Context, pool *pgxpool.Pool, schema string) (*Stats, error) {
	ident := pgx.Identifier{dbcache.TableName}
	if schema != "" {
		ident = pgx.Identifier{schema, dbcache.TableName}
	}
	table := ident.Sanitize()
	var st Stats
	var nsp string
	var hasWritten bool
	err := pool.QueryRow(ctx, qStatsTable, table).Scan(&nsp, &st.TableBytes, &st.IndexBytes,
		&st.DeadTuples, &st.LastVacuum, &st.LastAutovacuum, &st.ToastDeadTuples, &hasWritten)
	if errors.Is(err, pgx.ErrNoRows) {
		where := "on the search_path"
		if schema != "" {
			where = fmt.Sprintf("in schema %q", schema)
		}
		return nil, fmt.Errorf("%w (no table %s %s)", dbcache.ErrNotMigrated, dbcache.TableName, where)
	}
	if err != nil {
		return nil, fmt.Errorf("stats: table: %w", err)
	}
	st.Schema, st.Table = nsp, dbcache.TableName
	qualified := pgx.Identifier{nsp, dbcache.TableName}.Sanitize()
	entries := strings.NewReplacer("TABLE", qualified, "ROW_OVERHEAD", strconv.Itoa(culling.RowOverhead)).Replace(qStatsEntries)
	err = pool.QueryRow(ctx, entries).Scan(&st.Now, &st.Entries, &st.Expired,
		&st.NeverExpire, &st.EarliestExpiry, &st.LatestExpiry, &st.Size)
	if err != nil {
		return nil, fmt.Errorf("stats: count: %w", err)
	}
	st.Live = st.Entries - st.Expired
	if hasWritten {
		if err := pool.QueryRow(ctx, strings.Replace(qStatsOldest, "TABLE", qualified, 1)).Scan(&st.OldestWrite); err != nil {
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

func (a *app) statsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "stats",
		Short: "Show the cache table's size, expiry and culling figures",
		Long: `Show the cache table's entries (an exact count: a full scan of the table),
how many have expired but are not yet removed, table and index sizes, dead
tuples (table and TOAST), the earliest and latest expiry, the entries' size
as cull --max-bytes counts it (measured, and as a pass would estimate it),
the oldest write, and the last culling pass with the limits it enforced.

Dead tuples and vacuum times come from PostgreSQL's statistics and lag a
little; everything else is exact as of the statement.`,
		Example: `  dbcache stats
  dbcache stats --json | jq .expired`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			pool, err := a.openPool(ctx, 1)
			if err != nil {
				return err
			}
			defer closePool(pool)
			// As the cache operations are: a server that stops answering
			// fails the command soon after the statement timeout.
			if a.g.opTimeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, a.g.opTimeout)
				defer cancel()
			}
			st, err := CollectStats(ctx, pool, a.g.schema)
			if err != nil {
				return err
			}
			if a.g.json {
				return a.writeJSON(st)
			}
			return a.printStats(st)
		},
	}
}

func (a *app) printStats(st *Stats) error {
	tw := tabwriter.NewWriter(a.out, 0, 0, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, args...)...) }
	never := func(t *time.Time) string {
		if t == nil {
			return "never"
		}
		return fmt.Sprintf("%s (%s)", timestamp(*t), relative(*t, st.Now))
	}
	row("table", "%s.%s", st.Schema, st.Table)
	row("entries", "%s (exact count)", humanCount(st.Entries))
	row("  live", "%s", humanCount(st.Live))
	row("  expired", "%s (not yet removed)", humanCount(st.Expired))
	row("  never expire", "%s", humanCount(st.NeverExpire))
	if st.EarliestExpiry == nil {
		row("expiry", "none (no entry has an expiry)")
	} else {
		row("earliest expiry", "%s", never(st.EarliestExpiry))
		row("latest expiry", "%s", never(st.LatestExpiry))
	}
	row("table size", "%s (heap and TOAST)", humanBytes(st.TableBytes))
	row("index size", "%s", humanBytes(st.IndexBytes))
	row("dead tuples", "%s, %s in TOAST (PostgreSQL statistics, approximate)", humanCount(st.DeadTuples), humanCount(st.ToastDeadTuples))
	row("last vacuum", "%s", never(st.LastVacuum))
	row("last autovacuum", "%s", never(st.LastAutovacuum))
	row("entries' size", "%s (keys and values as stored + %d B each); a pass would estimate %s",
		humanBytes(st.Size), culling.RowOverhead, humanBytes(st.SizeEstimate))
	if st.OldestWrite != nil {
		row("oldest write", "%s", never(st.OldestWrite))
	}
	switch p := st.LastPass; {
	case st.CullerState == "not migrated":
		row("last cull pass", "unknown (the culler's state table is missing: run `dbcache migrate up`)")
	case p == nil:
		row("last cull pass", "never")
	default:
		row("last cull pass", "%s ago, by %s: removed %s expired, culled %s, %s left, took %s",
			roundDuration(time.Duration(p.SecondsSince*float64(time.Second))), p.Runner,
			humanCount(p.ExpiredRemoved), humanCount(p.Culled), humanCount(p.Remaining),
			roundDuration(time.Duration(p.DurationSeconds*float64(time.Second))))
		if p.LastCullAt == nil {
			row("last cull", "never (no pass has had to remove live entries)")
		} else {
			row("last cull", "%s ago", roundDuration(time.Duration(*p.SecondsSinceCull*float64(time.Second))))
		}
		row("cull totals", "over %s recorded passes: removed %s expired, culled %s", humanCount(p.Passes),
			humanCount(p.TotalExpiredRemoved), humanCount(p.TotalCulled))
		row("limits", "%s", limitsText(st, p))
	}
	return tw.Flush()
}

// limitsText is the last pass's limits, each beside where the cache stands.
func limitsText(st *Stats, p *PassStats) string {
	var parts []string
	if p.MaxEntries != nil {
		parts = append(parts, fmt.Sprintf("max entries %s (now %s)", humanCount(*p.MaxEntries), humanCount(st.Entries)))
	}
	if p.MaxBytes != nil {
		parts = append(parts, fmt.Sprintf("max bytes %s (now %s)", humanBytes(*p.MaxBytes), humanBytes(st.Size)))
	}
	if p.MaxAgeSeconds != nil {
		age := time.Duration(*p.MaxAgeSeconds * float64(time.Second))
		text := fmt.Sprintf("max age %s", age)
		if st.OldestWrite != nil {
			text += fmt.Sprintf(" (oldest write %s ago)", roundDuration(st.Now.Sub(*st.OldestWrite)))
		}
		parts = append(parts, text+fmt.Sprintf(", %s aged out in total", humanCount(p.TotalAgedOut)))
	}
	if len(parts) == 0 {
		return "none recorded (no limit, or a culler from before migration 4)"
	}
	return strings.Join(parts, "; ")
}
