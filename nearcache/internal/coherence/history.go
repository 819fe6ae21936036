// Package coherence checks histories of cache operations against the near
// cache's promises: every operation of every process, recorded with its
// start and end times and its result, and a checker that finds, for each
// read, the newest write that had returned before the read began, and
// reports any read older than that by more than the staleness bound, any
// read of a value no write could have produced by then, and any read older
// than one the same process had already returned (a monotonic-read
// violation). It is how nearcache's staleness bound is attacked from
// outside: writer and reader processes (the test binary in a role) share
// nothing but the database.
//
// The model, per key: one writer at a time issues the key's writes in
// order (the cases are built so), each write a version of the key. A write
// that returned ok was applied at some instant between its start and its
// end; one whose outcome is unknown (a timeout during a standby's wait)
// may have been applied from its start, and never forces a read to see
// it. An expiring write (a TTL, a Touch) adds an absent version at its
// expiry, from start+TTL (may) to end+TTL (must). Times are the machine's
// wall clock in nanoseconds, the same for every process on one machine.
//
// The package is internal and its API may change.
package coherence

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Kind is what an operation did.
type Kind string

const (
	// Write sets Key to Value (or, with Absent, removes it).
	Write Kind = "w"
	// Touch changes Key's expiry (TTL), keeping its value.
	Touch Kind = "t"
	// Read read Key: Value, or Absent, or, with Present, some value.
	Read Kind = "r"
	// Own is a read through the layer (Value, Absent) and a read of the
	// database (DBValue, DBAbsent) of a key, made after every write of it
	// by the same process had returned with no other writer: the two must
	// agree.
	Own Kind = "o"
)

// Outcome is what became of a write.
type Outcome string

const (
	// OK: applied, between Start and End.
	OK Outcome = "ok"
	// Unknown: maybe applied, from Start on (an error or a timeout).
	Unknown Outcome = "unknown"
)

// Op is one operation.
type Op struct {
	Proc    string  `json:"p"`
	Kind    Kind    `json:"k"`
	Key     string  `json:"key"`
	Value   string  `json:"v,omitempty"`
	Absent  bool    `json:"a,omitempty"`
	Present bool    `json:"pr,omitempty"`
	TTL     int64   `json:"ttl,omitempty"` // ns; 0: never expires
	Start   int64   `json:"s"`
	End     int64   `json:"e"`
	Outcome Outcome `json:"o,omitempty"`

	DBValue  string `json:"dv,omitempty"`
	DBAbsent bool   `json:"da,omitempty"`
}

// Now is the clock histories are recorded in.
func Now() int64 { return time.Now().UnixNano() }

// Recorder collects operations, safe for concurrent use.
type Recorder struct {
	proc string
	mu   sync.Mutex
	ops  []Op
}

// NewRecorder records the operations of process proc.
func NewRecorder(proc string) *Recorder { return &Recorder{proc: proc} }

// Add records op as proc's.
func (r *Recorder) Add(op Op) {
	op.Proc = r.proc
	r.mu.Lock()
	r.ops = append(r.ops, op)
	r.mu.Unlock()
}

// Ops returns the operations recorded so far.
func (r *Recorder) Ops() []Op {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Op(nil), r.ops...)
}

// Len is how many operations were recorded.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ops)
}

// Prefix marks a history line in a process's output.
const Prefix = "op "

// WriteTo writes the operations as lines, Prefix and JSON.
func (r *Recorder) WriteTo(w io.Writer) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	bw := bufio.NewWriter(w)
	var n int64
	for _, op := range r.ops {
		b, err := json.Marshal(op)
		if err != nil {
			return n, err
		}
		m, err := fmt.Fprintf(bw, "%s%s\n", Prefix, b)
		n += int64(m)
		if err != nil {
			return n, err
		}
	}
	return n, bw.Flush()
}

// Parse reads the operations among a process's output lines (others are
// ignored).
func Parse(lines []string) ([]Op, error) {
	var ops []Op
	for _, l := range lines {
		rest, ok := strings.CutPrefix(l, Prefix)
		if !ok {
			continue
		}
		var op Op
		if err := json.Unmarshal([]byte(rest), &op); err != nil {
			return nil, fmt.Errorf("coherence: %q: %w", l, err)
		}
		ops = append(ops, op)
	}
	return ops, nil
}
