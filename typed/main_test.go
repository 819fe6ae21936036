package typed_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

// testBundle is one test's byte-level cache (on a schema of its own) and
// what it logged.
type testBundle struct {
	store *dbcache.Cache
	logs  *dbtest.LogBuffer
	log   *slog.Logger
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	pool := dbtest.Pool(t)
	logs := &dbtest.LogBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	store, err := dbcache.New(context.Background(), pool, &dbcache.Config{Logger: log})
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	return &testBundle{store: store, logs: logs, log: log}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}
