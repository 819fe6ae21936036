package nearcache_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/migrations"
	"github.com/dbcache/dbcache/internal/pgserver"
	"github.com/dbcache/dbcache/nearcache"
)

// The feed needs wal_level = logical, which PostgreSQL's defaults (and so
// dbtest's shared server, or a DBCACHE_TEST_DATABASE_URL) do not give: the
// package starts a throwaway server of its own with the settings it needs
// (pgserver.Config.Settings), whichever way the environment says
// (DBCACHE_TEST_PG_SERVER), and removes it at the end. Tests that restart a
// server start one more of their own.

// logicalSettings are the server settings the tests need: logical
// decoding, and room for every parallel test's feeds (two each).
var logicalSettings = map[string]string{
	"wal_level":             "logical",
	"max_wal_senders":       "64",
	"max_replication_slots": "64",
	"max_connections":       "300",
}

var (
	server  *pgserver.Server
	seq     atomic.Int64
	startMu sync.Mutex
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	// A process dbtest.Start made (the tags' history test's writers and
	// readers) runs its role, not the tests.
	if code, ok := dbtest.RunRole(); ok {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*pgserver.DefaultStartTimeout)
	defer cancel()
	var err error
	server, err = startServer(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nearcache tests: %v\n", err)
		return 1
	}
	defer func() { _ = server.Remove(context.Background()) }()
	if err := os.Setenv("DATABASE_URL", server.URL("")); err != nil {
		fmt.Fprintf(os.Stderr, "nearcache tests: %v\n", err)
		return 1
	}
	// The example's schema (the search_path's), migrated as an
	// application would with the migrations package.
	if err := migrateExampleSchema(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "nearcache tests: %v\n", err)
		return 1
	}
	return m.Run()
}

func migrateExampleSchema(ctx context.Context) error {
	cfg, err := pgx.ParseConfig(server.URL(""))
	if err != nil {
		return err
	}
	m, err := migrations.NewFromConnConfig(cfg, nil)
	if err != nil {
		return err
	}
	return m.Up(ctx)
}

func startServer(ctx context.Context) (*pgserver.Server, error) {
	cfg, err := pgserver.ConfigFromEnv(os.Getenv)
	if err != nil {
		return nil, err
	}
	cfg.Database = "nearcache_test"
	cfg.Settings = logicalSettings
	return pgserver.Start(ctx, cfg)
}

func ctxT(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// env is one test's cache table: a fresh schema on a server, migrated and
// published.
type env struct {
	srv    *pgserver.Server
	schema string
}

// newEnv makes a schema on srv (the package's server when nil).
func newEnv(t testing.TB, srv *pgserver.Server) *env {
	t.Helper()
	if srv == nil {
		srv = server
	}
	ctx := ctxT(t)
	e := &env{srv: srv, schema: fmt.Sprintf("nc_%d_%d", os.Getpid(), seq.Add(1))}
	cfg, err := pgx.ParseConfig(srv.URL(""))
	require.NoError(t, err)
	m, err := migrations.NewFromConnConfig(cfg, &migrations.Config{Schema: e.schema})
	require.NoError(t, err)
	require.NoError(t, m.Up(ctx))
	pool := e.pool(t)
	require.NoError(t, nearcache.Setup(ctx, pool, nil))
	require.NoError(t, nearcache.Setup(ctx, pool, nil), "Setup is idempotent")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, srv.URL(""))
		if err != nil {
			return
		}
		defer conn.Close(ctx)
		_, _ = conn.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pgx.Identifier{nearcache.PublicationName(e.schema)}.Sanitize())
		_, _ = conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{e.schema}.Sanitize()+" CASCADE")
	})
	return e
}

// poolConfig is a pool on the schema (as search_path) whose connections
// dial the server's current address (it moves across restarts).
func (e *env) poolConfig(t testing.TB) *pgxpool.Config {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(e.srv.URL(""))
	require.NoError(t, err)
	cfg.MaxConns = 6
	cfg.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{e.schema}.Sanitize()
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	cfg.BeforeConnect = func(_ context.Context, cc *pgx.ConnConfig) error {
		cc.Host, cc.Port = e.srv.Addr()
		return nil
	}
	return cfg
}

func (e *env) pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.NewWithConfig(ctxT(t), e.poolConfig(t))
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// proc is one application process: its own pool, dbcache and near cache.
type proc struct {
	pool  *pgxpool.Pool
	cache *dbcache.Cache
	near  *nearcache.Cache
	trace *recorder
	// appName is the feed connection's application_name.
	appName string
	// bound is the layer's MaxStaleness.
	bound time.Duration
}

// steady is a configuration for tests that assert reads are served from
// memory: a bound long enough that a heartbeat late on a loaded machine
// never sends a read to the database, heartbeats as often as usual.
func steady() *nearcache.Config {
	return &nearcache.Config{MaxStaleness: 30 * time.Second, HeartbeatInterval: 100 * time.Millisecond}
}

func (e *env) proc(t testing.TB, cfg *nearcache.Config) *proc {
	t.Helper()
	return e.procWith(t, cfg, nil)
}

// procWith is proc with the near cache in front of wrap(cache) (wrap nil:
// the cache itself).
func (e *env) procWith(t testing.TB, cfg *nearcache.Config, wrap func(*dbcache.Cache) dbcache.Store) *proc {
	t.Helper()
	p := &proc{pool: e.pool(t), trace: &recorder{}}
	var err error
	p.cache, err = dbcache.New(ctxT(t), p.pool, &dbcache.Config{OpTimeout: 30 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.cache.Close() })
	c := nearcache.Config{}
	if cfg != nil {
		c = *cfg
	}
	if c.Tracer == nil {
		c.Tracer = p.trace
		c.TraceKeys = true // the recorder counts invalidations by key
	}
	if c.Replication == nil {
		// A name of its own, so a test can find its walsender.
		rc := p.pool.Config().ConnConfig.Config.Copy()
		rc.RuntimeParams["application_name"] = fmt.Sprintf("nc_test_%d", seq.Add(1))
		// Like the pool, it dials the server where it is now (a restarted
		// container has a new port), as a DNS name would follow a server.
		var d net.Dialer
		rc.DialFunc = func(ctx context.Context, network, _ string) (net.Conn, error) {
			host, port := e.srv.Addr()
			return d.DialContext(ctx, network, net.JoinHostPort(host, strconv.Itoa(int(port))))
		}
		c.Replication = rc
	}
	p.appName = c.Replication.RuntimeParams["application_name"]
	p.bound = c.MaxStaleness
	if p.bound == 0 {
		p.bound = nearcache.MaxStalenessDefault
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	startMu.Lock() // slot creation waits for open transactions: one at a time is quicker
	var store dbcache.Store = p.cache
	if wrap != nil {
		store = wrap(p.cache)
	}
	p.near, err = nearcache.New(ctxT(t), store, p.pool, &c)
	startMu.Unlock()
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.near.Close() })
	return p
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b))
	return len(b), nil
}

// recorder is a Tracer that remembers what the feed invalidated.
type recorder struct {
	mu    sync.Mutex
	feed  map[string]int // stored key → invalidations from the feed
	ups   int
	downs int
}

func (r *recorder) TraceRead(context.Context, string, int, int) {}

func (r *recorder) TraceInvalidate(inv nearcache.Invalidation) {
	if inv.Cause != nearcache.CauseFeed {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.feed == nil {
		r.feed = map[string]int{}
	}
	r.feed[inv.Key]++
}

func (r *recorder) TraceFeed(up bool, _ error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if up {
		r.ups++
	} else {
		r.downs++
	}
}

func (r *recorder) invalidated(key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.feed[key]
}

// eventually waits for cond, with a hang guard only a real hang trips.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
