package migrations

import (
	"io/fs"
	"strings"
	"testing"
)

func TestStatements(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"-- only a comment\n", nil},
		{"SELECT 1", []string{"SELECT 1"}},
		{"SELECT 1;\n\nSELECT 2;\n-- trailing\n", []string{"SELECT 1", "SELECT 2"}},
		{"SELECT ';'; SELECT 'it''s;'", []string{"SELECT ';'", "SELECT 'it''s;'"}},
		{`SELECT E'\';'; SELECT 2`, []string{`SELECT E'\';'`, "SELECT 2"}},
		{`SELECT 'a\'; SELECT 2`, []string{`SELECT 'a\'`, "SELECT 2"}},
		{`SELECT 1 AS ";x"; SELECT 2`, []string{`SELECT 1 AS ";x"`, "SELECT 2"}},
		{"DO $$\nBEGIN\n  PERFORM 1;\nEND\n$$;\nSELECT 2;", []string{"DO $$\nBEGIN\n  PERFORM 1;\nEND\n$$", "SELECT 2"}},
		{"DO $body$ BEGIN PERFORM '$$;'; END $body$; SELECT 2", []string{"DO $body$ BEGIN PERFORM '$$;'; END $body$", "SELECT 2"}},
		{"SELECT $1::int; SELECT 2", []string{"SELECT $1::int", "SELECT 2"}},
		{"/* a; /* nested; */ still; */ SELECT 1; -- x; y\nSELECT 2", []string{"/* a; /* nested; */ still; */ SELECT 1", "-- x; y\nSELECT 2"}},
		{";;\n;", nil},
	}
	for _, c := range cases {
		got := Statements(c.in)
		if strings.Join(got, "\x00") != strings.Join(c.want, "\x00") || len(got) != len(c.want) {
			t.Errorf("Statements(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// Every embedded file splits into statements of which none is empty and
// none holds a semicolon outside a DO block's body; the files of several
// statements are those the docs name (docs/schema.md).
func TestStatementsOfEmbeddedFiles(t *testing.T) {
	t.Parallel()
	want := map[string]int{
		"001_create_dbcache_entries.up.sql":              2,
		"003_index_dbcache_entries_expires_key.up.sql":   3,
		"003_index_dbcache_entries_expires_key.down.sql": 2,
		"004_add_dbcache_entries_written_at.up.sql":      3,
		"004_add_dbcache_entries_written_at.down.sql":    3,
		"005_index_dbcache_entries_written_at.up.sql":    2,
		"009_add_dbcache_entries_token.up.sql":           3,
		"009_add_dbcache_entries_token.down.sql":         2,
	}
	names, err := fs.Glob(FS, "*.sql")
	if err != nil || len(names) == 0 {
		t.Fatalf("no files: %v", err)
	}
	for _, name := range names {
		b, err := fs.ReadFile(FS, name)
		if err != nil {
			t.Fatal(err)
		}
		sts := Statements(string(b))
		n := want[name]
		if n == 0 {
			n = 1
		}
		if len(sts) != n {
			t.Errorf("%s: %d statements, want %d: %q", name, len(sts), n, sts)
		}
		for _, st := range sts {
			if st == "" || (!strings.HasPrefix(strings.TrimSpace(stripComments(st)), "DO $$") && strings.Contains(stripComments(st), ";")) {
				t.Errorf("%s: bad statement %q", name, st)
			}
		}
	}
}

func stripComments(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		if i := strings.Index(line, "--"); i >= 0 {
			line = line[:i]
		}
		b.WriteString(line)
		b.WriteString("\n")
	}
	return b.String()
}
