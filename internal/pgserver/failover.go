//go:build unix

package pgserver

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"syscall"
)

// What a failover does to servers, as an operator (or a managed service)
// does it: the primary stopped at once, a standby promoted.

// StopImmediate stops an installed server as pg_ctl stop -m immediate
// does (SIGQUIT to the postmaster: every process exits at once, nothing
// is checkpointed, the next start runs crash recovery), and returns once
// it has exited. A container's server is killed.
func (s *Server) StopImmediate(ctx context.Context) error {
	l, ok := s.inst.(*localInstance)
	if !ok {
		return s.Crash(ctx)
	}
	if err := l.stop(ctx, syscall.SIGQUIT, false); err != nil {
		return fmt.Errorf("pgserver: stop -m immediate: %w", err)
	}
	return nil
}

// Promote promotes a standby with pg_ctl promote -w, and returns once it
// accepts writes.
func (s *Server) Promote(ctx context.Context) error {
	l, ok := s.inst.(*localInstance)
	if !ok {
		return unavailablef("pgserver: promote needs an installed server")
	}
	log, err := l.openLog()
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := l.command(log, "pg_ctl", "promote", "-w", "-t", "60", "-D", filepath.Join(l.root, dataDir))
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pg_ctl promote: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		// The killed command reaped: its exit joins ctx's error.
		err = errors.Join(ctx.Err(), <-done)
	}
	if err != nil {
		return fmt.Errorf("pg_ctl promote: %w%s", err, l.logTail(ctx))
	}
	return nil
}
