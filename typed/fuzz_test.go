package typed_test

import (
	"context"
	"errors"
	"testing"

	"github.com/dbcache/dbcache/codec"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/typed"
)

// bytesStore is a Store whose reads return the fuzzer's bytes: the fuzz
// target is the typed layer's decode path, which a database round trip
// would only slow down (the tests above run it against PostgreSQL). The
// other methods are the nil embedded interface's and are never called.
type bytesStore struct {
	dbcache.Store
	data []byte
}

func (s bytesStore) Get(context.Context, string) ([]byte, error) { return s.data, nil }

func (s bytesStore) GetMany(_ context.Context, keys []string) (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, k := range keys {
		out[k] = s.data
	}
	return out, nil
}

// FuzzDecode reads arbitrary stored bytes through typed caches with each
// built-in codec: every read returns a value or an error that is a
// *DecodeError (a miss with MissOnDecodeError), and nothing panics. Run
// it with go test -run '^$' -fuzz FuzzDecode ./typed/.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"id":1,"name":"ann","tags":["a"]}`))
	f.Add([]byte(`{"id":"1"}`))
	f.Add([]byte(`null`))
	f.Add([]byte{})
	gb, _ := codec.Gob[user]().Encode("k", user{ID: 1, Name: "x"})
	f.Add(gb)
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, data []byte) {
		s := bytesStore{data: data}
		check := func(err error, asMiss bool) {
			t.Helper()
			switch {
			case err == nil:
			case asMiss && errors.Is(err, dbcache.ErrMiss):
			case !asMiss && errors.Is(err, typed.ErrDecode):
				var de *typed.DecodeError
				if !errors.As(err, &de) || de.Key != "k" {
					t.Fatalf("not a *DecodeError for k: %v", err)
				}
			default:
				t.Fatalf("unexpected error: %v", err)
			}
		}
		for _, asMiss := range []bool{false, true} {
			j, _ := typed.New[user](s, &typed.Config[user]{MissOnDecodeError: asMiss})
			_, err := j.Get(ctx, "k")
			check(err, asMiss)
			_, err = j.GetMany(ctx, []string{"k"})
			if !asMiss {
				check(err, asMiss)
			} else if err != nil {
				t.Fatal(err)
			}
			g, _ := typed.New[user](s, &typed.Config[user]{Codec: codec.Gob[user](), MissOnDecodeError: asMiss})
			_, err = g.Get(ctx, "k")
			check(err, asMiss)
			m, _ := typed.New[map[string][]*user](s, &typed.Config[map[string][]*user]{Codec: codec.Gob[map[string][]*user](), MissOnDecodeError: asMiss})
			_, err = m.Get(ctx, "k")
			check(err, asMiss)
		}
	})
}
