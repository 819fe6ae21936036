package coherence

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/dbcache/dbcache/internal/quantile"
)

// Violation is a read (or an Own pair) the promises rule out.
type Violation struct {
	// What: "stale" (older than a write that returned more than the bound
	// before the read began), "impossible" (a value no write had begun to
	// write by the read's end), "monotonic" (older than a read the same
	// process had finished before this one began), "own" (a process's read
	// after its own writes differs from the database), "ambiguous" (two
	// writes of one key overlap: the history is not one the model checks).
	What   string
	Op     Op
	Detail string
}

func (v Violation) String() string {
	return fmt.Sprintf("%s: %s %s key %q value %q absent %v [%d, %d]: %s", v.What, v.Op.Proc, v.Op.Kind, v.Op.Key, v.Op.Value, v.Op.Absent, v.Op.Start, v.Op.End, v.Detail)
}

// Report is what Check found.
type Report struct {
	Reads, Writes, Own int
	// Staleness is, per read, how long before it began a write newer than
	// what it returned had returned (0: it returned the newest).
	Staleness []time.Duration
	// Violations are the reads the promises rule out.
	Violations []Violation
}

// Quantiles returns the p50, p99 and maximum of the reads' staleness.
func (r *Report) Quantiles() (p50, p99, maxD time.Duration) {
	if len(r.Staleness) == 0 {
		return 0, 0, 0
	}
	return quantile.Percentile(r.Staleness, 50), quantile.Percentile(r.Staleness, 99), quantile.Percentile(r.Staleness, 100)
}

// Behind is how many reads returned something older than the newest write
// that had returned before they began (within the bound or not).
func (r *Report) Behind() int {
	n := 0
	for _, d := range r.Staleness {
		if d > 0 {
			n++
		}
	}
	return n
}

const (
	never  = math.MaxInt64 // a must time that never comes
	always = math.MinInt64 // the initial version's times
)

// version is one state of a key: what it holds, from when it may be seen
// (the write began) and from when it must (the write returned; expiry
// passed).
type version struct {
	absent    bool
	value     string
	may, must int64
}

// keyModel is one key's versions, in order, and indexes over them.
type keyModel struct {
	versions []version
	// suffixMust[j] is the earliest must of a version after j.
	suffixMust []int64
	byValue    map[string]*candidates
	absent     *candidates
	present    *candidates
}

// candidates are versions that match one kind of read, by index, with a
// lookup of the newest whose may is before a time.
type candidates struct {
	idx []int // increasing
	// byMay are idx sorted by may, with prefixMax[i] the largest index
	// among byMay[:i+1].
	byMay     []int
	prefixMax []int
}

func (c *candidates) add(j int) { c.idx = append(c.idx, j) }

func (c *candidates) finish(vs []version) {
	c.byMay = slices.Clone(c.idx)
	slices.SortStableFunc(c.byMay, func(a, b int) int { return cmp.Compare(vs[a].may, vs[b].may) })
	c.prefixMax = make([]int, len(c.byMay))
	m := -1
	for i, j := range c.byMay {
		m = max(m, j)
		c.prefixMax[i] = m
	}
}

// newest is the largest index whose may is before t, or -1.
func (c *candidates) newest(vs []version, t int64) int {
	if c == nil {
		return -1
	}
	n, _ := slices.BinarySearchFunc(c.byMay, t, func(j int, t int64) int { return cmp.Compare(vs[j].may, t) })
	if n == 0 {
		return -1
	}
	return c.prefixMax[n-1]
}

// oldestFrom is the smallest index >= from (and <= upto) whose may is
// before t, or -1.
func (c *candidates) oldestFrom(vs []version, from, upto int, t int64) int {
	i, _ := slices.BinarySearch(c.idx, from)
	for ; i < len(c.idx) && c.idx[i] <= upto; i++ {
		if vs[c.idx[i]].may < t {
			return c.idx[i]
		}
	}
	return -1
}

// Check checks ops against the model (see the package doc) with staleness
// bound bound.
func Check(ops []Op, bound time.Duration) *Report {
	rep := &Report{}
	writes := map[string][]Op{}
	reads := map[string][]Op{}
	for _, op := range ops {
		switch op.Kind {
		case Write, Touch:
			writes[op.Key] = append(writes[op.Key], op)
			rep.Writes++
		case Read:
			reads[op.Key] = append(reads[op.Key], op)
			rep.Reads++
		case Own:
			rep.Own++
			if op.Absent != op.DBAbsent || (!op.Absent && op.Value != op.DBValue) {
				rep.Violations = append(rep.Violations, Violation{What: "own", Op: op,
					Detail: fmt.Sprintf("the database holds %q (absent %v)", op.DBValue, op.DBAbsent)})
			}
		}
	}
	keys := make([]string, 0, len(reads))
	for k := range reads {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		m, amb := model(writes[k])
		rep.Violations = append(rep.Violations, amb...)
		checkKey(rep, m, reads[k], int64(bound))
	}
	return rep
}

// model builds a key's versions from its writes.
func model(ws []Op) (*keyModel, []Violation) {
	var amb []Violation
	slices.SortStableFunc(ws, func(a, b Op) int { return cmp.Compare(a.Start, b.Start) })
	vs := []version{{absent: true, may: always, must: always}}
	for i, w := range ws {
		if i > 0 && w.Start < ws[i-1].End {
			amb = append(amb, Violation{What: "ambiguous", Op: w, Detail: "overlaps the key's previous write"})
		}
		prev := vs[len(vs)-1]
		v := version{may: w.Start, must: w.End}
		if w.Outcome != OK {
			v.must = never
		}
		switch {
		case w.Kind == Touch:
			// The value stays; a touch of an absent key does nothing.
			v.absent, v.value = prev.absent, prev.value
		default:
			v.absent, v.value = w.Absent, w.Value
		}
		vs = append(vs, v)
		if w.TTL <= 0 || v.absent {
			continue
		}
		exp := version{absent: true, may: w.Start + w.TTL, must: w.End + w.TTL}
		if w.Outcome != OK {
			exp.must = never
		}
		if i+1 < len(ws) {
			next := ws[i+1]
			switch {
			case next.Outcome == OK && next.End <= exp.may:
				continue // replaced before it could expire
			case next.Outcome != OK || next.Start < exp.must:
				exp.must = never // it may or may not have expired first
			}
		}
		vs = append(vs, exp)
	}
	m := &keyModel{versions: vs, suffixMust: make([]int64, len(vs)), byValue: map[string]*candidates{},
		absent: &candidates{}, present: &candidates{}}
	next := int64(never)
	for j := len(vs) - 1; j >= 0; j-- {
		m.suffixMust[j] = next
		next = min(next, vs[j].must)
	}
	for j, v := range vs {
		if v.absent {
			m.absent.add(j)
			continue
		}
		m.present.add(j)
		c := m.byValue[v.value]
		if c == nil {
			c = &candidates{}
			m.byValue[v.value] = c
		}
		c.add(j)
	}
	m.absent.finish(vs)
	m.present.finish(vs)
	for _, c := range m.byValue {
		c.finish(vs)
	}
	return m, amb
}

// checkKey checks a key's reads.
func checkKey(rep *Report, m *keyModel, rs []Op, bound int64) {
	type span struct{ lo, hi int }
	spans := make([]span, len(rs))
	for i, r := range rs {
		c := m.present
		switch {
		case r.Absent:
			c = m.absent
		case !r.Present:
			c = m.byValue[r.Value]
		}
		hi := c.newest(m.versions, r.End)
		if hi < 0 {
			rep.Violations = append(rep.Violations, Violation{What: "impossible", Op: r, Detail: "no write of this had begun by the read's end"})
			spans[i] = span{-1, -1}
			continue
		}
		st := staleness(m, hi, r.Start)
		rep.Staleness = append(rep.Staleness, time.Duration(st))
		if st > bound {
			rep.Violations = append(rep.Violations, Violation{What: "stale", Op: r,
				Detail: fmt.Sprintf("a newer write had returned %s before the read began (bound %s)", time.Duration(st), time.Duration(bound))})
		}
		// The oldest version this read may be said to have returned
		// within the bound, for the monotonic check.
		j0, _ := slices.BinarySearchFunc(m.suffixMust, r.Start-bound, func(s, t int64) int { return cmp.Compare(s, t) })
		lo := c.oldestFrom(m.versions, j0, hi, r.End)
		if lo < 0 {
			lo = hi
		}
		spans[i] = span{lo, hi}
	}
	// Monotonic reads per process: a read must not be older than every
	// version a read of the same process that ended before it began may
	// have returned.
	byProc := map[string][]int{}
	for i, r := range rs {
		byProc[r.Proc] = append(byProc[r.Proc], i)
	}
	for _, idx := range byProc {
		byStart := slices.Clone(idx)
		slices.SortFunc(byStart, func(a, b int) int { return cmp.Compare(rs[a].Start, rs[b].Start) })
		byEnd := slices.Clone(idx)
		slices.SortFunc(byEnd, func(a, b int) int { return cmp.Compare(rs[a].End, rs[b].End) })
		floor, floorOp, e := -1, -1, 0
		for _, i := range byStart {
			for e < len(byEnd) && rs[byEnd[e]].End < rs[i].Start {
				if s := spans[byEnd[e]]; s.lo > floor {
					floor, floorOp = s.lo, byEnd[e]
				}
				e++
			}
			if spans[i].hi >= 0 && spans[i].hi < floor {
				prev := rs[floorOp]
				rep.Violations = append(rep.Violations, Violation{What: "monotonic", Op: rs[i],
					Detail: fmt.Sprintf("older than %q (absent %v), read by the same process over [%d, %d]", prev.Value, prev.Absent, prev.Start, prev.End)})
			}
		}
	}
}

// staleness is how long before start a version newer than j was bound to
// be seen (0 if none was yet).
func staleness(m *keyModel, j int, start int64) int64 {
	if s := m.suffixMust[j]; s < start {
		return start - s
	}
	return 0
}
