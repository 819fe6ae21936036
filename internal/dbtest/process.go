package dbtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Multi-process tests run real processes: the test binary, started again
// in a role (a function the package registered with Role) instead of its
// tests. Two processes share nothing but the database, as two application
// servers do: no pool, no goroutine, no memory.

const (
	envRole    = "DBCACHE_TEST_ROLE"
	envRoleArg = "DBCACHE_TEST_ROLE_ARG"
)

var (
	rolesMu sync.Mutex
	roles   = map[string]func(ctx context.Context, arg string) error{}
)

// Role registers a role a test can Start in another process: f runs there
// with arg (a DSN, a JSON document: the test's choice), writes what the test
// should read to os.Stdout, and returns. Its context ends on SIGTERM or
// SIGINT. Register roles before Main runs (in TestMain, or an init func).
func Role(name string, f func(ctx context.Context, arg string) error) {
	rolesMu.Lock()
	defer rolesMu.Unlock()
	if _, dup := roles[name]; dup {
		panic("dbtest: role " + name + " registered twice")
	}
	roles[name] = f
}

// runRole runs the role this process was started in, if any, and reports
// whether it was.
func runRole() (code int, ok bool) {
	name := os.Getenv(envRole)
	if name == "" {
		return 0, false
	}
	rolesMu.Lock()
	f := roles[name]
	rolesMu.Unlock()
	if f == nil {
		fmt.Fprintf(os.Stderr, "dbtest: no role %q registered in this test binary\n", name)
		return 2, true
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := f(ctx, os.Getenv(envRoleArg)); err != nil {
		fmt.Fprintf(os.Stderr, "dbtest: role %s: %v\n", name, err)
		return 1, true
	}
	return 0, true
}

// Process is a role running in another process.
type Process struct {
	Name string
	cmd  *exec.Cmd
	out  bytes.Buffer // stdout
	err  bytes.Buffer // stderr, shown when the process fails
	mu   sync.Mutex
	done chan struct{}
	werr error
	// lines, when the test reads stdout as it comes (Lines).
	lines chan string
}

// Start runs role in a new process of the test binary with arg, and stops
// it (SIGKILL) when the test ends if it is still running, or (on Linux)
// when the test binary dies. With lines set,
// the process's stdout is delivered line by line on Lines as it is written
// (unread lines block the process once a pipe's worth is pending);
// otherwise it is collected for Output.
func Start(tb testing.TB, role, arg string, lines bool) *Process {
	tb.Helper()
	p := &Process{Name: role, done: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], "-test.run=^$")
	p.cmd.Env = append(os.Environ(), envRole+"="+role, envRoleArg+"="+arg)
	tieToParent(p.cmd)
	p.cmd.Stderr = &lockedWriter{mu: &p.mu, w: &p.err}
	var pipe io.ReadCloser
	if lines {
		var err error
		if pipe, err = p.cmd.StdoutPipe(); err != nil {
			tb.Fatalf("dbtest: start %s: %v", role, err)
		}
		p.lines = make(chan string, 1024)
	} else {
		p.cmd.Stdout = &lockedWriter{mu: &p.mu, w: &p.out}
	}
	if err := p.cmd.Start(); err != nil {
		tb.Fatalf("dbtest: start %s: %v", role, err)
	}
	go func() {
		if pipe != nil {
			sc := bufio.NewScanner(pipe)
			sc.Buffer(make([]byte, 1<<16), 1<<24)
			for sc.Scan() {
				p.lines <- sc.Text()
			}
			close(p.lines)
		}
		err := p.cmd.Wait()
		p.mu.Lock()
		p.werr = err
		p.mu.Unlock()
		close(p.done)
	}()
	tb.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (w *lockedWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(b)
}

// Pid is the process's ID.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig to the process (SIGSTOP and SIGCONT pause and resume it,
// SIGKILL kills it, SIGTERM ends its role's context).
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Lines is the process's stdout, a line at a time (Start with lines);
// closed when the process closes it.
func (p *Process) Lines() <-chan string { return p.lines }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits at most d for the process to exit and returns its stdout (when
// not read through Lines) and an error that includes its stderr if it
// failed, was killed or did not exit in time.
func (p *Process) Wait(d time.Duration) (string, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		return "", fmt.Errorf("dbtest: process %s (pid %d) still running after %v", p.Name, p.Pid(), d)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.werr != nil {
		return p.out.String(), fmt.Errorf("dbtest: process %s: %w; stderr:\n%s", p.Name, p.werr, p.err.String())
	}
	return p.out.String(), nil
}
