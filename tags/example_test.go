package tags_test

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/tags"
)

func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, nil)
	if err != nil {
		panic(err)
	}
	defer cache.Close()
	tc, err := tags.New(cache, nil)
	if err != nil {
		panic(err)
	}

	// Two pages that show user 42, one that shows only the team.
	_ = tc.Set(ctx, "page:/profile/42", []byte("…"), dbcache.Forever, "user:42", "team:7")
	_ = tc.Set(ctx, "page:/feed/42", []byte("…"), dbcache.Forever, "user:42")
	_ = tc.Set(ctx, "page:/team/7", []byte("…"), dbcache.Forever, "team:7")

	// User 42 changed: every page carrying the tag goes, in one write.
	_ = tc.Invalidate(ctx, "user:42")
	for _, k := range []string{"page:/profile/42", "page:/feed/42", "page:/team/7"} {
		_, err := tc.Get(ctx, k)
		fmt.Println(k, errors.Is(err, dbcache.ErrMiss))
	}
	// Output:
	// page:/profile/42 true
	// page:/feed/42 true
	// page:/team/7 false
}
