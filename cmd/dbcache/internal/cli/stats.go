package cli

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/tablestats"
)

// Stats is what `dbcache stats` reports (its JSON form is the --json
// output): package tablestats reads it, so the command and the Prometheus
// collector share one implementation.
type Stats = tablestats.Stats

// PassStats is the last culling pass as stats reports it.
type PassStats = tablestats.PassStats

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
little; everything else is exact as of the statement.

With several servers (--database-url NAME=URL, repeated): each server's
figures under its name, then the total (counts and sizes added up, the
earliest and latest times); --json gives {"shards":[…],"total":{…}}. A
server that fails is reported in its place and the command exits 1.`,
		Example: `  dbcache stats
  dbcache stats --json | jq .expired`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if a.sharded() {
				return a.statsSharded(ctx)
			}
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
			st, err := tablestats.Read(ctx, pool, a.g.schema)
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
