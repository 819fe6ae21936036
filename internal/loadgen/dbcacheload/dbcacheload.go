// Package dbcacheload supplies loadgen operations over a dbcache.Store (a
// single cache or a sharded one), under loadgen's standard names, and
// prefills a cache with a run's key space.
//
// Counters (incr, decr) live under their own keys, the run's key with ":n"
// appended, so value operations and counter operations never trip over each
// other's data (an incr of a random value would fail as not an integer).
//
// The package is internal and its API may change.
package dbcacheload

import (
	"context"
	"errors"
	"fmt"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/loadgen"
)

// CounterSuffix is appended to a key to make the key its counter lives under.
const CounterSuffix = ":n"

// Ops returns the operations over cache, by loadgen name: add, decr, delete,
// get, get_many, get_or_set, has, incr, set, set_many and touch. Writes use
// timeout. A get, has, touch, delete or get_many that finds nothing, or an
// add that stores nothing, reports loadgen.ErrMiss; an incr or decr of a
// missing counter creates it and reports a miss.
func Ops(cache dbcache.Store, timeout dbcache.Timeout) map[string]loadgen.Op {
	miss := func(ok bool, err error) error {
		if err == nil && !ok {
			return loadgen.ErrMiss
		}
		return err
	}
	count := func(delta int64) loadgen.OpFunc {
		return func(ctx context.Context, r *loadgen.Request) error {
			key := r.Key + CounterSuffix
			_, err := cache.Incr(ctx, key, delta)
			if errors.Is(err, dbcache.ErrMiss) {
				// Start the counter as INCR does in Redis; a racing worker's
				// add may win, which is as good.
				if _, err := cache.Add(ctx, key, fmt.Appendf(nil, "%d", delta), timeout); err != nil {
					return err
				}
				return loadgen.ErrMiss
			}
			return err
		}
	}
	ops := []loadgen.Op{
		{Name: loadgen.OpAdd, Run: func(ctx context.Context, r *loadgen.Request) error {
			return miss(cache.Add(ctx, r.Key, r.Value, timeout))
		}},
		{Name: loadgen.OpDecr, Run: count(-1)},
		{Name: loadgen.OpDelete, Run: func(ctx context.Context, r *loadgen.Request) error {
			return miss(cache.Delete(ctx, r.Key))
		}},
		{Name: loadgen.OpGet, Run: func(ctx context.Context, r *loadgen.Request) error {
			_, err := cache.Get(ctx, r.Key)
			if errors.Is(err, dbcache.ErrMiss) {
				return loadgen.ErrMiss
			}
			return err
		}},
		{Name: loadgen.OpGetMany, Batch: true, Run: func(ctx context.Context, r *loadgen.Request) error {
			got, err := cache.GetMany(ctx, r.Keys)
			return miss(len(got) == len(r.Keys), err)
		}},
		{Name: loadgen.OpGetOrSet, Run: func(ctx context.Context, r *loadgen.Request) error {
			_, err := cache.GetOrSet(ctx, r.Key, r.Value, timeout)
			return err
		}},
		{Name: loadgen.OpHas, Run: func(ctx context.Context, r *loadgen.Request) error {
			return miss(cache.HasKey(ctx, r.Key))
		}},
		{Name: loadgen.OpIncr, Run: count(1)},
		{Name: loadgen.OpSet, Run: func(ctx context.Context, r *loadgen.Request) error {
			return cache.Set(ctx, r.Key, r.Value, timeout)
		}},
		{Name: loadgen.OpSetMany, Batch: true, Run: func(ctx context.Context, r *loadgen.Request) error {
			items := make(map[string][]byte, len(r.Keys))
			for _, k := range r.Keys {
				items[k] = r.Value
			}
			_, err := cache.SetMany(ctx, items, timeout)
			return err
		}},
		{Name: loadgen.OpTouch, Run: func(ctx context.Context, r *loadgen.Request) error {
			return miss(cache.Touch(ctx, r.Key, timeout))
		}},
	}
	out := make(map[string]loadgen.Op, len(ops))
	for _, op := range ops {
		out[op.Name] = op
	}
	return out
}

// PrefillBatch is how many entries Prefill writes per statement.
const PrefillBatch = 500

// Prefill stores every key of cfg's key space (with cfg's defaults applied),
// with a value of cfg.ValueSize bytes and a counter of 0, so a run's reads
// hit from the start. It calls progress, if not nil, after each batch with
// the number of keys written so far.
func Prefill(ctx context.Context, cache dbcache.Store, cfg *loadgen.Config, timeout dbcache.Timeout, progress func(done int)) error {
	c := cfg.WithDefaults()
	value := make([]byte, c.ValueSize)
	for i := range value {
		value[i] = 'a' + byte(i%26)
	}
	zero := []byte("0")
	for start := 0; start < c.KeySpace; start += PrefillBatch {
		end := min(start+PrefillBatch, c.KeySpace)
		items := make(map[string][]byte, 2*(end-start))
		for i := start; i < end; i++ {
			k := c.Key(i)
			items[k] = value
			items[k+CounterSuffix] = zero
		}
		if _, err := cache.SetMany(ctx, items, timeout); err != nil {
			return fmt.Errorf("prefill: %w", err)
		}
		if progress != nil {
			progress(end)
		}
	}
	return nil
}
