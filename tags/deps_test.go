package tags_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// docs/modules.md is true for tags: pgx and what pgx needs, nothing else
// (no gocache: that is gocachestore's).
func TestDependencies(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if .Module}}{{.Module.Path}}{{end}}", "github.com/dbcache/dbcache/tags").Output()
	require.NoError(t, err)
	var mods []string
	for _, m := range strings.Fields(string(out)) {
		if m != "github.com/dbcache/dbcache" && !slices.Contains(mods, m) {
			mods = append(mods, m)
		}
	}
	slices.Sort(mods)
	require.Equal(t, []string{
		"github.com/jackc/pgpassfile", "github.com/jackc/pgservicefile", "github.com/jackc/pgx/v5",
		"github.com/jackc/puddle/v2", "golang.org/x/sync", "golang.org/x/text",
	}, mods)
}
