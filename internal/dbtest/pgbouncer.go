package dbtest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/internal/pgserver"
)

const (
	// EnvRequirePgBouncer, when set (to anything), makes a test that needs
	// PgBouncer fail when the binary cannot be found instead of skipping.
	// CI sets it, and installs Debian's pgbouncer.
	EnvRequirePgBouncer = "DBCACHE_TEST_REQUIRE_PGBOUNCER"
	// EnvPgBouncer names the pgbouncer binary; unset, it is looked up in
	// PATH, then in /usr/sbin, /usr/local/sbin, /usr/bin and /usr/local/bin
	// (Debian installs it in /usr/sbin, which a non-root PATH lacks).
	EnvPgBouncer = "DBCACHE_TEST_PGBOUNCER"

	// pgbouncerStartTimeout bounds how long a PgBouncer may take to listen.
	pgbouncerStartTimeout = 15 * time.Second
	// pgbouncerStopTimeout bounds how long one may take to exit on SIGTERM
	// before it is killed.
	pgbouncerStopTimeout = 5 * time.Second
)

// PgBouncerConfig configures NewPgBouncer. The zero value is valid.
type PgBouncerConfig struct {
	// PoolMode is PgBouncer's pool_mode. Defaults to "transaction": the
	// production setting the cache and the culler must work under.
	PoolMode string
	// PoolSize is default_pool_size: the server connections per database
	// and user. Defaults to 10.
	PoolSize int
	// MaxClientConn is max_client_conn. Defaults to 200.
	MaxClientConn int
	// Target is the server's host:port. Defaults to the test server's.
	Target string
}

// PgBouncer is a PgBouncer process in front of the test server, on a
// loopback port of its own. Every database name is passed through to the
// server's database of that name, so a Schema in any of the test server's
// databases (a profile's, a collation's) is reachable through it. Clients
// may give any user name: every server connection logs in as the test
// server's user (auth_type any).
//
// PgBouncer 1.18 (Debian 12's) refuses startup parameters other than
// client_encoding, DateStyle, TimeZone, standard_conforming_strings and
// application_name, so a pool through it cannot set search_path at
// connect time: PoolConfig sets none, and code under test names its
// schema (Config.Schema) or sets it inside its transactions. It also has no
// prepared statements in transaction pooling: PoolConfig uses pgx's exec
// mode, which prepares nothing by name.
type PgBouncer struct {
	addr string
	port uint16
	dir  string

	database, user, password string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	log    *LogBuffer
}

// PgBouncerBinary returns the pgbouncer binary to run, or an error saying
// where it was looked for.
func PgBouncerBinary() (string, error) {
	if p := os.Getenv(EnvPgBouncer); p != "" {
		if isExecutable(p) {
			return p, nil
		}
		return "", fmt.Errorf("%s=%s is not an executable file", EnvPgBouncer, p)
	}
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	dirs := []string{"/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"}
	for _, d := range dirs {
		if p := filepath.Join(d, "pgbouncer"); isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("no pgbouncer in PATH or in %s (Debian: apt-get install pgbouncer; or set %s)", strings.Join(dirs, ", "), EnvPgBouncer)
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// RequirePgBouncer returns the pgbouncer binary. When there is none it
// skips the test, unless EnvRequirePgBouncer is set, in which case it
// fails it: CI must never pass by skipping the PgBouncer tests.
func RequirePgBouncer(tb testing.TB) string {
	tb.Helper()
	bin, err := PgBouncerBinary()
	if err == nil {
		return bin
	}
	if os.Getenv(EnvRequirePgBouncer) != "" {
		tb.Fatalf("dbtest: %v, and %s is set", err, EnvRequirePgBouncer)
	}
	tb.Skipf("dbtest: %v (set %s to fail instead of skipping)", err, EnvRequirePgBouncer)
	return ""
}

// NewPgBouncer starts a PgBouncer in front of the test server (cfg may be
// nil), stopped when the test ends. It skips or fails the test as
// RequirePgBouncer does when there is no binary.
func NewPgBouncer(tb testing.TB, cfg *PgBouncerConfig) *PgBouncer {
	tb.Helper()
	bin := RequirePgBouncer(tb)
	var c PgBouncerConfig
	if cfg != nil {
		c = *cfg
	}
	if c.PoolMode == "" {
		c.PoolMode = "transaction"
	}
	if c.PoolSize == 0 {
		c.PoolSize = 10
	}
	if c.MaxClientConn == 0 {
		c.MaxClientConn = 200
	}
	server, err := pgconn.ParseConfig(URL(tb))
	if err != nil {
		tb.Fatalf("dbtest: parse the test server's URL: %v", err)
	}
	if c.Target == "" {
		c.Target = net.JoinHostPort(server.Host, strconv.Itoa(int(server.Port)))
	}
	b, err := startPgBouncer(bin, c, server)
	if err != nil {
		tb.Fatalf("dbtest: %v", err)
	}
	tb.Cleanup(b.Stop)
	return b
}

func startPgBouncer(bin string, c PgBouncerConfig, server *pgconn.Config) (*PgBouncer, error) {
	dir, err := os.MkdirTemp("", "dbcache-pgbouncer-")
	if err != nil {
		return nil, err
	}
	host, port, err := net.SplitHostPort(c.Target)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("pgbouncer target %q: %w", c.Target, err)
	}
	b := &PgBouncer{dir: dir, database: server.Database, user: server.User, password: server.Password}
	// A port can be taken between the check and PgBouncer's bind (another
	// agent's server, another test's PgBouncer): try a few.
	var lastErr error
	for range 8 {
		p, err := pgserver.FreePort()
		if err != nil {
			lastErr = err
			continue
		}
		if err := b.run(bin, c, host, port, p); err != nil {
			lastErr = err
			continue
		}
		return b, nil
	}
	_ = os.RemoveAll(dir)
	return nil, fmt.Errorf("start pgbouncer: %w", lastErr)
}

const loopback = "127.0.0.1"

// quoteConnValue quotes a value for a libpq key=value string.
func quoteConnValue(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// run writes the configuration for port and starts PgBouncer on it,
// returning once it accepts connections.
func (b *PgBouncer) run(bin string, c PgBouncerConfig, host, port string, listen uint16) error {
	// "*" passes every database name through to the server's database of
	// that name; the server user is fixed, so clients need no auth file.
	target := fmt.Sprintf("host=%s port=%s user=%s", quoteConnValue(host), port, quoteConnValue(b.user))
	if b.password != "" {
		target += " password=" + quoteConnValue(b.password)
	}
	ini := fmt.Sprintf(`[databases]
* = %s

[pgbouncer]
listen_addr = %s
listen_port = %d
unix_socket_dir =
auth_type = any
pool_mode = %s
default_pool_size = %d
max_client_conn = %d
pidfile = %s
server_login_retry = 1
log_connections = 0
log_disconnections = 0
`, target, loopback, listen, c.PoolMode, c.PoolSize, c.MaxClientConn, filepath.Join(b.dir, "pgbouncer.pid"))
	conf := filepath.Join(b.dir, "pgbouncer.ini")
	if err := os.WriteFile(conf, []byte(ini), 0o600); err != nil {
		return err
	}
	// PgBouncer refuses to run as root: run it as the servers' user, who
	// must be able to read its directory and configuration.
	runAs, err := unprivileged(b.dir, conf)
	if err != nil {
		return err
	}
	log := &LogBuffer{}
	cmd := exec.Command(bin, conf)
	cmd.Dir = b.dir
	cmd.Stdout, cmd.Stderr = log, log
	runAs(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	addr := net.JoinHostPort(loopback, strconv.Itoa(int(listen)))
	deadline := time.Now().Add(pgbouncerStartTimeout)
	for {
		select {
		case <-exited:
			return fmt.Errorf("pgbouncer exited on port %d: %s", listen, strings.TrimSpace(log.String()))
		default:
		}
		if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			_ = conn.Close()
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("pgbouncer never listened on port %d: %s", listen, strings.TrimSpace(log.String()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.mu.Lock()
	b.cmd, b.exited, b.log, b.addr, b.port = cmd, exited, log, addr, listen
	b.mu.Unlock()
	return nil
}

// Addr is PgBouncer's host:port.
func (b *PgBouncer) Addr() string { return b.addr }

// Port is PgBouncer's port.
func (b *PgBouncer) Port() uint16 { return b.port }

// Log returns what PgBouncer has logged so far.
func (b *PgBouncer) Log() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.log == nil {
		return ""
	}
	return b.log.String()
}

// URL returns a DSN for database (the test server's own database when "")
// through PgBouncer.
func (b *PgBouncer) URL(database string) string {
	if database == "" {
		database = b.database
	}
	u := url.URL{Scheme: "postgres", Host: b.addr, Path: "/" + database, RawQuery: "sslmode=disable"}
	u.User = url.User(b.user)
	return u.String()
}

// SchemaURL returns a DSN through PgBouncer for the schema's database. It
// carries no search_path (PgBouncer 1.18 refuses it as a startup
// parameter): name the schema in the code under test.
func (b *PgBouncer) SchemaURL(tb testing.TB, s *Schema) string {
	tb.Helper()
	cfg, err := pgconn.ParseConfig(s.URL)
	if err != nil {
		tb.Fatalf("dbtest: parse %q: %v", s.URL, err)
	}
	return b.URL(cfg.Database)
}

// PoolConfig returns a pool config through PgBouncer on the schema's
// database: MaxConns 10, application_name dbcache-test, pgx's exec mode
// (no named prepared statements, which PgBouncer 1.18 cannot keep in
// transaction pooling), and no search_path (see PgBouncer).
func (b *PgBouncer) PoolConfig(tb testing.TB, s *Schema) *pgxpool.Config {
	tb.Helper()
	cfg, err := pgxpool.ParseConfig(b.SchemaURL(tb, s))
	if err != nil {
		tb.Fatalf("dbtest: %v", err)
	}
	cfg.MaxConns = 10
	cfg.ConnConfig.RuntimeParams["application_name"] = "dbcache-test"
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	return cfg
}

// Pool opens a pool through PgBouncer on the schema's database (see
// PoolConfig), closed when the test ends.
func (b *PgBouncer) Pool(tb testing.TB, s *Schema) *pgxpool.Pool {
	tb.Helper()
	return NewPool(tb, b.PoolConfig(tb, s))
}

// Stop ends PgBouncer (SIGTERM, then SIGKILL if it lingers) and removes its
// directory. Clients see their connections close. It is safe to call more
// than once.
func (b *PgBouncer) Stop() {
	b.mu.Lock()
	cmd, exited := b.cmd, b.exited
	b.cmd = nil
	b.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(pgbouncerStopTimeout):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	_ = os.RemoveAll(b.dir)
}

// ServerPID returns the PID of the server backend that runs a statement on
// conn now: behind PgBouncer, not the PID the client was given (which is
// PgBouncer's cancel key).
func ServerPID(ctx context.Context, conn interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (uint32, error) {
	var pid uint32
	err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid)
	return pid, err
}
