package main

import (
	"context"
	"os"
	"testing"

	"github.com/dbcache/dbcache/internal/dbtest"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

func Example() {
	if err := run(context.Background(), os.Getenv("DATABASE_URL")); err != nil {
		panic(err)
	}
	// Output:
	// Ann 2
	// true
}
