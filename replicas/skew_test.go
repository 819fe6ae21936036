package replicas_test

import (
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/pgserver"
	"github.com/dbcache/dbcache/replicas"
)

// libfaketime is Debian's faketime library (apt-get install faketime).
const libfaketime = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"

// skewed starts a standby whose clock is offset from the primary's
// ("-1h", "+1h": libfaketime's relative offsets; its monotonic clock is
// left alone, so timeouts inside the server keep their length).
func skewed(t *testing.T, primary *pgserver.Server, offset string) *pgserver.Server {
	t.Helper()
	if _, err := os.Stat(libfaketime); err != nil {
		t.Fatalf("clock skew is tested with Debian's faketime: apt-get install faketime (%v)", err)
	}
	return startStandby(t, primary, pgserver.StandbyOptions{Env: []string{
		"LD_PRELOAD=" + libfaketime, "FAKETIME=" + offset, "FAKETIME_DONT_FAKE_MONOTONIC=1"}})
}

// Expiry on a standby is the standby's clock: an entry's expiry is a
// time the primary wrote, and a read compares it with the clock of the
// server that runs it. A standby an hour behind serves an entry the
// primary has seen expire and reads its lifetime an hour long; one an
// hour ahead misses an entry the primary holds for another minute. The
// router serves what the standby answers.
func TestClockSkew(t *testing.T) {
	t.Parallel()
	// A primary of its own: the skewed standbys replay this test's WAL
	// alone, so catching up never waits on what other tests write.
	primary := ownPrimary(t)
	behind, ahead := skewed(t, primary, "-1h"), skewed(t, primary, "+1h")
	ctx := ctxT(t)
	schema := newSchema(t, primary)
	pp := poolOn(t, primary.URL(""), schema)
	bp, ap := poolOn(t, behind.URL(""), schema), poolOn(t, ahead.URL(""), schema)
	var tb, ta time.Time
	require.NoError(t, bp.QueryRow(ctx, `SELECT statement_timestamp()`).Scan(&tb))
	require.NoError(t, ap.QueryRow(ctx, `SELECT statement_timestamp()`).Scan(&ta))
	skew := ta.Sub(tb)
	t.Logf("the ahead standby's clock leads the behind one's by %v", skew)
	require.Greater(t, skew, 110*time.Minute, "faketime shifts the standbys' clocks")

	w := writer(t, pp)
	require.NoError(t, w.Set(ctx, "soon", []byte("v"), dbcache.ExpiresIn(50*time.Millisecond)))
	require.NoError(t, w.Set(ctx, "minute", []byte("v"), dbcache.ExpiresIn(time.Minute)))
	eventually(t, ctx, "the primary sees soon expire", func() bool {
		_, err := w.Get(ctx, "soon")
		return err != nil
	})
	_, err := w.Get(ctx, "soon")
	require.ErrorIs(t, err, dbcache.ErrMiss)
	caughtUp(t, ctx, pp, bp)
	caughtUp(t, ctx, pp, ap)

	rb := router(t, pp, []*pgxpool.Pool{bp}, &replicas.Config{MaxLag: time.Minute, RefreshInterval: 10 * time.Millisecond})
	ra := router(t, pp, []*pgxpool.Pool{ap}, &replicas.Config{MaxLag: time.Minute, RefreshInterval: 10 * time.Millisecond})
	// Behind: the expired entry is served, and the minute reads as an
	// hour and a minute.
	servedByStandby(t, ctx, rb, "soon", "v")
	ttl, err := rb.TTL(ctx, "minute")
	require.NoError(t, err)
	d, _ := ttl.Duration()
	require.Greater(t, d, time.Hour, "a standby behind by an hour reads the lifetime an hour longer")
	// Ahead: the live entry misses, and so does its TTL.
	eventually(t, ctx, "the ahead standby answers", func() bool {
		before := ra.Stats().StandbyReads
		_, err := ra.Get(ctx, "minute")
		return ra.Stats().StandbyReads > before && err != nil
	})
	_, err = ra.Get(ctx, "minute")
	require.ErrorIs(t, err, dbcache.ErrMiss)
	v, err := w.Get(ctx, "minute")
	require.NoError(t, err, "the primary holds it")
	require.Equal(t, "v", string(v))
}
