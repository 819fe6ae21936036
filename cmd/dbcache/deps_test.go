package main

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// modules lists the modules (other than dbcache's own modules) whose packages
// pkg's build compiles: what `go list -deps` says a user's build pulls in.
func modules(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if .Module}}{{.Module.Path}}{{end}}", pkg).Output()
	require.NoError(t, err, "go list -deps %s", pkg)
	var mods []string
	for _, m := range strings.Fields(string(out)) {
		if !strings.HasPrefix(m, "github.com/dbcache/dbcache") && !slices.Contains(mods, m) {
			mods = append(mods, m)
		}
	}
	slices.Sort(mods)
	return mods
}

// docs/modules.md's "it compiles" column is true: the library packages
// bring pgx (and what pgx needs) only; golang-migrate comes only with
// migrations; each package with a dependency of its own brings that one;
// cobra, the progress bar and testcontainers only with the command.
func TestLibraryDependencies(t *testing.T) {
	t.Parallel()
	pgx := []string{
		"github.com/jackc/pgpassfile", "github.com/jackc/pgservicefile", "github.com/jackc/pgx/v5",
		"github.com/jackc/puddle/v2", "golang.org/x/sync", "golang.org/x/text",
	}
	for _, pkg := range []string{"github.com/dbcache/dbcache/dbcache", "github.com/dbcache/dbcache/culling",
		"github.com/dbcache/dbcache/memstore", "github.com/dbcache/dbcache/storetest"} {
		mods := modules(t, pkg)
		require.Contains(t, mods, "github.com/jackc/pgx/v5", pkg)
		for _, m := range mods {
			require.Contains(t, pgx, m, "%s pulls in %s", pkg, m)
		}
	}
	withMigrate := append([]string{"github.com/golang-migrate/migrate/v4", "github.com/jackc/pgerrcode"}, pgx...)
	mods := modules(t, "github.com/dbcache/dbcache/migrations")
	require.Contains(t, mods, "github.com/golang-migrate/migrate/v4")
	for _, m := range mods {
		require.Contains(t, withMigrate, m, "migrations pulls in %s", m)
	}
	// The other rows of docs/modules.md: each package compiles its own
	// dependency besides pgx (codec and encryption not even pgx), and
	// nothing else (the deps_test.go files of those packages did this,
	// before depguard took over their import rules).
	subset := func(pkg string, allowed ...string) []string {
		mods := modules(t, "github.com/dbcache/dbcache/"+pkg)
		for _, m := range mods {
			require.True(t, slices.ContainsFunc(allowed, func(a string) bool { return m == a || strings.HasPrefix(m, a+"/") }),
				"%s pulls in %s", pkg, m)
		}
		return mods
	}
	require.Empty(t, subset("codec"))
	require.Empty(t, subset("encryption"))
	for _, pkg := range []string{"typed", "tablestats", "multitracer", "sharded", "replicas", "ratelimit", "tags", "lock"} {
		subset(pkg, pgx...)
	}
	require.Contains(t, subset("compression", append([]string{"github.com/klauspost/compress"}, pgx...)...), "github.com/klauspost/compress")
	require.Contains(t, subset("nearcache", append([]string{"github.com/jackc/pglogrepl", "github.com/jackc/pgio", "github.com/maypok86/otter/v2"}, pgx...)...),
		"github.com/jackc/pglogrepl")
	require.Contains(t, subset("gocachestore", append([]string{"github.com/eko/gocache/lib/v4", "golang.org/x/exp"}, pgx...)...), "github.com/eko/gocache/lib/v4")
	require.Contains(t, subset("certcache", append([]string{"golang.org/x/crypto", "golang.org/x/net"}, pgx...)...), "golang.org/x/crypto")
	require.Contains(t, subset("prommetrics", append([]string{"github.com/prometheus", "github.com/beorn7/perks", "github.com/cespare/xxhash/v2",
		"github.com/munnerz/goautoneg", "golang.org/x/sys", "google.golang.org/protobuf", "go.yaml.in/yaml"}, pgx...)...), "github.com/prometheus/client_golang")
	require.Contains(t, subset("oteltrace", append([]string{"go.opentelemetry.io", "github.com/go-logr", "github.com/cespare/xxhash/v2"}, pgx...)...),
		"go.opentelemetry.io/otel/trace")

	cli := modules(t, "github.com/dbcache/dbcache/cmd/dbcache")
	for _, m := range []string{"github.com/spf13/cobra", "github.com/schollz/progressbar/v3", "github.com/testcontainers/testcontainers-go"} {
		require.Contains(t, cli, m)
	}
}

// The module has a permissive license file that pkg.go.dev and license
// scanners recognise.
func TestLicense(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../../LICENSE")
	require.NoError(t, err)
	text := string(b)
	require.True(t, strings.HasPrefix(text, "MIT License\n"), "MIT")
	require.Contains(t, text, "Copyright (c) 2026 The dbcache authors")
	require.Contains(t, text, `THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND`)
}
