package dbcache_test

import (
	"context"
	"fmt"
	"reflect"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// Reads never write: every read runs, and answers, in sessions the server
// makes read-only (default_transaction_read_only, as on a hot standby),
// coalesced or not, and the expired rows it read stay in the table.
func TestReadsNeverWrite(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	writer := setupOn(t, s.Pool(t), nil)
	ctx := ctxT(t)
	for i := range 20 {
		require.NoError(t, writer.cache.Set(ctx, fmt.Sprintf("k%d", i), []byte("v"), dbcache.ExpiresIn(time.Hour)))
	}
	require.NoError(t, writer.cache.Set(ctx, "forever", []byte("v"), dbcache.Forever))
	travel(t, writer.pool, 2*time.Hour) // every k%d has expired
	require.NoError(t, writer.cache.Set(ctx, "live", []byte("v"), dbcache.ExpiresIn(time.Hour)))

	cfg := s.PoolConfig(t)
	cfg.MaxConns = 2
	cfg.ConnConfig.RuntimeParams["default_transaction_read_only"] = "on"
	ro := newPool(t, cfg)
	// CoalesceGets 1: concurrent Gets share one query, the batch path.
	reader := setupOn(t, ro, &dbcache.Config{CoalesceGets: 1})

	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for g := range 8 {
		wg.Go(func() {
			for i := range 20 {
				k := fmt.Sprintf("k%d", (g+i)%20)
				if _, err := reader.cache.Get(ctx, k); err != dbcache.ErrMiss {
					errs <- fmt.Errorf("get %s: %v", k, err)
				}
				if _, err := reader.cache.Get(ctx, "live"); err != nil {
					errs <- fmt.Errorf("get live: %w", err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	_, _, err := reader.cache.GetWithTTL(ctx, "k1")
	require.ErrorIs(t, err, dbcache.ErrMiss)
	_, err = reader.cache.TTL(ctx, "k2")
	require.ErrorIs(t, err, dbcache.ErrMiss)
	ok, err := reader.cache.HasKey(ctx, "k3")
	require.NoError(t, err)
	require.False(t, ok)
	got, err := reader.cache.GetMany(ctx, []string{"k4", "live", "forever", "absent"})
	require.NoError(t, err)
	require.Len(t, got, 2)
	var keys []string
	for k, err := range reader.cache.Keys(ctx, "") {
		require.NoError(t, err)
		keys = append(keys, k)
	}
	require.ElementsMatch(t, []string{"live", "forever"}, keys)

	// The writes are refused there: the sessions really are read-only.
	require.Error(t, reader.cache.Set(ctx, "x", []byte("v"), dbcache.Forever))

	var rows int
	require.NoError(t, writer.pool.QueryRow(ctx, `SELECT count(*) FROM dbcache_entries`).Scan(&rows))
	require.Equal(t, 22, rows, "the expired rows the reads met are still in the table")
}

// argTracer records every argument the cache's statements carry.
type argTracer struct {
	mu   sync.Mutex
	args []any
}

func (a *argTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	a.mu.Lock()
	a.args = append(a.args, d.Args...)
	a.mu.Unlock()
	return ctx
}

func (*argTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// The database's clock decides expiry, never the application's: no
// statement of any operation carries a time of the application's clock
// (only durations), so there is nothing a skewed application clock could
// move. With every argument of every statement recorded, none is a time.
func TestNoStatementCarriesTheApplicationClock(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	tr := &argTracer{}
	cfg := s.PoolConfig(t)
	cfg.MaxConns = 4
	cfg.ConnConfig.Tracer = tr
	b := setupOn(t, newPool(t, cfg), &dbcache.Config{CoalesceSets: 2})
	ctx := ctxT(t)
	for _, timeout := range []dbcache.Timeout{dbcache.DefaultTimeout, dbcache.Forever, dbcache.ExpiresIn(time.Minute), dbcache.ExpiresIn(0), dbcache.ExpiresIn(-time.Second)} {
		c := b.cache
		_ = c.Set(ctx, "k", []byte("1"), timeout)
		_, _ = c.Add(ctx, "a", []byte("1"), timeout)
		_, _ = c.Touch(ctx, "k", timeout)
		_, _ = c.GetOrSet(ctx, "g", []byte("1"), timeout)
		_, _ = c.GetOrSetFunc(ctx, "f", func(context.Context) ([]byte, error) { return []byte("1"), nil }, timeout)
		_, _ = c.SetMany(ctx, map[string][]byte{"m1": []byte("1"), "m2": []byte("2")}, timeout)
	}
	_, _ = b.cache.Get(ctx, "k")
	_, _, _ = b.cache.GetWithTTL(ctx, "k")
	_, _ = b.cache.TTL(ctx, "k")
	_, _ = b.cache.HasKey(ctx, "k")
	_, _ = b.cache.GetMany(ctx, []string{"k", "a"})
	_, _ = b.cache.Incr(ctx, "k", 1)
	_, _ = b.cache.IncrVersion(ctx, "k", 1)
	_, _ = b.cache.DeleteMany(ctx, []string{"a", "m1"})
	_, _ = b.cache.DeletePrefix(ctx, "m")
	require.NoError(t, b.cache.Clear(ctx))
	lease, _ := b.cache.AcquireLease(ctx, "l", time.Minute)
	_, _ = b.cache.AcquireLease(ctx, "l", time.Minute)
	_, _ = b.cache.ExtendLease(ctx, "l", lease.Token, time.Minute)
	_, _ = b.cache.ReleaseLease(ctx, "l", lease.Token)

	tr.mu.Lock()
	defer tr.mu.Unlock()
	require.NotEmpty(t, tr.args)
	timeType := reflect.TypeFor[time.Time]()
	for _, a := range tr.args {
		v := reflect.ValueOf(a)
		for v.IsValid() && (v.Kind() == reflect.Pointer || v.Kind() == reflect.Slice) && v.Type() != reflect.TypeFor[[]byte]() {
			if v.Kind() == reflect.Slice {
				if v.Len() == 0 {
					break
				}
				v = v.Index(0)
				continue
			}
			v = v.Elem()
		}
		if v.IsValid() && v.Type() == timeType {
			t.Errorf("a statement carries an application time: %v", a)
		}
	}
}

// inFlight counts the statements running at once on a pool, and the most
// there ever were.
type inFlight struct {
	mu       sync.Mutex
	now, max int
}

func (f *inFlight) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	f.mu.Lock()
	f.now++
	f.max = max(f.max, f.now)
	f.mu.Unlock()
	return ctx
}

func (f *inFlight) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {
	f.mu.Lock()
	f.now--
	f.mu.Unlock()
}

// CoalesceGets: n bounds the Get queries in flight at n, however many
// goroutines ask, on a pool with more connections than that; a lone Get
// never waits for a batch; at the default over a pool no larger than
// pgxpool's default size, Gets that would not have queued for a connection
// are never coalesced; and over a larger pool the default bounds them at
// pgxpool's default size (max(4, NumCPU)).
func TestCoalesceGetsBounds(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	newCache := func(conns int32, coalesce int) (*testBundle, *inFlight) {
		f := &inFlight{}
		cfg := s.PoolConfig(t)
		cfg.MaxConns = conns
		cfg.ConnConfig.Tracer = f
		return setupOn(t, newPool(t, cfg), &dbcache.Config{CoalesceGets: coalesce}), f
	}
	ctx := ctxT(t)
	hammer := func(c *dbcache.Cache, goroutines int) {
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Go(func() {
				for i := range 50 {
					_, _ = c.Get(ctx, fmt.Sprintf("k%d", (g+i)%10))
				}
			})
		}
		wg.Wait()
	}
	b, f := newCache(6, 2)
	require.NoError(t, b.cache.Set(ctx, "k1", []byte("v"), dbcache.Forever))
	f.mu.Lock()
	f.max = 0
	f.mu.Unlock()
	hammer(b.cache, 16)
	require.LessOrEqual(t, f.max, 2, "Get queries in flight with CoalesceGets 2")
	require.Positive(t, dbcache.CoalescedBatches(b.cache))

	lone, _ := newCache(2, 1)
	for i := range 100 {
		_, _ = lone.cache.Get(ctx, fmt.Sprintf("k%d", i))
	}
	require.Zero(t, dbcache.CoalescedBatches(lone.cache), "a lone Get waited for a batch")

	def, _ := newCache(4, 0)
	hammer(def.cache, 4)
	require.Zero(t, dbcache.CoalescedBatches(def.cache), "at the default, Gets that never queued for a connection were coalesced")

	// Over a pool larger than pgxpool's default, the default is that size.
	limit := max(4, runtime.NumCPU())
	big, fb := newCache(int32(limit+2), 0)
	require.Equal(t, limit, dbcache.CoalesceLimit(big.cache))
	fb.mu.Lock()
	fb.max = 0
	fb.mu.Unlock()
	hammer(big.cache, limit+2)
	require.LessOrEqual(t, fb.max, limit, "Get queries in flight at the default over a pool larger than pgxpool's default")
}
