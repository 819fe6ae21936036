package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
)

// An interrupted delete-prefix reports what it removed, no less: the batch
// running when the signal came is cancelled on the server and its answer
// awaited, so a batch that committed anyway is counted, rather than cut off
// on the client, uncounted. The running batch is made slow by a trigger
// that sleeps when the batch holds the last key (in byte order) of the
// second batch; the count is checked once no statement of the command is
// left on the server.
func TestDeletePrefixInterruptedCountsWhatItRemoved(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pool := b.s.Pool(t)
	dbtest.Exec(t, pool, `INSERT INTO dbcache_entries SELECT ':1:ns:' || i, 'v', NULL FROM generate_series(0, 5999) i`)
	// The sleep ignores a cancel: the batch commits just as the signal
	// comes, the race an interrupt can always meet.
	dbtest.Exec(t, pool, `CREATE FUNCTION slow_batch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM gone WHERE key = ':1:ns:999') THEN
    BEGIN PERFORM pg_sleep(1); EXCEPTION WHEN query_canceled THEN NULL; END;
  END IF;
  RETURN NULL;
END $$`)
	dbtest.Exec(t, pool, `CREATE TRIGGER slow AFTER DELETE ON dbcache_entries REFERENCING OLD TABLE AS gone
FOR EACH STATEMENT EXECUTE FUNCTION slow_batch()`)

	ctx, cancel := context.WithCancel(t.Context())
	out, errOut := &syncBuffer{}, &syncBuffer{}
	done := make(chan int)
	go func() {
		done <- Run(ctx, &Config{Args: append([]string{"delete-prefix", "ns:", "--yes", "--json"}, b.conn...), Out: out, Err: errOut})
	}()
	active := `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbcache-cli' AND wait_event = 'PgSleep'
AND query LIKE '%' || $1 || '%'`
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, pool.QueryRow(t.Context(), active, b.s.Name).Scan(&n))
		return n > 0
	}, 30*time.Second, 5*time.Millisecond, "the second batch never ran")
	cancel()
	<-done
	var res deletePrefixJSON
	require.NoError(t, json.Unmarshal([]byte(out.String()), &res), out.String())
	// Whatever the server still runs for the command ends before counting.
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
WHERE application_name = 'dbcache-cli' AND state <> 'idle' AND query LIKE '%' || $1 || '%'`, b.s.Name).Scan(&n))
		return n == 0
	}, 60*time.Second, 5*time.Millisecond)
	require.Equal(t, 6000-res.Deleted, dbtest.Count(t, pool), "it said it deleted %d", res.Deleted)
}

// A sharded clear with one server down clears the others and says which:
// each server's clear is its own, so the error alone would hide that two
// of the three are now empty.
func TestShardsClearOneServerDown(t *testing.T) {
	t.Parallel()
	b := setupShards(t, false)
	ctx := t.Context()
	for _, n := range b.names {
		dbtest.Exec(t, b.schemas[n].Pool(t), `INSERT INTO dbcache_entries SELECT 'k' || i, 'v', NULL FROM generate_series(1, 5) i`)
	}
	cfg, err := pgx.ParseConfig(b.dsns["b"])
	require.NoError(t, err)
	p := dbtest.NewProxy(t, net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port)))
	p.Down()
	down := strings.Replace(b.dsns["b"], fmt.Sprintf("%s:%d", cfg.Host, cfg.Port), fmt.Sprintf("127.0.0.1:%d", p.Port()), 1)
	b.conn = []string{"--database-url", "a=" + b.dsns["a"], "--database-url", "b=" + down, "--database-url", "c=" + b.dsns["c"]}

	code, out, errOut := b.run(ctx, Config{}, "clear", "--yes")
	require.Equal(t, ExitFailure, code)
	require.Equal(t, "cleared 2 of 3 servers (a, c); not b\n", out)
	require.Contains(t, errOut, "dbcache: shard b: failed to connect")
	require.Zero(t, b.rows(t, "a"))
	require.Zero(t, b.rows(t, "c"))
	require.Equal(t, 5, b.rows(t, "b"))

	code, out, errOut = b.run(ctx, Config{}, "clear", "--yes", "--json")
	require.Equal(t, ExitFailure, code)
	require.Equal(t, `{"cleared":false,"cleared_shards":["a","c"],"failed_shards":["b"]}`+"\n", out)
	require.Contains(t, errOut, `"error":"connect"`)
}
