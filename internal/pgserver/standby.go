//go:build unix

package pgserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"

	"github.com/jackc/pgx/v5"
)

// Streaming standbys of installed servers, for tests that need one: a
// synchronous standby slow to confirm (its walreceiver paused), a hot
// standby to read from, a failover.

// standbyNameRE is what a standby's name (its application_name, which
// synchronous_standby_names lists) may look like.
var standbyNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// StartStandby starts a streaming hot standby of primary, an installed
// server: a base backup taken with pg_basebackup (-X stream -R, as an
// operator makes one), run on a free port with the primary's settings,
// streaming as application_name name, so that the primary's
// synchronous_standby_names can name it (set it with ALTER SYSTEM and
// pg_reload_conf()). It returns once the standby answers queries; Remove
// removes it, and its reaper does if this process dies first.
func StartStandby(ctx context.Context, primary *Server, name string) (s *Server, err error) {
	return StartStandbyWith(ctx, primary, name, StandbyOptions{})
}

// StandbyOptions are what StartStandbyWith may change of a standby.
type StandbyOptions struct {
	// Env is added to the environment the standby's programs run with
	// (pg_basebackup and postgres): say, libfaketime's LD_PRELOAD and
	// FAKETIME, for a standby whose clock is not the primary's.
	Env []string
	// Settings are server settings of the standby's own, each passed as
	// postgres -c name=value after the primary's.
	Settings map[string]string
}

// StartStandbyWith is StartStandby with opts.
func StartStandbyWith(ctx context.Context, primary *Server, name string, opts StandbyOptions) (s *Server, err error) {
	if !standbyNameRE.MatchString(name) {
		return nil, fmt.Errorf("pgserver: standby name %q: want lower-case letters, digits and _", name)
	}
	p, ok := primary.inst.(*localInstance)
	if !ok {
		return nil, unavailablef("pgserver: a standby needs an installed primary (a %s server has no directory to back up from here)", primary.kind)
	}
	root, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, err
	}
	own, err := Config{Settings: opts.Settings}.settingArgs()
	if err != nil {
		return nil, err
	}
	inst := &localInstance{bin: p.bin, root: root, cred: p.cred, settings: append(append([]string(nil), p.settings...), own...),
		standby: true, env: opts.Env}
	stopReaper := func() {}
	defer func() {
		if err != nil {
			_ = inst.remove(context.WithoutCancel(ctx))
			stopReaper()
		}
	}()
	if err := os.WriteFile(filepath.Join(root, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return nil, err
	}
	if p.cred != nil {
		if err := os.Chown(root, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
			return nil, err
		}
	}
	if stopReaper, err = spawnReaperFunc(reaperSpec{Dir: root}); err != nil {
		stopReaper = func() {}
	}
	host, port := primary.Addr()
	conninfo := fmt.Sprintf("host=%s port=%d user=%s application_name=%s", host, port, Superuser, name)
	if err := inst.basebackup(ctx, conninfo); err != nil {
		return nil, err
	}
	sport, err := inst.start(ctx)
	if err != nil {
		return nil, err
	}
	s = newServer(Installed, primary.database, fmt.Sprintf("standby %s of %s, in %s", name, primary.desc, root), inst, sport)
	s.stopReaper = stopReaper
	if err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// basebackup copies the primary's cluster into the instance's data
// directory, ready to stream from it as a standby.
func (l *localInstance) basebackup(ctx context.Context, conninfo string) error {
	log, err := l.openLog()
	if err != nil {
		return err
	}
	defer log.Close()
	data := filepath.Join(l.root, dataDir)
	cmd := l.command(log, "pg_basebackup", "-D", data, "-d", conninfo, "-X", "stream", "-R", "-c", "fast", "--no-sync")
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pg_basebackup: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		err = ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("pg_basebackup: %w%s", err, l.logTail(ctx))
	}
	// -R wrote primary_conninfo from the connection; say it again with the
	// name, in case the version at hand leaves application_name out.
	f, err := os.OpenFile(filepath.Join(data, "postgresql.auto.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(f, "\n# dbcache pgserver standby\nprimary_conninfo = '%s'\n", conninfo); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// WalReceiverPID returns the process id of a standby's walreceiver (from
// pg_stat_wal_receiver): signal it SIGSTOP to make the standby stop
// confirming, SIGCONT to resume. It fails on a server that is not
// streaming.
func (s *Server) WalReceiverPID(ctx context.Context) (int, error) {
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var pid *int
	err = conn.QueryRow(ctx, "SELECT (SELECT pid FROM pg_stat_wal_receiver)").Scan(&pid)
	if err != nil {
		return 0, fmt.Errorf("pgserver: walreceiver: %w", err)
	}
	if pid == nil {
		return 0, errors.New("pgserver: walreceiver: the server is not streaming from a primary")
	}
	return *pid, nil
}
