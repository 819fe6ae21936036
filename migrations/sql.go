package migrations

import (
	"context"
	"io/fs"
	"strconv"
	"strings"

	schema "github.com/dbcache/dbcache/internal/migrations"
)

// Statements splits a migration file's SQL into its statements, in order,
// as the Migrator sends them: a semicolon ends a statement only outside
// quotes, comments and dollar-quoted bodies (a DO block stays whole), and a
// part of only comments is left out. For tools that apply the files one
// statement per call.
func Statements(sql string) []string { return schema.Statements(sql) }

// Migration is one embedded migration: its version, its name and the SQL of
// each direction, for tools that show a DBA what would run (a dry run) or
// hand the SQL to someone who applies it by hand.
type Migration struct {
	// Version is the migration's number (1 for 001_…).
	Version uint
	// Name is the title part of the file names: "create_dbcache_entries".
	Name string
	// UpFile and DownFile are the file names in FS.
	UpFile, DownFile string
	// Up and Down are the files' SQL. Each file runs as one transaction
	// when the Migrator applies it, its statements (Statements) sent one
	// at a time.
	Up, Down string
}

// All returns every embedded migration, ascending by version.
func All() []Migration {
	entries, _ := fs.ReadDir(FS, ".")
	byVersion := map[uint]*Migration{}
	for _, e := range entries {
		name := e.Name()
		num, rest, ok := strings.Cut(name, "_")
		if !ok {
			continue
		}
		v, err := strconv.ParseUint(num, 10, 32)
		if err != nil {
			continue
		}
		title, dir, ok := strings.Cut(strings.TrimSuffix(rest, ".sql"), ".")
		if !ok || (dir != "up" && dir != "down") {
			continue
		}
		body, err := fs.ReadFile(FS, name)
		if err != nil {
			continue
		}
		m := byVersion[uint(v)]
		if m == nil {
			m = &Migration{Version: uint(v), Name: title}
			byVersion[uint(v)] = m
		}
		if dir == "up" {
			m.UpFile, m.Up = name, string(body)
		} else {
			m.DownFile, m.Down = name, string(body)
		}
	}
	out := make([]Migration, 0, len(byVersion))
	for _, v := range Versions() {
		if m := byVersion[v]; m != nil {
			out = append(out, *m)
		}
	}
	return out
}

// PendingMigrations returns the migrations Up would apply, in the order it
// would apply them, without running anything. It returns a *DirtyError when a
// failed migration left the schema dirty (Up would refuse to run), and
// [ErrNoSchema] as Version does.
func (m *Migrator) PendingMigrations(ctx context.Context) ([]Migration, error) {
	v, dirty, err := m.Version(ctx)
	if err != nil {
		return nil, err
	}
	if dirty {
		return nil, &DirtyError{Version: int(v)}
	}
	var out []Migration
	for _, mg := range All() {
		if mg.Version > v {
			out = append(out, mg)
		}
	}
	return out, nil
}

// DownMigrations returns the migrations Down(ctx, steps) would revert, in the
// order it would revert them (newest first), without running anything. steps
// < 1 means every applied migration, as DownAll reverts. It returns a
// *DirtyError when the schema is dirty.
func (m *Migrator) DownMigrations(ctx context.Context, steps int) ([]Migration, error) {
	v, dirty, err := m.Version(ctx)
	if err != nil {
		return nil, err
	}
	if dirty {
		return nil, &DirtyError{Version: int(v)}
	}
	all := All()
	var out []Migration
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].Version > v {
			continue
		}
		if steps >= 1 && len(out) == steps {
			break
		}
		out = append(out, all[i])
	}
	return out, nil
}
