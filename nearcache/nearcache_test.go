package nearcache_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/nearcache"
	"github.com/dbcache/dbcache/typed"
)

// madeKey is the stored key of key with dbcache's defaults.
func madeKey(key string) string { return ":1:" + key }

// hit reads key through p's layer and reports whether it was served from
// memory.
func (p *proc) hit(t *testing.T, key string) ([]byte, bool) {
	t.Helper()
	before := p.near.Stats().Hits
	v, err := p.near.Get(ctxT(t), key)
	require.NoError(t, err)
	return v, p.near.Stats().Hits > before
}

// warm reads key, just written as want, until p serves want from memory
// (the first read fills, and the feed must have confirmed a heartbeat); an
// older value may be read until then, within the bound.
func (p *proc) warm(t *testing.T, key string, want string) {
	t.Helper()
	checkFresh(t, p, key, want, time.Now(), p.bound)
}

// A write by one process invalidates the other's copy through the feed:
// the reader is served from memory before, reads the new value after, and
// never an old one once the writer's Set has returned and the bound has
// passed.
func TestWriteInvalidatesOtherProcess(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	a, b := e.proc(t, steady()), e.proc(t, steady())
	ctx := ctxT(t)
	require.NoError(t, a.near.Set(ctx, "k", []byte("v1"), dbcache.ExpiresIn(time.Hour)))
	b.warm(t, "k", "v1")

	require.NoError(t, a.near.Set(ctx, "k", []byte("v2"), dbcache.ExpiresIn(time.Hour)))
	eventually(t, "b's feed invalidates k", func() bool { return b.trace.invalidated(madeKey("k")) >= 2 })
	v, hit := b.hit(t, "k")
	require.Equal(t, "v2", string(v))
	require.False(t, hit, "the copy was dropped, so the read went to the database")
	b.warm(t, "k", "v2")

	// Delete, Incr and Touch invalidate too.
	_, err := a.near.Delete(ctx, "k")
	require.NoError(t, err)
	eventually(t, "b sees the delete", func() bool {
		_, err := b.near.Get(ctx, "k")
		return errors.Is(err, dbcache.ErrMiss)
	})
	require.NoError(t, a.near.Set(ctx, "n", []byte("1"), dbcache.Forever))
	b.warm(t, "n", "1")
	_, err = a.near.Incr(ctx, "n", 41)
	require.NoError(t, err)
	eventually(t, "b sees the incr", func() bool {
		v, err := b.near.Get(ctx, "n")
		require.NoError(t, err)
		return string(v) == "42"
	})
}

// Under load (a writer counting up through either process, readers in
// both reading all the while), no read returns a value older than the last
// write that had returned MaxStaleness before the read began: neither the
// copies the writing process keeps of its own writes nor the other's.
func TestNeverStalePastBound(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	bound := 500 * time.Millisecond
	cfg := &nearcache.Config{MaxStaleness: bound}
	a, b := e.proc(t, cfg), e.proc(t, cfg)
	ctx := ctxT(t)
	const writes = 150
	returned := make([]time.Time, writes+1) // returned[i]: when the write of i returned
	var mu sync.Mutex
	require.NoError(t, a.near.Set(ctx, "c", []byte("0"), dbcache.Forever))
	returned[0] = time.Now()
	b.warm(t, "c", "0")

	var done atomic.Bool
	var wg sync.WaitGroup
	var reads, stale atomic.Int64
	for r := range 3 {
		reader := []*proc{b, b, a}[r]
		wg.Go(func() {
			for !done.Load() {
				began := time.Now()
				v, err := reader.near.Get(ctx, "c")
				if err != nil {
					t.Error(err)
					return
				}
				n, _ := strconv.Atoi(string(v))
				mu.Lock()
				// The newest write that returned before began - bound.
				must := 0
				for i := writes; i > 0; i-- {
					if !returned[i].IsZero() && returned[i].Before(began.Add(-bound)) {
						must = i
						break
					}
				}
				mu.Unlock()
				reads.Add(1)
				if n < must {
					stale.Add(1)
					t.Errorf("read %d at %s, but write %d had returned %s before it", n, began.Format(time.StampMicro), must, began.Sub(returned[must]))
				}
			}
		})
	}
	for i := 1; i <= writes; i++ {
		writer := a
		if i%3 == 0 {
			writer = b
		}
		require.NoError(t, writer.near.Set(ctx, "c", []byte(strconv.Itoa(i)), dbcache.Forever))
		mu.Lock()
		returned[i] = time.Now()
		mu.Unlock()
		time.Sleep(time.Duration(i%7) * time.Millisecond)
	}
	time.Sleep(bound + 100*time.Millisecond)
	done.Store(true)
	wg.Wait()
	require.Zero(t, stale.Load())
	s, sa := b.near.Stats(), a.near.Stats()
	t.Logf("%d reads, %d from memory, %d invalidations; %d writes kept", reads.Load(), s.Hits+sa.Hits, s.Invalidations+sa.Invalidations, s.WritesKept+sa.WritesKept)
	require.Positive(t, s.Hits, "some reads were served from memory")
	require.Positive(t, sa.WritesKept, "some writes kept their copy")
	v, err := b.near.Get(ctx, "c")
	require.NoError(t, err)
	require.Equal(t, strconv.Itoa(writes), string(v))
}

// A process reads its own writes through the layer at once, without
// waiting for the feed.
func TestReadOwnWrites(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	a := e.proc(t, steady())
	ctx := ctxT(t)
	require.NoError(t, a.near.Set(ctx, "k", []byte("v1"), dbcache.Forever))
	a.warm(t, "k", "v1")
	ops := []struct {
		name  string
		write func() error
		want  string // "" for a miss
	}{
		{"set", func() error { return a.near.Set(ctx, "k", []byte("v2"), dbcache.Forever) }, "v2"},
		{"set_many", func() error {
			_, err := a.near.SetMany(ctx, map[string][]byte{"k": []byte("v3")}, dbcache.Forever)
			return err
		}, "v3"},
		{"delete", func() error { _, err := a.near.Delete(ctx, "k"); return err }, ""},
		{"add", func() error { _, err := a.near.Add(ctx, "k", []byte("v4"), dbcache.Forever); return err }, "v4"},
		{"incr", func() error {
			if err := a.near.Set(ctx, "k", []byte("1"), dbcache.Forever); err != nil {
				return err
			}
			a.warm(t, "k", "1")
			_, err := a.near.Incr(ctx, "k", 1)
			return err
		}, "2"},
		{"decr", func() error { _, err := a.near.Decr(ctx, "k", 2); return err }, "0"},
		{"touch", func() error { _, err := a.near.Touch(ctx, "k", dbcache.ExpiresIn(-1)); return err }, ""},
		{"get_or_set", func() error { _, err := a.near.GetOrSet(ctx, "k", []byte("v5"), dbcache.Forever); return err }, "v5"},
		{"delete_many", func() error { _, err := a.near.DeleteMany(ctx, []string{"k"}); return err }, ""},
		{"get_or_set_func", func() error {
			_, err := a.near.GetOrSetFunc(ctx, "k", func(context.Context) ([]byte, error) { return []byte("v6"), nil }, dbcache.Forever)
			return err
		}, "v6"},
		{"incr_version", func() error { _, err := a.near.IncrVersion(ctx, "k", 1); return err }, ""},
		{"delete_prefix", func() error {
			if err := a.near.Set(ctx, "k", []byte("v7"), dbcache.Forever); err != nil {
				return err
			}
			a.warm(t, "k", "v7")
			_, err := a.near.DeletePrefix(ctx, "")
			return err
		}, ""},
		{"clear", func() error {
			if err := a.near.Set(ctx, "k", []byte("v8"), dbcache.Forever); err != nil {
				return err
			}
			a.warm(t, "k", "v8")
			return a.near.Clear(ctx)
		}, ""},
	}
	for _, op := range ops {
		require.NoError(t, op.write(), op.name)
		// At once: no wait for the feed.
		v, err := a.near.Get(ctx, "k")
		if op.want == "" {
			require.ErrorIs(t, err, dbcache.ErrMiss, op.name)
		} else {
			require.NoError(t, err, op.name)
			require.Equal(t, op.want, string(v), op.name)
			a.warm(t, "k", op.want)
		}
	}
}

// A write in a caller's transaction (WithTx on the store) invalidates the
// other process's copy when it commits, not before; a rolled-back one
// never does.
func TestWithTxInvalidatesOnCommit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	a, b := e.proc(t, steady()), e.proc(t, steady())
	ctx := ctxT(t)
	require.NoError(t, a.near.Set(ctx, "k", []byte("v1"), dbcache.Forever))
	b.warm(t, "k", "v1")

	tx, err := a.pool.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, a.cache.WithTx(tx).Set(ctx, "k", []byte("v2"), dbcache.Forever))
	// A heartbeat after the uncommitted write still confirms b's copy:
	// b keeps serving v1 from memory, as the database would answer.
	wrote := time.Now()
	conf := b.near.Stats().Fills
	eventually(t, "a heartbeat sent after the write arrives", func() bool {
		s := b.near.Stats()
		return s.Staleness > 0 && s.Staleness < time.Since(wrote)
	})
	v, hit := b.hit(t, "k")
	require.Equal(t, "v1", string(v))
	require.True(t, hit, "not invalidated before the commit")
	require.Zero(t, b.trace.invalidated(madeKey("k"))-1, "only a's first Set reached the feed")
	require.Equal(t, conf, b.near.Stats().Fills)

	require.NoError(t, tx.Commit(ctx))
	eventually(t, "b sees the commit", func() bool {
		v, err := b.near.Get(ctx, "k")
		require.NoError(t, err)
		return string(v) == "v2"
	})

	// A rolled-back write never reaches the feed.
	b.warm(t, "k", "v2")
	before := b.trace.invalidated(madeKey("k"))
	require.EqualError(t, pgx.BeginFunc(ctx, a.pool, func(tx pgx.Tx) error {
		if err := a.cache.WithTx(tx).Set(ctx, "k", []byte("rolled back"), dbcache.Forever); err != nil {
			return err
		}
		return errors.New("roll back")
	}), "roll back")
	require.NoError(t, a.near.Set(ctx, "other", []byte("x"), dbcache.Forever))
	eventually(t, "the later write arrives", func() bool { return b.trace.invalidated(madeKey("other")) > 0 })
	require.Equal(t, before, b.trace.invalidated(madeKey("k")))
	v, hit = b.hit(t, "k")
	require.Equal(t, "v2", string(v))
	require.True(t, hit)
}

// Expiry: a copy never outlives the database's entry, and Clear and
// DeletePrefix by another process invalidate through the feed.
func TestExpiryClearDeletePrefix(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	a, b := e.proc(t, steady()), e.proc(t, steady())
	ctx := ctxT(t)

	require.NoError(t, a.near.Set(ctx, "short", []byte("v"), dbcache.ExpiresIn(700*time.Millisecond)))
	b.warm(t, "short", "v")
	_, ttl, err := b.near.GetWithTTL(ctx, "short")
	require.NoError(t, err)
	d, _ := ttl.Duration()
	require.LessOrEqual(t, d, 700*time.Millisecond)
	// Past the expiry by the local clock, the copy is gone whatever the
	// feed says (nothing invalidates an expiry): the read goes to the
	// database, which may still have the entry for the time the read that
	// fetched the copy took to reach it (the copy's expiry is counted from
	// before that read), and soon has not.
	time.Sleep(d)
	hits := b.near.Stats().Hits
	_, err = b.near.Get(ctx, "short")
	if err != nil {
		require.ErrorIs(t, err, dbcache.ErrMiss)
	}
	require.Equal(t, hits, b.near.Stats().Hits, "an expired copy is not served")
	eventually(t, "the entry expires in the database", func() bool {
		_, err := b.near.Get(ctx, "short")
		return errors.Is(err, dbcache.ErrMiss)
	})

	for _, k := range []string{"user:1", "user:2", "page:1"} {
		require.NoError(t, a.near.Set(ctx, k, []byte(k), dbcache.Forever))
		b.warm(t, k, k)
	}
	n, err := a.near.DeletePrefix(ctx, "user:")
	require.NoError(t, err)
	require.Equal(t, 2, n)
	for _, k := range []string{"user:1", "user:2"} {
		eventually(t, "b sees "+k+" deleted", func() bool {
			_, err := b.near.Get(ctx, k)
			return errors.Is(err, dbcache.ErrMiss)
		})
	}
	fills := b.near.Stats().Fills
	b.warm(t, "page:1", "page:1")
	require.Equal(t, fills, b.near.Stats().Fills, "another prefix keeps its copy")

	require.NoError(t, a.near.Clear(ctx))
	eventually(t, "b sees the clear", func() bool {
		_, err := b.near.Get(ctx, "page:1")
		return errors.Is(err, dbcache.ErrMiss)
	})

	// TRUNCATE (an operator's) drops everything.
	require.NoError(t, a.near.Set(ctx, "t", []byte("t"), dbcache.Forever))
	b.warm(t, "t", "t")
	_, err = a.pool.Exec(ctx, "TRUNCATE dbcache_entries")
	require.NoError(t, err)
	eventually(t, "b sees the truncate", func() bool {
		_, err := b.near.Get(ctx, "t")
		return errors.Is(err, dbcache.ErrMiss)
	})
}

// Every read of the Store API is answered from a copy when one is held,
// with the store's semantics: HasKey, GetMany, GetWithTTL, GetOrSet and
// GetOrSetFunc (which leaves a stale Revalidate entry to the store, so it
// refreshes it as it would without the layer); and typed values compose
// over the layer.
func TestReadsFromMemory(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	a := e.proc(t, steady())
	ctx := ctxT(t)
	require.NoError(t, a.near.Set(ctx, "k", []byte("v"), dbcache.ExpiresIn(time.Hour)))
	a.warm(t, "k", "v")
	hits := func() int64 { return a.near.Stats().Hits }

	h := hits()
	ok, err := a.near.HasKey(ctx, "k")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, h+1, hits())
	ok, err = a.near.HasKey(ctx, "absent")
	require.NoError(t, err)
	require.False(t, ok)

	require.NoError(t, a.cache.Set(ctx, "x", []byte("x"), dbcache.Forever))
	require.NoError(t, a.cache.Set(ctx, "y", []byte("y"), dbcache.Forever))
	h = hits()
	got, err := a.near.GetMany(ctx, []string{"k", "x", "y", "absent", "k"})
	require.NoError(t, err)
	require.Equal(t, map[string][]byte{"k": []byte("v"), "x": []byte("x"), "y": []byte("y")}, got)
	require.Equal(t, h+1, hits(), "k from memory, the rest in one query")
	got, err = a.near.GetMany(ctx, []string{"x"})
	require.NoError(t, err)
	require.Equal(t, "x", string(got["x"]))
	a.warm(t, "x", "x") // a lone missing key is kept
	got, err = a.near.GetMany(ctx, nil)
	require.NoError(t, err)
	require.Empty(t, got)

	// The database's remaining lifetime is read first: the copy's, read
	// after it, must not be longer (the copy's clock started before the
	// Set's statement did, and runs on while the database's is read).
	dbTTL, err := a.cache.TTL(ctx, "k")
	require.NoError(t, err)
	dbD, _ := dbTTL.Duration()
	h = hits()
	v, ttl, err := a.near.GetWithTTL(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v", string(v))
	d, isTTL := ttl.Duration()
	require.True(t, isTTL)
	require.LessOrEqual(t, d, dbD, "never longer than the database's")
	require.Equal(t, h+1, hits())

	v[0] = 'X' // the caller owns what it got
	v, err = a.near.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v", string(v))

	h = hits()
	v, err = a.near.GetOrSet(ctx, "k", []byte("other"), dbcache.Forever)
	require.NoError(t, err)
	require.Equal(t, "v", string(v))
	loads := 0
	load := func(context.Context) ([]byte, error) { loads++; return []byte("loaded"), nil }
	v, err = a.near.GetOrSetFunc(ctx, "k", load, dbcache.ExpiresIn(time.Hour))
	require.NoError(t, err)
	require.Equal(t, "v", string(v))
	require.Zero(t, loads)
	require.Equal(t, h+2, hits())

	// An entry in GetOrRevalidate's stale period (here an hour's entry
	// with an hour of staleness: stale at once) goes to the store, which
	// returns it and refreshes it in the background.
	require.NoError(t, a.near.Set(ctx, "swr", []byte("old"), dbcache.ExpiresIn(time.Hour)))
	h = hits()
	v, err = a.near.GetOrRevalidate(ctx, "swr", load, time.Millisecond, time.Hour)
	require.NoError(t, err)
	require.Equal(t, "old", string(v))
	require.Equal(t, h, hits(), "not served from memory while stale")
	eventually(t, "the store refreshes it", func() bool {
		v, err := a.cache.Get(ctx, "swr")
		require.NoError(t, err)
		return string(v) == "loaded"
	})

	type user struct{ Name string }
	users, err := typed.New[user](a.near, nil)
	require.NoError(t, err)
	require.NoError(t, users.Set(ctx, "u", user{"Ada"}, dbcache.ExpiresIn(time.Hour)))
	h = hits()
	u, err := users.Get(ctx, "u")
	require.NoError(t, err)
	require.Equal(t, "Ada", u.Name)
	require.Equal(t, h+1, hits(), "the Set's value was kept")
}

// Close stops the feed (the server drops its slot), and every later call
// is ErrClosed; the store stays open.
func TestClose(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	a := e.proc(t, nil)
	ctx := ctxT(t)
	slots := func() int {
		var n int
		require.NoError(t, a.pool.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots s
			JOIN pg_stat_activity p ON p.pid = s.active_pid WHERE p.application_name = $1`, a.appName).Scan(&n))
		return n
	}
	require.Equal(t, 1, slots())
	require.NoError(t, a.near.Close())
	require.NoError(t, a.near.Close(), "idempotent")
	eventually(t, "the slot is gone", func() bool { return slots() == 0 })
	_, err := a.near.Get(ctx, "k")
	require.ErrorIs(t, err, dbcache.ErrClosed)
	require.ErrorIs(t, a.near.Set(ctx, "k", nil, dbcache.Forever), dbcache.ErrClosed)
	_, err = a.near.HasKey(ctx, "k")
	require.ErrorIs(t, err, dbcache.ErrClosed)
	for _, err := range a.near.Keys(ctx, "") {
		require.ErrorIs(t, err, dbcache.ErrClosed)
	}
	require.NoError(t, a.cache.Set(ctx, "k", []byte("v"), dbcache.Forever), "the store is still open")
}
