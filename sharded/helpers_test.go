package sharded_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/sharded"
)

// Most tests stand each shard up as a schema of its own on the shared test
// server (internal/dbtest): to the sharded cache a shard is a pool and a
// table, and which server the table is on changes nothing it does. A shard
// that must fail goes through a dbtest.Proxy (Down: refused, as a stopped
// server; Freeze: silent, as an unreachable one). The test on three real
// servers, stopped and restarted, is in servers_test.go.

// ctxT is a test's context: generous, so only a real hang trips it.
func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// env is a set of shards, each a migrated schema with a pool.
type env struct {
	names   []string
	schemas map[string]*dbtest.Schema
	pools   map[string]*pgxpool.Pool
	proxies map[string]*dbtest.Proxy
}

// newEnv makes shards named names; those in proxied reach the server
// through a proxy of their own.
func newEnv(t *testing.T, names []string, proxied ...string) *env {
	t.Helper()
	e := &env{names: names, schemas: map[string]*dbtest.Schema{}, pools: map[string]*pgxpool.Pool{}, proxies: map[string]*dbtest.Proxy{}}
	for _, name := range names {
		s := dbtest.NewSchema(t)
		s.Migrate(t)
		cfg := s.PoolConfig(t)
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
		if slices.Contains(proxied, name) {
			p := dbtest.NewProxy(t, net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port))))
			cfg.ConnConfig.Host, cfg.ConnConfig.Port = "127.0.0.1", p.Port()
			e.proxies[name] = p
		}
		e.schemas[name] = s
		e.pools[name] = dbtest.NewPool(t, cfg)
	}
	return e
}

func abc(t *testing.T, proxied ...string) *env {
	t.Helper()
	return newEnv(t, []string{"a", "b", "c"}, proxied...)
}

// shards lists the env's shards as pools.
func (e *env) shards() []sharded.Shard {
	var out []sharded.Shard
	for _, n := range e.names {
		out = append(out, sharded.Shard{Name: n, Pool: e.pools[n]})
	}
	return out
}

// open makes a sharded cache over the env's pools, closed when the test
// ends.
func (e *env) open(t *testing.T, cfg *sharded.Config) *sharded.Cache {
	t.Helper()
	c, err := sharded.New(ctxT(t), e.shards(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// rows returns the made keys stored in a shard's table, sorted.
func (e *env) rows(t *testing.T, name string) []string {
	t.Helper()
	rows, err := e.pools[name].Query(ctxT(t), `SELECT key FROM dbcache_entries ORDER BY key`)
	require.NoError(t, err)
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return keys
}

// keysOn returns, among keys, those whose shard is name.
func keysOn(c *sharded.Cache, name string, keys []string) []string {
	var out []string
	for _, k := range keys {
		if c.ShardOf(k) == name {
			out = append(out, k)
		}
	}
	return out
}

// someKeys returns n caller keys.
func someKeys(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%04d", prefix, i)
	}
	return out
}

// keyOn returns a key of the form prefix+N on the named shard.
func keyOn(c *sharded.Cache, name, prefix string) string {
	for i := 0; ; i++ {
		k := prefix + strconv.Itoa(i)
		if c.ShardOf(k) == name {
			return k
		}
	}
}

// made returns the made keys of keys, sorted.
func made(c *sharded.Cache, keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = c.MakeKey(k)
	}
	slices.Sort(out)
	return out
}

func mustShardError(t *testing.T, err error, name string) *sharded.ShardError {
	t.Helper()
	var se *sharded.ShardError
	require.ErrorAs(t, err, &se)
	require.Equal(t, name, se.Shard, "%v", err)
	return se
}

var ttl = dbcache.ExpiresIn(time.Hour)

// quiet is a logger for examples, whose output is compared.
var quiet = slog.New(slog.DiscardHandler)
