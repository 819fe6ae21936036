package cli

import (
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/dbcache/dbcache/migrations"
)

func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the command's version and the schema version it migrates to",
		Long: `Print the version of this binary (its module version, or "(devel)" for a
local build, and the VCS revision when known), the Go version that built it,
and the latest migration it carries. It does not connect to the database;
"dbcache migrate version" reports the database's.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			version, revision := "(devel)", ""
			if bi, ok := debug.ReadBuildInfo(); ok {
				if bi.Main.Version != "" {
					version = bi.Main.Version
				}
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" {
						revision = s.Value
					}
				}
			}
			if a.g.json {
				return a.writeJSON(map[string]any{
					"version": version, "revision": revision, "go": runtime.Version(), "schema_latest": migrations.Latest(),
				})
			}
			rev := ""
			if revision != "" {
				rev = " (" + revision + ")"
			}
			a.println("dbcache %s%s, %s, schema version %d", version, rev, runtime.Version(), migrations.Latest())
			return nil
		},
	}
}
