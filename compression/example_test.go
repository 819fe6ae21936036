package compression_test

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/codec"
	"github.com/dbcache/dbcache/compression"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/typed"
)

type Report struct {
	Title string   `json:"title"`
	Lines []string `json:"lines"`
}

func ExampleWrap() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "example-compression"})
	if err != nil {
		panic(err)
	}
	defer cache.Close()

	zc, err := compression.New(nil) // zstd, values of 512 bytes and more
	if err != nil {
		panic(err)
	}
	reports, _ := typed.New[Report](cache, &typed.Config[Report]{Codec: compression.Wrap(codec.JSON[Report](), zc)})

	r := Report{Title: "daily", Lines: strings.Split(strings.Repeat("orders shipped on time,", 200), ",")}
	_ = reports.Set(ctx, "report:today", r, dbcache.DefaultTimeout)
	got, err := reports.Get(ctx, "report:today")
	fmt.Println(got.Title, len(got.Lines), err)

	plain, _ := codec.JSON[Report]().Encode("report:today", r)
	stored, _ := cache.Get(ctx, "report:today")
	fmt.Println(len(plain), "bytes of JSON stored in fewer than", len(plain)/20)
	fmt.Println(len(stored) < len(plain)/20)
	// Output:
	// daily 201 <nil>
	// 5030 bytes of JSON stored in fewer than 251
	// true
}
