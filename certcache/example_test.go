package certcache_test

import (
	"context"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/crypto/acme/autocert"

	"github.com/dbcache/dbcache/certcache"
)

func ExampleCache() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	defer pool.Close()

	certs, err := certcache.New(ctx, pool, nil)
	if err != nil {
		panic(err)
	}
	// Every replica's Manager uses the same table: a certificate one of
	// them obtained is served by all.
	m := &autocert.Manager{
		Prompt:     autocert.AcceptTOS,
		HostPolicy: autocert.HostWhitelist("example.com"),
		Cache:      certs,
	}
	_ = m // srv := &http.Server{Addr: ":443", TLSConfig: m.TLSConfig()}

	// What the Manager does with it.
	_, err = certs.Get(ctx, "example.com")
	fmt.Println(err == autocert.ErrCacheMiss)
	_ = certs.Put(ctx, "example.com", []byte("-----BEGIN EC PRIVATE KEY-----\n…"))
	data, _ := certs.Get(ctx, "example.com")
	fmt.Printf("%.30s\n", data)
	_ = certs.Delete(ctx, "example.com")
	_, err = certs.Get(ctx, "example.com")
	fmt.Println(err == autocert.ErrCacheMiss)
	// Output:
	// true
	// -----BEGIN EC PRIVATE KEY-----
	// true
}
