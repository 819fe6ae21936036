package typed_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/dbcache/dbcache/codec"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/benchpair"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/typed"
)

// profile is a value of the size and shape caches often hold (about 400
// bytes of JSON).
type profile struct {
	ID        int64             `json:"id"`
	Name      string            `json:"name"`
	Email     string            `json:"email"`
	Roles     []string          `json:"roles"`
	Settings  map[string]string `json:"settings"`
	CreatedAt time.Time         `json:"created_at"`
	Score     float64           `json:"score"`
	Bio       string            `json:"bio"`
}

func newProfile(i int) profile {
	return profile{
		ID: int64(i), Name: "user " + strconv.Itoa(i), Email: "user" + strconv.Itoa(i) + "@example.com",
		Roles:     []string{"reader", "writer"},
		Settings:  map[string]string{"theme": "dark", "lang": "en", "tz": "Europe/Berlin"},
		CreatedAt: time.Unix(1.7e9+int64(i), 0).UTC(), Score: float64(i) / 7,
		Bio: "Writes Go and SQL; caches what is slow to compute and cheap to keep, in the database already there.",
	}
}

// BenchmarkTyped runs get and set through typed.Cache[profile] with the
// JSON codec beside the byte API with the same bytes encoded in advance,
// alternating in blocks (internal/benchpair), and reports:
//
//	ns/op, cpu-ns/op          typed: wall and client CPU per operation
//	raw-ns/op, raw-cpu-ns/op  the byte API
//	x-raw                     raw-ns/op ÷ ns/op: the typed layer's speed as
//	                          a fraction of the byte API's; cpu-ns/op minus
//	                          raw-cpu-ns/op is the codec's cost
//
//	go test -run '^$' -bench Typed -benchtime 4000x ./typed/
func BenchmarkTyped(b *testing.B) {
	ctx := context.Background()
	s := dbtest.NewSchema(b)
	s.Migrate(b)
	cfg := s.PoolConfig(b)
	cfg.MaxConns = 16
	pool := dbtest.NewPool(b, cfg)
	store, err := dbcache.New(ctx, pool, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	n := 1000
	keys := make([]string, n)
	values := make([]profile, n)
	encoded := make([][]byte, n)
	for i := range n {
		keys[i] = "p" + strconv.Itoa(i)
		values[i] = newProfile(i)
		encoded[i], err = codec.JSON[profile]().Encode(keys[i], values[i])
		if err != nil {
			b.Fatal(err)
		}
	}
	for name, c := range map[string]codec.Codec[profile]{"json": codec.JSON[profile](), "gob": codec.Gob[profile]()} {
		profiles, err := typed.New[profile](store, &typed.Config[profile]{Codec: c})
		if err != nil {
			b.Fatal(err)
		}
		raw := encoded
		if name == "gob" {
			raw = make([][]byte, n)
			for i := range n {
				raw[i], _ = c.Encode(keys[i], values[i])
			}
		}
		for i := range n {
			if err := profiles.Set(ctx, keys[i], values[i], dbcache.ExpiresIn(time.Hour)); err != nil {
				b.Fatal(err)
			}
		}
		for _, g := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/get/g=%d", name, g), func(b *testing.B) {
				benchpair.Run(b, g,
					func(ctx context.Context, i int) error { _, err := profiles.Get(ctx, keys[i%n]); return err },
					func(ctx context.Context, i int) error { _, err := store.Get(ctx, keys[i%n]); return err },
				).Report(b, "raw")
				reportLoad(b)
			})
			b.Run(fmt.Sprintf("%s/set/g=%d", name, g), func(b *testing.B) {
				benchpair.Run(b, g,
					func(ctx context.Context, i int) error {
						return profiles.Set(ctx, keys[i%n], values[i%n], dbcache.ExpiresIn(time.Hour))
					},
					func(ctx context.Context, i int) error {
						return store.Set(ctx, keys[i%n], raw[i%n], dbcache.ExpiresIn(time.Hour))
					},
				).Report(b, "raw")
				reportLoad(b)
			})
		}
	}
}

func reportLoad(b *testing.B) {
	if l, ok := benchpair.LoadAverage(); ok {
		b.ReportMetric(l, "load1")
	}
}

// BenchmarkCodec is the codecs' cost alone, without a database.
func BenchmarkCodec(b *testing.B) {
	p := newProfile(42)
	for name, c := range map[string]codec.Codec[profile]{"json": codec.JSON[profile](), "gob": codec.Gob[profile]()} {
		data, err := c.Encode("k", p)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name+"/encode", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _ = c.Encode("k", p)
			}
			b.ReportMetric(float64(len(data)), "bytes")
		})
		b.Run(name+"/decode", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _ = c.Decode("k", data)
			}
		})
	}
}
