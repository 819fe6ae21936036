package ratelimit_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/ratelimit"
)

// A key's burst is admitted at once, then nothing until the state has
// moved on; the results say what is left and when to come back.
func TestAllowBurstThenDeny(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	b := setup(t, nil)
	limit := ratelimit.Limit{Rate: 10, Period: time.Hour, Burst: 3}
	for i := range 3 {
		res, err := b.lim.Allow(ctx, "k", limit)
		require.NoError(t, err)
		require.True(t, res.Allowed, "unit %d of the burst", i)
		require.Equal(t, 2-i, res.Remaining)
		require.Zero(t, res.RetryAfter)
		require.Positive(t, res.ResetAfter)
		require.False(t, res.At.IsZero())
	}
	res, err := b.lim.Allow(ctx, "k", limit)
	require.NoError(t, err)
	require.False(t, res.Allowed)
	require.Zero(t, res.Remaining)
	// One unit comes back every 6 minutes: the first is due at most that
	// long after the burst (less the little time the checks took).
	require.Positive(t, res.RetryAfter)
	require.LessOrEqual(t, res.RetryAfter, limit.Interval())
	require.Greater(t, res.ResetAfter, 2*limit.Interval())

	// Another key has its own state.
	res, err = b.lim.Allow(ctx, "other", limit)
	require.NoError(t, err)
	require.True(t, res.Allowed)

	// Half the wait: still denied. The whole wait: admitted.
	before := tatOf(t, b.pool, "k")
	travel(t, b.pool, res.RetryAfter/2)
	denied, err := b.lim.Allow(ctx, "k", limit)
	require.NoError(t, err)
	require.False(t, denied.Allowed)
	require.Equal(t, before-int64(res.RetryAfter/2), tatOf(t, b.pool, "k"), "a denial writes nothing")
	travel(t, b.pool, denied.RetryAfter)
	res, err = b.lim.Allow(ctx, "k", limit)
	require.NoError(t, err)
	require.True(t, res.Allowed, "admitted once RetryAfter has passed")
}

// AllowN takes n units at once or none; n = 0 reads without counting.
func TestAllowN(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	b := setup(t, nil)
	limit := ratelimit.Limit{Rate: 100, Period: time.Hour, Burst: 10}

	res, err := b.lim.AllowN(ctx, "k", limit, 0)
	require.NoError(t, err)
	require.True(t, res.Allowed)
	require.Equal(t, 10, res.Remaining, "a new key has its whole burst")
	require.Zero(t, rows(t, b.pool), "a peek writes nothing")

	res, err = b.lim.AllowN(ctx, "k", limit, 7)
	require.NoError(t, err)
	require.True(t, res.Allowed)
	require.Equal(t, 3, res.Remaining)

	res, err = b.lim.AllowN(ctx, "k", limit, 4)
	require.NoError(t, err)
	require.False(t, res.Allowed, "4 > 3 left: none taken")
	require.Equal(t, 3, res.Remaining)

	res, err = b.lim.AllowN(ctx, "k", limit, 3)
	require.NoError(t, err)
	require.True(t, res.Allowed, "the 3 left are still there")
	require.Zero(t, res.Remaining)

	res, err = b.lim.AllowN(ctx, "k", limit, 0)
	require.NoError(t, err)
	require.Zero(t, res.Remaining)
	require.Greater(t, res.ResetAfter, 9*limit.Interval())
}

// Bad input is a clear error, and nothing is read or written: the table is
// unchanged, and no trace is made.
func TestBadInput(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	tr := &recordingTracer{}
	b := setup(t, &ratelimit.Config{Tracer: tr, KeyPrefix: "p:"})
	good := ratelimit.Limit{Rate: 5, Period: time.Minute}
	_, err := b.lim.AllowN(ctx, "existing", good, 2)
	require.NoError(t, err)
	tat := tatOf(t, b.pool, "p:existing")
	traces := len(tr.all())

	for _, c := range []struct {
		name  string
		key   string
		limit ratelimit.Limit
		n     int
		want  error
		says  string
	}{
		{"zero rate", "existing", ratelimit.Limit{Rate: 0, Period: time.Minute}, 1, ratelimit.ErrInvalidLimit, "Rate 0"},
		{"negative rate", "existing", ratelimit.Limit{Rate: -1, Period: time.Minute}, 1, ratelimit.ErrInvalidLimit, "Rate -1"},
		{"zero period", "existing", ratelimit.Limit{Rate: 5}, 1, ratelimit.ErrInvalidLimit, "Period 0s"},
		{"negative period", "existing", ratelimit.Limit{Rate: 5, Period: -time.Second}, 1, ratelimit.ErrInvalidLimit, "Period -1s"},
		{"negative burst", "existing", ratelimit.Limit{Rate: 5, Period: time.Minute, Burst: -1}, 1, ratelimit.ErrInvalidLimit, "Burst -1"},
		{"span overflow", "existing", ratelimit.Limit{Rate: 1, Period: 100 * 365 * 24 * time.Hour}, 1, ratelimit.ErrInvalidLimit, "beyond"},
		{"negative n", "existing", good, -1, ratelimit.ErrInvalidLimit, "n -1"},
		{"n over burst", "existing", good, 6, ratelimit.ErrInvalidLimit, "n 6"},
		{"empty key", "", good, 1, ratelimit.ErrInvalidKey, "empty"},
		{"NUL in key", "a\x00b", good, 1, ratelimit.ErrInvalidKey, "NUL"},
		{"invalid UTF-8", "a\xffb", good, 1, ratelimit.ErrInvalidKey, "UTF-8"},
		{"too long", strings.Repeat("k", ratelimit.MaxKeyBytes-1), good, 1, ratelimit.ErrInvalidKey, "MaxKeyBytes"},
	} {
		t.Run(c.name, func(t *testing.T) {
			res, err := b.lim.AllowN(ctx, c.key, c.limit, c.n)
			require.ErrorIs(t, err, c.want)
			require.ErrorContains(t, err, c.says)
			require.Equal(t, ratelimit.Result{}, res)
			if c.key != "" && c.key != "existing" {
				require.NotContains(t, err.Error(), c.key, "the error never quotes the key")
			}
		})
	}
	require.ErrorIs(t, b.lim.Reset(ctx, ""), ratelimit.ErrInvalidKey)
	require.Equal(t, 1, rows(t, b.pool), "nothing written")
	require.Equal(t, tat, tatOf(t, b.pool, "p:existing"), "the key's state unchanged")
	require.Len(t, tr.all(), traces, "refused checks are not traced")

	// A bad Config is refused by New, naming the field.
	for _, c := range []struct {
		cfg  ratelimit.Config
		says string
	}{
		{ratelimit.Config{Schema: "no spaces"}, "Config.Schema"},
		{ratelimit.Config{OpTimeout: -2}, "Config.OpTimeout"},
		{ratelimit.Config{KeyPrefix: "a\x00"}, "Config.KeyPrefix"},
		{ratelimit.Config{KeyPrefix: strings.Repeat("p", ratelimit.MaxKeyBytes)}, "Config.KeyPrefix"},
	} {
		_, err := ratelimit.New(ctx, b.pool, &c.cfg)
		require.ErrorContains(t, err, c.says)
	}
	_, err = ratelimit.New(ctx, nil, nil)
	require.Error(t, err)
}

// A schema without migration 006 is ErrNotMigrated at New, not an error at
// every check.
func TestNotMigrated(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	_, err := ratelimit.New(ctxT(t), b.pool, &ratelimit.Config{Schema: "no_such_schema"})
	require.ErrorIs(t, err, ratelimit.ErrNotMigrated)
}

func TestLimitHelpers(t *testing.T) {
	t.Parallel()
	require.Equal(t, ratelimit.Limit{Rate: 3, Period: time.Second, Burst: 3}, ratelimit.PerSecond(3))
	require.Equal(t, ratelimit.Limit{Rate: 3, Period: time.Minute, Burst: 3}, ratelimit.PerMinute(3))
	require.Equal(t, ratelimit.Limit{Rate: 3, Period: time.Hour, Burst: 3}, ratelimit.PerHour(3))
	require.Equal(t, "3 per 1s, burst 3", ratelimit.PerSecond(3).String())
	require.Equal(t, "3 per 1s, burst 3", ratelimit.Limit{Rate: 3, Period: time.Second}.String(), "Burst 0 means Rate")
	// Rounded up to a whole nanosecond: never more than Rate per Period.
	require.Equal(t, 333333334*time.Nanosecond, ratelimit.PerSecond(3).Interval())
	require.Equal(t, time.Nanosecond, ratelimit.PerSecond(2_000_000_000).Interval())
	require.Zero(t, ratelimit.Limit{}.Interval())
}

// recordingTracer keeps every CheckEnd.
type recordingTracer struct {
	mu   sync.Mutex
	ends []ratelimit.CheckEnd
}

func (r *recordingTracer) TraceCheck(_ context.Context, e ratelimit.CheckEnd) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ends = append(r.ends, e)
}

func (r *recordingTracer) all() []ratelimit.CheckEnd {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]ratelimit.CheckEnd(nil), r.ends...)
}
