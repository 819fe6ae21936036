//go:build unix

package pgserver

import "syscall"

// detached is the process attributes of a reaper: a session of its own.
func detached() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setsid: true} }
