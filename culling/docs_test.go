package culling_test

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/culling"
)

// docs/culling.md's configuration table gives every default as its
// constant and value (`SizeSamplePagesDefault` = 2,000); each value is the
// constant's, and every default constant is in the table. (The table gave
// SizeSamplePagesDefault as 500 after the code had moved to 2,000.)
func TestDocDefaults(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../docs/culling.md")
	require.NoError(t, err)
	want := map[string]string{
		"BatchSizeDefault":       strconv.Itoa(culling.BatchSizeDefault),
		"CullFrequencyDefault":   strconv.Itoa(culling.CullFrequencyDefault),
		"ExactCountLimitDefault": strconv.Itoa(culling.ExactCountLimitDefault),
		"IntervalDefault":        culling.IntervalDefault.String(),
		"MaxEntriesDefault":      strconv.Itoa(culling.MaxEntriesDefault),
		"NudgeEveryDefault":      strconv.Itoa(culling.NudgeEveryDefault),
		"PassTimeoutDefault":     culling.PassTimeoutDefault.String(),
		"SizeSamplePagesDefault": strconv.Itoa(culling.SizeSamplePagesDefault),
	}
	units := strings.NewReplacer(" min", "m", " s", "s", " ms", "ms")
	got := map[string]string{}
	for _, m := range regexp.MustCompile("`(\\w+Default)` = ([0-9,]+(?: (?:min|s|ms))?)").FindAllStringSubmatch(string(doc), -1) {
		v := strings.ReplaceAll(m[2], ",", "")
		if strings.ContainsAny(v, "ms") {
			d, err := time.ParseDuration(units.Replace(v))
			require.NoError(t, err, m[0])
			v = d.String()
		}
		require.NotContains(t, got, m[1], "%s is given twice", m[1])
		got[m[1]] = v
	}
	require.Equal(t, want, got)
}
