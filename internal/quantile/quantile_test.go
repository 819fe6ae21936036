package quantile_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/quantile"
)

func TestPercentile(t *testing.T) {
	t.Parallel()
	var v []time.Duration
	for i := 100; i >= 1; i-- {
		v = append(v, time.Duration(i))
	}
	require.Equal(t, time.Duration(51), quantile.Percentile(v, 50), "index 50 of 1..100")
	require.Equal(t, time.Duration(100), quantile.Percentile(v, 99))
	require.Equal(t, time.Duration(100), quantile.Percentile(v, 100), "the maximum")
	require.Equal(t, time.Duration(1), quantile.Percentile(v, 0), "the minimum")
	require.Equal(t, time.Duration(100), v[0], "the input is left unsorted")
	require.Zero(t, quantile.Percentile([]float64(nil), 50))
	require.Equal(t, 7.0, quantile.Percentile([]float64{7}, 99))
}
