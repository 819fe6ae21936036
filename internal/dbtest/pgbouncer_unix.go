//go:build unix

package dbtest

import (
	"os"
	"os/exec"
	"syscall"

	"github.com/dbcache/dbcache/internal/pgserver"
)

// unprivileged gives paths to the user PgBouncer runs as (this process's,
// unless that is root: see pgserver.ServerUser) and returns what makes a
// command run as that user, in a process group of its own (so a terminal's
// Ctrl-C reaches the test binary only) and, on Linux, killed with the test
// binary if it dies.
func unprivileged(paths ...string) (func(*exec.Cmd), error) {
	cred, err := pgserver.ServerUser()
	if err != nil {
		return nil, err
	}
	if cred != nil {
		for _, p := range paths {
			if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
				return nil, err
			}
		}
	}
	return func(cmd *exec.Cmd) {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
		dieWithParent(cmd.SysProcAttr)
	}, nil
}
