package coherence_test

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/pgserver"
)

// The histories need logical decoding, which PostgreSQL's defaults (and so
// dbtest's shared server) do not give: the package starts a throwaway
// server of its own with wal_level = logical, and the synchronous
// replication case a primary and a streaming standby of its own, from the
// installed PostgreSQL (a standby needs its primary's directory). The
// writer and reader processes are this test binary in a role.

var logicalSettings = map[string]string{
	"wal_level":             "logical",
	"max_wal_senders":       "32",
	"max_replication_slots": "32",
	"max_connections":       "200",
}

var server *pgserver.Server

func TestMain(m *testing.M) {
	if code, ok := dbtest.RunRole(); ok {
		os.Exit(code)
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*pgserver.DefaultStartTimeout)
	defer cancel()
	var err error
	server, err = pgserver.Start(ctx, pgserver.Config{Kind: pgserver.Installed, Database: "coherence", Settings: logicalSettings})
	if err != nil {
		fmt.Fprintf(os.Stderr, "coherence tests: %v\n", err)
		return 1
	}
	defer func() { _ = server.Remove(context.Background()) }()
	return m.Run()
}
