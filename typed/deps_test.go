package typed_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// modules lists the modules other than dbcache's whose packages pkg's
// build compiles.
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
	return mods
}

// What the README's "Typed values, compression, encryption" and
// "Observability" sections say each package brings into a build: the
// codecs and encryption the standard library only, the typed layer and
// tablestats pgx only, compression klauspost/compress only, and metrics
// and tracing libraries only with prommetrics and oteltrace.
func TestDependencies(t *testing.T) {
	t.Parallel()
	const mod = "github.com/dbcache/dbcache/"
	pgx := []string{
		"github.com/jackc/pgpassfile", "github.com/jackc/pgservicefile", "github.com/jackc/pgx/v5",
		"github.com/jackc/puddle/v2", "golang.org/x/sync", "golang.org/x/text",
	}
	subset := func(pkg string, allowed ...string) []string {
		mods := modules(t, mod+pkg)
		for _, m := range mods {
			require.True(t, slices.ContainsFunc(allowed, func(a string) bool { return m == a || strings.HasPrefix(m, a+"/") }),
				"%s pulls in %s", pkg, m)
		}
		return mods
	}
	require.Empty(t, subset("codec"))
	require.Empty(t, subset("encryption"))
	for _, pkg := range []string{"typed", "tablestats", "multitracer"} {
		subset(pkg, pgx...)
	}
	require.Equal(t, []string{"github.com/klauspost/compress"}, subset("compression", "github.com/klauspost/compress"))
	prom := subset("prommetrics", append([]string{"github.com/prometheus", "github.com/beorn7/perks", "github.com/cespare/xxhash/v2",
		"github.com/munnerz/goautoneg", "golang.org/x/sys", "google.golang.org/protobuf"}, pgx...)...)
	require.Contains(t, prom, "github.com/prometheus/client_golang")
	otel := subset("oteltrace", append([]string{"go.opentelemetry.io", "github.com/go-logr", "github.com/cespare/xxhash/v2"}, pgx...)...)
	require.Contains(t, otel, "go.opentelemetry.io/otel/trace")
}
