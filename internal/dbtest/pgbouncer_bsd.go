//go:build unix && !linux

package dbtest

import "syscall"

// dieWithParent does nothing where the kernel cannot tie a child's life to
// its parent's: a PgBouncer left by a killed test binary exits when its
// port's clients are gone, or is removed by hand.
func dieWithParent(*syscall.SysProcAttr) {}
