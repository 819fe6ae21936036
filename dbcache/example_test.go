package dbcache_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// exampleCache is what an application would do at start-up: a pool on its
// database (here a fresh, migrated test schema) and a cache over it.
func exampleCache(cfg *dbcache.Config) *dbcache.Cache {
	pool := dbtest.ExamplePool()
	cache, err := dbcache.New(context.Background(), pool, cfg)
	if err != nil {
		panic(err)
	}
	return cache
}

func Example() {
	ctx := context.Background()
	cache := exampleCache(&dbcache.Config{KeyPrefix: "myapp"})
	defer cache.Close()

	if err := cache.Set(ctx, "greeting", []byte("hello"), dbcache.TTL(time.Minute)); err != nil {
		panic(err)
	}
	v, err := cache.Get(ctx, "greeting")
	fmt.Println(string(v), err)

	_, err = cache.Get(ctx, "nobody-set-this")
	fmt.Println(errors.Is(err, dbcache.ErrMiss))
	// Output:
	// hello <nil>
	// true
}

func ExampleCache_Add() {
	ctx := context.Background()
	cache := exampleCache(nil)
	defer cache.Close()

	// Add stores only if the key is absent: a cheap distributed lock.
	first, _ := cache.Add(ctx, "lock:report", []byte("worker-1"), dbcache.TTL(30*time.Second))
	second, _ := cache.Add(ctx, "lock:report", []byte("worker-2"), dbcache.TTL(30*time.Second))
	owner, _ := cache.Get(ctx, "lock:report")
	fmt.Println(first, second, string(owner))
	// Output: true false worker-1
}

func ExampleCache_Incr() {
	ctx := context.Background()
	cache := exampleCache(nil)
	defer cache.Close()

	_ = cache.Set(ctx, "hits", []byte("41"), dbcache.Forever)
	n, _ := cache.Incr(ctx, "hits", 1)
	fmt.Println(n)
	n, _ = cache.Decr(ctx, "hits", 10)
	fmt.Println(n)

	_, err := cache.Incr(ctx, "missing", 1)
	fmt.Println(errors.Is(err, dbcache.ErrMiss))
	_ = cache.Set(ctx, "name", []byte("gopher"), dbcache.DefaultTimeout)
	_, err = cache.Incr(ctx, "name", 1)
	fmt.Println(errors.Is(err, dbcache.ErrNotInteger))
	// Output:
	// 42
	// 32
	// true
	// true
}

func ExampleCache_GetOrSetFunc() {
	ctx := context.Background()
	cache := exampleCache(nil)
	defer cache.Close()

	load := func(ctx context.Context) ([]byte, error) {
		fmt.Println("computing")
		return []byte("expensive result"), nil
	}
	for range 2 {
		v, err := cache.GetOrSetFunc(ctx, "report", load, dbcache.TTL(time.Hour))
		fmt.Println(string(v), err)
	}
	// Output:
	// computing
	// expensive result <nil>
	// expensive result <nil>
}

func ExampleCache_SetMany() {
	ctx := context.Background()
	cache := exampleCache(nil)
	defer cache.Close()

	failed, err := cache.SetMany(ctx, map[string][]byte{
		"a": []byte("1"),
		"b": []byte("2"),
	}, dbcache.DefaultTimeout)
	fmt.Println(failed, err)

	got, _ := cache.GetMany(ctx, []string{"a", "b", "c"})
	fmt.Println(len(got), string(got["a"]), string(got["b"]))

	n, _ := cache.DeleteMany(ctx, []string{"a", "b", "c"})
	fmt.Println(n)
	// Output:
	// [] <nil>
	// 2 1 2
	// 2
}

func ExampleCache_WithVersion() {
	ctx := context.Background()
	cache := exampleCache(nil)
	defer cache.Close()

	_ = cache.Set(ctx, "schema", []byte("v1 layout"), dbcache.DefaultTimeout)
	_, err := cache.WithVersion(2).Get(ctx, "schema")
	fmt.Println(errors.Is(err, dbcache.ErrMiss))

	// Move the entry to the next version, value and expiry intact.
	v, _ := cache.IncrVersion(ctx, "schema", 1)
	got, _ := cache.WithVersion(v).Get(ctx, "schema")
	fmt.Println(v, string(got))
	// Output:
	// true
	// 2 v1 layout
}

func ExampleTTL() {
	ctx := context.Background()
	cache := exampleCache(nil)
	defer cache.Close()

	_ = cache.Set(ctx, "a", []byte("x"), dbcache.DefaultTimeout) // Config.DefaultTimeout: 300 s
	_ = cache.Set(ctx, "b", []byte("x"), dbcache.Forever)        // never expires
	_ = cache.Set(ctx, "c", []byte("x"), dbcache.TTL(0))         // expires at once

	for _, k := range []string{"a", "b", "c"} {
		ok, _ := cache.HasKey(ctx, k)
		fmt.Println(k, ok)
	}
	// Output:
	// a true
	// b true
	// c false
}

func ExampleCache_WithTx() {
	ctx := context.Background()
	pool := dbtest.ExamplePool()
	cache, _ := dbcache.New(ctx, pool, nil)
	defer cache.Close()

	// The cache write commits or rolls back with the application's own.
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		// … the application's writes on tx …
		return cache.WithTx(tx).Set(ctx, "user:42", []byte("fresh"), dbcache.DefaultTimeout)
	})
	v, _ := cache.Get(ctx, "user:42")
	fmt.Println(string(v), err)
	// Output: fresh <nil>
}

func ExampleConfig_keyCheck() {
	ctx := context.Background()
	cache := exampleCache(&dbcache.Config{
		KeyCheck: dbcache.KeyCheckError, // refuse keys memcached could not store
		Logger:   slog.New(slog.DiscardHandler),
	})
	defer cache.Close()

	err := cache.Set(ctx, "has spaces", []byte("x"), dbcache.DefaultTimeout)
	fmt.Println(errors.Is(err, dbcache.ErrInvalidKey))
	err = cache.Set(ctx, "nul\x00byte", []byte("x"), dbcache.DefaultTimeout)
	fmt.Println(err)
	// Output:
	// true
	// dbcache: invalid key "nul\x00byte": contains a NUL byte (PostgreSQL text cannot hold it)
}
