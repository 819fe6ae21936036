package sharded_test

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/migrations"
	"github.com/dbcache/dbcache/sharded"
)

// The package's cache table name is the migrations' (it cannot import
// migrations, which brings golang-migrate).
func TestCacheTableMatchesMigrations(t *testing.T) {
	t.Parallel()
	require.Equal(t, migrations.Table, sharded.CacheTable)
}

// One server and schema under two shard names would give every key two
// homes: a value set through one name reads as missing through the other.
// New refuses it, naming both shards, however the second name reaches the
// table: the same pool, another pool or a DSN with the same address and
// schema, "localhost" for 127.0.0.1, a Config.Schema naming the schema
// another shard reaches by search_path, or a proxy (another address of the
// same server, as a DNS alias or a PgBouncer would be). Before, New
// accepted all of these.
func TestSameServerTwoNames(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	e := newEnv(t, []string{"a", "b"})
	s := e.schemas["a"]
	pa := e.pools["a"]
	poolWith := func(edit func(*pgxpool.Config)) *pgxpool.Pool {
		cfg := s.PoolConfig(t)
		edit(cfg)
		return dbtest.NewPool(t, cfg)
	}
	proxied := func() *pgxpool.Pool {
		return poolWith(func(cfg *pgxpool.Config) {
			p := dbtest.NewProxy(t, net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port))))
			cfg.ConnConfig.Host, cfg.ConnConfig.Port = "127.0.0.1", p.Port()
		})
	}
	localhost := poolWith(func(cfg *pgxpool.Config) {
		if cfg.ConnConfig.Host == "127.0.0.1" {
			cfg.ConnConfig.Host = "localhost"
		} else {
			cfg.ConnConfig.Host = "127.0.0.1"
		}
	})
	bySchema := poolWith(func(cfg *pgxpool.Config) { delete(cfg.ConnConfig.RuntimeParams, "search_path") })
	for name, twin := range map[string]sharded.Shard{
		"same pool":    {Pool: pa},
		"another pool": {Pool: s.Pool(t)},
		"a DSN":        {DSN: s.DSN(t)},
		"localhost":    {Pool: localhost},
		"Schema":       {Pool: bySchema, Config: &dbcache.Config{Schema: s.Name}},
		"a proxy":      {Pool: proxied()},
	} {
		twin.Name = "twin"
		_, err := sharded.New(ctx, []sharded.Shard{{Name: "a", Pool: pa}, {Name: "b", Pool: e.pools["b"]}, twin}, nil)
		require.Error(t, err, name)
		t.Logf("%s: %v", name, err)
		require.ErrorContains(t, err, `"a"`, name)
		require.ErrorContains(t, err, `"twin"`, name)
	}
	// Two schemas of one server are two caches.
	c, err := sharded.New(ctx, e.shards(), nil)
	require.NoError(t, err)
	require.NoError(t, c.Close())
}

// A second name for a shard's table whose server was down at New (so only
// its address could be compared, and it differed) is caught when it opens:
// it stays unopened, and its keys fail with the error naming both shards,
// instead of being served from the other shard's table.
func TestSameServerOpenedLate(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	e := newEnv(t, []string{"a", "b"})
	cfg := e.schemas["a"].PoolConfig(t)
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	p := dbtest.NewProxy(t, net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port))))
	cfg.ConnConfig.Host, cfg.ConnConfig.Port = "127.0.0.1", p.Port()
	p.Down()
	c, err := sharded.New(ctx, append(e.shards(), sharded.Shard{Name: "twin", Pool: dbtest.NewPool(t, cfg)}),
		&sharded.Config{RetryEvery: time.Millisecond, Logger: quiet})
	require.NoError(t, err, "a shard down at New does not fail it")
	t.Cleanup(func() { _ = c.Close() })
	k := keyOn(c, "twin", "k")
	_, err = c.Get(ctx, k)
	require.True(t, dbcache.IsTransient(err), "%v", err)

	p.Up(t)
	require.Eventually(t, func() bool {
		_, err := c.Get(ctx, k)
		return err != nil && !dbcache.IsTransient(err)
	}, 30*time.Second, 5*time.Millisecond)
	_, err = c.Get(ctx, k)
	require.ErrorContains(t, err, `"a"`)
	require.ErrorContains(t, err, `"twin"`)
	require.ErrorContains(t, err, "same cache table")
	require.NoError(t, c.Set(ctx, keyOn(c, "a", "k"), []byte("v"), ttl), "the other shards serve as before")
}
