// Command protobuf caches protobuf messages with dbcache's typed layer: a
// codec.Codec for protobuf is the few lines of Proto below, and this
// program is the only part of the module that imports
// google.golang.org/protobuf.
//
//	DATABASE_URL=postgres://… go run ./examples/protobuf
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/dbcache/dbcache/codec"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/typed"
)

// Proto is a codec.Codec for protobuf messages of type M (a generated
// message's pointer type, such as *userpb.User).
func Proto[M proto.Message]() codec.Codec[M] { return protoCodec[M]{} }

type protoCodec[M proto.Message] struct{}

func (protoCodec[M]) Encode(_ string, m M) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(m)
}

func (protoCodec[M]) Decode(_ string, data []byte) (M, error) {
	var zero M
	// ProtoReflect works on a nil message of a generated type, and New
	// makes an empty one of that type to decode into.
	m := zero.ProtoReflect().New().Interface().(M)
	if err := proto.Unmarshal(data, m); err != nil {
		return zero, fmt.Errorf("protobuf: %w", err)
	}
	return m, nil
}

func main() {
	if err := run(context.Background(), os.Getenv("DATABASE_URL")); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, dsn string) error {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return err
	}
	defer pool.Close()
	cache, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "example-protobuf"})
	if err != nil {
		return err
	}
	defer cache.Close()

	profiles, err := typed.New[*structpb.Struct](cache, &typed.Config[*structpb.Struct]{Codec: Proto[*structpb.Struct]()})
	if err != nil {
		return err
	}
	p, err := structpb.NewStruct(map[string]any{"name": "Ann", "langs": []any{"go", "sql"}})
	if err != nil {
		return err
	}
	if err := profiles.Set(ctx, "profile:1", p, dbcache.ExpiresIn(time.Hour)); err != nil {
		return err
	}
	got, err := profiles.Get(ctx, "profile:1")
	if err != nil {
		return err
	}
	fmt.Println(got.Fields["name"].GetStringValue(), len(got.Fields["langs"].GetListValue().GetValues()))

	// Bytes that are not a message of the type: a typed decode error.
	if err := cache.Set(ctx, "profile:2", []byte{0xff, 0xff}, dbcache.DefaultTimeout); err != nil {
		return err
	}
	_, err = profiles.Get(ctx, "profile:2")
	fmt.Println(errors.Is(err, typed.ErrDecode))
	return nil
}
