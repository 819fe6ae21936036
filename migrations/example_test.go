package migrations_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/migrations"
)

func ExampleMigrator() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	m, err := migrations.New(pool, nil) // the schema on the pool's search_path
	if err != nil {
		log.Fatal(err)
	}
	if err := m.Up(ctx); err != nil { // safe to run at every start-up
		log.Fatal(err)
	}
	v, dirty, err := m.Version(ctx)
	fmt.Println(v == migrations.Latest(), dirty, err)
	// Output: true false <nil>
}
