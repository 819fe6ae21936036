package cli

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
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

For DBAs: "migrate up --dry-run" and "migrate down --dry-run" say what
would run without running it (--show-sql prints the SQL, as a script psql
can run); "migrate status" lists every migration as applied or pending and
exits 4 while any is pending (1 when dirty), so a deploy can wait on it;
"migrate sql" prints the embedded SQL without connecting.

A migration that fails part way leaves the schema marked dirty: nothing more
runs until someone checks the schema, repairs it if needed, and records the
version it is really at with "dbcache migrate force N".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usagef("migrate needs a subcommand: up, down, version, status, sql, force or persistence")
		},
	}
	cmd.AddCommand(a.migrateUpCommand(), a.migrateDownCommand(), a.migrateVersionCommand(),
		a.migrateStatusCommand(), a.migrateSQLCommand(), a.migrateForceCommand(), a.migratePersistenceCommand())
	return cmd
}

// migrateResult is the JSON of up, down and force.
type migrateResult struct {
	From   uint `json:"from"`
	To     uint `json:"to"`
	Latest uint `json:"latest"`
	// DroppedEntries is how many entries the cache table held when migrate
	// down dropped it; absent when it dropped none.
	DroppedEntries *int64 `json:"dropped_entries,omitempty"`
}

// migrateState is where the schema stands, read before a migrate command
// acts. The caller closes pool.
type migrateState struct {
	m    *migrations.Migrator
	pool *pgxpool.Pool
	// schema is the schema migrations run in: --schema, or the
	// search_path's first existing one. exists says whether it exists (a
	// --schema that up has not created yet does not).
	schema  string
	exists  bool
	version uint
	dirty   bool
}

// readMigrateState connects and reads the schema's applied version. A
// --schema that does not exist yet is at version 0 (exists false).
// Connecting first makes an unreachable server fail the same way as for
// every other command.
func (a *app) readMigrateState(ctx context.Context) (st *migrateState, err error) {
	pool, err := a.openPool(ctx, 1)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			closePool(pool)
		}
	}()
	st = &migrateState{pool: pool, schema: a.g.schema}
	if st.m, err = a.migrator(); err != nil {
		return nil, err
	}
	if a.g.schema != "" {
		err = pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, a.g.schema).Scan(&st.exists)
	} else {
		var current *string
		err = pool.QueryRow(ctx, `SELECT current_schema()`).Scan(&current)
		if current != nil {
			st.schema, st.exists = *current, true
		}
	}
	if err != nil {
		return nil, err
	}
	// Version reads only; for a search_path with no schema it returns
	// migrations.ErrNoSchema, which says what to do.
	st.version, st.dirty, err = st.m.Version(ctx)
	if err != nil {
		return nil, err
	}
	return st, nil
}

// migrateStep runs step and reports what it did. Up and down report the
// version they found once they held the migration lock, so of several
// migrators started at once, the ones that waited say they found the work
// done; force reports the version read before it.
func (a *app) migrateStep(ctx context.Context, st *migrateState, verb string, step func(context.Context, *migrations.Migrator) (*migrations.Result, error)) error {
	from, dirty := st.version, st.dirty
	res, err := step(ctx, st.m)
	if err != nil {
		return a.dirtyError(err)
	}
	to, _, err := st.m.Version(ctx)
	if err != nil {
		return err
	}
	var dropped *int64
	if res != nil {
		from, dropped = res.From, res.DroppedEntries
	}
	if a.g.json {
		return a.writeJSON(migrateResult{From: from, To: to, Latest: migrations.Latest(), DroppedEntries: dropped})
	}
	droppedText := ""
	if dropped != nil {
		droppedText = fmt.Sprintf("; dropped the cache table, which held %s", countOf(*dropped, "entry", "entries"))
	}
	switch {
	case verb == "force":
		a.println("forced version %d (was %d%s); nothing was run", to, from, map[bool]string{true: ", dirty", false: ""}[dirty])
	case from == to && verb == "up" && from != st.version:
		a.println("already at version %d (up to date: another migrator applied them while this one waited for its lock)", to)
	case from == to && verb == "up":
		a.println("already at version %d (up to date)", to)
	case from == to:
		a.println("already at version %d; nothing to revert", to)
	default:
		a.println("migrated %s from version %d to %d%s", verb, from, to, droppedText)
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
	// The library's message names Migrator.Force; say it in the command's
	// terms, with both ways out.
	schema := a.schemaFlag()
	return withCause(fmt.Sprintf("the schema is dirty at version %d: migration %d failed part way. Check the schema; "+
		"if migration %d's changes are all in place run `dbcache migrate force %d%s`; if none are, `dbcache migrate force %d%s`; then `dbcache migrate up%s`",
		de.Version, de.Version, de.Version, de.Version, schema, prev, schema, schema), err)
}

// dryRunFlags are --dry-run and --show-sql.
type dryRunFlags struct {
	dryRun, showSQL bool
}

func (f *dryRunFlags) add(cmd *cobra.Command, verb string) {
	cmd.Flags().BoolVar(&f.dryRun, "dry-run", false, "say which migrations "+verb+" would run, and run nothing")
	cmd.Flags().BoolVar(&f.showSQL, "show-sql", false, "with --dry-run: print their SQL, as a script psql can run")
}

func (f *dryRunFlags) validate() error {
	if f.showSQL && !f.dryRun {
		return usagef("--show-sql goes with --dry-run: print the SQL without running it, then run without them")
	}
	return nil
}

func (a *app) migrateUpCommand() *cobra.Command {
	var dr dryRunFlags
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Apply every pending migration",
		Long: `Apply every pending migration, creating the schema if needed. Already up to
date is success. With --dry-run, list what would run and run nothing; add
--show-sql for the SQL itself.`,
		Example: `  dbcache migrate up
  dbcache migrate up --schema staging_cache --json
  dbcache migrate up --unlogged
  dbcache migrate up --dry-run --show-sql > dbcache-up.sql`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := dr.validate(); err != nil {
				return err
			}
			ctx := cmd.Context()
			st, err := a.readMigrateState(ctx)
			if err != nil {
				return err
			}
			defer closePool(st.pool)
			// A dirty flag read before the migration lock may be another
			// migrator's, in the middle of its run: the migrator checks it
			// again once it holds the lock, and only that answer counts.
			if dr.dryRun {
				plan, err := st.m.PendingMigrations(ctx)
				if err != nil {
					return a.dirtyError(err)
				}
				return a.printPlan(st, "up", plan, dr.showSQL)
			}
			return a.migrateStep(ctx, st, "up", func(ctx context.Context, m *migrations.Migrator) (*migrations.Result, error) {
				res, err := m.UpResult(ctx)
				return &res, err
			})
		},
	}
	dr.add(cmd, "up")
	cmd.Flags().BoolVar(&a.unlogged, "unlogged", false, "create the cache table UNLOGGED (no WAL; emptied after a crash; see migrate persistence); only when up creates it")
	return cmd
}

func (a *app) migrateDownCommand() *cobra.Command {
	var (
		steps int
		all   bool
		yes   bool
		dr    dryRunFlags
	)
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Revert the last migration (or --steps N, or --all)",
		Long: `Revert the last applied migration, or the last --steps N, or --all of them
(which drops the cache table and every entry in it). Nothing left to revert
is success.

On a terminal it says what it will revert (and how many entries a dropped
table holds) and asks for confirmation; otherwise it needs --yes (without
it: exit 2). --dry-run lists what would be reverted and reverts nothing;
add --show-sql for the SQL.`,
		Example: `  dbcache migrate down
  dbcache migrate down --steps 2 --yes
  dbcache migrate down --all --dry-run --show-sql`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if all && cmd.Flags().Changed("steps") {
				return usagef("--all and --steps are mutually exclusive")
			}
			if steps < 1 {
				return usagef("--steps must be at least 1, got %d", steps)
			}
			if err := dr.validate(); err != nil {
				return err
			}
			if !dr.dryRun && !yes && !a.cfg.StdinIsTerminal {
				return confirmationRequired("migrate down reverts migrations and can drop the cache table: pass --yes to confirm (there is no terminal to ask on), or --dry-run to see what it would do")
			}
			ctx := cmd.Context()
			st, err := a.readMigrateState(ctx)
			if err != nil {
				return err
			}
			defer closePool(st.pool)
			if !st.exists && a.g.schema != "" {
				return fmt.Errorf("schema %q does not exist: nothing to revert", a.g.schema)
			}
			if st.dirty {
				return a.dirtyError(&migrations.DirtyError{Version: int(st.version)})
			}
			n := steps
			if all {
				n = 0
			}
			plan, err := st.m.DownMigrations(ctx, n)
			if err != nil {
				return a.dirtyError(err)
			}
			if dr.dryRun {
				return a.printPlan(st, "down", plan, dr.showSQL)
			}
			if len(plan) > 0 && !yes {
				q, err := a.downQuestion(ctx, st, plan)
				if err != nil {
					return err
				}
				if err := a.confirm(q); err != nil {
					return err
				}
			}
			return a.migrateStep(ctx, st, "down", func(ctx context.Context, m *migrations.Migrator) (*migrations.Result, error) {
				var res migrations.Result
				var err error
				if all {
					res, err = m.DownAllResult(ctx)
				} else {
					res, err = m.DownResult(ctx, steps)
				}
				return &res, err
			})
		},
	}
	cmd.Flags().IntVar(&steps, "steps", 1, "number of migrations to revert")
	cmd.Flags().BoolVar(&all, "all", false, "revert every migration (drops the cache table)")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	dr.add(cmd, "down")
	return cmd
}

// downQuestion is the confirmation prompt of migrate down: what it reverts,
// and what is lost with the cache table if that goes too.
func (a *app) downQuestion(ctx context.Context, st *migrateState, plan []migrations.Migration) (string, error) {
	names := make([]string, len(plan))
	dropsEntries := false
	for i, m := range plan {
		names[i] = fmt.Sprintf("%d (%s)", m.Version, m.Name)
		dropsEntries = dropsEntries || m.Version == migrations.Versions()[0]
	}
	to := uint(0)
	if last := plan[len(plan)-1].Version; last != migrations.Versions()[0] {
		for _, v := range migrations.Versions() {
			if v < last {
				to = v
			}
		}
	}
	what := "migration"
	if len(plan) > 1 {
		what = "migrations"
	}
	q := fmt.Sprintf("Revert %s %s in schema %s, from version %d to %d?", what, strings.Join(names, ", "), st.schema, st.version, to)
	if dropsEntries {
		n, err := countEntries(ctx, st.pool, st.schema)
		if err != nil {
			return "", err
		}
		q = fmt.Sprintf("Revert %s %s in schema %s, from version %d to %d? This drops %s and its %s.",
			what, strings.Join(names, ", "), st.schema, st.version, to, n.table, countOf(n.total, "entry", "entries"))
	}
	return q, nil
}

// planJSON is the --json output of a dry run.
type planJSON struct {
	DryRun     bool            `json:"dry_run"`
	Direction  string          `json:"direction"`
	Schema     string          `json:"schema"`
	From       uint            `json:"from"`
	To         uint            `json:"to"`
	Migrations []migrationJSON `json:"migrations"`
}

type migrationJSON struct {
	Version uint   `json:"version"`
	Name    string `json:"name"`
	File    string `json:"file"`
	SQL     string `json:"sql,omitempty"`
}

// printPlan prints what up or down would run: the files, or with showSQL
// the SQL as a script.
func (a *app) printPlan(st *migrateState, dir string, plan []migrations.Migration, showSQL bool) error {
	from, to := st.version, st.version
	if len(plan) > 0 {
		if dir == "up" {
			to = plan[len(plan)-1].Version
		} else {
			to = 0
			for _, v := range migrations.Versions() {
				if v < plan[len(plan)-1].Version {
					to = v
				}
			}
		}
	}
	if a.g.json {
		out := planJSON{DryRun: true, Direction: dir, Schema: st.schema, From: from, To: to, Migrations: []migrationJSON{}}
		for _, m := range plan {
			mj := migrationJSON{Version: m.Version, Name: m.Name, File: m.UpFile}
			if dir == "down" {
				mj.File = m.DownFile
			}
			if showSQL {
				mj.SQL = m.Up
				if dir == "down" {
					mj.SQL = m.Down
				}
			}
			out.Migrations = append(out.Migrations, mj)
		}
		return a.writeJSON(out)
	}
	if showSQL {
		a.printSQL(st.schema, dir, plan, fmt.Sprintf("dbcache migrate %s --dry-run: schema %s, from version %d to %d. Nothing was run.",
			dir, st.schema, from, to), dir == "up" && a.g.schema != "", to)
		return nil
	}
	if len(plan) == 0 {
		if dir == "up" {
			a.println("already at version %d (up to date): nothing would run (dry run)", from)
		} else {
			a.println("at version %d: nothing to revert (dry run)", from)
		}
		return nil
	}
	a.println("would migrate %s from version %d to %d (dry run; nothing was run):", dir, from, to)
	for _, m := range plan {
		file := m.UpFile
		if dir == "down" {
			file = m.DownFile
		}
		a.println("  %s", file)
	}
	return nil
}

// printSQL prints migrations as one SQL script: each file in a transaction,
// as the migrator runs it, in the schema it would run in. It does not
// record versions: the header says how.
func (a *app) printSQL(schema, dir string, plan []migrations.Migration, header string, createSchema bool, to uint) {
	a.println("-- %s", header)
	if len(plan) == 0 {
		a.println("-- No migrations to %s.", map[string]string{"up": "apply", "down": "revert"}[dir])
		return
	}
	a.println("-- dbcache runs each file in a transaction of its own and records the version")
	a.println("-- in %s. Applied by hand instead, record it afterwards with", migrations.MigrationsTable)
	a.println("-- `dbcache migrate force %d%s`.", to, a.schemaFlag())
	if schema != "" {
		ident := pgx.Identifier{schema}.Sanitize()
		if createSchema {
			a.println("CREATE SCHEMA IF NOT EXISTS %s;", ident)
		}
		a.println("SET search_path TO %s;", ident)
	}
	for _, m := range plan {
		file, body := m.UpFile, m.Up
		if dir == "down" {
			file, body = m.DownFile, m.Down
		}
		a.println("\n-- %s\nBEGIN;\n%s\nCOMMIT;", file, strings.TrimRight(body, "\n"))
	}
}

func (a *app) migrateVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the applied migration version",
		Long: `Print the applied migration version, the latest this binary knows, and
whether a failed migration left the schema dirty. Exits 0 when up to date
(or newer than this binary), 4 while migrations are pending, 1 when dirty,
so a deploy can wait on it.`,
		Example: `  dbcache migrate version
  dbcache migrate version --json
  dbcache migrate version >/dev/null || echo "run dbcache migrate up first"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := a.readMigrateState(cmd.Context())
			if err != nil {
				return err
			}
			closePool(st.pool)
			v, dirty := st.version, st.dirty
			latest := migrations.Latest()
			if a.g.json {
				if err := a.writeJSON(struct {
					Version uint `json:"version"`
					Dirty   bool `json:"dirty"`
					Latest  uint `json:"latest"`
					Pending int  `json:"pending"`
				}{v, dirty, latest, pending(v)}); err != nil {
					return err
				}
			} else {
				switch {
				case dirty:
					a.println("version %d (dirty: a migration failed part way; see `dbcache migrate --help`)", v)
				case v == latest:
					a.println("version %d (up to date)", v)
				case v < latest:
					a.println("version %d (latest %d: %d pending; run `dbcache migrate up%s`)", v, latest, pending(v), a.schemaFlag())
				default:
					a.println("version %d (newer than this binary's latest, %d)", v, latest)
				}
			}
			return a.migrateExit(v, dirty)
		},
	}
}

// migrateExit is the exit of version and status: a dirty schema is a
// failure (with the way out), pending migrations ExitPending.
func (a *app) migrateExit(v uint, dirty bool) error {
	switch {
	case dirty:
		return &exitError{code: ExitFailure, err: a.dirtyError(&migrations.DirtyError{Version: int(v)})}
	case pending(v) > 0:
		return errPendingExit
	}
	return nil
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

func (a *app) migrateStatusCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "status",
		Aliases: []string{"validate"},
		Short:   "List every migration as applied or pending; exit 4 if any is pending",
		Long: `List every migration this binary carries as applied or pending in the
schema. Exits 0 when the schema is up to date, 4 while migrations are
pending (the schema is behind), and 1 when a failed migration left it dirty:
a deploy gate ("dbcache migrate status || exit 1"). "validate" is an alias.`,
		Example: `  dbcache migrate status
  dbcache migrate status --json | jq .pending`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := a.readMigrateState(cmd.Context())
			if err != nil {
				return err
			}
			closePool(st.pool)
			type migrationState struct {
				Version uint   `json:"version"`
				Name    string `json:"name"`
				State   string `json:"state"`
			}
			var list []migrationState
			for _, m := range migrations.All() {
				state := "pending"
				switch {
				case m.Version == st.version && st.dirty:
					state = "dirty"
				case m.Version <= st.version:
					state = "applied"
				}
				list = append(list, migrationState{m.Version, m.Name, state})
			}
			schema := st.schema
			if !st.exists {
				schema += " (does not exist yet)"
			}
			latest := migrations.Latest()
			if a.g.json {
				if err := a.writeJSON(struct {
					Schema     string           `json:"schema"`
					Version    uint             `json:"version"`
					Dirty      bool             `json:"dirty"`
					Latest     uint             `json:"latest"`
					Pending    int              `json:"pending"`
					Migrations []migrationState `json:"migrations"`
				}{st.schema, st.version, st.dirty, latest, pending(st.version), list}); err != nil {
					return err
				}
				return a.migrateExit(st.version, st.dirty)
			}
			switch {
			case st.dirty:
				a.println("schema %s: version %d, dirty (a migration failed part way)", schema, st.version)
			case pending(st.version) > 0:
				a.println("schema %s: version %d of %d, %d pending (run `dbcache migrate up%s`)", schema, st.version, latest,
					pending(st.version), a.schemaFlag())
			case st.version > latest:
				a.println("schema %s: version %d, newer than this binary's latest (%d)", schema, st.version, latest)
			default:
				a.println("schema %s: version %d, up to date", schema, st.version)
			}
			width := 0
			for _, m := range list {
				width = max(width, len(m.Name))
			}
			for _, m := range list {
				a.println("  %3d  %-*s  %s", m.Version, width, m.Name, m.State)
			}
			return a.migrateExit(st.version, st.dirty)
		},
	}
}

func (a *app) migrateSQLCommand() *cobra.Command {
	var down bool
	cmd := &cobra.Command{
		Use:   "sql [VERSION]",
		Short: "Print the migrations' SQL without connecting",
		Long: `Print the SQL of every migration this binary carries, in the order it would
run (up: oldest first; --down: newest first), or of migration VERSION only,
as a script psql can run. It does not connect. For what a given database
still needs, use "migrate up --dry-run --show-sql".`,
		Example: `  dbcache migrate sql > dbcache-schema.sql
  dbcache migrate sql 2 --down
  dbcache migrate sql --schema myapp_cache | psql "$DATABASE_URL"`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			version := uint(0)
			if len(args) == 1 {
				v, err := strconv.ParseUint(args[0], 10, 32)
				if err != nil || v == 0 {
					return usagef("VERSION must be a migration version (1 or more), got %q", args[0])
				}
				version = uint(v)
			}
			var plan []migrations.Migration
			for _, m := range migrations.All() {
				if version == 0 || m.Version == version {
					plan = append(plan, m)
				}
			}
			if len(plan) == 0 {
				return usagef("no migration %d (known: %v)", version, migrations.Versions())
			}
			dir := "up"
			to := plan[len(plan)-1].Version
			if down {
				dir = "down"
				for i, j := 0, len(plan)-1; i < j; i, j = i+1, j-1 {
					plan[i], plan[j] = plan[j], plan[i]
				}
				to = 0
				for _, v := range migrations.Versions() {
					if v < plan[len(plan)-1].Version {
						to = v
					}
				}
			}
			if a.g.json {
				out := []migrationJSON{}
				for _, m := range plan {
					mj := migrationJSON{Version: m.Version, Name: m.Name, File: m.UpFile, SQL: m.Up}
					if down {
						mj.File, mj.SQL = m.DownFile, m.Down
					}
					out = append(out, mj)
				}
				return a.writeJSON(map[string]any{"direction": dir, "migrations": out})
			}
			what := "every migration"
			if version != 0 {
				what = fmt.Sprintf("migration %d", version)
			}
			a.printSQL(a.g.schema, dir, plan, fmt.Sprintf("dbcache migrate sql: %s, %s.", what, dir), !down && a.g.schema != "", to)
			return nil
		},
	}
	cmd.Flags().BoolVar(&down, "down", false, "the down (revert) SQL, newest first")
	return cmd
}

func (a *app) migrateForceCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "force N",
		Short: "Record version N as applied and clear the dirty flag",
		Long: `Record the schema as being at version N, and clear the dirty flag, without
running anything. Use it after a failed migration, once the schema has been
checked (and repaired by hand if needed), or after applying the SQL of
"migrate sql" by hand. 0 means no migration applied.`,
		Example: `  dbcache migrate force 1`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := strconv.Atoi(args[0])
			if err != nil || n < 0 {
				return usagef("N must be a migration version (0 or more), got %q", args[0])
			}
			ctx := cmd.Context()
			st, err := a.readMigrateState(ctx)
			if err != nil {
				return err
			}
			defer closePool(st.pool)
			if !st.exists && a.g.schema != "" {
				return fmt.Errorf("schema %q does not exist: nothing to force", a.g.schema)
			}
			err = a.migrateStep(ctx, st, "force", func(ctx context.Context, m *migrations.Migrator) (*migrations.Result, error) {
				return nil, m.Force(ctx, n)
			})
			if errors.Is(err, migrations.ErrNoSuchVersion) {
				return &usageError{err: err}
			}
			return err
		},
	}
}
