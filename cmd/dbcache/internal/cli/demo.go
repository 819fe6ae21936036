package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	// Containers for the demo's throwaway server (pgserver.Start).
	_ "github.com/dbcache/dbcache/internal/pgcontainer"
	"github.com/dbcache/dbcache/internal/pgserver"
)

// configuredVars are the libpq variables that, set, mean the user has named
// a server: demo then uses it rather than a throwaway one.
var configuredVars = []string{"PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGSERVICE"}

func (a *app) demoCommand() *cobra.Command {
	var benchDuration time.Duration
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "A tour of dbcache on a disposable database",
		Long: `Show dbcache at work: migrate, set, get, expiry, incr, add, a short bench,
stats and a cull, printing each command as you would type it and its real
output.

Where it runs:
  - with a database configured (--database-url, DATABASE_URL, or PGHOST,
    PGHOSTADDR, PGPORT, PGDATABASE or PGSERVICE), in a fresh schema
    dbcache_demo_<time>_<pid> that it drops at the end: it never touches
    existing data;
  - otherwise on a throwaway PostgreSQL server, removed at the end: a
    container when Docker can run one (image $` + pgserver.EnvImage + `, default
    ` + pgserver.DefaultImage + `), else one run from the PostgreSQL installation
    on this machine, in a temporary directory (initdb and postgres from PATH,
    pg_config --bindir or the usual places; $` + pgserver.EnvBinDir + ` to choose).
    ` + pgserver.EnvKind + `=container or =installed forces one way.`,
		Example: `  go run ./cmd/dbcache demo
  DATABASE_URL=postgres://localhost/postgres dbcache demo`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if a.g.schema != "" {
				return usagef("demo always works in a temporary schema of its own: drop --schema")
			}
			if a.g.json {
				return usagef("demo is a tour for people: it has no --json output")
			}
			return a.demo(cmd.Context(), benchDuration)
		},
	}
	cmd.Flags().DurationVar(&benchDuration, "bench-duration", 2*time.Second, "how long the bench step runs")
	return cmd
}

// databaseConfigured reports whether the user named a server.
func (a *app) databaseConfigured() bool {
	if a.dsn() != "" {
		return true
	}
	for _, v := range configuredVars {
		if a.cfg.Getenv(v) != "" {
			return true
		}
	}
	return false
}

func (a *app) demo(ctx context.Context, benchDuration time.Duration) (err error) {
	// `dbcache demo | head` closes stdout early; by default the next write
	// would kill the process with SIGPIPE and leave the server and
	// schema behind. Ignored, writes fail quietly and cleanup still runs.
	signal.Ignore(syscall.SIGPIPE)
	// Cleanup must run even when ctx was cancelled by a signal.
	cleanupCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	}
	dsn := a.dsn()
	if a.databaseConfigured() {
		a.println("Using the configured database, in a temporary schema dropped at the end.")
	} else {
		a.println("No database configured (--database-url, $DATABASE_URL or PG* variables):")
		a.println("starting a throwaway PostgreSQL server, removed at the end...")
		srv, serr := a.startThrowaway(ctx)
		if serr != nil {
			return serr
		}
		defer func() {
			cctx, cancel := cleanupCtx()
			defer cancel()
			if rerr := srv.Remove(cctx); rerr != nil {
				err = errors.Join(err, fmt.Errorf("demo: %w", rerr))
				return
			}
			a.println("\nRemoved the throwaway server.")
		}()
		a.println("Started %s.", srv)
		dsn = srv.URL("")
	}

	// The demo's own connection: the user's flags with the chosen server.
	admin := *a
	admin.g.databaseURL = dsn
	pool, err := admin.openPool(ctx, 1)
	if err != nil {
		return err
	}
	defer pool.Close()
	schema := fmt.Sprintf("dbcache_demo_%d_%d", time.Now().Unix(), os.Getpid())
	// A plain CREATE SCHEMA (no IF NOT EXISTS): if the name exists, stop
	// rather than run in (and later drop) a schema that is not ours.
	if _, err := pool.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
		return fmt.Errorf("demo: create schema %s: %w", schema, err)
	}
	defer func() {
		cctx, cancel := cleanupCtx()
		defer cancel()
		if _, derr := pool.Exec(cctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); derr != nil {
			err = errors.Join(err, fmt.Errorf("demo: drop schema %s: %w", schema, derr))
			return
		}
		a.println("\nDropped schema %s.", schema)
	}()
	a.println("Schema: %s. Connection flags are left out of the commands below.", schema)

	out := &lineTracker{w: a.out}
	conn := []string{"--schema", schema}
	if dsn != "" {
		conn = append(conn, "--database-url", dsn)
	}
	if a.g.connectTimeoutSet {
		conn = append(conn, "--connect-timeout", a.g.connectTimeout.String())
	}
	if a.g.statementTimeoutSet {
		conn = append(conn, "--statement-timeout", a.g.statementTimeout.String())
	}
	step := func(want int, args ...string) error {
		out.ensureNewline()
		fmt.Fprintf(out, "\n$ dbcache %s\n", shellJoin(args))
		code := Run(ctx, &Config{
			Args:          append(args, conn...),
			Out:           out,
			Err:           a.errw,
			Getenv:        a.cfg.Getenv,
			OutIsTerminal: a.cfg.OutIsTerminal,
			ErrIsTerminal: a.cfg.ErrIsTerminal,
		})
		out.ensureNewline()
		if code != ExitOK {
			fmt.Fprintf(out, "(exit code %d%s)\n", code, map[int]string{ExitMiss: ": a miss", ExitFailure: ": failure", ExitUsage: ": usage"}[code])
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if code != want {
			return &exitError{code: ExitFailure, err: fmt.Errorf("demo: `dbcache %s` exited %d, expected %d", shellJoin(args), code, want)}
		}
		return nil
	}
	pause := func(d time.Duration) error {
		fmt.Fprintf(out, "\n# ... %s later ...\n", d)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
			return nil
		}
	}
	note := func(s string) { fmt.Fprintf(out, "\n# %s\n", s) }

	for _, s := range []func() error{
		func() error { note("Create the cache table."); return nil },
		func() error { return step(ExitOK, "migrate", "up") },
		func() error { note("Store and read a value (default expiry: 300s)."); return nil },
		func() error { return step(ExitOK, "set", "greeting", "Hello from PostgreSQL!") },
		func() error { return step(ExitOK, "get", "greeting") },
		func() error { return step(ExitOK, "get", "greeting", "--json") },
		func() error { note("Entries expire: a one-second session."); return nil },
		func() error { return step(ExitOK, "set", "session:42", "token-3f9a", "--ttl", "1s") },
		func() error { return step(ExitOK, "has", "session:42") },
		func() error { return pause(1200 * time.Millisecond) },
		func() error { return step(ExitMiss, "get", "session:42") },
		func() error { note("Counters, atomic under concurrency."); return nil },
		func() error { return step(ExitOK, "set", "visits", "41", "--ttl", "never") },
		func() error { return step(ExitOK, "incr", "visits") },
		func() error { return step(ExitOK, "incr", "visits", "10") },
		func() error { note("add stores only if the key is free."); return nil },
		func() error { return step(ExitMiss, "add", "greeting", "Hi") },
		func() error { note("A short load: 4 workers, 1,000 keys."); return nil },
		func() error {
			return step(ExitOK, "bench", "--ops", "get:8,set:1,incr:1", "--concurrency", "4", "--keyspace", "1000",
				"--duration", benchDuration.String(), "--keep")
		},
		func() error { note("The table now holds the bench's keys, and the expired session."); return nil },
		func() error { return step(ExitOK, "stats") },
		func() error {
			note("Cull: remove the expired entry, then cut the table down to 500 entries.")
			return nil
		},
		func() error { return step(ExitOK, "cull", "--max-entries", "500") },
	} {
		if err := s(); err != nil {
			return err
		}
	}
	a.println("\nThat's the tour. Next: `dbcache --help`, and docs/cli.md.")
	return nil
}

// startThrowaway starts a throwaway server the way the environment allows
// (internal/pgserver) and waits until it answers. Its progress, testcontainers'
// included, goes to the debug log (--debug).
func (a *app) startThrowaway(ctx context.Context) (*pgserver.Server, error) {
	cfg, err := pgserver.ConfigFromEnv(a.cfg.Getenv)
	if err != nil {
		return nil, usagef("demo: %v", err)
	}
	cfg.Database = "dbcache_demo"
	cfg.Logger = a.log
	srv, err := pgserver.Start(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("demo: no database configured, and %w; or point the demo at a server with --database-url or DATABASE_URL", err)
	}
	return srv, nil
}

// lineTracker remembers whether the last byte written was a newline, so the
// demo can start each command on a fresh line after a get, which (off a
// terminal) prints the value with no newline.
type lineTracker struct {
	mu      sync.Mutex
	w       io.Writer
	pending bool
}

func (l *lineTracker) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(p) > 0 {
		l.pending = p[len(p)-1] != '\n'
	}
	return l.w.Write(p)
}

func (l *lineTracker) ensureNewline() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pending {
		_, _ = io.WriteString(l.w, "\n")
		l.pending = false
	}
}

// shellJoin renders args as a shell command line, quoting where needed.
func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, s := range args {
		if s != "" && strings.IndexFunc(s, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.,:/=@%+", r))
		}) < 0 {
			out[i] = s
			continue
		}
		out[i] = "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
	}
	return strings.Join(out, " ")
}
