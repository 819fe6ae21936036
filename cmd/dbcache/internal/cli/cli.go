// Package cli is the dbcache command: the cobra command tree, the connection
// rules and the output formats, thin over the library packages (dbcache,
// migrations, culling). cmd/dbcache's main calls Run and exits with the code
// it returns; tests call Run in-process or build the binary.
//
// The package is internal to the command and its API may change.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Exit codes. Every command ends with one of these, so scripts can tell a
// miss from a mistake from a failure.
const (
	// ExitOK: the command did what it was asked.
	ExitOK = 0
	// ExitFailure: the command failed: the database could not be reached,
	// a statement failed, the schema is not migrated or is dirty, a value is
	// not an integer, a confirmation was refused.
	ExitFailure = 1
	// ExitUsage: the command line is wrong: an unknown command or flag, a
	// missing or extra argument, an unparsable value, an invalid key, or a
	// destructive command (clear, delete-prefix, migrate down) without --yes
	// when there is no terminal to ask on.
	ExitUsage = 2
	// ExitMiss: the command ran but found nothing: get, ttl, incr, decr,
	// touch, delete or has of a key with no live entry, or an add that did
	// not store because the key exists. (keys and delete-prefix report a
	// count: none is 0, not a miss.)
	ExitMiss = 3
	// ExitPending: migrate version or migrate status found migrations this
	// binary would apply (the schema is behind), so a deploy can be gated on
	// it. A dirty schema is ExitFailure.
	ExitPending = 4
)

// Defaults of the connection flags.
const (
	// ConnectTimeoutDefault bounds connecting (TCP, TLS and authentication),
	// so an unreachable server fails within it instead of hanging.
	ConnectTimeoutDefault = 10 * time.Second
	// StatementTimeoutDefault is the session's statement_timeout.
	StatementTimeoutDefault = 30 * time.Second
	// OpTimeoutGrace is how much longer than the statement timeout the
	// command waits for an answer before giving up on the server: time for
	// the server to report its own timeout, which says more.
	OpTimeoutGrace = 2 * time.Second
	// ApplicationName is the application_name the CLI's sessions carry
	// (unless the connection string sets one), so they are easy to pick out
	// in pg_stat_activity.
	ApplicationName = "dbcache-cli"
	// EnvDatabaseURL is the variable read when --database-url is not given.
	EnvDatabaseURL = "DATABASE_URL"
	// EnvSchema is the variable read when --schema is not given.
	EnvSchema = "DBCACHE_SCHEMA"
)

// Config is what one run of the command works with. Tests fill it with
// buffers; main fills it with the process's files.
type Config struct {
	// Args are the command-line arguments, without the program name.
	Args []string
	// Stdin, Out and Err are the standard streams. Results go to Out;
	// errors, logs, prompts and progress bars go to Err.
	Stdin io.Reader
	Out   io.Writer
	Err   io.Writer
	// Getenv reads the environment (DATABASE_URL, DBCACHE_SCHEMA,
	// DBCACHE_TEST_PG_IMAGE, and which PG* variables are set).
	// Defaults to os.Getenv. The PG* variables are read by pgx itself, from
	// the process environment.
	Getenv func(string) string
	// StdinIsTerminal, OutIsTerminal and ErrIsTerminal say which streams are
	// terminals: get adds a newline on a terminal, clear asks for
	// confirmation on one, and progress bars are drawn only on one.
	StdinIsTerminal bool
	OutIsTerminal   bool
	ErrIsTerminal   bool

	// instantProgress (tests only) shows progress from the first update and
	// writes every progress line, instead of waiting progressDelay and then
	// writing one line per logEvery.
	instantProgress bool
}

// Run runs the command line in cfg and returns the exit code. It never
// panics on bad input and never prints a stack trace: every error is one
// line on Err starting "dbcache: ". Cancelling ctx (main does on SIGINT and
// SIGTERM) interrupts the command.
func Run(ctx context.Context, cfg *Config) int {
	a := newApp(cfg)
	a.ctx = ctx
	root := a.rootCommand()
	root.SetArgs(negativeArgs(root, cfg.Args))
	root.SetIn(a.stdin)
	root.SetOut(a.out)
	root.SetErr(a.errw)
	err := root.ExecuteContext(ctx)
	code := a.report(a.explainSchema(ctx, err))
	a.conns.waitCancels()
	return code
}

// app is one run's state: the streams, the global flags and the logger.
type app struct {
	stdin io.Reader
	out   io.Writer
	errw  io.Writer
	cfg   *Config
	g     globalFlags
	log   *slog.Logger
	// started is set once cobra has parsed and validated the command line
	// and is about to run a command. An error before that is a usage error.
	started bool
	// cmdPath names the command being run, for usage hints.
	cmdPath string
	// unlogged is migrate up's --unlogged.
	unlogged bool
	// ctx is Run's context: once it is cancelled (SIGINT, SIGTERM), a
	// failure is reported as an interruption.
	ctx context.Context
	// shards are the servers of a sharded cache: --database-url given
	// more than once (see shards.go); nil for a single server.
	shards []shardSpec
	// conns is what the command learned about its connections (shared by
	// the copies of app made per server).
	conns *connState
	// connected is set once the command has reached its server: a
	// connection that times out after that is a server that stopped
	// answering.
	connected bool
	// needVersion is the migration version the command needs, for the
	// message of a schema behind it (dbcache.SchemaVersion unless set).
	needVersion uint
}

type globalFlags struct {
	connectTimeout   time.Duration
	databaseURL      string   // the server's, when --database-url is given once
	databaseURLs     []string // every --database-url
	debug            bool
	json             bool
	schema           string
	statementTimeout time.Duration
	verbose          bool

	// Whether the timeouts were given on the command line, so a value in the
	// connection string wins over the default but not over the flag.
	connectTimeoutSet, statementTimeoutSet bool
	// statementTimeoutInForce is the statement_timeout the sessions carry
	// (the flag's, or the connection string's), for the hint on a timeout.
	statementTimeoutInForce string
	// opTimeout is the cache's client-side bound on each operation
	// (dbcache.Config.OpTimeout), set by openCache; -1 for none.
	opTimeout time.Duration
	// pgxDefaultMode leaves pgx's default query mode to the pools (see
	// useAppQueryMode).
	pgxDefaultMode bool
}

func newApp(config *Config) *app {
	// A copy, so filling in defaults never changes the caller's Config.
	cfg := *config
	a := &app{cfg: &cfg, stdin: cfg.Stdin, out: cfg.Out, errw: cfg.Err, conns: &connState{}}
	if a.stdin == nil {
		a.stdin = strings.NewReader("")
	}
	if a.out == nil {
		a.out = io.Discard
	}
	if a.errw == nil {
		a.errw = io.Discard
	}
	if cfg.Getenv == nil {
		cfg.Getenv = os.Getenv
	}
	a.log = newLogger(a.errw, slog.LevelWarn, false)
	return a
}

func newLogger(w io.Writer, level slog.Level, json bool) *slog.Logger {
	opts := &slog.HandlerOptions{
		Level: level,
		// A command's log lines are read by a person at a terminal: the
		// time adds nothing there.
		ReplaceAttr: func(groups []string, attr slog.Attr) slog.Attr {
			if len(groups) == 0 && attr.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return attr
		},
	}
	// Under --json every line on stderr is a JSON object, logs included.
	if json {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

const rootLong = `dbcache administers a dbcache cache: a Django-style cache stored in a
PostgreSQL table (dbcache_entries).

Connection:
  --database-url, else $DATABASE_URL, else the libpq PG* variables (PGHOST,
  PGPORT, PGDATABASE, PGUSER, PGPASSWORD, PGSSLMODE, …) and libpq's defaults,
  as pgx reads them. --schema (else $DBCACHE_SCHEMA) picks a cache in another
  schema (default: the first schema on the search_path); names follow
  PostgreSQL's rules: unquoted they fold to lower case, "Quoted" they keep
  their case. Sessions set application_name=dbcache-cli and statement_timeout
  (--statement-timeout, default 30s); connecting gives up after
  --connect-timeout (default 10s).

Several servers (a sharded cache):
  Repeat --database-url as NAME=URL, NAME each server's shard name in the
  application (sharded.Shard.Name; with the same --key-prefix, keys are
  found where the application put them). The cache commands and bench use
  the sharded cache; stats shows each server and the total; migrate and
  cull run once per server, each line prefixed with the server's name.

Output:
  Results go to stdout, everything else (errors, logs, prompts, progress) to
  stderr. With --json, results are JSON on stdout and every error is one JSON
  object on stderr: {"error":CODE,"message":…,"exit_code":N}; see
  docs/cli.md for the codes.

Exit codes:
  0  success
  1  failure (cannot connect, not migrated, dirty schema, SQL error, …)
  2  usage error (bad command, flag or argument; invalid key; --yes needed)
  3  miss (get/ttl/incr/decr/touch/delete/has found no live entry; add did not store)
  4  migrations pending (migrate version, migrate status)

Quick start:
  dbcache demo                       # a tour on a disposable database
  dbcache migrate up                 # create the cache table
  dbcache set greeting hello --ttl 5m
  dbcache get greeting`

func (a *app) rootCommand() *cobra.Command {
	var showVersion bool
	root := &cobra.Command{
		Use:   "dbcache",
		Short: "Administer a dbcache cache in PostgreSQL",
		Long:  rootLong,
		// Errors are printed once, by report, as one line; a runtime error
		// is not helped by a usage dump.
		SilenceErrors:     true,
		SilenceUsage:      true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			a.started = true
			a.cmdPath = cmd.CommandPath()
			a.g.connectTimeoutSet = cmd.Flags().Changed("connect-timeout")
			a.g.statementTimeoutSet = cmd.Flags().Changed("statement-timeout")
			if a.g.verbose && a.g.debug {
				return usagef("--verbose and --debug are mutually exclusive")
			}
			level := slog.LevelWarn
			switch {
			case a.g.debug:
				level = slog.LevelDebug
			case a.g.verbose:
				level = slog.LevelInfo
			}
			a.log = newLogger(a.errw, level, a.g.json)
			if a.g.connectTimeout <= 0 {
				return usagef("--connect-timeout must be positive, got %s", a.g.connectTimeout)
			}
			if a.g.statementTimeout < 0 {
				return usagef("--statement-timeout must not be negative (0 disables it), got %s", a.g.statementTimeout)
			}
			if err := a.resolveShards(); err != nil {
				return err
			}
			if a.sharded() && cmd.Name() == "demo" {
				return usagef("demo runs on one server of its own: leave out --database-url")
			}
			return a.resolveSchema(cmd)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			if showVersion {
				return a.printVersion()
			}
			return cmd.Help()
		},
	}
	// Every flag error is a usage error, and report adds the hint.
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		a.cmdPath = cmd.CommandPath()
		return &usageError{err: renamedFlag(cmd, err)}
	})
	root.Flags().BoolVar(&showVersion, "version", false, "print dbcache's version, as the version command does")
	pf := root.PersistentFlags()
	pf.StringArrayVar(&a.g.databaseURLs, "database-url", nil, "PostgreSQL URL or key=value string (default $"+EnvDatabaseURL+", else the PG* variables); repeat as NAME=URL for each server of a sharded cache")
	pf.StringVar(&a.g.schema, "schema", "", "schema that holds the cache table (default $"+EnvSchema+", else the search_path's first)")
	pf.DurationVar(&a.g.connectTimeout, "connect-timeout", ConnectTimeoutDefault, "give up connecting after this long")
	pf.DurationVar(&a.g.statementTimeout, "statement-timeout", StatementTimeoutDefault, "the session's statement_timeout (0 disables)")
	pf.BoolVar(&a.g.json, "json", false, "print results as JSON, and errors as JSON on stderr")
	pf.BoolVarP(&a.g.verbose, "verbose", "v", false, "log progress at info level")
	pf.BoolVar(&a.g.debug, "debug", false, "log at debug level")

	root.AddGroup(
		&cobra.Group{ID: "cache", Title: "Cache operations:"},
		&cobra.Group{ID: "admin", Title: "Administration:"},
	)
	for _, c := range []*cobra.Command{
		a.getCommand(), a.setCommand(), a.addCommand(), a.touchCommand(), a.deleteCommand(),
		a.incrCommand(true), a.incrCommand(false), a.hasCommand(), a.clearCommand(),
		a.ttlCommand(), a.keysCommand(), a.deletePrefixCommand(),
	} {
		c.GroupID = "cache"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{
		a.migrateCommand(), a.statsCommand(), a.cullCommand(), a.benchCommand(), a.demoCommand(), a.versionCommand(),
	} {
		c.GroupID = "admin"
		root.AddCommand(c)
		// With several servers, migrations and culling run per server.
		if c.Name() == "migrate" || c.Name() == "cull" {
			a.perServer(c)
		}
	}
	// Remember which command failed, for the usage hint of an argument
	// error (cobra validates arguments before any hook runs).
	var wrapArgs func(c *cobra.Command)
	wrapArgs = func(c *cobra.Command) {
		if c.Args != nil {
			check := c.Args
			c.Args = func(cmd *cobra.Command, args []string) error {
				if err := check(cmd, args); err != nil {
					a.cmdPath = cmd.CommandPath()
					return &usageError{err: err}
				}
				return nil
			}
		}
		for _, sub := range c.Commands() {
			wrapArgs(sub)
		}
	}
	wrapArgs(root)
	return root
}

// renamedFlag explains the flags that were renamed: --version is dbcache's
// own version (on the root command), so the key version became
// --key-version, and --prefix became --key-prefix to match.
func renamedFlag(cmd *cobra.Command, err error) error {
	var ne *pflag.NotExistError
	if !errors.As(err, &ne) {
		return err
	}
	switch ne.GetSpecifiedName() {
	case "version":
		if cmd.Flags().Lookup("key-version") != nil {
			return fmt.Errorf("%w (the key version is --key-version; `dbcache --version` prints dbcache's version)", err)
		}
		return fmt.Errorf("%w (`dbcache --version` prints dbcache's version)", err)
	case "prefix":
		if cmd.Flags().Lookup("key-prefix") != nil {
			return fmt.Errorf("%w (the key prefix is --key-prefix)", err)
		}
	}
	return err
}

// cacheFlags are the key-shaping flags of the cache operations, mapping to
// dbcache.Config.KeyPrefix and the key version (Cache.WithVersion).
type cacheFlags struct {
	prefix  string
	version int
	// keyFile is --key-file, on the commands that take a KEY.
	keyFile string
}

// validate refuses a --key-prefix PostgreSQL cannot store in a key, before
// connecting: every key made with it would be refused, and the library's
// error would name the key, which is fine.
func (f *cacheFlags) validate() error {
	why := ""
	switch {
	case !utf8.ValidString(f.prefix):
		why = "not valid UTF-8 (PostgreSQL text cannot hold it)"
	case strings.IndexByte(f.prefix, 0) >= 0:
		why = "contains a NUL byte (PostgreSQL text cannot hold it)"
	default:
		return nil
	}
	return &usageError{err: fmt.Errorf("invalid --key-prefix %s: %s", shortKey(f.prefix), why), code: CodeInvalidKey}
}

func (f *cacheFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&f.prefix, "key-prefix", "", "key prefix (Django's KEY_PREFIX)")
	fs.IntVar(&f.version, "key-version", 1, "key version (Django's VERSION / version=)")
}
