package encryption_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/codec"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/encryption"
	"github.com/dbcache/dbcache/typed"
)

type Session struct {
	UserID int    `json:"user_id"`
	Token  string `json:"token"`
}

func ExampleWrap() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "example-encryption"})
	if err != nil {
		panic(err)
	}
	defer cache.Close()

	// The app's keys, from its secret store (32 bytes each: AES-256).
	key1 := encryption.Key{ID: 1, Secret: []byte("0123456789abcdef0123456789abcdef")}
	key2 := encryption.Key{ID: 2, Secret: []byte("fedcba9876543210fedcba9876543210")}

	before, _ := encryption.NewKeyring(key1)
	sessions, _ := typed.New[Session](cache, &typed.Config[Session]{Codec: encryption.Wrap(codec.JSON[Session](), before)})
	_ = sessions.Set(ctx, "session:abc", Session{UserID: 42, Token: "t0k3n"}, dbcache.ExpiresIn(time.Hour))

	// Rotation: key 2 appended, so it encrypts new writes; key 1 still reads.
	after, _ := encryption.NewKeyring(key1, key2)
	sessions, _ = typed.New[Session](cache, &typed.Config[Session]{Codec: encryption.Wrap(codec.JSON[Session](), after)})
	s, err := sessions.Get(ctx, "session:abc")
	fmt.Println(s.UserID, err)

	// In the table: ciphertext only.
	raw, _ := cache.Get(ctx, "session:abc")
	fmt.Println(len(raw) > encryption.Overhead, string(raw) != `{"user_id":42,"token":"t0k3n"}`)

	// Key 1 retired: what it encrypted no longer decrypts.
	retired, _ := encryption.NewKeyring(key2)
	sessions, _ = typed.New[Session](cache, &typed.Config[Session]{Codec: encryption.Wrap(codec.JSON[Session](), retired)})
	_, err = sessions.Get(ctx, "session:abc")
	fmt.Println(errors.Is(err, encryption.ErrDecrypt), errors.Is(err, typed.ErrDecode))
	// Output:
	// 42 <nil>
	// true true
	// true true
}
