package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/dbcache/dbcache/migrations"
)

func (a *app) migratePersistenceCommand() *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "persistence [logged|unlogged]",
		Short: "Show, or change, whether the cache table is logged or UNLOGGED",
		Long: `Without an argument, print whether the cache table is logged (PostgreSQL's
default) or unlogged. With one, make it so.

An UNLOGGED table writes no WAL: writes are cheaper, but after a crash (not
a clean restart) PostgreSQL empties it, standbys cannot read it (queries on
a hot standby fail), and base backups hold it empty. For a cache whose loss
is only a cold start, that is often the right trade.

Changing it rewrites the table and its indexes under an ACCESS EXCLUSIVE
lock: every read and write of the cache waits until it is done (seconds per
gigabyte), and "logged" also writes the whole table to the WAL. The wait
for the lock is bounded (15 s). On a terminal it asks first; otherwise it
needs --yes.`,
		Example: `  dbcache migrate persistence
  dbcache migrate persistence unlogged --yes
  dbcache migrate persistence logged`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var want migrations.Persistence
			if len(args) == 1 {
				switch args[0] {
				case string(migrations.Logged), string(migrations.Unlogged):
					want = migrations.Persistence(args[0])
				default:
					return usagef("persistence must be logged or unlogged, got %q", args[0])
				}
				if !yes && !a.cfg.StdinIsTerminal {
					return confirmationRequired("migrate persistence rewrites the cache table under an exclusive lock: pass --yes to confirm (there is no terminal to ask on)")
				}
			}
			ctx := cmd.Context()
			m, err := a.migrator()
			if err != nil {
				return &usageError{err: err}
			}
			cur, err := m.Persistence(ctx)
			if err != nil {
				return err
			}
			if want != "" && want != cur {
				if !yes {
					if err := a.confirm(fmt.Sprintf("Rewrite the cache table as %s? Reads and writes of the cache wait until it is done", want)); err != nil {
						return err
					}
				}
				if err := m.SetPersistence(ctx, want); err != nil {
					return err
				}
			}
			now := cur
			if want != "" {
				now = want
			}
			if a.g.json {
				return a.writeJSON(struct {
					Persistence string `json:"persistence"`
					Changed     bool   `json:"changed"`
				}{string(now), now != cur})
			}
			switch {
			case now != cur:
				a.println("%s (was %s)", now, cur)
			default:
				a.println("%s", now)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
}
