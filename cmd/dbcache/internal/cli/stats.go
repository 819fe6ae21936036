package cli

import (
	"context"
	"errors"
	"fmt"
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

	// LastPass is the last completed culling pass, null if none was
	// recorded (or the culler's state table does not exist: CullerState
	// says which).
	LastPass    *PassStats `json:"last_pass"`
	CullerState string     `json:"culler_state"`
}

// PassStats is the last culling pass as stats reports it.
type PassStats struct {
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
       coalesce(s.n_dead_tup, 0), s.last_vacuum, s.last_autovacuum
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
       min(expires), max(expires)
FROM TABLE`
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
	err := pool.QueryRow(ctx, qStatsTable, table).Scan(&nsp, &st.TableBytes, &st.IndexBytes,
		&st.DeadTuples, &st.LastVacuum, &st.LastAutovacuum)
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
	err = pool.QueryRow(ctx, strings.Replace(qStatsEntries, "TABLE", qualified, 1)).Scan(&st.Now, &st.Entries, &st.Expired,
		&st.NeverExpire, &st.EarliestExpiry, &st.LatestExpiry)
	if err != nil {
		return nil, fmt.Errorf("stats: count: %w", err)
	}
	st.Live = st.Entries - st.Expired

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
tuples, the earliest and latest expiry, and the last culling pass.

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
	row("dead tuples", "%s (PostgreSQL statistics, approximate)", humanCount(st.DeadTuples))
	row("last vacuum", "%s", never(st.LastVacuum))
	row("last autovacuum", "%s", never(st.LastAutovacuum))
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
	}
	return tw.Flush()
}
