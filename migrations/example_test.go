package migrations_test

import (
	"context"
	"fmt"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/migrations"
)

func ExampleMigrator() {
	ctx := context.Background()
	// An application's pool; here a fresh test schema (already migrated by
	// the test helper, so Up finds nothing to do).
	pool := dbtest.ExamplePool()

	m, err := migrations.New(pool, nil) // the schema on the pool's search_path
	if err != nil {
		panic(err)
	}
	if err := m.Up(ctx); err != nil { // safe to run at every start-up
		panic(err)
	}
	v, dirty, err := m.Version(ctx)
	fmt.Println(v == migrations.Latest(), dirty, err)
	// Output: true false <nil>
}
