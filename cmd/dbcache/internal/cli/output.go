package cli

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
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

// jsonValue is a value in JSON output: text when it is valid UTF-8, base64
// otherwise, with Encoding saying which, so binary values survive the trip.
type jsonValue struct {
	Value    string `json:"value"`
	Encoding string `json:"encoding"`
}

func encodeValue(v []byte) jsonValue {
	if utf8.Valid(v) {
		return jsonValue{Value: string(v), Encoding: "utf8"}
	}
	return jsonValue{Value: base64.StdEncoding.EncodeToString(v), Encoding: "base64"}
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
