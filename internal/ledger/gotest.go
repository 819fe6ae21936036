package ledger

import (
	"bufio"
	"encoding/json"
	"io"
	"strings"
)

// Text reads `go test -json` from r and writes to w what `go test` without
// -json would have printed: each package's result line, build errors, and
// the output of failed tests (passing tests' output, which -json always
// carries, is dropped). A line that is not JSON is copied as it is.
func Text(r io.Reader, w io.Writer) error {
	type key struct{ pkg, test string }
	var (
		buf = map[key]*strings.Builder{}
		sc  = bufio.NewScanner(r)
	)
	sc.Buffer(make([]byte, 1<<16), 1<<24)
	for sc.Scan() {
		line := sc.Bytes()
		var e struct {
			Action, Package, Test, Output string
		}
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			if _, err := w.Write(append(line, '\n')); err != nil {
				return err
			}
			continue
		}
		switch {
		case e.Action == "build-output":
			io.WriteString(w, e.Output)
		case e.Test == "" && e.Action == "output":
			if !strings.HasPrefix(e.Output, "=== ") && e.Output != "PASS\n" {
				io.WriteString(w, e.Output)
			}
		case e.Action == "output":
			k := key{e.Package, e.Test}
			b := buf[k]
			if b == nil {
				b = &strings.Builder{}
				buf[k] = b
			}
			b.WriteString(e.Output)
		case e.Action == "fail" && e.Test != "":
			if b := buf[key{e.Package, e.Test}]; b != nil {
				io.WriteString(w, b.String())
			}
			delete(buf, key{e.Package, e.Test})
		case e.Action == "pass" || e.Action == "skip":
			delete(buf, key{e.Package, e.Test})
		}
	}
	return sc.Err()
}
