package dbcache_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/benchsql"
)

// The cross-system benchmark (bench/internal/benchcmp, through internal/benchsql) keeps its own copy of the
// statements for its raw pgx baseline; it must run exactly what the cache
// runs, or the comparison means nothing.
func TestBenchcmpStatementsMatch(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	real := dbcache.Statements(b.cache)
	copied := benchsql.CacheStatements()
	require.Equal(t, real["get"], copied.Get)
	require.Equal(t, real["set"], copied.Set)
	require.Equal(t, real["add"], copied.Add)
	require.Equal(t, real["touch"], copied.Touch)
	require.Equal(t, real["incr"], copied.Incr)
	require.Equal(t, real["get_many"], copied.GetMany)
	require.Equal(t, real["set_many"], copied.SetMany)
}
