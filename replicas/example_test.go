package replicas_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/replicas"
)

// Reads from standbys within a second of the primary. Here the only
// server is the tests' primary, listed as a standby too: a server not in
// recovery serves no read, so every read goes to the primary.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL")) // a migrated database
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	cache, err := replicas.New(ctx, pool, []*pgxpool.Pool{pool}, &replicas.Config{MaxLag: time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()
	if err := cache.Set(ctx, "greeting", []byte("hello"), dbcache.ExpiresIn(time.Hour)); err != nil {
		log.Fatal(err)
	}
	v, err := cache.Get(ctx, "greeting")
	if err != nil {
		log.Fatal(err)
	}
	s := cache.Stats()
	fmt.Printf("%s: %d from the primary, %d from standbys\n", v, s.PrimaryReads, s.StandbyReads)
	// Output: hello: 1 from the primary, 0 from standbys
}
