package ledger

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// Documented returns the files whose promises the ledger lists: README.md,
// every Markdown file under docs/ (but the ledger itself), and the package
// doc comment of every package outside internal/, examples/, bench/ and
// testdata.
func Documented(root string) (map[string]Doc, error) {
	docs := map[string]Doc{}
	add := func(rel string) error {
		src, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			return err
		}
		docs[rel] = Markdown(rel, src)
		return nil
	}
	if err := add("README.md"); err != nil {
		return nil, err
	}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			name := d.Name()
			if rel != "." && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") ||
				name == "internal" || name == "testdata" || name == "vendor" || name == "examples" || name == "bench") {
				return filepath.SkipDir
			}
			return nil
		}
		switch {
		case strings.HasPrefix(rel, "docs/") && strings.HasSuffix(rel, ".md") && rel != "docs/promises.md":
			return add(rel)
		case strings.HasSuffix(rel, ".go") && !strings.HasSuffix(rel, "_test.go"):
			src, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if doc, ok := GoPackageDoc(rel, src); ok {
				docs[rel] = doc
			}
		}
		return nil
	})
	return docs, err
}

// Uncovered returns, per file, the sentences of docs that use a promise
// word but that no row or exemption of l quotes.
func Uncovered(l *Ledger, docs map[string]Doc) map[string][]string {
	quotes := map[string][]string{}
	for _, r := range l.Rows {
		quotes[r.File] = append(quotes[r.File], r.Quote)
	}
	for _, e := range l.Exempts {
		quotes[e.File] = append(quotes[e.File], e.Quote)
	}
	out := map[string][]string{}
	for file, d := range docs {
		for _, s := range d.Sentences() {
			if !HasPromiseWord(s) {
				continue
			}
			covered := false
			for _, q := range quotes[file] {
				if strings.Contains(s, q) || strings.Contains(q, s) {
					covered = true
					break
				}
			}
			if !covered {
				out[file] = append(out[file], s)
			}
		}
	}
	return out
}

// Problem is one thing wrong with the ledger.
type Problem struct {
	Line int // the ledger's line, 0 when the problem is not one row's
	Msg  string
	// Uncovered marks a promise-word sentence missing from the ledger.
	Uncovered bool
}

func (p Problem) String() string {
	if p.Line == 0 {
		return p.Msg
	}
	return fmt.Sprintf("line %d: %s", p.Line, p.Msg)
}

// CheckDocs checks l against the documented files: every row's and
// exemption's file is documented and still says its quote, every
// promise-word sentence is in the ledger, and the summary line counts the
// rows.
func CheckDocs(l *Ledger, docs map[string]Doc) []Problem {
	var ps []Problem
	texts := map[string]string{}
	for f, d := range docs {
		texts[f] = d.Text()
	}
	quoted := func(line int, file, quote string) {
		text, ok := texts[file]
		switch {
		case !ok:
			ps = append(ps, Problem{Line: line, Msg: fmt.Sprintf("%s is not a documented file (README.md, docs/*.md or a public package's doc comment)", file)})
		case !strings.Contains(text, quote):
			ps = append(ps, Problem{Line: line, Msg: fmt.Sprintf("%s no longer says %q", file, quote)})
		}
	}
	for _, r := range l.Rows {
		quoted(r.Line, r.File, r.Quote)
	}
	for _, e := range l.Exempts {
		quoted(e.Line, e.File, e.Quote)
	}
	if want := l.Count(); l.Summary.Line == 0 {
		ps = append(ps, Problem{Msg: "no summary line; it should read " + want.String()})
	} else if got := l.Summary; got.Total != want.Total || got.Attacked != want.Attacked || got.Unattacked != want.Unattacked || got.Broken != want.Broken {
		ps = append(ps, Problem{Line: got.Line, Msg: "the summary should read " + want.String()})
	}
	un := Uncovered(l, docs)
	files := make([]string, 0, len(un))
	for f := range un {
		files = append(files, f)
	}
	slices.Sort(files)
	for _, f := range files {
		for _, s := range un[f] {
			ps = append(ps, Problem{Msg: fmt.Sprintf("%s: not in the ledger: %q", f, s), Uncovered: true})
		}
	}
	return ps
}

// CheckTestsExist checks that every named test is declared in its
// package's test files under root.
func CheckTestsExist(l *Ledger, root string) []Problem {
	var ps []Problem
	decls := map[string]map[string]bool{} // package → top-level test names
	for _, r := range l.Rows {
		for _, t := range r.Tests {
			names, ok := decls[t.Package]
			if !ok {
				names = testFuncs(filepath.Join(root, filepath.FromSlash(t.Package)))
				decls[t.Package] = names
			}
			if !names[t.Top()] {
				ps = append(ps, Problem{Line: r.Line, Msg: fmt.Sprintf("no func %s in %s's tests", t.Top(), t.Package)})
			}
		}
	}
	return ps
}

var testFunc = regexp.MustCompile(`(?m)^func ((?:Test|Example|Fuzz)[A-Za-z0-9_]*)\(`)

func testFuncs(dir string) map[string]bool {
	names := map[string]bool{}
	files, _ := filepath.Glob(filepath.Join(dir, "*_test.go"))
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, m := range testFunc.FindAllSubmatch(src, -1) {
			names[string(m[1])] = true
		}
	}
	return names
}

// Results are the outcomes of a run's tests, from `go test -json`.
type Results struct {
	module string
	// outcome by package (relative to the module root) and test name:
	// "pass", "fail" or "skip"; a test seen passing in one run and failing
	// in another is "fail".
	outcome map[string]map[string]string
}

// NewResults returns an empty set of results for the module path given.
func NewResults(module string) *Results {
	return &Results{module: module, outcome: map[string]map[string]string{}}
}

type event struct {
	Action  string
	Package string
	Test    string
}

// Read adds the events of one `go test -json` output.
func (rs *Results) Read(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<16), 1<<24)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var e event
		if err := json.Unmarshal(line, &e); err != nil {
			return fmt.Errorf("go test -json output: %w", err)
		}
		if e.Test == "" || (e.Action != "pass" && e.Action != "fail" && e.Action != "skip") {
			continue
		}
		pkg := strings.TrimPrefix(strings.TrimPrefix(e.Package, rs.module), "/")
		m := rs.outcome[pkg]
		if m == nil {
			m = map[string]string{}
			rs.outcome[pkg] = m
		}
		switch prev := m[e.Test]; {
		case prev == "fail":
		case prev == "pass" && e.Action == "skip":
		default:
			m[e.Test] = e.Action
		}
	}
	return sc.Err()
}

// CheckRan checks that every test an attacked row names passed in the
// results (a skipped test, or one that never ran, does not count).
func CheckRan(l *Ledger, rs *Results) []Problem {
	var ps []Problem
	for _, r := range l.Rows {
		if r.Status != Attacked {
			continue
		}
		for _, t := range r.Tests {
			switch got := rs.outcome[t.Package][t.Name]; got {
			case "pass":
			case "":
				ps = append(ps, Problem{Line: r.Line, Msg: fmt.Sprintf("%s did not run", t)})
			default:
				ps = append(ps, Problem{Line: r.Line, Msg: fmt.Sprintf("%s: %s", t, got)})
			}
		}
	}
	return ps
}

// ModulePath reads the module path from root's go.mod.
func ModulePath(root string) (string, error) {
	src, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		return "", err
	}
	for _, line := range bytes.Split(src, []byte("\n")) {
		if f := strings.Fields(string(line)); len(f) == 2 && f[0] == "module" {
			return f[1], nil
		}
	}
	return "", errors.New("go.mod names no module")
}
