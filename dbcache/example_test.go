package dbcache_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
)

func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL")) // a migrated database
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "myapp"})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	if err := cache.Set(ctx, "greeting", []byte("hello"), dbcache.ExpiresIn(time.Minute)); err != nil {
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
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL")) // a migrated database
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "example-cache-add"})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	// Add stores only if the key is absent: a cheap distributed lock.
	first, _ := cache.Add(ctx, "lock:report", []byte("worker-1"), dbcache.ExpiresIn(30*time.Second))
	second, _ := cache.Add(ctx, "lock:report", []byte("worker-2"), dbcache.ExpiresIn(30*time.Second))
	owner, _ := cache.Get(ctx, "lock:report")
	fmt.Println(first, second, string(owner))
	// Output: true false worker-1
}

func ExampleCache_Incr() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL")) // a migrated database
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "example-cache-incr"})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	_ = cache.Set(ctx, "hits", []byte("41"), dbcache.Forever)
	n, _ := cache.Incr(ctx, "hits", 1)
	fmt.Println(n)
	n, _ = cache.Decr(ctx, "hits", 10)
	fmt.Println(n)

	_, err = cache.Incr(ctx, "missing", 1)
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
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL")) // a migrated database
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "example-cache-get-or-set-func"})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	load := func(ctx context.Context) ([]byte, error) {
		fmt.Println("computing")
		return []byte("expensive result"), nil
	}
	for range 2 {
		v, err := cache.GetOrSetFunc(ctx, "report", load, dbcache.ExpiresIn(time.Hour))
		fmt.Println(string(v), err)
	}
	// Output:
	// computing
	// expensive result <nil>
	// expensive result <nil>
}

func ExampleCache_SetMany() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL")) // a migrated database
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "example-cache-set-many"})
	if err != nil {
		log.Fatal(err)
	}
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
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL")) // a migrated database
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "example-cache-with-version"})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	_ = cache.Set(ctx, "schema", []byte("v1 layout"), dbcache.DefaultTimeout)
	_, err = cache.WithVersion(2).Get(ctx, "schema")
	fmt.Println(errors.Is(err, dbcache.ErrMiss))

	// Move the entry to the next version, value and expiry intact.
	v, _ := cache.IncrVersion(ctx, "schema", 1)
	got, _ := cache.WithVersion(v).Get(ctx, "schema")
	fmt.Println(v, string(got))
	// Output:
	// true
	// 2 v1 layout
}

func ExampleExpiresIn() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL")) // a migrated database
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "example-ttl"})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	_ = cache.Set(ctx, "a", []byte("x"), dbcache.DefaultTimeout) // Config.DefaultTimeout: 300 s
	_ = cache.Set(ctx, "b", []byte("x"), dbcache.Forever)        // never expires
	_ = cache.Set(ctx, "c", []byte("x"), dbcache.ExpiresIn(0))   // expires at once

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
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL")) // a migrated database
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "example-tx"})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	// The cache write commits or rolls back with the application's own.
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		// … the application's writes on tx …
		return cache.WithTx(tx).Set(ctx, "user:42", []byte("fresh"), dbcache.DefaultTimeout)
	})
	v, _ := cache.Get(ctx, "user:42")
	fmt.Println(string(v), err)
	// Output: fresh <nil>
}

func ExampleConfig_keyCheck() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL")) // a migrated database
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{
		KeyCheck: dbcache.KeyCheckError, // refuse keys memcached could not store
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	err = cache.Set(ctx, "has spaces", []byte("x"), dbcache.DefaultTimeout)
	fmt.Println(errors.Is(err, dbcache.ErrInvalidKey))
	err = cache.Set(ctx, "nul\x00byte", []byte("x"), dbcache.DefaultTimeout)
	fmt.Println(err)
	// Output:
	// true
	// dbcache: invalid key "nul\x00byte": contains a NUL byte (PostgreSQL text cannot hold it)
}

// Twenty goroutines miss the same key at once: the loader runs once and
// every caller gets its value. Across processes sharing the table, a
// PostgreSQL advisory lock does the same.
func ExampleCache_GetOrSetFunc_stampede() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL")) // a migrated database
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "example-stampede"})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	var runs atomic.Int64
	load := func(ctx context.Context) ([]byte, error) {
		runs.Add(1)
		time.Sleep(50 * time.Millisecond) // a slow query
		return []byte("report"), nil
	}
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := cache.GetOrSetFunc(ctx, "report", load, dbcache.ExpiresIn(time.Hour)); err != nil {
				fmt.Println(err)
			}
		})
	}
	wg.Wait()
	fmt.Println("loader runs:", runs.Load())
	// Output: loader runs: 1
}

// Stale while revalidate: fresh for a minute, then served stale for up to
// an hour while one background refresh runs.
func ExampleCache_GetOrRevalidate() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL")) // a migrated database
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "example-revalidate"})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	v, err := cache.GetOrRevalidate(ctx, "dashboard", func(context.Context) ([]byte, error) {
		return []byte("rendered"), nil
	}, time.Minute, time.Hour)
	fmt.Println(string(v), err)
	ttl, _ := cache.TTL(ctx, "dashboard")
	d, _ := ttl.Duration()
	fmt.Println(d > 60*time.Minute) // expires after fresh + stale
	// Output:
	// rendered <nil>
	// true
}

func ExampleCache_TTL() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL")) // a migrated database
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "example-cache-ttl"})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	_ = cache.Set(ctx, "session", []byte("s"), dbcache.ExpiresIn(30*time.Minute))
	_ = cache.Set(ctx, "config", []byte("c"), dbcache.Forever)

	ttl, _ := cache.TTL(ctx, "session")
	d, _ := ttl.Duration()
	fmt.Println(d > 29*time.Minute && d <= 30*time.Minute)
	ttl, _ = cache.TTL(ctx, "config")
	fmt.Println(ttl)
	_, err = cache.TTL(ctx, "nothing")
	fmt.Println(errors.Is(err, dbcache.ErrMiss))
	// Output:
	// true
	// forever
	// true
}

// A namespace: every key that starts with "user:42:" goes in one call, as
// a range scan of the key index in short batches.
func ExampleCache_DeletePrefix() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL")) // a migrated database
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "myapp"})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	_, _ = cache.SetMany(ctx, map[string][]byte{
		"user:42:profile": []byte("p"), "user:42:cart": []byte("c"), "user:7:profile": []byte("q"),
	}, dbcache.DefaultTimeout)
	n, err := cache.DeletePrefix(ctx, "user:42:")
	fmt.Println(n, err)
	for key, err := range cache.Keys(ctx, "user:") {
		if err != nil {
			fmt.Println(err)
			break
		}
		fmt.Println(key)
	}
	// Output:
	// 2 <nil>
	// user:7:profile
}

// With FailOpen, a database outage makes reads miss and writes no-ops
// instead of errors; IsTransient is the rule it applies.
func ExampleConfig_failOpen() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL")) // a migrated database
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{FailOpen: true})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	_ = cache.Set(ctx, "k", []byte("v"), dbcache.DefaultTimeout) // while the database is down: no error, nothing stored

	err = fmt.Errorf("dbcache: get: %w", &pgconn.PgError{Code: "57P01"}) // admin shutdown
	fmt.Println(dbcache.IsTransient(err))
	fmt.Println(dbcache.IsTransient(dbcache.ErrNotMigrated))
	// Output:
	// true
	// false
}

// Code that takes a Store finds what else the store can do by type
// assertion; a *Cache has every capability.
func ExampleStore_capabilities() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL")) // a migrated database
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "example-capabilities"})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	var store dbcache.Store = cache
	_ = store.Set(ctx, "session:1", []byte("a"), dbcache.ExpiresIn(time.Hour))
	_ = store.Set(ctx, "session:2", []byte("b"), dbcache.Forever)
	if r, ok := store.(dbcache.TTLReader); ok {
		ttl, _ := r.TTL(ctx, "session:2")
		fmt.Println("session:2 expires:", ttl)
	}
	if l, ok := store.(dbcache.KeyLister); ok {
		n, err := l.DeletePrefix(ctx, "session:")
		fmt.Println("deleted", n, err)
	}
	// Output:
	// session:2 expires: forever
	// deleted 2 <nil>
}

// Django's VERSION = 0 is Config.VersionZero: Version's zero value is the
// default, 1.
func ExampleConfig_versionZero() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL")) // a migrated database
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	zero, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "example-v0", VersionZero: true})
	if err != nil {
		log.Fatal(err)
	}
	defer zero.Close()
	fmt.Println(zero.MakeKey("k"), zero.WithVersion(1).MakeKey("k"))
	// Output: example-v0:0:k example-v0:1:k
}

func ExampleCache_AcquireLease() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL")) // a migrated database
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "example-lease"})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	// One holder at a time, for at most its ttl by the database's clock,
	// whatever happens to it.
	mine, err := cache.AcquireLease(ctx, "nightly-report", 30*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	theirs, _ := cache.AcquireLease(ctx, "nightly-report", 30*time.Second)
	fmt.Println(mine.Acquired, theirs.Acquired, theirs.Remaining > 0)

	extended, _ := cache.ExtendLease(ctx, "nightly-report", mine.Token, time.Minute)
	released, _ := cache.ReleaseLease(ctx, "nightly-report", mine.Token)
	fmt.Println(extended, released)
	// Output:
	// true false true
	// true true
}
