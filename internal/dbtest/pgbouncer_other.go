//go:build !unix

package dbtest

import (
	"errors"
	"os/exec"
)

// unprivileged: the PgBouncer harness runs PgBouncer on unix only.
func unprivileged(...string) (func(*exec.Cmd), error) {
	return nil, errors.New("the PgBouncer harness runs on unix systems only")
}
