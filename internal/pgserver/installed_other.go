//go:build !unix

package pgserver

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"syscall"
)

// Running PostgreSQL from its installation needs Unix process control
// (another user's credentials, signals); elsewhere only containers are
// started.

func startInstalled(context.Context, Config) (*Server, error) {
	return nil, unavailablef("running PostgreSQL from its installation is supported on Unix only")
}

func removeDir(_ context.Context, dir string) { _ = os.RemoveAll(dir) }

var sweepOnce sync.Once

func sweepStaleDirs(string, *slog.Logger) {}

// alive cannot tell here: every process counts as alive, so no container is
// swept (their reapers still remove them).
func alive(int) bool { return true }

func detached() *syscall.SysProcAttr { return &syscall.SysProcAttr{} }
