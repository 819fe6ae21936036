package ratelimit_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// modules lists the modules (other than dbcache's own) whose packages
// pkg's build compiles.
func modules(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if .Module}}{{.Module.Path}}{{end}}", pkg).Output()
	require.NoError(t, err, "go list -deps %s", pkg)
	var mods []string
	for _, m := range strings.Fields(string(out)) {
		if m != "github.com/dbcache/dbcache" && !slices.Contains(mods, m) {
			mods = append(mods, m)
		}
	}
	slices.Sort(mods)
	return mods
}

// The README's "What your build pulls in" is true for ratelimit: pgx and
// what pgx needs, nothing else (no metrics library, no Redis client).
func TestDependencies(t *testing.T) {
	t.Parallel()
	require.Equal(t, []string{
		"github.com/jackc/pgpassfile", "github.com/jackc/pgservicefile", "github.com/jackc/pgx/v5",
		"github.com/jackc/puddle/v2", "golang.org/x/sync", "golang.org/x/text",
	}, modules(t, "github.com/dbcache/dbcache/ratelimit"))
}
