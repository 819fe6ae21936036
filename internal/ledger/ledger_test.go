package ledger

import (
	"slices"
	"strings"
	"testing"
)

const sample = "# Promise ledger\n\n" +
	"**3 promises: 1 attacked, 1 unattacked, 1 known broken.**\n\n" +
	"## README.md\n\n" +
	"| Promise | Tests | Attack | Status |\n" +
	"|---|---|---|---|\n" +
	"| \"a Get never hangs\" | `dbcache.TestSilentServer`, `cmd/dbcache/internal/cli.TestCull/frozen` | a frozen network | attacked |\n" +
	"| \"keys \\| values never leak\" | | | unattacked |\n" +
	"| \"copies never outlive `x|y`\" | `nearcache.TestCopyTTL` | another process | broken #21 |\n\n" +
	"## Not promises\n\n" +
	"| Sentence | Where | Why |\n" +
	"|---|---|---|\n" +
	"| \"Redis never writes\" | README.md | a description of Redis |\n"

func TestParse(t *testing.T) {
	l, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Rows) != 3 || len(l.Exempts) != 1 {
		t.Fatalf("rows %d, exempts %d", len(l.Rows), len(l.Exempts))
	}
	r := l.Rows[0]
	if r.File != "README.md" || r.Quote != "a Get never hangs" || r.Status != Attacked || len(r.Tests) != 2 {
		t.Fatalf("row 0: %+v", r)
	}
	if got := r.Tests[1]; got.Package != "cmd/dbcache/internal/cli" || got.Name != "TestCull/frozen" || got.Top() != "TestCull" {
		t.Fatalf("test ref: %+v", got)
	}
	if l.Rows[1].Quote != "keys | values never leak" || l.Rows[1].Status != Unattacked {
		t.Fatalf("row 1: %+v", l.Rows[1])
	}
	if l.Rows[2].Quote != "copies never outlive `x|y`" || l.Rows[2].Status != Broken || l.Rows[2].Issue != 21 {
		t.Fatalf("row 2: %+v", l.Rows[2])
	}
	if l.Count() != (Summary{Total: 3, Attacked: 1, Unattacked: 1, Broken: 1}) {
		t.Fatalf("count %+v", l.Count())
	}
	if l.Summary.Line != 3 || l.Summary.Total != 3 {
		t.Fatalf("summary %+v", l.Summary)
	}
}

func TestParseRefusesBadRows(t *testing.T) {
	for name, row := range map[string]string{
		"no test":       `| "x never y" | | a frozen network | attacked |`,
		"no attack":     "| \"x never y\" | `dbcache.TestX` | | attacked |",
		"bad status":    "| \"x never y\" | `dbcache.TestX` | z | proven |",
		"bad test name": `| "x never y" | dbcache.TestX | z | attacked |`,
		"not a test":    "| \"x never y\" | `dbcache.Helper` | z | attacked |",
		"too few cells": `| "x never y" | attacked |`,
		"empty promise": "| | `dbcache.TestX` | z | attacked |",
	} {
		src := "## README.md\n\n| Promise | Tests | Attack | Status |\n|---|---|---|---|\n" + row + "\n"
		if _, err := Parse(strings.NewReader(src)); err == nil {
			t.Errorf("%s: parsed %q", name, row)
		}
	}
}

func TestMarkdownSentences(t *testing.T) {
	src := "# Title\n\nA Get never hangs. It is bounded\nby OpTimeout, e.g. 5 s.\n\n" +
		"```go\nx := never() // code is not prose\n```\n\n" +
		"- at most N in flight\n- plain item\n\n" +
		"| a | b |\n|---|---|\n| exactly one | Redis always |\n"
	d := Markdown("README.md", []byte(src))
	got := d.Sentences()
	want := []string{"Title", "A Get never hangs.", "It is bounded by OpTimeout, e.g. 5 s.", "at most N in flight", "plain item", "a", "b", "exactly one", "Redis always"}
	if !slices.Equal(got, want) {
		t.Fatalf("sentences\n got %q\nwant %q", got, want)
	}
}

func TestGoPackageDoc(t *testing.T) {
	src := "// Package x is a thing. It never\n// panics.\n//\n//\tcode(never)\n//\n// A list:\n//\n//   - at most one [Cache] item\npackage x\n"
	d, ok := GoPackageDoc("x/doc.go", []byte(src))
	if !ok {
		t.Fatal("no package doc")
	}
	want := []string{"Package x is a thing.", "It never panics.", "A list:", "at most one [Cache] item"}
	if got := d.Sentences(); !slices.Equal(got, want) {
		t.Fatalf("sentences\n got %q\nwant %q", got, want)
	}
	if _, ok := GoPackageDoc("y.go", []byte("package y\n")); ok {
		t.Fatal("a file without a package doc has one")
	}
}

func TestCheckDocs(t *testing.T) {
	l, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	docs := map[string]Doc{"README.md": Markdown("README.md", []byte(
		"So a Get never hangs, ever. Keys | values never leak.\n\nRedis never writes.\n\nOur copies never outlive `x|y` here. This is always new.\n"))}
	ps := CheckDocs(l, docs)
	var msgs []string
	for _, p := range ps {
		msgs = append(msgs, p.Msg)
	}
	// The second row's quote is not in the file as written (the case of
	// "keys" differs), so that sentence is in no row, nor is "This is
	// always new.".
	if len(ps) != 3 || !strings.Contains(msgs[0], "no longer says") || !strings.Contains(msgs[1], "Keys | values") || !strings.Contains(msgs[2], "This is always new.") {
		t.Fatalf("problems: %q", msgs)
	}
}

func TestCheckRan(t *testing.T) {
	l, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	rs := NewResults("github.com/dbcache/dbcache")
	out := `{"Action":"run","Package":"github.com/dbcache/dbcache/dbcache","Test":"TestSilentServer"}
{"Action":"pass","Package":"github.com/dbcache/dbcache/dbcache","Test":"TestSilentServer"}
{"Action":"skip","Package":"github.com/dbcache/dbcache/cmd/dbcache/internal/cli","Test":"TestCull/frozen"}
`
	if err := rs.Read(strings.NewReader(out)); err != nil {
		t.Fatal(err)
	}
	ps := CheckRan(l, rs)
	if len(ps) != 1 || !strings.Contains(ps[0].Msg, "TestCull/frozen: skip") {
		t.Fatalf("problems: %v", ps)
	}
	// A second run in which it passes, and a third in which the first test
	// fails: a failure anywhere wins.
	more := `{"Action":"pass","Package":"github.com/dbcache/dbcache/cmd/dbcache/internal/cli","Test":"TestCull/frozen"}
{"Action":"fail","Package":"github.com/dbcache/dbcache/dbcache","Test":"TestSilentServer"}
`
	if err := rs.Read(strings.NewReader(more)); err != nil {
		t.Fatal(err)
	}
	ps = CheckRan(l, rs)
	if len(ps) != 1 || !strings.Contains(ps[0].Msg, "TestSilentServer: fail") {
		t.Fatalf("problems: %v", ps)
	}
}

func TestText(t *testing.T) {
	in := `{"Action":"start","Package":"p"}
{"Action":"output","Package":"p","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"output","Package":"p","Test":"TestA","Output":"noise\n"}
{"Action":"pass","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Test":"TestB","Output":"    b_test.go:3: boom\n"}
{"Action":"fail","Package":"p","Test":"TestB"}
{"Action":"output","Package":"p","Output":"FAIL\tp\t0.1s\n"}
`
	var b strings.Builder
	if err := Text(strings.NewReader(in), &b); err != nil {
		t.Fatal(err)
	}
	if got, want := b.String(), "    b_test.go:3: boom\nFAIL\tp\t0.1s\n"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}
