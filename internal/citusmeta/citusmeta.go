// Package citusmeta reads Citus's catalog for the packages that choose
// between their plain and their Citus statement forms (dbcache, culling,
// lock, tablestats): whether a table is distributed.
package citusmeta

import (
	"context"

	"github.com/jackc/pgx/v5"
)

const (
	qInstalled = `SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')`
	// pg_dist_partition exists only where the extension is installed, so
	// it is named only after qInstalled found it.
	qDistributedOID  = `SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = $1::oid)`
	qDistributedName = `SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass($1))`
)

// Querier runs one query returning one row: a pool, a connection or a
// transaction.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Distributed reports whether the citus extension is installed and the
// table named name (as the search_path resolves it; a name no table has
// is not distributed) is in pg_dist_partition. On a server without the
// extension it runs one query, which names no Citus catalog.
func Distributed(ctx context.Context, q Querier, name string) (bool, error) {
	return distributed(ctx, q, qDistributedName, name)
}

// DistributedOID is Distributed for the table with this OID.
func DistributedOID(ctx context.Context, q Querier, oid int64) (bool, error) {
	return distributed(ctx, q, qDistributedOID, oid)
}

func distributed(ctx context.Context, q Querier, sql string, table any) (bool, error) {
	var installed bool
	if err := q.QueryRow(ctx, qInstalled).Scan(&installed); err != nil || !installed {
		return false, err
	}
	var dist bool
	err := q.QueryRow(ctx, sql, table).Scan(&dist)
	return dist, err
}
