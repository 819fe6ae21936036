//go:build !unix

package dbtest

import "os/exec"

// tieToParent does nothing here: Start's cleanup kills the role when the
// test ends, and nothing can when the test binary is killed.
func tieToParent(*exec.Cmd) {}
