package cli

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
)

// `cull --every … --metrics-addr` serves the job's metrics while it runs:
// the passes it ran, the rows they removed, and the table's figures.
func TestCullMetrics(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pool := b.s.Pool(t)
	dbtest.Exec(t, pool, `INSERT INTO dbcache_entries (key, value, expires)
SELECT 'old' || i, 'v', now() - interval '1 minute' FROM generate_series(1, 7) i`)
	dbtest.Exec(t, pool, `INSERT INTO dbcache_entries (key, value, expires)
SELECT 'live' || i, 'v', now() + interval '1 hour' FROM generate_series(1, 3) i`)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	out, errw := &syncBuffer{}, &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, &Config{
			Args:   append([]string{"cull", "--every", "50ms", "--metrics-addr", "127.0.0.1:0"}, b.conn...),
			Out:    out,
			Err:    errw,
			Getenv: func(string) string { return "" },
		})
	}()
	urlRE := regexp.MustCompile(`serving metrics at (http://\S+/metrics)`)
	var url string
	require.Eventually(t, func() bool {
		m := urlRE.FindStringSubmatch(errw.String())
		if m != nil {
			url = m[1]
		}
		return m != nil
	}, 30*time.Second, 10*time.Millisecond, "stderr: %s", errw.String())

	scrape := func() string {
		resp, err := http.Get(url)
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body)
	}
	var body string
	require.Eventually(t, func() bool {
		body = scrape()
		return strings.Contains(body, `dbcache_cull_rows_removed_total{reason="expired"} 7`) &&
			regexp.MustCompile(`dbcache_cull_passes_total\{result="done"\} [2-9]`).MatchString(body)
	}, 30*time.Second, 20*time.Millisecond, "metrics: %s", body)
	for _, want := range []string{
		"dbcache_table_stats_up 1",
		"dbcache_table_rows 3",
		"dbcache_table_expired_rows 0",
		`dbcache_table_bytes{part="table"}`,
		"dbcache_cull_last_pass_timestamp_seconds",
		"dbcache_cull_pass_duration_seconds_count",
		"dbcache_culler_consecutive_failures 0",
		"dbcache_culler_last_success_timestamp_seconds",
		"process_cpu_seconds_total",
		"go_goroutines",
	} {
		require.Contains(t, body, want)
	}

	cancel()
	select {
	case code := <-done:
		require.Equal(t, ExitOK, code, "stderr: %s", errw.String())
	case <-time.After(30 * time.Second):
		t.Fatal("cull did not stop")
	}
	require.Empty(t, scrape(), "the server stops with the command")
}

func TestCullMetricsUsage(t *testing.T) {
	t.Parallel()
	b := setup(t)
	code, _, errOut := b.run(t.Context(), Config{}, "cull", "--metrics-addr", "127.0.0.1:0")
	require.Equal(t, ExitUsage, code)
	require.Contains(t, errOut, "--metrics-addr needs --every")
	code, _, errOut = b.run(t.Context(), Config{}, "cull", "--every", "1s", "--metrics-addr", "256.0.0.1:http")
	require.Equal(t, ExitFailure, code, errOut)
	require.Contains(t, errOut, "listen on 256.0.0.1:http")
}
