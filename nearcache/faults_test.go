package nearcache_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/migrations"
	"github.com/dbcache/dbcache/internal/pgserver"
	"github.com/dbcache/dbcache/nearcache"
)

// The feed breaking never lets a stale copy be served past the bound: a
// killed walsender, a dropped slot, a dropped publication and a restarted
// server each drop every copy, reads go to the database meanwhile, and the
// feed comes back by itself.

// superuser runs sql as the server's superuser.
func superuser(t *testing.T, srv *pgserver.Server, sql string, args ...any) {
	t.Helper()
	ctx := ctxT(t)
	conn, err := pgx.Connect(ctx, srv.URL(""))
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql, args...)
	require.NoError(t, err)
}

// checkFresh reads key through b until b serves it from memory again,
// requiring every read to return want unless want's write returned less
// than the bound before the read began.
func checkFresh(t *testing.T, b *proc, key, want string, wrote time.Time, bound time.Duration) {
	t.Helper()
	eventually(t, "b serves "+key+" from memory again", func() bool {
		began := time.Now()
		v, hit := b.hit(t, key)
		if string(v) != want && began.Sub(wrote) >= bound {
			t.Fatalf("read %q %s after %q was written", v, began.Sub(wrote), want)
		}
		return hit && string(v) == want
	})
}

func TestFeedKilledAndSlotDropped(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	a, b := e.proc(t, nil), e.proc(t, nil)
	ctx := ctxT(t)
	bound := nearcache.MaxStalenessDefault
	kills := []struct {
		name string
		kill func()
	}{
		{"pg_terminate_backend", func() {
			superuser(t, e.srv, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND backend_type = 'walsender'`, b.appName)
		}},
		// An operator dropping the slot: an active slot cannot be
		// dropped, so its session is ended first, and a temporary slot
		// goes with its session; drop it if it is still there.
		{"slot dropped", func() {
			conn, err := pgx.Connect(ctx, e.srv.URL(""))
			require.NoError(t, err)
			defer conn.Close(ctx)
			var slot string
			var pid int
			require.NoError(t, conn.QueryRow(ctx, `SELECT s.slot_name, s.active_pid FROM pg_replication_slots s
				JOIN pg_stat_activity a ON a.pid = s.active_pid WHERE a.application_name = $1`, b.appName).Scan(&slot, &pid))
			_, err = conn.Exec(ctx, `SELECT pg_terminate_backend($1)`, pid)
			require.NoError(t, err)
			_, _ = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active`, slot)
		}},
	}
	for i, k := range kills {
		want := "v" + strconv.Itoa(i)
		require.NoError(t, a.near.Set(ctx, "k", []byte(want), dbcache.Forever))
		b.warm(t, "k", want)
		restarts := b.near.Stats().FeedRestarts
		k.kill()
		// Written while b's feed is down or going down.
		want += "-new"
		require.NoError(t, a.near.Set(ctx, "k", []byte(want), dbcache.Forever))
		wrote := time.Now()
		checkFresh(t, b, "k", want, wrote, bound)
		s := b.near.Stats()
		require.Greater(t, s.FeedRestarts, restarts, k.name)
		require.True(t, s.FeedUp)
		// The new feed invalidates.
		require.NoError(t, a.near.Set(ctx, "k", []byte(want+"-again"), dbcache.Forever))
		checkFresh(t, b, "k", want+"-again", time.Now(), bound)
	}
	require.GreaterOrEqual(t, b.trace.downs, 2)
}

// A dropped publication ends the feed (the heartbeat sees it); reads go to
// the database until Setup creates it again.
func TestPublicationDropped(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	a, b := e.proc(t, nil), e.proc(t, nil)
	ctx := ctxT(t)
	require.NoError(t, a.near.Set(ctx, "k", []byte("v1"), dbcache.Forever))
	b.warm(t, "k", "v1")
	superuser(t, e.srv, "DROP PUBLICATION "+pgx.Identifier{nearcache.PublicationName(e.schema)}.Sanitize())
	eventually(t, "b's feed goes down", func() bool { return !b.near.Stats().FeedUp })
	require.Zero(t, b.near.Stats().Entries, "every copy dropped")
	require.NoError(t, a.near.Set(ctx, "k", []byte("v2"), dbcache.Forever))
	for range 20 {
		v, hit := b.hit(t, "k")
		require.Equal(t, "v2", string(v))
		require.False(t, hit, "served from the database while the feed is down")
	}
	require.NoError(t, nearcache.Setup(ctx, b.pool, nil))
	checkFresh(t, b, "k", "v2", time.Now(), 0)
	require.NoError(t, a.near.Set(ctx, "k", []byte("v3"), dbcache.Forever))
	checkFresh(t, b, "k", "v3", time.Now(), nearcache.MaxStalenessDefault)
}

// A restarted server: the feed comes back by itself, and no copy from
// before survives.
func TestServerRestart(t *testing.T) {
	t.Parallel()
	srv, err := startServer(ctxT(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Remove(context.Background()) })
	e := newEnv(t, srv)
	a, b := e.proc(t, nil), e.proc(t, nil)
	ctx := ctxT(t)
	require.NoError(t, a.near.Set(ctx, "k", []byte("v1"), dbcache.Forever))
	b.warm(t, "k", "v1")
	require.NoError(t, srv.Shutdown(ctx))
	eventually(t, "b's feed goes down", func() bool { return !b.near.Stats().FeedUp })
	require.Zero(t, b.near.Stats().Entries)
	_, err = b.near.Get(ctx, "k")
	require.Error(t, err, "the database is down, and nothing is served from memory")
	require.NoError(t, srv.Restart(ctx))
	// The pool's connections from before the shutdown fail once each.
	eventually(t, "a writes after the restart", func() bool {
		return a.near.Set(ctx, "k", []byte("v2"), dbcache.Forever) == nil
	})
	eventually(t, "b reads after the restart", func() bool {
		v, err := b.near.Get(ctx, "k")
		if err == nil {
			require.Equal(t, "v2", string(v))
		}
		return err == nil
	})
	checkFresh(t, b, "k", "v2", time.Now(), 0)
	require.NoError(t, a.near.Set(ctx, "k", []byte("v3"), dbcache.Forever))
	checkFresh(t, b, "k", "v3", time.Now(), nearcache.MaxStalenessDefault)
}

// New refuses, with one clear error, what cannot feed a near cache.
func TestRefusals(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)

	t.Run("unlogged table", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, nil)
		superuser(t, e.srv, "DROP PUBLICATION "+pgx.Identifier{nearcache.PublicationName(e.schema)}.Sanitize())
		superuser(t, e.srv, "ALTER TABLE "+pgx.Identifier{e.schema, migrations.Table}.Sanitize()+" SET UNLOGGED")
		pool := e.pool(t)
		cache, err := dbcache.New(ctx, pool, nil)
		require.NoError(t, err)
		_, err = nearcache.New(ctx, cache, pool, nil)
		require.ErrorIs(t, err, nearcache.ErrUnsupported)
		require.ErrorContains(t, err, "UNLOGGED")
		require.ErrorIs(t, nearcache.Setup(ctx, pool, nil), nearcache.ErrUnsupported)
	})
	t.Run("no publication", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, nil)
		superuser(t, e.srv, "DROP PUBLICATION "+pgx.Identifier{nearcache.PublicationName(e.schema)}.Sanitize())
		pool := e.pool(t)
		cache, err := dbcache.New(ctx, pool, nil)
		require.NoError(t, err)
		_, err = nearcache.New(ctx, cache, pool, nil)
		require.ErrorIs(t, err, nearcache.ErrNoPublication)
	})
	t.Run("not migrated", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, nil)
		pool := e.pool(t)
		cache, err := dbcache.New(ctx, pool, nil)
		require.NoError(t, err)
		_, err = nearcache.New(ctx, cache, pool, &nearcache.Config{Schema: "no_such_schema"})
		require.ErrorIs(t, err, dbcache.ErrNotMigrated)
	})
	t.Run("role without REPLICATION", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, nil)
		role := "nc_norepl_" + strconv.Itoa(os.Getpid())
		superuser(t, e.srv, "DROP ROLE IF EXISTS "+role)
		superuser(t, e.srv, "CREATE ROLE "+role+" LOGIN")
		t.Cleanup(func() { superuser(t, e.srv, "DROP ROLE IF EXISTS "+role) })
		pool := e.pool(t)
		cache, err := dbcache.New(ctx, pool, nil)
		require.NoError(t, err)
		rc := pool.Config().ConnConfig.Config.Copy()
		rc.User = role
		_, err = nearcache.New(ctx, cache, pool, &nearcache.Config{Replication: rc})
		var pgErr *pgconn.PgError
		require.True(t, errors.As(err, &pgErr), "%v", err)
		require.Equal(t, "42501", pgErr.Code)
		require.ErrorIs(t, err, nearcache.ErrNoReplication)
		require.ErrorContains(t, err, "REPLICATION attribute")
		require.ErrorContains(t, err, "rds_replication")
	})
	t.Run("bad config", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, nil)
		pool := e.pool(t)
		cache, err := dbcache.New(ctx, pool, nil)
		require.NoError(t, err)
		for _, cfg := range []nearcache.Config{
			{MaxBytes: -1},
			{MaxStaleness: time.Second, HeartbeatInterval: 2 * time.Second},
			{FeedTimeout: time.Millisecond},
			{Schema: "x; DROP TABLE y"},
			{Publication: `a"b`},
		} {
			_, err := nearcache.New(ctx, cache, pool, &cfg)
			require.Error(t, err, "%+v", cfg)
		}
		_, err = nearcache.New(ctx, nil, pool, nil)
		require.Error(t, err)
		require.ErrorContains(t, nearcache.Setup(ctx, pool, &nearcache.SetupConfig{Schema: "a b"}), "not a valid schema name")
		require.ErrorContains(t, nearcache.Setup(ctx, pool, &nearcache.SetupConfig{Publication: "p;"}), "not a valid publication name")
	})
	t.Run("wal_level replica", func(t *testing.T) {
		t.Parallel()
		cfg, err := pgserver.ConfigFromEnv(os.Getenv)
		require.NoError(t, err)
		srv, err := pgserver.Start(ctxT(t), cfg) // PostgreSQL's defaults
		require.NoError(t, err)
		t.Cleanup(func() { _ = srv.Remove(context.Background()) })
		ccfg, err := pgx.ParseConfig(srv.URL(""))
		require.NoError(t, err)
		m, err := migrations.NewFromConnConfig(ccfg, nil)
		require.NoError(t, err)
		require.NoError(t, m.Up(ctx))
		e := &env{srv: srv, schema: "public"}
		pool := e.pool(t)
		cache, err := dbcache.New(ctx, pool, nil)
		require.NoError(t, err)
		_, err = nearcache.New(ctx, cache, pool, nil)
		require.ErrorIs(t, err, nearcache.ErrUnsupported)
		require.ErrorContains(t, err, "wal_level")
		require.ErrorIs(t, nearcache.Setup(ctx, pool, nil), nearcache.ErrUnsupported)
	})
}
