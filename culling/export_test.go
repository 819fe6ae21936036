package culling

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"
)

// CacheTable exposes cacheTable to the tests, which check it against
// migrations.Table.
const CacheTable = cacheTable

// SetCitusPageHook makes every Citus batch of c call hook with the keys it
// picked, between its page read and its delete transaction. Set it before
// the first pass.
func SetCitusPageHook(c *Culler, hook func(keys []string)) { c.citusPageHook = hook }

// EstimateSizeForms is EstimateSize in the plain forms or, with citus, the
// Citus forms, whatever the server.
func EstimateSizeForms(ctx context.Context, pool *pgxpool.Pool, samplePages int, citus bool) (*SizeEstimate, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	return estimateSizeForms(ctx, conn.Conn(), qualify("", cacheTable), samplePages, citus)
}
