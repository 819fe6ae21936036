package sharded_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/sharded"
)

// Three servers, each with a culler of its own that the shard's writes
// nudge. (The example's three "servers" are three schemas of the test
// server; an application gives three pools on three servers.)
func Example() {
	ctx := context.Background()
	var shards []sharded.Shard
	for _, name := range []string{"a", "b", "c"} {
		pool := dbtest.ExamplePool() // a pool on the server, migrated
		culler, err := culling.New(pool, &culling.Config{MaxEntries: 1_000_000, Logger: quiet})
		if err != nil {
			log.Fatal(err)
		}
		if err := culler.Start(ctx); err != nil {
			log.Fatal(err)
		}
		defer culler.Stop(context.Background())
		shards = append(shards, sharded.Shard{Name: name, Pool: pool,
			Config: &dbcache.Config{KeyPrefix: "myapp", OnWrite: culler.NoteWrites}})
	}
	cache, err := sharded.New(ctx, shards, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	items := map[string][]byte{}
	for _, k := range []string{"user:1", "user:2", "user:3", "user:4"} {
		items[k] = []byte("profile of " + k)
	}
	// One statement per shard, all at once.
	if failed, err := cache.SetMany(ctx, items, dbcache.ExpiresIn(time.Hour)); err != nil {
		log.Fatal(failed, err)
	}
	for _, k := range []string{"user:1", "user:2", "user:3", "user:4"} {
		v, err := cache.Get(ctx, k)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: %s, on shard %s\n", k, v, cache.ShardOf(k))
	}

	// Both versions of a key are on one shard: one statement.
	to, err := cache.IncrVersion(ctx, "user:3", 1)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("user:3 is at version", to, "on shard", cache.WithVersion(to).ShardOf("user:3"))

	// Keys merges every shard's, in order.
	for k, err := range cache.Keys(ctx, "user:") {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(k)
	}
	// Output:
	// user:1: profile of user:1, on shard a
	// user:2: profile of user:2, on shard b
	// user:3: profile of user:3, on shard b
	// user:4: profile of user:4, on shard b
	// user:3 is at version 2 on shard b
	// user:1
	// user:2
	// user:4
}
