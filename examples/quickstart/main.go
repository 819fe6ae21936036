// Command quickstart is the README's example, kept where CI builds and runs
// it (quickstart_test.go), so the README's code compiles and works:
// DATABASE_URL=postgres://… go run ./examples/quickstart
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/migrations"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := run(ctx, os.Getenv("DATABASE_URL")); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, databaseURL string) error {
	pool, err := pgxpool.New(ctx, databaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()

	// Once, at deploy or start-up: creates the cache's table in the pool's schema.
	m, err := migrations.New(pool, nil)
	if err != nil {
		return err
	}
	if err := m.Up(ctx); err != nil {
		return err
	}

	cache, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "myapp"})
	if err != nil {
		return err
	}
	defer cache.Close() // never closes your pool

	if err := cache.Set(ctx, "user:42", []byte(`{"name":"Ada"}`), dbcache.ExpiresIn(10*time.Minute)); err != nil {
		return err
	}
	v, err := cache.Get(ctx, "user:42")
	switch {
	case errors.Is(err, dbcache.ErrMiss):
		fmt.Println("not cached, or expired")
	case err != nil:
		return err
	default:
		fmt.Printf("user:42 = %s\n", v)
	}

	// The loader runs once however many callers (and processes) miss at once.
	report, err := cache.GetOrSetFunc(ctx, "report", func(ctx context.Context) ([]byte, error) {
		return []byte("expensive result"), nil
	}, dbcache.ExpiresIn(time.Hour))
	if err != nil {
		return err
	}
	fmt.Printf("report = %s\n", report)

	// In your transaction: the cache write commits or rolls back with yours.
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, err := cache.WithTx(tx).Delete(ctx, "user:42")
		return err
	})
	if err != nil {
		return err
	}
	_, err = cache.Get(ctx, "user:42")
	fmt.Println("deleted:", errors.Is(err, dbcache.ErrMiss))
	return nil
}
