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

// The README's "What your build pulls in" is true: the library packages
// bring pgx (and what pgx needs) only; golang-migrate comes only with
// migrations; cobra, the progress bar and testcontainers only with the
// command.
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
