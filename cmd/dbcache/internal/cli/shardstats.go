package cli

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/tablestats"
)

// shardStatsJSON is `stats --json` with several servers: each server's
// stats (or its error) and the total of those that answered.
type shardStatsJSON struct {
	Shards []shardStatsEntry `json:"shards"`
	Total  statsTotal        `json:"total"`
}

type shardStatsEntry struct {
	Shard string `json:"shard"`
	*Stats
	Error string `json:"error,omitempty"`
}

// statsTotal adds up the servers' figures: counts and sizes are sums,
// expiry and write times the earliest and latest. Culling passes are per
// server (one culler each) and have no total.
type statsTotal struct {
	Servers         int        `json:"servers"`
	Answered        int        `json:"answered"`
	Entries         int64      `json:"entries"`
	Live            int64      `json:"live"`
	Expired         int64      `json:"expired"`
	NeverExpire     int64      `json:"never_expire"`
	EarliestExpiry  *time.Time `json:"earliest_expiry"`
	LatestExpiry    *time.Time `json:"latest_expiry"`
	TableBytes      int64      `json:"table_bytes"`
	IndexBytes      int64      `json:"index_bytes"`
	DeadTuples      int64      `json:"dead_tuples"`
	ToastDeadTuples int64      `json:"toast_dead_tuples"`
	Size            int64      `json:"size"`
	SizeEstimate    int64      `json:"size_estimate"`
	OldestWrite     *time.Time `json:"oldest_write"`
}

func (t *statsTotal) add(st *Stats) {
	t.Answered++
	t.Entries += st.Entries
	t.Live += st.Live
	t.Expired += st.Expired
	t.NeverExpire += st.NeverExpire
	t.TableBytes += st.TableBytes
	t.IndexBytes += st.IndexBytes
	t.DeadTuples += st.DeadTuples
	t.ToastDeadTuples += st.ToastDeadTuples
	t.Size += st.Size
	t.SizeEstimate += st.SizeEstimate
	t.EarliestExpiry = earlier(t.EarliestExpiry, st.EarliestExpiry)
	t.OldestWrite = earlier(t.OldestWrite, st.OldestWrite)
	if st.LatestExpiry != nil && (t.LatestExpiry == nil || st.LatestExpiry.After(*t.LatestExpiry)) {
		t.LatestExpiry = st.LatestExpiry
	}
}

func earlier(a, b *time.Time) *time.Time {
	if b != nil && (a == nil || b.Before(*a)) {
		return b
	}
	return a
}

// statsSharded is stats over several servers: each read at once (each as
// the single-server command reads it), printed in the order given, then
// the total. A server that fails is reported in its place, the total
// covers the others, and the command exits 1.
func (a *app) statsSharded(ctx context.Context) error {
	n := len(a.shards)
	stats := make([]*Stats, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, sh := range a.shards {
		s := *a
		s.g.databaseURL = sh.dsn
		wg.Go(func() {
			pool, err := s.openPool(ctx, 1)
			if err != nil {
				errs[i] = withShard(sh.name, err)
				return
			}
			defer closePool(pool)
			rctx := ctx
			if s.g.opTimeout > 0 {
				var cancel context.CancelFunc
				rctx, cancel = context.WithTimeout(ctx, s.g.opTimeout)
				defer cancel()
			}
			stats[i], errs[i] = tablestats.Read(rctx, pool, a.g.schema)
			if errs[i] != nil {
				errs[i] = withShard(sh.name, errs[i])
			}
		})
	}
	wg.Wait()
	total := statsTotal{Servers: n}
	for _, st := range stats {
		if st != nil {
			total.add(st)
		}
	}
	if a.g.json {
		out := shardStatsJSON{Total: total}
		for i, sh := range a.shards {
			e := shardStatsEntry{Shard: sh.name, Stats: stats[i]}
			if errs[i] != nil {
				e.Error = errorLine(errs[i], a.g.connectTimeout)
			}
			out.Shards = append(out.Shards, e)
		}
		if err := a.writeJSON(out); err != nil {
			return err
		}
	} else {
		for i, sh := range a.shards {
			a.println("shard %s", sh.name)
			if errs[i] != nil {
				a.println("  failed: %s", errorLine(errs[i], a.g.connectTimeout))
			} else if err := a.printStats(stats[i]); err != nil {
				return err
			}
			a.println("")
		}
		if err := a.printTotal(&total); err != nil {
			return err
		}
	}
	return errors.Join(errs...)
}

func (a *app) printTotal(t *statsTotal) error {
	tw := tabwriter.NewWriter(a.out, 0, 0, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, args...)...) }
	if t.Answered == t.Servers {
		a.println("total (%d servers)", t.Servers)
	} else {
		a.println("total (%d of %d servers: the others failed)", t.Answered, t.Servers)
	}
	at := func(p *time.Time) string {
		if p == nil {
			return "none"
		}
		return timestamp(*p)
	}
	row("entries", "%s (exact count)", humanCount(t.Entries))
	row("  live", "%s", humanCount(t.Live))
	row("  expired", "%s (not yet removed)", humanCount(t.Expired))
	row("  never expire", "%s", humanCount(t.NeverExpire))
	row("earliest expiry", "%s", at(t.EarliestExpiry))
	row("latest expiry", "%s", at(t.LatestExpiry))
	row("table size", "%s (heap and TOAST)", humanBytes(t.TableBytes))
	row("index size", "%s", humanBytes(t.IndexBytes))
	row("dead tuples", "%s, %s in TOAST", humanCount(t.DeadTuples), humanCount(t.ToastDeadTuples))
	row("entries' size", "%s (keys and values as stored + %d B each); passes would estimate %s",
		humanBytes(t.Size), culling.RowOverhead, humanBytes(t.SizeEstimate))
	row("oldest write", "%s", at(t.OldestWrite))
	return tw.Flush()
}
