package nearcache_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/nearcache"
)

// A near cache in front of a dbcache.Cache, on a server with wal_level =
// logical and a migrated schema (see package migrations; DATABASE_URL: the
// tests' throwaway server, which TestMain migrates).
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	// Once per table, by a role that owns it: the publication the feed reads.
	if err := nearcache.Setup(ctx, pool, nil); err != nil {
		log.Fatal(err)
	}

	cache, err := dbcache.New(ctx, pool, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()
	near, err := nearcache.New(ctx, cache, pool, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer near.Close()

	if err := near.Set(ctx, "greeting", []byte("hello"), dbcache.ExpiresIn(time.Hour)); err != nil {
		log.Fatal(err)
	}
	// The first read fills the copy; the next ones are served from memory
	// once the feed has confirmed it is coherent (a heartbeat away).
	for near.Stats().Hits == 0 {
		v, err := near.Get(ctx, "greeting")
		if err != nil {
			log.Fatal(err)
		}
		if string(v) != "hello" {
			log.Fatalf("got %q", v)
		}
		time.Sleep(10 * time.Millisecond)
	}
	v, _ := near.Get(ctx, "greeting")
	s := near.Stats()
	fmt.Printf("%s; feed up: %v; %d entry held\n", v, s.FeedUp, s.Entries)
	// Output: hello; feed up: true; 1 entry held
}
