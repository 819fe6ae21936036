package typed_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/codec"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/typed"
)

type User struct {
	ID   int    `json:"id"`
	Name string `json:"name"`
}

// exampleStore is what an application does at start-up: a pool on
// DATABASE_URL (migrated: `dbcache migrate up`) and a cache over it.
func exampleStore(prefix string) (*pgxpool.Pool, *dbcache.Cache) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: prefix})
	if err != nil {
		panic(err)
	}
	return pool, cache
}

func Example() {
	ctx := context.Background()
	pool, cache := exampleStore("example-typed")
	defer pool.Close()
	defer cache.Close()

	users, err := typed.New[User](cache, nil) // JSON
	if err != nil {
		panic(err)
	}
	if err := users.Set(ctx, "user:42", User{ID: 42, Name: "Ann"}, dbcache.ExpiresIn(time.Hour)); err != nil {
		panic(err)
	}
	u, err := users.Get(ctx, "user:42")
	fmt.Printf("%+v %v\n", u, err)

	_, _ = cache.Delete(ctx, "user:43")
	_, err = users.Get(ctx, "user:43")
	fmt.Println(errors.Is(err, dbcache.ErrMiss))
	// Output:
	// {ID:42 Name:Ann} <nil>
	// true
}

func ExampleCache_GetOrSetFunc() {
	ctx := context.Background()
	pool, cache := exampleStore("example-typed-load")
	defer pool.Close()
	defer cache.Close()
	_, _ = cache.Delete(ctx, "user:7")

	users, _ := typed.New[User](cache, nil)
	load := func(ctx context.Context) (User, error) {
		fmt.Println("loading user 7")
		return User{ID: 7, Name: "Bob"}, nil // a query, an HTTP call, …
	}
	u, err := users.GetOrSetFunc(ctx, "user:7", load, dbcache.ExpiresIn(time.Hour))
	fmt.Println(u.Name, err)
	u, err = users.GetOrSetFunc(ctx, "user:7", load, dbcache.ExpiresIn(time.Hour)) // a hit: no load
	fmt.Println(u.Name, err)
	// Output:
	// loading user 7
	// Bob <nil>
	// Bob <nil>
}

func ExampleCache_GetOrRevalidate() {
	ctx := context.Background()
	pool, cache := exampleStore("example-typed-revalidate")
	defer pool.Close()
	defer cache.Close()
	_, _ = cache.Delete(ctx, "user:8")

	users, _ := typed.New[User](cache, nil)
	load := func(ctx context.Context) (User, error) {
		fmt.Println("loading user 8")
		return User{ID: 8, Name: "Cy"}, nil
	}
	// Fresh for a minute, then served stale for up to an hour while one
	// background load refreshes it.
	u, err := users.GetOrRevalidate(ctx, "user:8", load, time.Minute, time.Hour)
	fmt.Println(u.Name, err)
	u, err = users.GetOrRevalidate(ctx, "user:8", load, time.Minute, time.Hour) // fresh: no load
	fmt.Println(u.Name, err)
	// Output:
	// loading user 8
	// Cy <nil>
	// Cy <nil>
}

// Counters are the byte API's decimal integers, which Incr reads, whatever
// codec the typed caches of the same store use.
func ExampleCounter() {
	ctx := context.Background()
	pool, cache := exampleStore("example-typed-counter")
	defer pool.Close()
	defer cache.Close()
	_, _ = cache.Delete(ctx, "visits")

	visits, _ := typed.NewCounter(cache)
	_, _ = visits.Add(ctx, "visits", 0, dbcache.Forever)
	n, err := visits.Incr(ctx, "visits", 1)
	fmt.Println(n, err)
	n, err = visits.Get(ctx, "visits")
	fmt.Println(n, err)
	// Output:
	// 1 <nil>
	// 1 <nil>
}

// A value stored by an older version of the type no longer decodes: a
// *DecodeError the caller can branch on, or, with MissOnDecodeError, a
// miss that GetOrSetFunc reloads.
func ExampleDecodeError() {
	ctx := context.Background()
	pool, cache := exampleStore("example-typed-decode")
	defer pool.Close()
	defer cache.Close()
	// Written by the previous release, whose ID was a number.
	_ = cache.Set(ctx, "user:1", []byte(`{"id":1,"name":"Ann"}`), dbcache.DefaultTimeout)

	type UserV2 struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	}
	strict, _ := typed.New[UserV2](cache, nil)
	_, err := strict.Get(ctx, "user:1")
	var de *typed.DecodeError
	fmt.Println(errors.Is(err, typed.ErrDecode), errors.As(err, &de) && de.Key == "user:1")

	lenient, _ := typed.New[UserV2](cache, &typed.Config[UserV2]{MissOnDecodeError: true})
	_, err = lenient.Get(ctx, "user:1")
	fmt.Println(errors.Is(err, dbcache.ErrMiss))
	u, err := lenient.GetOrSetFunc(ctx, "user:1", func(context.Context) (UserV2, error) {
		return UserV2{ID: "u-1", Name: "Ann"}, nil
	}, dbcache.DefaultTimeout)
	fmt.Println(u.ID, err)
	// Output:
	// true true
	// true
	// u-1 <nil>
}

func ExampleConfig_gob() {
	ctx := context.Background()
	pool, cache := exampleStore("example-typed-gob")
	defer pool.Close()
	defer cache.Close()

	users, _ := typed.New[User](cache, &typed.Config[User]{Codec: codec.Gob[User]()})
	_ = users.Set(ctx, "user:1", User{ID: 1, Name: "Ann"}, dbcache.DefaultTimeout)
	many, _ := users.GetMany(ctx, []string{"user:1", "user:2"})
	fmt.Println(len(many), many["user:1"].Name)
	// Output: 1 Ann
}
