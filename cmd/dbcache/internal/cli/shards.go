package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/sharded"
)

// Several servers: a sharded cache (package sharded). --database-url given
// more than once names the servers, each as NAME=URL where NAME is the
// shard's name in the application (sharded.Shard.Name): the names place
// the keys, so the command finds a key where the application put it only
// with the same names (in any order) and the same --key-prefix. Given
// once, --database-url is read as it always was, and every command
// behaves exactly as on a single server.
//
// What each command does with several servers:
//
//   - the cache commands (get, set, …, keys, delete-prefix, clear) and
//     bench work on the sharded cache, as the application's would;
//   - stats reads every server and prints each, then the total;
//   - migrate and cull run once per server (cull --every on all at once),
//     each server's output lines prefixed with its name, and end with the
//     worst exit code among them;
//   - demo takes no server at all.

// shardSpec is one server of a sharded cache.
type shardSpec struct {
	name, dsn string
}

var shardNameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,63}$`)

// libpqKeywords are the key=value connection string keywords a name
// before "=" is likely to be when a shard's name was left out.
var libpqKeywords = map[string]bool{
	"host": true, "hostaddr": true, "port": true, "dbname": true, "user": true, "password": true,
	"sslmode": true, "connect_timeout": true, "application_name": true, "options": true, "service": true,
}

// resolveShards reads repeated --database-url: one value is the single
// server, as before; several are NAME=URL shards.
func (a *app) resolveShards() error {
	urls := a.g.databaseURLs
	a.g.databaseURL, a.shards = "", nil
	switch len(urls) {
	case 0:
		return nil
	case 1:
		a.g.databaseURL = urls[0]
		return nil
	}
	seen := map[string]bool{}
	for _, u := range urls {
		name, dsn, ok := strings.Cut(u, "=")
		keyword := libpqKeywords[strings.ToLower(strings.TrimSpace(name))] &&
			!strings.HasPrefix(dsn, "postgres://") && !strings.HasPrefix(dsn, "postgresql://")
		switch {
		case !ok || !shardNameRE.MatchString(name) || dsn == "" || keyword:
			return usagef("--database-url given %d times: each must be NAME=URL, NAME the server's shard name in the application (letters, digits, '.', '_', '-'), got %s",
				len(urls), redactDSN(u))
		case seen[name]:
			return usagef("--database-url: two servers are named %q", name)
		}
		seen[name] = true
		a.shards = append(a.shards, shardSpec{name: name, dsn: dsn})
	}
	return nil
}

// redactDSN hides a password in a connection string quoted in a message.
func redactDSN(s string) string {
	if i := strings.Index(s, "://"); i >= 0 {
		rest := s[i+3:]
		if at := strings.Index(rest, "@"); at >= 0 {
			if colon := strings.Index(rest[:at], ":"); colon >= 0 {
				return fmt.Sprintf("%q", s[:i+3]+rest[:colon]+":xxxxx"+rest[at:])
			}
		}
	}
	if strings.Contains(s, "password=") {
		return `"` + regexp.MustCompile(`password=\S+`).ReplaceAllString(s, "password=xxxxx") + `"`
	}
	return fmt.Sprintf("%q", s)
}

// sharded reports whether the command works on several servers.
func (a *app) sharded() bool { return len(a.shards) > 1 }

// namedPool is one server's pool ("" for the single server).
type namedPool struct {
	name string
	pool *pgxpool.Pool
}

// openedStore is a cache command's cache and the pools under it, which
// close() closes: the core Store, and the capabilities the commands use
// beyond it (get --json and ttl read lifetimes, keys and delete-prefix
// list a prefix, delete-prefix's prompt shows the stored form of a key).
// A single *dbcache.Cache and a *sharded.Cache have every one.
type openedStore struct {
	store dbcache.Store
	ttl   dbcache.TTLReader
	keys  dbcache.KeyLister
	maker dbcache.KeyMaker
	pools []namedPool
}

// withCapabilities fills in o's capabilities from its store, or says
// which one the store lacks.
func (o *openedStore) withCapabilities() (*openedStore, error) {
	var ok [3]bool
	o.ttl, ok[0] = o.store.(dbcache.TTLReader)
	o.keys, ok[1] = o.store.(dbcache.KeyLister)
	o.maker, ok[2] = o.store.(dbcache.KeyMaker)
	for i, name := range []string{"dbcache.TTLReader", "dbcache.KeyLister", "dbcache.KeyMaker"} {
		if !ok[i] {
			o.close()
			return nil, fmt.Errorf("the cache (%T) is not a %s", o.store, name)
		}
	}
	return o, nil
}

func (o *openedStore) close() {
	for _, p := range o.pools {
		closePool(p.pool)
	}
}

// openStore opens the cache the command works on: the single server's, as
// openCache does, or the sharded cache over every server. maxConns bounds
// each server's pool.
func (a *app) openStore(ctx context.Context, cmd *cobra.Command, cf *cacheFlags, maxConns int32) (*openedStore, error) {
	if !a.sharded() {
		cache, pool, err := a.openCache(ctx, cmd, cf, maxConns)
		if err != nil {
			return nil, err
		}
		return (&openedStore{store: cache, pools: []namedPool{{pool: pool}}}).withCapabilities()
	}
	if err := cf.validate(); err != nil {
		return nil, err
	}
	o := &openedStore{}
	var shards []sharded.Shard
	for _, sh := range a.shards {
		// Each server's settings come from its own URL (a statement
		// timeout in one bounds that server's operations only). The pool
		// connects on first use: a server that is down fails its own
		// keys, not the command's others.
		s := *a
		s.g.databaseURL = sh.dsn
		cfg, err := s.poolConfig(maxConns)
		if err != nil {
			o.close()
			return nil, withShard(sh.name, err)
		}
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			o.close()
			return nil, withShard(sh.name, err)
		}
		o.pools = append(o.pools, namedPool{sh.name, pool})
		shards = append(shards, sharded.Shard{Name: sh.name, Pool: pool, Config: a.cacheConfig(cf, s.g.opTimeout)})
		// The bound the messages speak of: the first server's.
		if len(o.pools) == 1 {
			a.g.connectTimeout, a.g.opTimeout, a.g.statementTimeoutInForce = cfg.ConnConfig.ConnectTimeout, s.g.opTimeout, s.g.statementTimeoutInForce
		}
	}
	// A server that is down is reported by the operation that needs it,
	// with its name; the library's warning at New would say it twice.
	log := a.log
	if !a.g.verbose && !a.g.debug {
		log = newLogger(a.errw, slog.LevelError, a.g.json)
	}
	c, err := sharded.New(ctx, shards, &sharded.Config{Logger: log})
	if err != nil {
		o.close()
		return nil, err
	}
	if cmd.Flags().Changed("key-version") {
		c = c.WithVersion(cf.version)
	}
	o.store = c
	return o.withCapabilities()
}

// withShard names the server an error came from.
func withShard(name string, err error) error {
	return &sharded.ShardError{Shard: name, Err: err}
}

// shardOf names the server err came from, if it came from one.
func shardOf(err error) string {
	var se *sharded.ShardError
	if errors.As(err, &se) {
		return se.Shard
	}
	return ""
}

// namedLine prefixes a message line with the server it is about, once.
func namedLine(err error, msg string) string {
	if name := shardOf(err); name != "" && !strings.Contains(msg, "shard "+name) {
		return "shard " + name + ": " + msg
	}
	return msg
}

// countAll is countEntries over every server of the store.
func (a *app) countAll(ctx context.Context, o *openedStore) (*entryCount, error) {
	total := &entryCount{}
	var names []string
	for _, p := range o.pools {
		names = append(names, p.name)
		n, err := countEntries(ctx, p.pool, a.g.schema)
		if err != nil {
			if p.name != "" {
				return nil, withShard(p.name, err)
			}
			return nil, err
		}
		total.table, total.total, total.live = n.table, total.total+n.total, total.live+n.live
	}
	if len(o.pools) > 1 {
		total.table = fmt.Sprintf("%s on %d servers (%s)", dbcache.TableName, len(o.pools), strings.Join(names, ", "))
	}
	return total, nil
}

// perServer makes a command that works on one server at a time (migrate's
// subcommands, cull) run once per server when several are given.
func (a *app) perServer(cmd *cobra.Command) {
	for _, sub := range cmd.Commands() {
		a.perServer(sub)
	}
	run := cmd.RunE
	if run == nil || cmd.HasSubCommands() || cmd.Name() == "sql" { // migrate sql connects to nothing
		return
	}
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if a.sharded() {
			return a.fanOut(c, args)
		}
		return run(c, args)
	}
}

// fanOut runs the command line once per server, each run exactly the
// single-server command with that server's URL, its output lines prefixed
// with the server's name (under --json, a "shard" field first in each
// object), and returns the worst exit code (usage, failure, pending,
// miss, success, in that order). The runs follow one another, except cull
// --every, which runs a culler per server at once until interrupted. None
// asks for confirmation: a command that would (migrate down, migrate
// persistence) needs --yes with several servers.
func (a *app) fanOut(cmd *cobra.Command, args []string) error {
	if f := cmd.Flags().Lookup("yes"); f != nil && !f.Changed && a.cfg.StdinIsTerminal &&
		(cmd.Name() == "down" || (cmd.Name() == "persistence" && len(args) > 0)) {
		return confirmationRequired(fmt.Sprintf("%s on %d servers: pass --yes (dbcache does not ask once per server)", cmd.CommandPath(), len(a.shards)))
	}
	if cmd.Name() == "cull" {
		if f := cmd.Flags().Lookup("metrics-addr"); f != nil && f.Value.String() != "" {
			return usagef("--metrics-addr serves one server's culling metrics: with several servers, run one cull --every --metrics-addr per server")
		}
	}
	parallel := false
	if f := cmd.Flags().Lookup("every"); f != nil && f.Value.String() != "0s" {
		parallel = true
	}
	rest := withoutDatabaseURL(a.cfg.Args)
	codes := make([]int, len(a.shards))
	var outMu, errMu sync.Mutex
	runOne := func(i int) {
		sh := a.shards[i]
		out := &prefixWriter{w: a.out, mu: &outMu, name: sh.name, json: a.g.json}
		errw := &prefixWriter{w: a.errw, mu: &errMu, name: sh.name, json: a.g.json, stderr: true}
		sub := *a.cfg
		sub.Args = append([]string{"--database-url", sh.dsn}, rest...)
		sub.Out, sub.Err = out, errw
		sub.StdinIsTerminal, sub.ErrIsTerminal = false, false
		codes[i] = Run(a.ctx, &sub)
		out.flush()
		errw.flush()
	}
	if parallel {
		var wg sync.WaitGroup
		for i := range a.shards {
			wg.Go(func() { runOne(i) })
		}
		wg.Wait()
	} else {
		for i := range a.shards {
			runOne(i)
		}
	}
	worst := ExitOK
	rank := map[int]int{ExitOK: 0, ExitMiss: 1, ExitPending: 2, ExitFailure: 3, ExitUsage: 4}
	for _, c := range codes {
		if rank[c] > rank[worst] {
			worst = c
		}
	}
	if worst == ExitOK {
		return nil
	}
	return &exitError{code: worst}
}

// withoutDatabaseURL removes every --database-url from a command line
// (up to a "--").
func withoutDatabaseURL(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		arg := args[i]
		switch {
		case arg == "--":
			return append(out, args[i:]...)
		case arg == "--database-url":
			i++ // and its value
		case strings.HasPrefix(arg, "--database-url="):
		default:
			out = append(out, arg)
		}
	}
	return out
}

// prefixWriter prefixes each line written to it with a server's name: a
// result line as "NAME: line", an error line "dbcache: message" as
// "dbcache: shard NAME: message" (as the cache commands name a server), and
// under --json an object line as one with "shard":NAME first. It writes whole lines only, so servers' lines never
// interleave mid-line.
type prefixWriter struct {
	w      io.Writer
	mu     *sync.Mutex
	name   string
	json   bool
	stderr bool
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		if err := p.line(p.buf[:i]); err != nil {
			return 0, err
		}
		p.buf = p.buf[i+1:]
	}
}

func (p *prefixWriter) line(l []byte) error {
	var out []byte
	switch {
	case p.json && len(l) > 1 && l[0] == '{':
		name, _ := json.Marshal(p.name)
		out = append([]byte(`{"shard":`), name...)
		if l[1] != '}' {
			out = append(out, ',')
		}
		out = append(out, l[1:]...)
	case p.stderr && bytes.HasPrefix(l, []byte("dbcache: ")):
		out = append([]byte("dbcache: shard "+p.name+": "), l[len("dbcache: "):]...)
	default:
		out = append([]byte(p.name+": "), l...)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	_, err := p.w.Write(append(out, '\n'))
	return err
}

// flush writes what is left of a last line without a newline.
func (p *prefixWriter) flush() {
	if len(p.buf) > 0 {
		_ = p.line(p.buf)
		p.buf = nil
	}
}
