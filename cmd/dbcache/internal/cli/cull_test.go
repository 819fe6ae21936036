package cli

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseBytes(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int64{
		"1048576": 1 << 20,
		"2GB":     2_000_000_000,
		"2 gb":    2_000_000_000,
		"500MiB":  500 << 20,
		"1.5GiB":  3 << 29,
		"10kB":    10_000,
		"10KiB":   10 << 10,
		"7B":      7,
		"1TB":     1_000_000_000_000,
	} {
		got, err := parseBytes(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, bad := range []string{"", "GB", "lots", "-1GB", "2XB", "1e400", "NaN"} {
		_, err := parseBytes(bad)
		require.Error(t, err, bad)
	}
}

func TestParseAge(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]time.Duration{
		"720h":  720 * time.Hour,
		"90m":   90 * time.Minute,
		"30d":   30 * 24 * time.Hour,
		"1.5d":  36 * time.Hour,
		"2h30m": 150 * time.Minute,
	} {
		got, err := parseAge(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, bad := range []string{"", "soon", "d", "-1d", "1e9d"} {
		_, err := parseAge(bad)
		require.Error(t, err, bad)
	}
}
