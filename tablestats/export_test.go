package tablestats

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"
)

// ReadCitus and SizeCitus are Read and Size in the Citus forms whatever
// the server (the tests' forced mode, with citustest's stand-ins).
func ReadCitus(ctx context.Context, pool *pgxpool.Pool, schema string) (*Stats, error) {
	return read(ctx, pool, schema, citusOn)
}

func SizeCitus(ctx context.Context, pool *pgxpool.Pool, schema string, countLimit int) (*Sizes, error) {
	return size(ctx, pool, schema, countLimit, citusOn)
}
