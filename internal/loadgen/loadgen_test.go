package loadgen_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/loadgen"
)

// fakeStore is an in-memory map behind a mutex: enough to check that the
// generator issues what it says and counts what comes back.
type fakeStore struct {
	mu   sync.Mutex
	data map[string][]byte
}

func newFakeStore() *fakeStore { return &fakeStore{data: map[string][]byte{}} }

func (s *fakeStore) ops() map[string]loadgen.Op {
	return map[string]loadgen.Op{
		loadgen.OpGet: {Run: func(_ context.Context, r *loadgen.Request) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			if _, ok := s.data[r.Key]; !ok {
				return loadgen.ErrMiss
			}
			return nil
		}},
		loadgen.OpSet: {Run: func(_ context.Context, r *loadgen.Request) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.data[r.Key] = append([]byte(nil), r.Value...)
			return nil
		}},
		loadgen.OpGetMany: {Batch: true, Run: func(_ context.Context, r *loadgen.Request) error {
			seen := map[string]bool{}
			for _, k := range r.Keys {
				if seen[k] {
					return fmt.Errorf("duplicate key %q in batch", k)
				}
				seen[k] = true
			}
			if r.Keys[0] != r.Key {
				return errors.New("Keys[0] is not Key")
			}
			return nil
		}},
	}
}

func TestParseMix(t *testing.T) {
	t.Parallel()
	ops := newFakeStore().ops()

	mix, err := loadgen.ParseMix("get:9, SET:1", ops)
	require.NoError(t, err)
	require.Len(t, mix, 2)
	require.Equal(t, "get", mix[0].Name)
	require.Equal(t, 9, mix[0].Weight)
	require.Equal(t, "set", mix[1].Name)
	require.Equal(t, 1, mix[1].Weight)

	mix, err = loadgen.ParseMix("get-many", ops)
	require.NoError(t, err)
	require.Equal(t, "get_many", mix[0].Name)
	require.True(t, mix[0].Batch)

	_, err = loadgen.ParseMix("get,nope", ops)
	require.ErrorContains(t, err, `unknown operation "nope" (known: get, get_many, set)`)
	_, err = loadgen.ParseMix("get,get", ops)
	require.ErrorContains(t, err, "listed twice")
	_, err = loadgen.ParseMix("get:0", ops)
	require.ErrorContains(t, err, "positive integer")
	_, err = loadgen.ParseMix(" , ", ops)
	require.ErrorContains(t, err, "no operations")
}

func TestRunRequests(t *testing.T) {
	t.Parallel()
	store := newFakeStore()
	mix, err := loadgen.ParseMix("get:3,set:1,get_many:1", store.ops())
	require.NoError(t, err)

	var calls atomic.Int64
	var final loadgen.Progress
	res, err := loadgen.Run(context.Background(), &loadgen.Config{
		Ops:         mix,
		Concurrency: 4,
		Requests:    2000,
		KeySpace:    50,
		BatchSize:   50, // the whole key space: Keys must still be distinct
		ValueSize:   16,
		Progress: func(p loadgen.Progress) {
			calls.Add(1)
			if p.Final {
				final = p
			}
		},
	})
	require.NoError(t, err)
	require.EqualValues(t, 2000, res.Total.Requests)
	require.Zero(t, res.Total.Errors, res.FirstError)
	require.False(t, res.Interrupted)
	require.Len(t, res.Ops, 3)
	var sum int64
	for _, op := range res.Ops {
		sum += op.Requests
		require.Positive(t, op.Requests, op.Name)
		require.LessOrEqual(t, op.Min, op.P50, op.Name)
		require.LessOrEqual(t, op.P50, op.P99, op.Name)
		require.LessOrEqual(t, op.P99, op.P999, op.Name)
		require.LessOrEqual(t, op.P999, op.Max, op.Name)
	}
	require.EqualValues(t, 2000, sum)
	// get runs about 3/5 of the time.
	require.InDelta(t, 1200, res.Ops[0].Requests, 200)
	require.Positive(t, res.Ops[0].Misses, "early gets miss before the sets fill the store")
	require.Positive(t, res.Total.OpsPerSec)

	require.True(t, final.Final)
	require.EqualValues(t, 2000, final.Done)
	require.Positive(t, calls.Load())

	store.mu.Lock()
	defer store.mu.Unlock()
	require.LessOrEqual(t, len(store.data), 50)
	for k, v := range store.data {
		require.Regexp(t, `^loadgen:\d+$`, k)
		require.Len(t, v, 16)
	}
}

func TestRunDuration(t *testing.T) {
	t.Parallel()
	mix, err := loadgen.ParseMix("set", newFakeStore().ops())
	require.NoError(t, err)
	start := time.Now()
	res, err := loadgen.Run(context.Background(), &loadgen.Config{Ops: mix, Duration: 100 * time.Millisecond})
	require.NoError(t, err)
	require.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond)
	require.Less(t, time.Since(start), 5*time.Second)
	require.Positive(t, res.Total.Requests)
}

func TestRunLatencies(t *testing.T) {
	t.Parallel()
	// Every operation sleeps 2 ms: the percentiles must land near that,
	// within the histogram's precision plus the sleep's overshoot.
	ops := map[string]loadgen.Op{"sleep": {Run: func(context.Context, *loadgen.Request) error {
		time.Sleep(2 * time.Millisecond)
		return nil
	}}}
	mix, err := loadgen.ParseMix("sleep", ops)
	require.NoError(t, err)
	res, err := loadgen.Run(context.Background(), &loadgen.Config{Ops: mix, Concurrency: 2, Requests: 40})
	require.NoError(t, err)
	require.GreaterOrEqual(t, res.Total.P50, 1950*time.Microsecond)
	require.Less(t, res.Total.P50, 50*time.Millisecond)
	require.GreaterOrEqual(t, res.Total.Mean, 2*time.Millisecond)
}

func TestRunStopsOnErrors(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	ops := map[string]loadgen.Op{"fail": {Run: func(context.Context, *loadgen.Request) error { return boom }}}
	mix, err := loadgen.ParseMix("fail", ops)
	require.NoError(t, err)
	res, err := loadgen.Run(context.Background(), &loadgen.Config{Ops: mix, MaxErrors: 5, Duration: time.Minute})
	require.ErrorIs(t, err, boom)
	require.ErrorContains(t, err, "stopped after")
	require.NotNil(t, res)
	require.GreaterOrEqual(t, res.Total.Errors, int64(6))
	require.Equal(t, "fail: boom", res.FirstError)
}

func TestRunInterrupted(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	ops := map[string]loadgen.Op{"wait": {Run: func(ctx context.Context, _ *loadgen.Request) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
			return nil
		}
	}}}
	mix, err := loadgen.ParseMix("wait", ops)
	require.NoError(t, err)
	var once sync.Once
	res, err := loadgen.Run(ctx, &loadgen.Config{
		Ops:              mix,
		Duration:         time.Minute,
		ProgressInterval: 10 * time.Millisecond,
		Progress: func(p loadgen.Progress) {
			if p.Done > 0 {
				once.Do(cancel)
			}
		},
	})
	require.NoError(t, err)
	require.True(t, res.Interrupted)
	require.Zero(t, res.Total.Errors, "operations cut short by the cancellation are not failures")
	require.Positive(t, res.Total.Requests)
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	_, err := loadgen.Run(context.Background(), &loadgen.Config{})
	require.ErrorContains(t, err, "Config.Ops is empty")

	mix, err := loadgen.ParseMix("get", newFakeStore().ops())
	require.NoError(t, err)
	_, err = loadgen.Run(context.Background(), &loadgen.Config{Ops: mix, KeySpace: 5, BatchSize: 6, Concurrency: -1})
	require.ErrorContains(t, err, "Config.BatchSize must be from 1 to KeySpace (5), got 6")
	require.ErrorContains(t, err, "Config.Concurrency must be at least 1")

	c := (&loadgen.Config{KeyPrefix: "k:"}).WithDefaults()
	require.Equal(t, "k:42", c.Key(42))
	require.Equal(t, loadgen.DurationDefault, c.Duration)
	require.Equal(t, loadgen.KeySpaceDefault, c.KeySpace)
}
