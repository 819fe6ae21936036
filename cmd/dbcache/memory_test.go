//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// envRSSLaunch makes the test binary a launcher (see init): it runs the
// command in the variable and reports the command's peak RSS.
const envRSSLaunch = "DBCACHE_TEST_RSS_LAUNCH"

// rssReport is what the launcher prints.
type rssReport struct {
	Code     int    `json:"code"`
	OutBytes int64  `json:"out_bytes"`
	MaxRSS   int64  `json:"max_rss"`
	Stderr   string `json:"stderr"`
}

// init turns the test binary into a launcher when envRSSLaunch is set. The
// kernel's peak RSS of a process (ru_maxrss) includes that of the process
// it was forked from, since Go starts children with vfork: measured from
// the test process (large and busy), every child would seem to peak at the
// test process's own peak. Started from this launcher, a fresh and small
// process, the command's figure is its own.
func init() {
	spec := os.Getenv(envRSSLaunch)
	if spec == "" {
		return
	}
	var argv []string
	if err := json.Unmarshal([]byte(spec), &argv); err != nil || len(argv) == 0 {
		fmt.Fprintln(os.Stderr, "bad", envRSSLaunch, err)
		os.Exit(2)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, envRSSLaunch+"=") })
	cmd.Stdin = os.Stdin
	var out countingWriter
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		fmt.Fprintln(os.Stderr, "launch:", err)
		os.Exit(2)
	}
	r := rssReport{Code: cmd.ProcessState.ExitCode(), OutBytes: out.n, Stderr: stderr.String()}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.MaxRSS = ru.Maxrss * 1024 // Linux reports KiB
	}
	_ = json.NewEncoder(os.Stdout).Encode(r)
	os.Exit(0)
}

// peakRSS runs the binary with stdin (through the launcher) and returns
// how many bytes it wrote on stdout and its peak resident set size. It
// requires exit 0.
func peakRSS(t *testing.T, stdin io.Reader, args ...string) (outBytes int64, peak int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	spec, err := json.Marshal(append([]string{binary(t)}, args...))
	require.NoError(t, err)
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(baseEnv(), envRSSLaunch+"="+string(spec))
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "launcher: %s", stderr.String())
	var r rssReport
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &r), stdout.String())
	require.Zero(t, r.Code, "dbcache %v: %s", args, r.Stderr)
	require.Positive(t, r.MaxRSS)
	return r.OutBytes, r.MaxRSS
}

type countingWriter struct{ n int64 }

func (w *countingWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

// A large value costs the command a bounded number of copies of itself:
// measured as the peak RSS above what a tiny get peaks at, in units of the
// value's size. (Before: set 3.6, get --json 7.5 for a binary value.)
//
// get holds the driver's receive buffer and the scanned value: two copies;
// get --json streams its encoding, adding none. set holds the value it read
// (exactly sized) and the driver holds two more while sending it (pgx's
// parameter buffer and the protocol message), so it stays near three until
// the library sends large values without pgx's extra copy.
func TestPeakMemory(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	const size = 64 << 20
	text := bytes.Repeat([]byte("0123456789abcdef<\"\n"), size/19+1)[:size]
	bin := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{1})
	_, _ = rng.Read(bin)
	file := filepath.Join(t.TempDir(), "value")
	require.NoError(t, os.WriteFile(file, bin, 0o600))

	args := func(a ...string) []string { return append(a, b.conn...) }
	_, base := peakRSS(t, nil, args("set", "tiny", "x")...)
	_, baseGet := peakRSS(t, nil, args("get", "tiny")...)
	base = max(base, baseGet)
	copies := func(peak int64) float64 { return float64(peak-base) / size }
	t.Logf("baseline peak %d MiB", base>>20)

	// set from a pipe, and from a file (read at its size).
	_, peak := peakRSS(t, bytes.NewReader(text), args("set", "text")...)
	t.Logf("set from a pipe: %.2f copies", copies(peak))
	require.Less(t, copies(peak), 3.3, "set from a pipe: peak %d MiB", peak>>20)
	f, err := os.Open(file)
	require.NoError(t, err)
	defer f.Close()
	_, peak = peakRSS(t, f, args("set", "bin")...)
	t.Logf("set from a file: %.2f copies", copies(peak))
	require.Less(t, copies(peak), 3.3, "set from a file: peak %d MiB", peak>>20)

	for _, tc := range []struct {
		args []string
		out  int64 // at least this much on stdout
	}{
		{args("get", "text"), size},
		{args("get", "bin"), size},
		{args("get", "text", "--json"), size},
		{args("get", "bin", "--json"), size / 3 * 4},
	} {
		n, peak := peakRSS(t, nil, tc.args...)
		t.Logf("%v: %.2f copies", tc.args[:3], copies(peak))
		require.GreaterOrEqual(t, n, tc.out, "%v", tc.args[:3])
		require.Less(t, copies(peak), 2.5, "%v: peak %d MiB", tc.args[:3], peak>>20)
	}
}
