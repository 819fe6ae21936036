package typed_test

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/codec"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/typed"
)

type user struct {
	ID   int      `json:"id"`
	Name string   `json:"name"`
	Tags []string `json:"tags,omitempty"`
}

func TestOperations(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	users, err := typed.New[user](b.store, nil)
	require.NoError(t, err)
	require.Same(t, b.store, users.Store())
	ann := user{ID: 1, Name: "ann", Tags: []string{"admin"}}
	bob := user{ID: 2, Name: "bob"}

	_, err = users.Get(ctx, "u1")
	require.ErrorIs(t, err, dbcache.ErrMiss)

	require.NoError(t, users.Set(ctx, "u1", ann, dbcache.ExpiresIn(time.Hour)))
	got, err := users.Get(ctx, "u1")
	require.NoError(t, err)
	require.Equal(t, ann, got)
	// JSON by default: the bytes are what any reader of the table sees.
	raw, err := b.store.Get(ctx, "u1")
	require.NoError(t, err)
	require.JSONEq(t, `{"id":1,"name":"ann","tags":["admin"]}`, string(raw))

	got, ttl, err := users.GetWithTTL(ctx, "u1")
	require.NoError(t, err)
	require.Equal(t, ann, got)
	d, ok := ttl.Duration()
	require.True(t, ok)
	require.InDelta(t, time.Hour.Seconds(), d.Seconds(), 60)
	_, _, err = users.GetWithTTL(ctx, "nobody")
	require.ErrorIs(t, err, dbcache.ErrMiss)

	stored, err := users.Add(ctx, "u1", bob, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.False(t, stored)
	stored, err = users.Add(ctx, "u2", bob, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.True(t, stored)

	many, err := users.GetMany(ctx, []string{"u1", "u2", "u3", "u1"})
	require.NoError(t, err)
	require.Equal(t, map[string]user{"u1": ann, "u2": bob}, many)

	failed, err := users.SetMany(ctx, map[string]user{"a": {ID: 10}, "b": {ID: 11}}, dbcache.Forever)
	require.NoError(t, err)
	require.Empty(t, failed)
	many, err = users.GetMany(ctx, []string{"a", "b"})
	require.NoError(t, err)
	require.Equal(t, map[string]user{"a": {ID: 10}, "b": {ID: 11}}, many)

	// GetOrSet: the stored value wins over the one passed.
	got, err = users.GetOrSet(ctx, "u1", bob, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, ann, got)
	got, err = users.GetOrSet(ctx, "u9", bob, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, bob, got)
	got, err = users.Get(ctx, "u9")
	require.NoError(t, err)
	require.Equal(t, bob, got)
}

func TestGetOrSetFunc(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	users, err := typed.New[user](b.store, nil)
	require.NoError(t, err)

	var loads atomic.Int32
	load := func(context.Context) (user, error) {
		loads.Add(1)
		time.Sleep(50 * time.Millisecond) // long enough for the callers to pile up
		return user{ID: 7, Name: "loaded"}, nil
	}
	var wg sync.WaitGroup
	results := make([]user, 10)
	for i := range results {
		wg.Go(func() {
			v, err := users.GetOrSetFunc(ctx, "k", load, dbcache.DefaultTimeout)
			if err != nil {
				t.Error(err)
			}
			results[i] = v
		})
	}
	wg.Wait()
	require.Equal(t, int32(1), loads.Load(), "one load for every concurrent caller")
	for _, r := range results {
		require.Equal(t, user{ID: 7, Name: "loaded"}, r)
	}

	// A hit does not load.
	v, err := users.GetOrSetFunc(ctx, "k", load, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, 7, v.ID)
	require.Equal(t, int32(1), loads.Load())

	// A loader error is returned, reachable with errors.Is; nothing stored.
	errBackend := errors.New("backend down")
	_, err = users.GetOrSetFunc(ctx, "bad", func(context.Context) (user, error) { return user{}, errBackend }, dbcache.DefaultTimeout)
	require.ErrorIs(t, err, errBackend)
	_, err = users.Get(ctx, "bad")
	require.ErrorIs(t, err, dbcache.ErrMiss)

	_, err = users.GetOrSetFunc(ctx, "nil", nil, dbcache.DefaultTimeout)
	require.Error(t, err)
}

// Stale-while-revalidate comes through GetOrRevalidate: a stale entry is
// returned at once and refreshed in the background with the typed loader.
func TestRevalidate(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	users, err := typed.New[user](b.store, nil)
	require.NoError(t, err)
	v, err := users.GetOrRevalidate(ctx, "k", func(context.Context) (user, error) { return user{ID: 1}, nil }, time.Hour, time.Hour)
	require.NoError(t, err)
	require.Equal(t, 1, v.ID)

	// Half an hour left of two: stale. Touch moves the expiry without
	// waiting an hour; the database's clock still decides.
	ok, err := b.store.Touch(ctx, "k", dbcache.ExpiresIn(30*time.Minute))
	require.NoError(t, err)
	require.True(t, ok)
	refreshed := make(chan struct{})
	v, err = users.GetOrRevalidate(ctx, "k", func(context.Context) (user, error) {
		defer close(refreshed)
		return user{ID: 2}, nil
	}, time.Hour, time.Hour)
	require.NoError(t, err)
	require.Equal(t, 1, v.ID, "the stale value, at once")
	<-refreshed
	require.Eventually(t, func() bool {
		v, err := users.Get(ctx, "k")
		return err == nil && v.ID == 2
	}, 30*time.Second, 10*time.Millisecond)
}

func TestEncodeError(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	funcs, err := typed.New[func()](b.store, nil) // JSON cannot encode a func
	require.NoError(t, err)
	err = funcs.Set(ctx, "f", func() {}, dbcache.DefaultTimeout)
	var ee *typed.EncodeError
	require.ErrorAs(t, err, &ee)
	require.Equal(t, "f", ee.Key)
	_, err = funcs.Add(ctx, "f", func() {}, dbcache.DefaultTimeout)
	require.ErrorAs(t, err, &ee)
	_, err = funcs.GetOrSet(ctx, "f", func() {}, dbcache.DefaultTimeout)
	require.ErrorAs(t, err, &ee)
	_, err = funcs.GetOrSetFunc(ctx, "f", func(context.Context) (func(), error) { return func() {}, nil }, dbcache.DefaultTimeout)
	require.ErrorAs(t, err, &ee)
	failed, err := funcs.SetMany(ctx, map[string]func(){"x": func() {}, "y": nil}, dbcache.DefaultTimeout)
	require.ErrorAs(t, err, &ee)
	require.Equal(t, []string{"x", "y"}, failed)
	ok, err := b.store.HasKey(ctx, "f")
	require.NoError(t, err)
	require.False(t, ok, "nothing stored")
	n, err := b.store.DeleteMany(ctx, []string{"x", "y"})
	require.NoError(t, err)
	require.Zero(t, n, "nothing stored")
}

// userV2 is user after a deploy that changed a field's type.
type userV2 struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

func TestDecodeError(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	old, err := typed.New[user](b.store, nil)
	require.NoError(t, err)
	require.NoError(t, old.Set(ctx, "u", user{ID: 1, Name: "ann"}, dbcache.DefaultTimeout))
	require.NoError(t, b.store.Set(ctx, "junk", []byte("\x00\xffnot json"), dbcache.DefaultTimeout))

	users, err := typed.New[userV2](b.store, &typed.Config[userV2]{Logger: b.log})
	require.NoError(t, err)
	for _, key := range []string{"u", "junk"} {
		_, err = users.Get(ctx, key)
		require.ErrorIs(t, err, typed.ErrDecode)
		require.NotErrorIs(t, err, dbcache.ErrMiss)
		var de *typed.DecodeError
		require.ErrorAs(t, err, &de)
		require.Equal(t, key, de.Key)
		require.Error(t, de.Err)
	}
	_, _, err = users.GetWithTTL(ctx, "u")
	require.ErrorIs(t, err, typed.ErrDecode)
	_, err = users.GetMany(ctx, []string{"nope", "u"})
	require.ErrorIs(t, err, typed.ErrDecode)
	_, err = users.GetOrSet(ctx, "u", userV2{ID: "x"}, dbcache.DefaultTimeout)
	require.ErrorIs(t, err, typed.ErrDecode)
	_, err = users.GetOrSetFunc(ctx, "u", func(context.Context) (userV2, error) { return userV2{ID: "x"}, nil }, dbcache.DefaultTimeout)
	require.ErrorIs(t, err, typed.ErrDecode)
	require.Equal(t, int64(6), users.Stats().DecodeErrors)
	// Logged, but not once per failure.
	require.Equal(t, 1, strings.Count(b.logs.String(), "do not decode"))
}

func TestMissOnDecodeError(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	old, err := typed.New[user](b.store, nil)
	require.NoError(t, err)
	for _, k := range []string{"a", "b", "c", "d"} {
		require.NoError(t, old.Set(ctx, k, user{ID: 1}, dbcache.DefaultTimeout))
	}
	users, err := typed.New[userV2](b.store, &typed.Config[userV2]{MissOnDecodeError: true, Logger: b.log})
	require.NoError(t, err)

	_, err = users.Get(ctx, "a")
	require.ErrorIs(t, err, dbcache.ErrMiss)
	_, _, err = users.GetWithTTL(ctx, "a")
	require.ErrorIs(t, err, dbcache.ErrMiss)
	require.NoError(t, users.Set(ctx, "fresh", userV2{ID: "f"}, dbcache.DefaultTimeout))
	many, err := users.GetMany(ctx, []string{"a", "fresh"})
	require.NoError(t, err)
	require.Equal(t, map[string]userV2{"fresh": {ID: "f"}}, many)
	// Reads never write: the entry is still there.
	ok, err := b.store.HasKey(ctx, "a")
	require.NoError(t, err)
	require.True(t, ok)

	// get_or_set replaces it: the loader runs and its value is stored.
	var loads atomic.Int32
	v, err := users.GetOrSetFunc(ctx, "a", func(context.Context) (userV2, error) {
		loads.Add(1)
		return userV2{ID: "new"}, nil
	}, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, userV2{ID: "new"}, v)
	require.Equal(t, int32(1), loads.Load())
	v, err = users.Get(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, userV2{ID: "new"}, v)

	v, err = users.GetOrSet(ctx, "b", userV2{ID: "given"}, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, userV2{ID: "given"}, v)
	v, err = users.Get(ctx, "b")
	require.NoError(t, err)
	require.Equal(t, userV2{ID: "given"}, v)
	require.Positive(t, users.Stats().DecodeErrors)
}

// panicky is a codec whose Decode panics: the typed layer reports it as a
// decode error rather than crash the caller.
type panicky struct{ codec.Codec[user] }

func (panicky) Decode(string, []byte) (user, error) { panic("boom") }
func (panicky) Encode(string, user) ([]byte, error) { panic("bang") }

func TestCodecPanics(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	require.NoError(t, b.store.Set(ctx, "k", []byte("{}"), dbcache.DefaultTimeout))
	users, err := typed.New[user](b.store, &typed.Config[user]{Codec: panicky{}, Logger: b.log})
	require.NoError(t, err)
	_, err = users.Get(ctx, "k")
	require.ErrorIs(t, err, typed.ErrDecode)
	require.ErrorContains(t, err, "boom")
	err = users.Set(ctx, "k", user{}, dbcache.DefaultTimeout)
	var ee *typed.EncodeError
	require.ErrorAs(t, err, &ee)
	require.ErrorContains(t, err, "bang")
	// In GetOrSetFunc the codec encodes on the cache's goroutine (the load
	// shared by the callers): its panic reaches every caller as an error,
	// and the process lives on.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			_, err := users.GetOrSetFunc(ctx, "shared", func(context.Context) (user, error) { return user{ID: 1}, nil }, dbcache.DefaultTimeout)
			var ee *typed.EncodeError
			if !errors.As(err, &ee) {
				t.Errorf("want an EncodeError, got %v", err)
			}
		})
	}
	wg.Wait()
}

func TestBuiltinCodecs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)

	gobs, err := typed.New[user](b.store, &typed.Config[user]{Codec: codec.Gob[user]()})
	require.NoError(t, err)
	require.NoError(t, gobs.Set(ctx, "g", user{ID: 3, Name: "gob"}, dbcache.DefaultTimeout))
	g, err := gobs.Get(ctx, "g")
	require.NoError(t, err)
	require.Equal(t, user{ID: 3, Name: "gob"}, g)

	raw, err := typed.New[[]byte](b.store, &typed.Config[[]byte]{Codec: codec.Bytes()})
	require.NoError(t, err)
	require.NoError(t, raw.Set(ctx, "r", []byte{0, 1, 0xff}, dbcache.DefaultTimeout))
	r, err := raw.Get(ctx, "r")
	require.NoError(t, err)
	require.Equal(t, []byte{0, 1, 0xff}, r)

	strs, err := typed.New[string](b.store, &typed.Config[string]{Codec: codec.String()})
	require.NoError(t, err)
	require.NoError(t, strs.Set(ctx, "s", "41", dbcache.Forever))
	// The string codec stores the bytes as they are, so the byte API's
	// Incr works on them.
	n, err := strs.Store().Incr(ctx, "s", 1)
	require.NoError(t, err)
	require.Equal(t, int64(42), n)
	s, err := strs.Get(ctx, "s")
	require.NoError(t, err)
	require.Equal(t, "42", s)
}

func TestNew(t *testing.T) {
	t.Parallel()
	_, err := typed.New[user](nil, nil)
	require.Error(t, err)
}

// The decode-error log line holds no key and no stored byte by default,
// only the count and the error's code; LogKeys adds the key and the
// codec's error.
func TestDecodeErrorLogCarriesNoKey(t *testing.T) {
	t.Parallel()
	for _, logKeys := range []bool{false, true} {
		b := setup(t)
		ctx := ctxT(t)
		require.NoError(t, b.store.Set(ctx, "user:carol@example.com", []byte(`{"id":"secret-value"}`), dbcache.DefaultTimeout))
		users, err := typed.New[user](b.store, &typed.Config[user]{Logger: b.log, LogKeys: logKeys})
		require.NoError(t, err)
		_, err = users.Get(ctx, "user:carol@example.com")
		require.ErrorIs(t, err, typed.ErrDecode)
		require.Equal(t, "decode", dbcache.ErrorCode(err))
		logged := b.logs.String()
		require.Contains(t, logged, "error_code=decode")
		if logKeys {
			require.Contains(t, logged, "carol@example.com")
		} else {
			require.NotContains(t, logged, "carol", logged)
			require.NotContains(t, logged, "secret", logged)
		}
	}
}

// A struct with no field in common with the stored JSON: the JSON codec
// decodes it to the zero value (its documented rules); JSONStrict makes it
// a decode error, a miss with MissOnDecodeError, which GetOrSetFunc
// refills.
func TestChangedStructStrictJSON(t *testing.T) {
	t.Parallel()
	type account struct {
		Email string `json:"email"`
	}
	b := setup(t)
	ctx := ctxT(t)
	old, err := typed.New[user](b.store, nil)
	require.NoError(t, err)
	require.NoError(t, old.Set(ctx, "u", user{ID: 1, Name: "ann"}, dbcache.DefaultTimeout))

	loose, err := typed.New[account](b.store, &typed.Config[account]{Logger: b.log})
	require.NoError(t, err)
	got, err := loose.Get(ctx, "u")
	require.NoError(t, err)
	require.Zero(t, got)

	strict, err := typed.New[account](b.store, &typed.Config[account]{Codec: codec.JSONStrict[account](), Logger: b.log})
	require.NoError(t, err)
	_, err = strict.Get(ctx, "u")
	require.ErrorIs(t, err, typed.ErrDecode)
	asMiss, err := typed.New[account](b.store, &typed.Config[account]{Codec: codec.JSONStrict[account](), MissOnDecodeError: true, Logger: b.log})
	require.NoError(t, err)
	_, err = asMiss.Get(ctx, "u")
	require.ErrorIs(t, err, dbcache.ErrMiss)
	got, err = asMiss.GetOrSetFunc(ctx, "u", func(context.Context) (account, error) { return account{Email: "ann@example.com"}, nil }, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, account{Email: "ann@example.com"}, got)
	got, err = strict.Get(ctx, "u")
	require.NoError(t, err)
	require.Equal(t, "ann@example.com", got.Email)
}

// A new Version or KeyPrefix for a changed type is the clean switch: the
// old and the new type, writing the same keys into one table at once,
// never read each other's entries.
func TestVersionSeparatesTypes(t *testing.T) {
	t.Parallel()
	pool := dbtest.Pool(t)
	ctx := ctxT(t)
	logs := &dbtest.LogBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	store, err := dbcache.New(ctx, pool, &dbcache.Config{Logger: log})
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	other, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "v2app", Logger: log})
	require.NoError(t, err)
	t.Cleanup(func() { _ = other.Close() })
	b := &testBundle{store: store, logs: logs, log: log}
	for name, newStore := range map[string]dbcache.Store{"version": b.store.WithVersion(2), "prefix": other} {
		oldUsers, err := typed.New[user](b.store, &typed.Config[user]{Logger: b.log})
		require.NoError(t, err)
		newUsers, err := typed.New[userV2](newStore, &typed.Config[userV2]{Logger: b.log})
		require.NoError(t, err)
		var wg sync.WaitGroup
		for i := range 50 {
			key := name + ":" + strconv.Itoa(i)
			wg.Go(func() {
				if err := oldUsers.Set(ctx, key, user{ID: i, Name: "old"}, dbcache.DefaultTimeout); err != nil {
					t.Error(err)
				}
			})
			wg.Go(func() {
				if err := newUsers.Set(ctx, key, userV2{ID: "new"}, dbcache.DefaultTimeout); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		for i := range 50 {
			key := name + ":" + strconv.Itoa(i)
			o, err := oldUsers.Get(ctx, key)
			require.NoError(t, err, name)
			require.Equal(t, user{ID: i, Name: "old"}, o)
			n, err := newUsers.Get(ctx, key)
			require.NoError(t, err, name)
			require.Equal(t, userV2{ID: "new"}, n)
		}
		require.Zero(t, oldUsers.Stats().DecodeErrors+newUsers.Stats().DecodeErrors, name)
	}
}
