package migrations_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// The previous release's statements, captured from its server log
// (testdata/compat/README.md), each with the parameters of one execution.
type previousStatement struct {
	SQL    string    `json:"sql"`
	Params []*string `json:"params"`
}

func previousStatements(t *testing.T) []previousStatement {
	t.Helper()
	files, err := filepath.Glob("testdata/compat/*-statements.json")
	require.NoError(t, err)
	require.NotEmpty(t, files, "no fixture of the previous release's statements")
	var all []previousStatement
	for _, f := range files {
		src, err := os.ReadFile(f)
		require.NoError(t, err)
		var sts []previousStatement
		require.NoError(t, json.Unmarshal(src, &sts), f)
		require.NotEmpty(t, sts, f)
		all = append(all, sts...)
	}
	return all
}

// A rolling deploy: a binary one release old keeps working against a schema
// migrated to this release. Every statement the previous release runs (the
// cache's, in every mode, and the culler's, in every form) is run against a
// schema migrated to the latest version, with the parameters it ran with,
// and must succeed; then what those statements wrote is read by this
// release's cache, and what this release writes by the previous release's
// read.
func TestPreviousReleaseAgainstThisSchema(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	newMigrator(t, s, nil)
	s.Migrate(t)
	cfg := s.PoolConfig(t)
	cfg.MaxConns = 2
	// The log shows parameters as text: sent as literals (the simple
	// protocol), each statement's own casts and contexts type them, as
	// they typed the previous release's binary parameters.
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	pool := dbtest.NewPool(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var get, set *previousStatement
	for i, st := range previousStatements(t) {
		args := make([]any, len(st.Params))
		for j, p := range st.Params {
			if p != nil {
				args[j] = *p
			}
		}
		_, err := pool.Exec(ctx, st.SQL, args...)
		require.NoError(t, err, "statement %d of the previous release:\n%s", i, st.SQL)
		if set == nil && len(st.Params) == 3 && st.Params[0] != nil && *st.Params[0] == ":1:k" && strings.HasPrefix(st.SQL, `INSERT INTO "dbcache_entries" AS t (key, value, expires) VALUES ($1, $2,`) && !strings.Contains(st.SQL, "RETURNING") {
			set = &st
		}
		if get == nil && st.SQL == `SELECT value FROM "dbcache_entries" WHERE key = $1 AND (expires IS NULL OR expires > statement_timestamp())` {
			get = &st
		}
	}
	require.NotNil(t, get, "the fixture has the previous release's Get")
	require.NotNil(t, set, "the fixture has the previous release's Set")

	// What the previous release's Set stores this release's cache reads,
	// and what this release's Set stores the previous release's Get reads.
	_, err := pool.Exec(ctx, set.SQL, ":1:f", `\x31`, nil)
	require.NoError(t, err)
	cache, err := dbcache.New(ctx, s.Pool(t), nil)
	require.NoError(t, err)
	defer cache.Close()
	v, err := cache.Get(ctx, "f")
	require.NoError(t, err, "a value the previous release wrote")
	require.Equal(t, "1", string(v))
	require.NoError(t, cache.Set(ctx, "new", []byte("written by this release"), dbcache.Forever))
	var old []byte
	require.NoError(t, pool.QueryRow(ctx, get.SQL, ":1:new").Scan(&old))
	require.Equal(t, "written by this release", string(old))
}
