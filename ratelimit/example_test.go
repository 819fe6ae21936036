package ratelimit_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/ratelimit"
)

func ExampleLimiter_Allow() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	defer pool.Close()

	// Five login attempts a minute per account, shared by every replica.
	logins, err := ratelimit.New(ctx, pool, &ratelimit.Config{KeyPrefix: "login:", Name: "login"})
	if err != nil {
		panic(err)
	}
	limit := ratelimit.PerMinute(5)
	for i := range 6 {
		res, err := logins.Allow(ctx, "alice@example.com", limit)
		if err != nil {
			panic(err) // not admitted: a failed check admits nothing
		}
		if res.Allowed {
			fmt.Printf("attempt %d: allowed, %d left\n", i+1, res.Remaining)
		} else {
			// An HTTP 429's Retry-After header, in whole seconds.
			fmt.Printf("attempt %d: refused, Retry-After: %d\n", i+1, int(math.Ceil(res.RetryAfter.Seconds())))
		}
	}
	// Output:
	// attempt 1: allowed, 4 left
	// attempt 2: allowed, 3 left
	// attempt 3: allowed, 2 left
	// attempt 4: allowed, 1 left
	// attempt 5: allowed, 0 left
	// attempt 6: refused, Retry-After: 12
}

func ExampleLimiter_AllowN() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	defer pool.Close()

	// An upload budget of 100 MB an hour, spent in chunks.
	uploads, err := ratelimit.New(ctx, pool, &ratelimit.Config{KeyPrefix: "upload-mb:"})
	if err != nil {
		panic(err)
	}
	limit := ratelimit.Limit{Rate: 100, Period: time.Hour}
	for _, mb := range []int{60, 30, 20} {
		res, err := uploads.AllowN(ctx, "tenant-42", limit, mb)
		if err != nil {
			panic(err)
		}
		fmt.Printf("%d MB: allowed=%v, %d MB left\n", mb, res.Allowed, res.Remaining)
	}
	// Output:
	// 60 MB: allowed=true, 40 MB left
	// 30 MB: allowed=true, 10 MB left
	// 20 MB: allowed=false, 10 MB left
}
