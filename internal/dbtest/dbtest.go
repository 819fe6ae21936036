// Package dbtest gives every test its own PostgreSQL schema. It is for tests
// only (non-test code must not import it).
//
// The server is DBCACHE_TEST_DATABASE_URL when that is set. Otherwise one
// throwaway server per test process is started (internal/pgserver): a
// container when Docker can run one, else from the PostgreSQL installation
// on the machine; DBCACHE_TEST_PG_SERVER=container or =installed forces one
// way. So `go test ./...` works on a machine with either and nothing set up.
// A package that uses dbtest calls Main from its TestMain, which removes the
// server at the end of the run (and pgserver's reaper removes it if the
// process dies first, say of a panic).
//
// When no server can be had, the package fails within seconds with one
// message saying what to install or set: Main prints it and exits before
// any test runs (with -test.list, which starts no server up front, the first
// test to need one fails with the message and every later one with a short
// line pointing to it).
//
// Each Schema is a fresh schema named dbct_<unix>_<pid>_<n>, dropped when the
// test ends; a pool from it has search_path set to that schema, so the code
// under test finds its table the way an application's would. Schemas left by
// killed runs are dropped when they are an hour old.
//
// DBCACHE_TEST_DB_PROFILE (EnvProfile) moves every schema of the run into a
// database with production defaults (an ICU collation, a repeatable-read
// default isolation), so a package's whole suite runs under them.
// NewPgBouncer puts Debian's PgBouncer in transaction pooling in front of
// the server.
package dbtest

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/internal/migrations"
	"github.com/dbcache/dbcache/internal/pgserver"
)

const (
	// EnvDatabaseURL names a server to test against instead of a throwaway
	// one.
	EnvDatabaseURL = "DBCACHE_TEST_DATABASE_URL"
	// EnvImage names the image for throwaway containers.
	EnvImage = pgserver.EnvImage
	// DefaultImage is used when EnvImage is unset.
	DefaultImage = pgserver.DefaultImage
	// EnvExampleURL is set by Main, for the test process only, to the DSN
	// of a migrated schema, so runnable examples can open their pool from
	// it as an application would: pgxpool.New(ctx, os.Getenv("DATABASE_URL")).
	EnvExampleURL = "DATABASE_URL"

	schemaPrefix = "dbct_"

	// testDatabase is the database made on a throwaway server.
	testDatabase = "dbcache_test"
)

var (
	serverOnce sync.Once
	// serverURL is the database the run's schemas live in: the server's
	// own (baseURL), or its profile's (EnvProfile).
	serverURL  string
	baseURL    string
	runProfile Profile
	serverErr  error
	throwaway  *pgserver.Server
	adminPool  *pgxpool.Pool
	schemaSeq  atomic.Int64
	// reported is set once a test has failed with the full message.
	reported atomic.Bool

	exampleMu      sync.Mutex
	exampleCleanup []func()
)

// Image is the PostgreSQL image that tests and demos start containers from.
func Image() string {
	if img := os.Getenv(EnvImage); img != "" {
		return img
	}
	return DefaultImage
}

// Main runs the package's tests and then removes anything this package
// started (the throwaway server, schemas); in a process Start made, it runs
// that process's role instead. Call it from TestMain:
//
//	func TestMain(m *testing.M) { dbtest.Main(m) }
//
// Before the tests it sets DATABASE_URL (EnvExampleURL), in this process
// only, to the DSN of a fresh migrated schema on the test server (its
// search_path a URL parameter), dropped at the end; the package's examples
// share it. That needs the server before any test runs, so Main starts it
// then (any -test.run pattern may select an example: "SetMany" selects
// ExampleCache_SetMany), except with -test.list, which only lists. Either
// way a server that cannot be had fails the package with one message.
func Main(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	// A process Start made runs its role, not the tests: it starts no
	// server and makes no schema (the test gave it what it needs).
	if code, ok := runRole(); ok {
		return code
	}
	// Deferred, so it runs however m.Run returns; a test that panics kills
	// the process before, and pgserver's reaper removes the server then.
	defer cleanup()
	if !flag.Parsed() {
		flag.Parse()
	}
	if examplesMayRun() {
		if err := setExampleURL(); err != nil {
			fmt.Fprintf(os.Stderr, "%v\n", err)
			return 1
		}
	}
	return m.Run()
}

// examplesMayRun reports whether the run may include an Example function.
// Only -test.list rules that out: a -test.run pattern such as "SetMany"
// selects ExampleCache_SetMany too, and telling which examples a pattern
// selects would mean knowing their names here.
func examplesMayRun() bool {
	f := flag.Lookup("test.list")
	return f == nil || f.Value.String() == ""
}

func cleanup() {
	exampleMu.Lock()
	for i := len(exampleCleanup) - 1; i >= 0; i-- {
		exampleCleanup[i]()
	}
	exampleCleanup = nil
	exampleMu.Unlock()
	if adminPool != nil {
		adminPool.Close()
	}
	if throwaway != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := throwaway.Remove(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "dbtest: %v\n", err)
		}
		cancel()
	}
}

// setExampleURL makes the examples' schema and points DATABASE_URL at it.
func setExampleURL() error {
	if _, err := server(); err != nil {
		return noServer(err)
	}
	s, drop, err := newSchema()
	if err != nil {
		return fmt.Errorf("dbtest: %w", err)
	}
	addCleanup(drop)
	if err := s.migrate(); err != nil {
		return fmt.Errorf("dbtest: %w", err)
	}
	dsn, err := withSearchPath(s.URL, s.Name)
	if err != nil {
		return fmt.Errorf("dbtest: %w", err)
	}
	return os.Setenv(EnvExampleURL, dsn)
}

func addCleanup(f func()) {
	exampleMu.Lock()
	exampleCleanup = append(exampleCleanup, f)
	exampleMu.Unlock()
}

// noServer is the one message for a server that cannot be had.
func noServer(err error) error {
	return fmt.Errorf("dbtest: no PostgreSQL for the tests: %w; or set %s to a server to test against", err, EnvDatabaseURL)
}

// URL returns the DSN of the test server, starting it on first use. A
// server that cannot be had fails the test: it never skips.
func URL(tb testing.TB) string {
	tb.Helper()
	url, err := server()
	if err != nil {
		fatalNoServer(tb, err)
	}
	return url
}

// fatalNoServer fails the test: the first one with the whole message, the
// others with a line pointing to it.
func fatalNoServer(tb testing.TB, err error) {
	tb.Helper()
	if reported.CompareAndSwap(false, true) {
		tb.Fatal(noServer(err))
	}
	tb.Fatal("dbtest: no PostgreSQL for the tests (see the first failure)")
}

func server() (string, error) {
	serverOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*pgserver.DefaultStartTimeout+time.Minute)
		defer cancel()
		serverURL = os.Getenv(EnvDatabaseURL)
		if serverURL == "" {
			var cfg pgserver.Config
			if cfg, serverErr = pgserver.ConfigFromEnv(os.Getenv); serverErr != nil {
				return
			}
			cfg.Database = testDatabase
			if throwaway, serverErr = pgserver.Start(ctx, cfg); serverErr != nil {
				return
			}
			serverURL = throwaway.URL("")
		}
		if runProfile, serverErr = RunProfile(); serverErr != nil {
			return
		}
		baseURL = serverURL
		adminPool, serverErr = pgxpool.New(ctx, serverURL)
		if serverErr != nil {
			return
		}
		if serverErr = waitReady(ctx, adminPool); serverErr != nil {
			return
		}
		if runProfile.suffix() != "" {
			// Every schema of the run lives in the profile's database.
			if serverURL, serverErr = profileDatabase(baseURL, runProfile); serverErr != nil {
				serverErr = fmt.Errorf("%s: %w", EnvProfile, serverErr)
				return
			}
			adminPool.Close()
			if adminPool, serverErr = pgxpool.New(ctx, serverURL); serverErr != nil {
				return
			}
		}
		dropStaleSchemas(ctx)
	})
	return serverURL, serverErr
}

// waitReady retries until the server answers a query, for a configured
// server that is still starting.
func waitReady(ctx context.Context, pool *pgxpool.Pool) error {
	var err error
	for {
		if err = pool.Ping(ctx); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("server never answered: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func dropStaleSchemas(ctx context.Context) {
	rows, err := adminPool.Query(ctx, `SELECT nspname FROM pg_namespace WHERE nspname LIKE 'dbct\_%'`)
	if err != nil {
		return
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return
	}
	for _, n := range names {
		var ts int64
		if _, err := fmt.Sscanf(n, schemaPrefix+"%d_", &ts); err != nil {
			continue
		}
		if time.Since(time.Unix(ts, 0)) > time.Hour {
			_, _ = adminPool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{n}.Sanitize()+" CASCADE")
		}
	}
}

// Schema is one test's own PostgreSQL schema.
type Schema struct {
	// Name is the schema's name.
	Name string
	// URL is the server's DSN (without any search_path).
	URL string
}

// NewSchema creates an empty schema that is dropped when the test ends.
func NewSchema(tb testing.TB) *Schema {
	tb.Helper()
	if _, err := server(); err != nil {
		fatalNoServer(tb, err)
	}
	s, cleanup, err := newSchema()
	if err != nil {
		tb.Fatalf("dbtest: %v", err)
	}
	tb.Cleanup(cleanup)
	return s
}

func newSchema() (*Schema, func(), error) {
	url, err := server()
	if err != nil {
		return nil, nil, err
	}
	name := fmt.Sprintf("%s%d_%d_%d", schemaPrefix, time.Now().Unix(), os.Getpid(), schemaSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := adminPool.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize()); err != nil {
		return nil, nil, fmt.Errorf("create schema %s: %w", name, err)
	}
	cleanup := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = adminPool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{name}.Sanitize()+" CASCADE")
	}
	return &Schema{Name: name, URL: url}, cleanup, nil
}

// PoolConfig returns a pool config whose connections use the schema as
// search_path, with MaxConns 10.
func (s *Schema) PoolConfig(tb testing.TB) *pgxpool.Config {
	tb.Helper()
	cfg, err := s.poolConfig()
	if err != nil {
		tb.Fatalf("dbtest: %v", err)
	}
	return cfg
}

func (s *Schema) poolConfig() (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(s.URL)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = 10
	cfg.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{s.Name}.Sanitize()
	cfg.ConnConfig.RuntimeParams["application_name"] = "dbcache-test"
	return cfg, nil
}

// Pool opens a pool on the schema, closed when the test ends.
func (s *Schema) Pool(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	return NewPool(tb, s.PoolConfig(tb))
}

// NewPool opens a pool from cfg, closed when the test ends.
func NewPool(tb testing.TB, cfg *pgxpool.Config) *pgxpool.Pool {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		tb.Fatalf("dbtest: open pool: %v", err)
	}
	tb.Cleanup(pool.Close)
	return pool
}

// Migrate applies dbcache's migrations to the schema.
func (s *Schema) Migrate(tb testing.TB) {
	tb.Helper()
	if err := s.migrate(); err != nil {
		tb.Fatalf("dbtest: %v", err)
	}
}

func (s *Schema) migrate() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg, err := pgx.ParseConfig(s.URL)
	if err != nil {
		return err
	}
	m, err := migrations.NewFromConnConfig(cfg, &migrations.Config{Schema: s.Name})
	if err != nil {
		return err
	}
	if err := m.Up(ctx); err != nil {
		return fmt.Errorf("migrate schema %s: %w", s.Name, err)
	}
	return nil
}

// Pool is the common case: a fresh, migrated schema and a pool on it.
func Pool(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	s := NewSchema(tb)
	s.Migrate(tb)
	return s.Pool(tb)
}

// ExamplePool is Pool for Example functions, which have no testing.TB: the
// schema and pool live until Main returns. It panics when no server can be
// had, which fails the example.
func ExamplePool() *pgxpool.Pool {
	s, cleanup, err := newSchema()
	if err != nil {
		panic("dbtest: " + err.Error())
	}
	addCleanup(cleanup)
	if err := s.migrate(); err != nil {
		panic("dbtest: " + err.Error())
	}
	cfg, err := s.poolConfig()
	if err != nil {
		panic("dbtest: " + err.Error())
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		panic("dbtest: " + err.Error())
	}
	addCleanup(pool.Close)
	return pool
}

// Exec runs sql on pool and fails the test on error; for arranging state.
func Exec(tb testing.TB, pool *pgxpool.Pool, sql string, args ...any) int64 {
	tb.Helper()
	tag, err := pool.Exec(context.Background(), sql, args...)
	if err != nil {
		tb.Fatalf("dbtest: exec %q: %v", sql, err)
	}
	return tag.RowsAffected()
}

// Count returns the number of rows in the schema's cache table.
func Count(tb testing.TB, pool *pgxpool.Pool) int {
	tb.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM "+migrations.Table).Scan(&n); err != nil {
		tb.Fatalf("dbtest: count: %v", err)
	}
	return n
}
