package integration_test

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/migrations"
)

// cullerLockSpace is the first key of the culler's advisory lock ("dbCC"),
// as the culling package takes it: (space, table OID - 2^31).
const cullerLockSpace = 0x64624343

// auditCulling instruments the cache table on the owner's pool: every DELETE
// statement records the application_name of its session and whether a
// session with that same application_name held the culler lock on this table
// while it ran. Each instance's pool has an application_name of its own, so a
// culling DELETE recorded without its own instance holding the lock is two
// cullers at work at once. Returns a function that reads the records.
func auditCulling(t *testing.T, owner *pgxpool.Pool) (records func() (ok, bad map[string]int)) {
	t.Helper()
	ctx := ctxT(t)
	var oid int64
	require.NoError(t, owner.QueryRow(ctx, `SELECT to_regclass($1)::oid::int8`, dbcache.TableName).Scan(&oid))
	// pg_locks shows the second int4 key as an oid: its bits, unsigned.
	objid := (oid - 1<<31) & 0xffffffff
	for _, sql := range []string{
		`CREATE TABLE cull_audit (app text NOT NULL, holds_lock bool NOT NULL)`,
		fmt.Sprintf(`CREATE FUNCTION cull_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO cull_audit (app, holds_lock)
  SELECT current_setting('application_name'), EXISTS (
    SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
       AND l.classid = %d AND l.objid = %d
       AND a.application_name = current_setting('application_name'));
  RETURN NULL;
END $$`, cullerLockSpace, objid),
		`CREATE TRIGGER cull_audit AFTER DELETE ON ` + dbcache.TableName + ` FOR EACH STATEMENT EXECUTE FUNCTION cull_audit()`,
	} {
		dbtest.Exec(t, owner, sql)
	}
	return func() (ok, bad map[string]int) {
		ok, bad = map[string]int{}, map[string]int{}
		rows, err := owner.Query(ctxT(t), `SELECT app, holds_lock FROM cull_audit`)
		require.NoError(t, err)
		var app string
		var holds bool
		_, err = pgx.ForEachRow(rows, []any{&app, &holds}, func() error {
			if holds {
				ok[app]++
			} else {
				bad[app]++
			}
			return nil
		})
		require.NoError(t, err)
		return ok, bad
	}
}

// instance is one application instance: its pool, cache and culler.
type instance struct {
	app    string
	pool   *pgxpool.Pool
	cache  *dbcache.Cache
	culler *culling.Culler
	logs   *dbtest.LogBuffer
	passes atomic.Int64 // passes that held the lock and finished
}

func newInstance(t *testing.T, cfg *pgxpool.Config, app string, ccfg culling.Config) *instance {
	t.Helper()
	in := &instance{app: app, logs: &dbtest.LogBuffer{}}
	cfg = cfg.Copy()
	cfg.ConnConfig.RuntimeParams["application_name"] = app
	in.pool = dbtest.NewPool(t, cfg)
	ccfg.Logger = slog.New(slog.NewTextHandler(in.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ccfg.OnProgress = func(p culling.Progress) {
		if p.Phase == culling.PhaseDone {
			in.passes.Add(1)
		}
	}
	var err error
	in.culler, err = culling.New(in.pool, &ccfg)
	require.NoError(t, err)
	in.cache, _ = cacheOn(t, in.pool, &dbcache.Config{OnWrite: in.culler.NoteWrites, DefaultTimeout: dbcache.ExpiresIn(time.Hour)})
	require.NoError(t, in.culler.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		require.NoError(t, in.culler.Stop(ctx))
	})
	return in
}

// Two instances, each with a started culler nudged by its own writes, over
// one table: the table stays bounded, and no culling statement of one runs
// while the other holds the lock.
func TestSharingCullersOneAtATime(t *testing.T) {
	t.Parallel()
	sc := sharedSchema(t)
	owner := sc.Pool(t)
	records := auditCulling(t, owner)
	const maxEntries = 300
	ccfg := culling.Config{MaxEntries: maxEntries, NudgeEvery: 50, Interval: 200 * time.Millisecond, BatchSize: 25}
	insts := []*instance{
		newInstance(t, sc.PoolConfig(t), "inst-a-"+sc.Name, ccfg),
		newInstance(t, sc.PoolConfig(t), "inst-b-"+sc.Name, ccfg),
	}

	var wg sync.WaitGroup
	for i, in := range insts {
		for w := range 2 {
			wg.Go(func() {
				ctx := ctxT(t)
				for n := range 300 {
					key := fmt.Sprintf("i%d-w%d-%d", i, w, n)
					to := dbcache.DefaultTimeout
					if n%5 == 0 {
						to = dbcache.ExpiresIn(-time.Second) // an expired row for the sweep
					}
					if err := in.cache.Set(ctx, key, []byte(key), to); err != nil {
						t.Errorf("set: %v", err)
						return
					}
					if n%100 == 99 {
						items := map[string][]byte{}
						for j := range 20 {
							items[key+"-m"+strconv.Itoa(j)] = []byte("m")
						}
						if _, err := in.cache.SetMany(ctx, items, dbcache.DefaultTimeout); err != nil {
							t.Errorf("set_many: %v", err)
							return
						}
					}
				}
			})
		}
	}
	wg.Wait()
	// Both workers must have culled, and the table must come back under the
	// limit once the writes stop.
	waitFor(t, "passes by both cullers", func() bool { return insts[0].passes.Load() > 0 && insts[1].passes.Load() > 0 })
	waitFor(t, "the table back under MaxEntries", func() bool { return dbtest.Count(t, owner) <= maxEntries })

	ok, bad := records()
	t.Logf("culling statements holding the lock: %v; passes: a=%d b=%d", ok, insts[0].passes.Load(), insts[1].passes.Load())
	require.Empty(t, bad, "a culling statement ran while its instance did not hold the lock")
	require.NotEmpty(t, ok)
	for _, in := range insts {
		require.Zero(t, in.logs.Count("level=ERROR"), "%s logged errors:\n%s", in.app, in.logs.String())
	}
	// The cullers are still running: count the finished passes first. Each
	// recorded itself before it reported done, so the record has at least
	// those (a pass finishing after the count only adds to it).
	finished := insts[0].passes.Load() + insts[1].passes.Load()
	last, err := culling.LastPass(ctxT(t), owner, "")
	require.NoError(t, err)
	require.GreaterOrEqual(t, last.Passes, finished)
}

// A started culler survives a crash and restart of the server: its passes
// fail (logged) while the server is down, and resume on their own when it is
// back, with the same pool.
func TestFaultCullerSurvivesRestart(t *testing.T) {
	awaitServer := startServer(t)
	t.Parallel()
	srv := awaitServer(t)
	pool := dbtest.NewPool(t, srv.poolConfig(t, srv.db))
	m, err := migrations.New(pool, nil)
	require.NoError(t, err)
	require.NoError(t, m.Up(ctxT(t)))
	const maxEntries = 100
	// PassTimeout is a backstop for a pass on a dead connection, generous
	// so that a pass slowed by a loaded machine still completes.
	in := newInstance(t, srv.poolConfig(t, srv.db), "culler-restart", culling.Config{
		MaxEntries: maxEntries, NudgeEvery: 20, Interval: 100 * time.Millisecond, BatchSize: 20, PassTimeout: opTimeout,
	})
	ctx := ctxT(t)

	fill := func(prefix string) {
		t.Helper()
		items := map[string][]byte{}
		for i := range 3 * maxEntries {
			items[prefix+strconv.Itoa(i)] = []byte("v")
		}
		// Right after a restart a pooled connection may still be a dead
		// one: the pool drops it on that error, so the retry gets another.
		eventually(t, "fill the table", func() error {
			_, err := in.cache.SetMany(ctx, items, dbcache.DefaultTimeout)
			return err
		})
		eventually(t, "add expired rows", func() error {
			_, err := in.cache.SetMany(ctx, map[string][]byte{prefix + "expired-1": nil, prefix + "expired-2": nil}, dbcache.ExpiresIn(-time.Minute))
			return err
		})
	}
	settled := func() bool {
		var n, expired int
		if err := pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE expires <= now()) FROM dbcache_entries`).Scan(&n, &expired); err != nil {
			return false
		}
		return n <= maxEntries && expired == 0
	}

	fill("before-")
	waitFor(t, "the culler to bound the table", settled)
	waitFor(t, "a completed pass", func() bool { return in.passes.Load() > 0 })
	before := in.passes.Load()

	failedBefore := in.logs.Count("pass failed")
	srv.crash(t)
	waitFor(t, "a pass to fail while the server is down", func() bool { return in.logs.Count("pass failed") > failedBefore })
	srv.start(t)
	restarted := in.passes.Load()
	require.GreaterOrEqual(t, restarted, before)

	fill("after-")
	waitFor(t, "the culler to bound the table after the restart", settled)
	waitFor(t, "a completed pass after the restart", func() bool { return in.passes.Load() > restarted })
	// The crash may have taken the last records with it (the culler commits
	// them asynchronously, as documented); a pass after the restart records
	// itself again.
	var last *culling.PassRecord
	eventually(t, "a recorded pass", func() error {
		var err error
		last, err = culling.LastPass(ctx, pool, "")
		return err
	})
	require.Positive(t, last.Passes)

	// Stop cancels the running pass: it returns once the worker has ended,
	// which a worker wedged by the outage never would.
	require.NoError(t, in.culler.Stop(ctx), "the worker stops after all that")
}
