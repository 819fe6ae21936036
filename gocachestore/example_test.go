package gocachestore_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/eko/gocache/lib/v4/cache"
	"github.com/eko/gocache/lib/v4/store"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/gocachestore"
)

// A gocache user's code, with the store's line swapped: the rest,
// tags included, is unchanged.
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	defer pool.Close()
	dbc, err := dbcache.New(ctx, pool, nil)
	if err != nil {
		panic(err)
	}
	defer dbc.Close()

	// s := redis_store.NewRedis(redisClient, store.WithExpiration(10*time.Minute))
	s, err := gocachestore.New(dbc, store.WithExpiration(10*time.Minute))
	if err != nil {
		panic(err)
	}

	c := cache.New[string](s)
	_ = c.Set(ctx, "page:home", "<html>…</html>", store.WithTags([]string{"pages"}))
	v, _ := c.Get(ctx, "page:home")
	fmt.Println(v)
	_ = c.Invalidate(ctx, store.WithInvalidateTags([]string{"pages"}))
	_, err = c.Get(ctx, "page:home")
	fmt.Println(err)
	// Output:
	// <html>…</html>
	// value not found in store
}
