//go:build unix

package dbtest

import (
	"os/exec"
	"syscall"
)

// tieToParent makes a role's process die with the test binary where the
// kernel can (Linux): a test binary killed by its timeout or by hand would
// otherwise leave its roles running, holding connections of the shared
// test server (racers waiting forever on a start gate were seen doing so).
func tieToParent(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	dieWithParent(cmd.SysProcAttr)
}
