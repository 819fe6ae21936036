package culling_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/culling"
)

// One pass as an admin job would run it: 40 entries, 5 of them expired, a
// limit of 30.
func ExampleCuller_RunOnce() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL")) // a migrated database
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `INSERT INTO dbcache_entries (key, value, expires)
		SELECT 'k' || g, '\x00', CASE WHEN g <= 5 THEN now() - interval '1 minute'
		                              ELSE now() + g * interval '1 minute' END
		  FROM generate_series(1, 45) g`); err != nil {
		log.Fatal(err)
	}

	culler, err := culling.New(pool, &culling.Config{MaxEntries: 30})
	if err != nil {
		log.Fatal(err)
	}
	res, err := culler.RunOnce(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("expired removed %d, counted %d (exact: %v), culled %d, %d left\n",
		res.ExpiredRemoved, res.Count, res.CountExact, res.Culled, res.Remaining)

	last, err := culling.LastPass(ctx, pool, "")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("recorded passes: %d, total culled: %d\n", last.Passes, last.TotalCulled)
	// Output:
	// expired removed 5, counted 40 (exact: true), culled 13, 27 left
	// recorded passes: 1, total culled: 13
}
