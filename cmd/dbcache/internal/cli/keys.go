package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/dbcache/dbcache/dbcache"
)

// KeysLimitDefault is how many keys keys lists unless --limit says
// otherwise: enough to look around a namespace, and a bound on what an
// unqualified `dbcache keys` on a large cache prints.
const KeysLimitDefault = 1000

func (a *app) keysCommand() *cobra.Command {
	var (
		cf    cacheFlags
		limit int
	)
	cmd := &cobra.Command{
		Use:   "keys [PREFIX]",
		Short: "List the keys of live entries (those that start with PREFIX)",
		Long: `List the keys of live entries that start with PREFIX (every key without
one), under the key prefix and version (--key-prefix, --key-version), as
the application wrote them: without the stored prefix and version. Keys
come in the stored keys' byte order, one per line, read a page of a
thousand at a time (never the whole table in one query, and never all in
memory), so the first lines come at once and any number can be listed.

--limit N stops after N keys (default 1000; 0 lists every key). When more
keys match, a line on stderr says so; the exit code is 0 either way, and 0
also when no key matches.

A key is printed as it is unless that could mislead on a terminal: a key
that is empty, starts with a double quote, starts or ends with a space, or
holds any character that is not printable (a control character, a tab or
newline, a zero-width or bidirectional-override character, a space other
than U+0020) is printed as a JSON string literal, in double quotes, with
those characters escaped (\n, \t, \u200b, …). Every line is therefore either
a key exactly, or a JSON string that decodes to it. --json prints every key
as such a JSON string, one per line: decoded, it is the key exactly.`,
		Example: `  dbcache keys session:
  dbcache keys --key-prefix myapp --limit 0 | wc -l
  dbcache keys user: --json | jq -r .`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if limit < 0 {
				return usagef("--limit must not be negative (0 lists every key), got %d", limit)
			}
			prefix := ""
			if len(args) == 1 {
				prefix = args[0]
			}
			o, err := a.openStore(ctx, cmd, &cf, 1)
			if err != nil {
				return err
			}
			defer o.close()
			return a.listKeys(ctx, o.keys, prefix, limit)
		},
	}
	cf.add(cmd.Flags())
	cmd.Flags().IntVar(&limit, "limit", KeysLimitDefault, "stop after this many keys (0: no limit)")
	return cmd
}

// listKeys writes the keys as they come from the library's iterator, a
// line at a time through a small buffer: the listing's memory does not grow
// with the number of keys.
func (a *app) listKeys(ctx context.Context, cache dbcache.KeyLister, prefix string, limit int) error {
	w := bufio.NewWriter(a.out)
	n, more := 0, false
	for key, err := range cache.Keys(ctx, prefix) {
		if err != nil {
			if ferr := w.Flush(); ferr != nil {
				return ferr
			}
			return prefixError(err, prefix)
		}
		if limit > 0 && n == limit {
			more = true // one more key exists: the listing is cut
			break
		}
		// Under --json every key is quoted: a JSON string that decodes to
		// the key exactly, and still shows nothing unprintable.
		if a.g.json {
			w.WriteString(quoteKey(key))
		} else {
			w.WriteString(displayKey(key))
		}
		if err := w.WriteByte('\n'); err != nil {
			return err
		}
		n++
		// On a terminal, show each page as it arrives.
		if a.cfg.OutIsTerminal && n%1000 == 0 {
			if err := w.Flush(); err != nil {
				return err
			}
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if more {
		msg := fmt.Sprintf("stopped after %s (--limit %d); more keys match: raise --limit, or --limit 0 lists them all",
			countOf(int64(limit), "key", "keys"), limit)
		if !a.g.json {
			fmt.Fprintf(a.errw, "dbcache: %s\n", msg)
			return nil
		}
		// A notice, not an error: stdout holds only keys, so it goes to
		// stderr, as one JSON object like everything there under --json.
		b, err := json.Marshal(limitNotice{Notice: "limit_reached", Message: msg, Limit: limit})
		if err != nil {
			return err
		}
		fmt.Fprintf(a.errw, "%s\n", b)
	}
	return nil
}

// limitNotice is what keys --json writes on stderr when --limit cut the
// listing short.
type limitNotice struct {
	Notice  string `json:"notice"`
	Message string `json:"message"`
	Limit   int    `json:"limit"`
}

// displayKey is key as a line of human output: the key itself when that is
// unambiguous on a terminal, else quoteKey's JSON string literal. Keys may
// hold any Unicode character but NUL: a newline would split a line, a
// carriage return or escape sequence rewrite the terminal, a zero-width or
// bidi character hide or reorder what is shown, and a trailing space
// vanish. A bare line never starts with a double quote, so a quoted line is
// always told apart from a key.
func displayKey(key string) string {
	if key == "" || key[0] == '"' || key[0] == ' ' || key[len(key)-1] == ' ' {
		return quoteKey(key)
	}
	for _, r := range key {
		if !strconv.IsPrint(r) {
			return quoteKey(key)
		}
	}
	return key
}

// quoteKey renders key as a JSON string literal that shows only printable
// characters: every character strconv.IsPrint refuses (controls, format
// characters such as U+200B and U+202E, spaces other than U+0020) and
// invalid UTF-8 are escaped, \n, \r and \t by name and the rest as \uXXXX
// (surrogate pairs above U+FFFF). A JSON decoder gives back the key exactly
// (invalid UTF-8, which a stored key never holds, becomes U+FFFD).
func quoteKey(key string) string {
	const hex = "0123456789abcdef"
	var b strings.Builder
	b.Grow(len(key) + 2)
	b.WriteByte('"')
	u := func(r rune) {
		b.WriteString(`\u`)
		for shift := 12; shift >= 0; shift -= 4 {
			b.WriteByte(hex[(r>>shift)&0xF])
		}
	}
	for i := 0; i < len(key); {
		r, size := utf8.DecodeRuneInString(key[i:])
		i += size
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == utf8.RuneError && size == 1:
			u(utf8.RuneError)
		case strconv.IsPrint(r):
			b.WriteRune(r)
		case r > 0xFFFF:
			r -= 0x10000
			u(0xD800 + (r>>10)&0x3FF)
			u(0xDC00 + r&0x3FF)
		default:
			u(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
