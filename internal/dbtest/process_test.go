package dbtest_test

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
)

func init() {
	// Writes one row through its own connection, then waits for SIGTERM.
	dbtest.Role("dbtest-writer", func(ctx context.Context, dsn string) error {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		var pid int
		if err := conn.QueryRow(ctx, `INSERT INTO procs VALUES (pg_backend_pid()) RETURNING pid`).Scan(&pid); err != nil {
			return err
		}
		fmt.Println("wrote", pid)
		<-ctx.Done()
		fmt.Println("stopped")
		return nil
	})
	dbtest.Role("dbtest-fails", func(context.Context, string) error { return fmt.Errorf("as asked") })
}

// A role runs in a process of its own: its own connection writes a row the
// test reads, its context ends on SIGTERM, and a failing role's error and
// stderr reach the test.
func TestProcessRoles(t *testing.T) {
	t.Parallel()
	sc := dbtest.NewSchema(t)
	pool := sc.Pool(t)
	ctx := context.Background()
	_, err := pool.Exec(ctx, `CREATE TABLE procs (pid int)`)
	require.NoError(t, err)

	p := dbtest.Start(t, "dbtest-writer", sc.DSN(t), true)
	line := <-p.Lines()
	require.True(t, strings.HasPrefix(line, "wrote "), line)
	var pid int
	require.NoError(t, pool.QueryRow(ctx, `SELECT pid FROM procs`).Scan(&pid))
	require.Equal(t, fmt.Sprint("wrote ", pid), line)
	require.NotEqual(t, pid, 0)
	require.NoError(t, p.Signal(syscall.SIGTERM))
	require.Equal(t, "stopped", <-p.Lines())
	_, err = p.Wait(time.Minute)
	require.NoError(t, err)

	f := dbtest.Start(t, "dbtest-fails", "", false)
	_, err = f.Wait(time.Minute)
	require.ErrorContains(t, err, "as asked")
}
