package memstore_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/memstore"
	"github.com/dbcache/dbcache/typed"
)

// Code that takes a dbcache.Store, tested without PostgreSQL: the entry
// expires when the store's clock passes it.
func Example() {
	ctx := context.Background()
	store, _ := memstore.New(nil)
	defer store.Close()

	type User struct{ Name string }
	users, _ := typed.New[User](store, nil)
	_ = users.Set(ctx, "user:1", User{Name: "Ann"}, dbcache.ExpiresIn(time.Hour))
	u, err := users.Get(ctx, "user:1")
	fmt.Println(u.Name, err)

	store.FastForward(time.Hour)
	_, err = users.Get(ctx, "user:1")
	fmt.Println(errors.Is(err, dbcache.ErrMiss))
	// Output:
	// Ann <nil>
	// true
}
