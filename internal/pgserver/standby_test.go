//go:build unix

package pgserver

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

// A streaming standby of an installed server: it replays the primary's
// writes; named in synchronous_standby_names it holds every durable commit
// until it confirms, and with its walreceiver stopped (SIGSTOP) a commit
// waits, committed locally (a cancelled wait says so and the write is
// there), until it is resumed.
func TestStandby(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	primary, err := Start(ctx, Config{Kind: Installed, Settings: map[string]string{"wal_level": "logical"}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = primary.Remove(context.Background()) })
	standby, err := StartStandby(ctx, primary, "standby1")
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, standby.Remove(context.Background())) })
	_, err = StartStandby(ctx, primary, "Bad Name")
	require.Error(t, err)

	p, err := pgx.Connect(ctx, primary.URL(""))
	require.NoError(t, err)
	defer p.Close(ctx)
	s, err := pgx.Connect(ctx, standby.URL(""))
	require.NoError(t, err)
	defer s.Close(ctx)
	var inRecovery bool
	require.NoError(t, s.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery))
	require.True(t, inRecovery)
	_, err = p.Exec(ctx, "CREATE TABLE t (n int)")
	require.NoError(t, err)
	_, err = p.Exec(ctx, "ALTER SYSTEM SET synchronous_standby_names = 'standby1'")
	require.NoError(t, err)
	_, err = p.Exec(ctx, "SELECT pg_reload_conf()")
	require.NoError(t, err)
	// Synchronous once the primary sees the standby by that name.
	for {
		var state string
		err := p.QueryRow(ctx, "SELECT coalesce((SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'), '')").Scan(&state)
		require.NoError(t, err)
		if state == "sync" {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	// remote_apply: the commit returns once the standby has replayed it,
	// so a read there sees it (on, the default, waits only for its flush).
	_, err = p.Exec(ctx, "SET synchronous_commit = remote_apply")
	require.NoError(t, err)
	_, err = p.Exec(ctx, "INSERT INTO t VALUES (1)")
	require.NoError(t, err)
	_, err = p.Exec(ctx, "RESET synchronous_commit")
	require.NoError(t, err)
	var n int
	require.NoError(t, s.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n))
	require.Equal(t, 1, n, "a remote_apply commit returned once the standby had replayed it")

	pid, err := standby.WalReceiverPID(ctx)
	require.NoError(t, err)
	require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
	resumed := false
	defer func() {
		if !resumed {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}()
	wctx, wcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = p.Exec(wctx, "INSERT INTO t VALUES (2)")
	wcancel()
	require.Error(t, err, "the commit waits for the paused standby")
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		t.Logf("cancelled: %s", pgErr.Message)
	}
	p2, err := pgx.Connect(ctx, primary.URL(""))
	require.NoError(t, err)
	defer p2.Close(ctx)
	require.Eventually(t, func() bool {
		var n int
		return p2.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n) == nil && n == 2
	}, time.Minute, 10*time.Millisecond, "the cancelled wait's write committed locally all the same")
	require.NoError(t, syscall.Kill(pid, syscall.SIGCONT))
	resumed = true
	// remote_apply, as above: the commit returns once the standby replayed it.
	_, err = p2.Exec(ctx, "SET synchronous_commit = remote_apply")
	require.NoError(t, err)
	_, err = p2.Exec(ctx, "INSERT INTO t VALUES (3)")
	require.NoError(t, err, "resumed, the standby confirms again")
	require.NoError(t, s.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n))
	require.Equal(t, 3, n)
}
