package cli

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/dbcache/dbcache/dbcache"
)

// writeJSON prints v as one line of JSON on Out.
func (a *app) writeJSON(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = a.out.Write(append(b, '\n'))
	return err
}

// println prints a human result line on Out.
func (a *app) println(format string, args ...any) {
	fmt.Fprintf(a.out, format+"\n", args...)
}

// writeValueJSON prints get's JSON for a found value:
// {"key":…,"found":true,"value":…,"encoding":"utf8"|"base64",
// "ttl_seconds":…,"never_expires":…}. A value that is valid UTF-8 is a JSON
// string, anything else base64, so binary values survive the trip. ttl is
// the entry's remaining lifetime (see ttlFields). The value is encoded straight onto Out, a piece at a
// time: a 300 MB value never gets a second, escaped or base64, copy in
// memory (nor the third that json.Marshal's growing buffer would make).
func (a *app) writeValueJSON(key string, v []byte, ttl dbcache.Timeout) error {
	w := bufio.NewWriterSize(a.out, 64<<10)
	k, err := json.Marshal(key)
	if err != nil {
		return err
	}
	w.WriteString(`{"key":`)
	w.Write(k)
	w.WriteString(`,"found":true,"value":"`)
	encoding := "utf8"
	if utf8.Valid(v) {
		if err := writeJSONStringBody(w, v); err != nil {
			return err
		}
	} else {
		encoding = "base64"
		enc := base64.NewEncoder(base64.StdEncoding, w)
		enc.Write(v)
		enc.Close()
	}
	w.WriteString(`","encoding":"` + encoding + `",`)
	w.WriteString(ttlFields(ttl))
	w.WriteString("}\n")
	return w.Flush()
}

// writeJSONStringBody writes valid UTF-8 v as the inside of a JSON string,
// escaped as encoding/json escapes it (HTML-safe: <, > and & as \u003c…,
// and U+2028, U+2029), straight onto w: no copy of v is made, so a large
// value costs nothing beyond itself.
func writeJSONStringBody(w *bufio.Writer, v []byte) error {
	const hex = "0123456789abcdef"
	start := 0
	for i := 0; i < len(v); {
		b := v[i]
		if b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&' {
				i++
				continue
			}
			w.Write(v[start:i])
			switch b {
			case '"', '\\':
				w.WriteByte('\\')
				w.WriteByte(b)
			case '\b':
				w.WriteString(`\b`)
			case '\f':
				w.WriteString(`\f`)
			case '\n':
				w.WriteString(`\n`)
			case '\r':
				w.WriteString(`\r`)
			case '\t':
				w.WriteString(`\t`)
			default:
				w.WriteString(`\u00`)
				w.WriteByte(hex[b>>4])
				w.WriteByte(hex[b&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(v[i:])
		if r == '\u2028' || r == '\u2029' {
			w.Write(v[start:i])
			w.WriteString(`\u202`)
			w.WriteByte(hex[r&0xF])
			start = i + size
		}
		i += size
	}
	_, err := w.Write(v[start:])
	return err
}

// humanBytes renders a byte count with a binary unit: 8192 → "8.0 KiB".
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// countOf renders n with its noun: "1 entry", "2,003 entries".
func countOf(n int64, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return humanCount(n) + " " + many
}

// humanCount renders an integer with thousands separators: 1234567 →
// "1,234,567".
func humanCount(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// roundDuration shortens a duration for people: three significant digits
// or so, never "1.234567891s".
func roundDuration(d time.Duration) time.Duration {
	switch a := max(d, -d); {
	case a >= time.Hour:
		return d.Round(time.Minute)
	case a >= time.Minute:
		return d.Round(time.Second)
	case a >= 10*time.Second:
		return d.Round(100 * time.Millisecond)
	case a >= time.Second:
		return d.Round(10 * time.Millisecond)
	case a >= 10*time.Millisecond:
		return d.Round(100 * time.Microsecond)
	case a >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	case a >= 10*time.Microsecond:
		return d.Round(100 * time.Nanosecond)
	default:
		return d
	}
}

// relative renders t against now: "in 4m59s" or "3m0s ago".
func relative(t, now time.Time) string {
	d := t.Sub(now)
	if d >= 0 {
		return "in " + roundDuration(d).String()
	}
	return roundDuration(-d).String() + " ago"
}

// timestamp renders t for a human table: UTC, to the second.
func timestamp(t time.Time) string {
	return t.UTC().Format("2006-01-02 15:04:05Z")
}
