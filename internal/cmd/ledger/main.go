// Command ledger checks docs/promises.md, the promise ledger (package
// internal/ledger), for CI and maintainers:
//
//	ledger lint                   the ledger against the tree: quotes still in their files, every
//	                              promise-word sentence listed, the summary line, tests declared
//	ledger check RESULTS.json...  lint, and every attacked promise's tests passed in those
//	                              `go test -json` outputs (a skipped or absent test fails)
//	ledger uncovered [FILE...]    the promise-word sentences no row or exemption quotes yet
//	ledger summary [-w]           the summary line the rows make (-w: write it into the ledger)
//	ledger text                   `go test -json` on stdin as `go test` would print it
//
// -partial makes lint and check count the sentences not yet in the ledger
// instead of failing on them.
//
// It runs from the repository root (or -root).
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/dbcache/dbcache/internal/ledger"
)

func main() {
	root := flag.String("root", ".", "the repository root")
	file := flag.String("ledger", "docs/promises.md", "the ledger, relative to the root")
	flag.BoolVar(&partial, "partial", false, "lint, check: count the promise-word sentences not in the ledger instead of failing on them")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: ledger [-root DIR] [-ledger FILE] lint | check RESULTS.json... | uncovered [FILE...] | summary [-w] | text")
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	args := flag.Args()[1:]
	var err error
	switch flag.Arg(0) {
	case "text":
		err = ledger.Text(os.Stdin, os.Stdout)
	case "lint":
		err = check(*root, *file, nil)
	case "check":
		if len(args) == 0 {
			err = fmt.Errorf("check needs at least one go test -json output")
			break
		}
		err = check(*root, *file, args)
	case "uncovered":
		err = uncovered(*root, *file, args)
	case "summary":
		err = summary(*root, *file, len(args) == 1 && args[0] == "-w")
	default:
		flag.Usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ledger:", err)
		os.Exit(1)
	}
}

// partial: the ledger is known to be incomplete (while it is being
// written): sentences it does not list are counted, not failed.
var partial bool

func load(root, file string) (*ledger.Ledger, map[string]ledger.Doc, error) {
	f, err := os.Open(filepath.Join(root, file))
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	l, err := ledger.Parse(f)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", file, err)
	}
	docs, err := ledger.Documented(root)
	if err != nil {
		return nil, nil, err
	}
	return l, docs, nil
}

func check(root, file string, results []string) error {
	l, docs, err := load(root, file)
	if err != nil {
		return err
	}
	ps := ledger.CheckDocs(l, docs)
	ps = append(ps, ledger.CheckTestsExist(l, root)...)
	if results != nil {
		mod, err := ledger.ModulePath(root)
		if err != nil {
			return err
		}
		rs := ledger.NewResults(mod)
		for _, r := range results {
			f, err := os.Open(r)
			if err != nil {
				return err
			}
			err = rs.Read(f)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", r, err)
			}
		}
		ps = append(ps, ledger.CheckRan(l, rs)...)
	}
	c := l.Count()
	if partial {
		n := 0
		ps = slices.DeleteFunc(ps, func(p ledger.Problem) bool {
			if p.Uncovered {
				n++
			}
			return p.Uncovered
		})
		fmt.Fprintf(os.Stderr, "ledger: -partial: %d promise-word sentences not in the ledger yet\n", n)
	}
	if len(ps) > 0 {
		for _, p := range ps {
			fmt.Fprintf(os.Stderr, "%s: %s\n", file, p)
		}
		return fmt.Errorf("%d problems in %s", len(ps), file)
	}
	what := "declared"
	if results != nil {
		what = "passed in this run"
	}
	fmt.Printf("ledger: %d promises (%d attacked, %d unattacked, %d known broken), %d sentences exempt; every attacked promise's tests %s\n",
		c.Total, c.Attacked, c.Unattacked, c.Broken, len(l.Exempts), what)
	return nil
}

func uncovered(root, file string, only []string) error {
	l, docs, err := load(root, file)
	if err != nil {
		return err
	}
	un := ledger.Uncovered(l, docs)
	files := make([]string, 0, len(un))
	for f := range un {
		if len(only) == 0 || slices.Contains(only, f) {
			files = append(files, f)
		}
	}
	slices.Sort(files)
	n := 0
	for _, f := range files {
		for _, s := range un[f] {
			fmt.Printf("%s: %s\n", f, s)
			n++
		}
	}
	fmt.Fprintf(os.Stderr, "%d sentences not in the ledger\n", n)
	return nil
}

func summary(root, file string, write bool) error {
	path := filepath.Join(root, file)
	src, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	l, err := ledger.Parse(bytes.NewReader(src))
	if err != nil {
		return err
	}
	want := l.Count().String()
	if !write {
		fmt.Println(want)
		return nil
	}
	if l.Summary.Line == 0 {
		return fmt.Errorf("%s has no summary line to rewrite", file)
	}
	lines := strings.Split(string(src), "\n")
	lines[l.Summary.Line-1] = want
	return os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o644)
}
