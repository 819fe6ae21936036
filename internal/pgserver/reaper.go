package pgserver

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"
)

// reaperEnv, set in a process's environment, makes it a reaper (see init).
const reaperEnv = "DBCACHE_PGSERVER_REAPER"

// reaperSpec is what a reaper removes.
type reaperSpec struct {
	Dir       string `json:"dir,omitempty"`       // an installed server's directory
	Container string `json:"container,omitempty"` // a container's ID
}

// init turns this executable into a reaper when it was started as one by
// spawnReaper. Running in init, before main or TestMain, lets any binary
// that links pgserver (a test binary, the dbcache CLI) serve as the reaper
// of the servers it starts, with nothing to install: it is the same file.
//
// A container's reaper waits instead for the container driver to register
// (RegisterContainerDriver, from the init of internal/pgcontainer, which
// runs after this one): only a binary that links it starts containers.
func init() {
	if s := os.Getenv(reaperEnv); s != "" {
		var spec reaperSpec
		if json.Unmarshal([]byte(s), &spec) != nil || spec.Container == "" {
			os.Exit(reap(s))
		}
	}
}

// spawnReaperFunc is spawnReaper; a test replaces it to play a run killed
// together with its reaper.
var spawnReaperFunc = spawnReaper

// spawnReaper starts a reaper for spec: a copy of this executable that
// waits until its stdin, a pipe whose other end only this process holds,
// reaches end of file, then removes what spec names. The end comes when
// stop is called or when this process dies, however it dies (a panic, a
// test timeout, SIGKILL), since the kernel closes a dead process's files.
// stop returns once the reaper has exited.
func spawnReaper(spec reaperSpec) (stop func(), err error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), reaperEnv+"="+string(b))
	// No stdout or stderr: `go test` and the demo's callers read this
	// process's output until every holder has closed it, and the reaper
	// outlives it on purpose.
	cmd.Stdin, cmd.Stdout, cmd.Stderr = r, nil, nil
	// Its own session: a terminal's Ctrl-C kills this process, not the
	// reaper that must clean up after it.
	cmd.SysProcAttr = detached()
	if err := cmd.Start(); err != nil {
		w.Close()
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	return func() {
		w.Close()
		select {
		case <-done:
		case <-time.After(time.Minute):
		}
	}, nil
}

// reap is the reaper's main: wait for end of file on stdin, then remove.
func reap(specJSON string) int {
	var spec reaperSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return 2
	}
	signal.Ignore(syscall.SIGINT, syscall.SIGHUP)
	// End of file, or a read error: either way the starting process is
	// gone or done with the server.
	_, _ = io.Copy(io.Discard, os.Stdin)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if spec.Dir != "" {
		removeDir(ctx, spec.Dir)
	}
	if spec.Container != "" {
		removeContainerByID(ctx, spec.Container)
	}
	return 0
}
