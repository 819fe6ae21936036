package nearcache_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// What the README says nearcache brings into a build: pgx, pglogrepl
// (with jackc/pgio) for the feed, and otter for the local store; never
// rueidis, ristretto or go-redis, which only the benchmarks use.
func TestDependencies(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if .Module}}{{.Module.Path}}{{end}}", "github.com/dbcache/dbcache/nearcache").Output()
	require.NoError(t, err)
	var mods []string
	for _, m := range strings.Fields(string(out)) {
		if m != "github.com/dbcache/dbcache" && !slices.Contains(mods, m) {
			mods = append(mods, m)
		}
	}
	slices.Sort(mods)
	require.Equal(t, []string{
		"github.com/jackc/pgio", "github.com/jackc/pglogrepl",
		"github.com/jackc/pgpassfile", "github.com/jackc/pgservicefile", "github.com/jackc/pgx/v5", "github.com/jackc/puddle/v2",
		"github.com/maypok86/otter/v2", "golang.org/x/sync", "golang.org/x/text",
	}, mods)
}
