// Package exampledb gives Example functions the database an application
// would have: DATABASE_URL. Examples read os.Getenv("DATABASE_URL") and
// nothing else, as the README's code does; when the variable is unset,
// Setup points it at a fresh, migrated schema of the test server
// (internal/dbtest), so `go test` runs the examples anywhere the tests run.
// For tests only.
package exampledb

import (
	"net/url"
	"os"
	"strings"

	"github.com/dbcache/dbcache/internal/dbtest"
)

// Setup sets DATABASE_URL, unless it is set already, to the test server
// with search_path on a fresh migrated schema. Call it from TestMain before
// dbtest.Main, which drops the schema at the end of the run. It panics when
// no server can be had, which fails the package's run.
func Setup() {
	if os.Getenv("DATABASE_URL") != "" {
		return
	}
	pool := dbtest.ExamplePool()
	cfg := pool.Config()
	schema := cfg.ConnConfig.RuntimeParams["search_path"]
	dsn := cfg.ConnString()
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		dsn = u.String()
	} else {
		dsn = strings.TrimSpace(dsn) + " search_path=" + schema
	}
	_ = os.Setenv("DATABASE_URL", dsn)
}
