// Package ledger reads docs/promises.md, the promise ledger: every promise
// the README, docs/ and the package docs make, with the tests that try to
// break it. It checks the ledger against the tree and a run's results, so
// CI can refuse a ledger that names a test that does not exist, did not run
// or did not pass, quotes a sentence the docs no longer say, or leaves a
// promise out. It is for CI and maintainers only.
//
// The ledger's format: one section per documented file, headed by the
// file's path relative to the repository root (## nearcache/doc.go), each
// with one table:
//
//	| Promise | Tests | Attack | Status |
//	|---|---|---|---|
//	| "an exact quote" | `nearcache.TestOwnWrites`, `culling.TestX/sub` | another process writing | attacked |
//
// Status is attacked, unattacked or "broken #N" (N the issue that fixes
// it). The last section, ## Not promises, lists sentences that use a
// promise word without making a promise:
//
//	| Sentence | Where | Why |
//
// A line near the top, **N promises: A attacked, U unattacked, B known
// broken.**, counts the rows; Check recomputes it.
package ledger

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// Status is a promise's standing.
type Status int

const (
	// Attacked: at least one named test tries to break the promise.
	Attacked Status = iota
	// Unattacked: no test tries to break it yet.
	Unattacked
	// Broken: known broken, with the issue that fixes it.
	Broken
)

func (s Status) String() string {
	switch s {
	case Attacked:
		return "attacked"
	case Unattacked:
		return "unattacked"
	default:
		return "broken"
	}
}

// TestRef names one test: a package path relative to the module root, and
// a test name (with subtests after slashes).
type TestRef struct {
	Package string // "dbcache", "cmd/dbcache/internal/cli"
	Name    string // "TestAdd", "TestAdd/expired"
}

func (r TestRef) String() string { return r.Package + "." + r.Name }

// Top is the top-level test's name: what `func` declares.
func (r TestRef) Top() string {
	top, _, _ := strings.Cut(r.Name, "/")
	return top
}

// Row is one promise.
type Row struct {
	File   string // where the promise is written, relative to the root
	Line   int    // the row's line in the ledger
	Quote  string
	Tests  []TestRef
	Attack string
	Status Status
	Issue  int // with Broken
}

// Exempt is a sentence that uses a promise word but makes no promise.
type Exempt struct {
	File  string
	Line  int
	Quote string
	Why   string
}

// Summary is the ledger's count line.
type Summary struct {
	Line                                int // 0 when missing
	Total, Attacked, Unattacked, Broken int
}

func (s Summary) String() string {
	return fmt.Sprintf("**%d promises: %d attacked, %d unattacked, %d known broken.**",
		s.Total, s.Attacked, s.Unattacked, s.Broken)
}

// Ledger is a parsed docs/promises.md.
type Ledger struct {
	Rows    []Row
	Exempts []Exempt
	Summary Summary // as written
}

// Count is the summary the rows make.
func (l *Ledger) Count() Summary {
	s := Summary{Total: len(l.Rows)}
	for _, r := range l.Rows {
		switch r.Status {
		case Attacked:
			s.Attacked++
		case Unattacked:
			s.Unattacked++
		case Broken:
			s.Broken++
		}
	}
	return s
}

// NotPromises is the heading of the exemptions' section.
const NotPromises = "Not promises"

var (
	summaryRE = regexp.MustCompile(`^\*\*(\d+) promises: (\d+) attacked, (\d+) unattacked, (\d+) known broken\.\*\*$`)
	testRE    = regexp.MustCompile("^`([a-z0-9_][a-z0-9_./-]*)\\.((?:Test|Example|Fuzz)[A-Za-z0-9_]*(?:/[^`]+)?)`$")
	brokenRE  = regexp.MustCompile(`^broken #(\d+)$`)
	sectionRE = regexp.MustCompile(`^## (.+?)\s*$`)
)

// Parse reads a ledger. Errors name the ledger's line.
func Parse(r io.Reader) (*Ledger, error) {
	l := &Ledger{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<16), 1<<22)
	var (
		section string
		errs    []error
		n       int
		inTable bool // a table's header row has been read
	)
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if m := summaryRE.FindStringSubmatch(line); m != nil {
			l.Summary = Summary{Line: n, Total: atoi(m[1]), Attacked: atoi(m[2]), Unattacked: atoi(m[3]), Broken: atoi(m[4])}
			continue
		}
		if m := sectionRE.FindStringSubmatch(line); m != nil {
			section = strings.Trim(m[1], "`")
			inTable = false
			continue
		}
		if !strings.HasPrefix(line, "|") || section == "" {
			inTable = false
			continue
		}
		cells := splitRow(line)
		if !inTable || isSeparator(cells) {
			inTable = true // the header row, then its separator
			continue
		}
		if section == NotPromises {
			if len(cells) != 3 {
				errs = append(errs, fmt.Errorf("line %d: a Not promises row has 3 cells (Sentence | Where | Why), not %d", n, len(cells)))
				continue
			}
			e := Exempt{Line: n, Quote: unquote(cells[0]), File: strings.Trim(cells[1], "`"), Why: cells[2]}
			if e.Quote == "" || e.File == "" || e.Why == "" {
				errs = append(errs, fmt.Errorf("line %d: a Not promises row needs a sentence, a file and a reason", n))
				continue
			}
			l.Exempts = append(l.Exempts, e)
			continue
		}
		row, err := parseRow(section, n, cells)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		l.Rows = append(l.Rows, row)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return l, errors.Join(errs...)
}

func parseRow(file string, n int, cells []string) (Row, error) {
	if len(cells) != 4 {
		return Row{}, fmt.Errorf("line %d: a promise row has 4 cells (Promise | Tests | Attack | Status), not %d", n, len(cells))
	}
	r := Row{File: file, Line: n, Quote: unquote(cells[0]), Attack: cells[2]}
	if r.Quote == "" {
		return r, fmt.Errorf("line %d: no quoted promise", n)
	}
	switch st := strings.TrimSpace(cells[3]); {
	case st == "attacked":
		r.Status = Attacked
	case st == "unattacked":
		r.Status = Unattacked
	case brokenRE.MatchString(st):
		r.Status = Broken
		r.Issue = atoi(brokenRE.FindStringSubmatch(st)[1])
	default:
		return r, fmt.Errorf("line %d: status %q is not attacked, unattacked or \"broken #N\"", n, st)
	}
	for _, t := range strings.Split(cells[1], ",") {
		t = strings.TrimSpace(t)
		if t == "" || t == "-" || t == "–" {
			continue
		}
		m := testRE.FindStringSubmatch(t)
		if m == nil {
			return r, fmt.Errorf("line %d: %q is not a test name (`pkg/path.TestName` or `pkg.TestName/subtest`)", n, t)
		}
		r.Tests = append(r.Tests, TestRef{Package: m[1], Name: m[2]})
	}
	if r.Status == Attacked {
		if len(r.Tests) == 0 {
			return r, fmt.Errorf("line %d: an attacked promise names no test", n)
		}
		if strings.TrimSpace(r.Attack) == "" || r.Attack == "-" {
			return r, fmt.Errorf("line %d: an attacked promise says not how its tests attack it", n)
		}
	}
	return r, nil
}

// splitRow splits a table row into its cells, honouring \| and pipes
// inside backticks.
func splitRow(line string) []string {
	line = strings.TrimPrefix(line, "|")
	line = strings.TrimSuffix(line, "|")
	var (
		cells []string
		cur   strings.Builder
		code  bool
	)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\\' && i+1 < len(line) && line[i+1] == '|':
			cur.WriteByte('|')
			i++
		case c == '`':
			code = !code
			cur.WriteByte(c)
		case c == '|' && !code:
			cells = append(cells, strings.TrimSpace(cur.String()))
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	return append(cells, strings.TrimSpace(cur.String()))
}

func isSeparator(cells []string) bool {
	for _, c := range cells {
		if strings.Trim(c, ":- ") != "" {
			return false
		}
	}
	return true
}

// unquote takes a cell's quote out of its double quotes (straight or
// curly) and collapses its whitespace.
func unquote(s string) string {
	s = strings.TrimSpace(s)
	for _, q := range [][2]string{{`"`, `"`}, {"“", "”"}} {
		if strings.HasPrefix(s, q[0]) && strings.HasSuffix(s, q[1]) && len(s) >= len(q[0])+len(q[1]) {
			s = s[len(q[0]) : len(s)-len(q[1])]
			break
		}
	}
	return Normalize(s)
}

// Normalize collapses runs of whitespace to one space and drops Markdown's
// bold markers, so a quote matches however the text was wrapped.
func Normalize(s string) string {
	s = strings.ReplaceAll(s, "**", "")
	return strings.Join(strings.Fields(s), " ")
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
