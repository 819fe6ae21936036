//go:build unix

package pgserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// dirPrefix names the temporary directories of installed servers, so the
// next Start on the machine can find the ones a killed run left.
const dirPrefix = "dbcache-pg-"

// Files in a server's directory.
const (
	ownerFile = "owner" // the PID of the process that started the server
	dataDir   = "data"  // the cluster, made by initdb
	logFile   = "server.log"
)

// binDirCandidates are where PostgreSQL's server binaries live on common
// systems, after PATH and pg_config: Debian and Ubuntu, the PGDG RPMs, a
// source build, Homebrew, Postgres.app, Alpine. Globs are tried newest
// version first.
var binDirCandidates = []string{
	"/usr/lib/postgresql/*/bin",
	"/usr/pgsql-*/bin",
	"/usr/local/pgsql/bin",
	"/opt/homebrew/opt/postgresql@*/bin",
	"/opt/homebrew/opt/postgresql/bin",
	"/usr/local/opt/postgresql@*/bin",
	"/usr/local/opt/postgresql/bin",
	"/Applications/Postgres.app/Contents/Versions/*/bin",
	"/usr/libexec/postgresql*",
}

// findBinDir returns the first directory holding both initdb and postgres:
// dir alone when it is set, else PATH's initdb (its real directory: initdb
// finds postgres beside its own file), pg_config --bindir, then
// binDirCandidates.
func findBinDir(ctx context.Context, dir string) (string, error) {
	var looked []string
	try := func(d string) bool {
		looked = append(looked, d)
		return isExecutable(filepath.Join(d, "initdb")) && isExecutable(filepath.Join(d, "postgres"))
	}
	if dir != "" {
		if try(dir) {
			return dir, nil
		}
		return "", unavailablef("no initdb and postgres in %s (%s)", dir, EnvBinDir)
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil && try(filepath.Dir(real)) {
			return filepath.Dir(real), nil
		}
	} else {
		looked = append(looked, "PATH")
	}
	if p, err := exec.LookPath("pg_config"); err == nil {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		out, err := exec.CommandContext(cctx, p, "--bindir").Output()
		cancel()
		if d := strings.TrimSpace(string(out)); err == nil && d != "" && try(d) {
			return d, nil
		}
	}
	for _, pattern := range binDirCandidates {
		matches, _ := filepath.Glob(pattern)
		slices.SortFunc(matches, func(a, b string) int { return compareVersions(b, a) })
		for _, m := range matches {
			if try(m) {
				return m, nil
			}
		}
		if len(matches) == 0 {
			looked = append(looked, pattern)
		}
	}
	return "", unavailablef("no initdb and postgres found (looked in %s)", strings.Join(looked, ", "))
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

var digitRuns = regexp.MustCompile(`\d+`)

// compareVersions orders paths by the numbers in them (so 9 < 10 < 16).
func compareVersions(a, b string) int {
	na, nb := digitRuns.FindAllString(a, -1), digitRuns.FindAllString(b, -1)
	for i := 0; i < len(na) && i < len(nb); i++ {
		x, _ := strconv.Atoi(na[i])
		y, _ := strconv.Atoi(nb[i])
		if x != y {
			return x - y
		}
	}
	if len(na) != len(nb) {
		return len(na) - len(nb)
	}
	return strings.Compare(a, b)
}

// ServerUser is who runs initdb and postgres (and, for internal/dbtest,
// PgBouncer): this process's user, unless that is root, which PostgreSQL
// and PgBouncer refuse; then "postgres", else "nobody".
// nil means this process's user.
func ServerUser() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		// No supplementary groups: none of root's.
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return nil, unavailablef("running as root, and there is no postgres or nobody user to run PostgreSQL or PgBouncer as")
}

// localInstance is a server run from the installation, in its own
// temporary directory.
type localInstance struct {
	bin  string
	root string
	cred *syscall.Credential
	// settings are Config.Settings as postgres arguments (-c name=value).
	settings []string
	// standby is set for a streaming standby (standby.go), which reports
	// itself "standby", not "ready", once it accepts connections.
	standby bool
	// env is added to the environment of the installation's programs
	// (StandbyOptions.Env): LD_PRELOAD and FAKETIME for a shifted clock.
	env []string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed once cmd has been waited for
	port   uint16
}

func startInstalled(ctx context.Context, cfg Config) (s *Server, err error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	bin, err := findBinDir(ctx, cfg.BinDir)
	if err != nil {
		return nil, err
	}
	cred, err := ServerUser()
	if err != nil {
		return nil, err
	}
	root, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, err
	}
	settings, err := cfg.settingArgs()
	if err != nil {
		return nil, err
	}
	inst := &localInstance{bin: bin, root: root, cred: cred, settings: settings}
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
	if cred != nil {
		// The server's user owns the directory (initdb creates data/ in it);
		// it stays private to that user and root.
		if err := os.Chown(root, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, err
		}
	}
	// From here on the directory is removed even if this process dies.
	if stopReaper, err = spawnReaperFunc(reaperSpec{Dir: root}); err != nil {
		cfg.Logger.Debug("pgserver: no reaper; a killed run leaves the server to the next one", "err", err)
		stopReaper = func() {}
	}
	cfg.Logger.Debug("pgserver: initdb", "bin", bin, "dir", root)
	if err := inst.initdb(ctx); err != nil {
		return nil, err
	}
	port, err := inst.start(ctx)
	if err != nil {
		return nil, err
	}
	desc := fmt.Sprintf("PostgreSQL %s from %s in %s", serverVersion(ctx, bin), bin, root)
	s = newServer(Installed, cfg.Database, desc, inst, port)
	s.stopReaper = stopReaper
	if err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	if err := s.createDatabase(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// serverVersion is the major.minor version postgres reports, or "".
func serverVersion(ctx context.Context, bin string) string {
	out, err := exec.CommandContext(ctx, filepath.Join(bin, "postgres"), "--version").Output()
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(out)) // postgres (PostgreSQL) 15.8 (Debian 15.8-1)
	if len(f) >= 3 {
		return f[2]
	}
	return "?"
}

// command runs a program of the installation as the server's user, in its
// own process group (a terminal's Ctrl-C reaches this process only, whose
// Remove or reaper then stops the server in order), output to the log.
func (l *localInstance) command(log *os.File, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(l.bin, name), args...)
	cmd.Dir = l.root
	if l.env != nil {
		cmd.Env = append(os.Environ(), l.env...)
	}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: l.cred}
	return cmd
}

func (l *localInstance) openLog() (*os.File, error) {
	return os.OpenFile(filepath.Join(l.root, logFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
}

// initdb creates the cluster: superuser postgres, trust authentication
// (only loopback can connect), UTF-8 with the C locale (portable: every
// system has it; the official image's en_US.utf8 is not everywhere), and
// --no-sync: initdb's final flush only protects the new files from an OS
// crash, and this directory is thrown away; the server itself runs with
// fsync on.
func (l *localInstance) initdb(ctx context.Context) error {
	log, err := l.openLog()
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := l.command(log, "initdb", "-D", filepath.Join(l.root, dataDir), "-U", Superuser,
		"--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync")
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("initdb: %w", err)
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
		return fmt.Errorf("initdb: %w%s", err, l.logTail(ctx))
	}
	// Loopback TCP only: no Unix socket (its directory may not be writable,
	// and its path length is limited).
	conf := "\n# dbcache pgserver\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
	f, err := os.OpenFile(filepath.Join(l.root, dataDir, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(conf); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// start runs postgres on the port it had (a fresh one the first time, or if
// that one was taken meanwhile) and returns once the postmaster reports
// itself ready in postmaster.pid, after any crash recovery.
func (l *localInstance) start(ctx context.Context) (uint16, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var lastErr error
	for attempt := range 5 {
		port := l.port
		if port == 0 || attempt > 0 {
			p, err := freePort()
			if err != nil {
				return 0, err
			}
			port = p
		}
		err := l.startOn(ctx, port)
		if err == nil {
			l.port = port
			return port, nil
		}
		lastErr = err
		switch {
		case errors.Is(err, errPortTaken):
		case errors.Is(err, errShmemInUse) && attempt < 4:
			// Children of a crashed postmaster still exiting.
			select {
			case <-ctx.Done():
				return 0, err
			case <-time.After(time.Second):
			}
		default:
			return 0, err
		}
	}
	return 0, lastErr
}

var (
	errPortTaken  = errors.New("port taken")
	errShmemInUse = errors.New("the previous server's shared memory is still in use")
)

func (l *localInstance) startOn(ctx context.Context, port uint16) error {
	log, err := l.openLog()
	if err != nil {
		return err
	}
	defer log.Close() // the child has its own descriptor
	args := append([]string{"-D", filepath.Join(l.root, dataDir), "-p", strconv.Itoa(int(port))}, l.settings...)
	cmd := l.command(log, "postgres", args...)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	l.cmd, l.exited = cmd, exited
	for {
		if pid, status := readPostmasterPID(filepath.Join(l.root, dataDir)); pid == cmd.Process.Pid && (status == "ready" || (l.standby && status == "standby")) {
			return nil
		}
		select {
		case <-exited:
			tail := l.logTail(ctx)
			if strings.Contains(tail, "could not bind") || strings.Contains(tail, "already in use") {
				return fmt.Errorf("%w: %d", errPortTaken, port)
			}
			if strings.Contains(tail, "pre-existing shared memory block") {
				return fmt.Errorf("%w%s", errShmemInUse, tail)
			}
			return fmt.Errorf("postgres exited: %s%s", cmd.ProcessState, tail)
		case <-ctx.Done():
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
			return fmt.Errorf("postgres never became ready: %w%s", ctx.Err(), l.logTail(ctx))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// readPostmasterPID reads the postmaster's PID and status ("starting",
// "ready", "stopping") from the data directory's lock file.
func readPostmasterPID(data string) (pid int, status string) {
	b, err := os.ReadFile(filepath.Join(data, "postmaster.pid"))
	if err != nil {
		return 0, ""
	}
	lines := strings.Split(string(b), "\n")
	pid, _ = strconv.Atoi(strings.TrimSpace(lines[0]))
	if len(lines) > 7 {
		status = strings.TrimSpace(lines[7])
	}
	return pid, status
}

func freePort() (uint16, error) { return FreePort() }

// FreePort returns a loopback port that is free now, outside the kernel's
// ephemeral range (32768-60999 on Linux), from which the machine's
// outgoing connections and ":0" listeners take theirs: a client that
// redials a stopped server on an ephemeral port can be given that very
// port as its own source port and connect to itself.
func FreePort() (uint16, error) {
	for range 100 {
		p := 20000 + rand.IntN(12000)
		ln, err := net.Listen("tcp", net.JoinHostPort(loopback, strconv.Itoa(p)))
		if err != nil {
			continue
		}
		_ = ln.Close()
		return uint16(p), nil
	}
	return 0, errors.New("find a free port: none free in 20000-31999")
}

// running returns the postmaster and its exit channel, or nil if it is not
// running.
func (l *localInstance) running() (*exec.Cmd, chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cmd == nil {
		return nil, nil
	}
	select {
	case <-l.exited:
		return nil, nil
	default:
		return l.cmd, l.exited
	}
}

// stop signals the postmaster (sig) or its whole process group (group) and
// waits until it has exited.
func (l *localInstance) stop(ctx context.Context, sig syscall.Signal, group bool) error {
	cmd, exited := l.running()
	if cmd == nil {
		return nil
	}
	pid := cmd.Process.Pid
	if group {
		pid = -pid
	}
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	select {
	case <-exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("postgres did not stop: %w", ctx.Err())
	}
}

// shutdown is PostgreSQL's fast shutdown (SIGINT).
func (l *localInstance) shutdown(ctx context.Context) error {
	return l.stop(ctx, syscall.SIGINT, false)
}

// crash SIGKILLs the postmaster and every process it started, at once.
// PostgreSQL puts each child in a session of its own, so one signal to a
// process group cannot do it: the postmaster is stopped first (it forks no
// one meanwhile), its children listed and killed, then the postmaster. A
// child that survived would hold the shared memory the restart needs.
func (l *localInstance) crash(ctx context.Context) error {
	cmd, exited := l.running()
	if cmd == nil {
		return nil
	}
	pm := cmd.Process.Pid
	_ = syscall.Kill(pm, syscall.SIGSTOP)
	kids := childrenOf(pm)
	for _, k := range kids {
		_ = syscall.Kill(k, syscall.SIGKILL)
	}
	_ = syscall.Kill(pm, syscall.SIGKILL)
	select {
	case <-exited:
	case <-ctx.Done():
		return fmt.Errorf("postgres did not die: %w", ctx.Err())
	}
	for _, k := range kids {
		for alive(k) {
			select {
			case <-ctx.Done():
				return fmt.Errorf("server process %d survived SIGKILL: %w", k, ctx.Err())
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	return nil
}

// childrenOf lists the child processes of pid: from /proc where there is
// one, else from pgrep. (Where neither works the postmaster dies alone and
// its children follow it within moments, on noticing; start waits for them.)
func childrenOf(pid int) []int {
	var kids []int
	want := strconv.Itoa(pid)
	entries, err := os.ReadDir("/proc")
	if err != nil {
		out, _ := exec.Command("pgrep", "-P", want).Output()
		for _, f := range strings.Fields(string(out)) {
			if k, err := strconv.Atoi(f); err == nil {
				kids = append(kids, k)
			}
		}
		return kids
	}
	for _, e := range entries {
		k, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may contain spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if f := strings.Fields(string(b[i+1:])); i >= 0 && len(f) >= 2 && f[1] == want {
			kids = append(kids, k)
		}
	}
	return kids
}

// remove stops the server (immediate shutdown: the data is thrown away;
// SIGKILL if that hangs) and deletes the directory.
func (l *localInstance) remove(ctx context.Context) error {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := l.stop(sctx, syscall.SIGQUIT, false)
	cancel()
	if err != nil {
		_ = l.stop(ctx, syscall.SIGKILL, true)
	}
	return os.RemoveAll(l.root)
}

// logTail is the end of the server's log, to explain a failure.
func (l *localInstance) logTail(context.Context) string {
	return tail(filepath.Join(l.root, logFile))
}

func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(bytes.TrimSpace(b)) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return "; server log: " + strings.Join(lines, " | ")
}

// removeDir stops the server of a directory this process did not start
// (a dead process's, found by the reaper or a sweep) and deletes it. The
// postmaster is signalled only when it is that directory's: its working
// directory is the data directory (Linux), or, elsewhere, its PID leads its
// own process group as pgserver starts it.
func removeDir(ctx context.Context, dir string) {
	data := filepath.Join(dir, dataDir)
	if pid, _ := readPostmasterPID(data); pid > 0 && alive(pid) && isPostmasterOf(pid, data) {
		_ = syscall.Kill(pid, syscall.SIGQUIT)
		for i := 0; i < 100 && alive(pid); i++ {
			select {
			case <-ctx.Done():
				i = 100
			case <-time.After(50 * time.Millisecond):
			}
		}
		if alive(pid) {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
	}
	_ = os.RemoveAll(dir)
}

func isPostmasterOf(pid int, data string) bool {
	if cwd, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/cwd"); err == nil {
		want, _ := filepath.EvalSymlinks(data)
		return cwd == data || cwd == want
	}
	pgid, err := syscall.Getpgid(pid)
	return err == nil && pgid == pid
}

// alive reports whether pid is a live process. A zombie is not: a process
// whose parent died is reaped by init, which some containers' init never
// does.
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil {
		// pid (comm) state ...; comm may contain spaces and parentheses.
		if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'Z' {
			return false
		}
	}
	return true
}

var sweepOnce sync.Once

// sweepStaleDirs removes the servers of runs that died with their reaper
// (killed with their whole process group, or the machine rebooted): those
// whose starting process is gone, in tmp. A directory without an owner yet
// is being set up, unless it is an hour old.
func sweepStaleDirs(tmp string, logger *slog.Logger) {
	dirs, _ := filepath.Glob(filepath.Join(tmp, dirPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			if fi, serr := os.Stat(dir); serr != nil || time.Since(fi.ModTime()) < time.Hour {
				continue
			}
		} else if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); alive(pid) {
			continue
		}
		logger.Debug("pgserver: removing a stale server", "dir", dir)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		removeDir(ctx, dir)
		cancel()
	}
}
