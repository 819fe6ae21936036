package nearcache_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/migrations"
	"github.com/dbcache/dbcache/internal/pgserver"
	"github.com/dbcache/dbcache/nearcache"
)

// slotLag is what a feed's slot holds back: the WAL from its restart_lsn
// (what the server retains for it) and from its confirmed_flush_lsn (what
// the feed has confirmed) to the end of the WAL; ok false once the slot is
// gone.
func slotLag(t *testing.T, conn *pgx.Conn, appName string) (retained, unconfirmed int64, ok bool) {
	t.Helper()
	retained, unconfirmed, ok, err := querySlot(ctxT(t), conn, appName)
	require.NoError(t, err)
	return retained, unconfirmed, ok
}

func querySlot(ctx context.Context, conn *pgx.Conn, appName string) (retained, unconfirmed int64, ok bool, err error) {
	err = conn.QueryRow(ctx, `SELECT pg_current_wal_lsn() - s.restart_lsn, pg_current_wal_lsn() - s.confirmed_flush_lsn
		FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid WHERE a.application_name = $1`, appName).Scan(&retained, &unconfirmed)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, 0, false, nil
	}
	return retained, unconfirmed, err == nil, err
}

// writeWAL writes n entries of 1 KiB through c.
func writeWAL(t *testing.T, c *dbcache.Cache, n int) {
	t.Helper()
	ctx := ctxT(t)
	v := []byte(strings.Repeat("x", 1024))
	for i := range n {
		require.NoError(t, c.Set(ctx, fmt.Sprint("w", i), v, dbcache.Forever))
	}
}

func mb(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/1e6) }

// The feed confirms what it has read (confirmed_flush_lsn) within about a
// second, with a running reader, so the server may recycle the WAL behind
// it; what PostgreSQL 15 still retains for a logical slot is up to the
// last running-transactions record (restart_lsn moves only there: the
// background writer logs one every 15 s while there is WAL activity, and
// at checkpoints). A stalled reader (its feed's network frozen) confirms
// nothing, and the server ends its walsender after wal_sender_timeout,
// which the feed sets to its FeedTimeout, dropping the temporary slot with
// the WAL it retained. The figures are logged for docs/nearcache.md.
func TestWALConfirmed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := ctxT(t)
	a := e.proc(t, nil)
	conn, err := pgx.Connect(ctx, e.srv.URL(""))
	require.NoError(t, err)
	defer conn.Close(ctx)

	// A stalled reader: its feed's connection through a proxy, frozen.
	host, port := e.srv.Addr()
	proxy := dbtest.NewProxy(t, fmt.Sprintf("%s:%d", host, port))
	rc := a.pool.Config().ConnConfig.Config.Copy()
	rc.RuntimeParams["application_name"] = fmt.Sprintf("nc_stalled_%d", seq.Add(1))
	var d net.Dialer
	rc.DialFunc = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return d.DialContext(ctx, network, proxy.Addr())
	}
	feedTimeout := 3 * time.Second
	stalled := e.proc(t, &nearcache.Config{Replication: rc, FeedTimeout: feedTimeout})

	// A sampler, every 100 ms from the freeze: the running reader's
	// unconfirmed WAL, the stalled one's retained WAL, until its slot goes.
	type sample struct {
		at                    time.Duration
		runUnconfirmed, stall int64
		stallUp               bool
	}
	var samples []sample
	proxy.Freeze()
	frozen := time.Now()
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		sconn, err := pgx.Connect(ctx, e.srv.URL(""))
		if err != nil {
			return
		}
		defer sconn.Close(context.Background())
		for {
			_, u, _, _ := querySlot(ctx, sconn, a.appName)
			r, _, up, _ := querySlot(ctx, sconn, stalled.appName)
			samples = append(samples, sample{time.Since(frozen), u, r, up})
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	var begin int64
	require.NoError(t, conn.QueryRow(ctx, "SELECT pg_current_wal_lsn() - '0/0'").Scan(&begin))
	writeWAL(t, a.cache, 2500)
	wrote := time.Now()
	var end int64
	require.NoError(t, conn.QueryRow(ctx, "SELECT pg_current_wal_lsn() - '0/0'").Scan(&end))

	// The running reader confirms what it read.
	var confirmedAfter time.Duration
	eventually(t, "the running reader confirms the writes", func() bool {
		_, unconfirmed, ok := slotLag(t, conn, a.appName)
		require.True(t, ok)
		var now int64
		require.NoError(t, conn.QueryRow(ctx, "SELECT pg_current_wal_lsn() - '0/0'").Scan(&now))
		confirmedAfter = time.Since(wrote)
		return now-unconfirmed >= end
	})
	retained, _, _ := slotLag(t, conn, a.appName)
	t.Logf("running reader: confirmed the writes %s after they returned; retaining %s then", confirmedAfter.Round(10*time.Millisecond), mb(retained))

	// The stalled one: the server ends its walsender after FeedTimeout
	// without a reply, and its slot goes.
	eventually(t, "the stalled reader's slot is dropped", func() bool {
		_, _, ok := slotLag(t, conn, stalled.appName)
		return !ok
	})
	droppedAt := time.Since(frozen)
	close(stop)
	<-sampled
	var maxUnconfirmed, maxStalled int64
	var gone time.Duration
	seenUp := false
	for _, s := range samples {
		if s.at < time.Since(frozen)-time.Since(wrote) { // while writing
			maxUnconfirmed = max(maxUnconfirmed, s.runUnconfirmed)
		}
		maxStalled = max(maxStalled, s.stall)
		seenUp = seenUp || s.stallUp
		if seenUp && !s.stallUp && gone == 0 {
			gone = s.at
		}
	}
	if gone == 0 {
		gone = droppedAt
	}
	t.Logf("while writing %s of WAL in %s: the running reader's unconfirmed WAL at most %s; the stalled reader retained up to %s, its slot dropped %s after its network froze (wal_sender_timeout = FeedTimeout = %s)",
		mb(end-begin), wrote.Sub(frozen).Round(100*time.Millisecond), mb(maxUnconfirmed), mb(maxStalled), gone.Round(100*time.Millisecond), feedTimeout)
	proxy.Thaw()

	// What the running reader's slot retains after the writes stop, as
	// restart_lsn waits for a running-transactions record.
	var after []string
	for s := time.Now(); time.Since(s) < 17*time.Second; time.Sleep(time.Second) {
		r, _, ok := slotLag(t, conn, a.appName)
		require.True(t, ok)
		after = append(after, fmt.Sprintf("%s: %s", time.Since(wrote).Round(time.Second), mb(r)))
		if r < 1<<20 {
			break
		}
	}
	t.Logf("running reader, retained after the writes stopped: %s", strings.Join(after, ", "))
	eventually(t, "the stalled reader's feed is back", func() bool { return stalled.near.Stats().FeedUp })
}

// The server's limits on replication, each named in New's one error:
// every max_replication_slots in use (53400), every max_wal_senders in use
// (53300); a role without REPLICATION is ErrNoReplication.
func TestReplicationLimits(t *testing.T) {
	t.Parallel()
	cfg, err := pgserver.ConfigFromEnv(os.Getenv)
	require.NoError(t, err)
	cfg.Database = "nearcache_test"
	cfg.Settings = map[string]string{"wal_level": "logical", "max_wal_senders": "2", "max_replication_slots": "1"}
	srv, err := pgserver.Start(ctxT(t), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Remove(context.Background()) })
	ctx := ctxT(t)
	ccfg, err := pgx.ParseConfig(srv.URL(""))
	require.NoError(t, err)
	m, err := migrations.NewFromConnConfig(ccfg, nil)
	require.NoError(t, err)
	require.NoError(t, m.Up(ctx))
	e := &env{srv: srv, schema: "public"}
	pool := e.pool(t)
	require.NoError(t, nearcache.Setup(ctx, pool, nil))
	cache, err := dbcache.New(ctx, pool, nil)
	require.NoError(t, err)
	first, err := nearcache.New(ctx, cache, pool, nil)
	require.NoError(t, err)
	defer first.Close()

	_, err = nearcache.New(ctx, cache, pool, &nearcache.Config{StartTimeout: 10 * time.Second})
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr), "%v", err)
	require.Equal(t, "53400", pgErr.Code)
	require.ErrorContains(t, err, "max_replication_slots")

	// The second walsender, taken by another replication client.
	rc := pool.Config().ConnConfig.Config.Copy()
	rc.RuntimeParams["replication"] = "database"
	var other *pgconn.PgConn
	eventually(t, "the refused feed's walsender has gone", func() bool {
		other, err = pgconn.ConnectConfig(ctx, rc)
		return err == nil
	})
	defer other.Close(ctx)
	_, err = nearcache.New(ctx, cache, pool, &nearcache.Config{StartTimeout: 10 * time.Second})
	require.True(t, errors.As(err, &pgErr), "%v", err)
	require.Equal(t, "53300", pgErr.Code)
	require.ErrorContains(t, err, "max_wal_senders")
}
