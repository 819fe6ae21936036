package coherence

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const bound = 100 // ns, in these histories

func w(key, v string, s, e int64) Op {
	return Op{Proc: "w", Kind: Write, Key: key, Value: v, Start: s, End: e, Outcome: OK}
}
func del(key string, s, e int64) Op {
	return Op{Proc: "w", Kind: Write, Key: key, Absent: true, Start: s, End: e, Outcome: OK}
}
func r(proc, key, v string, s, e int64) Op {
	return Op{Proc: proc, Kind: Read, Key: key, Value: v, Start: s, End: e}
}
func rAbsent(proc, key string, s, e int64) Op {
	return Op{Proc: proc, Kind: Read, Key: key, Absent: true, Start: s, End: e}
}

func whats(rep *Report) []string {
	var out []string
	for _, v := range rep.Violations {
		out = append(out, v.What)
	}
	return out
}

// The checker finds what it must and nothing else, on histories made by
// hand.
func TestCheck(t *testing.T) {
	t.Parallel()
	base := []Op{w("k", "1", 0, 10), w("k", "2", 20, 30)}
	cases := []struct {
		name  string
		ops   []Op
		want  []string
		stale time.Duration // the largest staleness recorded
	}{
		{"fresh", []Op{r("a", "k", "2", 31, 32), r("a", "k", "1", 15, 16), r("a", "k", "2", 25, 26)}, nil, 0},
		{"within the bound", []Op{r("a", "k", "1", 30+bound, 200)}, nil, bound},
		{"stale", []Op{r("a", "k", "1", 30+bound+1, 200)}, []string{"stale"}, bound + 1},
		{"never written", []Op{r("a", "k", "3", 40, 50)}, []string{"impossible"}, 0},
		{"before its write began", []Op{r("a", "k", "2", 12, 19)}, []string{"impossible"}, 0},
		{"absent at first", []Op{rAbsent("a", "k", -5, -1), rAbsent("a", "k", 5, 6)}, nil, 0},
		{"absent too late", []Op{rAbsent("a", "k", 10+bound+1, 300)}, []string{"stale"}, bound + 1},
		{"monotonic", []Op{r("a", "k", "2", 40, 41), r("a", "k", "1", 42, 43)}, []string{"monotonic"}, 12},
		{"monotonic across processes is not required", []Op{r("a", "k", "2", 40, 41), r("b", "k", "1", 42, 43)}, nil, 12},
		{"overlapping reads may disagree", []Op{r("a", "k", "2", 40, 45), r("a", "k", "1", 42, 43)}, nil, 12},
		{"present", []Op{{Proc: "a", Kind: Read, Key: "k", Present: true, Start: 40, End: 41}}, nil, 0},
		{"own", []Op{{Proc: "a", Kind: Own, Key: "o", Value: "1", DBAbsent: true}, {Proc: "a", Kind: Own, Key: "o", Value: "1", DBValue: "1"}}, []string{"own"}, 0},
		{"overlapping writes", []Op{w("k", "3", 25, 40), r("a", "k", "3", 50, 51)}, []string{"ambiguous"}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ops := append(append([]Op{}, base...), tc.ops...)
			rep := Check(ops, bound)
			require.Equal(t, tc.want, whats(rep), "%v", rep.Violations)
			_, _, mx := rep.Quantiles()
			require.Equal(t, tc.stale, mx)
		})
	}
}

// Unknown outcomes, deletes, expiries and touches.
func TestCheckModel(t *testing.T) {
	t.Parallel()
	unknown := w("k", "2", 20, 30)
	unknown.Outcome = Unknown
	rep := Check([]Op{w("k", "1", 0, 10), unknown, r("a", "k", "1", 1000, 1001), r("b", "k", "2", 25, 26)}, bound)
	require.Empty(t, rep.Violations, "an unknown write may be seen from its start, and never must")

	rep = Check([]Op{w("k", "1", 0, 10), del("k", 20, 30), rAbsent("a", "k", 25, 26), r("a", "k", "1", 200, 201)}, bound)
	require.Equal(t, []string{"stale"}, whats(rep))

	ttl := w("k", "1", 0, 10)
	ttl.TTL = 50
	rep = Check([]Op{ttl, rAbsent("a", "k", 55, 56), r("a", "k", "1", 40, 58), r("a", "k", "1", 60+bound+1, 400), rAbsent("b", "k", 300, 301)}, bound)
	require.Equal(t, []string{"stale"}, whats(rep), "expired by end+TTL: served past it plus the bound")
	rep = Check([]Op{ttl, rAbsent("a", "k", 20, 30)}, bound)
	require.Empty(t, rep.Violations, "absent before its expiry: the initial state, within the bound")

	// A write that replaced the entry before it could expire: no expiry.
	rep = Check([]Op{ttl, w("k", "2", 20, 30), r("a", "k", "2", 1000, 1001)}, bound)
	require.Empty(t, rep.Violations)

	touch := Op{Proc: "w", Kind: Touch, Key: "k", TTL: 50, Start: 20, End: 30, Outcome: OK}
	rep = Check([]Op{w("k", "1", 0, 10), touch, r("a", "k", "1", 60, 61), r("a", "k", "1", 80+bound+1, 400), rAbsent("a", "k", 500, 501)}, bound)
	require.Equal(t, []string{"stale"}, whats(rep), "a touch's expiry binds too")
}
