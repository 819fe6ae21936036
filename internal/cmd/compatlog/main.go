// Command compatlog turns a PostgreSQL server log into the fixture of a
// release's statements that migrations' compatibility test replays against
// the next release's schema (docs/compatibility.md says when and how):
//
//	compatlog -apps compat-capture,dbcache-test < server.log > statements.json
//
// The server must log with log_statement = all and log_line_prefix =
// '%a|%p|' (application name and process ID). Each distinct statement is
// kept once, with the parameters of its first execution as text (what the
// log shows); transaction control and statements marked capture-skip (the
// capturing test's own) are left out.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strings"
)

// Statement is one captured statement and its parameters as text (nil for
// NULL).
type Statement struct {
	SQL    string    `json:"sql"`
	Params []*string `json:"params,omitempty"`
}

var (
	prefix  = regexp.MustCompile(`^([^|]*)\|(\d+)\|(LOG|DETAIL):  (.*)$`)
	execute = regexp.MustCompile(`^(?:execute [^:]+|statement): (.*)$`)
	control = regexp.MustCompile(`(?i)^\s*(begin|commit|rollback|start transaction)\b`)
)

func main() {
	apps := flag.String("apps", "", "comma-separated application names whose statements are kept")
	flag.Parse()
	keep := map[string]bool{}
	for _, a := range strings.Split(*apps, ",") {
		keep[a] = true
	}
	var (
		out     []Statement
		seen    = map[string]int{} // SQL -> index in out
		pending = map[string]int{} // pid -> index in out of its last statement awaiting parameters
		cur     *strings.Builder
		curPID  string
	)
	flush := func() {
		if cur == nil {
			return
		}
		sql := strings.TrimSpace(cur.String())
		cur = nil
		if sql == "" || control.MatchString(sql) || strings.Contains(sql, "capture-skip") {
			delete(pending, curPID)
			return
		}
		if i, ok := seen[sql]; ok {
			if out[i].Params == nil {
				pending[curPID] = i
			} else {
				delete(pending, curPID)
			}
			return
		}
		seen[sql] = len(out)
		pending[curPID] = len(out)
		out = append(out, Statement{SQL: sql})
	}
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<16), 1<<26)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "\t") {
			if cur != nil {
				cur.WriteString("\n" + line[1:])
			}
			continue
		}
		flush()
		m := prefix.FindStringSubmatch(line)
		if m == nil || !keep[m[1]] {
			continue
		}
		pid, kind, text := m[2], m[3], m[4]
		switch kind {
		case "LOG":
			if e := execute.FindStringSubmatch(text); e != nil {
				cur, curPID = &strings.Builder{}, pid
				cur.WriteString(e[1])
			}
		case "DETAIL":
			i, ok := pending[pid]
			if !ok || !strings.HasPrefix(text, "parameters: ") {
				continue
			}
			params, err := parseParams(strings.TrimPrefix(text, "parameters: "))
			if err != nil {
				fmt.Fprintf(os.Stderr, "compatlog: %v in %q\n", err, text)
				os.Exit(1)
			}
			out[i].Params = params
			delete(pending, pid)
		}
	}
	flush()
	if err := sc.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "compatlog:", err)
		os.Exit(1)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "compatlog:", err)
		os.Exit(1)
	}
}

// parseParams reads `$1 = 'a', $2 = NULL`, a quote inside a value doubled.
func parseParams(s string) ([]*string, error) {
	var out []*string
	for s != "" {
		var n int
		if _, err := fmt.Sscanf(s, "$%d = ", &n); err != nil {
			return nil, fmt.Errorf("parameter %d: %w", len(out)+1, err)
		}
		s = s[strings.Index(s, " = ")+3:]
		if strings.HasPrefix(s, "NULL") {
			out = append(out, nil)
			s = strings.TrimPrefix(s, "NULL")
		} else {
			if !strings.HasPrefix(s, "'") {
				return nil, fmt.Errorf("parameter %d: not quoted", n)
			}
			var b strings.Builder
			i := 1
			for ; i < len(s); i++ {
				if s[i] == '\'' {
					if i+1 < len(s) && s[i+1] == '\'' {
						b.WriteByte('\'')
						i++
						continue
					}
					break
				}
				b.WriteByte(s[i])
			}
			v := b.String()
			out = append(out, &v)
			s = s[i+1:]
		}
		s = strings.TrimPrefix(s, ", ")
	}
	return out, nil
}
