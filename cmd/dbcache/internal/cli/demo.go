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
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
)

const (
	// EnvImage names the PostgreSQL image demo starts when no database is
	// configured; the same variable the test suites read.
	EnvImage = "DBCACHE_TEST_PG_IMAGE"
	// DefaultImage is the image used when EnvImage is unset: the official
	// image the tests default to (internal/dbtest.DefaultImage, which
	// non-test code must not import).
	DefaultImage = "postgres:16-alpine"
)

// configuredVars are the libpq variables that, set, mean the user has named
// a server: demo then uses it rather than a container.
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
  - otherwise in a disposable PostgreSQL container (needs Docker; image
    $` + EnvImage + `, default ` + DefaultImage + `), removed at the end.`,
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
	// would kill the process with SIGPIPE and leave the container and
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
		image := a.cfg.Getenv(EnvImage)
		if image == "" {
			image = DefaultImage
		}
		a.println("No database configured (--database-url, $DATABASE_URL or PG* variables):")
		a.println("starting a disposable PostgreSQL container from %s, removed at the end...", image)
		url, stop, err := a.startContainer(ctx, image)
		if stop != nil {
			defer func() {
				cctx, cancel := cleanupCtx()
				defer cancel()
				if serr := stop(cctx); serr != nil {
					a.log.WarnContext(cctx, "could not remove the demo container", "err", serr)
				} else {
					a.println("\nRemoved the container.")
				}
			}()
		}
		if err != nil {
			return err
		}
		dsn = url
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

// startContainer starts a PostgreSQL container and waits until it answers.
// stop, when not nil, must be called to remove the container, even if err
// is not nil.
func (a *app) startContainer(ctx context.Context, image string) (url string, stop func(context.Context) error, err error) {
	// testcontainers prints its progress to stderr by default; for a demo
	// that is noise unless asked for with --debug.
	tclog.SetDefault(slogPrinter{a})
	defer func() {
		// testcontainers has panicked on broken Docker setups: report it as
		// the one-line error it is, never a stack trace.
		if r := recover(); r != nil {
			err = fmt.Errorf("demo: starting the container failed: %v", r)
		}
	}()
	ctr, err := tcpostgres.Run(ctx, image,
		tcpostgres.WithDatabase("dbcache_demo"),
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithPassword("postgres"),
		tcpostgres.BasicWaitStrategies(),
	)
	if ctr != nil {
		// The data is disposable: no need to wait out a graceful shutdown.
		stop = func(ctx context.Context) error { return ctr.Terminate(ctx, testcontainers.StopTimeout(time.Second)) }
	}
	if err != nil {
		return "", stop, fmt.Errorf("demo: no database configured, and no PostgreSQL container could be started (is Docker running? is image %s available?): %w; "+
			"or point the demo at a server with --database-url or DATABASE_URL", image, err)
	}
	url, err = ctr.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		return "", stop, fmt.Errorf("demo: container address: %w", err)
	}
	// The container's log can announce readiness a moment before the port
	// accepts connections.
	probe := *a
	probe.g.databaseURL = url
	deadline := time.Now().Add(30 * time.Second)
	for {
		pool, perr := probe.openPool(ctx, 1)
		if perr == nil {
			pool.Close()
			return url, stop, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return "", stop, fmt.Errorf("demo: the container never accepted connections: %w", perr)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// slogPrinter routes testcontainers' log lines to the command's logger at
// debug level.
type slogPrinter struct{ a *app }

func (p slogPrinter) Printf(format string, args ...any) {
	p.a.log.Debug("testcontainers: " + strings.TrimSpace(fmt.Sprintf(format, args...)))
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
