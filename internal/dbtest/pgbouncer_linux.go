package dbtest

import "syscall"

// dieWithParent makes the kernel kill the child when the test binary dies.
func dieWithParent(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }
