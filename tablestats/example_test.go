package tablestats_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/tablestats"
)

// What a cache table holds, counted exactly (Read scans the table: an admin
// command's figure; Size is the cheap one, for a metrics scrape).
// DATABASE_URL: a migrated schema of the tests' server.
func ExampleRead() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()
	_ = cache.Set(ctx, "session:1", []byte("a"), dbcache.ExpiresIn(time.Hour))
	_ = cache.Set(ctx, "config", []byte("b"), dbcache.Forever)

	st, err := tablestats.Read(ctx, pool, "") // "": the search_path's schema
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("entries:", st.Entries, "live:", st.Live, "never expire:", st.NeverExpire)
	// Output:
	// entries: 2 live: 2 never expire: 1
}
