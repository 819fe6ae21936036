package sharded_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The sharded cache brings pgx only into a build, as the README says.
func TestDependencies(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if .Module}}{{.Module.Path}}{{end}}", "github.com/dbcache/dbcache/sharded").Output()
	require.NoError(t, err)
	pgx := []string{
		"github.com/dbcache/dbcache", "github.com/jackc/pgpassfile", "github.com/jackc/pgservicefile", "github.com/jackc/pgx/v5",
		"github.com/jackc/puddle/v2", "golang.org/x/sync", "golang.org/x/text",
	}
	for _, m := range strings.Fields(string(out)) {
		require.Contains(t, pgx, m, "sharded pulls in %s", m)
	}
}
