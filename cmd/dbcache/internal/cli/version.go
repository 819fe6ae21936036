package cli

import (
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dbcache/dbcache/migrations"
)

// buildVersion is what `dbcache version` reports. Its JSON form is the
// --json output.
type buildVersion struct {
	// Version is the main module's version: the tag for `go install
	// …@v1.2.3`, a pseudo-version for a build from a checkout, or "(devel)".
	Version string `json:"version"`
	// Revision is the VCS commit the binary was built from, Time its commit
	// time and Modified whether the working tree had changes; empty (and
	// false) when the build recorded no VCS information.
	Revision string `json:"revision"`
	Time     string `json:"revision_time,omitempty"`
	Modified bool   `json:"modified"`
	// Go is the toolchain that built the binary.
	Go string `json:"go"`
	// SchemaLatest is the latest migration the binary carries.
	SchemaLatest uint `json:"schema_latest"`
}

// readBuildVersion reads the version from the build information Go embeds
// in every binary (runtime/debug.ReadBuildInfo).
func readBuildVersion(bi *debug.BuildInfo, ok bool) buildVersion {
	v := buildVersion{Version: "(devel)", Go: runtime.Version(), SchemaLatest: migrations.Latest()}
	if !ok || bi == nil {
		return v
	}
	if bi.Main.Version != "" {
		v.Version = bi.Main.Version
	}
	if bi.GoVersion != "" {
		v.Go = bi.GoVersion
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

// String is the one-line form: "dbcache v1.2.3 (commit 0123456789ab,
// modified), go1.26.8, schema version 2".
func (v buildVersion) String() string {
	var b strings.Builder
	b.WriteString("dbcache " + v.Version)
	if v.Revision != "" {
		b.WriteString(" (commit " + v.Revision[:min(12, len(v.Revision))])
		if v.Modified {
			b.WriteString(", modified")
		}
		b.WriteString(")")
	}
	b.WriteString(", " + v.Go + ", schema version ")
	b.WriteString(strconv.FormatUint(uint64(v.SchemaLatest), 10))
	return b.String()
}

// printVersion prints the binary's version, as `dbcache version` and
// `dbcache --version` do.
func (a *app) printVersion() error {
	v := readBuildVersion(debug.ReadBuildInfo())
	if a.g.json {
		return a.writeJSON(v)
	}
	a.println("%s", v)
	return nil
}

func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the command's version and the schema version it migrates to",
		Long: `Print the version of this binary: its module version (the tag it was
installed at, a pseudo-version for a build from a checkout, or "(devel)"),
the commit it was built from and whether the tree had changes, the Go
version that built it, and the latest migration it carries. It does not
connect to the database; "dbcache migrate version" reports the database's.
"dbcache --version" prints the same.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error { return a.printVersion() },
	}
}
