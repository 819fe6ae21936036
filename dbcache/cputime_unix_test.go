//go:build unix

package dbcache_test

import (
	"syscall"
	"time"
)

// processCPU is the CPU time (user + system) this process has used: the
// client side's cost of an operation, which load elsewhere on the machine
// barely moves, unlike wall time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
