package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/dbtest"
)

// Faults from outside the command: a network that stops forwarding (a
// proxy that holds every byte), a network that drops its connections, and
// a row another session holds, each met by the real binary.

// setupProxied is a migrated schema the binary reaches through a proxy the
// test can freeze or take down; b.pool reaches the server directly.
func setupProxied(t *testing.T) (*testBundle, *dbtest.Proxy) {
	t.Helper()
	b := setup(t, true)
	cc, err := pgconn.ParseConfig(b.schema.URL)
	require.NoError(t, err)
	target := net.JoinHostPort(cc.Host, strconv.Itoa(int(cc.Port)))
	proxy := dbtest.NewProxy(t, target)
	url := strings.Replace(b.schema.URL, target, proxy.Addr(), 1)
	require.NotEqual(t, b.schema.URL, url, "the server's address is in the URL")
	b.conn = []string{"--database-url", url, "--schema", b.schema.Name}
	return b, proxy
}

// proc is the binary running in the background, its output read as it
// comes.
type proc struct {
	cmd            *exec.Cmd
	mu             sync.Mutex
	stdout, stderr strings.Builder
	errLines       chan string
	done           chan struct{}
}

func start(t *testing.T, b *testBundle, args ...string) *proc {
	t.Helper()
	p := &proc{errLines: make(chan string, 1000), done: make(chan struct{})}
	p.cmd = exec.Command(binary(t), append(args, b.conn...)...)
	p.cmd.Env = baseEnv()
	out, err := p.cmd.StdoutPipe()
	require.NoError(t, err)
	errOut, err := p.cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, p.cmd.Start())
	t.Cleanup(func() { _ = p.cmd.Process.Kill() })
	var wg sync.WaitGroup
	read := func(r io.Reader, into *strings.Builder, lines chan string) {
		defer wg.Done()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			p.mu.Lock()
			into.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if lines != nil {
				select {
				case lines <- sc.Text():
				default:
				}
			}
		}
	}
	wg.Add(2)
	go read(out, &p.stdout, nil)
	go read(errOut, &p.stderr, p.errLines)
	go func() { wg.Wait(); close(p.errLines); close(p.done) }()
	return p
}

// wait waits for the process to exit, failing the test if it runs for
// longer than within (a bound far above what the command needs, which no
// hang fits under).
func (p *proc) wait(t *testing.T, within time.Duration) result {
	t.Helper()
	exited := make(chan error, 1)
	go func() {
		<-p.done
		exited <- p.cmd.Wait()
	}()
	select {
	case <-exited:
	case <-time.After(within):
		_ = p.cmd.Process.Kill()
		p.mu.Lock()
		defer p.mu.Unlock()
		require.FailNowf(t, "the command hung", "still running after %s; stdout %q, stderr %q", within, p.stdout.String(), p.stderr.String())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	r := result{code: p.cmd.ProcessState.ExitCode(), stdout: p.stdout.String(), stderr: p.stderr.String()}
	requireNoCrash(t, r)
	return r
}

// waitErrLine waits for a stderr line matching re.
func (p *proc) waitErrLine(t *testing.T, re *regexp.Regexp) string {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case l, ok := <-p.errLines:
			require.True(t, ok, "the command ended without a stderr line matching %s", re)
			if re.MatchString(l) {
				return l
			}
		case <-timeout:
			require.FailNowf(t, "no stderr line", "matching %s within 60s", re)
		}
	}
}

// holdLock begins a transaction on the server that takes lock (a LOCK
// TABLE or a SELECT … FOR UPDATE) and returns it with its backend's pid.
func holdLock(t *testing.T, b *testBundle, lock string) (pgx.Tx, int) {
	t.Helper()
	ctx := context.Background()
	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	var pid int
	require.NoError(t, tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid))
	_, err = tx.Exec(ctx, lock)
	require.NoError(t, err)
	return tx, pid
}

// waitBlockedBy waits until a session waits on a lock that backend pid
// holds.
func waitBlockedBy(t *testing.T, b *testBundle, pid int) {
	t.Helper()
	require.Eventually(t, func() bool {
		return scalar[int](t, b.pool, `SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))`, pid) > 0
	}, 60*time.Second, 5*time.Millisecond, "no session waited on the test's lock")
}

// lastJSONError decodes the last line of stderr, the error object --json
// prints.
func lastJSONError(t *testing.T, r result) map[string]any {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	var e map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), &e), "stderr: %q", r.stderr)
	return e
}

// A network that stops forwarding mid-command, while the command waits for
// an answer (here: a statement waiting on a table another session locked,
// which the server would end at the statement timeout), fails every
// command that connects with a `timeout` error, not `interrupted` and not a
// hang: each answer is waited for at most the statement timeout plus 2 s.
// The bound on how long the whole command takes is far above what it
// needs (an answer bound or two, the culler's cleanup, closing the pool)
// and far below a hang: before, cull waited out its --pass-timeout (10m
// here) and the migrate commands waited for as long as the TCP connection
// stayed open.
func TestFrozenNetworkEveryCommand(t *testing.T) {
	t.Parallel()
	const lockAll = `LOCK TABLE dbcache_entries, dbcache_culler_state, dbcache_schema_migrations IN ACCESS EXCLUSIVE MODE`
	for _, tc := range []struct {
		name string
		args []string
		prep func(t *testing.T, b *testBundle)
	}{
		{name: "get", args: []string{"get", "k"}, prep: func(t *testing.T, b *testBundle) { b.ok(t, "set", "k", "v") }},
		{name: "set", args: []string{"set", "k", "v"}},
		{name: "incr", args: []string{"incr", "n"}, prep: func(t *testing.T, b *testBundle) { b.ok(t, "set", "n", "1") }},
		{name: "keys", args: []string{"keys"}},
		{name: "delete-prefix", args: []string{"delete-prefix", "p", "--yes"}},
		{name: "clear", args: []string{"clear", "--yes"}},
		{name: "stats", args: []string{"stats"}},
		{name: "cull", args: []string{"cull", "--pass-timeout", "10m"}},
		{name: "bench", args: []string{"bench", "--duration", "1s", "--keyspace", "10", "-c", "2"}},
		{name: "migrate up", args: []string{"migrate", "up"}, prep: func(t *testing.T, b *testBundle) { b.ok(t, "migrate", "down", "--yes") }},
		{name: "migrate down", args: []string{"migrate", "down", "--yes"}},
		{name: "migrate status", args: []string{"migrate", "status"}},
		{name: "migrate version", args: []string{"migrate", "version"}},
		{name: "migrate force", args: []string{"migrate", "force", "5"}},
		{name: "migrate persistence", args: []string{"migrate", "persistence", "unlogged", "--yes"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b, proxy := setupProxied(t)
			if tc.prep != nil {
				tc.prep(t, b)
			}
			tx, holder := holdLock(t, b, lockAll)
			p := start(t, b, append(tc.args, "--json", "--statement-timeout", "2s", "--connect-timeout", "2s")...)
			waitBlockedBy(t, b, holder)
			proxy.Freeze()
			require.NoError(t, tx.Rollback(context.Background()))
			r := p.wait(t, 90*time.Second)
			requireCode(t, 1, r)
			e := lastJSONError(t, r)
			require.Equal(t, "timeout", e["error"], "stderr: %s", r.stderr)
			require.Contains(t, e["message"], "no answer from the server within 4s")
			require.Contains(t, e["message"], "--statement-timeout")
		})
	}
}

// A cull whose network freezes part way fails with a timeout and says
// what it removed before: the batches it saw commit, which are all it
// removed but the one in flight when the network froze (whose answer never
// came back).
func TestCullFrozenMidPassSaysWhatItRemoved(t *testing.T) {
	t.Parallel()
	b, proxy := setupProxied(t)
	const rows, batch = 30000, 5
	dbtest.Exec(t, b.pool, `INSERT INTO dbcache_entries (key, value, expires)
SELECT 'k' || i, 'v', now() - interval '1 hour' FROM generate_series(1, $1) AS i`, rows)
	count := func() int { return scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries`) }

	p := start(t, b, "cull", "--batch-size", strconv.Itoa(batch), "--statement-timeout", "2s", "--connect-timeout", "2s", "--pass-timeout", "10m")
	require.Eventually(t, func() bool { return count() < rows }, 60*time.Second, 5*time.Millisecond, "the cull removed nothing")
	// The lock waits for the batch in progress; the next one waits for it.
	tx, holder := holdLock(t, b, `LOCK TABLE dbcache_entries IN ACCESS EXCLUSIVE MODE`)
	waitBlockedBy(t, b, holder)
	proxy.Freeze()
	require.NoError(t, tx.Rollback(context.Background()))
	r := p.wait(t, 90*time.Second)
	requireCode(t, 1, r)
	// The freeze lands in the batch's statement or in pgx's preparing it
	// ("error preprocessing batch (prepare): …" between the two): the
	// operation is named first, the bound after, either way.
	require.Contains(t, lastLine(r.stderr), "dbcache: culling: remove expired rows: ")
	require.Contains(t, lastLine(r.stderr), "timeout: no answer from the server within 4s")
	require.Contains(t, lastLine(r.stderr), "--statement-timeout")
	require.NotContains(t, r.stderr, "interrupted")
	m := regexp.MustCompile(`^failed after removing ([0-9,]+) expired and culling 0; what was removed stays removed\n$`).FindStringSubmatch(r.stdout)
	require.NotNil(t, m, "stdout: %q", r.stdout)
	said, err := strconv.Atoi(strings.ReplaceAll(m[1], ",", ""))
	require.NoError(t, err)
	removed := rows - count()
	require.Positive(t, said)
	require.LessOrEqual(t, said, removed, "it says no more than it removed")
	require.LessOrEqual(t, removed, said+batch, "only the batch in flight is unaccounted for")
}

// bench's cleanup after a network that dropped its connections: the
// cleanup tries again, and once the network is back it removes every key
// bench wrote (before, it printed "removed the 0 entries", exited 0 and
// left them all).
func TestBenchCleanupRetriesAfterNetworkFailure(t *testing.T) {
	t.Parallel()
	b, proxy := setupProxied(t)
	benchRows := func() int {
		return scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries WHERE key LIKE ':1:bench:%'`)
	}
	p := start(t, b, "bench", "--ops", "get", "--keyspace", "1000", "-c", "2", "--duration", "2s", "--statement-timeout", "2s")
	require.Eventually(t, func() bool { return benchRows() == 1000 }, 60*time.Second, 5*time.Millisecond, "the prefill never finished")
	// Reads do not wait on a row lock; the cleanup's first batch does.
	tx, holder := holdLock(t, b, `SELECT 1 FROM dbcache_entries WHERE key = ':1:bench:7' FOR UPDATE`)
	waitBlockedBy(t, b, holder)
	proxy.Down()
	p.waitErrLine(t, regexp.MustCompile(`removing its keys failed; trying again`))
	require.NoError(t, tx.Rollback(context.Background()))
	proxy.Up(t)
	r := p.wait(t, 90*time.Second)
	requireCode(t, 0, r)
	require.Contains(t, r.stdout, "entries bench wrote (--keep leaves them)")
	require.Zero(t, benchRows(), "bench left keys behind")
}

// When the cleanup still fails after its retries (a row another session
// holds for longer than the statement timeout, every time), bench exits 1
// and says what it left, and how to remove it; what it says is left is at
// least what is.
func TestBenchCleanupSaysWhatItLeft(t *testing.T) {
	t.Parallel()
	for _, asJSON := range []bool{false, true} {
		t.Run(map[bool]string{false: "text", true: "json"}[asJSON], func(t *testing.T) {
			t.Parallel()
			b := setup(t, true)
			benchRows := func() int {
				return scalar[int](t, b.pool, `SELECT count(*) FROM dbcache_entries WHERE key LIKE ':1:bench:%'`)
			}
			args := []string{"bench", "--ops", "get", "--keyspace", "1000", "-c", "2", "--duration", "2s", "--statement-timeout", "500ms"}
			if asJSON {
				args = append(args, "--json")
			}
			p := start(t, b, args...)
			require.Eventually(t, func() bool { return benchRows() == 1000 }, 60*time.Second, 5*time.Millisecond, "the prefill never finished")
			holdLock(t, b, `SELECT 1 FROM dbcache_entries WHERE key = ':1:bench:7' FOR UPDATE`)
			r := p.wait(t, 90*time.Second)
			requireCode(t, 1, r)
			left := benchRows()
			require.Equal(t, 1000, left, "the batch with the held row comes first; the cleanup stops there")
			if !asJSON {
				require.Contains(t, r.stdout, "could not remove all the keys bench wrote: up to 1,000 entries left (bench:0 … bench:999, under the key prefix and version); "+
					"`dbcache delete-prefix bench: --yes --schema "+b.schema.Name+"` removes them")
				require.Contains(t, lastLine(r.stderr), "dbcache: bench: remove its keys")
				require.Contains(t, lastLine(r.stderr), "statement timeout")
				return
			}
			var out map[string]any
			require.NoError(t, json.Unmarshal([]byte(r.stdout), &out), "stdout: %q", r.stdout)
			require.EqualValues(t, 1000, out["left"])
			require.EqualValues(t, 0, out["removed"])
			require.Equal(t, "statement_timeout", lastJSONError(t, r)["error"])
		})
	}
}
