package dbtest

import (
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// The examples' DSN names their schema in either DSN form, and pgx sends it
// to the server as search_path.
func TestWithSearchPath(t *testing.T) {
	t.Parallel()
	for _, dsn := range []string{
		"postgres://postgres@127.0.0.1:5432/db?sslmode=disable",
		"postgresql://u:p%40ss@127.0.0.1/db",
		"host=127.0.0.1 port=5432 user=postgres dbname=db sslmode=disable",
	} {
		got, err := withSearchPath(dsn, "dbct_1_2_3")
		require.NoError(t, err, dsn)
		cfg, err := pgx.ParseConfig(got)
		require.NoError(t, err, got)
		require.Equal(t, "dbct_1_2_3", cfg.RuntimeParams["search_path"], got)
		require.Equal(t, "db", cfg.Database, got)
	}
}
