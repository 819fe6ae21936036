// Package pgserver starts throwaway PostgreSQL servers for dbcache's tests
// and its demo, so both run on a machine where nothing is configured. It is
// not for library code (the library never starts servers).
//
// A server comes from one of two places:
//
//   - a container, through testcontainers, when Docker can run one and the
//     program imports internal/pgcontainer (a module of its own, which
//     registers its driver; the CLI and the integration suite do, the
//     library's own tests do not): image $DBCACHE_TEST_PG_IMAGE, default
//     postgres:16-alpine;
//   - otherwise the PostgreSQL server installation found on the machine
//     (initdb and postgres from $DBCACHE_TEST_PG_BINDIR, PATH, pg_config
//     --bindir, /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin,
//     /usr/local/pgsql/bin, Homebrew's and Postgres.app's directories), run
//     from a temporary directory, as embedded-postgres projects do.
//     PostgreSQL refuses to run as root, so a root process runs it as the
//     "postgres" OS user (or "nobody" when there is none).
//
// DBCACHE_TEST_PG_SERVER=container or =installed forces one of the two (CI
// runs the suites once each way); unset, a container is tried first.
//
// Either way the server listens on 127.0.0.1 only, on a free port, with
// PostgreSQL's default settings (fsync and synchronous_commit on: tests
// measure commit behaviour) unless Config.Settings changes some, a UTF-8 cluster with the C locale (so databases
// default to the "C" collation; tests that need another create a database
// with it), and trust authentication for the superuser
// "postgres" (tests log in as roles they create, without passwords; only
// local processes can reach the server). When neither way can be had, Start
// fails within seconds with one error, wrapping ErrUnavailable, that says
// what to install or set.
//
// A server is removed by Remove, and also when the process that started it
// dies without calling Remove (a panicking test, a killed run): Start spawns
// a small reaper process (this same executable, see init) that removes the
// server once the starting process is gone. Servers whose reaper was killed
// too are removed by the next Start on the machine.
package pgserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	// EnvKind forces how servers are started: "container" or "installed".
	// Unset (or "auto"), a container is tried first, then the installation.
	EnvKind = "DBCACHE_TEST_PG_SERVER"
	// EnvImage names the image containers are started from.
	EnvImage = "DBCACHE_TEST_PG_IMAGE"
	// EnvBinDir names the directory holding initdb and postgres; set, no
	// other directory is searched.
	EnvBinDir = "DBCACHE_TEST_PG_BINDIR"

	// DefaultImage is the image used when EnvImage is unset: the official
	// image, pulled when it is not on the machine.
	DefaultImage = "postgres:16-alpine"
	// DefaultStartTimeout bounds each way of starting a server: initdb on a
	// busy two-core machine, or an image pull, can take minutes.
	DefaultStartTimeout = 3 * time.Minute

	// Superuser is the server's superuser, who may log in without a password.
	Superuser = "postgres"
)

// Kind is how a server is run.
type Kind string

const (
	// Auto tries a container, then the installation.
	Auto Kind = ""
	// Container runs the server in a Docker container.
	Container Kind = "container"
	// Installed runs the server from the machine's PostgreSQL installation.
	Installed Kind = "installed"
)

// ErrUnavailable is wrapped by Start's error when no server can be started
// the requested way(s): no Docker (or no image), no PostgreSQL installation.
var ErrUnavailable = errors.New("no throwaway PostgreSQL server can be started")

// installHint says what to install, for errors that wrap ErrUnavailable.
const installHint = "install Docker, or PostgreSQL's server package " +
	"(apt install postgresql, dnf install postgresql-server, brew install postgresql@16), " +
	"or set " + EnvBinDir + " to the directory holding initdb and postgres"

// Config says how to start a server. The zero value is valid.
type Config struct {
	// Kind forces one way; Auto (the zero value) tries both.
	Kind Kind
	// Image is the container image. Defaults to DefaultImage.
	Image string
	// BinDir is the directory of initdb and postgres. Defaults to a search
	// (see the package doc).
	BinDir string
	// Database is a database created on the server for the caller, besides
	// "postgres". Empty: only "postgres".
	Database string
	// StartTimeout bounds each way of starting. Defaults to
	// DefaultStartTimeout.
	StartTimeout time.Duration
	// Logger gets progress at debug level. Defaults to discarding.
	Logger *slog.Logger
	// Settings are server settings that differ from PostgreSQL's defaults,
	// by name, each passed as postgres -c name=value on every start (a
	// restart keeps them): for tests that need, say, wal_level=logical.
	// Names are PostgreSQL's (letters, digits, _ and .); Start refuses
	// others. Defaults to none.
	Settings map[string]string
}

// settingNameRE is what a PostgreSQL setting's name looks like
// (extensions' settings have a dot).
var settingNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

// settingArgs returns Settings as postgres arguments, -c name=value, in
// name order, or an error naming a setting that is not one.
func (c Config) settingArgs() ([]string, error) {
	names := slices.Sorted(maps.Keys(c.Settings))
	args := make([]string, 0, 2*len(names))
	for _, n := range names {
		if !settingNameRE.MatchString(n) {
			return nil, fmt.Errorf("pgserver: Config.Settings: %q is not a setting name", n)
		}
		args = append(args, "-c", n+"="+c.Settings[n])
	}
	return args, nil
}

// ConfigFromEnv reads EnvKind, EnvImage and EnvBinDir through getenv.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	cfg := Config{Image: getenv(EnvImage), BinDir: getenv(EnvBinDir)}
	switch k := strings.ToLower(strings.TrimSpace(getenv(EnvKind))); k {
	case "", "auto":
	case string(Container), "docker":
		cfg.Kind = Container
	case string(Installed):
		cfg.Kind = Installed
	default:
		return cfg, fmt.Errorf("%s=%q: want container, installed or auto", EnvKind, k)
	}
	return cfg, nil
}

func (c Config) withDefaults() Config {
	if c.Image == "" {
		c.Image = DefaultImage
	}
	if c.StartTimeout <= 0 {
		c.StartTimeout = DefaultStartTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// instance is one way of running a server.
type instance interface {
	// start starts the stopped server and returns its port.
	start(ctx context.Context) (uint16, error)
	// shutdown is a fast shutdown: open transactions roll back, clients are
	// disconnected, a checkpoint is written.
	shutdown(ctx context.Context) error
	// crash kills every server process at once: no checkpoint, so the next
	// start runs crash recovery.
	crash(ctx context.Context) error
	// remove stops the server if it runs and deletes everything of it.
	remove(ctx context.Context) error
	// logTail is the end of the server's log, for error messages.
	logTail(ctx context.Context) string
}

// Server is a running (or stopped) throwaway server. Its methods are safe
// for concurrent use, except that Shutdown, Crash, Restart and Remove must
// not overlap.
type Server struct {
	kind     Kind
	database string
	desc     string
	inst     instance

	mu   sync.Mutex
	port uint16

	removeOnce sync.Once
	removeErr  error
	stopReaper func()
}

// Start starts a server, trying the ways cfg allows, and waits until it
// answers queries. On error nothing is left running.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	cfg = cfg.withDefaults()
	if _, err := cfg.settingArgs(); err != nil {
		return nil, err
	}
	sweepOnce.Do(func() { sweepStaleDirs(os.TempDir(), cfg.Logger) })
	switch cfg.Kind {
	case Container:
		s, err := startContainer(ctx, cfg)
		if err != nil {
			return nil, explain(err, nil)
		}
		return s, nil
	case Installed:
		s, err := startInstalled(ctx, cfg)
		if err != nil {
			return nil, explain(nil, err)
		}
		return s, nil
	case Auto:
	default:
		return nil, fmt.Errorf("pgserver: unknown Kind %q", cfg.Kind)
	}
	s, cerr := startContainer(ctx, cfg)
	if cerr == nil {
		return s, nil
	}
	cfg.Logger.Debug("pgserver: no container, trying the installed PostgreSQL", "err", cerr)
	s, ierr := startInstalled(ctx, cfg)
	if ierr == nil {
		return s, nil
	}
	return nil, explain(cerr, ierr)
}

// explain makes the one error Start returns from what each way reported
// (nil: not tried).
func explain(cerr, ierr error) error {
	var parts []string
	if cerr != nil {
		parts = append(parts, "container: "+cerr.Error())
	}
	if ierr != nil {
		parts = append(parts, "installed PostgreSQL: "+ierr.Error())
	}
	// One line: some causes (testcontainers' joined errors) have several.
	msg := strings.ReplaceAll(strings.Join(parts, "; "), "\n", "; ")
	// Unavailable only when every way tried was unavailable: a server that
	// started and then failed is a different problem, with no install hint.
	if (cerr == nil || errors.Is(cerr, ErrUnavailable)) && (ierr == nil || errors.Is(ierr, ErrUnavailable)) {
		return fmt.Errorf("%w: %s; %s", ErrUnavailable, msg, installHint)
	}
	return errors.New("could not start a throwaway PostgreSQL server: " + msg)
}

// unavailableError is why one way cannot start a server. It is
// ErrUnavailable without repeating its text in the combined message.
type unavailableError struct{ msg string }

func (e *unavailableError) Error() string        { return e.msg }
func (e *unavailableError) Is(target error) bool { return target == ErrUnavailable }

func unavailablef(format string, args ...any) error {
	return &unavailableError{msg: fmt.Sprintf(format, args...)}
}

func newServer(kind Kind, database, desc string, inst instance, port uint16) *Server {
	if database == "" {
		database = "postgres"
	}
	return &Server{kind: kind, database: database, desc: desc, inst: inst, port: port, stopReaper: func() {}}
}

// Kind is how the server runs.
func (s *Server) Kind() Kind { return s.kind }

// String describes the server for people: where it comes from and runs.
func (s *Server) String() string {
	host, port := s.Addr()
	return fmt.Sprintf("%s, on %s:%d", s.desc, host, port)
}

// Database is the database made for the caller (Config.Database), or
// "postgres".
func (s *Server) Database() string { return s.database }

// Addr is the server's address now. The port can change across Restart (a
// container gets a new one; a freed port may have been taken meanwhile).
func (s *Server) Addr() (host string, port uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return loopback, s.port
}

// URL is the DSN of database on the server at its current address, as the
// superuser; "" means the caller's database.
func (s *Server) URL(database string) string {
	if database == "" {
		database = s.database
	}
	host, port := s.Addr()
	pw := ""
	if s.kind == Container {
		// Ignored under trust authentication, which the official image
		// grants here; sent if a custom image asks for a password anyway.
		pw = ":" + ContainerPassword
	}
	return fmt.Sprintf("postgres://%s%s@%s:%d/%s?sslmode=disable", Superuser, pw, host, port, database)
}

// Shutdown stops the server as an operator would (a fast shutdown) and
// returns once it has stopped.
func (s *Server) Shutdown(ctx context.Context) error {
	if err := s.inst.shutdown(ctx); err != nil {
		return fmt.Errorf("pgserver: shut down: %w", err)
	}
	return nil
}

// Crash kills every process of the server at once, as a power cut would
// (what was fsynced survives), and returns once they are gone.
func (s *Server) Crash(ctx context.Context) error {
	if err := s.inst.crash(ctx); err != nil {
		return fmt.Errorf("pgserver: crash: %w", err)
	}
	return nil
}

// Restart starts the server after Shutdown or Crash and waits until it
// answers queries (after crash recovery).
func (s *Server) Restart(ctx context.Context) error {
	port, err := s.inst.start(ctx)
	if err != nil {
		return fmt.Errorf("pgserver: restart: %w", err)
	}
	s.mu.Lock()
	s.port = port
	s.mu.Unlock()
	return s.waitReady(ctx)
}

// Remove stops the server and deletes it. It is idempotent.
func (s *Server) Remove(ctx context.Context) error {
	s.removeOnce.Do(func() {
		s.removeErr = s.inst.remove(ctx)
		if s.removeErr != nil {
			s.removeErr = fmt.Errorf("pgserver: remove: %w", s.removeErr)
		}
		// The reaper would find nothing left; tell it to go.
		s.stopReaper()
	})
	return s.removeErr
}

// waitReady retries until the server answers a query: a
// container's log can say "ready" a moment before the port accepts
// connections, and a server says "the database system is starting up" until
// crash recovery ends.
func (s *Server) waitReady(ctx context.Context) error {
	var err error
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var conn *pgx.Conn
		conn, err = pgx.Connect(cctx, s.URL("postgres"))
		if err == nil {
			err = conn.Ping(cctx)
			_ = conn.Close(cctx)
		}
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the server never answered: %w%s", err, s.inst.logTail(context.WithoutCancel(ctx)))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// createDatabase creates the caller's database, if it is not "postgres".
func (s *Server) createDatabase(ctx context.Context) error {
	if s.database == "postgres" {
		return nil
	}
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{s.database}.Sanitize()); err != nil {
		return fmt.Errorf("create database %s: %w", s.database, err)
	}
	return nil
}

const loopback = "127.0.0.1"
