package cli

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/dbcache/dbcache/migrations"
)

func (a *app) migrateCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Create, upgrade or inspect the cache's schema",
		Long: `Apply or revert dbcache's migrations in the schema (--schema, else the
search_path's first). Migrations are recorded in dbcache_schema_migrations,
never in the application's schema_migrations.

A migration that fails part way leaves the schema marked dirty: nothing more
runs until someone checks the schema, repairs it if needed, and records the
version it is really at with "dbcache migrate force N".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usagef("migrate needs a subcommand: up, down, version or force")
		},
	}
	cmd.AddCommand(a.migrateUpCommand(), a.migrateDownCommand(), a.migrateVersionCommand(), a.migrateForceCommand())
	return cmd
}

// migrateResult is the JSON of up, down and force.
type migrateResult struct {
	From   uint `json:"from"`
	To     uint `json:"to"`
	Latest uint `json:"latest"`
}

// migratorVersion returns a Migrator and the schema's applied version.
// A --schema that does not exist yet is at version 0 (exists false):
// golang-migrate cannot open a session whose search_path names a missing
// schema, so that case is answered here. Connecting first also makes an
// unreachable server fail the same way as for every other command.
func (a *app) migratorVersion(ctx context.Context) (m *migrations.Migrator, version uint, dirty, exists bool, err error) {
	pool, err := a.openPool(ctx, 1)
	if err != nil {
		return nil, 0, false, false, err
	}
	defer pool.Close()
	if m, err = a.migrator(); err != nil {
		return nil, 0, false, false, err
	}
	if a.g.schema != "" {
		if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, a.g.schema).Scan(&exists); err != nil {
			return nil, 0, false, false, err
		}
		if !exists {
			return m, 0, false, false, nil
		}
	}
	version, dirty, err = m.Version(ctx)
	return m, version, dirty, true, err
}

// migrateStep runs step between two version reads and reports the move.
func (a *app) migrateStep(ctx context.Context, verb string, step func(context.Context, *migrations.Migrator) error) error {
	m, from, dirty, exists, err := a.migratorVersion(ctx)
	if err != nil {
		return err
	}
	if !exists && verb != "up" {
		return fmt.Errorf("schema %q does not exist: nothing to %s", a.g.schema, verb)
	}
	// force is the one step allowed on a dirty schema.
	if dirty && verb != "force" {
		return a.dirtyError(&migrations.DirtyError{Version: int(from)})
	}
	if err := step(ctx, m); err != nil {
		return a.dirtyError(err)
	}
	to, _, err := m.Version(ctx)
	if err != nil {
		return err
	}
	if a.g.json {
		return a.writeJSON(migrateResult{From: from, To: to, Latest: migrations.Latest()})
	}
	switch {
	case verb == "force":
		a.println("forced version %d (was %d%s); nothing was run", to, from, map[bool]string{true: ", dirty", false: ""}[dirty])
	case from == to && verb == "up":
		a.println("already at version %d (up to date)", to)
	case from == to:
		a.println("already at version %d; nothing to revert", to)
	default:
		a.println("migrated %s from version %d to %d", verb, from, to)
	}
	return nil
}

// dirtyError adds to a DirtyError the two versions the operator chooses
// between, so the way out is spelled out.
func (a *app) dirtyError(err error) error {
	var de *migrations.DirtyError
	if !errors.As(err, &de) {
		return err
	}
	prev := 0
	for _, v := range migrations.Versions() {
		if int(v) < de.Version {
			prev = int(v)
		}
	}
	schema := ""
	if a.g.schema != "" {
		schema = " --schema " + a.g.schema
	}
	return fmt.Errorf("%w. If migration %d's changes are all in place run `dbcache migrate force %d%s`; if none are, `dbcache migrate force %d%s`; then `dbcache migrate up%s`",
		err, de.Version, de.Version, schema, prev, schema, schema)
}

func (a *app) migrateUpCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "up",
		Short: "Apply every pending migration",
		Long:  `Apply every pending migration, creating the schema if needed. Already up to date is success.`,
		Example: `  dbcache migrate up
  dbcache migrate up --schema staging_cache --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.migrateStep(cmd.Context(), "up", func(ctx context.Context, m *migrations.Migrator) error { return m.Up(ctx) })
		},
	}
}

func (a *app) migrateDownCommand() *cobra.Command {
	var steps int
	var all bool
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Revert the last migration (or --steps N, or --all)",
		Long: `Revert the last applied migration, or the last --steps N, or --all of them
(which drops the cache table and every entry in it). Nothing left to revert
is success.`,
		Example: `  dbcache migrate down
  dbcache migrate down --steps 2
  dbcache migrate down --all`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if all && cmd.Flags().Changed("steps") {
				return usagef("--all and --steps are mutually exclusive")
			}
			if steps < 1 {
				return usagef("--steps must be at least 1, got %d", steps)
			}
			return a.migrateStep(cmd.Context(), "down", func(ctx context.Context, m *migrations.Migrator) error {
				if all {
					return m.DownAll(ctx)
				}
				return m.Down(ctx, steps)
			})
		},
	}
	cmd.Flags().IntVar(&steps, "steps", 1, "number of migrations to revert")
	cmd.Flags().BoolVar(&all, "all", false, "revert every migration (drops the cache table)")
	return cmd
}

func (a *app) migrateVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the applied migration version",
		Long: `Print the applied migration version, the latest this binary knows, and
whether a failed migration left the schema dirty.`,
		Example: `  dbcache migrate version
  dbcache migrate version --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, v, dirty, _, err := a.migratorVersion(cmd.Context())
			if err != nil {
				return err
			}
			latest := migrations.Latest()
			if a.g.json {
				return a.writeJSON(struct {
					Version uint `json:"version"`
					Dirty   bool `json:"dirty"`
					Latest  uint `json:"latest"`
					Pending int  `json:"pending"`
				}{v, dirty, latest, pending(v)})
			}
			switch {
			case dirty:
				a.println("version %d (dirty: a migration failed part way; see `dbcache migrate --help`)", v)
			case v == latest:
				a.println("version %d (up to date)", v)
			case v < latest:
				a.println("version %d (latest %d: %d pending; run `dbcache migrate up`)", v, latest, pending(v))
			default:
				a.println("version %d (newer than this binary's latest, %d)", v, latest)
			}
			return nil
		},
	}
}

func pending(v uint) int {
	n := 0
	for _, x := range migrations.Versions() {
		if x > v {
			n++
		}
	}
	return n
}

func (a *app) migrateForceCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "force N",
		Short: "Record version N as applied and clear the dirty flag",
		Long: `Record the schema as being at version N, and clear the dirty flag, without
running anything. Use it after a failed migration, once the schema has been
checked (and repaired by hand if needed). 0 means no migration applied.`,
		Example: `  dbcache migrate force 1`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := strconv.Atoi(args[0])
			if err != nil || n < 0 {
				return usagef("N must be a migration version (0 or more), got %q", args[0])
			}
			err = a.migrateStep(cmd.Context(), "force", func(ctx context.Context, m *migrations.Migrator) error { return m.Force(ctx, n) })
			if errors.Is(err, migrations.ErrNoSuchVersion) {
				return &usageError{err: err}
			}
			return err
		},
	}
}
