package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// The binary's behaviour is tested end to end in cmd/dbcache. These tests
// run the command in-process, for what a subprocess cannot easily show:
// terminal behaviour (prompts, newlines, progress bars) and the race
// detector over the command's own goroutines (bench, cull).

func TestMain(m *testing.M) { dbtest.Main(m) }

// syncBuffer is a bytes.Buffer safe for the concurrent writes of progress
// bars and workers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type testBundle struct {
	conn []string
	s    *dbtest.Schema
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	return &testBundle{conn: []string{"--database-url", s.URL, "--schema", s.Name}, s: s}
}

// run runs the command in-process with cfg's streams and terminal flags.
func (b *testBundle) run(ctx context.Context, cfg Config, args ...string) (code int, out, errOut string) {
	o, e := &syncBuffer{}, &syncBuffer{}
	cfg.Args = append(args, b.conn...)
	cfg.Out, cfg.Err = o, e
	cfg.Getenv = func(string) string { return "" }
	code = Run(ctx, &cfg)
	return code, o.String(), e.String()
}

func TestParseTTL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]dbcache.Timeout{
		"":        dbcache.DefaultTimeout,
		"default": dbcache.DefaultTimeout,
		"Never":   dbcache.Forever,
		"none":    dbcache.Forever,
		"forever": dbcache.Forever,
		"0":       dbcache.ExpiresIn(0),
		"-1":      dbcache.ExpiresIn(-time.Second),
		"300":     dbcache.ExpiresIn(300 * time.Second),
		"0.25":    dbcache.ExpiresIn(250 * time.Millisecond),
		"5m":      dbcache.ExpiresIn(5 * time.Minute),
		"1h30m":   dbcache.ExpiresIn(90 * time.Minute),
	} {
		got, err := parseTTL(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, bad := range []string{"soon", "5 minutes", "1e300", "NaN", "inf"} {
		_, err := parseTTL(bad)
		var ue *usageError
		require.ErrorAs(t, err, &ue, bad)
	}
}

func TestErrorLine(t *testing.T) {
	t.Parallel()
	require.Equal(t, "cache miss", errorLine(fmt.Errorf("dbcache: %w", dbcache.ErrMiss), time.Second))
	require.Equal(t, "a b c", errorLine(errors.New("a\nb\n  c"), time.Second))
	require.Equal(t, "interrupted", errorLine(fmt.Errorf("x: %w", context.Canceled), time.Second))

	// A connect error is shown as pgx words it, without the layers above,
	// and a timeout names the flag.
	_, err := pgconn.Connect(context.Background(), "postgres://u@127.0.0.1:1/db?sslmode=disable&connect_timeout=5")
	require.Error(t, err)
	line := errorLine(fmt.Errorf("dbcache: check for the cache table: %w", err), 3*time.Second)
	require.True(t, strings.HasPrefix(line, "failed to connect to `user=u database=db`"), line)
	require.NotContains(t, line, "check for the cache table")
	require.NotContains(t, line, "--connect-timeout")
}

func TestHumanFormats(t *testing.T) {
	t.Parallel()
	require.Equal(t, "0 B", humanBytes(0))
	require.Equal(t, "1023 B", humanBytes(1023))
	require.Equal(t, "8.0 KiB", humanBytes(8192))
	require.Equal(t, "1.5 MiB", humanBytes(3<<19))
	require.Equal(t, "2.0 GiB", humanBytes(2<<30))

	require.Equal(t, "0", humanCount(0))
	require.Equal(t, "999", humanCount(999))
	require.Equal(t, "1,000", humanCount(1000))
	require.Equal(t, "1,234,567", humanCount(1234567))
	require.Equal(t, "-12,345", humanCount(-12345))

	require.Equal(t, 1230*time.Millisecond, roundDuration(1234567891*time.Nanosecond))
	require.Equal(t, 4*time.Minute+59*time.Second, roundDuration(4*time.Minute+59*time.Second+400*time.Millisecond))
	require.Equal(t, "in 5m0s", relative(time.Unix(300, 0), time.Unix(0, 0)))
	require.Equal(t, "2.5s ago", relative(time.Unix(0, 0), time.Unix(2, 5e8)))

	require.Equal(t, `get greeting 'Hello, world!' --ttl 1s ''`, shellJoin([]string{"get", "greeting", "Hello, world!", "--ttl", "1s", ""}))
	require.Equal(t, `set k 'it'\''s'`, shellJoin([]string{"set", "k", "it's"}))
}

func TestTerminalGet(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	code, _, _ := b.run(ctx, Config{}, "set", "k", "v")
	require.Equal(t, ExitOK, code)
	code, _, _ = b.run(ctx, Config{}, "set", "nl", "line\n")
	require.Equal(t, ExitOK, code)

	// On a terminal, get ends the output with a newline, once.
	code, out, _ := b.run(ctx, Config{OutIsTerminal: true}, "get", "k")
	require.Equal(t, ExitOK, code)
	require.Equal(t, "v\n", out)
	_, out, _ = b.run(ctx, Config{OutIsTerminal: true}, "get", "nl")
	require.Equal(t, "line\n", out)
	_, out, _ = b.run(ctx, Config{}, "get", "k")
	require.Equal(t, "v", out)

	// A terminal on stdin is never read for a value: that would wait for
	// typing with no prompt.
	code, _, errOut := b.run(ctx, Config{StdinIsTerminal: true, Stdin: strings.NewReader("typed")}, "set", "k")
	require.Equal(t, ExitUsage, code)
	require.Contains(t, errOut, "dbcache: no value: give it as an argument or pipe it on stdin")
}

func TestTerminalClearAsks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	pool := b.s.Pool(t)
	code, _, _ := b.run(ctx, Config{}, "set", "k", "v")
	require.Equal(t, ExitOK, code)

	for _, answer := range []string{"n\n", "\n", "maybe\n", ""} {
		code, out, errOut := b.run(ctx, Config{StdinIsTerminal: true, Stdin: strings.NewReader(answer)}, "clear")
		require.Equal(t, ExitFailure, code, "answer %q", answer)
		require.Empty(t, out)
		// The prompt says how many entries are at stake.
		require.Contains(t, errOut, `Remove all 1 entry (1 live, 0 expired) in `+b.s.Name+`.dbcache_entries, every prefix and version? [y/N] `)
		require.Contains(t, errOut, "dbcache: not confirmed; nothing changed\n")
		require.Equal(t, 1, dbtest.Count(t, pool))
	}
	code, out, _ := b.run(ctx, Config{StdinIsTerminal: true, Stdin: strings.NewReader("y\n")}, "clear")
	require.Equal(t, ExitOK, code)
	require.Equal(t, "cleared\n", out)
	require.Zero(t, dbtest.Count(t, pool))
}

func TestBenchInProcess(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// A terminal on stderr: the progress bar is drawn (it appears after
	// progressDelay), then cleared.
	code, out, errOut := b.run(t.Context(), Config{ErrIsTerminal: true},
		"bench", "--duration", "1200ms", "-c", "4", "--keyspace", "100", "--ops", "get:4,set,incr,get_many,set_many")
	require.Equal(t, ExitOK, code, errOut)
	require.Contains(t, out, "requests in")
	require.Contains(t, errOut, "bench ")
	require.Contains(t, errOut, "ops/s")

	// Cancelled (SIGINT in main) once the load runs, which the progress bar
	// shows: the results so far, marked interrupted.
	ctx, cancel := context.WithCancel(t.Context())
	o, e := &syncBuffer{}, &syncBuffer{}
	done := make(chan int)
	go func() {
		done <- Run(ctx, &Config{Args: append([]string{"bench", "--duration", "1m", "-c", "2", "--keyspace", "100"}, b.conn...),
			Out: o, Err: e, ErrIsTerminal: true})
	}()
	require.Eventually(t, func() bool { return strings.Contains(e.String(), "ops/s") }, 30*time.Second, 10*time.Millisecond)
	cancel()
	require.Equal(t, ExitOK, <-done, e.String())
	require.Regexp(t, `requests interrupted after \d`, o.String())
}

func TestCullInProcess(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pool := b.s.Pool(t)
	dbtest.Exec(t, pool, `INSERT INTO dbcache_entries SELECT 'k' || i, 'v', now() - interval '1s' FROM generate_series(1, 50) i`)

	ctx, cancel := context.WithCancel(t.Context())
	out := &syncBuffer{}
	done := make(chan int)
	go func() {
		done <- Run(ctx, &Config{Args: append([]string{"cull", "--every", "10ms"}, b.conn...), Out: out, Err: out})
	}()
	require.Eventually(t, func() bool { return strings.Count(out.String(), "\n") >= 3 }, 30*time.Second, 5*time.Millisecond)
	cancel()
	require.Equal(t, ExitOK, <-done, out.String())
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Regexp(t, `^\S+ \S+ pass 1: removed 50 expired, culled 0; 0 entries left \(exact count\); took `, lines[0])
	require.Regexp(t, `^\S+ \S+ pass 2: removed 0 expired`, lines[1])
}

func TestTicker(t *testing.T) {
	t.Parallel()
	// Off a terminal: nothing for progressDelay, then a line every logEvery.
	errOut := &syncBuffer{}
	a := newApp(&Config{Err: errOut})
	tk := a.newTicker(true)
	tk.update(10, 1, "desc", "line one")
	require.Empty(t, errOut.String(), "too early")
	tk.start = tk.start.Add(-time.Minute)
	tk.update(10, 2, "desc", "line two")
	require.Empty(t, errOut.String(), "logEvery has not passed")
	tk.lastLog = tk.lastLog.Add(-logEvery)
	tk.update(10, 3, "desc", "line three")
	require.Regexp(t, `^line three \(1m0s\)\n$`, errOut.String())
	tk.finish()

	// On a terminal: a bar, replaced when the size changes, cleared at the end.
	errOut = &syncBuffer{}
	a = newApp(&Config{Err: errOut, ErrIsTerminal: true})
	tk = a.newTicker(true)
	tk.start = tk.start.Add(-time.Minute)
	tk.update(-1, 5, "sweeping", "")
	tk.update(100, 50, "culling", "")
	require.Contains(t, errOut.String(), "sweeping")
	require.Contains(t, errOut.String(), "culling")
	require.Contains(t, errOut.String(), "50/100")
	tk.finish()
	require.Nil(t, tk.bar)
}
