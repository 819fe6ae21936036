// Package dbtest gives every test its own PostgreSQL schema. It is for tests
// only (non-test code must not import it).
//
// The server is DBCACHE_TEST_DATABASE_URL when that is set. Otherwise one
// PostgreSQL container per test process is started through testcontainers,
// from DBCACHE_TEST_PG_IMAGE (default an official postgres image), so
// `go test ./...` works on a laptop with Docker and nothing set up. A package
// that uses it calls Main from its TestMain so the container is removed at the
// end of the run.
//
// Each Schema is a fresh schema named dbct_<unix>_<pid>_<n>, dropped when the
// test ends; a pool from it has search_path set to that schema, so the code
// under test finds its table the way an application's would. Schemas left by
// killed runs are dropped when they are an hour old.
package dbtest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/dbcache/dbcache/migrations"
)

const (
	// EnvDatabaseURL names a server to test against instead of a container.
	EnvDatabaseURL = "DBCACHE_TEST_DATABASE_URL"
	// EnvImage names the image for the test container.
	EnvImage = "DBCACHE_TEST_PG_IMAGE"
	// DefaultImage is used when EnvImage is unset.
	DefaultImage = "postgres:16-alpine"

	schemaPrefix = "dbct_"

	startupTimeout = 3 * time.Minute
)

var (
	serverOnce sync.Once
	serverURL  string
	serverErr  error
	container  testcontainers.Container
	adminPool  *pgxpool.Pool
	schemaSeq  atomic.Int64

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
// started (the container, example schemas). Call it from TestMain:
//
//	func TestMain(m *testing.M) { dbtest.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	exampleMu.Lock()
	for i := len(exampleCleanup) - 1; i >= 0; i-- {
		exampleCleanup[i]()
	}
	exampleMu.Unlock()
	if adminPool != nil {
		adminPool.Close()
	}
	if container != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = container.Terminate(ctx)
		cancel()
	}
	os.Exit(code)
}

// URL returns the DSN of the test server, starting the container on first
// use. A server that cannot be had fails the test: it never skips.
func URL(tb testing.TB) string {
	tb.Helper()
	url, err := server()
	if err != nil {
		tb.Fatalf("dbtest: no PostgreSQL for the tests: %v", err)
	}
	return url
}

func server() (string, error) {
	serverOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), startupTimeout+time.Minute)
		defer cancel()
		serverURL = os.Getenv(EnvDatabaseURL)
		if serverURL == "" {
			serverURL, serverErr = startContainer(ctx)
			if serverErr != nil {
				return
			}
		}
		adminPool, serverErr = pgxpool.New(ctx, serverURL)
		if serverErr != nil {
			return
		}
		if serverErr = waitReady(ctx, adminPool); serverErr != nil {
			return
		}
		dropStaleSchemas(ctx)
	})
	return serverURL, serverErr
}

func startContainer(ctx context.Context) (string, error) {
	ctr, err := tcpostgres.Run(ctx, Image(),
		tcpostgres.WithDatabase("dbcache_test"),
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithPassword("postgres"),
		// The module's BasicWaitStrategies (the second "ready" log line,
		// then the port) with a longer deadline than its 60 s: initdb on a
		// busy two-core machine can take longer.
		testcontainers.WithWaitStrategyAndDeadline(startupTimeout,
			wait.ForLog("database system is ready to accept connections").WithOccurrence(2).WithStartupTimeout(startupTimeout),
			wait.ForListeningPort("5432/tcp").WithStartupTimeout(startupTimeout),
		),
	)
	if ctr != nil {
		container = ctr
	}
	if err != nil {
		return "", fmt.Errorf("start %s container (set %s to use an existing server): %w", Image(), EnvDatabaseURL, err)
	}
	return ctr.ConnectionString(ctx, "sslmode=disable")
}

// waitReady retries until the server answers a query: a container's log can
// say ready a moment before it accepts connections.
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
	exampleMu.Lock()
	exampleCleanup = append(exampleCleanup, cleanup)
	exampleMu.Unlock()
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
	exampleMu.Lock()
	exampleCleanup = append(exampleCleanup, pool.Close)
	exampleMu.Unlock()
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
